"""Benchmark: the pure compliance engine on a 500-order basket against 20 active rules."""

from __future__ import annotations

import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

# Runnable as a script from anywhere as well as with `python -m benchmarks.bench_compliance_engine`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compliance.engine import (
    AccountInfo,
    ComplianceContext,
    InstrumentInfo,
    OpenOrder,
    OrderIntent,
    RestrictedEntry,
    RuleSpec,
    evaluate,
)

ORDERS = 500
RULES = 20
REPETITIONS = 20
INSTRUMENTS = 2000
ACCOUNTS = 20
HOLDINGS_PER_ACCOUNT = 400
OPEN_ORDERS = 3000
SECTORS = ("Tech", "Energy", "Health", "Financials", "Utilities", "Materials", "Industrials")
AS_OF = datetime(2025, 3, 14, 14, 30, tzinfo=UTC)


# The 20 rules both compliance benchmarks check a 500-order basket against.
RULE_SPECS: list[tuple[str, str, dict[str, str]]] = [
    ("restricted_list", "block", {}),
    ("restricted_list", "warn", {}),
    ("concentration", "block", {"dimension": "instrument", "max_pct": "10"}),
    ("concentration", "block", {"dimension": "issuer", "max_pct": "15"}),
    ("concentration", "warn", {"dimension": "sector", "max_pct": "40"}),
    ("concentration", "warn", {"dimension": "instrument", "max_pct": "5"}),
    ("ownership", "block", {"max_pct": "10"}),
    ("ownership", "warn", {"max_pct": "5"}),
    ("fat_finger", "block", {"max_quantity": "1000000", "max_notional": "50000000"}),
    ("fat_finger", "warn", {"max_price_deviation_pct": "5"}),
    ("fat_finger", "warn", {"max_notional": "5000000"}),
    ("short_selling", "block", {}),
    ("buying_power", "block", {"margin_pct": "0"}),
    ("buying_power", "warn", {"margin_pct": "50"}),
    ("conflicting_orders", "warn", {}),
    ("duplicate_orders", "warn", {"window_seconds": "60"}),
    ("duplicate_orders", "block", {"window_seconds": "5"}),
    ("concentration", "block", {"dimension": "issuer", "max_pct": "25"}),
    ("fat_finger", "block", {"max_quantity": "500000"}),
    ("conflicting_orders", "block", {}),
]


def _rules() -> list[RuleSpec]:
    specs = RULE_SPECS
    assert len(specs) == RULES
    rules = []
    for i, (rule_type, severity, params) in enumerate(specs, start=1):
        # Mix of scopes, all of which cover the benchmark account.
        scope = ("firm", "account", "group")[i % 3]
        rules.append(
            RuleSpec(
                id=i,
                version=1,
                name=f"{rule_type} {i}",
                rule_type=rule_type,
                severity=severity,
                scope=scope,
                scope_account_ids=frozenset({1, 2, 3}),
                scope_group_ids=frozenset({7}),
                params=params,
            )
        )
    return rules


