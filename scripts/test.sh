#!/usr/bin/env bash
# The test command (CI runs it): install what the tests need when it is missing —
# Debian's redis-server (the integration tests start their own on free loopback
# ports), chromium (the client's and the console's browser tests), prometheus
# (promtool checks the alert rules), the client's npm packages — then run every
# test of the workspace and the official client's tests against the gateway built
# by them.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian's ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -d clients/typescript/node_modules ]; then
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo test --workspace "$@"
# The official client, against the gateway binary the tests above built.
(cd clients/typescript && XCORD_GATEWAY_BIN="$PWD/../../target/debug/xcord-gateway" npm test)
