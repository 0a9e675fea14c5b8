#!/usr/bin/env bash
# Installs the Debian packages jobworker needs, as root. `.ci/run` and the quick start call it.
#   scripts/deps.sh            everything the tests and benchmarks use
#   scripts/deps.sh --minimal  only what building and running jobd needs
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Building (gcc for crates with C parts), running jobd (python3 and busybox for the default
# rootfs, openssl for the TLS checks in the troubleshooting guide).
minimal=(gcc libc6-dev python3 busybox-static openssl ca-certificates procps util-linux)
# The tests and benchmarks: the peers (runc, crun, podman, containerd), hyperfine, umoci for OCI
# images, qemu and friends for the cgroup v2 lane.
full=(runc crun hyperfine umoci qemu-system-x86 cpio xz-utils zstd kmod iproute2
      podman conmon containerd tar systemd man-db debootstrap e2fsprogs)

packages=("${minimal[@]}")
[ "${1:-}" = "--minimal" ] || packages+=("${full[@]}")

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: run as root (apt-get installs packages)" >&2
    exit 1
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
    cat >&2 <<'MSG'
deps: no Rust toolchain (cargo) on this machine. Install the stable toolchain with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . "$HOME/.cargo/env"
then run this again (jobworker needs Rust 1.85 or newer; Debian 12's own rustc is too old).
MSG
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# job-init links against musl when this target is there (scripts/build-job-init.sh says why);
# without it, against static glibc.
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-musl" ]; then
    timeout 300 rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
fi
