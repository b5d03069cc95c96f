"""Benchmark: pre-trade compliance of a 500-order basket against 20 active rules, end to end.

Four figures, each the median of several runs on a realistic book (2,000 instruments,
20 accounts x 400 positions, 3,000 open orders, 49 restricted entries):

- `check`: `compliance.services.compliance_check` alone on 500 inserted orders: lock, load the
  context (constant queries), evaluate, COPY 10,000 result rows (rolled back after each run);
- `check 1 order`: the same for one order of that account, as the single-order API path runs it;
- `service`: `orders.services.orders.orders_create_bulk` (validation, insert, compliance,
  status updates, audit) for the whole basket;
- `api`: `POST /api/v1/baskets/` with the JSON basket, in process (Django test client: the
  whole middleware, authentication, DRF and serialisation stack, no network).

It runs against its own throw-away database `bench_<DATABASE_URL's name>`, created and dropped
here. Targets (issue 4): engine <= 50 ms, end to end <= 250 ms median.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oms .venv/bin/python benchmarks/bench_compliance_e2e.py
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.bench_compliance_engine import RULE_SPECS  # noqa: E402

ORDERS = 500
RULES = 20
REPETITIONS = int(os.environ.get("BENCH_REPETITIONS", "7"))
SINGLE_REPETITIONS = 50
INSTRUMENTS = 2000
ACCOUNTS = 20
HOLDINGS_PER_ACCOUNT = 400
OPEN_ORDERS = 3000
SECTORS = ("Tech", "Energy", "Health", "Financials", "Utilities", "Materials", "Industrials")
D = Decimal


def _seed(rng: random.Random) -> dict[str, Any]:
    """Build the book with bulk inserts; returns what the runs need."""
    from allocations.models import (
        Account,
        AccountGroup,
        CashBalance,
        Custodian,
        Desk,
        Position,
    )
    from compliance.models import RestrictedEntry, Rule
    from oms_site import roles
    from orders.models import Instrument, Issuer, Order, ReferencePrice
    from tests.factories import UserFactory

    roles.roles_sync()
    pm = UserFactory(username="bench_pm", role=roles.PM)
    other_pm = UserFactory(username="bench_pm2", role=roles.PM)
    custodian = Custodian.objects.create(code="BNY", name="BNY", bic="IRVTUS3NXXX")
    desk = Desk.objects.create(code="EQ", name="Equities")
    group = AccountGroup.objects.create(code="G7", name="Group 7")
    issuers = Issuer.objects.bulk_create(
        [
            Issuer(code=f"I{j}", name=f"Issuer {j}", country="US", sector=SECTORS[j % 7])
            for j in range(INSTRUMENTS // 3 + 1)
        ]
    )
    instruments = Instrument.objects.bulk_create(
        [
            Instrument(
                symbol=f"SYM{i}",
                name=f"Sym {i}",
                asset_class="equity",
                currency="USD",
                issuer=issuers[i // 3],
                sector=SECTORS[i % len(SECTORS)],
                country="US",
                shares_outstanding=D(rng.randint(10_000_000, 1_000_000_000)),
            )
            for i in range(1, INSTRUMENTS + 1)
        ]
    )
    now = timezone.now()
    prices = {}
    for inst in instruments:
        last = D(rng.randint(500, 50_000)) / 100
        prices[inst.pk] = last
    ReferencePrice.objects.bulk_create(
        [
            ReferencePrice(
                instrument=inst,
                bid=prices[inst.pk] - D("0.01"),
                ask=prices[inst.pk] + D("0.01"),
                last=prices[inst.pk],
                as_of=now,
            )
            for inst in instruments
        ]
    )
    accounts = Account.objects.bulk_create(
        [
            Account(
                code=f"ACC{a:02d}",
                name=f"Fund {a}",
                client="Client",
                custodian=custodian,
                custodian_account=f"C{a}",
                desk=desk,
                short_selling_allowed=a % 2 == 0,
            )
            for a in range(1, ACCOUNTS + 1)
        ]
    )
    for a in accounts:
        a.managers.add(pm)
        a.groups.add(group)
    CashBalance.objects.bulk_create(
        [CashBalance(account=a, currency="USD", settled=D(50_000_000)) for a in accounts]
    )
    positions = []
    for a in accounts:
        for inst in rng.sample(instruments, HOLDINGS_PER_ACCOUNT):
            positions.append(
                Position(account=a, instrument=inst, quantity=D(rng.randint(1_000, 100_000)))
            )
    Position.objects.bulk_create(positions)
    open_orders = []
    for _ in range(OPEN_ORDERS):
        inst = rng.choice(instruments)
        qty = D(500)
        open_orders.append(
            Order(
                account=rng.choice(accounts),
                instrument=inst,
                side=rng.choice(("buy", "sell")),
                quantity=qty,
                leaves_qty=qty,
                order_type="market",
                status=rng.choice(("approved", "working", "partially_filled")),
                created_by=other_pm,
            )
        )
    Order.objects.bulk_create(open_orders)
    RestrictedEntry.objects.bulk_create(
        [RestrictedEntry(instrument=instruments[i], reason="watch list") for i in range(40)]
        + [RestrictedEntry(issuer=issuers[j], reason="insider") for j in range(300, 310)]
    )
    for n, (rule_type, severity, params) in enumerate(RULE_SPECS, start=1):
        scope = ("firm", "account", "group")[n % 3]
        rule = Rule.objects.create(
            name=f"{rule_type} {n}",
            rule_type=rule_type,
            severity=severity,
            scope=scope,
            params=params,
        )
        if scope == "account":
            rule.accounts.set(accounts[:3])
        elif scope == "group":
            rule.groups.set([group])
    fund = accounts[0]
    held = [p.instrument for p in positions if p.account_id == fund.pk]
    held_qty = {p.instrument_id: p.quantity for p in positions if p.account_id == fund.pk}
    held_ids = set(held_qty)
    not_held = [i for i in instruments if i.pk not in held_ids]
    rows = []
    for n in range(ORDERS):
        if n % 2 == 0:
            inst = held[n // 2 % len(held)]
            side, qty = "sell", min(D(rng.randint(1, 1000)), held_qty[inst.pk])
        else:
            inst = not_held[n % len(not_held)]
            side, qty = "buy", D(rng.randint(1, 1000))
        limit = n % 3 == 0
        rows.append(
            {
                "account": fund.code,
                "instrument": inst.symbol,
                "side": side,
                "quantity": str(qty),
                "order_type": "limit" if limit else "market",
                "limit_price": str(prices[inst.pk]) if limit else None,
                "time_in_force": "day",
            }
        )
    return {"pm": pm, "fund": fund, "rows": rows, "instruments": {i.symbol: i for i in instruments}}


def _insert_orders(data: dict[str, Any]) -> list[Any]:
    from orders.models import Order

    instruments = data["instruments"]
    orders = [
        Order(
            account=data["fund"],
            instrument=instruments[r["instrument"]],
            side=r["side"],
            quantity=D(r["quantity"]),
            leaves_qty=D(r["quantity"]),
            order_type=r["order_type"],
            limit_price=D(r["limit_price"]) if r["limit_price"] else None,
            status="pending_compliance",
            created_by=data["pm"],
        )
        for r in data["rows"]
    ]
    return Order.objects.bulk_create(orders)


def _backend_cpu_ms() -> float:
    """CPU time so far of this connection's PostgreSQL backend (same machine), from /proc."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    try:
        # The first field of schedstat: nanoseconds on a CPU (stat's ticks are 10 ms).
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6
    except OSError:
        return float("nan")


