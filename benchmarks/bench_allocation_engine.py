"""Benchmark of the pure allocation engine: one fill allocated across 1,000 accounts.

Run: ``.venv/bin/python -m benchmarks.bench_allocation_engine`` (prints the figures; target is a
median of at most 50 ms per fill).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

try:
    from allocations.engine import (
        AllocationTarget,
        CommissionSchedule,
        PositionState,
        allocate_cumulative,
        allocate_fill,
        apply_trade,
        commission_for,
    )
except ModuleNotFoundError:  # run as a plain script from another directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from allocations.engine import (
        AllocationTarget,
        CommissionSchedule,
        PositionState,
        allocate_cumulative,
        allocate_fill,
        apply_trade,
        commission_for,
    )

ACCOUNTS = 1_000
REPETITIONS = 51
TARGET_MS = 50.0
LOT = Decimal(100)


def _time_ms(func: Callable[[], object], repetitions: int = REPETITIONS) -> dict[str, float]:
    """Median, 95th percentile and minimum wall time of `func` in milliseconds."""
    func()  # warm-up
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        func()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 3),
        "min_ms": round(samples[0], 3),
    }


def _targets(rng: random.Random, fixed_ratio: bool) -> list[AllocationTarget]:
    targets = []
    for i in range(ACCOUNTS):
        requested = Decimal(rng.randint(1, 500)) * LOT
        weight = Decimal(rng.randint(1, 10_000)).scaleb(-4) if fixed_ratio else None
        targets.append(
            AllocationTarget(key=i, requested=requested, weight=weight, entry_seq=(i // 7, i))
        )
    return targets


def _fill_case(targets: list[AllocationTarget], before: Decimal, after: Decimal):
    already = allocate_cumulative(targets, before, LOT)
    return lambda: allocate_fill(targets, already, after, LOT)


def run() -> dict[str, object]:
    """Time the allocation of one fill across 1,000 accounts in several shapes; return figures."""
    rng = random.Random(20240601)
    pro_rata = _targets(rng, fixed_ratio=False)
    ratio = _targets(rng, fixed_ratio=True)
    total = sum(t.requested for t in pro_rata)
    ratio_total = sum(t.requested for t in ratio)
    half = (total / 2 // LOT) * LOT

    figures: dict[str, object] = {"accounts": ACCOUNTS, "repetitions": REPETITIONS}
    figures["pro_rata_fill"] = _time_ms(_fill_case(pro_rata, half, half + 50 * LOT))
    figures["pro_rata_odd_lot_fill"] = _time_ms(_fill_case(pro_rata, half, half + 5_037))
    # Fixed ratios against random order sizes: most accounts hit their cap (water-filling sort).
    figures["fixed_ratio_capped_fill"] = _time_ms(
        _fill_case(ratio, (ratio_total * 6 / 10 // LOT) * LOT, (ratio_total * 7 / 10 // LOT) * LOT)
    )

    # Booking the fill: commission and position per account, as a service would after allocating.
    schedule = CommissionSchedule(
        bps=Decimal("2.5"), per_share=Decimal("0.005"), min_per_ticket=Decimal("1.00")
    )
    target = allocate_cumulative(pro_rata, half, LOT)
    price = Decimal("101.2345")
    start_state = PositionState(quantity=Decimal(1000), avg_cost=Decimal("99.5"))

    def book() -> None:
        for quantity in target.values():
            if quantity:
                commission_for(schedule, quantity, price, 1)
                apply_trade(start_state, -1, quantity, price)

    figures["commission_and_position_1000_accounts"] = _time_ms(book)
    median = figures["pro_rata_fill"]["median_ms"]  # type: ignore[index]
    figures["target_ms"] = TARGET_MS
    figures["within_target"] = all(
        figures[name]["median_ms"] <= TARGET_MS  # type: ignore[index]
        for name in ("pro_rata_fill", "pro_rata_odd_lot_fill", "fixed_ratio_capped_fill")
    )
    figures["headline"] = f"allocate one fill across {ACCOUNTS} accounts: median {median} ms"
    return figures


if __name__ == "__main__":
    results = run()
    print(results["headline"])
    for name, value in results.items():
        if name != "headline":
            print(f"  {name}: {value}")
