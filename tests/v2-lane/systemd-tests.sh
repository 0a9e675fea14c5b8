#!/bin/sh
# Guest test program of the systemd lane (tests/v2-lane/run.sh --systemd): runs as root
# from jobworker-lane.service in a Debian guest whose PID 1 is systemd, on pure cgroup v2.
# Same conventions as guest-tests.sh: each t_NAME runs in a subshell and fails by calling
# `no "reason"`; one PASS/FAIL/SKIP line per test, then the `V2LANE RESULT:` line, all also
# appended to /host/results.txt (the 9p share) which run.sh parses.

RESULTS=/host/results.txt
CG=/sys/fs/cgroup
RT=/usr/local/bin/job-runtime
RTROOT=/run/job-runtime
WORKDIR=/tmp/sdw
BUSYBOX=/usr/local/bin/busybox
PER_TEST_TIMEOUT=${PER_TEST_TIMEOUT:-150}
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
P=0; F=0; S=0

say() { echo "$*"; echo "$*" >>"$RESULTS"; }
no() { echo "$*" >/tmp/why; exit 1; }
skip() { echo "$*" >/tmp/skip; exit 0; }
log() { echo "    $*"; }
rt() { $RT --root $RTROOT --systemd-cgroup "$@"; }
kv() { awk -v k="$2" '$1==k{print $2}' "$1" 2>/dev/null; }
# prop UNIT PROPERTY: one property value as systemd reports it
prop() { systemctl show -P "$2" "$1" 2>/dev/null; }
# unit_gone UNIT: systemd no longer knows the unit (waits up to 5 s for the stop job)
unit_gone() {
  i=0
  while [ $i -lt 50 ]; do
    [ "$(prop "$1" LoadState)" = not-found ] && return 0
    sleep 0.1; i=$((i+1))
  done
  return 1
}
unit_state() { echo "load=$(prop "$1" LoadState) active=$(prop "$1" ActiveState) sub=$(prop "$1" SubState) result=$(prop "$1" Result)"; }

NS='[{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]'

# mkbundle NAME ARGS_JSON [RESOURCES_JSON] [CGROUPS_PATH_JSON_MEMBER]
# No cgroup namespace: the job's /proc/self/cgroup shows the host path of its scope.
mkbundle() {
  b=$WORKDIR/$1; rm -rf "$b"; mkdir -p "$b/rootfs"
  (cd "$b/rootfs" && mkdir -p bin proc sys dev tmp etc && cp $BUSYBOX bin/busybox &&
    for a in sh cat echo sleep head tail true dd; do ln -s busybox bin/$a; done)
  res=${3:-"{}"}
  cat >"$b/config.json" <<EOJ
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": $2,
    "env": ["PATH=/bin"],
    "cwd": "/",
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "sdlane",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
  ],
  "linux": {
    $4
    "resources": $res,
    "namespaces": $NS
  }
}
EOJ
  echo "$b"
}

