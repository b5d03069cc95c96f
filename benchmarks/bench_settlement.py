"""Settlement file benchmark: time and peak memory to write N allocations as CSV and MT54x.

Targets (issue): 100,000 lines in <= 10 s, 1,000,000 in <= 120 s, memory flat (<= 300 MB).

Each (size, format) runs in a fresh interpreter so that its peak RSS (getrusage ru_maxrss) is
its own and not the high-water mark of an earlier, bigger run. Lines are generated lazily and
streamed straight into an atomic_write'd file in a temporary directory, including the settlement
date lookup on the real XNYS calendar, so the figure is the cost of the whole file.

    .venv/bin/python benchmarks/bench_settlement.py           # 100k and 1M
    .venv/bin/python benchmarks/bench_settlement.py --quick   # 100k only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from settlement.calendars import settlement_date
from settlement.formats import SettlementLine, atomic_write, format_for

TIME_TARGETS = {100_000: 10.0, 1_000_000: 120.0}
MEMORY_TARGET_MB = 300.0
TRADE_DATE = dt.date(2026, 11, 25)
MT_OPTIONS = {"sender_bic": "OPENUS33", "receiver_bic": "IRVTUS3NXXX", "file_reference_prefix": "B"}
_SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
_CENT = Decimal("0.01")
_COMMISSION_RATE = Decimal("0.0005")


def synthetic_lines(count: int) -> Iterator[SettlementLine]:
    """Yield count plausible settlement lines, one at a time (never a list)."""
    settle = settlement_date(TRADE_DATE, cycle_days=1, calendar_code="XNYS")
    prices = [Decimal(10 + k % 490) + Decimal(k % 100) / 100 for k in range(997)]
    for i in range(count):
        quantity = Decimal(1 + i % 1000)
        price = prices[i % 997]
        gross = quantity * price
        commission = (gross * _COMMISSION_RATE).quantize(_CENT)
        fees = Decimal("0.12")
        side = _SIDES[i % 4]
        net = (
            gross + commission + fees
            if side in ("buy", "buy_to_cover")
            else gross - commission - fees
        )
        instrument = i % 2000
        account = i % 500
        yield SettlementLine(
            allocation_id=i + 1,
            trade_date=TRADE_DATE,
            settlement_date=settle,
            account_code=f"ACC-{account:04d}",
            custodian_account=f"BNY-{70000 + account}",
            isin=f"US{instrument:09d}0",
            symbol=f"SYM{instrument}",
            side=side,
            quantity=quantity,
            price=price,
            gross=gross,
            commission=commission,
            fees=fees,
            net=net,
            currency="USD",
            broker_code=("GS", "MS", "JPM")[i % 3],
            custodian_bic="IRVTUS3N",
            broker_bic=("GOLDUS33", "MSNYUS33", "CHASUS33")[i % 3],
            our_bic="OPENUS33",
            pset_bic="DTCYUS33",
        )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(size: int, fmt: str) -> dict[str, float | int | str]:
    """Write one file of size lines in format fmt; return seconds, bytes, sha256, peak RSS."""
    writer = format_for(fmt)
    options = MT_OPTIONS if fmt == "mt54x" else {}
    rss_before = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / f"settlement.{fmt}"
        started = time.perf_counter()
        written = atomic_write(target, lambda out: writer(synthetic_lines(size), out, **options))
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "bytes": written.size,
        "sha256": written.sha256,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_mb": round(rss_before, 1),
    }


def run(sizes: Sequence[int] = (100_000, 1_000_000)) -> dict[str, dict[str, object]]:
    """Measure every size and format, each in a fresh process; print and return the figures."""
    results: dict[str, dict[str, object]] = {}
    spawn = multiprocessing.get_context("spawn")
    for size in sizes:
        figures: dict[str, object] = {}
        for fmt in ("csv", "mt54x"):
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                figures[fmt] = pool.submit(measure, size, fmt).result()
        total = sum(figures[f]["seconds"] for f in ("csv", "mt54x"))  # type: ignore[index]
        peak = max(figures[f]["peak_rss_mb"] for f in ("csv", "mt54x"))  # type: ignore[index]
        target = TIME_TARGETS.get(size)
        figures["total_seconds"] = round(total, 2)
        figures["peak_rss_mb"] = peak
        figures["within_target"] = (target is None or total <= target) and peak <= MEMORY_TARGET_MB
        results[str(size)] = figures
        for fmt in ("csv", "mt54x"):
            f = figures[fmt]
            print(
                f"settlement {size:>9,} lines {fmt:<5}: {f['seconds']:>7.2f} s, "  # type: ignore[index]
                f"{f['bytes'] / 1e6:>8.1f} MB file, peak RSS {f['peak_rss_mb']:.0f} MB "  # type: ignore[index]
                f"(at start {f['rss_before_mb']:.0f} MB)"  # type: ignore[index]
            )
        limit = f"target <= {target:.0f} s, " if target else ""
        print(
            f"settlement {size:>9,} lines both : {total:>7.2f} s, peak RSS {peak:.0f} MB "
            f"({limit}<= {MEMORY_TARGET_MB:.0f} MB): "
            f"{'OK' if figures['within_target'] else 'OVER TARGET'}"
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 100,000 lines")
    args = parser.parse_args(argv)
    results = run(sizes=(100_000,) if args.quick else (100_000, 1_000_000))
    return 0 if all(r["within_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
