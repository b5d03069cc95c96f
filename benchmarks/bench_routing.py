"""Benchmark of routing end to end: service → outbox → gateway → simulator → execution_apply.

Orders are routed in two worker processes (as Celery routing workers) by `orders_route`, lists
of `--route-batch` orders (default 20, as a trader routes a basket; 1 = one `order_route` call
and transaction per order), the gateway (this process, the real `GatewayRunner` with QuickFIX)
picks them from the outbox after NOTIFY, the venue simulator (a separate process) acknowledges
and fills each, and the gateway stores every report and applies it with `execution_apply` (fill
allocation, positions, cash, audit) on its applier threads. An order counts when its status is
filled in the database.

Figures, in three parts:
- burst: `--orders` orders (400 with --quick, else 2,000) routed at once; orders routed and
  filled per second (the throughput ceiling), and from fill received (the gateway's QuickFIX
  callback) to fill committed, median and p99, queueing included: in a burst that is mostly
  queue wait, so it is reported but is not the latency figure.
- paced: an open-loop order rate (`--paced`, default 100 and 200 orders/s, for `--paced-seconds`):
  a route call every 50 ms for that tick's orders, on schedule whether or not earlier orders are
  done, so a system that cannot keep up shows growing queues, not a slower offered load.
  Fill received to committed, median and p99 (the latency target applies here), the rate
  actually completed, and how late the route calls ran behind their schedule.
- kill switch: `--kill` (default 1,000) resting orders, all working, then one firm-wide switch;
  the time until every cancel request is on the wire (its outbox row marked sent after
  `Gateway.send` returned) and until every order is canceled.
For each part, where the time of each inbound report goes (store the raw message, wait for an
applier, apply) and the CPU seconds of this (gateway) process and of the database backends.

Uses its own database (``oms_bench_routing`` on the server of DATABASE_URL, or
``<name>_bench_routing`` for another database name; created, migrated, flushed). Run:
``.venv/bin/python -m benchmarks.bench_routing [--quick] [--route-batch N] [--paced 100,200]
[--paced-seconds S] [--kill N] [--appliers N] [--apply-batch N] [--port P]``.
Targets: >= 200 orders/s; p99 fill-to-commit <= 20 ms (paced); 1,000 cancels out within 5 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

BENCH_DB = "oms_bench_routing"
ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 200.0
TARGET_P99_MS = 20.0
TARGET_KILL_S = 5.0
SYMBOLS = 40
ACCOUNTS = 20
BROKERS = (("BRKA", 1), ("BRKB", 2), ("BRKC", 3))
ROUTING_WORKERS = 2


def _setup_django() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/oms")
    server, name = base.rsplit("/", 1)
    # Someone else's DATABASE_URL (oms_<who>) gets its own benchmark database next to it.
    bench_db = BENCH_DB if name in ("oms", BENCH_DB) else f"{name}_bench_routing"
    os.environ["DATABASE_URL"] = f"{server}/{bench_db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [bench_db]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{bench_db}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world(port: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from allocations.models import Account, CashBalance, Custodian, Desk
    from oms_site import roles
    from orders.models import Broker, FixSession, Instrument, Issuer, ReferencePrice

    roles.roles_sync()
    user_model = get_user_model()
    trader = user_model.objects.create(username="bench_trader")
    trader.groups.add(Group.objects.get(name=roles.TRADER))
    pm = user_model.objects.create(username="bench_pm")
    pm.groups.add(Group.objects.get(name=roles.PM))
    desk = Desk.objects.create(code="EQ", name="Equities")
    desk.traders.add(trader)
    custodian = Custodian.objects.create(code="CUST", name="Custodian", bic="CUSTUS33XXX")
    accounts = []
    for i in range(ACCOUNTS):
        account = Account.objects.create(
            code=f"A{i:03d}",
            name=f"Fund {i}",
            client="Client",
            custodian=custodian,
            custodian_account=f"CA{i}",
            desk=desk,
        )
        CashBalance.objects.create(account=account, currency="USD", settled=Decimal("1e9"))
        accounts.append(account)
    issuer = Issuer.objects.create(code="ISS", name="Issuer", country="US", sector="Tech")
    instruments = []
    now = timezone.now()
    prices: dict[str, str] = {}
    for i in range(SYMBOLS):
        symbol = f"S{i:03d}"
        instrument = Instrument.objects.create(
            symbol=symbol,
            name=symbol,
            asset_class="equity",
            currency="USD",
            issuer=issuer,
            sector="Tech",
            country="US",
        )
        last = Decimal(100 + i)
        ReferencePrice.objects.create(
            instrument=instrument,
            bid=last - Decimal("0.05"),
            ask=last + Decimal("0.05"),
            last=last,
            as_of=now,
        )
        prices[symbol] = str(last)
        instruments.append(instrument)
    for code, rank in BROKERS:
        broker = Broker.objects.create(code=code, name=code, rank=rank)
        FixSession.objects.create(
            broker=broker,
            port=port,
            sender_comp_id="OMS",
            target_comp_id=code,
            heartbeat_seconds=5,
        )
    return {
        "trader": trader,
        "pm": pm,
        "accounts": accounts,
        "instruments": instruments,
        "prices": prices,
    }


def _orders(world: dict[str, Any], count: int, **terms: Any) -> list[int]:
    from orders.models import Order

    rows = []
    for i in range(count):
        rows.append(
            Order(
                account=world["accounts"][i % ACCOUNTS],
                instrument=world["instruments"][i % SYMBOLS],
                side="buy",
                quantity=Decimal(100),
                leaves_qty=Decimal(100),
                order_type=terms.get("order_type", "market"),
                limit_price=terms.get("limit_price"),
                time_in_force="day",
                status="approved",
                compliance_outcome="pass",
                created_by=world["pm"],
            )
        )
    return [o.pk for o in Order.objects.bulk_create(rows)]


def _worker_init(database_url: str) -> None:
    """A routing worker process (as a Celery routing worker would be): Django, no flush."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
    import django

    django.setup()