st_pid() { $RT --root $RTROOT state "$1" 2>/dev/null | tr -d '\n' | sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p'; }
st_status() { $RT --root $RTROOT state "$1" 2>/dev/null | tr -d '\n' | sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p'; }
wait_status() { i=0; while [ $i -lt ${3:-100} ]; do [ "$(st_status $1)" = "$2" ] && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
# down ID: delete --force; what it said stays in /tmp/ID.down for sd_nothing_left
down() { rt delete --force "$1" >/tmp/"$1".down 2>&1; }
# wait_file FILE: until FILE has content (the job wrote its report), up to 10 s
wait_file() { i=0; while [ $i -lt 100 ]; do [ -s "$1" ] && return 0; sleep 0.1; i=$((i+1)); done; return 1; }

# ------------------------------------------------------------------ tests
t_sd_booted() {
  [ "$(cat /proc/1/comm)" = systemd ] || no "PID 1 is $(cat /proc/1/comm), not systemd"
  [ -d /run/systemd/system ] || no "no /run/systemd/system"
  grep -q "^cgroup2 $CG cgroup2 " /proc/mounts || no "no cgroup2 at $CG"
  state=$(systemctl is-system-running 2>/dev/null)
  case "$state" in running|degraded|starting) ;; *) no "systemctl is-system-running: $state" ;; esac
  [ "$state" = degraded ] && log "failed units: $(systemctl --failed --no-legend --plain | tr '\n' ';')"
  log "systemd $(systemctl --version | head -1 | cut -d' ' -f2), state $state, $(systemd-analyze 2>/dev/null | head -1)"
}

# The scope from the job's side and from the host's, its memory limit, OOM, and delete.
t_sd_run_scope_memory() {
  id=sd1; unit=jobworker-$id.scope; dir=$CG/system.slice/$unit
  b=$(mkbundle mem '["sh", "-c", "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max; exec sleep 100"]' \
      '{"memory": {"limit": 33554432}}' '"cgroupsPath": "system.slice:jobworker:sd1",')
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  pid=$(st_pid $id)
  [ "$(sed -n 's/^0:://p' /proc/$pid/cgroup)" = /system.slice/$unit ] || { down $id; no "created init in $(cat /proc/$pid/cgroup), want /system.slice/$unit"; }
  rt start $id >>/tmp/$id.out 2>&1 || { down $id; no "start failed: $(cat /tmp/$id.out)"; }
  wait_file /tmp/$id.out
  sleep 0.5
  inside=$(head -1 /tmp/$id.out | tr -d '\r'); limit_in=$(sed -n 2p /tmp/$id.out)
  active=$(prop $unit ActiveState); delegate=$(prop $unit Delegate); mmax=$(prop $unit MemoryMax)
  cgpath=$(prop $unit ControlGroup); slice=$(prop $unit Slice)
  fmax=$(cat $dir/memory.max 2>/dev/null)
  procs=$(cat $dir/cgroup.procs 2>/dev/null | tr '\n' ' ')
  down $id
  unit_gone $unit || no "$unit still known after delete --force ($(unit_state $unit))"
  [ -d "$dir" ] && no "$dir left after delete"
  [ -d $RTROOT/$id ] && no "state dir left after delete"
  [ "$inside" = "0::/system.slice/$unit" ] || no "job sees its cgroup as '$inside' ($(cat /tmp/$id.out))"
  [ "$limit_in" = 33554432 ] || no "job reads memory.max '$limit_in'"
  [ "$active" = active ] || no "$unit ActiveState=$active while the job ran"
  [ "$delegate" = yes ] || no "$unit Delegate=$delegate"
  [ "$slice" = system.slice ] || no "$unit Slice=$slice"
  [ "$cgpath" = /system.slice/$unit ] || no "$unit ControlGroup=$cgpath"
  [ "$mmax" = 33554432 ] || no "$unit MemoryMax=$mmax (systemd property)"
  [ "$fmax" = 33554432 ] || no "$dir/memory.max=$fmax"
  echo "$procs" | grep -qw "$pid" || no "init pid $pid not in $dir/cgroup.procs ($procs)"
  log "job in $inside, $unit active, Delegate=$delegate, MemoryMax=$mmax, memory.max=$fmax"
}

t_sd_oom() {
  id=sd2; unit=jobworker-$id.scope
  b=$(mkbundle oom '["dd", "if=/dev/zero", "of=/dev/null", "bs=104857600", "count=1"]' \
      '{"memory": {"limit": 33554432, "swap": 33554432}}' '"cgroupsPath": "system.slice:jobworker:sd2",')
  # run: create, start, wait, delete
  rt run -b "$b" $id </dev/null >/tmp/$id.out 2>&1; rc=$?
  unit_gone $unit || { down $id; no "$unit still known after run ($(unit_state $unit))"; }
  [ $rc = 137 ] || no "100M allocation under a 32M limit exited $rc (want 137): $(cat /tmp/$id.out)"
  # create + start, then delete of the stopped, OOM-killed container
  id=sd2b; unit=jobworker-$id.scope
  sed -i 's/jobworker:sd2"/jobworker:sd2b"/' "$b/config.json"
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  rt start $id >>/tmp/$id.out 2>&1 || { down $id; no "start failed: $(cat /tmp/$id.out)"; }
  wait_status $id stopped 200 || { down $id; no "$id not stopped after the OOM kill"; }
  st=$(unit_state $unit)
  rt delete $id >/tmp/$id.del 2>&1 || { down $id; no "delete after the OOM kill failed: $(cat /tmp/$id.del)"; }
  unit_gone $unit || no "$unit still known after delete ($(unit_state $unit))"
  log "run rc=$rc; after the OOM kill, before delete: $st"
}

t_sd_create_delete_force() {
  id=sd3; unit=jobworker-$id.scope
  b=$(mkbundle cdf '["sleep", "100"]' '{"pids": {"limit": 20}}' '"cgroupsPath": "system.slice:jobworker:sd3",')
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  active=$(prop $unit ActiveState); tmax=$(prop $unit TasksMax)
  pmax=$(cat $CG/system.slice/$unit/pids.max 2>/dev/null)
  rt delete --force $id >/tmp/$id.del 2>&1 || no "delete --force failed: $(cat /tmp/$id.del)"
  unit_gone $unit || no "$unit still known after delete --force ($(unit_state $unit))"
  [ -d $CG/system.slice/$unit ] && no "scope cgroup left"
  [ "$active" = active ] || no "created container's $unit ActiveState=$active"
  [ "$tmax" = 20 ] || no "TasksMax=$tmax"
  [ "$pmax" = 20 ] || no "pids.max=$pmax"
}

# No cgroupsPath (and an empty one): system.slice:job-runtime:<id>, as runc's default.
t_sd_default_path() {
  for id in sd4 sd5; do
    member=''; [ $id = sd5 ] && member='"cgroupsPath": "",'
    unit=job-runtime-$id.scope
    b=$(mkbundle def$id '["sh", "-c", "cat /proc/self/cgroup; exec sleep 100"]' '{}' "$member")
    rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create ($member) failed: $(cat /tmp/$id.out)"
    pid=$(st_pid $id); where=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
    active=$(prop $unit ActiveState)
    down $id
    unit_gone $unit || no "$unit still known after delete"
    [ "$where" = /system.slice/$unit ] || no "default cgroupsPath ($member) put the job in $where"
    [ "$active" = active ] || no "$unit ActiveState=$active"
  done
}

# Slices nest by their dashes; delete stops the scope only, the slice stays systemd's.
t_sd_nested_slice() {
  id=sd6; unit=jw-$id.scope; dir=$CG/lanejobs.slice/lanejobs-a.slice/$unit
  b=$(mkbundle nest '["sleep", "100"]' '{"memory": {"limit": 67108864}}' '"cgroupsPath": "lanejobs-a.slice:jw:sd6",')
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  [ -d "$dir" ] || { down $id; no "no $dir ($(find $CG -name "$unit"))"; }
  m=$(cat $dir/memory.max)
  down $id
  unit_gone $unit || no "$unit still known after delete"
  [ "$m" = 67108864 ] || no "memory.max=$m"
}

# What systemd has no property for is still written to the scope's cgroupfs files; what the
# kernel cannot do fails naming the file, and leaves nothing behind.
t_sd_cgroupfs_limits() {
  id=sd7; unit=jobworker-$id.scope
  b=$(mkbundle unified '["sleep", "100"]' '{"unified": {"memory.oom.group": "1", "memory.high": "50331648"}}' \
      '"cgroupsPath": "system.slice:jobworker:sd7",')
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  g=$(cat $CG/system.slice/$unit/memory.oom.group); h=$(cat $CG/system.slice/$unit/memory.high)
  down $id
  unit_gone $unit || no "$unit still known after delete"
  [ "$g" = 1 ] || no "memory.oom.group=$g (no systemd property: must be written to cgroupfs)"
  [ "$h" = 50331648 ] || no "memory.high=$h"
  id=sd8; unit=jobworker-$id.scope
  b=$(mkbundle bad '["true"]' '{"unified": {"memory.nosuchfile": "1"}}' '"cgroupsPath": "system.slice:jobworker:sd8",')
  rt run -b "$b" $id </dev/null >/tmp/$id.out 2>&1 && { down $id; no "an unknown unified key was accepted"; }
  unit_gone $unit || no "$unit left after the failed create ($(unit_state $unit))"
  [ -d $RTROOT/$id ] && no "state dir left after the failed create"
  grep -q "memory.nosuchfile" /tmp/$id.out || no "error does not name the file: $(cat /tmp/$id.out)"
  log "refused: $(tail -1 /tmp/$id.out)"
}

t_sd_exec_joins_scope() {
  id=sd9; unit=jobworker-$id.scope
  b=$(mkbundle exec '["sleep", "100"]' '{}' '"cgroupsPath": "system.slice:jobworker:sd9",')
  rt create -b "$b" $id </dev/null >/tmp/$id.out 2>&1 || no "create failed: $(cat /tmp/$id.out)"
  rt start $id >/dev/null 2>&1
  out=$(rt exec $id cat /proc/self/cgroup 2>&1 </dev/null)
  down $id
  unit_gone $unit || no "$unit still known after delete"
  [ "$out" = "0::/system.slice/$unit" ] || no "exec'd process in '$out'"
}

t_sd_malformed_paths() {
  for p in "a:b" "x.slice:p:" "nodot:p:n" "system.slice:p:n.slice"; do
    b=$(mkbundle bad '["true"]' '{}' "\"cgroupsPath\": \"$p\",")
    rt run -b "$b" sdbad </dev/null >/tmp/sdbad.out 2>&1 && { down sdbad; no "cgroupsPath '$p' accepted"; }
    grep -q "invalid cgroupsPath \"$p\"" /tmp/sdbad.out || no "'$p': unclear error: $(cat /tmp/sdbad.out)"
    [ -d $RTROOT/sdbad ] && no "'$p': state dir left"
    log "$p: $(cat /tmp/sdbad.out | tail -1)"
  done
}

t_sd_nothing_left() {
  left=$(systemctl list-units --all --no-legend --plain 'jobworker-*.scope' 'job-runtime-*.scope' 'jw-*.scope' 2>/dev/null)
  [ -z "$left" ] || no "units left: $left"
  procs=$(ps -eo comm 2>/dev/null | grep -E '^(sleep|dd|job-init)$' | tr '\n' ' ')
  [ -z "$procs" ] || no "processes left: $procs"
  for dir in $(ls $RTROOT 2>/dev/null | grep -v '^@'); do
    no "state dir $dir left; its delete said: $(cat /tmp/$dir.down 2>/dev/null)"
  done
  found=$(find $CG -name 'jobworker-*.scope' -o -name 'job-runtime-*.scope' -o -name 'jw-*.scope' | tr '\n' ' ')
  [ -z "$found" ] || no "cgroups left: $found"
  return 0
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

mkdir -p $WORKDIR
say "systemd lane guest: $(uname -r), PID 1 $(cat /proc/1/comm), this test in $(sed -n 's/^0:://p' /proc/self/cgroup)"
for t in sd_booted sd_run_scope_memory sd_oom sd_create_delete_force sd_default_path sd_nested_slice \
         sd_cgroupfs_limits sd_exec_joins_scope sd_malformed_paths sd_nothing_left; do
  run_test $t
done
say "V2LANE RESULT: $P passed, $F failed, $S skipped"
sync
