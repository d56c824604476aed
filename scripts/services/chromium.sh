#!/usr/bin/env bash
# Chromium for the dashboard's browser tests (tests/web/): Debian's package, driven headless by
# Playwright (from PyPI, in .venv) through COOP_TEST_CHROMIUM or /usr/bin/chromium. Playwright's own
# browser download is never used: the tests run the distribution's browser, updated by apt.
#
#   up      install Debian's chromium package when it is missing
#   down    nothing to stop: each test module starts and stops its own headless browser
#   status  exit 0 when chromium is installed
#
# When it cannot install (not root, no apt) it prints why and exits 0, and the browser tests skip;
# under CI=true it exits 1 instead: CI must run them.
set -euo pipefail

say() { echo "chromium.sh: $*"; }

browser() { command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null; }

installed() { browser >/dev/null; }

cannot() {
    if [ "${CI:-}" = true ]; then
        say "$* (CI=true: the browser tests must run)" >&2
        exit 1
    fi
    say "$*; the dashboard's browser tests will skip"
    exit 0
}

up() {
    if installed; then
        say "chromium already installed ($("$(browser)" --version 2>/dev/null || echo "$(browser)"))"
        return 0
    fi
    [ "$(id -u)" = 0 ] || cannot "not root: cannot install Debian's chromium (apt-get install chromium)"
    command -v apt-get >/dev/null 2>&1 || cannot "no apt-get (not Debian?): install chromium yourself"
    export DEBIAN_FRONTEND=noninteractive
    # try the package lists we have first; refresh them only when that fails
    if ! apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends chromium >/dev/null || true
    fi
    installed || cannot "apt-get could not install chromium"
    say "installed $("$(browser)" --version 2>/dev/null || browser)"
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