def _route_chunk(args: tuple[int, list[int], int]) -> int:
    from django.contrib.auth import get_user_model

    from orders.services.routing import order_route, orders_route

    trader_id, chunk, batch = args
    trader = get_user_model().objects.get(pk=trader_id)
    codes = [c for c, _ in BROKERS]
    if batch <= 1:
        for n, pk in enumerate(chunk):
            order_route(user=trader, order_id=pk, broker_code=codes[n % len(codes)])
        return len(chunk)
    # A trader routing a list: one call per `batch` orders, the brokers taking turns per list.
    for n, start in enumerate(range(0, len(chunk), batch)):
        orders_route(
            user=trader, order_ids=chunk[start : start + batch], broker_code=codes[n % len(codes)]
        )
    return len(chunk)


def _route_all(
    world: dict[str, Any], ids: list[int], pool: Any, workers: int, batch: int = 1
) -> None:
    """Route in separate processes: the gateway process keeps its CPU for executions."""
    size = max(1, len(ids) // (workers * 4))
    chunks = [(world["trader"].pk, ids[i : i + size], batch) for i in range(0, len(ids), size)]
    sum(pool.map(_route_chunk, chunks))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)  # polling must not load the database being measured
    return False


def _count(ids: list[int], status: str) -> int:
    """How many of these orders have this status: one constant statement, the ids as one array
    literal, so polling costs this (measured) process and the database next to nothing (the
    ORM's `pk__in` with 1,000 parameters took about a tenth of the gateway process's CPU)."""
    from django.db import connection

    from orders.models import Order

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {Order._meta.db_table} WHERE id = ANY(%s::bigint[]) "
            "AND status = %s",
            ["{" + ",".join(map(str, ids)) + "}", status],
        )
        return int(cursor.fetchone()[0])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _stages(handler: Any) -> dict[str, dict[str, float]]:
    """Median and p99 (ms) of each inbound stage: store the raw message, wait, apply."""
    figures = {}
    for name, values in getattr(handler, "stage_latencies", {}).items():
        ms = [x * 1000 for x in values]
        if ms:
            figures[name] = {
                "median": round(statistics.median(ms), 2),
                "p99": round(_percentile(ms, 0.99), 2),
            }
    return figures


def _outbox_delays(ids: list[int]) -> dict[str, float]:
    """Route committed (outbox row written) to the row marked sent, in ms."""
    from orders.models import OutboxMessage

    ms = [
        (sent - created).total_seconds() * 1000
        for created, sent in OutboxMessage.objects.filter(
            placement__order_id__in=ids, msg_type="D", sent_at__isnull=False
        ).values_list("created_at", "sent_at")
        if sent is not None
    ]
    if not ms:
        return {}
    return {"median": round(statistics.median(ms), 2), "p99": round(_percentile(ms, 0.99), 2)}


