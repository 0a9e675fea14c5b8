#!/bin/sh
# jobd benchmarks (root): start latency/throughput, 1,000-client fan-out, 1,000 running jobs.
# Usage: daemon/bench.sh [bench options, e.g. --fanout-clients 100 --fanout-bytes 10000000]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p daemon --bin jobd --bin jobd-shim --example bench
scripts/build-job-init.sh --release
dir=${CARGO_TARGET_DIR:-target}/release
exec "$dir/examples/bench" --jobd "$dir/jobd" "$@"
