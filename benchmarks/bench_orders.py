"""Order entry through the real HTTP stack: throughput, basket latency, open-loop latency.

Targets (issue 3): >= 300 orders/s with 16 concurrent clients sending single orders; a
500-order basket end to end in <= 250 ms (median); p50 <= 20 ms and p99 <= 100 ms at a fixed
200 orders/s open-loop arrival rate.

What runs: a fresh database (`<DATABASE_URL db>_bench_orders`, dropped afterwards) is migrated and
seeded with the demo data set plus four pre-trade rules (restricted list, fat finger, buying
power, concentration), so every order really goes through validation, compliance (with the
account's cash row lock), audit and the after-commit blotter publish. `uvicorn
oms_site.asgi:application` serves it on a free 127.0.0.1 port (BENCH_WORKERS processes,
default 2 = the cores here; Django's psycopg pool, BENCH_DB_POOL=8 connections per worker). The
clients are a minimal keep-alive HTTP/1.1 client on uvloop in this process, sending pre-encoded
requests; on the same machine they still compete with the server for the CPU, so the figures
are a floor, not a ceiling. Open-loop latency is measured from each request's *scheduled* send time,
so a stalled server cannot hide its queue (no coordinated omission). If the closed loop shows
the server cannot take 200/s, that phase is reported as unbounded and latency is measured at
half the measured capacity instead.

    .venv/bin/python benchmarks/bench_orders.py            # full run (~1 min)
    .venv/bin/python benchmarks/bench_orders.py --quick    # shorter phases
    .venv/bin/python benchmarks/bench_orders.py --baskets 15   # baskets only, with CPU figures

Environment: BENCH_ORDERS_PORT=N serves on port N instead of a free one (so benchmarks run side
by side never meet); BENCH_ORDERS_DB names the database; BENCH_WORKERS, BENCH_DB_POOL as above.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from benchmarks.web import stop_process, uvicorn_command, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"orders_per_s": 300.0, "basket_500_ms": 250.0, "p50_ms": 20.0, "p99_ms": 100.0}
CLIENTS = 16
OPEN_LOOP_RATE = 200.0
# Idle keep-alive connections older than this are not reused (uvicorn closes them at 5 s).
IDLE_REUSE_SECONDS = 4.0
OPEN_LOOP_TIMEOUT = 15.0  # a request not answered by then counts as failed (status 0)
BASKET_SIZE = 500
LOG_PATH = Path(os.environ.get("BENCH_ORDERS_LOG", "/tmp/bench_orders_server.log"))

_SEED = r"""
import json, django
django.setup()
from decimal import Decimal
from django.core.management import call_command
call_command("migrate", verbosity=0)
from oms_site.demo import seed_demo
seed_demo()
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from allocations.models import Account, CashBalance
from compliance.models import Rule
from orders.models import Instrument
Rule.objects.get_or_create(name="Restricted list", defaults={"rule_type": "restricted_list", "severity": "block"})
Rule.objects.get_or_create(name="Fat finger", defaults={"rule_type": "fat_finger", "severity": "warn", "params": {"max_quantity": "100000", "max_notional": "5000000"}})
Rule.objects.get_or_create(name="Buying power", defaults={"rule_type": "buying_power", "severity": "block"})
Rule.objects.get_or_create(name="Concentration", defaults={"rule_type": "concentration", "severity": "warn", "params": {"dimension": "instrument", "max_pct": "25"}})
pm = get_user_model().objects.get(username="pm1")
CashBalance.objects.filter(account__managers=pm).update(settled=Decimal("1000000000"))
token, _ = Token.objects.get_or_create(user=pm)
accounts = list(Account.objects.filter(managers=pm, active=True).values_list("code", flat=True))
instruments = [
    {"symbol": i.symbol, "price": str(i.price.last)}
    for i in Instrument.objects.filter(asset_class="equity", tradable=True, lot_size=1).select_related("price")
    if i.price is not None and i.price.last % i.tick_size == 0
][:150]
print("SEED" + json.dumps({"token": token.key, "accounts": accounts, "instruments": instruments}))
"""


def _free_port() -> int:
    if os.environ.get("BENCH_ORDERS_PORT"):
        return int(os.environ["BENCH_ORDERS_PORT"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench_database_url() -> tuple[str, str, str]:
    """(admin URL, bench URL, bench db name) derived from DATABASE_URL."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/oms")
    parsed = urlparse(base)
    name = os.environ.get("BENCH_ORDERS_DB", f"{parsed.path.lstrip('/') or 'oms'}_bench_orders")
    return (
        urlunparse(parsed._replace(path="/postgres")),
        urlunparse(parsed._replace(path=f"/{name}")),
        name,
    )