def _route_tick(args: tuple[int, list[int], str]) -> float:
    """One paced route call (a trader routing a small list); returns when it committed."""
    from django.contrib.auth import get_user_model

    from orders.services.routing import orders_route

    trader_id, chunk, broker = args
    trader = get_user_model().objects.get(pk=trader_id)
    orders_route(user=trader, order_ids=chunk, broker_code=broker)
    return time.monotonic()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Cpu:
    """CPU seconds spent by the gateway (this process), the database backends of the benchmark
    database, the routing workers and the simulator between start() and figures()."""

    def __init__(self, pool: Any, simulator: Any) -> None:
        self.pool = pool
        self.simulator = simulator
        self.before: dict[str, Any] = {}

    def _backends(self) -> list[int]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return [r[0] for r in cursor.fetchall()]

    def _now(self) -> dict[str, Any]:
        workers = [p.pid for p in getattr(self.pool, "_pool", [])]
        return {
            "gateway": time.process_time(),
            "db": {pid: _proc_cpu(pid) for pid in self._backends()},
            "routing_workers": sum(_proc_cpu(pid) for pid in workers),
            "simulator": _proc_cpu(self.simulator.pid),
        }

    def start(self) -> None:
        """Remember the counters now."""
        self.before = self._now()

    def figures(self, seconds: float) -> dict[str, Any]:
        """CPU seconds since start(), and the load average of the machine."""
        now = self._now()
        db = sum(v - self.before["db"].get(pid, 0.0) for pid, v in now["db"].items())
        cpu = {
            "gateway_s": round(now["gateway"] - self.before["gateway"], 2),
            "db_backends_s": round(db, 2),
            "routing_workers_s": round(now["routing_workers"] - self.before["routing_workers"], 2),
            "simulator_s": round(now["simulator"] - self.before["simulator"], 2),
            "wall_s": round(seconds, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        return cpu


class _Collections:
    """Pauses of Python's cyclic garbage collector in this (gateway) process, from gc.callbacks:
    a collection stops every thread, so one inside a fill's apply is part of its latency."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pauses.append(time.perf_counter() - self._started)

    def reset(self) -> None:
        """Forget the pauses seen so far."""
        self.pauses.clear()

    def figures(self) -> dict[str, Any]:
        """How many collections ran since reset(), their total and longest pause (ms)."""
        pauses = list(self.pauses)
        return {
            "collections": len(pauses),
            "total_ms": round(sum(pauses) * 1000, 1),
            "max_ms": round(max(pauses, default=0.0) * 1000, 2),
        }


_collections: _Collections | None = None


class _Statements:
    """Statements this (gateway) process's threads send (psycopg's Cursor.execute, which
    Django's cursors and Connection.execute go through), the main thread's polling left out:
    a figure per order that does not move with the machine's load."""

    def __init__(self) -> None:
        import psycopg

        self.count = 0
        self._lock = threading.Lock()
        original = psycopg.Cursor.execute
        main = threading.main_thread()
        counter = self

        def execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not main:
                with counter._lock:
                    counter.count += 1
            return original(cursor, *args, **kwargs)

        psycopg.Cursor.execute = execute  # type: ignore[method-assign]

    def reset(self) -> None:
        with self._lock:
            self.count = 0


_statements: _Statements | None = None


def _per_order(orders: int) -> float | None:
    """Statements sent by the gateway process since the last reset, per order."""
    return round(_statements.count / orders, 2) if _statements is not None and orders else None


def _reset_samples(handler: Any) -> None:
    if _collections is not None:
        _collections.reset()
    if _statements is not None:
        _statements.reset()
    handler.fill_latencies.clear()
    getattr(handler, "wire_latencies", []).clear()
    for values in getattr(handler, "stage_latencies", {}).values():
        values.clear()


def _latency(handler: Any) -> dict[str, Any]:
    """Fill received (QuickFIX callback) to committed, ms, and where inbound reports wait."""
    latencies = [x * 1000 for x in handler.fill_latencies]
    wire = [x * 1000 for x in getattr(handler, "wire_latencies", [])]
    return {
        "fill_to_commit_ms_median": round(statistics.median(latencies), 2) if latencies else None,
        "fill_to_commit_ms_p99": round(_percentile(latencies, 0.99), 2) if latencies else None,
        "fills_measured": len(latencies),
        # from the venue's SendingTime (1 ms resolution): includes socket-buffer waits
        "venue_sent_to_commit_ms_median": round(statistics.median(wire), 2) if wire else None,
        "venue_sent_to_commit_ms_p99": round(_percentile(wire, 0.99), 2) if wire else None,
        # every inbound report (acks and fills): raw message stored on QuickFIX's thread,
        # waiting for its applier, applied (service call to commit)
        "inbound_stage_ms": _stages(handler),
        "gc_pauses": _collections.figures() if _collections is not None else None,
    }


def _paced(
    world: dict[str, Any], pool: Any, runner: Any, cpu: _Cpu, rate: float, seconds: float
) -> dict[str, Any]:
    """Route `rate` orders a second for `seconds`, open loop; fill-to-commit at that load."""

    count = max(1, int(rate * seconds))
    ids = _orders(world, count)
    codes = [c for c, _ in BROKERS]
    tick = 0.05
    runner.handler.wait_idle(60)
    _reset_samples(runner.handler)
    cpu.start()
    start = time.monotonic()
    calls = []
    sent = 0
    k = 0
    while sent < count:
        due = start + k * tick
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        upto = min(count, round((k + 1) * tick * rate))
        if upto > sent:
            chunk = ids[sent:upto]
            args = (world["trader"].pk, chunk, codes[k % len(codes)])
            calls.append((due, pool.apply_async(_route_tick, (args,))))
            sent = upto
        k += 1
    lags = [(call.get(timeout=300) - due) * 1000 for due, call in calls]
    offered_s = time.monotonic() - start
    done = _wait(lambda: _count(ids, "filled") == count, 300)
    elapsed = time.monotonic() - start
    runner.handler.wait_idle(60)
    figures = {
        "offered_orders_per_s": rate,
        "orders": count,
        "completed": done,
        "offered_over_s": round(offered_s, 2),
        "all_filled_after_s": round(elapsed, 2),
        "completed_orders_per_s": round(count / elapsed, 1),
        # a route call's commit after its scheduled time: the routing workers keeping up
        "route_call_lag_ms_median": round(statistics.median(lags), 1),
        "route_call_lag_ms_p99": round(_percentile(lags, 0.99), 1),
        **_latency(runner.handler),
        "gateway_statements_per_order": _per_order(count),
        "cpu": cpu.figures(elapsed),
    }
    return figures


def run(
    quick: bool = False,
    route_batch: int = 20,
    port: int = 0,
    paced: tuple[float, ...] = (100.0, 200.0),
    paced_seconds: float | None = None,
    kill_n: int = 1_000,
    orders_n: int | None = None,
    appliers: int = 4,
    apply_batch: int = 16,
) -> dict[str, Any]:
    """Route, fill and kill; returns the figures.

    route_batch: orders per routing call of the burst (`orders_route` of a list, as a trader
    routes a basket); 1 routes each order with its own `order_route` call (one transaction
    each). paced: open-loop order rates measured one after the other, `paced_seconds` each.
    """
    _setup_django()
    from orders.fix.django_handler import GatewayRunner, session_rows
    from orders.models import OutboxMessage
    from orders.services.routing import kill_switch_engage

    orders_n = orders_n or (400 if quick else 2_000)
    paced_seconds = paced_seconds or (5.0 if quick else 15.0)
    port = port or _free_port()
    world = _world(port)
    tmp = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    prices_file = tmp / "prices.json"
    prices_file.write_text(json.dumps(world["prices"]))
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orders.fix.simulator",
            "--port",
            str(port),
            "--store-dir",
            str(tmp / "sim"),
            "--prices",
            str(prices_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    runner = None
    pool = None
    try:
        assert simulator.stdout is not None
        simulator.stdout.readline()  # "venue simulator listening on ..."
        sys.setswitchinterval(0.0005)  # as `manage.py run_fix_gateway` sets it
        runner = GatewayRunner(
            session_rows(store_dir=str(tmp / "gw"), reconnect_interval=1),
            sweep_interval=0.2,
            background_events=True,
            appliers=appliers,
            apply_batch=apply_batch,
        )
        runner.start()
        if not runner.wait_logged_on(timeout=20):
            raise RuntimeError("gateway did not log on")
        # warm-up (imports, calendars, prepared plans)
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(
            ROUTING_WORKERS, initializer=_worker_init, initargs=(os.environ["DATABASE_URL"],)
        )
        cpu = _Cpu(pool, simulator)
        warm = _orders(world, 20)
        _route_all(world, warm, pool, ROUTING_WORKERS, route_batch)
        _wait(lambda: _count(warm, "filled") == 20, 60)
        runner.handler.wait_idle(60)
        # As `manage.py run_fix_gateway` does once Django and the sessions are loaded (there
        # before the runner starts; here after the warm-up, which also loaded the services):
        # long-lived objects out of every later collection.
        gc.freeze()
        global _collections, _statements
        _collections = _Collections()
        _statements = _Statements()
        _reset_samples(runner.handler)

        # burst: every order at once
        ids = _orders(world, orders_n)
        print("bench_routing: burst starts", file=sys.stderr, flush=True)  # for profilers
        cpu.start()
        start = time.perf_counter()
        _route_all(world, ids, pool, ROUTING_WORKERS, route_batch)
        routed = time.perf_counter() - start
        done = _wait(lambda: _count(ids, "filled") == orders_n, 300)
        elapsed = time.perf_counter() - start
        filled = _count(ids, "filled")
        burst = {
            "orders": orders_n,
            "route_batch": route_batch,
            "filled": filled,
            "completed": done,
            "route_calls_per_s": round(orders_n / routed, 1),
            "orders_routed_and_filled_per_s": round(filled / elapsed, 1),
            **_latency(runner.handler),
            "gateway_statements_per_order": _per_order(orders_n),
            "outbox_written_to_sent_ms": _outbox_delays(ids),
            "cpu": cpu.figures(elapsed),
        }

        paced_figures = [_paced(world, pool, runner, cpu, rate, paced_seconds) for rate in paced]

        # kill switch: resting limit orders far below the market, all working, then one switch
        resting = _orders(world, kill_n, order_type="limit", limit_price=Decimal("1"))
        _route_all(world, resting, pool, ROUTING_WORKERS, route_batch)
        _wait(lambda: _count(resting, "working") == kill_n, 300)
        runner.handler.wait_idle(60)
        _reset_samples(runner.handler)
        cpu.start()
        t0 = time.perf_counter()
        result = kill_switch_engage(user=world["trader"], scope="firm", target="", reason="bench")
        engaged = time.perf_counter() - t0
        _wait(
            lambda: OutboxMessage.objects.filter(msg_type="F", status="sent").count() >= kill_n,
            60,
        )
        cancels_out = time.perf_counter() - t0
        _wait(lambda: _count(resting, "canceled") == kill_n, 60)
        all_canceled = time.perf_counter() - t0
        kill = {
            "orders": kill_n,
            "cancel_requests": result.cancel_requests,
            "engage_call_s": round(engaged, 3),
            "cancels_out_s": round(cancels_out, 3),
            "all_canceled_s": round(all_canceled, 3),
            "inbound_stage_ms": _stages(runner.handler),
            "cpu": cpu.figures(all_canceled),
        }
        pool.close()
        pool.join()
        pool = None
        sustained = [p for p in paced_figures if p["completed"]]
        figures: dict[str, Any] = {
            "gateway": {"appliers": appliers, "apply_batch": apply_batch},
            "burst": burst,
            "paced": paced_figures,
            "kill_switch": kill,
            "targets": {
                "orders_per_s": TARGET_RATE,
                "paced_p99_ms": TARGET_P99_MS,
                "kill_orders": 1_000,
                "kill_cancels_out_s": TARGET_KILL_S,
            },
        }
        at_target = [p for p in sustained if p["offered_orders_per_s"] >= TARGET_RATE]
        figures["meets_targets"] = bool(
            burst["orders_routed_and_filled_per_s"] >= TARGET_RATE
            and at_target
            and all(
                (p["fill_to_commit_ms_p99"] or 1e9) <= TARGET_P99_MS
                and p["completed_orders_per_s"] >= 0.95 * p["offered_orders_per_s"]
                for p in at_target
            )
            and kill_n >= 1_000
            and cancels_out <= TARGET_KILL_S
        )
        return figures
    finally:
        if pool is not None:
            pool.terminate()
        if runner is not None:
            runner.stop()
        from benchmarks.web import stop_process

        stop_process(simulator)


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--route-batch",
        type=int,
        default=20,
        help="orders per routing call (orders_route); 1 = one order_route call per order",
    )
    parser.add_argument("--orders", type=int, default=0, help="burst size (default 400/2,000)")
    parser.add_argument(
        "--paced",
        default="100,200",
        help="open-loop order rates per second, comma-separated ('' for none)",
    )
    parser.add_argument("--paced-seconds", type=float, default=0.0, help="default 5/15")
    parser.add_argument(
        "--kill", type=int, default=1_000, help="open orders the kill switch cancels"
    )
    parser.add_argument("--appliers", type=int, default=4, help="gateway applier threads")
    parser.add_argument(
        "--apply-batch", type=int, default=16, help="reports an applier applies per transaction"
    )
    parser.add_argument("--port", type=int, default=0, help="simulator port (default: free)")
    args = parser.parse_args()
    rates = tuple(float(r) for r in args.paced.split(",") if r.strip())
    figures = run(
        quick=args.quick,
        route_batch=args.route_batch,
        port=args.port,
        paced=rates,
        paced_seconds=args.paced_seconds or None,
        kill_n=args.kill,
        orders_n=args.orders or None,
        appliers=args.appliers,
        apply_batch=args.apply_batch,
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