def _context(rng: random.Random) -> ComplianceContext:
    instruments = {
        i: InstrumentInfo(
            id=i,
            symbol=f"SYM{i}",
            issuer_id=i // 3,
            sector=SECTORS[i % len(SECTORS)],
            shares_outstanding=Decimal(rng.randint(10_000_000, 1_000_000_000)),
            reference_price=Decimal(rng.randint(500, 50_000)) / 100,
        )
        for i in range(1, INSTRUMENTS + 1)
    }
    accounts = {
        a: AccountInfo(
            id=a,
            nav=Decimal(500_000_000),
            available_cash=Decimal(50_000_000),
            short_allowed=a % 2 == 0,
            group_ids=frozenset({7, 8}),
        )
        for a in range(1, ACCOUNTS + 1)
    }
    holdings = {}
    for a in accounts:
        for i in rng.sample(range(1, INSTRUMENTS + 1), HOLDINGS_PER_ACCOUNT):
            holdings[(a, i)] = Decimal(rng.randint(1_000, 100_000))
    open_orders = [
        OpenOrder(
            account_id=rng.randint(1, ACCOUNTS),
            instrument_id=(inst := rng.randint(1, INSTRUMENTS)),
            side=rng.choice(("buy", "sell")),
            leaves_quantity=Decimal(rng.randint(1, 500)),
            price=instruments[inst].reference_price,
            created_at=AS_OF - timedelta(seconds=rng.randint(0, 20_000)),
            quantity=Decimal(500),
        )
        for _ in range(OPEN_ORDERS)
    ]
    restricted = [RestrictedEntry(instrument_id=i, reason="watch list") for i in range(1, 40)]
    restricted += [RestrictedEntry(issuer_id=j, reason="insider") for j in range(300, 310)]
    firm_issuer_holdings = {
        j: Decimal(rng.randint(0, 1_000_000)) for j in range(0, INSTRUMENTS // 3 + 1)
    }
    return ComplianceContext(
        instruments=instruments,
        accounts=accounts,
        holdings=holdings,
        open_orders=open_orders,
        restricted=restricted,
        firm_issuer_holdings=firm_issuer_holdings,
        as_of=AS_OF,
    )


def _basket(rng: random.Random, ctx: ComplianceContext) -> list[OrderIntent]:
    """A rebalance for account 1: sells of held names, buys of others."""
    held = [i for (a, i) in ctx.holdings if a == 1]
    not_held = [i for i in ctx.instruments if (1, i) not in ctx.holdings]
    orders = []
    for n in range(ORDERS):
        if n % 2 == 0:
            inst = held[n // 2 % len(held)]
            side, qty = "sell", Decimal(rng.randint(1, 1000))
        else:
            inst = not_held[n % len(not_held)]
            side, qty = "buy", Decimal(rng.randint(1, 1000))
        limit = n % 3 == 0
        orders.append(
            OrderIntent(
                key=n,
                account_id=1,
                instrument_id=inst,
                side=side,
                quantity=qty,
                order_type="limit" if limit else "market",
                limit_price=ctx.instruments[inst].reference_price if limit else None,
                created_at=AS_OF,
                created_by_id=1,
            )
        )
    return orders


def run() -> dict[str, float]:
    """Median milliseconds to evaluate a 500-order basket against 20 active rules."""
    rng = random.Random(42)
    ctx = _context(rng)
    # Indexing the context alone (3,000 open orders, 8,000 holdings), without making the data.
    t0 = time.perf_counter()
    ComplianceContext(
        instruments=ctx.instruments,
        accounts=ctx.accounts,
        holdings=ctx.holdings,
        open_orders=ctx.open_orders,
        restricted=ctx.restricted,
        firm_issuer_holdings=ctx.firm_issuer_holdings,
        as_of=ctx.as_of,
    )
    context_ms = (time.perf_counter() - t0) * 1000
    rules = _rules()
    orders = _basket(rng, ctx)
    evaluate(orders, ctx, rules)  # warm-up
    timings = []
    cpu_timings = []
    for _ in range(REPETITIONS):
        t = time.perf_counter()
        c = time.process_time()
        results = evaluate(orders, ctx, rules)
        cpu_timings.append((time.process_time() - c) * 1000)
        timings.append((time.perf_counter() - t) * 1000)
    rows = sum(len(v) for v in results.values())
    assert rows == ORDERS * RULES, rows
    median = statistics.median(timings)
    return {
        "compliance_engine_500x20_median_ms": round(median, 2),
        "compliance_engine_500x20_min_ms": round(min(timings), 2),
        "compliance_engine_500x20_max_ms": round(max(timings), 2),
        # CPU time is less sensitive than wall time to other processes on a shared machine.
        "compliance_engine_500x20_cpu_median_ms": round(statistics.median(cpu_timings), 2),
        "compliance_engine_us_per_order_rule": round(median * 1000 / rows, 3),
        "compliance_context_index_ms": round(context_ms, 2),
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value}")
