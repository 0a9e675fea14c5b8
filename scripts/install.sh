#!/usr/bin/env bash
# Installs jobworker: the binaries into PREFIX/bin, shell completions and man pages generated
# by the binaries themselves, and jobd's systemd unit (ExecStart pointing at PREFIX/bin/jobd).
# Idempotent: running it again replaces every file with the new build's.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--bin-dir DIR] [--unit-dir DIR]
#
#   --prefix DIR    where the files go at run time (default /usr/local)
#   --destdir DIR   stage everything under DIR (for packages and tests; default: none)
#   --bin-dir DIR   take already-built binaries from DIR instead of running
#                   `cargo build --release --workspace --bins`
#   --unit-dir DIR  where the systemd unit goes (default /etc/systemd/system, under DESTDIR)
set -euo pipefail

prog=$(basename "$0")
die() {
    echo "$prog: $*" >&2
    exit 1
}
usage() {
    sed -n '6,13s/^# \{0,1\}//p' "$0"
}

prefix=/usr/local
destdir=
bin_dir=
unit_dir=/etc/systemd/system
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix | --destdir | --bin-dir | --unit-dir)
        [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a directory argument"
        case "$1" in
        --prefix) prefix=$2 ;;
        --destdir) destdir=$2 ;;
        --bin-dir) bin_dir=$2 ;;
        --unit-dir) unit_dir=$2 ;;
        esac
        shift 2
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case "$prefix" in
/*) ;;
*) die "--prefix '$prefix' must be an absolute path" ;;
esac
case "$unit_dir" in
/*) ;;
*) die "--unit-dir '$unit_dir' must be an absolute path" ;;
esac
prefix=${prefix%/}
destdir=${destdir%/}

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin_dir" ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust, or pass --bin-dir with built binaries"
    echo "== cargo build --release --workspace --bins"
    (cd "$repo" && cargo build --release --workspace --bins && scripts/build-job-init.sh --release)
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
fi
[ -d "$bin_dir" ] || die "binary directory '$bin_dir' does not exist"

required=(job-runtime job-init jobd jobctl rootfs-builder)
optional=(jobd-shim)
for b in "${required[@]}"; do
    [ -x "$bin_dir/$b" ] || die "'$bin_dir/$b' is missing or not executable: build it first (cargo build --release --workspace --bins)"
done

bin=$destdir$prefix/bin
share=$destdir$prefix/share
man1=$share/man/man1
bash_dir=$share/bash-completion/completions
zsh_dir=$share/zsh/site-functions
fish_dir=$share/fish/vendor_completions.d
units=$destdir$unit_dir
mkdir -p "$bin" "$man1" "$bash_dir" "$zsh_dir" "$fish_dir" "$units" ||
    die "cannot create the install directories under '$destdir$prefix' and '$units'"

# Copy, then rename over the old file: a running jobd keeps its (unlinked) binary and no
# reader ever sees half a file.
put() {
    local src=$1 dest=$2 mode=$3
    local tmp
    tmp=$(dirname "$dest")/.$(basename "$dest").install.$$
    cp "$src" "$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$dest" || {
        rm -f "$tmp"
        die "cannot install '$dest'"
    }
}

# Writes the output of a command to a file, through the same copy-and-rename.
put_output() {
    local dest=$1 mode=$2
    shift 2
    local tmp
    tmp=$(mktemp)
    if ! "$@" >"$tmp"; then
        rm -f "$tmp"
        die "'$*' failed"
    fi
    put "$tmp" "$dest" "$mode"
    rm -f "$tmp"
}

installed=()
for b in "${required[@]}" "${optional[@]}"; do
    [ -x "$bin_dir/$b" ] || continue
    put "$bin_dir/$b" "$bin/$b" 0755
    installed+=("$b")
done
echo "installed ${installed[*]} into $bin"

# Completions and man pages come from the binaries' own command-line definitions.
for b in jobctl jobd job-runtime; do
    put_output "$bash_dir/$b" 0644 "$bin_dir/$b" completions bash
    put_output "$zsh_dir/_$b" 0644 "$bin_dir/$b" completions zsh
    put_output "$fish_dir/$b.fish" 0644 "$bin_dir/$b" completions fish
    pages=$(mktemp -d)
    "$bin_dir/$b" man --dir "$pages" >/dev/null || {
        rm -rf "$pages"
        die "'$bin_dir/$b man --dir' failed"
    }
    for page in "$pages"/*.1; do
        put "$page" "$man1/$(basename "$page")" 0644
    done
    rm -rf "$pages"
done
echo "installed completions (bash, zsh, fish) and man pages into $share"

unit_src=$repo/daemon/systemd/jobd.service
[ -f "$unit_src" ] || die "'$unit_src' is missing"
unit_tmp=$(mktemp)
sed "s|^ExecStart=.*|ExecStart=$prefix/bin/jobd|" "$unit_src" >"$unit_tmp"
grep -qx "ExecStart=$prefix/bin/jobd" "$unit_tmp" || {
    rm -f "$unit_tmp"
    die "'$unit_src' has no ExecStart= line to point at $prefix/bin/jobd"
}
put "$unit_tmp" "$units/jobd.service" 0644
rm -f "$unit_tmp"
echo "installed $units/jobd.service (ExecStart=$prefix/bin/jobd)"

if [ -z "$destdir" ]; then
    echo "next: jobd check, then systemctl daemon-reload && systemctl enable --now jobd"
fi
