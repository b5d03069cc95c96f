#!/usr/bin/env bash
# Set the project up on this machine: services, Python venv with the locked dependencies,
# front-end packages, database schema and roles. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
log() { echo "[bootstrap] $*"; }

bash scripts/services.sh

# --- Python ------------------------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for cand in python3.11 python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys; exit(sys.version_info[:2] != (3, 11))'; then
            PY="$cand"; break
        fi
    done
fi
if [ -z "$PY" ]; then
    log "Python 3.11 not found; installing Debian's python3"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev build-essential >/dev/null
    PY=python3
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev build-essential >/dev/null
        "$PY" -m venv .venv
    fi
fi
stamp=".venv/.lock-$(sha256sum requirements.lock | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    log "installing locked Python dependencies (quickfix compiles once per machine, ~7 min)"
    .venv/bin/python -m pip install -q --upgrade pip uv
    # QuickFIX ships only as source: compile its wheel once per machine into a cache outside the
    # checkout, so fresh clones (and CI) on the same machine install it in seconds.
    WHEELS="${OMS_WHEEL_CACHE:-$HOME/.cache/open-oms/wheels}"
    mkdir -p "$WHEELS"
    qf="$(grep -E '^quickfix==' requirements.lock | cut -d= -f3)"
    if ! ls "$WHEELS"/quickfix-"$qf"-*.whl >/dev/null 2>&1; then
        .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "quickfix==$qf"
    fi
    .venv/bin/uv pip install --python .venv/bin/python -q --find-links "$WHEELS" -r requirements.lock
    rm -f .venv/.lock-*
    touch "$stamp"
fi

# --- Front-end packages (the blotter grid), installed from the npm registry, never committed -----
if [ -f package.json ]; then
    if ! command -v npm >/dev/null; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    nstamp="node_modules/.lock-$(sha256sum package-lock.json 2>/dev/null | cut -c1-16)"
    if [ ! -f "$nstamp" ]; then
        log "installing front-end packages"
        npm ci --no-audit --no-fund --loglevel=error
        touch "$nstamp"
    fi
fi

# --- Database ----------------------------------------------------------------------------------
DBURL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/oms}"
DBNAME="${DBURL##*/}"; DBNAME="${DBNAME%%\?*}"
if ! psql "${DBURL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$DBNAME'" | grep -q 1; then
    log "creating database $DBNAME"
    psql "${DBURL%/*}/postgres" -qc "CREATE DATABASE \"$DBNAME\""
fi
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py roles_sync -v0 >/dev/null
log "ready ($ROOT)"
