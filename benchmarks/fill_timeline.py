"""Timeline of one 1,000-account fill: what Python and its PostgreSQL backend do, and when.

For each path of ``bench_allocations`` (``fill_allocate``, ``execution_apply``), in pipeline
mode as there, this records every statement sent (``psycopg.Cursor.execute``) and every wait of
the connection (``psycopg.Connection.wait``: from when Python starts waiting for PostgreSQL to
when it has its answer), and samples the backend's CPU time (``/proc/<pid>/schedstat``) from a
separate *process* every ~100 µs, so the sampling takes no interpreter lock of the process
measured. Both clocks are CLOCK_MONOTONIC (``time.perf_counter_ns``).

It prints, for the median fill of each path, the events (statements sent, waits begun and
ended, each with the backend's CPU in the interval before it) and a summary of the fill's span
in 50 µs slices: Python alone (not waiting, backend idle), both, PostgreSQL alone (Python
waiting, backend busy) and idle waits (Python waiting, backend idle: latency, or PostgreSQL
waiting for what is not sent yet). Run:
``.venv/bin/python -m benchmarks.fill_timeline [samples]`` (default 9; uses the benchmark's
database, emptied first). With ``TIMELINE_SYNC=1`` every statement sent in pipeline mode is
waited for at once (no overlap): the backend CPU before each answer is then that statement's
own cost.

Read it on a quiet machine: the overlap it shows needs two free cores (with another process
busy on one, Python and PostgreSQL take turns on the other and the overlap is lost).
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

from benchmarks import bench_allocations as bench

_SAMPLER = r"""
import os, sys, time
pid = int(sys.argv[1])
fd = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
out = []
now = time.perf_counter_ns
stop = os.open("/dev/stdin", os.O_RDONLY | os.O_NONBLOCK)
last = None
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    cpu = int(os.pread(fd, 64, 0).split()[0])
    t = now()
    if cpu != last:
        out.append((t, cpu))
        last = cpu
    try:
        stopped = bool(os.read(stop, 1))
    except BlockingIOError:  # nothing written yet: go on sampling
        stopped = False
    if stopped:
        break
    time.sleep(0.00008)
out.append((now(), int(os.pread(fd, 64, 0).split()[0])))
with open(sys.argv[2], "w") as f:
    f.write("\n".join(f"{a} {b}" for a, b in out))
