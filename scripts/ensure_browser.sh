#!/usr/bin/env bash
# Give the browser tests (tests/web) a browser: Debian's chromium and chromium-driver.
#
# Does nothing when both are installed. Otherwise tries apt-get, as root or through a sudo
# that needs no password. Never fails the build: where the browser cannot be installed, the
# browser tests are skipped and pytest says why. RLHFKIT_NO_BROWSER_INSTALL=1 skips the
# install attempt; RLHFKIT_CHROMIUM / RLHFKIT_CHROMEDRIVER point the tests at other binaries.
set -u

chromium=${RLHFKIT_CHROMIUM:-/usr/bin/chromium}
driver=${RLHFKIT_CHROMEDRIVER:-/usr/bin/chromedriver}
say() { echo "ensure_browser: $*"; }

if [ -x "$chromium" ] && [ -x "$driver" ]; then
    exit 0
fi
if [ "${RLHFKIT_NO_BROWSER_INSTALL:-}" = 1 ]; then
    say "no $chromium or $driver, and RLHFKIT_NO_BROWSER_INSTALL=1: browser tests will be skipped"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install Chromium and its chromedriver yourself; browser tests will be skipped"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    say "not root and no password-less sudo: run 'apt-get install chromium chromium-driver' as root; browser tests will be skipped"
    exit 0
fi

log=$(mktemp "${TMPDIR:-/tmp}/ensure_browser.XXXXXX.log")
say "installing Debian's chromium and chromium-driver for the browser tests (log: $log)"
# Bounded: a mirror that does not answer must not hang `make test`.
if timeout 300 $sudo apt-get update -q >"$log" 2>&1 &&
   timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -q --no-install-recommends chromium chromium-driver >>"$log" 2>&1; then
    say "installed $("$chromium" --version 2>/dev/null || echo chromium)"
else
    say "apt-get failed (see $log): browser tests will be skipped"
fi
exit 0
