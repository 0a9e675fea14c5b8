#!/usr/bin/env bash
# cgroup v2 test lane: boots a stock Debian 6.1 kernel under qemu (TCG) with a
# busybox initramfs, mounts a pure cgroup2 hierarchy at /sys/fs/cgroup, and runs
# tests/v2-lane/guest-tests.sh in the guest against the built job-runtime.
#
# Usage: tests/v2-lane/run.sh            (from anywhere)
#        tests/v2-lane/run.sh --systemd  systemd lane: the same kernel boots a minimal Debian
#                                        bookworm root (debootstrap, cached as an ext4 image)
#                                        with systemd as PID 1 and runs systemd-tests.sh
#                                        (job-runtime --systemd-cgroup) from a unit
# Env:
#   V2LANE_PROFILE     release (default) or debug: default bin dir and daemon test build
#   V2LANE_BIN_DIR     dir holding job-runtime + job-init (default: ${CARGO_TARGET_DIR:-<repo>/target}/$V2LANE_PROFILE)
#   V2LANE_LANE_ONLY=1 run only the lane self-checks (no job-runtime needed)
#   V2LANE_CACHE       kernel/initramfs cache (default: /var/cache/jobworker-v2lane)
#   V2LANE_KERNEL_PKG  e.g. linux-image-6.1.0-56-amd64 (default: newest 6.1.0-*-amd64 apt knows)
#   V2LANE_TIMEOUT     guest wall-time bound in seconds (default: 600)
#   V2LANE_ONLY        space-separated guest test names to run (default: all)
#   V2LANE_DAEMON_TESTS=1  also build (release) and run jobd's runtime-backed tests
#                      (daemon runner::tests::runtime_*: StartJob with limits over mTLS)
#   V2LANE_CARGO_TESTS "EXE[:FILTER] ..." other libtest executables to run in the guest
#   V2LANE_ACCEL       qemu accelerator (default: tcg; kvm where it works)
#   V2LANE_KEEP=1      keep the temp work dir (console.log, results.txt) for debugging
# Exit status: 0 iff the guest booted, ran the tests, wrote a final
# "V2LANE RESULT: N passed, 0 failed" line with N > 0, and powered off in time.
set -euo pipefail

MODE=v2
case "${1:-}" in
  --systemd) MODE=systemd ;;
  "") ;;
  *) echo "v2-lane: unknown argument $1 (only --systemd)" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${V2LANE_CACHE:-/var/cache/jobworker-v2lane}"
PROFILE="${V2LANE_PROFILE:-release}"   # release or debug: where binaries come from, how daemon tests build
case "$PROFILE" in release|debug) ;; *) echo "v2-lane: V2LANE_PROFILE must be release or debug" >&2; exit 2;; esac
BIN_DIR="${V2LANE_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE}"
TIMEOUT="${V2LANE_TIMEOUT:-600}"
ACCEL="${V2LANE_ACCEL:-tcg}"   # kvm works on a host whose /dev/kvm boots stock kernels (not this one)
LANE_ONLY="${V2LANE_LANE_ONLY:-0}"
# Bump when the set of modules or the initramfs recipe changes (invalidates the cache).
RECIPE=6
MODULES_WANTED=(9p 9pnet_virtio virtio_pci virtio_blk overlay ext4 crc32c_generic)  # ext4, crc32c: the systemd lane root
# systemd lane root: bump SD_RECIPE when the root's recipe (prepare_systemd_root) changes.
SD_SUITE=bookworm
SD_PACKAGES=systemd,systemd-sysv,dbus
SD_RECIPE=2

LOG_TAG=v2-lane; [[ $MODE == systemd ]] && LOG_TAG=systemd-lane
log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

