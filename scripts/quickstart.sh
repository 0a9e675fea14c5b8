#!/usr/bin/env bash
# The README's quick start, as root on a fresh Debian machine:
#   installs the build dependencies, builds everything (release), installs the binaries into
#   /usr/local/bin, starts jobd in the background with its zero-config defaults (certificates and
#   the default rootfs are made on first start) and runs the example job through mTLS:
#       cd docs/quickstart && jobctl run --memory 128M -- python3 x.py
# Run it again at any time: it rebuilds, restarts jobd and runs the example again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
prefix=${PREFIX:-/usr/local}
log=${JOBD_QUICKSTART_LOG:-/var/log/jobd.log}
pidfile=/run/jobd-quickstart.pid

step() { printf '\n== %s\n' "$*"; }
fail() { echo "quickstart: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root: jobd creates namespaces, cgroups and mounts"

step "dependencies (Debian packages; Rust must already be installed)"
scripts/deps.sh --minimal

step "build (release; a first build takes several minutes)"
cargo build --release --workspace --bins
# job-init again, static and position-dependent: `cargo build` makes a dynamic one, which
# works but costs every container start about 2 ms more (see the script).
scripts/build-job-init.sh --release

step "install into $prefix/bin"
if [ -x scripts/install.sh ]; then
    scripts/install.sh --prefix "$prefix" --bin-dir "${CARGO_TARGET_DIR:-$repo/target}/release"
else
    for b in job-runtime job-init jobd jobctl rootfs-builder; do
        install -m 0755 "${CARGO_TARGET_DIR:-$repo/target}/release/$b" "$prefix/bin/$b"
    done
fi

step "start jobd (log: $log)"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "stopping the jobd this script started before (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
fi
if ss -Hltn 'sport = :50051' 2>/dev/null | grep -q .; then
    fail "something else listens on 127.0.0.1:50051; stop it (is another jobd running?) and retry"
fi
setsid "$prefix/bin/jobd" >>"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
ready=
for _ in $(seq 600); do
    if err=$("$prefix/bin/jobctl" list 2>&1 >/dev/null); then ready=1; break; fi
    case $err in
    *certificate* | *CA*)
        # jobd answered, but not to this identity: typically ~/.config/jobctl holds one from
        # an earlier jobd whose data directory is gone; jobd keeps it and says where its own is.
        echo "$err" >&2
        grep -h "client identity exists already" "$log" | tail -n 1 >&2 || true
        fail "jobctl's identity does not match this jobd: use the admin identity jobd names above (jobctl --tls-dir DIR, or copy it to ~/.config/jobctl)"
        ;;
    esac
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 20 "$log" >&2; fail "jobd exited; its log is above"; }
    sleep 0.1
done
[ -n "$ready" ] || { echo "$err" >&2; tail -n 20 "$log" >&2; fail "jobd did not answer within 60 s; jobctl's error and jobd's log are above"; }
echo "jobd is running (pid $(cat "$pidfile")); the admin identity is in ~/.config/jobctl"

step "cd docs/quickstart && jobctl run --memory 128M -- python3 x.py"
cd "$repo/docs/quickstart"
set +e
"$prefix/bin/jobctl" run --memory 128M -- python3 x.py
code=$?
set -e
echo "(exit code $code)"
cat <<MSG

Done. jobd keeps running in the background (pid $(cat "$pidfile"), log $log). Try:
    cd $repo/docs/quickstart && jobctl run --memory 128M -- python3 x.py
    jobctl list
Stop jobd with: kill \$(cat $pidfile)
MSG
exit "$code"
