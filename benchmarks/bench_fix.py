"""Benchmark of the FIX protocol layer: orders routed and filled per second over one session.

The QuickFIX gateway (this process) sends NewOrderSingle market orders over one FIX 4.4 session
to the venue simulator (a separate process, as in production) which acknowledges and fills each
one; the figures count an order done when its fill reaches the gateway's handler.

Two runs: a burst (all orders as fast as the sender can go: the throughput ceiling) and a paced
run at the target rate (latency at the load the OMS must carry). Latency is send() to fill
received, i.e. the full round trip through both FIX engines. No database is involved: the
fill-to-commit figure of the whole system adds the executions service's transaction.

Run: ``.venv/bin/python -m benchmarks.bench_fix`` (target: >= 200 orders/s routed and filled).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from another directory
    sys.path.insert(0, str(ROOT))

from benchmarks.web import stop_process  # noqa: E402
from orders.fix.gateway import Gateway, SessionSpec  # noqa: E402
from orders.fix.messages import ExecReport, NewOrder  # noqa: E402

TARGET_ORDERS_PER_S = 200.0
BURST_ORDERS = 2_000
PACED_ORDERS = 1_000
SYMBOLS = {f"SYM{i:03d}": Decimal("100") + i for i in range(50)}
KEY = "FIX.4.4:OMS->BRKA"


class _FillClock:
    """GatewayHandler that timestamps the fill of each ClOrdID."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.filled: dict[str, float] = {}
        self.acks = 0
        self.rejects = 0
        self._cv = threading.Condition()

    def on_logon(self, session_key: str) -> None:
        """Session events are not measured."""

    def on_logout(self, session_key: str) -> None:
        """Session events are not measured."""

    def on_outbound(self, session_key: str, raw: str) -> None:
        """Outbound messages are counted at send time, not here."""

    def on_inbound(self, session_key: str, raw: str, parsed: object) -> None:
        if not isinstance(parsed, ExecReport) or parsed.cl_ord_id is None:
            return
        now = time.perf_counter()
        if parsed.exec_type == "0":
            self.acks += 1
        elif parsed.exec_type == "8":
            self.rejects += 1
        elif parsed.ord_status == "2":
            with self._cv:
                self.filled[parsed.cl_ord_id] = now
                self._cv.notify_all()

    def wait_filled(self, count: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self.filled) >= count, timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_simulator(workdir: str, port: int) -> subprocess.Popen[str]:
    prices = os.path.join(workdir, "prices.json")
    with open(prices, "w", encoding="utf-8") as f:
        json.dump({k: str(v) for k, v in SYMBOLS.items()}, f)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orders.fix.simulator",
            "--port",
            str(port),
            "--store-dir",
            os.path.join(workdir, "sim-store"),
            "--prices",
            prices,
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:
        process.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return process


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _run_batch(
    gateway: Gateway, clock: _FillClock, prefix: str, count: int, rate: float | None
) -> dict[str, object]:
    symbols = list(SYMBOLS)
    already = len(clock.filled)
    start = time.perf_counter()
    refused = 0
    for i in range(count):
        if rate is not None:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        cl_ord_id = f"{prefix}{i}"
        side = "buy" if i % 2 == 0 else "sell"
        order = NewOrder(cl_ord_id, symbols[i % len(symbols)], side, Decimal(100))
        clock.sent[cl_ord_id] = time.perf_counter()
        if not gateway.send(KEY, order):
            refused += 1
    send_done = time.perf_counter()
    complete = clock.wait_filled(already + count - refused, timeout=120)
    ids = [f"{prefix}{i}" for i in range(count)]
    fill_times = [clock.filled[c] for c in ids if c in clock.filled]
    latencies_ms = [(clock.filled[c] - clock.sent[c]) * 1000 for c in ids if c in clock.filled]
    elapsed = (max(fill_times) - start) if fill_times else float("nan")
    return {
        "orders": count,
        "filled": len(fill_times),
        "refused": refused,
        "complete": complete,
        "send_rate_per_s": round(count / (send_done - start), 1),
        "routed_and_filled_per_s": round(len(fill_times) / elapsed, 1),
        "latency_p50_ms": round(statistics.median(latencies_ms), 2) if latencies_ms else None,
        "latency_p99_ms": round(_percentile(latencies_ms, 99), 2) if latencies_ms else None,
        "latency_max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
    }


def run(burst_orders: int = BURST_ORDERS, paced_orders: int = PACED_ORDERS) -> dict[str, object]:
    """Route and fill orders over one session (burst, then paced at 200/s); return figures."""
    with tempfile.TemporaryDirectory(prefix="bench-fix-") as workdir:
        port = _free_port()
        simulator = _start_simulator(workdir, port)
        clock = _FillClock()
        spec = SessionSpec(
            sender_comp_id="OMS",
            target_comp_id="BRKA",
            host="127.0.0.1",
            port=port,
            fix_version="FIX.4.4",
            heartbeat=30,
            store_dir=os.path.join(workdir, "gw-store"),
            log_dir=os.path.join(workdir, "gw-log"),
        )
        gateway = Gateway([spec], clock)
        try:
            gateway.start()
            if not gateway.wait_logged_on(KEY, timeout=15):
                raise RuntimeError("gateway did not log on")
            _run_batch(gateway, clock, "W", 100, None)  # warm-up
            burst = _run_batch(gateway, clock, "B", burst_orders, None)
            paced = _run_batch(gateway, clock, "P", paced_orders, TARGET_ORDERS_PER_S)
        finally:
            gateway.stop()
            stop_process(simulator)
    throughput = burst["routed_and_filled_per_s"]
    figures: dict[str, object] = {
        "burst": burst,
        "paced_200_per_s": paced,
        "rejects": clock.rejects,
        "target_orders_per_s": TARGET_ORDERS_PER_S,
        "within_target": bool(
            burst["complete"]
            and paced["complete"]
            and isinstance(throughput, float)
            and throughput >= TARGET_ORDERS_PER_S
        ),
    }
    figures["headline"] = (
        f"FIX one session: {throughput} orders/s routed and filled (burst of {burst_orders}); "
        f"at 200/s send-to-fill p50 {paced['latency_p50_ms']} ms, "
        f"p99 {paced['latency_p99_ms']} ms"
    )
    return figures


if __name__ == "__main__":
    results = run()
    print(results["headline"])
    for name, value in results.items():
        if name != "headline":
            print(f"  {name}: {value}")
