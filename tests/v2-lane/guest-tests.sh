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
wait_unpopulated() { i=0; while [ $i -lt ${2:-50} ] && grep -q 'populated 1' $1/cgroup.events 2>/dev/null; do sleep 0.1; i=$((i+1)); done; ! grep -q 'populated 1' $1/cgroup.events 2>/dev/null; }
# ftrace of the kernel's cgroup.kill handler: tells who wrote cgroup.kill
TR=/sys/kernel/tracing
trace_on() {
  [ -f $TR/trace ] || mount -t tracefs nodev $TR 2>/dev/null || return 1
  echo cgroup_kill_write >$TR/set_ftrace_filter 2>/dev/null || return 1
  echo function >$TR/current_tracer || return 1
  echo >$TR/trace; echo 1 >$TR/tracing_on
}
trace_hits() { grep -v '^#' $TR/trace | grep cgroup_kill_write; }
trace_off() { echo nop >$TR/current_tracer; echo >$TR/set_ftrace_filter; echo >$TR/trace; }
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
  trace_on || no "cannot trace cgroup_kill_write (ftrace): the cgroup.kill detector would not work"
  echo 1 >$d/cgroup.kill || no "cgroup.kill not writable"
  hits=$(trace_hits); trace_off
  wait_unpopulated $d 50 || no "still populated after cgroup.kill"
  rmdir $d || no "rmdir after kill"
  echo "$hits" | grep -q cgroup_kill_write || no "ftrace did not see our cgroup.kill write"
  log "ftrace saw: $(echo "$hits" | head -1 | sed 's/^ *//')"
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

t_lane_overlay() {
  grep -qw overlay /proc/filesystems || no "no overlay filesystem in the guest"
  m=/tmp/ovl; mkdir -p $m/l $m/u $m/w $m/m; echo low >$m/l/f
  mount -t overlay overlay -o lowerdir=$m/l,upperdir=$m/u,workdir=$m/w $m/m || no "overlay mount failed"
  echo up >$m/m/f; r=$(cat $m/l/f); umount $m/m; rm -rf $m
  [ "$r" = low ] || no "overlay wrote through to lowerdir"
}

# ------------------------------------------------------------------ job-runtime tests
have_rt() { [ -x $RT ] || skip "job-runtime not provided (lane-only run)"; }
rt() { $RT --root $RTROOT "$@"; }

NS_ALL='[{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}]'
NS_NOPID='[{"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}]'

# mkbundle NAME ARGS_JSON [RESOURCES_JSON] [CGROUPS_PATH] [NAMESPACES_JSON] [EXTRA_MOUNTS_JSON]
# A bundle with a busybox rootfs and a literal config.json (no jq in the guest).
mkbundle() {
  b=$WORKDIR/$1; rm -rf "$b"; mkdir -p "$b/rootfs"
  (cd "$b/rootfs" && mkdir -p bin proc sys dev tmp etc && cp /bin/busybox bin/ &&
    for a in sh cat echo sleep head tail true false ls ps id dd yes seq kill; do ln -s busybox bin/$a; done)
  cgp=""; [ -n "$4" ] && cgp="\"cgroupsPath\": \"$4\","
  res=${3:-"{}"}; ns=${5:-$NS_ALL}
  cat >"$b/config.json" <<EOJ
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
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}$6
  ],
  "linux": {
    $cgp
    "resources": $res,
    "namespaces": $ns
  }
}
EOJ
  echo "$b"
}

