#!/usr/bin/env bash
# Install RateGuard with everything its checks need into .venv, then run them all:
# unit + integration tests (real embedded servers), the deployment checks and a short
# smoke run of the benchmark harness. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser tests drive Debian's chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq chromium </dev/null >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

.venv/bin/python -m pytest "$@"

if [ -f deploy/check.sh ]; then
    bash deploy/check.sh
fi
if [ -f bench/__main__.py ]; then
    .venv/bin/python -m bench smoke
fi
