#!/usr/bin/env bash
# jobd's start rate beside the peers' in the same minutes (root).
#
#   daemon/bench-rate.sh [ROUNDS]     (default 3; JOBD_JOBS=1000 PEER_RUNS=300 PAR=16)
#
# Each round runs, back to back:
#   crun, runc  PEER_RUNS x `run /bin/true` of a busybox bundle with job-runtime's default spec
#               (user, pid, mount, net, ipc, uts and cgroup namespaces, seccomp, the v1
#               cgroups), PAR in flight: the same kernel work a job's isolation needs, with
#               nothing of a service around it (no API, records, output capture or overlay);
#   jobd        the throughput part of examples/bench.rs: JOBD_JOBS StartJob calls over mTLS,
#               PAR in flight, each a job with its own overlay, limits and captured output.
# and prints each round and the medians, with jobd's rate as a ratio of each peer's.
#
# Why: this VM's speed drifts by a third within minutes (the same jobd build measured 8.4 and
# 12.7 ms of host CPU per job on one day), so an absolute rate says as much about the VM's
# phase as about jobd. The peers measured in the same minutes are the scale.
#
# crun refuses a hybrid cgroup host: its runs are in a private mount namespace where
# /sys/fs/cgroup/unified/cgroup.controllers is hidden under an empty file (as in
# scripts/bench-runtime.sh). Nothing outside that namespace changes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
jobd_jobs=${JOBD_JOBS:-1000}
peer_runs=${PEER_RUNS:-300}
par=${PAR:-16}
for tool in runc crun busybox python3; do
    command -v "$tool" >/dev/null || { echo "bench-rate: $tool is not installed" >&2; exit 2; }
done

cargo build --release -p daemon --bin jobd --bin jobd-shim --example bench -p runtime --bin job-runtime
scripts/build-job-init.sh --release
dir=${CARGO_TARGET_DIR:-target}/release

# The peers' bundle and state on a tmpfs, as /run is where they keep state on real hosts.
work=$(mktemp -d /dev/shm/jobworker-rate.XXXXXX)
chmod 755 "$work" # the container's root is an unprivileged host uid
cleanup() {
    for rt in runc crun; do
        for id in $("$rt" --root "$work/state-$rt" list -q 2>/dev/null); do
            "$rt" --root "$work/state-$rt" delete -f "$id" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT
bundle=$work/bundle
mkdir -p "$bundle"/rootfs/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
"$dir/job-runtime" spec --bundle "$bundle"
python3 - "$bundle/config.json" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["process"]["args"] = ["/bin/true"]
json.dump(spec, open(sys.argv[1], "w"), indent=2)
EOF

# Prints RUNTIME's containers/s for PEER_RUNS x `run /bin/true`, PAR in flight.
peer_rate() {
    local rt=$1
    unshare -m --propagation private bash -c '
        set -eu
        rt=$1 work=$2 bundle=$3 n=$4 par=$5
        if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
            : >"$work/empty"
            mount --bind "$work/empty" /sys/fs/cgroup/unified/cgroup.controllers
        fi
        start=$(date +%s.%N)
        seq "$n" | xargs -P "$par" -I{} "$rt" --root "$work/state-$rt" run -b "$bundle" "r{}" \
            >/dev/null 2>"$work/$rt.err" || { echo "$rt: some runs failed: $(head -c 300 "$work/$rt.err")" >&2; exit 1; }
        end=$(date +%s.%N)
        python3 -c "import sys; print(f\"{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.1f}\")" "$n" "$start" "$end"
    ' _ "$rt" "$work" "$bundle" "$peer_runs" "$par"
}

# Prints "STARTS_PER_S CPU_MS" from the jobd benchmark's throughput line.
jobd_rate() {
    local out
    out=$("$dir/examples/bench" --jobd "$dir/jobd" --fanout-clients 0 --running-jobs 0 \
        --python-jobs 0 --load-jobs 0 --latency-jobs 1 --throughput-jobs "$jobd_jobs" \
        --concurrency "$par" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | python3 -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"throughput .*?: (\d+) starts/s.*?host CPU ([\d.]+) ms per job", text)
if not m:
    sys.exit("no throughput line in the benchmark output:\n" + text)
print(m.group(1), m.group(2))'
}

results=$work/results
: >"$results"
echo "start rate, $par in flight: crun and runc ${peer_runs} x run /bin/true, jobd ${jobd_jobs} StartJob"
for r in $(seq "$rounds"); do
    crun_r=$(peer_rate crun)
    runc_r=$(peer_rate runc)
    read -r jobd_r cpu < <(jobd_rate)
    echo "$crun_r $runc_r $jobd_r $cpu" >>"$results"
    printf 'round %d: crun %6.1f/s  runc %6.1f/s  jobd %4d/s (%s ms host CPU per job)  jobd/crun %.2f  jobd/runc %.2f\n' \
        "$r" "$crun_r" "$runc_r" "$jobd_r" "$cpu" \
        "$(python3 -c "print($jobd_r / $crun_r)")" "$(python3 -c "print($jobd_r / $runc_r)")"
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
crun, runc, jobd, cpu = (statistics.median(c) for c in zip(*rows))
print(f"medians over {len(rows)} rounds: crun {crun:.1f}/s, runc {runc:.1f}/s, "
      f"jobd {jobd:.0f}/s at {cpu:.1f} ms of host CPU per job")
ratios = [j / c for c, _, j, _ in rows]
print(f"jobd/crun per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
      f"median {statistics.median(ratios):.2f}; jobd/runc median "
      f"{statistics.median(j / r for _, r, j, _ in rows):.2f}")
EOF