def _recreate_database(admin_url: str, name: str, *, drop_only: bool = False) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def _env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_SETTINGS_MODULE": "oms_site.settings",
            # Under ASGI each request runs in its own thread: without a pool every request opens a
            # connection and bursts exhaust max_connections. A bounded pool per worker instead.
            "DB_CONN_MAX_AGE": "0",
            "DB_POOL_MAX_SIZE": os.environ.get("BENCH_DB_POOL", "8"),
            "ORDER_ENTRY_RATE": "1000000/min",
            "LOG_LEVEL": "WARNING",
            "DEBUG": "0",
            # Named after the bench database, so runs from several checkouts sharing one Redis
            # database never meet in the throttle, the caches or the blotter groups.
            "CACHE_PREFIX": f"bench-{urlparse(db_url).path.lstrip('/')}",
            "CHANNEL_PREFIX": f"bench-{urlparse(db_url).path.lstrip('/')}-ws",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _seed(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _SEED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"seeding failed: {out.stderr[-2000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("SEED"))
    return json.loads(line[4:])


def _start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        uvicorn_command(port, "--workers", str(workers)),
        cwd=ROOT,
        env=env,
        stderr=open(LOG_PATH, "wb"),  # noqa: SIM115 - the server owns it until it exits
    )
    wait_healthy(proc, port, timeout=180)
    return proc


class _Orders:
    """Valid random single orders for pm1's accounts (limit at the seeded reference price)."""

    def __init__(self, seed: dict[str, Any]) -> None:
        self.accounts = seed["accounts"]
        self.instruments = seed["instruments"]
        self.rng = random.Random(42)

    def one(self) -> dict[str, Any]:
        inst = self.rng.choice(self.instruments)
        return {
            "account": self.rng.choice(self.accounts),
            "instrument": inst["symbol"],
            "side": self.rng.choice(("buy", "sell")),
            "quantity": str(self.rng.randint(1, 20) * 10),
            "order_type": "limit",
            "limit_price": inst["price"],
            "time_in_force": "day",
        }


