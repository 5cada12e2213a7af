#!/usr/bin/env bash
# Debian's Chromium for the end-to-end tests (tests/app/test_e2e_browser.py), installed once.
# Sourced by test.sh. Without root or sudo it only says what to run; the browser tests then skip,
# unless MIDFLIGHT_REQUIRE_BROWSER=1 (CI), where they fail instead.
if [ -x /usr/bin/chromium ]; then
  return 0 2>/dev/null || exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
  echo "browser: /usr/bin/chromium is missing; install it with 'sudo apt-get install -y chromium' for the browser tests" >&2
  return 0 2>/dev/null || exit 0
fi
echo "browser: installing Debian's chromium (apt-get) for the end-to-end tests" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q chromium >/tmp/midflight-apt.log 2>&1 \
  || { $sudo apt-get update -q >>/tmp/midflight-apt.log 2>&1 && $sudo apt-get install -y -q chromium >>/tmp/midflight-apt.log 2>&1; } \
  || { echo "browser: apt-get install chromium failed; see /tmp/midflight-apt.log" >&2; tail -5 /tmp/midflight-apt.log >&2; }
