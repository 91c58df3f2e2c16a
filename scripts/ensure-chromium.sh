#!/usr/bin/env bash
# The browser tests drive Debian's Chromium at /usr/bin/chromium (Playwright never downloads a
# browser of its own). Installs it where this can (as root, with apt-get); otherwise stops with
# the command that would. CONVEYOR_SKIP_BROWSER=1 leaves the browser tests out instead: they are
# then reported as skipped, with that reason.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "${CONVEYOR_SKIP_BROWSER:-}" = "1" ] && [ "${CI:-}" != "true" ]; then
  echo "Chromium is missing; CONVEYOR_SKIP_BROWSER=1: the browser tests will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Chromium (Debian's chromium package) for the browser tests" >&2
  quiet() { DEBIAN_FRONTEND=noninteractive apt-get -y -qq "$@" >/dev/null; }
  quiet install chromium 2>/dev/null || { quiet update && quiet install chromium; }
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "Chromium is missing at $CHROMIUM and could not be installed here. Install it with:" >&2
  echo "    sudo apt-get install chromium" >&2
  echo "or run the tests without the browser tests: CONVEYOR_SKIP_BROWSER=1 make test" >&2
  exit 1
fi
