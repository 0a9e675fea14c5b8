#!/usr/bin/env bash
# Builds job-init statically linked (glibc) and position-dependent. A container's init then
# starts without the dynamic loader, libgcc_s and their start-up work: about 2 ms less CPU per
# container start on the 2-vCPU reference VM (three side-by-side jobd runs: 109-115 against
# 95-99 starts/s). cargo cannot give one package a codegen flag, so this rebuilds job-init
# alone with it, in the same place `cargo build` puts it; a plain `cargo build` makes the
# dynamic one again, which works the same, only slower to start.
#
#   scripts/build-job-init.sh [--release] [other cargo options]
#
# Not a static PIE: a PIE's start-up applies its relocations, writing every page of its
# relocated read-only data (257 KiB here, 66 copy-on-write page faults per start), and does it
# again in every container. The image at a fixed address costs 0.29 ms less host CPU per job
# (12 alternating jobd pairs, lower in 10; 221 against 213 starts/s). The price is the
# randomisation of job-init's image only (its stack, heap, mappings and vDSO stay random), as
# for Debian's runc, whose `runc init` is a position-dependent executable too: see
# docs/ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo rustc -p job-init --bin job-init "$@" -- \
    -C target-feature=+crt-static -C relocation-model=static