T0=$(date +%s)
WORK="$(mktemp -d /tmp/v2lane.XXXXXX)"
QEMU_PID=
cleanup() {
  local rc=$?
  if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then kill "$QEMU_PID" 2>/dev/null || true; fi
  if [[ "${V2LANE_KEEP:-0}" == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "error: command failed at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- host tools
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
BUSYBOX=
for b in /bin/busybox /usr/bin/busybox; do
  if [[ -x $b ]] && ! ldd "$b" >/dev/null 2>&1; then BUSYBOX=$b; break; fi  # static only
done
[[ -n $BUSYBOX ]] || need_pkgs+=(busybox-static)
if [[ $MODE == systemd ]]; then
  command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
  command -v mke2fs >/dev/null || need_pkgs+=(e2fsprogs)
fi
apt_updated=0
apt_update_once() { [[ $apt_updated == 1 ]] || { log "apt-get update"; apt-get update -qq >&2; apt_updated=1; }; }
if ((${#need_pkgs[@]})); then
  apt_update_once
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
  BUSYBOX=/bin/busybox
fi
for t in gzip dpkg apt-get timeout; do command -v $t >/dev/null || die "missing host tool $t"; done

# ---------------------------------------------------------------- kernel
pick_kernel() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1
}
KPKG="${V2LANE_KERNEL_PKG:-$(pick_kernel)}"
if [[ -z "$KPKG" ]]; then apt_update_once; KPKG="$(pick_kernel)"; fi
[[ -n "$KPKG" ]] || die "no linux-image-6.1.0-*-amd64 package known to apt"
kver() { apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/{print $2}'; }
KVER_DEB="$(kver)"
if [[ -z "$KVER_DEB" || "$KVER_DEB" == "(none)" ]]; then apt_update_once; KVER_DEB="$(kver)"; fi
[[ -n "$KVER_DEB" && "$KVER_DEB" != "(none)" ]] || die "no candidate version for $KPKG"
KREL="${KPKG#linux-image-}"          # e.g. 6.1.0-56-amd64
KDIR="$CACHE/${KPKG}_${KVER_DEB}_r${RECIPE}"

prepare_kernel() {
  local tmp="$WORK/kernel-extract" mdir m f
  mkdir -p "$tmp" "$CACHE"
  log "downloading $KPKG=$KVER_DEB"
  (cd "$tmp" && apt-get download -qq "$KPKG=$KVER_DEB" >&2 2>/dev/null) || die "apt-get download $KPKG failed"
  dpkg -x "$tmp"/*.deb "$tmp/x"
  mdir="$tmp/x/lib/modules/$KREL"
  [[ -d $mdir ]] || die "no lib/modules/$KREL in $KPKG"
  local stage="$CACHE/.stage.$$"
  rm -rf "$stage"; mkdir -p "$stage/modules"
  cp "$tmp/x/boot/vmlinuz-$KREL" "$stage/vmlinuz"

  # name -> path map (names normalised to underscores, compression stripped)
  declare -A path=()
  while IFS= read -r f; do
    m="$(basename "$f")"; m="${m%%.ko*}"; m="${m//-/_}"; path[$m]="$f"
  done < <(find "$mdir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
  declare -A done_=()
  order=()
  builtin_has() { grep -q "/${1}\.ko\$" "$mdir/modules.builtin" 2>/dev/null || grep -q "/${1//_/-}\.ko\$" "$mdir/modules.builtin" 2>/dev/null; }
  add_mod() {
    local m="$1" src out deps d
    [[ -n "${done_[$m]:-}" ]] && return 0
    done_[$m]=1
    if [[ -z "${path[$m]:-}" ]]; then
      builtin_has "$m" && return 0
      die "module $m neither in $KPKG nor built in"
    fi
    src="${path[$m]}"; out="$stage/modules/$m.ko"
    case "$src" in
      *.xz) xz -dc "$src" >"$out" ;; *.zst) zstd -qdc "$src" >"$out" ;; *.gz) gzip -dc "$src" >"$out" ;;
      *) cp "$src" "$out" ;;
    esac
    deps="$(tr '\0' '\n' <"$out" | grep -a '^depends=' | head -1 | cut -d= -f2)"
    for d in ${deps//,/ }; do add_mod "${d//-/_}"; done
    order+=("$m")
  }
  for m in "${MODULES_WANTED[@]}"; do add_mod "$m"; done
  printf '%s\n' "${order[@]}" >"$stage/modules/order"
  rm -rf "$KDIR"; mv "$stage" "$KDIR"
  rm -rf "$tmp"
  # drop other kernel versions from the cache (other recipes of this one stay: branches with
  # another module list may share the cache on one machine)
  find "$CACHE" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "${KPKG}_${KVER_DEB}_r*" -exec rm -rf {} + 2>/dev/null || true
  log "kernel cached in $KDIR (modules: ${order[*]})"
}
[[ -f "$KDIR/vmlinuz" && -f "$KDIR/modules/order" ]] || prepare_kernel

# ---------------------------------------------------------------- systemd root (--systemd)
# A minimal Debian with systemd and dbus, trimmed, with a unit that runs the guest tests once
# the system is up and powers off when they end; packed into an ext4 image (mke2fs -d) that
# the guest mounts as / through a qemu snapshot, so the cached image is never written.
prepare_systemd_root() {
  local out="$1" stage="$CACHE/.sdroot.$$" mirror
  mirror="$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' 2>/dev/null | grep -m1 '/debian/$' || true)"
  mirror="${mirror:-http://deb.debian.org/debian/}"
  mkdir -p "$CACHE"; rm -rf "$stage"
  log "debootstrap --variant=minbase --include=$SD_PACKAGES $SD_SUITE ($mirror)"
  debootstrap --variant=minbase --include="$SD_PACKAGES" "$SD_SUITE" "$stage" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; rm -rf "$stage"; die "debootstrap failed"; }
  rm -rf "$stage"/var/cache/apt/* "$stage"/var/lib/apt/lists/* "$stage"/usr/share/{doc,man,info,locale}/*
  echo sdlane >"$stage/etc/hostname"
  : >"$stage/etc/machine-id"
  local sys="$stage/etc/systemd/system"
  # Nothing on the console but the tests: no login prompts, no apt timers.
  for u in serial-getty@.service getty@.service getty.target apt-daily.timer apt-daily-upgrade.timer \
           systemd-logind.service; do
    ln -sf /dev/null "$sys/$u"
  done
  cat >"$sys/jobworker-lane.service" <<'EOF'
[Unit]
Description=jobworker systemd lane: job-runtime --systemd-cgroup tests
After=basic.target dbus.socket
Wants=dbus.socket
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh /host/systemd-tests.sh
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TimeoutStartSec=infinity
EOF
  mkdir -p "$sys/multi-user.target.wants"
  ln -sf ../jobworker-lane.service "$sys/multi-user.target.wants/jobworker-lane.service"
  # Room for the binaries the guest copies in (debug builds: ~150 MiB); the file is sparse.
  local size_mb=$(( $(du -sm "$stage" | cut -f1) + 768 ))
  mke2fs -q -t ext4 -L sdroot -d "$stage" -F "$out.tmp" "${size_mb}M" >/dev/null || { rm -rf "$stage" "$out.tmp"; die "mke2fs -d failed"; }
  mv "$out.tmp" "$out"
  rm -rf "$stage"
  # drop roots of older recipes or package lists
  find "$CACHE" -mindepth 1 -maxdepth 1 -name 'systemd-root_*' ! -path "$out" -exec rm -f {} + 2>/dev/null || true
  log "systemd root cached in $out (${size_mb} MiB)"
}

# ---------------------------------------------------------------- initramfs
# Stage 1 (/init) copies the initramfs into a tmpfs and switch_roots to it, so
# that pivot_root(2) works for containers (it refuses a rootfs/initramfs root).
build_initramfs() {
  local ir="$WORK/initramfs" out="$1"
  mkdir -p "$ir"/{bin,sbin,dev,proc,sys,newroot,lib/v2lane,etc}
  cp "$BUSYBOX" "$ir/bin/busybox"
  cp "$KDIR"/modules/*.ko "$KDIR/modules/order" "$ir/lib/v2lane/"
  mknod -m 600 "$ir/dev/console" c 5 1
  mknod -m 666 "$ir/dev/null" c 1 3
  echo 'root:x:0:0:root:/root:/bin/sh' >"$ir/etc/passwd"
  echo 'root:x:0:' >"$ir/etc/group"
  cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t tmpfs -o mode=0755 tmpfs /newroot
cp -a /bin /sbin /lib /etc /init2 /newroot/
mkdir -p /newroot/dev /newroot/proc /newroot/sys /newroot/tmp /newroot/host /newroot/run
mknod -m 600 /newroot/dev/console c 5 1
exec switch_root /newroot /init2
EOF
  cat >"$ir/init2" <<'EOF'
#!/bin/sh
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
for m in $(cat /lib/v2lane/order); do insmod /lib/v2lane/$m.ko || echo "v2lane-init: insmod $m failed"; done
hostname v2lane
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /host; then
  echo "v2lane-init: cannot mount 9p share"; poweroff -f
fi
[ -d /host/sysroot ] && cp -a /host/sysroot/. /
echo "v2lane-init: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
sh /host/guest-tests.sh </dev/null
sync
umount /host 2>/dev/null
poweroff -f
EOF
  if [[ $MODE == systemd ]]; then
    # The Debian root on /dev/vda (ext4, written to a throwaway snapshot), the share at
    # /host, the binaries copied in, then systemd as PID 1.
    cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/v2lane/order); do insmod /lib/v2lane/$m.ko || echo "sdlane-init: insmod $m failed"; done
mount -t ext4 /dev/vda /newroot || { echo "sdlane-init: cannot mount /dev/vda"; poweroff -f; }
mkdir -p /newroot/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /newroot/host || { echo "sdlane-init: cannot mount 9p share"; poweroff -f; }
# Only the binaries: the Debian root has the same glibc (and a merged /usr the libs would clash with).
cp -a /newroot/host/sysroot/usr/local/. /newroot/usr/local/
umount /proc /sys /dev
exec switch_root /newroot /lib/systemd/systemd
EOF
  fi
  chmod 755 "$ir/init" "$ir/init2"
  (cd "$ir" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) >"$out"
}
INITRD="$WORK/initramfs.cpio.gz"
build_initramfs "$INITRD"

# ---------------------------------------------------------------- share
SHARE="$WORK/share"
mkdir -p "$SHARE/sysroot/usr/local/bin"
cp "$HERE/guest-tests.sh" "$SHARE/guest-tests.sh"
[[ $MODE == systemd ]] && cp "$HERE/systemd-tests.sh" "$SHARE/systemd-tests.sh"
: >"$SHARE/results.txt"
copy_stripped() {  # copy executable $1 to $2 without debug info: the guest copies the share
  # into a RAM-backed root, and debug builds are 70-190 MB each with it, 10-20 MB without
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$1" "$2"
  else
    cp "$1" "$2"
  fi
}
copy_with_libs() {  # copy binary $1 to sysroot/usr/local/bin with its ldd closure at the same paths
  local bin="$1" lib
  copy_stripped "$bin" "$SHARE/sysroot/usr/local/bin/$(basename "$bin")"
  { ldd "$bin" 2>/dev/null || true; } | { grep -oE '(/[^ ]+)' || true; } | while read -r lib; do
    [[ -e "$lib" ]] || continue
    mkdir -p "$SHARE/sysroot$(dirname "$lib")"
    cp -L "$lib" "$SHARE/sysroot$lib"
  done
}
if [[ "$LANE_ONLY" == 1 ]]; then
  log "V2LANE_LANE_ONLY=1: lane self-checks only, job-runtime not tested"
  echo 1 >"$SHARE/lane-only"
else
  for b in job-runtime job-init; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b missing (build: cargo build --release -p runtime -p job-init; or set V2LANE_BIN_DIR; or V2LANE_LANE_ONLY=1)"
    copy_with_libs "$BIN_DIR/$b"
  done
fi
# Rust test executables to run in the guest ("EXE[:FILTER] ...").
CARGO_TESTS="${V2LANE_CARGO_TESTS:-}"
if [[ "${V2LANE_DAEMON_TESTS:-0}" == 1 ]]; then
  # debug: the same invocation as the main test run (cargo test --workspace), so its
  # artifacts are reused as they are; release: only the daemon's.
  sel=(--workspace); [[ "$PROFILE" == release ]] && sel=(--release -p daemon)
  log "building the daemon's tests (cargo test ${sel[*]} --no-run)"
  exe="$(cd "$REPO" && cargo test "${sel[@]}" --no-run --message-format=json 2>/dev/null \
    | grep '"reason":"compiler-artifact"' | grep '"name":"daemon"' | grep '"kind":\["lib"\]' | grep '"test":true' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)" || true
  [[ -n "$exe" && -x "$exe" ]] || die "could not build the daemon's test executable"
  # The runtime-backed tests are #[ignore]d and run, all of them, by this one test in a
  # fresh process of the test binary.
  CARGO_TESTS+=" $exe:runner::tests::runtime_tests_in_their_own_process"
fi
if [[ -n "${CARGO_TESTS// /}" ]]; then
  [[ "$LANE_ONLY" == 1 ]] && die "V2LANE_LANE_ONLY=1 with cargo tests: they need job-init"
  mkdir -p "$SHARE/sysroot/opt/v2lane/target/deps"
  copy_stripped "$BIN_DIR/job-init" "$SHARE/sysroot/opt/v2lane/target/job-init"
  # The daemon's tests start jobs through jobd-shim, which they look for in the same place.
  if [[ -x "$BIN_DIR/jobd-shim" ]]; then
    copy_with_libs "$BIN_DIR/jobd-shim"
    mv "$SHARE/sysroot/usr/local/bin/jobd-shim" "$SHARE/sysroot/opt/v2lane/target/jobd-shim"
  fi
  for entry in $CARGO_TESTS; do
    exe="${entry%%:*}"; filter=""; [[ "$entry" == *:* ]] && filter="${entry#*:}"
    [[ -x "$exe" ]] || die "cargo test executable $exe missing"
    name="$(basename "$exe")"; name="${name%-*}"      # daemon-0123abcd -> daemon
    copy_with_libs "$exe"
    mv "$SHARE/sysroot/usr/local/bin/$(basename "$exe")" "$SHARE/sysroot/opt/v2lane/target/deps/$name"
    printf '%s' "$filter" >"$SHARE/sysroot/opt/v2lane/FILTER.$name"
    log "guest runs cargo tests of $name${filter:+ matching $filter}"
  done
fi
[[ -n "${V2LANE_ONLY:-}" ]] && printf '%s\n' "$V2LANE_ONLY" >"$SHARE/only"
if [[ $MODE == systemd ]]; then
  [[ -n "${CARGO_TESTS// /}" ]] && die "--systemd runs systemd-tests.sh only (no cargo tests)"
  [[ "$LANE_ONLY" == 1 ]] && die "--systemd needs job-runtime (no V2LANE_LANE_ONLY)"
  SDROOT="$CACHE/systemd-root_${SD_SUITE}_${SD_PACKAGES//,/+}_r${SD_RECIPE}.ext4"
  [[ -f "$SDROOT" ]] || prepare_systemd_root "$SDROOT"
  cp "$BUSYBOX" "$SHARE/sysroot/usr/local/bin/busybox"
  DRIVES=(-drive "file=$SDROOT,if=virtio,format=raw,snapshot=on")
  APPEND='console=ttyS0 panic=-1 quiet systemd.show_status=error'
else
  truncate -s 64M "$WORK/disk.img"    # /dev/vda: io.max target
  truncate -s 192M "$WORK/swap.img"   # /dev/vdb: swap for the swap-limit test
  DRIVES=(-drive "file=$WORK/disk.img,if=virtio,format=raw" -drive "file=$WORK/swap.img,if=virtio,format=raw")
  APPEND='console=ttyS0 panic=-1 quiet'
fi

# ---------------------------------------------------------------- boot
log "booting $KREL (timeout ${TIMEOUT}s)"
CONSOLE="$WORK/console.log"
trap - ERR
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
  -accel "$ACCEL" -cpu max -m 1024 -smp 2 \
  -nographic -no-reboot \
  -kernel "$KDIR/vmlinuz" -initrd "$INITRD" \
  -append "$APPEND" \
  -virtfs "local,path=$SHARE,mount_tag=host,security_model=none,id=host" \
  "${DRIVES[@]}" \
  -nic none </dev/null 2>&1 | tee "$CONSOLE"
QRC=${PIPESTATUS[0]}
set -e
T1=$(date +%s)
log "guest exited with status $QRC after $((T1 - T0))s total"

fail=0
if [[ $QRC == 124 || $QRC == 137 ]]; then log "FAIL: guest timed out after ${TIMEOUT}s"; fail=1; fi
if grep -q 'Kernel panic' "$CONSOLE"; then log "FAIL: guest kernel panicked"; fail=1; fi
RESULT_LINE="$(grep -a '^V2LANE RESULT:' "$SHARE/results.txt" | tail -1 || true)"
if [[ -z "$RESULT_LINE" ]]; then
  log "FAIL: no 'V2LANE RESULT:' line in results (guest died or tests did not finish)"; fail=1
else
  passed="$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$RESULT_LINE")"
  failed="$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$RESULT_LINE")"
  if [[ "$failed" != 0 || "$passed" == 0 ]]; then log "FAIL: $RESULT_LINE"; fail=1; fi
fi
if [[ $fail != 0 ]]; then
  log "failed tests:"; grep -a '^FAIL' "$SHARE/results.txt" >&2 || true
  exit 1
fi
log "OK: $RESULT_LINE"
