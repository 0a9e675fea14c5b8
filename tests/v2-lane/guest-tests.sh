#!/bin/sh
# Guest test program of the cgroup v2 lane (busybox sh, runs as root in the guest).
# Each test is a function t_NAME run in a subshell; it passes by returning 0 and
# fails by calling `no "reason"` (or returning non-zero). Output: one
# `PASS name` / `FAIL name: reason` / `SKIP name: reason` line per test, then
# `V2LANE RESULT: N passed, M failed`; everything is also appended to
# /host/results.txt (the 9p share) which run.sh parses.

RESULTS=/host/results.txt
CG=/sys/fs/cgroup
LANE_CG=$CG/lane.scope         # where this script lives (a leaf, like init.scope)
RT=/usr/local/bin/job-runtime
RTROOT=/run/job-runtime
WORKDIR=/tmp/v2w
PER_TEST_TIMEOUT=${PER_TEST_TIMEOUT:-150}
P=0; F=0; S=0

say() { echo "$*"; echo "$*" >>"$RESULTS"; }
no() { echo "$*" >/tmp/why; exit 1; }
skip() { echo "$*" >/tmp/skip; exit 0; }
log() { echo "    $*"; }

# ------------------------------------------------------------------ helpers
cgread() { cat "$1" 2>/dev/null; }
# value of KEY in a flat-keyed file ("key value" lines)
kv() { awk -v k="$2" '$1==k{print $2}' "$1" 2>/dev/null; }
mkcg() { d=$CG/t-$1; rmdir "$d" 2>/dev/null; mkdir "$d" || no "mkdir $d"; echo "$d"; }
rmcg() { [ -d "$1" ] || return 0; echo 1 >"$1/cgroup.kill" 2>/dev/null; i=0; while [ $i -lt 50 ] && ! rmdir "$1" 2>/dev/null; do sleep 0.1; i=$((i+1)); done; }

# ------------------------------------------------------------------ lane self-checks
t_lane_cgroup2_mounted() {
  grep -q "^cgroup2 $CG cgroup2 " /proc/mounts || no "no cgroup2 mount at $CG: $(grep cgroup /proc/mounts)"
  grep -q " cgroup " /proc/mounts && no "a cgroup v1 hierarchy is mounted"
  for c in memory pids cpu io; do
    grep -qw $c $CG/cgroup.controllers || no "controller $c missing from $CG/cgroup.controllers: $(cat $CG/cgroup.controllers)"
    grep -qw $c $CG/cgroup.subtree_control || no "controller $c not enabled in root subtree_control"
  done
  [ "$(cat /proc/self/cgroup)" = "0::/lane.scope" ] || no "test shell not in /lane.scope: $(cat /proc/self/cgroup)"
}

t_lane_memory_max_oom() {
  d=$(mkcg mem)
  echo 32M >$d/memory.max || no "write memory.max"
  echo 0 >$d/memory.swap.max 2>/dev/null
  # tail keeps a newline-free stream in memory: allocates ~100M
  sh -c "echo \$\$ >$d/cgroup.procs && head -c 104857600 /dev/zero | tail >/dev/null"
  rc=$?
  ok=$(kv $d/memory.events oom_kill)
  rmcg $d
  [ "$rc" != 0 ] || no "allocation of 100M under memory.max=32M succeeded"
  [ "${ok:-0}" -ge 1 ] || no "memory.events oom_kill=${ok:-missing}, rc=$rc"
  log "rc=$rc oom_kill=$ok"
}

t_lane_pids_max() {
  d=$(mkcg pids)
  echo 8 >$d/pids.max || no "write pids.max"
  sh -c "echo \$\$ >$d/cgroup.procs; i=0; while [ \$i -lt 30 ]; do sleep 30 & i=\$((i+1)); done" 2>/dev/null
  cur=$(cat $d/pids.current); ev=$(kv $d/pids.events max)
  rmcg $d
  [ "$cur" -le 8 ] || no "pids.current=$cur > pids.max=8"
  [ "${ev:-0}" -ge 1 ] || no "pids.events max=${ev:-missing}: fork loop never hit the limit"
  log "pids.current=$cur events.max=$ev"
}

t_lane_cgroup_kill() {
  d=$(mkcg kill)
  sh -c "echo \$\$ >$d/cgroup.procs; exec sleep 100" &
  sleep 0.5
  n=$(wc -l <$d/cgroup.procs)
  [ "$n" -ge 1 ] || no "no process in cgroup"
  echo 1 >$d/cgroup.kill || no "cgroup.kill not writable"
  i=0; while [ $i -lt 50 ] && grep -q 'populated 1' $d/cgroup.events; do sleep 0.1; i=$((i+1)); done
  grep -q 'populated 0' $d/cgroup.events || no "still populated after cgroup.kill"
  rmdir $d || no "rmdir after kill"
}

