#!/usr/bin/env bash
# The project's whole test run, as the README documents it and .ci/run calls it (as root):
# formatting, lints, the binaries, then every test including the root-only end-to-end ones.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian packages the tests use (runc, crun, podman, qemu, ...), so that this command works
# on a fresh machine by itself; quick when they are there. SKIP_DEPS=1 skips the check.
if [ -z "${SKIP_DEPS:-}" ]; then
    scripts/deps.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins
scripts/build-job-init.sh
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ -x tests/v2-lane/run.sh ] && [ -z "${SKIP_V2_LANE:-}" ] && [ "$status" -eq 0 ]; then
    echo "== cgroup v2 lane (guest kernel)"
    set +e
    V2LANE_PROFILE=debug V2LANE_DAEMON_TESTS=1 tests/v2-lane/run.sh 2>&1 | tee -a "$log"
    lane=${PIPESTATUS[0]}
    set -e
    [ "$lane" -eq 0 ] || status=$lane
fi
if [ -x tests/v2-lane/run.sh ] && [ -z "${SKIP_V2_LANE:-}" ] && [ -z "${SKIP_SYSTEMD_LANE:-}" ] && [ "$status" -eq 0 ]; then
    echo "== systemd lane (guest kernel, systemd as PID 1: job-runtime --systemd-cgroup)"
    set +e
    V2LANE_PROFILE=debug tests/v2-lane/run.sh --systemd 2>&1 | tee -a "$log"
    lane=${PIPESTATUS[0]}
    set -e
    [ "$lane" -eq 0 ] || status=$lane
fi
# One closing line for everything: cargo's per-binary lines and the lanes' result lines.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^V2LANE RESULT:/ { p += $3; f += $5 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
