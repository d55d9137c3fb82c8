#!/usr/bin/env bash
# Install RateGuard with everything its checks need into .venv, then run them all:
# unit + integration tests (real embedded servers), the deployment checks, the image
# and its entrypoints, and a short smoke run of the benchmark harness. Extra arguments go to pytest.
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

# The deployment checks, a 10-second smoke run of the benchmark harness and one pass
# of each micro-benchmark (not timed: --benchmark-disable) first, so that the main
# test run's summary is the last thing printed.
bash deploy/check.sh
# The image built (podman where no Docker engine runs) and every entrypoint run in it as
# the rendered prod overlay specifies, against embedded servers on this host (~2-4 min).
bash deploy/image-check.sh
.venv/bin/python -m bench smoke
.venv/bin/python -m pytest bench -q -p no:cacheprovider --benchmark-disable

.venv/bin/python -m pytest "$@"
