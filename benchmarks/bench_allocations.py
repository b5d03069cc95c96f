"""Benchmark of allocation through the database (fill_allocate with positions, cash and audit).

Figures:
* ``one_fill_1000_accounts``: the time to allocate one fill of a block of 1,000 orders (each fill
  re-prices and tops up every account: about 1,000 allocation rows, positions, cash balances,
  orders and audit events), median of several fills; target at most 50 ms.
* ``fills_per_second``: fills applied end to end (Execution insert + fill_allocate + commit) by
  several threads over many small blocks; target at least 500 fills/s. Also the same with every
  thread on one block (the hot-row case: those serialise on the block's row lock).

Uses its own database (``<name>_bench_alloc`` for DATABASE_URL's ``<name>``, ``oms_bench_alloc``
by default, on the same server; created and migrated if missing, emptied on every run). Run: ``.venv/bin/python -m benchmarks.bench_allocations``.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

BENCH_SUFFIX = "_bench_alloc"
ACCOUNTS = 1_000
SINGLE_FILL_SAMPLES = 15
THREADS = 4
SMALL_BLOCKS = 40
ORDERS_PER_SMALL_BLOCK = 5
FILLS_TOTAL = 2_000
HOT_FILLS = 600
TARGET_MS = 50.0
TARGET_RATE = 500.0


def _setup_django() -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/oms")
    server, name = base.split("?", 1)[0].rsplit("/", 1)
    # Named after the configured database (oms -> oms_bench_alloc), so that several checkouts
    # sharing one server do not empty each other's benchmark database.
    bench_db = f"{name or 'oms'}{BENCH_SUFFIX}"
    os.environ["DATABASE_URL"] = f"{server}/{bench_db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
    import psycopg

    admin_url = f"{server}/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [bench_db]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{bench_db}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def _world(tag: str) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from allocations.models import CommissionSchedule, Custodian, Desk
    from orders.models import Broker, Issuer

    user, _ = get_user_model().objects.get_or_create(username=f"bench-{tag}")
    custodian = Custodian.objects.create(code=f"C{tag}", name="Bench custodian", bic="BENCUS33XXX")
    desk = Desk.objects.create(code=f"D{tag}", name="Bench desk")
    issuer = Issuer.objects.create(code=f"I{tag}", name="Bench issuer", country="US")
    broker = Broker.objects.create(code=f"B{tag}", name="Bench broker")
    CommissionSchedule.objects.create(
        broker=broker, bps=Decimal(5), per_share=Decimal("0.005"), min_per_ticket=Decimal(1)
    )
    return {"user": user, "custodian": custodian, "desk": desk, "issuer": issuer, "broker": broker}


def _instrument(world: dict[str, Any], symbol: str, lot: Decimal) -> Any:
    from django.utils import timezone

    from orders.models import Instrument, ReferencePrice

    inst = Instrument.objects.create(
        symbol=symbol,
        name=symbol,
        asset_class="equity",
        currency="USD",
        lot_size=lot,
        issuer=world["issuer"],
        sector="Tech",
        country="US",
    )
    ReferencePrice.objects.create(
        instrument=inst,
        bid=Decimal("9.99"),
        ask=Decimal("10.01"),
        last=Decimal(10),
        as_of=timezone.now(),
    )
    return inst


def _accounts(world: dict[str, Any], prefix: str, n: int) -> list[Any]:
    from allocations.models import Account

    return Account.objects.bulk_create(
        [
            Account(
                code=f"{prefix}{i:05d}",
                name=f"Fund {i}",
                client="Bench",
                custodian=world["custodian"],
                custodian_account=f"CA{i}",
                desk=world["desk"],
            )
            for i in range(n)
        ]
    )


def _block(world: dict[str, Any], instrument: Any, accounts: list[Any], lots: list[int]) -> Any:
    from orders.models import Block, Order, Placement

    lot = instrument.lot_size
    total = sum(lot * n for n in lots)
    block = Block.objects.create(
        instrument=instrument,
        side="buy",
        order_type="market",
        quantity=total,
        status="routed",
        created_by=world["user"],
    )
    Order.objects.bulk_create(
        [
            Order(
                account=a,
                instrument=instrument,
                side="buy",
                quantity=lot * n,
                leaves_qty=lot * n,
                order_type="market",
                status="working",
                created_by=world["user"],
                block=block,
            )
            for a, n in zip(accounts, lots, strict=True)
        ]
    )
    return Placement.objects.create(
        block=block,
        broker=world["broker"],
        cl_ord_id=f"P{block.pk}",
        quantity=total,
        status="working",
    )


_exec_seq = iter(range(1, 10**9))
_exec_lock = threading.Lock()


def _apply_fill(placement: Any, qty: Decimal, px: Decimal) -> int:
    import datetime as dt

    from django.db import transaction

    from allocations.services import fill_allocate
    from orders.models import Execution

    with _exec_lock:
        n = next(_exec_seq)
    with transaction.atomic():
        execution = Execution.objects.create(
            session_key="BENCH",
            exec_id=f"X{n}",
            placement=placement,
            block_id=placement.block_id,
            broker_id=placement.broker_id,
            instrument_id=placement.block.instrument_id,
            side="buy",
            exec_type="trade",
            last_qty=qty,
            last_px=px,
            trade_date=dt.date(2026, 11, 20),
        )
        return len(fill_allocate(execution=execution))


def bench_one_fill_1000_accounts(world: dict[str, Any]) -> dict[str, Any]:
    """Median wall time of one fill across a block of 1,000 orders (Execution + allocation)."""
    import random

    rng = random.Random(7)
    instrument = _instrument(world, "BIG", Decimal(100))
    accounts = _accounts(world, "BIG", ACCOUNTS)
    lots = [rng.randint(10, 60) for _ in accounts]
    placement = _block(world, instrument, accounts, lots)
    total_lots = sum(lots)
    step = Decimal(100) * (total_lots // 40)  # each fill is 2.5% of the block
    _apply_fill(placement, step, Decimal("10.00"))  # warm-up: creates positions and cash
    samples, rows = [], []
    for i in range(SINGLE_FILL_SAMPLES):
        px = Decimal("10.00") + Decimal(i % 9 + 1) / 100  # a new price re-prices every account
        start = time.perf_counter()
        rows.append(_apply_fill(placement, step, px))
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "accounts": ACCOUNTS,
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 1),
        "min_ms": round(samples[0], 1),
        "rows_per_fill_median": statistics.median(rows),
        "target_ms": TARGET_MS,
    }


def _run_threads(jobs: list[list[tuple[Any, Decimal, Decimal]]]) -> float:
    from django.db import connection

    barrier = threading.Barrier(len(jobs) + 1)
    errors: list[BaseException] = []

    def worker(job: list[tuple[Any, Decimal, Decimal]]) -> None:
        try:
            barrier.wait()
            for placement, qty, px in job:
                _apply_fill(placement, qty, px)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(worker, job) for job in jobs]
        barrier.wait()
        start = time.perf_counter()
        for fut in futures:
            fut.result()
        elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def bench_fills_per_second(world: dict[str, Any]) -> dict[str, Any]:
    """Fills/s end to end by THREADS threads, over many small blocks and over one hot block."""
    instrument = _instrument(world, "FLOW", Decimal(1))
    blocks = []
    for b in range(SMALL_BLOCKS):
        accounts = _accounts(world, f"F{b:02d}-", ORDERS_PER_SMALL_BLOCK)
        lots = [1000 * (i + 1) for i in range(ORDERS_PER_SMALL_BLOCK)]
        blocks.append(_block(world, instrument, accounts, lots))
    per_block = FILLS_TOTAL // SMALL_BLOCKS
    fills = [
        (blocks[b], Decimal(10 + (i % 5)), Decimal("10.00") + Decimal(i % 11) / 100)
        for i in range(per_block)
        for b in range(SMALL_BLOCKS)
    ]
    # Each thread owns a set of blocks (the way a worker queue keyed by block would).
    jobs = [[f for f in fills if f[0].block_id % THREADS == t] for t in range(THREADS)]
    elapsed = _run_threads(jobs)

    hot_instrument = _instrument(world, "HOT", Decimal(1))
    hot_accounts = _accounts(world, "HOT", ORDERS_PER_SMALL_BLOCK)
    hot = _block(world, hot_instrument, hot_accounts, [10_000] * ORDERS_PER_SMALL_BLOCK)
    hot_fills = [
        (hot, Decimal(10), Decimal("10.00") + Decimal(i % 7) / 100) for i in range(HOT_FILLS)
    ]
    hot_elapsed = _run_threads([hot_fills[t::THREADS] for t in range(THREADS)])
    return {
        "threads": THREADS,
        "fills": len(fills),
        "orders_per_block": ORDERS_PER_SMALL_BLOCK,
        "fills_per_s": round(len(fills) / elapsed, 1),
        "hot_block_fills": HOT_FILLS,
        "hot_block_fills_per_s": round(HOT_FILLS / hot_elapsed, 1),
        "target_fills_per_s": TARGET_RATE,
    }


def run() -> dict[str, Any]:
    """Set up the benchmark database, run both benchmarks and return the figures."""
    _setup_django()
    import datetime as dt

    from settlement.calendars import settlement_date

    settlement_date(dt.date(2026, 11, 20), cycle_days=1, calendar_code="XNYS")  # build once
    world = _world("1")
    load_before = os.getloadavg()[0]
    results = {
        "one_fill_1000_accounts": bench_one_fill_1000_accounts(world),
        "end_to_end": bench_fills_per_second(world),
    }
    # Figures from a shared, busy machine are not comparable with a quiet one: say how busy.
    results["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    results["cpus"] = os.cpu_count()
    return results


if __name__ == "__main__":
    results = run()
    one, flow = results["one_fill_1000_accounts"], results["end_to_end"]
    print(
        f"allocate one fill across {one['accounts']} accounts (DB, fill_allocate): "
        f"median {one['median_ms']} ms, p90 {one['p90_ms']} ms, min {one['min_ms']} ms, "
        f"{one['rows_per_fill_median']} rows/fill (target <= {TARGET_MS} ms)"
    )
    print(
        f"fills end to end with allocation, positions, cash and audit: {flow['fills_per_s']} "
        f"fills/s ({flow['fills']} fills, {flow['threads']} threads, blocks of "
        f"{flow['orders_per_block']}) (target >= {TARGET_RATE}); one hot block: "
        f"{flow['hot_block_fills_per_s']} fills/s"
    )
    load = results["load_average_1min"]
    print(
        f"machine: {results['cpus']} CPUs, 1-min load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after (figures scale with it)"
    )
