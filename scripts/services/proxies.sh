#!/usr/bin/env bash
# nginx and Caddy for the deployment tests (tests/deploy/, docs/deploy.md; see README.md here).
#
#   up      install Debian's nginx and caddy packages without starting their services; the tests
#           run their own nginx and Caddy on free ports with the shipped configs (deploy/nginx,
#           deploy/caddy) in front of a coordinator
#   down    nothing to stop: every proxy the tests start is stopped by the test itself
#   status  exit 0 when nginx and caddy are installed
#
# Exits 0 after printing why when it cannot install (not root, no apt): the tests then skip.
set -euo pipefail

say() { echo "proxies.sh: $*"; }

PACKAGES=(nginx caddy)

missing() {
    local out=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || out+=(nginx)
    command -v caddy >/dev/null 2>&1 || out+=(caddy)
    echo "${out[@]:-}"
}

up() {
    local need
    need=$(missing)
    if [ -z "$need" ]; then
        say "nginx and caddy already installed"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root: cannot install Debian's $need; the reverse-proxy tests will skip"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get (not Debian?): install $need yourself; the reverse-proxy tests will skip"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local added_policy=0
    # Both packages start a service on ports 80 and 443 when installed; a policy-rc.d that exits
    # 101 stops their postinst from starting servers nobody asked for.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local ok=1
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $need >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $need >/dev/null || ok=0
    fi
    if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    need=$(missing)
    if [ "$ok" = 1 ] && [ -z "$need" ]; then
        say "installed nginx and caddy (their services are not started)"
    else
        say "apt-get could not install ${need:-them}; the reverse-proxy tests will skip"
    fi
    return 0
}

down() {
    say "nothing to stop: the tests start and stop their own nginx and Caddy processes"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) [ -z "$(missing)" ] ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
