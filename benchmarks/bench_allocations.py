"""Benchmark of fills through the database: allocation, positions, cash, audit, one transaction.

Each figure is given for two paths: ``fill_allocate`` (the allocation layer alone: an Execution
row inserted, then ``allocations.services.fill_allocate``) and ``execution_apply`` (the service
the FIX gateway calls for an ExecutionReport: ClOrdID look-up, locks, idempotent insert on
(session, ExecID), allocation, order/placement/block state, audit, blotter events after commit).

* ``one_fill_1000_accounts``: one fill of a block of 1,000 orders (each fill is 2.5% of the block
  at a new price, so it re-prices and tops up every account: about 1,000 allocation rows,
  positions, cash balances and orders, and one audit event), median of several fills, and the
  SQL statements it sent; target at most 50 ms. The blotter events a fill queues are sent after
  its commit by the sender's thread, outside the timed span: each sample waits for them before
  the next one starts (they would hold the interpreter lock against it), and their CPU is given.
* ``end_to_end``: fills/s applied by several threads of one process over many small blocks
  (target at least 500 fills/s), statements per fill, and the same with every thread on one
  block (the hot-row case: those serialise on the block's row lock). Given for the two paths
  above one report at a time, and for ``executions_apply`` on batches of ``BATCH`` reports
  (one transaction per batch, as a gateway applier forms them from its queue).

Each figure also gives CPU per fill: the Python of the applying threads (``time.thread_time``)
and of the PostgreSQL backends serving them (``/proc/<pid>/schedstat``), which hold on a busy
shared machine where wall-clock times do not. The threads prepare their repeated statements as
the gateway's appliers do (``DB_PREPARE_THRESHOLD``); ``--no-prepare`` turns that off.
``--no-pipeline`` applies the 1,000-account fills without psycopg's pipeline mode (for A/B runs:
``orders.services.executions.PIPELINE_MIN_ORDERS`` and ``allocations.services.PIPELINE_MIN_ORDERS``).

Uses its own database (``<name>_bench_alloc`` for DATABASE_URL's ``<name>``, ``oms_bench_alloc``
by default, on the same server; created and migrated if missing, emptied on every run). Run:
``.venv/bin/python -m benchmarks.bench_allocations [--quick]`` or through ``run_all``.
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
SINGLE_FILL_SAMPLES = 16
THREADS = 4
SMALL_BLOCKS = 40
ORDERS_PER_SMALL_BLOCK = 5
FILLS_TOTAL = 2_000
HOT_FILLS = 600
TARGET_MS = 50.0
TARGET_RATE = 500.0
BATCH = 50  # reports per executions_apply call (a gateway applier's batch)
SESSION_KEY = "FIX.4.4:OMS->BENCH"


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


PREPARE = True  # as the gateway's threads (orders.fix.django_handler); --no-prepare: off
PIPELINE = True  # big fills in pipeline mode (orders.services.executions); --no-pipeline: off
ANALYZE = True  # statistics refreshed once the rows exist (see _analyze); --no-analyze: off


def _connect() -> int:
    """This thread's connection, preparing repeated statements as a gateway thread's does;
    the pid of its PostgreSQL backend."""
    from django.db import connection

    from orders.fix.django_handler import prepare_connection

    connection.ensure_connection()
    if PREPARE:
        prepare_connection(connection.connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _backend_cpu_ms(pid: int) -> float:
    """CPU time a PostgreSQL backend has used so far (its schedstat), in ms."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


_exec_seq = iter(range(1, 10**9))
_exec_lock = threading.Lock()
_statements = [0]


def _next_exec_id() -> str:
    with _exec_lock:
        return f"X{next(_exec_seq)}"


def _apply_fill(placement: Any, qty: Decimal, px: Decimal) -> int:
    """The allocation layer alone: insert the Execution row, then fill_allocate (one transaction)."""
    import datetime as dt

    from django.db import transaction

    from allocations.services import fill_allocate
    from orders.models import Execution

    with transaction.atomic():
        execution = Execution.objects.create(
            session_key="BENCH",
            exec_id=_next_exec_id(),
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


def _report(placement: Any, qty: Decimal, px: Decimal) -> Any:
    """A parsed ExecutionReport (35=8) of a fill of the placement, as the gateway hands it on."""
    import datetime as dt

    from orders.fix.messages import ExecReport, FixHeader

    return ExecReport(
        header=FixHeader(begin_string="FIX.4.4", msg_type="8"),
        exec_id=_next_exec_id(),
        exec_type="F",
        ord_status="1",
        order_id="BENCH-1",
        cl_ord_id=placement.cl_ord_id,
        orig_cl_ord_id=None,
        symbol=None,
        side="1",
        order_qty=placement.quantity,
        price=None,
        last_qty=qty,
        last_px=px,
        cum_qty=qty,
        avg_px=px,
        leaves_qty=Decimal(0),
        text=None,
        transact_time=dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC),
        poss_dup=False,
    )


