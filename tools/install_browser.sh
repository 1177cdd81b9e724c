#!/usr/bin/env bash
# A headless browser for tests/inference/test_html_report.py (`make test` runs this first).
# Installs Debian's chromium when none is there, apt-get is available and this runs as root
# (a CI container); otherwise, or with ONESHOT_NO_BROWSER=1, it only says so and the browser
# test skips with that reason. Idempotent: nothing is done when a browser is installed.
set -uo pipefail
for b in chromium chromium-browser google-chrome chrome; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
if [ "${ONESHOT_NO_BROWSER:-0}" = "1" ] || ! command -v apt-get >/dev/null 2>&1 \
    || [ "$(id -u)" != "0" ]; then
  echo "[install_browser] no Chromium: the headless-browser test will skip (as root with" \
       "apt-get: apt-get install chromium)"
  exit 0
fi
echo "[install_browser] installing chromium (Debian package, about 100 MB) for the HTML test"
log=$(mktemp)
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
    >"$log" 2>&1; then
  apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends chromium >"$log" 2>&1 \
    || echo "[install_browser] apt-get failed ($log): the headless-browser test will skip"
fi
exit 0
