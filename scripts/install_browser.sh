#!/usr/bin/env bash
# Chromium for the browser tests (tests/test_browser.py, marked `browser`): Debian's package,
# which Playwright drives through executable_path=/usr/bin/chromium. `playwright install` is not
# used: it downloads its own browser, which CI machines without internet cannot.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation
echo "chromium: $(/usr/bin/chromium --version)"