class _Http:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams.

    Why not httpx: the load generator shares the machine's two cores with the server, and httpx
    spent about a millisecond of CPU per request; this spends a few tens of microseconds, so
    the figures measure the server rather than the client. Requests are pre-encoded bytes.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Token {token}\r\n"
            "Content-Type: application/json\r\nConnection: keep-alive\r\n"
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def post(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\n".encode()
            + self.head
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one pre-encoded request on an idle connection (or a new one)."""
        reader = writer = None
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_REUSE_SECONDS:
                break
            # uvicorn closes a keep-alive connection idle for 5 s: a request sent on it meets a
            # closed socket and would count as a failure of the server.
            writer.close()
            reader = writer = None
        if reader is None or writer is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                end = lower.index(b"\r\n", at + 2)
                body = await reader.readexactly(int(lower[at + 17 : end]))
            elif b"transfer-encoding: chunked" in lower:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    parts.append(await reader.readexactly(size + 2))
                    if size == 0:
                        break
                body = b"".join(p[:-2] for p in parts)
            else:
                body = b""
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer, time.monotonic()))
        return status, body

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


def _run(http: _Http, coro: Any) -> Any:
    """Run one phase on uvloop (installed with uvicorn[standard]); its connections end with it."""

    async def phase() -> Any:
        try:
            return await coro
        finally:
            http.close()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - plain asyncio is only slower
        return asyncio.run(phase())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(phase())


def _bodies(gen: _Orders, http: _Http, n: int) -> list[bytes]:
    """Pre-encoded order requests, so the timed loop only sends and receives."""
    return [http.post("/api/v1/orders/", json.dumps(gen.one()).encode()) for _ in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _closed_loop(http: _Http, requests: list[bytes], seconds: float) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds
    feed = iter(requests)

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            request = next(feed)
            t0 = time.perf_counter()
            status, _ = await http.send(request)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    return {
        "orders_per_s": round(done / elapsed, 1),
        "created": done,
        "seconds": round(elapsed, 2),
        "latency_p50_ms": round(_pct(latencies, 50), 2),
        "latency_p99_ms": round(_pct(latencies, 99), 2),
        "statuses": statuses,
    }


async def _open_loop(
    http: _Http, requests: list[bytes], seconds: float, rate: float = OPEN_LOOP_RATE
) -> dict[str, Any]:
    n = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            # A request never waits for a free connection: a busy pool opens another one.
            code, _ = await asyncio.wait_for(http.send(requests[i]), timeout=OPEN_LOOP_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            code = 0  # timed out or refused: counted, with its latency so far
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "rate_per_s": rate,
        "requests": n,
        "p50_ms": round(_pct(latencies, 50), 2),
        "p90_ms": round(_pct(latencies, 90), 2),
        "p99_ms": round(_pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "connections": len(http.idle),
        "statuses": statuses,
    }


async def _baskets(http: _Http, gen: _Orders, runs: int) -> dict[str, Any]:
    times: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(runs):
        body = json.dumps({"orders": [gen.one() for _ in range(BASKET_SIZE)]}).encode()
        request = http.post("/api/v1/baskets/", body)
        t0 = time.perf_counter()
        status, answer = await http.send(request)
        times.append((time.perf_counter() - t0) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if status != 201:
            raise RuntimeError(f"basket failed: {status} {answer[:500]!r}")
    return {**_basket_summary(times), "statuses": statuses}


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 if it is gone or /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_pids(pid: int) -> list[int]:
    """A process and its descendants (uvicorn's workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            continue
    return pids


def _cpu_snapshot(server_pid: int, admin_url: str, db_name: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the web processes and of PostgreSQL's backends of the bench db."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        backends = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [db_name],
            )
        ]
    return {
        "web": {p: _process_cpu(p) for p in _tree_pids(server_pid)},
        "postgres": {p: _process_cpu(p) for p in backends},
    }


def _cpu_per_order(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], orders: int
) -> dict[str, float]:
    """Milliseconds of CPU per created order in each kind of process over a phase."""
    spent = _cpu_spent_ms(before, after)
    return {f"{kind}_cpu_ms_per_order": round(ms / max(orders, 1), 2) for kind, ms in spent.items()}


def _basket_summary(times: list[float]) -> dict[str, Any]:
    """Size, number and median/min/max wall milliseconds of the baskets timed."""
    return {
        "size": BASKET_SIZE,
        "runs": len(times),
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
    }