def _apply_report(placement: Any, qty: Decimal, px: Decimal) -> int:
    """The whole service the FIX gateway calls: execution_apply of a parsed ExecutionReport
    (ClOrdID look-up, locks, idempotent insert, allocation, positions, cash, order and
    placement state, audit, blotter events queued for after commit)."""
    from orders.services.executions import execution_apply

    execution = execution_apply(session_key=SESSION_KEY, report=_report(placement, qty, px))
    assert execution is not None and execution.last_qty == qty
    return 1


def _apply_batch(fills: list[tuple[Any, Decimal, Decimal]]) -> int:
    """executions_apply of a batch of reports, one transaction, as a gateway applier forms it
    from its queue (reports of the placements of its partition, in arrival order)."""
    from orders.services.executions import executions_apply

    reports = [(_report(placement, qty, px), None) for placement, qty, px in fills]
    executions = executions_apply(session_key=SESSION_KEY, reports=reports)
    assert all(
        e is not None and e.last_qty == q for e, (_, q, _) in zip(executions, fills, strict=True)
    )
    return len(executions)


def _count_statements() -> Any:
    """Count every statement sent (Django's cursors and the services' raw psycopg cursors)."""
    import psycopg

    original = psycopg.Cursor.execute

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        _statements[0] += 1
        return original(self, *args, **kwargs)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    return original


PATHS = {"fill_allocate": _apply_fill, "execution_apply": _apply_report}


