#!/usr/bin/env bash
# The full test suite: set-up, lint, migrations check, then every test (unit, API, concurrency,
# FIX over TCP, websocket, browser). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

bash scripts/bootstrap.sh

# Browser tests drive Debian's chromium (Playwright's own browser download does not work here).
if [ ! -x /usr/bin/chromium ]; then
    echo "[test] installing Debian's chromium for the browser tests"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] mypy (services, selectors, engines)"
.venv/bin/mypy
echo "[test] migrations are up to date"
.venv/bin/python manage.py makemigrations --check --dry-run
echo "[test] pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "[test] no tests were collected" >&2; exit 1; fi
exit "$rc"
