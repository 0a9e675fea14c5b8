#!/usr/bin/env bash
# Builds job-init statically linked (glibc static-pie). A container's init then starts without
# the dynamic loader, libgcc_s and their start-up work: about 2 ms less CPU per container
# start on the 2-vCPU reference VM (three side-by-side jobd runs: 109-115 against 95-99
# starts/s). cargo cannot give one package a codegen flag, so this rebuilds job-init alone
# with it, in the same place `cargo build` puts it; a plain `cargo build` makes the dynamic
# one again, which works the same, only slower to start.
#
#   scripts/build-job-init.sh [--release] [other cargo options]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo rustc -p job-init --bin job-init "$@" -- -C target-feature=+crt-static
