#!/usr/bin/env bash
# Builds job-init statically linked (glibc static-pie). A container's init then starts without
# the dynamic loader, libgcc_s and their start-up work: about 2 ms less CPU per container
# start on the 2-vCPU reference VM (three side-by-side jobd runs: 109-115 against 95-99
# starts/s). cargo cannot give one package a codegen flag, so this rebuilds job-init alone
# with it, in the same place `cargo build` puts it; a plain `cargo build` makes the dynamic
# one again, which works the same, only slower to start.
#
#   scripts/build-job-init.sh [--release] [other cargo options]
#
# Where the linker has it (binutils 2.38+), the relative relocations are packed (DT_RELR, which
# glibc 2.36+ applies in a static PIE's start-up): 4 KiB of them instead of 324 KiB that every
# start read, and 108 -> 95 page faults for a bare `job-init --help`. Start throughput did not
# move beyond the VM's noise (3 pairs); first-byte p50 was 0.3-1.2 ms lower in each.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(-C target-feature=+crt-static)
if ld --help 2>/dev/null | grep -q pack-relative-relocs; then
    flags+=(-C link-arg=-Wl,-z,pack-relative-relocs)
fi
exec cargo rustc -p job-init --bin job-init "$@" -- "${flags[@]}"
