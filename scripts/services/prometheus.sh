#!/usr/bin/env bash
# Prometheus for the observability tests (see README.md here).
#
#   up      install Debian's prometheus package (prometheus + promtool) without starting its service;
#           the tests start their own Prometheus on a free port with a temporary config
#   down    nothing to stop: every Prometheus the tests start is stopped by the test itself
#   status  exit 0 when prometheus and promtool are installed
#
# Exits 0 after printing why when it cannot install (not root, no apt): the tests then skip.
set -euo pipefail

say() { echo "prometheus.sh: $*"; }

installed() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

up() {
    if installed; then
        say "prometheus and promtool already installed ($(prometheus --version 2>&1 | head -n1))"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root: cannot install Debian's prometheus package; the observability tests will skip"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get (not Debian?): install prometheus and promtool yourself; the observability tests will skip"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local added_policy=0
    # The package ships an init script and a systemd unit; a policy-rc.d that exits 101 stops its
    # postinst from starting a Prometheus on port 9090 that nobody asked for.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local ok=1
    # try the package lists we have first; refresh them only when that fails
    if ! apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends prometheus >/dev/null || ok=0
    fi
    if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$ok" = 1 ] && installed; then
        say "installed $(prometheus --version 2>&1 | head -n1) (its service is not started)"
    else
        say "apt-get could not install prometheus; the observability tests will skip"
    fi
    return 0
}

down() {
    say "nothing to stop: the tests start and stop their own Prometheus processes"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) installed ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