"""

SLICE_NS = 50_000


class Recorder:
    """Statements sent and connection waits of this process, with perf_counter_ns stamps."""

    def __init__(self) -> None:
        # (perf_counter_ns, thread_time_ns, statement); (start, end, what, its thread times)
        self.events: list[tuple[int, int, str]] = []
        self.waits: list[tuple[int, int, str, int, int]] = []
        self.on = False
        self.sync = os.environ.get("TIMELINE_SYNC") == "1"

    def install(self) -> None:
        import psycopg

        rec = self
        execute = psycopg.Cursor.execute
        wait = psycopg.Connection.wait

        def traced_execute(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if rec.on:
                text = query if isinstance(query, str) else str(query)
                label = " ".join(text.split())[:60]
                rec.events.append((time.perf_counter_ns(), time.thread_time_ns(), label))
                rec.current = label
            result = execute(cur, query, *args, **kwargs)
            if rec.on and rec.sync and cur.connection._pipeline is not None:
                # Each statement waited for: its own backend CPU (no overlap, for costing only).
                cur.connection._pipeline.sync()
            return result

        def traced_wait(conn: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
            if not rec.on:
                return wait(conn, gen, *args, **kwargs)
            start, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return wait(conn, gen, *args, **kwargs)
            finally:
                end, cpu_end = time.perf_counter_ns(), time.thread_time_ns()
                name = getattr(gen, "__qualname__", getattr(gen, "__name__", "?"))
                self.waits.append((start, end, name, cpu, cpu_end))

        psycopg.Cursor.execute = traced_execute  # type: ignore[method-assign]
        psycopg.Connection.wait = traced_wait  # type: ignore[method-assign]


def _busy_fraction(samples: list[tuple[int, int]], a: int, b: int) -> float:
    """Backend CPU ns in [a, b), interpolated between the samples."""
    total = 0.0
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t1 <= a or t0 >= b or t1 == t0:
            continue
        lo, hi = max(a, t0), min(b, t1)
        total += (c1 - c0) * (hi - lo) / (t1 - t0)
    return total


def analyse(
    rec: Recorder, samples: list[tuple[int, int]], start: int, end: int
) -> dict[str, float]:
    waits = [(a, b) for a, b, *_ in rec.waits if b > start and a < end]
    phases = dict.fromkeys(("python_alone", "both", "postgres_alone", "idle_wait"), 0.0)
    t = start
    while t < end:
        u = min(t + SLICE_NS, end)
        waiting = sum(max(0, min(u, b) - max(t, a)) for a, b in waits) / (u - t)
        busy = min(1.0, _busy_fraction(samples, t, u) / (u - t))
        span = (u - t) / 1e6
        phases["python_alone"] += (1 - waiting) * (1 - busy) * span
        phases["both"] += (1 - waiting) * busy * span
        phases["postgres_alone"] += waiting * busy * span
        phases["idle_wait"] += waiting * (1 - busy) * span
        t = u
    phases["wall"] = (end - start) / 1e6
    phases["postgres_cpu"] = _busy_fraction(samples, start, end) / 1e6
    return phases


def events_table(
    rec: Recorder, samples: list[tuple[int, int]], span: tuple[int, int, int, int]
) -> str:
    """The fill's events; before each, the CPU its Python thread and the backend used since
    the previous one (Python CPU below the interval's length: the thread waited or was not
    scheduled)."""
    start, end, cpu_start, cpu_end = span
    items: list[tuple[int, int, str]] = []
    for t, cpu, label in rec.events:
        if start <= t <= end:
            items.append((t, cpu, f"send   {label}"))
    for a, b, name, cpu_a, cpu_b in rec.waits:
        if b < start or a > end or b - a < 30_000:
            continue  # sends that did not block
        items.append((a, cpu_a, f"wait>  {name}"))
        items.append((b, cpu_b, f"<wait  {name} ({(b - a) / 1e6:.2f} ms)"))
    items.sort()
    items.append((end, cpu_end, "end (commit answered)"))
    lines = [f"{'t ms':>7} {'py cpu':>7} {'pg cpu':>7}  event (CPU ms since the previous event)"]
    last, last_cpu = start, cpu_start
    for t, cpu, text in items:
        pg = _busy_fraction(samples, last, t) / 1e6
        py = (cpu - last_cpu) / 1e6
        lines.append(f"{(t - start) / 1e6:7.2f} {py:7.2f} {pg:7.2f}  {text}")
        last, last_cpu = t, cpu
    return "\n".join(lines)


def main(n: int) -> None:
    bench._setup_django()
    import datetime as dt
    import random

    from settlement.calendars import settlement_date

    settlement_date(dt.date(2026, 11, 20), cycle_days=1, calendar_code="XNYS")
    world = bench._world("1")
    blocks = {}
    for name in bench.PATHS:
        rng = random.Random(7)
        instrument = bench._instrument(world, f"BIG{name[:4].upper()}", Decimal(100))
        accounts = bench._accounts(world, f"BIG{name[:4]}", bench.ACCOUNTS)
        lots = [rng.randint(10, 60) for _ in accounts]
        placement = bench._block(world, instrument, accounts, lots)
        step = Decimal(100) * (sum(lots) // 40)
        bench.PATHS[name](placement, step, Decimal("10.00"))
        blocks[name] = (placement, step)
    bench._analyze()
    pid = bench._connect()
    rec = Recorder()
    rec.install()
    out = f"/tmp/fill_timeline_{os.getpid()}.txt"
    sampler = subprocess.Popen(
        [sys.executable, "-c", _SAMPLER, str(pid), out],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sampler.stdout is not None and sampler.stdout.readline().strip() == "ready"
    spans: dict[str, list[tuple[int, int, int, int]]] = {name: [] for name in bench.PATHS}
    python_ms: dict[str, list[float]] = {name: [] for name in bench.PATHS}
    for i in range(n):
        px = Decimal("10.00") + Decimal(i % 9 + 1) / 100
        for name, apply in bench.PATHS.items():
            placement, step = blocks[name]
            time.sleep(0.02)
            rec.on = True
            start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
            apply(placement, step, px)
            end, cpu_end = time.perf_counter_ns(), time.thread_time_ns()
            rec.on = False
            spans[name].append((start, end, cpu_start, cpu_end))
            python_ms[name].append((cpu_end - cpu_start) / 1e6)
            bench._sender_drain()
            time.sleep(0.02)
    assert sampler.stdin is not None
    sampler.stdin.write("x")
    sampler.stdin.close()
    sampler.wait()
    with open(out) as f:
        samples = [tuple(map(int, line.split())) for line in f if line.strip()]
    os.unlink(out)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples)]
    print(f"backend CPU samples: {len(samples)}, median gap {statistics.median(gaps) / 1e3:.0f} µs")
    for name in bench.PATHS:
        results = [(analyse(rec, samples, span[0], span[1]), span) for span in spans[name]]
        results.sort(key=lambda r: r[0]["wall"])
        keys = list(results[0][0])
        print(f"\n== {name}: medians of {n} fills (ms)")
        print(
            "  ".join(f"{k} {statistics.median(r[0][k] for r in results):.1f}" for k in keys)
            + f"  python_cpu {statistics.median(python_ms[name]):.1f}"
        )
        phases, span = results[len(results) // 2]
        print(f"-- the median fill ({phases['wall']:.1f} ms wall):")
        print(events_table(rec, samples, span))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
