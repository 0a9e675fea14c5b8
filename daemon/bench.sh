#!/bin/sh
# jobd benchmarks (root): start latency/throughput, 1,000-client fan-out, 1,000 running jobs.
# Usage: daemon/bench.sh [bench options, e.g. --fanout-clients 100 --fanout-bytes 10000000]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p daemon --bin jobd --bin jobd-shim --example bench
scripts/build-job-init.sh --release
dir=${CARGO_TARGET_DIR:-target}/release
# Not exec'd: a child of this (non-interactive) shell is no process group leader, so the
# benchmark can lead a session of its own, whose scheduling group then takes the clients' nice
# value (see SessionGroup in daemon/examples/bench.rs). Out of the terminal's process group it
# no longer gets a Ctrl-C itself: this shell passes INT and TERM on.
"$dir/examples/bench" --jobd "$dir/jobd" "$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' INT TERM
status=0
wait "$pid" || status=$?
# A trapped signal ends the first wait early: wait for the benchmark's own status.
while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
done
exit "$status"
