#!/usr/bin/env bash
# Browser test of the operations dashboard (assets/dashboard.html).
#
# Installs what is missing (Debian's chromium, node and npm; playwright-core
# from package-lock.json into tests/browser/node_modules; no browser download),
# then runs dashboard_test.js: a mock Athena API on 127.0.0.1 (ephemeral port)
# and headless Chromium driving the page. Exits non-zero on any failure.
# The test itself is capped at 55 s and stops its own server and browser.
#
#   tests/browser/run.sh            # from anywhere
#   CHROMIUM=/usr/bin/chromium tests/browser/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "run.sh: Node.js >= 18 needed, found $(node --version)" >&2
  exit 1
fi

if ! node -e 'require.resolve("playwright-core")' >/dev/null 2>&1; then
  echo "run.sh: installing npm dependencies" >&2
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi

exec timeout --kill-after=5 55 node dashboard_test.js
