"""Benchmark of routing end to end: service → outbox → gateway → simulator → execution_apply.

Orders are routed by `order_route` in two worker processes (as Celery routing workers), the
gateway (this process, the real `GatewayRunner` with QuickFIX) picks them from the outbox after
NOTIFY, the venue simulator (a separate process) acknowledges and fills each, and the gateway
applies every report with `execution_apply` (fill allocation, positions, cash, audit) in its
transaction. An order counts when its status is filled in the database.

Figures: orders routed and filled per second, and the median and p99 from fill received (the
gateway's QuickFIX callback) to fill committed. Also the kill switch: open resting orders are
canceled by one firm-wide switch; the time until every cancel request is on the wire.

Uses its own database (``oms_bench_routing`` on the server of DATABASE_URL; created, migrated,
flushed). Run: ``.venv/bin/python -m benchmarks.bench_routing [--quick]``.
Targets: >= 200 orders/s; p99 fill-to-commit <= 20 ms; 1,000 cancels out within 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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


def _route_chunk(args: tuple[int, list[int]]) -> int:
    from django.contrib.auth import get_user_model

    from orders.services.routing import order_route

    trader_id, chunk = args
    trader = get_user_model().objects.get(pk=trader_id)
    codes = [c for c, _ in BROKERS]
    for n, pk in enumerate(chunk):
        order_route(user=trader, order_id=pk, broker_code=codes[n % len(codes)])
    return len(chunk)


def _route_all(world: dict[str, Any], ids: list[int], pool: Any, workers: int) -> None:
    """Route in separate processes: the gateway process keeps its CPU for executions."""
    size = max(1, len(ids) // (workers * 4))
    chunks = [(world["trader"].pk, ids[i : i + size]) for i in range(0, len(ids), size)]
    sum(pool.map(_route_chunk, chunks))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)  # polling must not load the database being measured
    return False


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(quick: bool = False) -> dict[str, Any]:
    """Route, fill and kill; returns the figures."""
    _setup_django()
    from orders.fix.django_handler import GatewayRunner, session_rows
    from orders.models import Order, OutboxMessage
    from orders.services.routing import kill_switch_engage

    orders_n = 400 if quick else 2_000
    kill_n = 300 if quick else 1_000
    port = _free_port()
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
    try:
        assert simulator.stdout is not None
        simulator.stdout.readline()  # "venue simulator listening on ..."
        runner = GatewayRunner(
            session_rows(store_dir=str(tmp / "gw"), reconnect_interval=1),
            sweep_interval=0.2,
            background_events=True,
        )
        runner.start()
        if not runner.wait_logged_on(timeout=20):
            raise RuntimeError("gateway did not log on")
        # warm-up (imports, calendars, prepared plans)
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(
            ROUTING_WORKERS, initializer=_worker_init, initargs=(os.environ["DATABASE_URL"],)
        )
        warm = _orders(world, 20)
        _route_all(world, warm, pool, ROUTING_WORKERS)
        _wait(lambda: Order.objects.filter(pk__in=warm, status="filled").count() == 20, 30)
        runner.handler.fill_latencies.clear()

        ids = _orders(world, orders_n)
        start = time.perf_counter()
        _route_all(world, ids, pool, ROUTING_WORKERS)
        routed = time.perf_counter() - start
        done = _wait(
            lambda: Order.objects.filter(pk__in=ids, status="filled").count() == orders_n, 300
        )
        elapsed = time.perf_counter() - start
        latencies = [x * 1000 for x in runner.handler.fill_latencies]
        filled = Order.objects.filter(pk__in=ids, status="filled").count()

        # kill switch: resting limit orders far below the market, all working, then one switch
        resting = _orders(world, kill_n, order_type="limit", limit_price=Decimal("1"))
        _route_all(world, resting, pool, ROUTING_WORKERS)
        pool.close()
        _wait(lambda: Order.objects.filter(pk__in=resting, status="working").count() == kill_n, 300)
        t0 = time.perf_counter()
        result = kill_switch_engage(user=world["trader"], scope="firm", target="", reason="bench")
        engaged = time.perf_counter() - t0
        _wait(
            lambda: OutboxMessage.objects.filter(msg_type="F", status="sent").count() >= kill_n,
            60,
        )
        cancels_out = time.perf_counter() - t0
        _wait(lambda: Order.objects.filter(pk__in=resting, status="canceled").count() == kill_n, 60)
        all_canceled = time.perf_counter() - t0
        figures = {
            "orders": orders_n,
            "filled": filled,
            "completed": done,
            "route_calls_per_s": round(orders_n / routed, 1),
            "orders_routed_and_filled_per_s": round(filled / elapsed, 1),
            "fill_to_commit_ms_median": round(statistics.median(latencies), 2)
            if latencies
            else None,
            "fill_to_commit_ms_p99": round(_percentile(latencies, 0.99), 2) if latencies else None,
            "fills_measured": len(latencies),
            "kill_switch_orders": kill_n,
            "kill_switch_cancel_requests": result.cancel_requests,
            "kill_switch_engage_call_s": round(engaged, 3),
            "kill_switch_cancels_out_s": round(cancels_out, 3),
            "kill_switch_all_canceled_s": round(all_canceled, 3),
            "targets": {
                "orders_per_s": TARGET_RATE,
                "p99_ms": TARGET_P99_MS,
                "kill_cancels_out_s": TARGET_KILL_S,
            },
        }
        figures["meets_targets"] = bool(
            figures["orders_routed_and_filled_per_s"] >= TARGET_RATE
            and (figures["fill_to_commit_ms_p99"] or 1e9) <= TARGET_P99_MS
            and cancels_out <= TARGET_KILL_S
        )
        return figures
    finally:
        if runner is not None:
            runner.stop()
        simulator.terminate()
        try:
            simulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            simulator.kill()


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