t_lane_cpu_max() {
  d=$(mkcg cpu)
  echo "20000 100000" >$d/cpu.max || no "write cpu.max"
  sh -c "echo \$\$ >$d/cgroup.procs; exec sh -c 'while :; do :; done'" &
  sleep 0.5
  u0=$(kv $d/cpu.stat usage_usec); t0=$(date +%s)
  sleep 4
  u1=$(kv $d/cpu.stat usage_usec); t1=$(date +%s)
  thr=$(kv $d/cpu.stat nr_throttled)
  rmcg $d
  pct=$(( (u1 - u0) / ((t1 - t0) * 10000) ))
  log "busy loop under cpu.max 20%: ${pct}% of one cpu, nr_throttled=$thr"
  [ "$pct" -ge 8 ] && [ "$pct" -le 35 ] || no "usage ${pct}% outside 8..35%"
  [ "${thr:-0}" -ge 1 ] || no "never throttled"
}

t_lane_io_device() {
  [ -b /dev/vda ] || no "no /dev/vda (virtio disk) in guest"
  dev=$(cat /sys/block/vda/dev)
  d=$(mkcg io)
  echo "$dev wbps=1048576" >$d/io.max || no "write io.max for $dev"
  got=$(grep "^$dev " $d/io.max)
  rmcg $d
  echo "$got" | grep -q "wbps=1048576" || no "io.max reads back '$got'"
  log "vda is $dev"
}

# ------------------------------------------------------------------ job-runtime tests
have_rt() { [ -x $RT ] || skip "job-runtime not provided (lane-only run)"; }

# mkbundle NAME ARGS_JSON [RESOURCES_JSON] [CGROUPS_PATH]
# A bundle with the busybox rootfs; writes a literal config.json (no jq in the guest).
mkbundle() {
  b=$WORKDIR/$1; rm -rf "$b"; mkdir -p "$b/rootfs"
  (cd "$b/rootfs" && mkdir -p bin proc sys dev tmp etc && cp /bin/busybox bin/ &&
    for a in sh cat echo sleep head tail true false ls ps id dd yes seq kill; do ln -s busybox bin/$a; done)
  cgp=""; [ -n "$4" ] && cgp="\"cgroupsPath\": \"$4\","
  cat >"$b/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": $2,
    "env": ["PATH=/bin", "TERM=xterm"],
    "cwd": "/",
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "v2lane",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
  ],
  "linux": {
    $cgp
    "resources": ${3:-{\}},
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}]
  }
}
EOF
  echo "$b"
}

# cgroup dir of a live container (from its init pid)
ctr_cg() {
  pid=$($RT --root $RTROOT state "$1" 2>/dev/null | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
  [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
  p=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
  [ -n "$p" ] && echo "$CG$p"
}

cleanup_ctr() { $RT --root $RTROOT delete --force "$1" >/dev/null 2>&1; }

t_rt_smoke() {
  have_rt
  b=$(mkbundle smoke '["sh", "-c", "echo hello-from-v2"]')
  out=$($RT --root $RTROOT run -b "$b" smoke 2>&1); rc=$?
  cleanup_ctr smoke
  [ $rc = 0 ] || no "run exited $rc: $out"
  echo "$out" | grep -q hello-from-v2 || no "output: $out"
}

# ------------------------------------------------------------------ driver
run_test() {
  name=$1
  if [ -f /host/only ] && ! grep -qw "$name" /host/only; then return; fi
  rm -f /tmp/why /tmp/skip
  echo "--- $name"
  ( t_$name ) &
  tp=$!
  ( sleep $PER_TEST_TIMEOUT; echo "timed out after ${PER_TEST_TIMEOUT}s" >/tmp/why; kill -9 $tp ) 2>/dev/null &
  wd=$!
  wait $tp; rc=$?
  kill $wd 2>/dev/null; wait $wd 2>/dev/null
  if [ -f /tmp/skip ]; then say "SKIP $name: $(cat /tmp/skip)"; S=$((S+1))
  elif [ $rc = 0 ]; then say "PASS $name"; P=$((P+1))
  else say "FAIL $name: $(cat /tmp/why 2>/dev/null || echo "exit $rc")"; F=$((F+1)); fi
}

# systemd-like layout: controllers enabled at the root, this script in a leaf.
mkdir -p $LANE_CG $WORKDIR
echo $$ >$LANE_CG/cgroup.procs
echo "+cpu +io +memory +pids" >$CG/cgroup.subtree_control
say "v2lane guest: $(uname -r), controllers: $(cat $CG/cgroup.controllers)"

for t in lane_cgroup2_mounted lane_memory_max_oom lane_pids_max lane_cgroup_kill lane_cpu_max lane_io_device \
         rt_smoke; do
  run_test $t
done

say "V2LANE RESULT: $P passed, $F failed, $S skipped"
