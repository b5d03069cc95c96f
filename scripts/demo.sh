#!/usr/bin/env bash
# Quick start: set everything up, load the demo data and run the whole system in the foreground
# (web, Celery worker, Celery beat, FIX venue simulator, FIX gateway). Ctrl-C stops it all.
#   bash scripts/demo.sh            run in the foreground
#   bash scripts/demo.sh --detach   start, print, and return (stop with: bash scripts/demo.sh --stop)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
RUN="$ROOT/var/run"; LOGS="$ROOT/var/log"
mkdir -p "$RUN" "$LOGS"
PORT="${PORT:-8000}"
export FIX_SIM_PORT="${FIX_SIM_PORT:-9878}"
export DEBUG="${DEBUG:-1}"
export ALLOWED_HOSTS="${ALLOWED_HOSTS:-127.0.0.1,localhost}"

stop_all() {
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        pid="$(cat "$f")"
        kill "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

if [ "${1:-}" = "--stop" ]; then stop_all; echo "stopped"; exit 0; fi
stop_all

bash scripts/bootstrap.sh
.venv/bin/python manage.py seed_demo --fix-port "$FIX_SIM_PORT"
.venv/bin/python manage.py collectstatic --noinput -v0

start() {  # name, command...
    local name="$1"; shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
    echo "[demo] started $name (pid $!, log var/log/$name.log)"
}

# Two processes (one per core here, as benchmarks/bench_orders.py measures) with a bounded
# connection pool each: every ASGI request runs in a thread of its own, which without the pool
# opens a new PostgreSQL connection per request; pooled connections also keep prepared statements.
# oms_site.serve is uvicorn with a listening socket per worker, so connections spread over them.
start web env DB_POOL_MAX_SIZE="${DB_POOL_MAX_SIZE:-8}" .venv/bin/python -m oms_site.serve \
    --host 127.0.0.1 --port "$PORT" --workers "${WEB_WORKERS:-2}"
start worker .venv/bin/celery -A oms_site worker -Q default,routing,executions,settlement -c 2 --loglevel INFO
start beat .venv/bin/celery -A oms_site beat --loglevel INFO -s "$RUN/celerybeat-schedule" \
    --scheduler django_celery_beat.schedulers:DatabaseScheduler
if .venv/bin/python manage.py help run_venue_simulator >/dev/null 2>&1; then
    start simulator .venv/bin/python manage.py run_venue_simulator --port "$FIX_SIM_PORT"
fi
if .venv/bin/python manage.py help run_fix_gateway >/dev/null 2>&1; then
    sleep 1
    start gateway .venv/bin/python manage.py run_fix_gateway
fi

for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$PORT/healthz/" >/dev/null 2>&1 && break
    sleep 0.5
done
PASSWORD="$(.venv/bin/python manage.py shell -v 0 -c 'from oms_site.demo import demo_password; print(demo_password())')"
cat <<MSG

  Open OMS is running:  http://127.0.0.1:$PORT/
  Admin:                http://127.0.0.1:$PORT/admin/
  API docs:             http://127.0.0.1:$PORT/api/docs/

  Demo logins (password: $PASSWORD)
    admin        administrator (superuser)
    pm1, pm2     portfolio managers
    trader1      trader (equities desk)
    compliance1  compliance officer
    backoffice1  back office

MSG

if [ "${1:-}" = "--detach" ]; then
    echo "  Stop with: bash scripts/demo.sh --stop"
    exit 0
fi
trap 'echo; echo "[demo] stopping"; stop_all; exit 0' INT TERM
echo "  Ctrl-C stops everything. Logs: var/log/"
wait