class _Rollback(Exception):
    """Raised to undo a timed check's writes so every repetition sees the same book."""


def _time_check(
    data: dict[str, Any],
) -> tuple[list[float], dict[str, float], tuple[int, int], dict[str, int]]:
    """compliance_check alone, on 500 freshly inserted orders, rolled back after each run."""
    from compliance import engine
    from compliance.context import build_pretrade
    from compliance.services import compliance_check
    from oms_site import refcache

    timings: list[float] = []
    phases: dict[str, list[float]] = {"load": [], "evaluate": [], "cpu": []}
    queries = 0
    queries_cold = 0
    outcomes: dict[str, int] = {}
    for n in range(REPETITIONS + 1):
        if n == 0:
            # The first run starts with an empty reference-data cache (and is not timed).
            refcache.clear()
        # The rollback is the point: each run starts from the same book.
        with contextlib.suppress(_Rollback), transaction.atomic():
            orders = _insert_orders(data)
            with CaptureQueriesContext(connection) as ctx:
                t, c = time.perf_counter(), time.process_time()
                result = compliance_check(orders=orders)
                timings.append((time.perf_counter() - t) * 1000)
                phases["cpu"].append((time.process_time() - c) * 1000)
            queries = len(ctx.captured_queries)
            if n == 0:
                queries_cold = queries
            t = time.perf_counter()
            loaded = build_pretrade(orders=orders)
            phases["load"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            engine.evaluate(loaded.intents, loaded.context, loaded.rules)
            phases["evaluate"].append((time.perf_counter() - t) * 1000)
            outcomes = {k: list(result.values()).count(k) for k in ("pass", "warn", "block")}
            raise _Rollback
    # The first run warms caches (connections, content types); it is not counted.
    return (
        timings[1:],
        {k: statistics.median(v[1:]) for k, v in phases.items()},
        (queries, queries_cold),
        outcomes,
    )


def _time_single_check(data: dict[str, Any]) -> tuple[list[float], list[float], int]:
    """compliance_check on one order of the basket's account (400 positions, its open orders),
    as the single-order API path runs it; rolled back after each run."""
    from compliance.services import compliance_check

    one = {**data, "rows": data["rows"][1:2]}
    timings: list[float] = []
    cpu: list[float] = []
    queries = 0
    for _ in range(SINGLE_REPETITIONS + 1):
        # The rollback is the point: each run starts from the same book.
        with contextlib.suppress(_Rollback), transaction.atomic():
            orders = _insert_orders(one)
            with CaptureQueriesContext(connection) as ctx:
                t, c = time.perf_counter(), time.process_time()
                compliance_check(orders=orders)
                timings.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            queries = len(ctx.captured_queries)
            raise _Rollback
    return timings[1:], cpu[1:], queries


def _cancel_basket(basket_id: int | None) -> None:
    """Take a measured basket's orders out of the open book so every run sees the same state."""
    from orders.models import Order

    Order.objects.filter(basket_id=basket_id).update(status="canceled")


def _time_service(data: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
    from orders.services.orders import orders_create_bulk

    timings, cpu, pg_cpu = [], [], []
    for _ in range(REPETITIONS + 1):
        pg = _backend_cpu_ms()
        t, c = time.perf_counter(), time.process_time()
        _, summary = orders_create_bulk(user=data["pm"], rows=data["rows"])
        timings.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        pg_cpu.append(_backend_cpu_ms() - pg)
        _cancel_basket(summary.basket_id)
    return timings[1:], cpu[1:], pg_cpu[1:]


def _time_api(data: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    from django.test import Client
    from django.urls import NoReverseMatch, reverse

    try:
        url = reverse("api-baskets")
    except NoReverseMatch:
        return None
    client = Client()
    client.force_login(data["pm"])
    body = json.dumps({"orders": data["rows"]})
    timings, cpu = [], []
    for _ in range(REPETITIONS + 1):
        t, c = time.perf_counter(), time.process_time()
        response = client.post(url, body, content_type="application/json")
        timings.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        if response.status_code != 201:
            raise RuntimeError(
                f"basket API answered {response.status_code}: {response.content[:500]!r}"
            )
        _cancel_basket(response.json()["id"])
    return timings[1:], cpu[1:]


def run() -> dict[str, Any]:
    """Median milliseconds for a 500-order basket against 20 rules: check, service, API."""
    from django.test.utils import setup_test_environment, teardown_test_environment

    db = settings.DATABASES["default"]
    db["TEST"]["NAME"] = f"bench_{db['NAME']}"
    # The API's throttle would count 500-order baskets against a per-minute budget.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}),
            "order_entry": "100000/min",
        },
    }
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        rng = random.Random(42)
        data = _seed(rng)
        check_ms, phases, queries, outcomes = _time_check(data)
        single_ms, single_cpu, single_queries = _time_single_check(data)
        service_ms, service_cpu, service_pg_cpu = _time_service(data)
        api = _time_api(data)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()
    out: dict[str, Any] = {
        "compliance_check_500x20_median_ms": round(statistics.median(check_ms), 1),
        "compliance_check_500x20_min_ms": round(min(check_ms), 1),
        # CPU of this process only (the database's work is in its own process); on a shared,
        # overloaded machine it shows what the code costs when it is not waiting for a core.
        "compliance_check_500x20_cpu_median_ms": round(phases["cpu"], 1),
        "compliance_check_load_context_median_ms": round(phases["load"], 1),
        "compliance_check_engine_median_ms": round(phases["evaluate"], 1),
        # Warm: reference data (rules, instruments, accounts, restricted list) from the
        # per-process cache; cold: its first load. Neither depends on the basket's size.
        "compliance_check_queries": queries[0],
        "compliance_check_queries_cold_cache": queries[1],
        "compliance_check_outcomes": outcomes,
        # One order, as the single-order API path checks it (warm reference-data cache).
        "compliance_check_1_order_median_ms": round(statistics.median(single_ms), 2),
        "compliance_check_1_order_cpu_median_ms": round(statistics.median(single_cpu), 2),
        "compliance_check_1_order_queries": single_queries,
        "basket_service_500x20_median_ms": round(statistics.median(service_ms), 1),
        "basket_service_500x20_min_ms": round(min(service_ms), 1),
        "basket_service_500x20_cpu_median_ms": round(statistics.median(service_cpu), 1),
        # The PostgreSQL backend's CPU for the same calls (includes the statement of one
        # pg_backend_pid() read).
        "basket_service_500x20_pg_cpu_median_ms": round(statistics.median(service_pg_cpu), 1),
    }
    if api is not None:
        api_ms, api_cpu = api
        out["basket_api_500x20_median_ms"] = round(statistics.median(api_ms), 1)
        out["basket_api_500x20_min_ms"] = round(min(api_ms), 1)
        out["basket_api_500x20_cpu_median_ms"] = round(statistics.median(api_cpu), 1)
    return out


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value}")