st_pid() { rt state "$1" 2>/dev/null | tr -d '\n' | sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p'; }
st_status() { rt state "$1" 2>/dev/null | tr -d '\n' | sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p'; }
# wait_status ID STATUS [TENTHS]
wait_status() { i=0; while [ $i -lt ${3:-100} ]; do [ "$(st_status $1)" = "$2" ] && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
# cgroup dir of a container whose init is alive
ctr_cg() {
  pid=$(st_pid "$1"); [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
  p=$(sed -n 's/^0:://p' /proc/$pid/cgroup); [ -n "$p" ] || return 1
  echo "$CG$p"
}
# create + start, detached; stdio to /tmp/ID.out. Sets D to the container's cgroup.
up() {
  rt create -b "$2" "$1" </dev/null >/tmp/$1.out 2>&1 || no "create $1 failed: $(cat /tmp/$1.out)"
  D=$(ctr_cg "$1") || { rt delete --force "$1" >/dev/null 2>&1; no "cannot find cgroup of $1 (state: $(rt state $1 2>&1))"; }
  rt start "$1" >>/tmp/$1.out 2>&1 || { rt delete --force "$1" >/dev/null 2>&1; no "start $1 failed: $(cat /tmp/$1.out)"; }
}
down() { rt delete --force "$1" >/dev/null 2>&1; }
# no cgroup other than the root may hold processes while it has controllers in subtree_control
internal_procs() {
  find $CG -mindepth 1 -type d | while read -r c; do
    [ -n "$(cat $c/cgroup.subtree_control 2>/dev/null)" ] && [ -n "$(cat $c/cgroup.procs 2>/dev/null)" ] &&
      echo "${c#$CG} (subtree_control: $(cat $c/cgroup.subtree_control), procs: $(cat $c/cgroup.procs | tr '\n' ' '))"
  done
}

t_rt_smoke() {
  have_rt
  b=$(mkbundle smoke '["sh", "-c", "echo hello-from-v2; cat /proc/self/cgroup"]')
  out=$(rt run -b "$b" smoke 2>&1 </dev/null); rc=$?
  down smoke
  [ $rc = 0 ] || no "run exited $rc: $out"
  echo "$out" | grep -q hello-from-v2 || no "output: $out"
  log "$(echo "$out" | tr '\n' ' ')"
}

# On a v2 host without systemd nobody enables controllers for the runtime:
# it must write +memory etc. into subtree_control down its path itself.
t_rt_enables_controllers() {
  have_rt
  echo "-cpu -io -memory -pids" >$CG/cgroup.subtree_control 2>/dev/null || skip "cannot clear root subtree_control (a descendant uses a controller)"
  b=$(mkbundle enable '["sleep", "1000"]' '{"memory": {"limit": 67108864}, "pids": {"limit": 50}}')
  ( up enable "$b"; echo "$D" >/tmp/enable.cg )
  rc=$?
  D=$(cat /tmp/enable.cg 2>/dev/null)
  mm=$(cat $D/memory.max 2>/dev/null); pm=$(cat $D/pids.max 2>/dev/null)
  bad=$(internal_procs)
  down enable
  echo "+cpu +io +memory +pids" >$CG/cgroup.subtree_control
  [ $rc = 0 ] || no "with no controllers enabled at the root: $(cat /tmp/why)"
  [ "$mm" = 67108864 ] || no "memory.max in ${D#$CG} is '$mm' (want 67108864)"
  [ "$pm" = 50 ] || no "pids.max in ${D#$CG} is '$pm' (want 50)"
  [ -z "$bad" ] || no "processes in cgroups with controllers enabled: $bad"
}

t_rt_memory_oom() {
  have_rt
  b=$(mkbundle oom '["dd", "if=/dev/zero", "of=/dev/null", "bs=104857600", "count=1"]' '{"memory": {"limit": 33554432}}')
  out=$(rt run -b "$b" oom1 2>&1 </dev/null); rc=$?
  down oom1
  [ $rc = 137 ] || no "run of a 100M allocation under a 32M limit exited $rc (want 137): $out"
  up oom2 "$b"
  mm=$(cat $D/memory.max)
  wait_status oom2 stopped 200 || { down oom2; no "oom2 not stopped (status $(st_status oom2))"; }
  k=$(kv $D/memory.events oom_kill)
  rt delete oom2 >/tmp/oom2.del 2>&1 || { down oom2; no "delete of stopped container failed: $(cat /tmp/oom2.del)"; }
  [ -d "$D" ] && no "cgroup ${D#$CG} left after delete"
  [ "$mm" = 33554432 ] || no "memory.max=$mm (want 33554432)"
  [ "${k:-0}" -ge 1 ] || no "memory.events oom_kill=${k:-missing}"
  log "run rc=$rc memory.max=$mm oom_kill=$k"
}

# With swap on (as on many users' machines): OCI memory.swap is memory+swap,
# v2's memory.swap.max is swap alone; swap == limit must mean swap.max = 0, or
# the job swaps past its limit instead of being OOM-killed.
t_rt_memory_swap() {
  have_rt
  [ -b /dev/vdb ] || no "no /dev/vdb for swap"
  mkswap /dev/vdb >/dev/null 2>&1 && swapon /dev/vdb || no "swapon /dev/vdb failed"
  b=$(mkbundle swap '["dd", "if=/dev/zero", "of=/dev/null", "bs=104857600", "count=1"]' \
      '{"memory": {"limit": 33554432, "swap": 33554432}}')
  rt create -b "$b" swap </dev/null >/tmp/swap.out 2>&1; crc=$?
  D=$(ctr_cg swap); sm=$(cat $D/memory.swap.max 2>/dev/null)
  down swap
  out=$(rt run -b "$b" swap2 2>&1 </dev/null); rc=$?
  down swap2
  swapoff /dev/vdb
  [ $crc = 0 ] || no "create failed: $(cat /tmp/swap.out)"
  [ "$sm" = 0 ] || no "memory.swap.max=$sm for swap == limit (want 0); allocation exited $rc"
  [ $rc = 137 ] || no "100M allocation under limit 32M, swap 32M (no swap) with swap on: exit $rc (want 137): $out"
  log "memory.swap.max=$sm rc=$rc"
}

t_rt_pids_max() {
  have_rt
  # the inner shell dies at the first failed fork; pid 1 and the sleeps stay
  b=$(mkbundle pids '["sh", "-c", "sh -c \"i=0; while [ \\$i -lt 40 ]; do sleep 1000 & i=\\$((i+1)); done\" 2>/dev/null; exec sleep 1000"]' \
      '{"pids": {"limit": 10}}')
  up pids "$b"
  i=0; while [ $i -lt 300 ] && [ "$(kv $D/pids.events max)" = 0 ]; do sleep 0.1; i=$((i+1)); done
  pm=$(cat $D/pids.max); cur=$(cat $D/pids.current); ev=$(kv $D/pids.events max)
  down pids
  [ "$pm" = 10 ] || no "pids.max=$pm"
  [ "$cur" -le 10 ] || no "pids.current=$cur > 10"
  [ "$cur" -ge 8 ] || no "pids.current=$cur: the container lost its processes (want 8..10 alive)"
  [ "${ev:-0}" -ge 1 ] || no "fork loop never hit the limit (pids.events max=$ev, current=$cur)"
  log "pids.max=$pm current=$cur events.max=$ev"
}

t_rt_cpu_max() {
  have_rt
  b=$(mkbundle cpu '["sh", "-c", "while :; do :; done"]' '{"cpu": {"quota": 20000, "period": 100000}}')
  up cpu "$b"
  cm=$(cat $D/cpu.max)
  sleep 0.5
  u0=$(kv $D/cpu.stat usage_usec); t0=$(date +%s)
  sleep 5
  u1=$(kv $D/cpu.stat usage_usec); t1=$(date +%s)
  thr=$(kv $D/cpu.stat nr_throttled)
  down cpu
  [ "$cm" = "20000 100000" ] || no "cpu.max='$cm' (want '20000 100000')"
  pct=$(( (u1 - u0) / ((t1 - t0) * 10000) ))
  log "cpu.max=$cm busy loop at ${pct}% of one cpu, nr_throttled=$thr"
  [ "$pct" -ge 8 ] && [ "$pct" -le 35 ] || no "busy loop at ${pct}% under a 20% quota (band 8..35)"
}

t_rt_io_max() {
  have_rt
  [ -b /dev/vda ] || no "no /dev/vda"
  dev=$(cat /sys/block/vda/dev); maj=${dev%:*}; min=${dev#*:}
  b=$(mkbundle io '["sleep", "1000"]' "{\"blockIO\": {
      \"throttleReadBpsDevice\": [{\"major\": $maj, \"minor\": $min, \"rate\": 2097152}],
      \"throttleWriteBpsDevice\": [{\"major\": $maj, \"minor\": $min, \"rate\": 1048576}],
      \"throttleReadIOPSDevice\": [{\"major\": $maj, \"minor\": $min, \"rate\": 300}],
      \"throttleWriteIOPSDevice\": [{\"major\": $maj, \"minor\": $min, \"rate\": 200}]}}")
  up io "$b"
  got=$(cat $D/io.max)
  down io
  want="$dev rbps=2097152 wbps=1048576 riops=300 wiops=200"
  [ "$got" = "$want" ] || no "io.max='$got' (want '$want')"
  log "io.max: $got"
}

t_rt_delete_removes_cgroup() {
  have_rt
  b=$(mkbundle del '["sleep", "1000"]' '{"pids": {"limit": 20}}')
  up del "$b"
  rt delete del >/dev/null 2>&1 && no "delete of a running container succeeded without --force"
  [ -d "$D" ] || no "failed delete removed the cgroup"
  trace_on || true
  rt delete --force del >/tmp/del.out 2>&1 || { down del; no "delete --force failed: $(cat /tmp/del.out)"; }
  hits=$(trace_hits); trace_off
  [ -d "$D" ] && no "cgroup ${D#$CG} left after delete --force"
  rt state del >/dev/null 2>&1 && no "state still known after delete --force"
  echo "$hits" | grep -q 'job-runtime' || no "delete --force did not write cgroup.kill (ftrace: ${hits:-no hits})"
  # a container that exited by itself: plain delete removes its cgroup
  b=$(mkbundle del2 '["true"]' '{"pids": {"limit": 20}}')
  up del2 "$b"
  wait_status del2 stopped 100 || { down del2; no "del2 not stopped"; }
  rt delete del2 >/tmp/del2.out 2>&1 || { down del2; no "delete of stopped container failed: $(cat /tmp/del2.out)"; }
  [ -d "$D" ] && no "cgroup ${D#$CG} left after delete of a stopped container"
  return 0
}

# Without a pid namespace, killing init leaves the rest alive: kill --all must
# reach every process of the cgroup (and do it through cgroup.kill).
t_rt_kill_all() {
  have_rt
  b=$(mkbundle killall '["sh", "-c", "sleep 1000 & sleep 1000 & (sleep 1000 &) ; exec sleep 1000"]' '{"pids": {"limit": 50}}' "" "$NS_NOPID")
  up killall "$b"
  i=0; while [ $i -lt 50 ] && [ "$(cat $D/pids.current)" -lt 4 ]; do sleep 0.1; i=$((i+1)); done
  n=$(cat $D/pids.current)
  trace_on || true
  rt kill --all killall KILL >/tmp/killall.out 2>&1; rc=$?
  wait_unpopulated $D 50; pop=$?
  hits=$(trace_hits); trace_off
  left=$(cat $D/cgroup.procs 2>/dev/null | tr '\n' ' ')
  down killall
  [ $rc = 0 ] || no "kill --all exited $rc: $(cat /tmp/killall.out)"
  [ $pop = 0 ] || no "processes left after kill --all: $left (had $n)"
  echo "$hits" | grep -q 'job-runtime' || no "kill --all did not write cgroup.kill (ftrace: ${hits:-no hits})"
  log "killed $n processes; $(echo "$hits" | head -1 | sed 's/^ *//')"
}

# delete --force of a container whose processes sit in a nested cgroup too
t_rt_delete_force_nested() {
  have_rt
  b=$(mkbundle nest '["sh", "-c", "sleep 1000 & exec sleep 1000"]' '{"pids": {"limit": 50}}' "" "$NS_NOPID")
  up nest "$b"
  i=0; while [ $i -lt 50 ] && [ "$(cat $D/pids.current)" -lt 2 ]; do sleep 0.1; i=$((i+1)); done
  init=$(st_pid nest); child=$(grep -v "^$init\$" $D/cgroup.procs | head -1)
  mkdir $D/sub && echo "$child" >$D/sub/cgroup.procs || { down nest; no "could not move $child into a sub-cgroup"; }
  rt delete --force nest >/tmp/nest.out 2>&1; rc=$?
  alive=""; kill -0 "$child" 2>/dev/null && alive=yes
  [ -d $D/sub ] && { echo 1 >$D/sub/cgroup.kill; sleep 0.2; rmdir $D/sub; }
  [ -d $D ] && { echo 1 >$D/cgroup.kill; sleep 0.2; rmdir $D; }
  down nest   # the state, if the first delete failed
  [ -z "$alive" ] || no "process $child in nested cgroup survived delete --force"
  [ $rc = 0 ] || no "delete --force with a nested cgroup failed: $(cat /tmp/nest.out)"
}

# Nested absolute cgroupsPath with controllers: intermediate levels get
# subtree_control but never processes; the caller's own cgroup is never used.
t_rt_no_internal_procs() {
  have_rt
  b1=$(mkbundle nip1 '["sleep", "1000"]' '{"memory": {"limit": 67108864}, "pids": {"limit": 30}, "cpu": {"quota": 50000, "period": 100000}}' /v2lane-nest/mid/nip1)
  b2=$(mkbundle nip2 '["sleep", "1000"]' '{"memory": {"limit": 67108864}, "pids": {"limit": 30}}')
  b3=$(mkbundle nip3 '["sleep", "1000"]' '{"memory": {"limit": 67108864}}' nip3-relative)
  ( up nip1 "$b1"; echo "$D" >/tmp/nip1.cg ) || { cat /tmp/why >/tmp/nip.err; }
  ( up nip2 "$b2"; echo "$D" >/tmp/nip2.cg ) || { cat /tmp/why >>/tmp/nip.err; }
  ( up nip3 "$b3"; echo "$D" >/tmp/nip3.cg ) || { cat /tmp/why >>/tmp/nip.err; }
  bad=$(internal_procs)
  d1=$(cat /tmp/nip1.cg 2>/dev/null); d2=$(cat /tmp/nip2.cg 2>/dev/null); d3=$(cat /tmp/nip3.cg 2>/dev/null)
  m1=$(cat $d1/memory.max 2>/dev/null); c1=$(cat $d1/cpu.max 2>/dev/null)
  t1=$(cat $d1/cgroup.type 2>/dev/null); t2=$(cat $d2/cgroup.type 2>/dev/null)
  down nip1; down nip2; down nip3
  rmdir $CG/v2lane-nest/mid $CG/v2lane-nest 2>/dev/null
  [ -f /tmp/nip.err ] && no "$(cat /tmp/nip.err | tr '\n' ' ')"
  [ -z "$bad" ] || no "processes in cgroups with controllers enabled: $bad"
  [ "$d1" = "$CG/v2lane-nest/mid/nip1" ] || no "absolute cgroupsPath /v2lane-nest/mid/nip1 not honoured: ${d1#$CG}"
  case "$d2$d3" in *lane.scope*) no "container cgroup under the caller's cgroup: ${d2#$CG} ${d3#$CG}";; esac
  [ "$m1" = 67108864 ] || no "memory.max in nested cgroup: '$m1'"
  [ "$c1" = "50000 100000" ] || no "cpu.max in nested cgroup: '$c1'"
  [ "$t1" = domain ] && [ "$t2" = domain ] || no "cgroup.type: nip1=$t1 nip2=$t2 (want domain)"
  log "nip1=${d1#$CG} nip2=${d2#$CG} nip3=${d3#$CG}"
}

# `job-runtime spec` (user namespace, cgroup namespace, read-only root) plus a
# memory limit: the secure default must work on v2 as well.
t_rt_default_spec() {
  have_rt
  b=$(mkbundle dspec '["true"]'); rm -f "$b/config.json"
  (cd "$b" && rt spec) >/tmp/dspec.out 2>&1 || no "spec failed: $(cat /tmp/dspec.out)"
  [ -f "$b/config.json" ] || no "spec wrote no config.json"
  j=$(tr -d '\n' <"$b/config.json" | sed \
      -e 's/"args": *\[[^]]*\]/"args": ["dd", "if=\/dev\/zero", "of=\/dev\/null", "bs=104857600", "count=1"]/' \
      -e 's/"terminal": *true/"terminal": false/')
  case "$j" in
    *'"resources": {'*|*'"resources":{'*) j=$(echo "$j" | sed 's/"resources": *{/"resources": {"memory": {"limit": 33554432},/') ;;
    *) j=$(echo "$j" | sed 's/"linux": *{/"linux": {"resources": {"memory": {"limit": 33554432}},/') ;;
  esac
  echo "$j" >"$b/config.json"
  out=$(rt run -b "$b" dspec 2>&1 </dev/null); rc=$?
  down dspec
  [ $rc = 137 ] || no "default spec + 32M limit, 100M allocation: exit $rc (want 137): $out"
  grep -q '"user"' "$b/config.json" && log "spec has a user namespace" || log "spec has no user namespace"
}

# Stats read back in the units v1 uses: bytes for memory, nanoseconds for CPU
# (v2 files are usage_usec = microseconds), a plain count for pids.
t_rt_stats() {
  have_rt
  b=$(mkbundle stats '["sh", "-c", "sleep 1000 & while :; do :; done"]' '{"memory": {"limit": 67108864}, "pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}}')
  up stats "$b"
  sleep 2
  rt events --stats stats >/tmp/stats.json 2>&1; rc=$?
  u=$(kv $D/cpu.stat usage_usec); m=$(cat $D/memory.current); p=$(cat $D/pids.current)
  down stats
  [ $rc = 0 ] || skip "no 'events --stats' in job-runtime: $(head -c 200 /tmp/stats.json)"
  s=$(tr -d ' \n' </tmp/stats.json)
  cpu=$(echo "$s" | sed -n 's/.*"cpu":{"usage":{"total":\([0-9]*\).*/\1/p')
  mem=$(echo "$s" | sed -n 's/.*"memory":{[^}]*"usage":{[^}]*"usage":\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || mem=$(echo "$s" | sed -n 's/.*"memory":{"usage":{[^}]*"usage":\([0-9]*\).*/\1/p')
  pc=$(echo "$s" | sed -n 's/.*"pids":{"current":\([0-9]*\).*/\1/p')
  log "stats: cpu.total=$cpu ns (usage_usec=$u) memory=$mem (memory.current=$m) pids=$pc (pids.current=$p)"
  [ -n "$cpu" ] && [ -n "$mem" ] && [ -n "$pc" ] || no "cannot find cpu.usage.total / memory.usage.usage / pids.current in: $(head -c 300 /tmp/stats.json)"
  # cpu in ns: within 0.5x..2x of usage_usec*1000 (read a moment apart)
  [ "$cpu" -ge $((u * 500)) ] && [ "$cpu" -le $((u * 2000 + 100000000)) ] || no "cpu total $cpu is not in ns (usage_usec=$u)"
  [ "$mem" -ge $((m / 2)) ] && [ "$mem" -le $((m * 2 + 1048576)) ] || no "memory usage $mem is not bytes (memory.current=$m)"
  [ "$pc" -ge 1 ] && [ "$pc" -le $((p + 1)) ] || no "pids current $pc vs pids.current $p"
}

# What a job sees of its own cgroup: cgroup namespace root, its limits at
# /sys/fs/cgroup (cgroup2 mount of its own cgroup), read-only.
t_rt_cgroup_view() {
  have_rt
  b=$(mkbundle view '["sh", "-c", "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max; cat /sys/fs/cgroup/pids.max; grep /sys/fs/cgroup /proc/mounts; echo 1 >/sys/fs/cgroup/cgroup.kill 2>/dev/null && echo WRITABLE; mkdir /sys/fs/cgroup/x 2>/dev/null && echo WRITABLE; true"]' \
      '{"memory": {"limit": 67108864}, "pids": {"limit": 33}}' "" "" \
      ', {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
         {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}')
  out=$(rt run -b "$b" view 2>&1 </dev/null); rc=$?
  down view
  log "$(echo "$out" | tr '\n' '|')"
  [ $rc = 0 ] || no "run exited $rc: $out"
  echo "$out" | grep -qx '0::/' || no "/proc/self/cgroup inside is not 0::/ (no cgroup namespace?): $out"
  echo "$out" | grep -qx 67108864 || no "memory.max not visible at /sys/fs/cgroup: $out"
  echo "$out" | grep -qx 33 || no "pids.max not visible at /sys/fs/cgroup: $out"
  echo "$out" | grep -q ' /sys/fs/cgroup cgroup2 ' || no "/sys/fs/cgroup inside is not cgroup2: $out"
  echo "$out" | grep -q WRITABLE && no "the read-only cgroup mount is writable: $out"
  return 0
}

# After all runtime tests (each deletes what it made): nothing may be left.
# `job-runtime check` reads the real hierarchy: in the guest it must say v2 and find every
# controller jobs need (the host side of this test runs on v1 hybrid).
t_rt_check() {
  have_rt
  out=$($RT check 2>&1); rc=$?
  echo "$out" | grep -qE "^ok +required  cgroup +v2 \(unified\)" || no "cgroup line does not say v2: $(echo "$out" | grep ' cgroup ')"
  for c in cpu memory pids; do
    echo "$out" | grep -qE "^ok +required  cgroup $c " || no "cgroup $c: $(echo "$out" | grep "cgroup $c ")"
  done
  echo "$out" | grep -qE " cgroup (cpuacct|freezer|devices) " && no "v1 controllers listed on v2: $out"
  [ $rc = 0 ] || no "check exited $rc: $(echo "$out" | grep -v '^ok' | tr '\n' ' ')"
  log "$(echo "$out" | grep -E ' cgroup |^result' | tr '\n' ' ' | cut -c1-400)"
}

t_rt_nothing_left() {
  have_rt
  cgs=$(find $CG -mindepth 1 -type d | grep -v "^$LANE_CG\$" | grep -v "^$CG/job-runtime\$" | sed "s|^$CG||" | tr '\n' ' ')
  # @seccomp-cache holds compiled profiles shared by all containers: not a container's state.
  st=$(ls $RTROOT 2>/dev/null | grep -v '^@seccomp-cache$' | tr '\n' ' ')
  mnt=$(grep -E " $WORKDIR/| /run/job-runtime" /proc/mounts | awk '{print $2}' | tr '\n' ' ')
  procs=$(ps -o pid,args | grep -E 'sleep 1000|while :' | grep -v grep | awk '{print $1}' | tr '\n' ' ')
  [ -z "$cgs" ] || no "cgroups left: $cgs"
  [ -z "$st" ] || no "state left in $RTROOT: $st"
  [ -z "$mnt" ] || no "mounts left: $mnt"
  [ -z "$procs" ] || no "processes left: $procs"
}

# ------------------------------------------------------------------ cargo test binaries
# run.sh may ship Rust test executables (libtest) into /opt/v2lane/target/deps,
# with job-init at /opt/v2lane/target/job-init (where the daemon's tests look
# for it). Each test whose name matches the filter in /opt/v2lane/FILTER.<bin>
# runs alone and is reported as `cargo:<bin>:<test>`.
CARGO_TEST_TIMEOUT=${CARGO_TEST_TIMEOUT:-240}
run_cargo_tests() {
  for bin in /opt/v2lane/target/deps/*; do
    [ -x "$bin" ] || continue
    b=$(basename $bin); filter=$(cat /opt/v2lane/FILTER.$b 2>/dev/null)
    names=$(cd /tmp && "$bin" --list $filter 2>/dev/null | sed -n 's/: test$//p')
    if [ -z "$names" ]; then say "FAIL cargo:$b: no test matches '$filter'"; F=$((F+1)); continue; fi
    for n in $names; do
      if [ -f /host/only ] && ! grep -qw "cargo:$b" /host/only && ! grep -qw "$n" /host/only; then continue; fi
      echo "--- cargo:$b:$n"
      (cd /tmp && exec "$bin" --exact "$n" --test-threads=1 --nocapture) >/tmp/ct.log 2>&1 &
      tp=$!
      ( sleep $CARGO_TEST_TIMEOUT; kill -9 $tp ) 2>/dev/null &
      wd=$!
      wait $tp; rc=$?
      kill $wd 2>/dev/null; wait $wd 2>/dev/null
      t0=$(grep -c 'skipped' /tmp/ct.log)
      if [ $rc = 0 ] && grep -q '^test result: ok. 1 passed' /tmp/ct.log && [ "$t0" = 0 ]; then
        say "PASS cargo:$b:$n"; P=$((P+1))
      else
        sed 's/^/    | /' /tmp/ct.log | tail -40
        why=$(grep -m1 -E 'panicked|skipped|error' /tmp/ct.log | cut -c1-300)
        [ $rc = 137 ] && why="timed out after ${CARGO_TEST_TIMEOUT}s"
        say "FAIL cargo:$b:$n: ${why:-exit $rc}"; F=$((F+1))
      fi
    done
  done
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

for t in lane_cgroup2_mounted lane_memory_max_oom lane_pids_max lane_cgroup_kill lane_cpu_max lane_io_device lane_overlay \
         rt_enables_controllers rt_smoke rt_memory_oom rt_memory_swap rt_pids_max rt_cpu_max rt_io_max \
         rt_delete_removes_cgroup rt_kill_all rt_delete_force_nested rt_no_internal_procs \
         rt_default_spec rt_cgroup_view rt_stats rt_check rt_nothing_left; do
  run_test $t
done

run_cargo_tests

say "V2LANE RESULT: $P passed, $F failed, $S skipped"
