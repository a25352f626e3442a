#!/bin/sh
# Entry point named by HandlerManifest.json. The guest agent runs it from the
# handler directory (where HandlerEnvironment.json is) with
# ConfigSequenceNumber in the environment. Nothing secret passes through here.
#
# install: builds <package>/venv with the VM's newest CPython 3.10-3.13, OFFLINE,
#   from the wheelhouse/ this package carries (wheels for 3.10-3.13, x86_64 and
#   aarch64, hash-pinned in wheelhouse/requirements.txt). No index is asked,
#   nothing is built on the VM, and ensurepip is never used: minimal Debian and
#   Ubuntu images lack it (python3-venv), so pip runs from its bundled wheel.
#   A package without wheelhouse/ uses the venv it ships or
#   /opt/snapshot-runtime/.venv.
# every command: python -m snapshot_runtime.handler <command> --handler-dir <package>.
set -eu

# No dirname: this script must say "no Python" even on a PATH without coreutils.
case $0 in */*) bin=${0%/*} ;; *) bin=. ;; esac
here=$(CDPATH='' cd -- "$bin/.." && pwd)
venv="$here/venv"
wheelhouse="$here/wheelhouse"
PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}
# The agent's environment must not steer the runtime's interpreter.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE

# The versions the wheelhouse has wheels for, newest first. Like the
# reference, named interpreters first, then plain python3.
SUPPORTED="3.13 3.12 3.11 3.10"

supported() {
    # prints "3.X" when $1 is a CPython this package supports
    "$1" -I -c 'import platform, sys
v = "%d.%d" % sys.version_info[:2]
ok = platform.python_implementation() == "CPython" and v in sys.argv[1].split()
print(v) if ok else sys.exit(1)' "$SUPPORTED" 2>/dev/null
}

find_python() {
    for name in python3.13 python3.12 python3.11 python3.10 python3; do
        py=$(command -v "$name" 2>/dev/null) || continue
        if version=$(supported "$py"); then
            echo "$py $version"
            return 0
        fi
    done
    return 1
}

no_python() {
    # echo, a builtin: no external command is needed to say this.
    {
        echo "snapshot-runtime: no supported Python found: this extension needs CPython 3.10, 3.11,"
        echo "3.12 or 3.13, as python3.1x or python3 on PATH ($PATH)."
        echo "Install one, then reinstall the extension:"
        echo "  Ubuntu 22.04+, Debian 12+:  apt-get install python3"
        echo "  RHEL, Alma, Rocky 8 and 9:  dnf install python3.11"
        echo "  SLES 15 SP4+:               zypper install python311"
        echo "  Azure Linux 2 and 3:        tdnf install python3"
    } >&2
    exit 3
}

install_venv() {
    found=$(find_python) || no_python
    py=${found% *}
    version=${found#* }
    echo "snapshot-runtime: installing into $venv with $py (Python $version), offline from $wheelhouse"
    pip_wheel=""
    for whl in "$wheelhouse"/pip-*.whl; do
        if [ -f "$whl" ]; then pip_wheel=$whl; fi
    done
    if [ -z "$pip_wheel" ]; then
        echo "snapshot-runtime: $wheelhouse has no pip wheel: a damaged package" >&2
        exit 1
    fi
    rm -rf "$venv"
    # --without-pip: no ensurepip, which minimal images do not have.
    if ! "$py" -I -m venv --without-pip "$venv"; then
        rm -rf "$venv"
        echo "snapshot-runtime: $py cannot create a virtualenv; install its venv module (Debian/Ubuntu: apt-get install python$version-venv)" >&2
        exit 3
    fi
    # pip runs from its wheel (a zip Python imports from) and installs only
    # what wheelhouse/ carries, every file checked against its pinned hash.
    # --isolated: no pip.conf and no PIP_* variable can add an index.
    if ! "$venv/bin/python" "$pip_wheel/pip" install --isolated --no-index \
        --find-links "$wheelhouse" --only-binary=:all: --require-hashes \
        --no-cache-dir --disable-pip-version-check --no-warn-script-location --quiet \
        --requirement "$wheelhouse/requirements.txt"; then
        rm -rf "$venv"
        echo "snapshot-runtime: the offline install into $venv failed (Python $version on $(uname -m))" >&2
        exit 1
    fi
}

if [ "${1:-}" = install ] && [ -f "$wheelhouse/requirements.txt" ]; then
    install_venv
fi

for py in "$venv/bin/python" /opt/snapshot-runtime/.venv/bin/python; do
    if [ -x "$py" ]; then
        exec "$py" -m snapshot_runtime.handler "$@" --handler-dir "$here"
    fi
done
echo "snapshot-runtime: no Python with snapshot_runtime in $venv or /opt/snapshot-runtime/.venv (run: bin/handle.sh install)" >&2
exit 3
