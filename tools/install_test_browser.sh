#!/usr/bin/env bash
# The browser the Steering Arena's end-to-end tests drive: Debian's chromium at /usr/bin/chromium
# (Playwright's own browser download does not work offline). Does nothing when it is there.
# Called by the README's test command (and so by CI).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_browser: no chromium and no apt-get: install Chromium so that /usr/bin/chromium exists" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "install_test_browser: installed $(chromium --version 2>/dev/null || echo chromium)"
