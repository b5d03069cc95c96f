"""Settlement through the database: time and peak RSS of settlement_run for N allocations.

Unlike bench_settlement.py (the writers alone), this measures the whole service: the streaming
query (``values_list`` tuples through ``.iterator(chunk_size=...)``, a server-side cursor, no
model instances), netting per order, settlement dates on the real XNYS calendar, the writer,
the checksum, the atomic publish and the records.

It builds its own database (default ``oms_settle_bench``, re-created, dropped at the end unless
``--keep``), migrates it, and loads N orders and N allocations (one custodian, 500 accounts,
2,000 instruments, one execution per 100 allocations) with PostgreSQL COPY. Each measurement then runs in a fresh
interpreter so that its peak RSS (getrusage ru_maxrss) is its own:

1. first run, CSV custodian -> v1 written;
2. re-run, nothing changed -> "unchanged" (the idempotent end-of-day retry);
3. the custodian switches to MT541/MT543: v2 written and diffed line by line against v1.

Targets (issue): 100,000 allocations <= 10 s, 1,000,000 <= 120 s, memory flat (<= 300 MB).
Wall time depends on what else the machine runs (PostgreSQL shares the cores), so the Python
process's own CPU time and the load average are printed too.

    .venv/bin/python benchmarks/bench_settlement_db.py            # 100,000
    .venv/bin/python benchmarks/bench_settlement_db.py --full     # 100,000 and 1,000,000
    .venv/bin/python benchmarks/bench_settlement_db.py --database-url postgres://.../mydb
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIME_TARGETS = {100_000: 10.0, 1_000_000: 120.0}
MEMORY_TARGET_MB = 300.0
TRADE_DATE = dt.date(2026, 11, 25)
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/oms_settle_bench"
ALLOCATIONS_PER_EXECUTION = 100
_SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
_CENT = Decimal("0.01")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _django(database_url: str, settlement_dir: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["SETTLEMENT_DIR"] = settlement_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
    import django

    django.setup()


def _recreate_database(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _copy(cursor: Any, model: Any, rows: Any) -> int:
    """COPY dicts into model's table; fields not given take their Python default."""
    from django.db import models
    from django.utils import timezone
    from psycopg.types.json import Jsonb

    now = timezone.now()
    fields = [f for f in model._meta.concrete_fields if not f.primary_key or f.name == "id"]
    columns = ", ".join(f'"{f.column}"' for f in fields)
    count = 0
    with cursor.copy(f'COPY "{model._meta.db_table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            values = []
            for f in fields:
                if f.attname in row:
                    value = row[f.attname]
                elif f.name in row:
                    value = row[f.name]
                elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                    value = now
                else:
                    value = f.get_default()
                if isinstance(f, models.JSONField) and value is not None:
                    value = Jsonb(value)
                values.append(value)
            copy.write_row(values)
            count += 1
    return count


def load(size: int, database_url: str, settlement_dir: str) -> dict[str, Any]:
    """Create the database, migrate it, COPY size orders and allocations; return timings."""
    started = time.perf_counter()
    _recreate_database(database_url)
    _django(database_url, settlement_dir)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    from allocations.models import Account, Allocation, Custodian, Desk
    from orders.models import Broker, Execution, Instrument, Issuer, Order

    call_command("migrate", verbosity=0)
    migrated = time.perf_counter()
    with transaction.atomic():
        user = get_user_model().objects.create(username="bench")
        custodian = Custodian.objects.create(
            code="BNY", name="BNY Mellon", bic="IRVTUS3N", settlement_format="csv"
        )
        desk = Desk.objects.create(code="EQ", name="Equities")
        accounts = Account.objects.bulk_create(
            Account(
                code=f"ACC-{k:04d}",
                name=f"Fund {k}",
                client="Client",
                custodian=custodian,
                custodian_account=f"BNY-{70000 + k}",
                desk=desk,
            )
            for k in range(500)
        )
        issuer = Issuer.objects.create(code="ISS", name="Issuer", country="US")
        instruments = Instrument.objects.bulk_create(
            Instrument(
                symbol=f"SYM{k}",
                isin=f"US{k:09d}0",
                name=f"Instrument {k}",
                asset_class="equity",
                currency="USD",
                issuer=issuer,
                sector="Technology",
                country="US",
                settlement_cycle=1,
                calendar_code="XNYS",
            )
            for k in range(2000)
        )
        brokers = Broker.objects.bulk_create(
            Broker(code=code, name=code, bic=bic, rank=rank)
            for rank, (code, bic) in enumerate(
                (("GS", "GOLDUS33"), ("MS", "MSNYUS33"), ("JPM", "CHASUS33"))
            )
        )
    account_ids = [a.pk for a in accounts]
    instrument_ids = [i.pk for i in instruments]
    broker_ids = [b.pk for b in brokers]
    prices = [Decimal(10 + k % 490) + Decimal(k % 100) / 100 for k in range(997)]
    executions = (size + ALLOCATIONS_PER_EXECUTION - 1) // ALLOCATIONS_PER_EXECUTION
    with transaction.atomic(), connection.cursor() as wrapper:
        cursor = wrapper.cursor
        _copy(
            cursor,
            Execution,
            (
                {
                    "id": e + 1,
                    "session_key": "FIX.4.4:OMS->SIM",
                    "exec_id": f"E{e + 1}",
                    "exec_type": "trade",
                    "trade_date": TRADE_DATE,
                    "broker_id": broker_ids[e % 3],
                }
                for e in range(executions)
            ),
        )
        _copy(
            cursor,
            Order,
            (
                {
                    "id": i + 1,
                    "account_id": account_ids[i % 500],
                    "instrument_id": instrument_ids[i % 2000],
                    "side": _SIDES[i % 4],
                    "quantity": Decimal(1 + i % 1000),
                    "order_type": "market",
                    "status": "filled",
                    "cum_qty": Decimal(1 + i % 1000),
                    "created_by_id": user.pk,
                }
                for i in range(size)
            ),
        )

        def allocations():
            for i in range(size):
                quantity = Decimal(1 + i % 1000)
                price = prices[i % 997]
                gross = (quantity * price).quantize(_CENT)
                commission = (gross * Decimal("0.0005")).quantize(_CENT)
                fees = Decimal("0.12")
                buy = _SIDES[i % 4] in ("buy", "buy_to_cover")
                yield {
                    "id": i + 1,
                    "execution_id": i // ALLOCATIONS_PER_EXECUTION + 1,
                    "order_id": i + 1,
                    "account_id": account_ids[i % 500],
                    "instrument_id": instrument_ids[i % 2000],
                    "broker_id": broker_ids[(i // ALLOCATIONS_PER_EXECUTION) % 3],
                    "side": _SIDES[i % 4],
                    "kind": "fill",
                    "quantity": quantity,
                    "cum_quantity": quantity,
                    "price": price,
                    "gross": gross,
                    "commission": commission,
                    "fees": fees,
                    "net": gross + commission + fees if buy else gross - commission - fees,
                    "currency": "USD",
                    "trade_date": TRADE_DATE,
                    "settlement_date": dt.date(2026, 11, 27),
                    "method": "pro_rata",
                }

        _copy(cursor, Allocation, allocations())
        for model in (Execution, Order, Allocation):
            table = model._meta.db_table
            wrapper.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {
        "migrate_seconds": round(migrated - started, 1),
        "load_seconds": round(time.perf_counter() - migrated, 1),
    }


def measure(database_url: str, settlement_dir: str, settlement_format: str) -> dict[str, Any]:
    """Run the trade date once in this (fresh) process; return seconds, outcome, peak RSS."""
    _django(database_url, settlement_dir)
    from allocations.models import Custodian
    from settlement.services import settlement_run

    Custodian.objects.filter(code="BNY").update(settlement_format=settlement_format)
    rss_before = _peak_rss_mb()
    cpu_before = os.times()
    started = time.perf_counter()
    run = settlement_run(trade_date=TRADE_DATE)
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    outcome = run.summary["custodians"][0]
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "outcome": outcome["outcome"],
        "lines": outcome.get("line_count"),
        "bytes": run.files.first().size_bytes if run.files.exists() else None,
        "error": outcome.get("error"),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_mb": round(rss_before, 1),
    }


def _in_fresh_process(fn: Any, *args: Any) -> Any:
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def run(
    sizes: Sequence[int] = (100_000,),
    database_url: str | None = None,
    quick: bool = False,
    keep: bool = False,
) -> dict[str, dict[str, Any]]:
    """Load and measure each size (100,000 by default; quick is the same); print and return."""
    database_url = database_url or os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    results: dict[str, dict[str, Any]] = {}
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    for size in sizes:
        with tempfile.TemporaryDirectory() as directory:
            loaded = _in_fresh_process(load, size, database_url, directory)
            print(
                f"settlement-db {size:>9,} allocations loaded with COPY in "
                f"{loaded['load_seconds']:.1f} s (migrate {loaded['migrate_seconds']:.1f} s)"
            )
            steps = {
                "csv first run": _in_fresh_process(measure, database_url, directory, "csv"),
                "csv re-run": _in_fresh_process(measure, database_url, directory, "csv"),
                "mt54x v2 (diffed)": _in_fresh_process(measure, database_url, directory, "mt54x"),
            }
        target = TIME_TARGETS.get(size)
        ok = True
        for label, f in steps.items():
            within = (target is None or f["seconds"] <= target) and (
                f["peak_rss_mb"] <= MEMORY_TARGET_MB
            )
            ok = ok and within and f["error"] is None
            size_text = f", {f['bytes'] / 1e6:.1f} MB file" if f["bytes"] else ""
            print(
                f"settlement-db {size:>9,} {label:<17}: {f['seconds']:>7.2f} s "
                f"(Python CPU {f['cpu_seconds']:.2f} s), "
                f"{f['outcome']}, {f['lines']:,} lines{size_text}, "
                f"peak RSS {f['peak_rss_mb']:.0f} MB (at start {f['rss_before_mb']:.0f} MB)"
                f"{'' if within else '  OVER TARGET'}"
            )
        limit = f"<= {target:.0f} s each, " if target else ""
        print(
            f"settlement-db {size:>9,} target {limit}<= {MEMORY_TARGET_MB:.0f} MB: "
            f"{'OK' if ok else 'OVER TARGET'}"
        )
        results[str(size)] = {"load": loaded, **steps, "within_target": ok}
    if not keep:
        _drop_database(database_url)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1,000,000 allocations")
    parser.add_argument("--size", type=int, action="append", help="explicit size(s)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a database this benchmark may drop and re-create",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    sizes = args.size or ([100_000, 1_000_000] if args.full else [100_000])
    results = run(sizes, args.database_url, keep=args.keep)
    return 0 if all(r["within_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
