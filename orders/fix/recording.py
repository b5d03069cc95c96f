"""An in-memory GatewayHandler that records everything (tests, benchmark, manual runs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orders.fix.messages import ExecReport, ParsedMessage


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded inbound message."""

    session_key: str
    raw: str
    parsed: ParsedMessage
    received_at: float  # time.perf_counter()


class RecordingHandler:
    """Records logons, logouts and messages; `wait_for` blocks until a condition holds."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.logons: list[str] = []
        self.logouts: list[str] = []
        self.inbound: list[Recorded] = []
        self.outbound: list[tuple[str, str]] = []
        self.fail_inbound: Callable[[str, ParsedMessage], bool] | None = None
        self.on_exec: Callable[[str, ExecReport], None] | None = None

    def on_logon(self, session_key: str) -> None:
        with self._cv:
            self.logons.append(session_key)
            self._cv.notify_all()

    def on_logout(self, session_key: str) -> None:
        with self._cv:
            self.logouts.append(session_key)
            self._cv.notify_all()

    def on_inbound(self, session_key: str, raw: str, parsed: ParsedMessage) -> None:
        if self.fail_inbound is not None and self.fail_inbound(session_key, parsed):
            raise RuntimeError("simulated handler failure")
        with self._cv:
            self.inbound.append(Recorded(session_key, raw, parsed, time.perf_counter()))
            self._cv.notify_all()
        if self.on_exec is not None and isinstance(parsed, ExecReport):
            self.on_exec(session_key, parsed)

    def on_outbound(self, session_key: str, raw: str) -> None:
        with self._cv:
            self.outbound.append((session_key, raw))
            self._cv.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until predicate() is truthy (evaluated under the lock); returns its value."""
        with self._cv:
            return self._cv.wait_for(predicate, timeout)

    def app_messages(self, msg_type: str | None = None) -> list[ParsedMessage]:
        """Parsed inbound application messages, optionally of one MsgType."""
        with self._cv:
            return [
                r.parsed
                for r in self.inbound
                if r.parsed.header.msg_type not in ("0", "1", "2", "3", "4", "5", "A")
                and (msg_type is None or r.parsed.header.msg_type == msg_type)
            ]

    def exec_reports(self, cl_ord_id: str | None = None) -> list[ExecReport]:
        """Received ExecutionReports, optionally only those naming `cl_ord_id` (11 or 41)."""
        with self._cv:
            return [
                r.parsed
                for r in self.inbound
                if isinstance(r.parsed, ExecReport)
                and (
                    cl_ord_id is None or cl_ord_id in (r.parsed.cl_ord_id, r.parsed.orig_cl_ord_id)
                )
            ]