def _sender_thread_cpu_ms() -> float:
    """CPU time the blotter events' sender threads of this process have used so far, in ms."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("blotter") and thread.native_id is not None:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e6
    return total


def _sender_drain() -> None:
    """Wait until the blotter events queued by the last commit are sent.

    A block fill's events (one per order) go out after commit from the sender's thread; its
    Python would otherwise run while the next sample is timed and hold the interpreter lock
    against it (about 15-19 ms of CPU for 1,000 events)."""
    import asyncio

    from oms_site import realtime

    loop = realtime._loop_state.get("loop")
    if loop is None:
        return

    async def idle() -> None:
        # Batches are sent one after another under this lock, in the order they were queued:
        # once it is ours, every batch queued before has been sent.
        lock = realtime._batch_lock
        if lock is not None:
            await lock.acquire()
            lock.release()

    asyncio.run_coroutine_threadsafe(idle(), loop).result(timeout=30)


def _analyze() -> None:
    """Refresh the planner's statistics once the benchmark's rows exist, as autovacuum would on
    a production server (the one here may run with autovacuum off, and plans for tables the
    planner believes empty are not the plans a live book gets). `--no-analyze` skips it."""
    if not ANALYZE:
        return
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def bench_one_fill_1000_accounts(world: dict[str, Any], samples: int) -> dict[str, Any]:
    """Median wall time of one fill across a block of 1,000 orders, through each path.

    The paths alternate on blocks of the same shape; every fill is 2.5% of its block at a new
    price, so it re-prices and tops up every account (about 1,000 allocation rows, positions,
    cash balances and orders, and the audit event).
    """
    import random

    results: dict[str, Any] = {"accounts": ACCOUNTS, "target_ms": TARGET_MS}
    blocks = {}
    for name in PATHS:
        rng = random.Random(7)
        instrument = _instrument(world, f"BIG{name[:4].upper()}", Decimal(100))
        accounts = _accounts(world, f"BIG{name[:4]}", ACCOUNTS)
        lots = [rng.randint(10, 60) for _ in accounts]
        placement = _block(world, instrument, accounts, lots)
        step = Decimal(100) * (sum(lots) // 40)  # each fill is 2.5% of the block
        PATHS[name](placement, step, Decimal("10.00"))  # warm-up: positions, cash, statuses
        blocks[name] = (placement, step)
    _analyze()
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    python_ms: dict[str, list[float]] = {name: [] for name in PATHS}
    postgres_ms: dict[str, list[float]] = {name: [] for name in PATHS}
    statements = dict.fromkeys(PATHS, 0)
    sender_ms: dict[str, list[float]] = {name: [] for name in PATHS}
    backend = _connect()
    for i in range(samples):
        px = Decimal("10.00") + Decimal(i % 9 + 1) / 100  # a new price re-prices every account
        for name, apply in PATHS.items():
            placement, step = blocks[name]
            before = _statements[0]
            pg_before, py_before = _backend_cpu_ms(backend), time.thread_time()
            start = time.perf_counter()
            apply(placement, step, px)
            times[name].append((time.perf_counter() - start) * 1000)
            python_ms[name].append((time.thread_time() - py_before) * 1000)
            postgres_ms[name].append(_backend_cpu_ms(backend) - pg_before)
            statements[name] += _statements[0] - before
            # The events go out after commit, not timed: wait for them (and say what they cost)
            # so that the next sample does not share the interpreter with their sender.
            sent_before = _sender_thread_cpu_ms()
            _sender_drain()
            sender_ms[name].append(_sender_thread_cpu_ms() - sent_before)
    for name, samples_ms in times.items():
        samples_ms.sort()
        results[name] = {
            "median_ms": round(statistics.median(samples_ms), 1),
            "p90_ms": round(samples_ms[int(0.9 * (len(samples_ms) - 1))], 1),
            "min_ms": round(samples_ms[0], 1),
            "python_cpu_median_ms": round(statistics.median(python_ms[name]), 1),
            "postgres_cpu_median_ms": round(statistics.median(postgres_ms[name]), 1),
            "statements_per_fill": round(statements[name] / samples, 1),
            "events_sender_cpu_median_ms": round(statistics.median(sender_ms[name]), 1),
        }
    return results


def _run_threads(
    apply: Any, jobs: list[list[tuple[Any, Decimal, Decimal]]], batch: int, cpu: list[float]
) -> float:
    """Each job on its own thread: its fills one by one (`batch` 1) or in lists of `batch`.

    Adds to `cpu` the threads' Python CPU ms and their backends' PostgreSQL CPU ms."""
    from django.db import connection

    barrier = threading.Barrier(len(jobs) + 1)
    errors: list[BaseException] = []
    cpu_lock = threading.Lock()

    def worker(job: list[tuple[Any, Decimal, Decimal]]) -> None:
        try:
            barrier.wait()
            backend = _connect()  # as before, the connection opens inside the timed span
            pg_before, py_before = _backend_cpu_ms(backend), time.thread_time()
            if batch == 1:
                for placement, qty, px in job:
                    apply(placement, qty, px)
            else:
                for i in range(0, len(job), batch):
                    apply(job[i : i + batch])
            py_ms = (time.thread_time() - py_before) * 1000
            pg_ms = _backend_cpu_ms(backend) - pg_before
            with cpu_lock:
                cpu[0] += py_ms
                cpu[1] += pg_ms
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


# The fills/s paths: one by one through each layer, and the gateway's batches.
FLOW_PATHS = {
    "fill_allocate": (_apply_fill, 1),
    "execution_apply": (_apply_report, 1),
    f"executions_apply (batches of {BATCH})": (_apply_batch, BATCH),
}


def bench_fills_per_second(world: dict[str, Any], fills_total: int, hot_fills: int) -> dict:
    """Fills/s by THREADS threads of one process, over many small blocks and one hot block.

    Many blocks: each thread owns a set of blocks (the way a worker queue keyed by block
    would). One hot block: every thread on it, so the fills serialise on the block's row lock.
    Threads share one interpreter lock, so this is bounded by one core's Python work per fill.
    """
    results: dict[str, Any] = {
        "threads": THREADS,
        "orders_per_block": ORDERS_PER_SMALL_BLOCK,
        "fills": fills_total,
        "hot_block_fills": hot_fills,
        "target_fills_per_s": TARGET_RATE,
    }
    for n, (name, (apply, batch)) in enumerate(FLOW_PATHS.items()):
        tag = f"{n}{name[:4]}"
        instrument = _instrument(world, f"FLOW{tag.upper()}", Decimal(1))
        blocks = []
        for b in range(SMALL_BLOCKS):
            accounts = _accounts(world, f"F{tag}{b:02d}-", ORDERS_PER_SMALL_BLOCK)
            lots = [1000 * (i + 1) for i in range(ORDERS_PER_SMALL_BLOCK)]
            blocks.append(_block(world, instrument, accounts, lots))
        per_block = fills_total // SMALL_BLOCKS
        fills = [
            (blocks[b], Decimal(10 + (i % 5)), Decimal("10.00") + Decimal(i % 11) / 100)
            for i in range(per_block)
            for b in range(SMALL_BLOCKS)
        ]
        jobs = [[f for f in fills if f[0].block_id % THREADS == t] for t in range(THREADS)]
        _analyze()
        before = _statements[0]
        cpu = [0.0, 0.0]
        elapsed = _run_threads(apply, jobs, batch, cpu)
        statements = (_statements[0] - before) / len(fills)

        hot_instrument = _instrument(world, f"HOT{tag.upper()}", Decimal(1))
        hot_accounts = _accounts(world, f"HOT{tag}", ORDERS_PER_SMALL_BLOCK)
        hot = _block(world, hot_instrument, hot_accounts, [10_000] * ORDERS_PER_SMALL_BLOCK)
        hot_jobs = [
            (hot, Decimal(10), Decimal("10.00") + Decimal(i % 7) / 100) for i in range(hot_fills)
        ]
        hot_elapsed = _run_threads(
            apply, [hot_jobs[t::THREADS] for t in range(THREADS)], batch, [0.0, 0.0]
        )
        results[name] = {
            "fills_per_s": round(len(fills) / elapsed, 1),
            "python_cpu_ms_per_fill": round(cpu[0] / len(fills), 2),
            "postgres_cpu_ms_per_fill": round(cpu[1] / len(fills), 2),
            "statements_per_fill": round(statements, 1),
            "hot_block_fills_per_s": round(hot_fills / hot_elapsed, 1),
        }
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """Set up the benchmark database, run both benchmarks and return the figures."""
    _setup_django()
    import datetime as dt

    from allocations import services as allocation_services
    from orders.services import executions

    if not PIPELINE:
        executions.PIPELINE_MIN_ORDERS = sys.maxsize
        allocation_services.PIPELINE_MIN_ORDERS = sys.maxsize

    from settlement.calendars import settlement_date

    settlement_date(dt.date(2026, 11, 20), cycle_days=1, calendar_code="XNYS")  # build once
    world = _world("1")
    original = _count_statements()
    load_before = os.getloadavg()[0]
    try:
        results = {
            "one_fill_1000_accounts": bench_one_fill_1000_accounts(
                world, SINGLE_FILL_SAMPLES // 2 if quick else SINGLE_FILL_SAMPLES
            ),
            "end_to_end": bench_fills_per_second(
                world,
                FILLS_TOTAL // 4 if quick else FILLS_TOTAL,
                HOT_FILLS // 3 if quick else HOT_FILLS,
            ),
        }
    finally:
        import psycopg

        psycopg.Cursor.execute = original  # type: ignore[method-assign]
    # Figures from a shared, busy machine are not comparable with a quiet one: say how busy.
    results["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    results["cpus"] = os.cpu_count()
    return results


if __name__ == "__main__":
    PREPARE = "--no-prepare" not in sys.argv
    PIPELINE = "--no-pipeline" not in sys.argv
    ANALYZE = "--no-analyze" not in sys.argv
    results = run(quick="--quick" in sys.argv)
    one, flow = results["one_fill_1000_accounts"], results["end_to_end"]
    for name in PATHS:
        fig = one[name]
        print(
            f"one fill across {one['accounts']} accounts via {name}: median {fig['median_ms']} "
            f"ms, p90 {fig['p90_ms']} ms, min {fig['min_ms']} ms, "
            f"{fig['statements_per_fill']} statements (target <= {TARGET_MS} ms); CPU median "
            f"{fig['python_cpu_median_ms']} ms Python, {fig['postgres_cpu_median_ms']} ms "
            f"PostgreSQL; blotter events sent after commit (not timed) "
            f"{fig['events_sender_cpu_median_ms']} ms CPU"
        )
    for name in FLOW_PATHS:
        fig = flow[name]
        print(
            f"fills end to end via {name}: {fig['fills_per_s']} fills/s ({flow['fills']} fills, "
            f"{flow['threads']} threads, blocks of {flow['orders_per_block']}, "
            f"{fig['statements_per_fill']} statements/fill) (target >= {TARGET_RATE}); "
            f"one hot block: {fig['hot_block_fills_per_s']} fills/s; CPU per fill "
            f"{fig['python_cpu_ms_per_fill']} ms Python, {fig['postgres_cpu_ms_per_fill']} ms "
            "PostgreSQL"
        )
    print(
        f"statements prepared as in the gateway: {'yes' if PREPARE else 'no'}; big fills in "
        f"pipeline mode: {'yes' if PIPELINE else 'no'}; statistics analyzed: "
        f"{'yes' if ANALYZE else 'no'}"
    )
    load = results["load_average_1min"]
    print(
        f"machine: {results['cpus']} CPUs, 1-min load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after (figures scale with it)"
    )
