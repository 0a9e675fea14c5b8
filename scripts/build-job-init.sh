#!/usr/bin/env bash
# Builds job-init as a static, position-dependent executable and puts it where `cargo build`
# puts job-init (target/{debug,release}/job-init), beside job-runtime and jobd-shim, which
# find it there. A plain `cargo build` makes a dynamic one, which works the same, only slower
# to start.
#
#   scripts/build-job-init.sh [--release] [other cargo options]
#
# Linked against musl when the toolchain has the x86_64-unknown-linux-musl target (deps.sh adds
# it), else against static glibc. glibc's start-up probes the CPU with a few dozen `cpuid`
# instructions (its cache-size and feature tables); in a VM each one is an exit to the
# hypervisor, and a perf profile had them at 0.2 ms of every container start. musl's start-up
# does not probe. Measured: 12 alternating jobd pairs, 0.21 ms less host CPU per job (lower in
# 8 of 12).
#
# Static at all: no dynamic loader, libgcc_s or relocation work per start (about 2 ms per
# container on the 2-vCPU reference VM when it was introduced). Not a static PIE: a PIE's
# start-up applies its relocations, writing every page of its relocated read-only data (66
# copy-on-write page faults per start with glibc), again in every container; the fixed image
# gave 0.29 ms less host CPU per job. The price is the randomisation of job-init's image only
# (its stack, heap, mappings and vDSO stay random), as for Debian's runc, whose `runc init` is
# position-dependent too: see docs/ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
for arg in "$@"; do
    [ "$arg" = "--release" ] && profile=release
done
target_dir=${CARGO_TARGET_DIR:-target}
musl=x86_64-unknown-linux-musl

if [ "$(uname -m)" = x86_64 ] && [ -d "$(rustc --print sysroot)/lib/rustlib/$musl/lib" ]; then
    cargo rustc -p job-init --bin job-init --target "$musl" "$@" -- -C relocation-model=static
    built="$target_dir/$musl/$profile/job-init"
    # A new inode, not a write through cargo's hard link to its own build in deps/.
    cp "$built" "$target_dir/$profile/.job-init.tmp"
    mv -f "$target_dir/$profile/.job-init.tmp" "$target_dir/$profile/job-init"
    echo "build-job-init: $target_dir/$profile/job-init (static, musl)"
else
    echo "build-job-init: no $musl target in this toolchain (rustup target add $musl);" \
        "linking job-init against static glibc" >&2
    cargo rustc -p job-init --bin job-init "$@" -- \
        -C target-feature=+crt-static -C relocation-model=static
    echo "build-job-init: $target_dir/$profile/job-init (static, glibc)"
fi
