#!/usr/bin/env bash
# The project's whole test run, as the README documents it and .ci/run calls it (as root):
# formatting, lints, the binaries, then every test including the root-only end-to-end ones.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace -- --test-threads="${TEST_THREADS:-4}"
if [ -x tests/v2-lane/run.sh ] && [ -z "${SKIP_V2_LANE:-}" ]; then
    echo "== cgroup v2 lane (guest kernel)"
    cargo build --release -p runtime -p job-init
    V2LANE_BIN_DIR="$PWD/target/release" tests/v2-lane/run.sh
fi
