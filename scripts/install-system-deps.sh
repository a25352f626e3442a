#!/usr/bin/env bash
# Installs the system parts the demo and the test suite run on for real:
# xfsprogs (xfs loop images), util-linux/e2fsprogs (loop devices, ext4),
# Debian's prometheus (server + promtool: the sidecar's scrape test and rule
# tests), openssl (the handler tests' CMS cross-check; the runtime never runs it),
# strace and uuid-runtime (the frozen-window syscall test: strace -f, and uuidd so
# that libuuid really talks to its daemon socket as it does on hosts that run one),
# iproute2 (ip netns: the Azure IMDS stand-in lives in a test's own network namespace),
# logrotate and systemd's systemd-analyze (the .deb's rotation rules and unit),
# mariadb-server and postgresql (the workload quiescers' restore proofs: the tests
# run private instances; the distribution services are never started, policy-rc.d
# below), and Azurite from npm, pinned to a version that runs on this machine's Node.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

AZURITE_VERSION="${AZURITE_VERSION:-3.35.0}"   # 3.36+ needs Node >= 21; Debian 12 machines have Node 20
apt_packages=()
command -v mkfs.xfs >/dev/null 2>&1 || apt_packages+=(xfsprogs)
command -v mkfs.ext4 >/dev/null 2>&1 || apt_packages+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || apt_packages+=(mount)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
command -v prometheus >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)   # test-side CMS cross-check only
command -v strace >/dev/null 2>&1 || apt_packages+=(strace)     # the frozen window's syscall trace test
command -v uuidd >/dev/null 2>&1 || [ -x /usr/sbin/uuidd ] || apt_packages+=(uuid-runtime)  # libuuid's daemon, real in that test
command -v ip >/dev/null 2>&1 || apt_packages+=(iproute2)       # ip netns: the IMDS stand-in's namespace
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || apt_packages+=(logrotate)  # the shipped rotation rules, rotated for real
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)  # the sidecar unit's offline security check (never run as init here)
[ -x /usr/sbin/mariadbd ] || apt_packages+=(mariadb-server)     # workload quiescer tests: private instances only
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_packages+=(postgresql)

if [ "${#apt_packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-system-deps: need root to apt-get install ${apt_packages[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: packages with a service (prometheus, mariadb, postgresql) must not start it here;
    # the tests start their own instances on free loopback ports.
    policy_rc=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy_rc" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod 755 "$policy_rc" && created_policy=1
        trap 'rm -f "$policy_rc"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy_rc"; trap - EXIT; fi
fi

azurite_bin=".tools/azurite/node_modules/.bin/azurite-blob"
if [ ! -x "$azurite_bin" ] || ! grep -q "\"version\": \"$AZURITE_VERSION\"" .tools/azurite/node_modules/azurite/package.json 2>/dev/null; then
    mkdir -p .tools/azurite
    npm install --silent --no-audit --no-fund --prefix .tools/azurite "azurite@$AZURITE_VERSION" >/dev/null
fi
echo "system deps ready: $(mkfs.xfs -V 2>/dev/null | head -1); azurite $AZURITE_VERSION; $(prometheus --version 2>&1 | head -1)"
