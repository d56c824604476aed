#!/usr/bin/env bash
# bubblewrap, the guest sandbox every agent and `coop up` use by default (agent/sandbox.py).
#
#   up      install Debian's bubblewrap package (bwrap) when it is missing
#   down    nothing to stop
#   status  exit 0 when bwrap is installed
#
# Exits 0 after printing why when it cannot install (not root, no apt): the sandbox tests then skip,
# and agents refuse to join without --no-sandbox.
set -euo pipefail

say() { echo "sandbox.sh: $*"; }

installed() { command -v bwrap >/dev/null 2>&1; }

up() {
    if installed; then
        say "bubblewrap already installed ($(bwrap --version))"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root: cannot install bubblewrap (apt-get install bubblewrap); the sandbox tests will skip"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get (not Debian?): install bubblewrap yourself; the sandbox tests will skip"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # try the package lists we have first; refresh them only when that fails
    if ! apt-get install -y -q --no-install-recommends bubblewrap >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends bubblewrap >/dev/null || true
    fi
    if installed; then
        say "installed $(bwrap --version)"
    else
        say "apt-get could not install bubblewrap; the sandbox tests will skip"
    fi
    return 0
}

case "${1:-}" in
    up) up ;;
    down) say "nothing to stop" ;;
    status) installed ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
