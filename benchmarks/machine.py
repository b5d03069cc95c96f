"""What machine the figures came from: CPU model, cores, load, and a fixed Python probe.

Why: the same code on "the same" 2-core machine has measured up to twice as fast in one session
as in another (the host behind the machine changes). A benchmark's figures mean little without
the speed of the machine that produced them, so `run_all` prints this first. The probe is a fixed
piece of pure-Python work (dicts, strings, Decimal arithmetic, the kinds of work the web process
and the appliers do), timed a few times; its median is comparable across sessions, and a figure
divided by it is closer to the code's own cost than the figure alone.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

PROBE_RUNS = 7


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux, or /proc not mounted
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _probe_once() -> float:
    """Milliseconds for a fixed amount of interpreter work (about 30 ms on a fast core)."""
    started = time.perf_counter()
    total = Decimal("0")
    rows: dict[str, Any] = {}
    for i in range(20_000):
        key = f"ACC{i % 1000:04d}"
        row = rows.setdefault(key, {"qty": Decimal("0"), "n": 0})
        row["qty"] += Decimal(i % 97) * Decimal("1.25")
        row["n"] += 1
        total += row["qty"] / 7
        ",".join((key, str(row["n"]), "x"))
    if total < 0:  # pragma: no cover - keeps the work from being optimised away
        raise AssertionError
    return (time.perf_counter() - started) * 1000


def describe() -> dict[str, Any]:
    """The machine's model, cores, load average and the probe's median and best time."""
    probes = [_probe_once() for _ in range(PROBE_RUNS)]
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "python_probe_ms_median": round(statistics.median(probes), 2),
        "python_probe_ms_min": round(min(probes), 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(describe(), indent=2))
