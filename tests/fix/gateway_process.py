"""A gateway in its own process for kill tests: sends orders, prints what happens.

Usage: python -m tests.fix.gateway_process PORT STORE_DIR PREFIX COUNT INTERVAL_S
Prints "LOGON", "SENT <ClOrdID>", "EXEC <ClOrdID> <ExecID> <ExecType> <PossDup>", "DONE".
"""

from __future__ import annotations

import sys
import threading
import time
from decimal import Decimal

from orders.fix.gateway import Gateway, SessionSpec
from orders.fix.messages import ExecReport, NewOrder

KEY = "FIX.4.4:OMS->BRKA"
_print_lock = threading.Lock()


def emit(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


class Handler:
    def on_logon(self, session_key):
        emit("LOGON")

    def on_logout(self, session_key):
        emit("LOGOUT")

    def on_outbound(self, session_key, raw):
        pass

    def on_inbound(self, session_key, raw, parsed):
        if isinstance(parsed, ExecReport):
            emit(f"EXEC {parsed.cl_ord_id} {parsed.exec_id} {parsed.exec_type} {parsed.poss_dup}")


def main() -> None:
    port, store_dir, prefix, count, interval = sys.argv[1:6]
    spec = SessionSpec(
        "OMS",
        "BRKA",
        "127.0.0.1",
        int(port),
        heartbeat=2,
        store_dir=store_dir,
        reconnect_interval=1,
    )
    gateway = Gateway([spec], Handler())
    gateway.start()
    try:
        if not gateway.wait_logged_on(KEY, timeout=10):
            emit("NOLOGON")
            return
        for i in range(int(count)):
            cl_ord_id = f"{prefix}{i}"
            if gateway.send(KEY, NewOrder(cl_ord_id, "AAPL", "buy", Decimal(1))):
                emit(f"SENT {cl_ord_id}")
            time.sleep(float(interval))
        time.sleep(1.0)
        emit("DONE")
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
