#!/usr/bin/env bash
# Start-up benchmark: job-runtime against runc and crun on the same busybox bundle, side by side
# in one hyperfine run. Prints the medians and the ratios job-runtime/peer.
#
#   scripts/bench-runtime.sh [RUNS]        (default 50; needs root, hyperfine, runc, crun)
#
# crun refuses a hybrid cgroup host; the whole benchmark therefore runs in a private mount
# namespace where /sys/fs/cgroup/unified/cgroup.controllers is hidden under an empty file, so
# all three runtimes see the same (v1) host. Nothing outside that namespace is changed.
set -euo pipefail

runs=${1:-50}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${JOB_RUNTIME_BIN:-$repo/target/release/job-runtime}
for tool in hyperfine runc crun busybox python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "bench: $bin missing: cargo build --release -p runtime; scripts/build-job-init.sh --release" >&2; exit 2; }

if [ -z "${BENCH_IN_NS:-}" ]; then
    export BENCH_IN_NS=1
    exec unshare -m --propagation private "$0" "$@"
fi

# State roots and the bundle on a tmpfs, as /run is on the hosts these runtimes serve (their
# default roots are /run/<runtime>). This VM's /tmp is ext4 without a journal, where creating a
# file near many recent deletions costs up to a millisecond: that would measure the disk's
# history, not the runtimes. BENCH_DIR overrides.
work=$(mktemp -d "${BENCH_DIR:-/dev/shm}/jobworker-bench.XXXXXX")
# The container root is an unprivileged host uid: it must be able to reach the bundle.
chmod 755 "$work"
cleanup() {
    for rt in "$bin" runc crun; do
        for id in $("$rt" --root "$work/state-$(basename "$rt")" list -q 2>/dev/null); do
            "$rt" --root "$work/state-$(basename "$rt")" delete -f "$id" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT

if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
    : >"$work/empty"
    mount --bind "$work/empty" /sys/fs/cgroup/unified/cgroup.controllers
fi

bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
ln -s busybox "$bundle/rootfs/bin/sh"
"$bin" spec --bundle "$bundle"
python3 - "$bundle/config.json" <<'EOF'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["args"] = ["/bin/true"]
json.dump(spec, open(path, "w"), indent=2)
EOF

jr="$bin --root $work/state-job-runtime"
rc="runc --root $work/state-runc"
cr="crun --root $work/state-crun"
hf=(hyperfine --show-output --warmup 3 --runs "$runs" --export-json)

echo "== run /bin/true ($runs runs each)"
"${hf[@]}" "$work/run.json" \
    -n job-runtime "$jr run -b $bundle b1" \
    -n runc "$rc run -b $bundle b1" \
    -n crun "$cr run -b $bundle b1" >"$work/run.log"

echo "== create + start + delete ($runs runs each)"
"${hf[@]}" "$work/lifecycle.json" \
    -n job-runtime "$jr create -b $bundle b2 && $jr start b2 && $jr delete -f b2" \
    -n runc "$rc create -b $bundle b2 && $rc start b2 && $rc delete -f b2" \
    -n crun "$cr create -b $bundle b2 && $cr start b2 && $cr delete -f b2" >"$work/lifecycle.log"

python3 - "$work/run.json" "$work/lifecycle.json" <<'EOF'
import json, sys
for path, title in zip(sys.argv[1:], ["run /bin/true", "create+start+delete"]):
    results = {r["command"]: r for r in json.load(open(path))["results"]}
    med = {name: r["median"] * 1000 for name, r in results.items()}
    ours = med["job-runtime"]
    print(f"\n{title}: medians")
    for name, m in med.items():
        lo, hi = results[name]["min"] * 1000, results[name]["max"] * 1000
        print(f"  {name:12} {m:7.2f} ms   (min {lo:.2f}, max {hi:.2f})")
    for peer in ("runc", "crun"):
        print(f"  ratio job-runtime/{peer}: {ours / med[peer]:.2f}")
EOF

# Throughput: THROUGHPUT_RUNS containers (`run /bin/true`) with THROUGHPUT_PAR in flight, each
# runtime in turn: what the host sustains, the ceiling for any service built on a runtime.
n=${THROUGHPUT_RUNS:-200}
par=${THROUGHPUT_PAR:-16}
echo
echo "throughput: $n x run /bin/true, $par in flight"
for pair in "job-runtime:$jr" "runc:$rc" "crun:$cr"; do
    name=${pair%%:*}
    cmd=${pair#*:}
    start=$(date +%s.%N)
    failed=""
    seq "$n" | xargs -P "$par" -I{} sh -c "$cmd run -b $bundle t{} >/dev/null 2>&1" || failed=" (some runs FAILED)"
    end=$(date +%s.%N)
    python3 -c "import sys; n,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'  {sys.argv[4]:12} {n/(e-s):6.1f} containers/s{sys.argv[5]}')" "$n" "$start" "$end" "$name" "$failed"
done
