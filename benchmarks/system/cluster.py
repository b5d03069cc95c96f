"""The whole OMS on a private PostgreSQL and Redis: start, watch, fault, quiesce, check.

One `Cluster` owns a temporary directory, the private database servers, the FIX line proxy and
every OMS process (web, Celery workers, beat, FIX gateway, venue simulator), each a
`infra.Service` in its own process group. `close()` stops them all and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.system.infra import (
    PrivatePostgres,
    PrivateRedis,
    Sampler,
    Service,
    free_port,
    wait_for,
)
from benchmarks.system.proxy import FixLineProxy
from benchmarks.web import uvicorn_command

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
TRANSIENT = ("new", "pending_compliance", "pending_new", "pending_cancel", "pending_replace")


def _ports(count: int) -> list[int]:
    """BENCH_SYSTEM_PORT_BASE, base+1, ... when set (a shared machine's own range), else free."""
    base = os.environ.get("BENCH_SYSTEM_PORT_BASE")
    if base:
        return [int(base) + i for i in range(count)]
    return [free_port() for _ in range(count)]


class Cluster:
    """Every process of one run; see the module docstring."""

    def __init__(self, *, webs: int, workers: list[tuple[str, str, int]], visibility: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="oms-system-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.ids_dir = self.tmp / "ids"
        self.ids_dir.mkdir()
        pg_port, redis_port, sim_port, proxy_port, *web_ports = _ports(4 + webs)
        self.web_ports = web_ports
        self.pg = PrivatePostgres(self.tmp, pg_port, self.logs)
        self.redis = PrivateRedis(self.tmp, redis_port, self.logs)
        self.sim_port, self.proxy_port = sim_port, proxy_port
        self.proxy = FixLineProxy(proxy_port, sim_port)
        self.worker_specs = workers
        self.visibility = visibility
        self.services: list[Service] = []
        self.by_name: dict[str, Service] = {}
        self.sampler = Sampler(lambda: [self.pg.service, self.redis.service, *self.services])
        self.seed: dict[str, Any] = {}
        self.started_at = 0.0
        self.lost: dict[str, set[int]] = {}
        # Like systemd's Restart=always: an OMS process that dies on its own is started again
        # (not while a fault is being injected); each such restart is reported.
        self.supervised = threading.Event()
        self.supervisor_restarts: list[str] = []
        self._supervisor_stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    # ------------------------------------------------------------------ environment

    @property
    def db_url(self) -> str:
        return self.pg.url("oms")

    def env(self, **extra: str) -> dict[str, str]:
        origins = ",".join(f"http://127.0.0.1:{p}" for p in self.web_ports)
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.db_url,
                "REDIS_URL": self.redis.url(0),
                "DJANGO_SETTINGS_MODULE": "oms_site.settings",
                "PYTHONPATH": str(ROOT),
                "DEBUG": "0",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "CSRF_TRUSTED_ORIGINS": origins,
                "LOG_LEVEL": "WARNING",
                "ORDER_ENTRY_RATE": "1000000/min",
                "OMS_VAR_DIR": str(self.tmp / "var"),
                "FIX_STORE_DIR": str(self.tmp / "fix"),
                # A worker killed mid-task: its unacknowledged task comes back after this long.
                "CELERY_VISIBILITY_TIMEOUT": str(self.visibility),
                "MARKET_DATA_TICK_SECONDS": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("CELERY_BROKER_URL", None)
        env.update(extra)
        return env

    def _service(self, name: str, argv: list[str], **env: str) -> Service:
        service = Service(name=name, argv=argv, env=self.env(**env), log=self.logs / f"{name}.log")
        service.cwd = ROOT
        self.services.append(service)
        self.by_name[name] = service
        return service

    def manage(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.python("manage.py", *args, timeout=timeout)

    def python(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `python <args>` with the run's environment; output captured."""
        return subprocess.run(
            [PY, *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # ------------------------------------------------------------------ start

    def start_databases(self) -> None:
        self.pg.init()
        self.pg.start()
        self.pg.create_database("oms")
        self.redis.start()

    def seed_data(self) -> dict[str, Any]:
        out = self.python(
            "-m", "benchmarks.system.seed", "--fix-port", str(self.proxy_port), timeout=900
        )
        if out.returncode != 0:
            raise RuntimeError(f"seeding failed: {out.stderr[-3000:]}")
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("SEED"))
        self.seed = json.loads(line[4:])
        snap = self.manage("check_invariants", "--snapshot", str(self.tmp / "baseline.json"))
        if snap.returncode != 0:
            raise RuntimeError(f"baseline failed: {snap.stderr[-2000:]}")
        return self.seed

    def start_oms(self) -> None:
        """Simulator, line proxy, gateway, workers, beat and web processes; wait until ready."""
        manage = [PY, "manage.py"]
        # BENCH_SYSTEM_FIX_LOGS=1: every FIX message of both ends in logs/ (for debugging).
        fix_logs = bool(os.environ.get("BENCH_SYSTEM_FIX_LOGS"))
        self._service(
            "simulator",
            [
                *manage,
                "run_venue_simulator",
                "--port",
                str(self.sim_port),
                "--store-dir",
                str(self.tmp / "fix" / "simulator"),
                "--slice-qty",
                "100",
                "--slice-interval-ms",
                "200",
                *(["--log-dir", str(self.logs / "fix-simulator")] if fix_logs else []),
            ],
        ).start()
        if not wait_for(lambda: _listening(self.sim_port), 60):
            raise RuntimeError("venue simulator did not listen")
        self.proxy.start()
        self._service(
            "gateway",
            [
                *manage,
                "run_fix_gateway",
                "--store-dir",
                str(self.tmp / "fix" / "gateway"),
                "--reconnect-interval",
                "1",
                "--sweep-interval",
                "0.5",
                *(["--log-dir", str(self.logs / "fix-gateway")] if fix_logs else []),
            ],
        ).start()
        for name, queues, concurrency in self.worker_specs:
            self._service(
                name,
                [
                    PY,
                    "-m",
                    "celery",
                    "-A",
                    "oms_site",
                    "worker",
                    "-Q",
                    queues,
                    "-c",
                    str(concurrency),
                    "-n",
                    f"{name}@%h",
                    "--loglevel",
                    os.environ.get("BENCH_SYSTEM_WORKER_LOGLEVEL", "WARNING"),
                    "--without-gossip",
                    "--without-mingle",
                ],
            ).start()
        self._service(
            "beat",
            [
                PY,
                "-m",
                "celery",
                "-A",
                "oms_site",
                "beat",
                "--loglevel",
                "WARNING",
                "-s",
                str(self.tmp / "celerybeat-schedule"),
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
            ],
        ).start()
        for n, port in enumerate(self.web_ports):
            self._service(
                f"web{n + 1}",
                uvicorn_command(port),
                DB_POOL_MAX_SIZE="8",
                DB_CONN_MAX_AGE="0",
            ).start()
        if not wait_for(self.webs_healthy, 90):
            raise RuntimeError("web processes did not become healthy")
        if not wait_for(self.sessions_logged_on, 90, interval=0.5):
            raise RuntimeError("the FIX gateway did not log on to the simulator")
        self.started_at = time.monotonic()
        self.sampler.start()
        self.supervised.set()
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._supervisor_stop.wait(1.0):
            if not self.supervised.is_set():
                continue
            for service in self.services:
                if service.proc is not None and not service.alive() and self.supervised.is_set():
                    code = service.proc.returncode
                    service._reap(1)
                    service.restart()
                    self.supervisor_restarts.append(f"{service.name} (exit {code})")

    # ------------------------------------------------------------------ probes

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            return list(conn.execute(query, params).fetchall())

    def webs_healthy(self) -> bool:
        import httpx

        return all(
            httpx.get(f"http://127.0.0.1:{p}/healthz/", timeout=2).status_code == 200
            for p in self.web_ports
        )

    def sessions_logged_on(self) -> bool:
        rows = self.sql("SELECT count(*) FILTER (WHERE logged_on), count(*) FROM orders_fixsession")
        return bool(rows and rows[0][0] == rows[0][1] and rows[0][1] > 0)

    def dead_services(self) -> list[str]:
        return [s.name for s in self.services if not s.alive()]

    def last_fill_id(self) -> int:
        rows = self.sql("SELECT coalesce(max(id), 0) FROM orders_execution WHERE last_qty > 0")
        return int(rows[0][0])

    def wait_unacked(self, timeout: float) -> int:
        """Wait until a worker holds a task (kombu's 'unacked' hash is not empty); how many."""
        import redis

        client = redis.Redis.from_url(self.redis.url(0), socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                held = int(client.hlen("unacked"))
                if held or time.monotonic() > deadline:
                    return held
                time.sleep(0.01)
        finally:
            client.close()

    def _ids(self, name: str) -> list[int]:
        """Ids the clients recorded; queued routes already found lost are left out."""
        path = self.ids_dir / f"{name}.txt"
        ids = [int(x) for x in path.read_text().split()] if path.exists() else []
        return [i for i in ids if i not in self.lost.get(name, set())]

    def note_lost_routes(self) -> None:
        """Remember queued routes that did not run, so later faults neither wait for them nor
        count them again (the final check still reports every one of them)."""
        orders, blocks = self._ids("queued_orders"), self._ids("queued_blocks")
        rows = self.sql(
            "SELECT 'queued_orders', id FROM orders_order WHERE id = ANY(%s)"
            " AND status = 'approved' AND block_id IS NULL"
            " UNION ALL SELECT 'queued_blocks', id FROM orders_block WHERE id = ANY(%s)"
            " AND status = 'open'",
            [orders, blocks],
        )
        for name, pk in rows:
            self.lost.setdefault(name, set()).add(int(pk))

    def unsettled(self) -> dict[str, int]:
        """What is still moving: pending outbox rows, transient orders, queued routes waiting."""
        row = self.sql(
            "SELECT (SELECT count(*) FROM orders_outboxmessage WHERE status = 'pending'),"
            " (SELECT count(*) FROM orders_order WHERE status = ANY(%s)),"
            " (SELECT count(*) FROM orders_order WHERE id = ANY(%s) AND status = 'approved'"
            "  AND block_id IS NULL),"
            " (SELECT count(*) FROM orders_block WHERE id = ANY(%s) AND status = 'open'),"
            " (SELECT count(*) FROM orders_execution)",
            [list(TRANSIENT), self._ids("queued_orders"), self._ids("queued_blocks")],
        )[0]
        keys = ("outbox_pending", "transient_orders", "queued_orders", "queued_blocks", "execs")
        return dict(zip(keys, (int(v) for v in row), strict=True))

    def quiesce(self, timeout: float) -> tuple[bool, float, dict[str, int]]:
        """Wait until nothing moves (see unsettled) for three polls in a row."""
        started = time.monotonic()
        last: dict[str, int] = {}
        stable = 0
        while time.monotonic() - started < timeout:
            try:
                now = self.unsettled()
            except Exception:
                time.sleep(1)
                continue
            moving = any(now[k] for k in now if k != "execs")
            stable = stable + 1 if not moving and now["execs"] == last.get("execs") else 0
            last = now
            if stable >= 3:
                return True, time.monotonic() - started, now
            time.sleep(1)
        return False, time.monotonic() - started, last

    def check(self, *, audit: bool = True, final: bool = False) -> list[dict[str, Any]]:
        """Run `manage.py check_invariants --json` against the run's database.

        After a fault (not `final`), routes already found lost at an earlier check are left
        out, so each fault is judged by what it did; the final check counts them all.
        """
        for name in ("accepted", "queued_orders", "queued_blocks"):
            (self.ids_dir / f"{name}.txt").touch()
            ids = self._ids(name) if not final else None
            text = (self.ids_dir / f"{name}.txt").read_text() if final else None
            (self.ids_dir / f"{name}.check.txt").write_text(
                text if text is not None else "".join(f"{i}\n" for i in ids or [])
            )
        args = [
            "check_invariants",
            "--json",
            "--baseline",
            str(self.tmp / "baseline.json"),
            "--accepted-orders",
            str(self.ids_dir / "accepted.check.txt"),
            "--queued-orders",
            str(self.ids_dir / "queued_orders.check.txt"),
            "--queued-blocks",
            str(self.ids_dir / "queued_blocks.check.txt"),
        ]
        if not audit:
            args.append("--no-audit")
        out = self.manage(*args)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
        if not lines:
            return [
                {
                    "name": "invariant check ran",
                    "passed": False,
                    "checked": 0,
                    "detail": out.stderr[-1500:],
                    "examples": [],
                    "skipped": False,
                }
            ]
        return list(json.loads(lines[-1]))

    # ------------------------------------------------------------------ stop

    def keep_logs(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        for log in self.logs.glob("*.log"):
            shutil.copy(log, where / log.name)

    def close(self) -> None:
        """Stop every process group (OMS first, databases last) and remove the directory."""
        self.supervised.clear()
        with contextlib.suppress(Exception):
            self.sampler.stop()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop(timeout=10)
        with contextlib.suppress(Exception):
            self.proxy.stop()
        for service in (self.redis.service, self.pg.service):
            with contextlib.suppress(Exception):
                service.stop(timeout=20)
        self._supervisor_stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join(5)
        if os.environ.get("BENCH_SYSTEM_KEEP_TMP"):
            print(f"[bench_system] kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
