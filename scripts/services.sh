#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1. On a Debian machine where they are missing,
# install them from Debian's packages and start them. Idempotent; safe to run before every command.
set -euo pipefail

PGHOST_=127.0.0.1
PGPORT_=5432
REDIS_PORT_=6379
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

log() { echo "[services] $*"; }

apt_install() {
    if ! command -v apt-get >/dev/null; then
        echo "[services] $* missing and this is not a Debian machine: install it yourself" >&2
        exit 1
    fi
    log "installing $* from Debian packages"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ready() { pg_isready -h "$PGHOST_" -p "$PGPORT_" -q 2>/dev/null; }
redis_ready() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT_" ping 2>/dev/null | grep -q PONG; }

# --- PostgreSQL --------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null || ! command -v pg_isready >/dev/null; then
    apt_install postgresql postgresql-client
    FRESH_PG=1
fi
if ! pg_ready; then
    ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    if [ -z "$ver" ]; then echo "[services] no PostgreSQL cluster found" >&2; exit 1; fi
    if [ "${FRESH_PG:-0}" = 1 ]; then
        # A cluster this script installed is a local development box: trust loopback connections,
        # as the project's DATABASE_URL default (postgres@127.0.0.1, no password) expects.
        hba="/etc/postgresql/$ver/main/pg_hba.conf"
        if ! grep -q "oms-local-trust" "$hba"; then
            $SUDO sed -i '1i host all all 127.0.0.1/32 trust # oms-local-trust\nhost all all ::1/128 trust # oms-local-trust' "$hba"
        fi
    fi
    log "starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
pg_ready || { echo "[services] PostgreSQL does not answer on $PGHOST_:$PGPORT_" >&2; exit 1; }

# --- Redis -------------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null; then
    apt_install redis-server redis-tools
fi
if ! redis_ready; then
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT_" \
        --dir /var/lib/redis --logfile /var/log/redis/oms.log --appendonly yes --appendfsync everysec
    for _ in $(seq 1 30); do redis_ready && break; sleep 0.5; done
fi
redis_ready || { echo "[services] Redis does not answer on 127.0.0.1:$REDIS_PORT_" >&2; exit 1; }
log "PostgreSQL and Redis are up"