def _cpu_spent_ms(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """Milliseconds of CPU spent between two snapshots, per kind of process."""
    return {
        kind: sum(t - before[kind].get(p, 0.0) for p, t in after[kind].items()) * 1000
        for kind in ("web", "postgres")
    }


def _baskets_only(
    http: _Http, gen: _Orders, runs: int, server_pid: int, admin_url: str, db_name: str
) -> dict[str, Any]:
    """Only baskets, one at a time: wall time, and CPU of the web workers and of PostgreSQL's
    backends per basket (load-independent, unlike the wall time on a shared machine)."""
    _run(http, _baskets(http, gen, 2))  # warm-up: connections, caches, the pool's backends
    web_cpu: list[float] = []
    pg_cpu: list[float] = []
    times: list[float] = []
    for _ in range(runs):
        before = _cpu_snapshot(server_pid, admin_url, db_name)
        times.append(_run(http, _baskets(http, gen, 1))["median_ms"])
        spent = _cpu_spent_ms(before, _cpu_snapshot(server_pid, admin_url, db_name))
        web_cpu.append(spent["web"])
        pg_cpu.append(spent["postgres"])
    return {
        **_basket_summary(times),
        "web_cpu_median_ms": round(statistics.median(web_cpu), 1),
        "postgres_cpu_median_ms": round(statistics.median(pg_cpu), 1),
    }


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def _progress(phase: str, figures: dict[str, Any]) -> None:
    print(f"[bench_orders] {phase}: {json.dumps(figures)}", file=sys.stderr, flush=True)


def run(*, quick: bool = False, baskets_only: int = 0) -> dict[str, Any]:
    """Seed a fresh database, start uvicorn, measure; returns the figures and the targets.

    `baskets_only=N` measures N baskets alone (no single-order phases), with CPU per basket.
    """
    admin_url, db_url, db_name = _bench_database_url()
    workers = int(os.environ.get("BENCH_WORKERS", "2"))
    _recreate_database(admin_url, db_name)
    env = _env(db_url)
    server = None
    try:
        seed = _seed(env)
        port = _free_port()
        server = _start_server(env, port, workers)
        http = _Http("127.0.0.1", port, seed["token"])
        gen = _Orders(seed)
        if baskets_only:
            only = _baskets_only(http, gen, baskets_only, server.pid, admin_url, db_name)
            return {
                "basket_500_median_ms": only["median_ms"],
                "targets": {"basket_500_ms": TARGETS["basket_500_ms"]},
                "met": {"basket_500_ms": only["median_ms"] <= TARGETS["basket_500_ms"]},
                "detail": {"baskets": only},
                "setup": {"uvicorn_workers": workers, "load_avg_at_end": _load()},
            }
        closed_seconds = 5.0 if quick else 10.0
        open_seconds = 5.0 if quick else 10.0
        # Enough pre-encoded orders for any rate this machine could reach (~2,500/s).
        requests = _bodies(gen, http, int(2500 * (closed_seconds + 2)))
        _run(http, _closed_loop(http, requests[:4000], 2.0))  # warm-up: connections, caches
        cpu_before = _cpu_snapshot(server.pid, admin_url, db_name)
        throughput = _run(http, _closed_loop(http, requests[4000:], closed_seconds))
        throughput.update(
            _cpu_per_order(
                cpu_before, _cpu_snapshot(server.pid, admin_url, db_name), throughput["created"]
            )
        )
        _progress("closed loop", throughput)
        baskets = _run(http, _baskets(http, gen, 3 if quick else 7))
        _progress("baskets", baskets)
        # Above capacity an open loop's queue (and latency) grows without bound for as long as it
        # runs, so 200/s is only offered when the closed loop showed the server can take it;
        # otherwise the latency is measured at half the measured capacity instead.
        capacity = throughput["orders_per_s"]
        open_loop: dict[str, Any] = {
            "rate_per_s": OPEN_LOOP_RATE,
            "skipped": f"capacity {capacity}/s < {OPEN_LOOP_RATE}/s: latency unbounded",
            "p50_ms": None,
            "p99_ms": None,
        }
        if capacity >= OPEN_LOOP_RATE:
            fresh = _bodies(gen, http, int(OPEN_LOOP_RATE * open_seconds))
            open_loop = _run(http, _open_loop(http, fresh, open_seconds))
        _progress("open loop", open_loop)
        sustainable = None
        if capacity < OPEN_LOOP_RATE:
            rate = max(1.0, round(throughput["orders_per_s"] / 2, 1))
            fresh = _bodies(gen, http, int(rate * open_seconds) + 1)
            sustainable = _run(http, _open_loop(http, fresh, open_seconds, rate=rate))
            _progress("open loop at half capacity", sustainable)
        return {
            "orders_per_s_16_clients": throughput["orders_per_s"],
            "basket_500_median_ms": baskets["median_ms"],
            "open_loop_200_per_s_p50_ms": open_loop["p50_ms"],
            "open_loop_200_per_s_p99_ms": open_loop["p99_ms"],
            "targets": TARGETS,
            "met": {
                "orders_per_s": throughput["orders_per_s"] >= TARGETS["orders_per_s"],
                "basket_500_ms": baskets["median_ms"] <= TARGETS["basket_500_ms"],
                "p50_ms": open_loop["p50_ms"] is not None
                and open_loop["p50_ms"] <= TARGETS["p50_ms"],
                "p99_ms": open_loop["p99_ms"] is not None
                and open_loop["p99_ms"] <= TARGETS["p99_ms"],
            },
            "detail": {
                "closed_loop": throughput,
                "baskets": baskets,
                "open_loop": open_loop,
                "open_loop_half_capacity": sustainable,
            },
            "setup": {
                "uvicorn_workers": workers,
                "cpus": os.cpu_count(),
                "load_avg_at_end": _load(),
                "accounts": len(seed["accounts"]),
                "instruments": len(seed["instruments"]),
            },
        }
    finally:
        stop_process(server, timeout=15)
        _recreate_database(admin_url, db_name, drop_only=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--baskets",
        type=int,
        default=0,
        metavar="N",
        help="measure only N baskets (with web and PostgreSQL CPU per basket)",
    )
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, baskets_only=args.baskets), indent=2))
