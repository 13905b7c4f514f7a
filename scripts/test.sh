#!/usr/bin/env bash
# README command 2: the full test suite. Bootstraps the torch venv (first time), builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
# The Redis claim-cache backend is tested against a real redis-server when one can be had; else skipped.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing redis-server (Debian package) for the Redis cache test" >&2
  (apt-get install -y -qq redis-server >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1)) \
    || echo "[test] redis-server not installable here; the Redis cache test will be skipped" >&2
fi
# `spar review`'s browser test drives headless Chromium over WebDriver (Debian packages chromium and
# chromium-driver: /usr/bin/chromium, /usr/bin/chromedriver); without them it prints why it skipped.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium + chromium-driver (Debian packages) for the review page's browser test" >&2
  (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) \
    || echo "[test] chromium / chromium-driver not installable here; the review browser test will be skipped" >&2
fi
echo "[test] building (first build of libtorch bindings takes a few minutes)" >&2
cargo build --workspace --tests --bins
cargo test --workspace --no-fail-fast "$@"
