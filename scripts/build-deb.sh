#!/usr/bin/env bash
# Builds snapshot-runtime_<version>-1_<arch>.deb for Debian/Ubuntu hosts that run
# the runtime and the sidecar outside the extension (docs/operations.md).
#
#   scripts/build-deb.sh --from-zip build/VMSnapshotLinux-<v>.zip [-o DIR] [--arch ARCH]
#   scripts/build-deb.sh --wheelhouse DIR                       [-o DIR] [--arch ARCH]
#
# The package carries a wheelhouse, the same one the extension zip carries
# (scripts/extension_package.py: hash-pinned requirements.txt, the runtime's
# wheel, a pip wheel to bootstrap with), keeping only the wheels for ARCH
# (default: dpkg --print-architecture) and the pure-Python ones. postinst
# builds /opt/snapshot-runtime/.venv from it offline with the host's python3.
# With --wheelhouse, DIR needs the wheels and a pip-*.whl; requirements.txt
# is optional (without it, postinst installs "snapshot-runtime" from DIR).
#
# Standard tools only (dpkg-deb --build --root-owner-group). Reproducible: every
# mtime is SOURCE_DATE_EPOCH (default: the last commit's time), modes are
# fixed, so one wheelhouse and one commit give the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

usage() { sed -n '2,9p' "$0" >&2; exit 2; }

zip="" wheelhouse="" out="$repo/build" arch=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from-zip) zip=$2; shift 2 ;;
        --wheelhouse) wheelhouse=$2; shift 2 ;;
        -o|--out-dir) out=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        *) usage ;;
    esac
done
[ -n "$zip" ] || [ -n "$wheelhouse" ] || usage
[ -z "$zip" ] || [ -z "$wheelhouse" ] || usage
arch=${arch:-$(dpkg --print-architecture)}
case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "build-deb: no wheels for architecture $arch" >&2; exit 1 ;;
esac
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH=$epoch

work=$(mktemp -d "${TMPDIR:-/tmp}/build-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 022

if [ -n "$zip" ]; then
    python3 - "$zip" "$work/src" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    names = [n for n in zf.namelist() if n.startswith("wheelhouse/") and not n.endswith("/")]
    zf.extractall(sys.argv[2], members=names)
PY
    wheelhouse="$work/src/wheelhouse"
fi
[ -d "$wheelhouse" ] || { echo "build-deb: $wheelhouse is not a directory" >&2; exit 1; }

root="$work/root"
dest="$root/opt/snapshot-runtime/wheelhouse"
install -d "$dest"
own=""
for whl in "$wheelhouse"/*.whl; do
    name=$(basename "$whl")
    case "$name" in
        # A binary wheel for another machine is dead weight in an $arch package.
        *-any.whl|*"_$machine.whl") install -m 0644 "$whl" "$dest/$name" ;;
        *) continue ;;
    esac
    case "$name" in snapshot_runtime-*) own=$name ;; esac
done
[ -n "$own" ] || { echo "build-deb: no snapshot_runtime wheel in $wheelhouse" >&2; exit 1; }
ls "$dest"/pip-*.whl >/dev/null 2>&1 || { echo "build-deb: no pip wheel in $wheelhouse" >&2; exit 1; }
if [ -f "$wheelhouse/requirements.txt" ]; then
    install -m 0644 "$wheelhouse/requirements.txt" "$dest/requirements.txt"
fi
version=$(echo "$own" | cut -d- -f2)
debversion="$version-1"

install -D -m 0644 deploy/systemd/snapshot-sidecar.service \
    "$root/lib/systemd/system/snapshot-sidecar.service"
install -D -m 0644 deploy/debian/snapshot-sidecar.default "$root/etc/default/snapshot-sidecar"
install -D -m 0644 deploy/logrotate/snapshot-runtime "$root/etc/logrotate.d/snapshot-runtime"
install -d "$root/usr/bin"
for cmd in snapshot-runtime snapshot-sidecar; do
    ln -s "/opt/snapshot-runtime/.venv/bin/$cmd" "$root/usr/bin/$cmd"
done
install -D -m 0644 deploy/debian/copyright "$root/usr/share/doc/snapshot-runtime/copyright"

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "deploy/debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 deploy/debian/conffiles "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | LC_ALL=C sort | sed 's|^\./||' \
    | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size=$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$debversion/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
    deploy/debian/control.in >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"

# Directories 0755, and every mtime the epoch: the bytes depend on the inputs only.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p "$out"
deb="$out/snapshot-runtime_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb.partial" >/dev/null
mv "$deb.partial" "$deb"
echo "$deb ($(stat -c %s "$deb") bytes, $(find "$dest" -name '*.whl' | wc -l) wheels, SOURCE_DATE_EPOCH=$epoch)"
