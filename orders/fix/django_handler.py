"""The Django side of the FIX gateway: records every message, applies reports, drains the outbox.

`GatewayRunner` = a QuickFIX `Gateway` with `DjangoGatewayHandler`, an `OutboxDispatcher` thread
and a session-state writer thread. `manage.py run_fix_gateway` runs one; tests and the routing
benchmark run one in a thread of their own process.

Inbound (QuickFIX's socket thread): the raw message is stored in FixMessage in its own short
transaction, then ExecutionReports go to `execution_apply` (idempotent on session + ExecID),
cancel rejects and business rejects to their services. A database failure is re-raised so the
gateway retries and finally rewinds the sequence number (the broker resends the message); a
business-rule error is logged and audited and does not block the session.

Outbound: `on_outbound` stores the message (with its MsgSeqNum) before QuickFIX puts it on the
wire; if that fails the message is not sent.

Outbox (dispatcher thread): LISTEN oms_outbox and a sweep every `sweep_interval` seconds read
pending rows of this gateway's sessions in id order; a row is marked sent only after
`Gateway.send` returned True. Restart safety: a pending row whose message was already recorded
outbound is sent again only if its recorded MsgSeqNum is >= the session's next sender number
(QuickFIX never numbered it past the store: it did not leave); otherwise it did leave and
QuickFIX's own resend answers the broker if the broker missed it, so the row is just marked sent.
One gateway process owns a set of sessions: two processes must not serve the same session.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import F
from django.utils import timezone

from oms_site.errors import DomainError
from orders.enums import Direction, OutboxStatus
from orders.fix.common import seq_num_of
from orders.fix.gateway import Gateway, SessionSpec
from orders.fix.messages import (
    ADMIN_MSG_TYPES,
    BusinessReject,
    CancelReject,
    ExecReport,
    MessageBuildError,
    ParsedMessage,
    split_fields,
)
from orders.models import FixMessage, FixSession, OutboxMessage

logger = logging.getLogger("orders.fix.django_handler")

_DB_ERRORS = (OperationalError, InterfaceError, DatabaseError)


def _fields(raw: str) -> dict[int, str]:
    try:
        values: dict[int, str] = {}
        for tag, value in split_fields(raw):
            values.setdefault(tag, value)
        return values
    except Exception:
        return {}


def record_message(
    session_key: str, direction: str, raw: str, *, wait_for_flush: bool = True
) -> FixMessage:
    """Store one FIX message in its own short transaction.

    `wait_for_flush=False` commits without waiting for the WAL flush (synchronous_commit off):
    used for inbound messages, whose business effect is committed synchronously right after
    (execution_apply), and PostgreSQL's WAL is sequential, so that later flush makes this row
    durable too; a heartbeat lost in a database crash is harmless. Outbound records wait: the
    restart logic of the outbox depends on them.
    """
    values = _fields(raw)
    seq = values.get(34, "")
    if not wait_for_flush:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            return _insert_message(session_key, direction, raw, values, seq)
    return _insert_message(session_key, direction, raw, values, seq)


def _insert_message(
    session_key: str, direction: str, raw: str, values: dict[int, str], seq: str
) -> FixMessage:
    return FixMessage.objects.create(
        session_key=session_key,
        direction=direction,
        msg_type=values.get(35, "")[:4],
        seq_num=int(seq) if seq.isdigit() else None,
        poss_dup=values.get(43) == "Y",
        cl_ord_id=values.get(11, "")[:64],
        raw=raw,
    )


def _drop_broken_connection() -> None:
    try:
        connection.close()
    except Exception:
        logger.exception("closing a broken database connection failed")


class _DbThread:
    """One Python thread that owns a database connection and runs calls for other threads.

    Why: QuickFIX calls Python from native threads that get a fresh Python thread state per
    callback, so Django's per-thread connection would be a new connection every message (slow,
    and leaked). The callback hands the work to this thread and waits for the result, so a
    message is still committed before QuickFIX counts it as received.
    """

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    def run(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the thread; re-raise its exception here."""
        return self._executor.submit(fn, *args).result()

    def close(self) -> None:
        """Close the thread's connection and stop the thread."""
        try:
            # A lambda: `connection.close` would bind to the caller's thread's connection.
            self._executor.submit(lambda: connection.close()).result(timeout=10)
        except Exception:
            logger.exception("closing a gateway database connection failed")
        self._executor.shutdown(wait=True)


class DjangoGatewayHandler:
    """GatewayHandler storing messages in FixMessage and applying reports through services."""

    def __init__(self, *, latency_samples: int = 100_000) -> None:
        self.state_changed = threading.Event()
        self.fill_latencies: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.fills_applied = 0
        # Inbound messages of each session (recorded and applied in arrival order) run on that
        # session's own thread, outbound records on another, so sessions apply fills in
        # parallel and a burst of reports never delays an order on its way out.
        self._inbound: dict[str, _DbThread] = {}
        self._outbound: dict[str, _DbThread] = {}
        self._lock = threading.Lock()

    def _thread(self, threads: dict[str, _DbThread], session_key: str, name: str) -> _DbThread:
        thread = threads.get(session_key)
        if thread is None:
            with self._lock:
                thread = threads.get(session_key)
                if thread is None:
                    thread = threads[session_key] = _DbThread(name)
        return thread

    def close_connections(self) -> None:
        """Close the database threads (after the gateway stopped)."""
        with self._lock:
            threads = [*self._inbound.values(), *self._outbound.values()]
            self._inbound, self._outbound = {}, {}
        for thread in threads:
            thread.close()

    def on_logon(self, session_key: str) -> None:
        self.state_changed.set()

    def on_logout(self, session_key: str) -> None:
        self.state_changed.set()

    def on_outbound(self, session_key: str, raw: str) -> None:
        self._thread(self._outbound, session_key, "fix-out-db").run(
            self._record_outbound, session_key, raw
        )

    def on_inbound(self, session_key: str, raw: str, parsed: ParsedMessage) -> None:
        self._thread(self._inbound, session_key, "fix-in-db").run(
            self._receive, session_key, raw, parsed, time.perf_counter()
        )

    def _record_outbound(self, session_key: str, raw: str) -> None:
        try:
            record_message(session_key, Direction.OUT, raw)
        except _DB_ERRORS:
            _drop_broken_connection()
            raise

    def _receive(self, session_key: str, raw: str, parsed: ParsedMessage, received: float) -> None:
        try:
            stored = record_message(session_key, Direction.IN, raw, wait_for_flush=False)
            if parsed.header.msg_type in ADMIN_MSG_TYPES:
                return
            self._apply(session_key, parsed, stored.pk, received)
        except _DB_ERRORS:
            _drop_broken_connection()
            raise

    def _apply(self, session_key: str, parsed: ParsedMessage, raw_id: int, received: float) -> None:
        from orders.services.executions import (
            business_reject_apply,
            cancel_reject_apply,
            execution_apply,
        )

        try:
            if isinstance(parsed, ExecReport):
                execution = execution_apply(
                    session_key=session_key, report=parsed, raw_message_id=raw_id
                )
                if execution is not None and execution.last_qty > 0:
                    self.fill_latencies.append(time.perf_counter() - received)
                    self.fills_applied += 1
            elif isinstance(parsed, CancelReject):
                cancel_reject_apply(session_key=session_key, reject=parsed, raw_message_id=raw_id)
            elif isinstance(parsed, BusinessReject):
                business_reject_apply(session_key=session_key, reject=parsed, raw_message_id=raw_id)
            else:
                logger.warning(
                    "FIX %s: inbound message %s not applied (%s)",
                    session_key,
                    raw_id,
                    getattr(parsed, "reason", type(parsed).__name__),
                )
        except DomainError:
            # A business rule refused the report: retrying cannot help, so it must not stall
            # the session. The raw message is stored; operations see the error in the log.
            logger.exception("FIX %s: message %s refused by a business rule", session_key, raw_id)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A FixSession row the gateway serves."""

    pk: int
    key: str
    spec: SessionSpec


def session_rows(
    *,
    store_dir: str | None = None,
    log_dir: str | None = None,
    reconnect_interval: int = 5,
    heartbeat: int | None = None,
    keys: list[str] | None = None,
) -> list[SessionRow]:
    """The enabled FixSession rows as gateway specs (store under settings.FIX_STORE_DIR)."""
    store = store_dir or str(Path(settings.FIX_STORE_DIR) / "gateway")
    rows = []
    for s in FixSession.objects.filter(enabled=True).order_by("pk"):
        if keys and s.session_key not in keys:
            continue
        spec = SessionSpec(
            sender_comp_id=s.sender_comp_id,
            target_comp_id=s.target_comp_id,
            host=s.host,
            port=s.port,
            fix_version=s.fix_version,
            heartbeat=heartbeat or s.heartbeat_seconds,
            store_dir=store,
            log_dir=log_dir,
            reconnect_interval=reconnect_interval,
        )
        rows.append(SessionRow(s.pk, s.session_key, spec))
    return rows


class OutboxDispatcher:
    """Sends pending outbox rows of the gateway's sessions (LISTEN + periodic sweep)."""

    def __init__(
        self,
        gateway: Gateway,
        sessions: dict[int, str],
        *,
        sweep_interval: float = 1.0,
        batch: int = 500,
        listen: bool = True,
    ) -> None:
        self.gateway = gateway
        self.sessions = sessions  # FixSession pk -> session key
        self.sweep_interval = sweep_interval
        self.batch = batch
        self.listen = listen
        self.sent = 0
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread = threading.Thread(target=self._run, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread."""
        self.stop_event.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _listen_connection(self) -> Any:
        import psycopg

        from orders.services.routing import OUTBOX_CHANNEL

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        conn = psycopg.connect(autocommit=True, **params)
        conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
        return conn

    def _run(self) -> None:
        listener = None
        try:
            while not self.stop_event.is_set():
                try:
                    if self.listen and listener is None:
                        listener = self._listen_connection()
                    count = self.dispatch_once()
                    if count >= self.batch:
                        continue  # backlog: go on at once
                    self._wait(listener)
                except Exception:
                    logger.exception("outbox dispatch failed; retrying")
                    _drop_broken_connection()
                    if listener is not None:
                        with contextlib.suppress(Exception):
                            listener.close()
                        listener = None
                    self.stop_event.wait(self.sweep_interval)
        finally:
            if listener is not None:
                listener.close()
            connection.close()

    def _wait(self, listener: Any) -> None:
        if listener is None:
            self.wake.wait(self.sweep_interval)
            self.wake.clear()
            return
        deadline = time.monotonic() + self.sweep_interval
        while not self.stop_event.is_set() and not self.wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices so stop() is quick; any notification means "look now".
            got = list(listener.notifies(timeout=min(remaining, 0.2), stop_after=1))
            if got:
                # Drain what arrived together (one sweep serves them all); the generator holds
                # the connection's lock, so it is never nested.
                list(listener.notifies(timeout=0.0))
                return
        self.wake.clear()

    def dispatch_once(self) -> int:
        """Send what is pending now; returns the number of rows looked at."""
        rows = list(
            OutboxMessage.objects.filter(
                status=OutboxStatus.PENDING, fix_session_id__in=list(self.sessions)
            ).order_by("pk")[: self.batch]
        )
        if not rows:
            return 0
        recorded: dict[tuple[str, str], int | None] = {}
        for cl_ord_id, msg_type, seq in (
            FixMessage.objects.filter(
                direction=Direction.OUT,
                cl_ord_id__in=[r.cl_ord_id for r in rows],
                poss_dup=False,
            )
            .order_by("pk")
            .values_list("cl_ord_id", "msg_type", "seq_num")
        ):
            recorded.setdefault((cl_ord_id, msg_type), seq)
        statuses: dict[str, Any] = {}
        done: list[int] = []
        for row in rows:
            key = self.sessions[row.fix_session_id]
            status = statuses.get(key)
            if status is None:
                status = statuses[key] = self.gateway.session_status(key)
            if not status.logged_on:
                continue
            seq = recorded.get((row.cl_ord_id, row.msg_type), -1)
            nxt = status.next_sender_seq_num
            if seq != -1 and seq is not None and nxt is not None and seq < nxt:
                done.append(row.pk)  # it left before a restart; QuickFIX resends if needed
                continue
            try:
                from orders.services.routing import outbox_request

                request = outbox_request(row.msg_type, row.payload)
                ok = self.gateway.send(key, request)
            except (MessageBuildError, KeyError, TypeError, ValueError) as exc:
                self._fail(row, str(exc))
                continue
            if ok:
                done.append(row.pk)
                self.sent += 1
            else:
                statuses[key] = self.gateway.session_status(key)
            if len(done) >= 100:
                self._mark_sent(done)
                done = []
        self._mark_sent(done)
        return len(rows)

    def _mark_sent(self, ids: list[int]) -> None:
        if ids:
            OutboxMessage.objects.filter(pk__in=ids, status=OutboxStatus.PENDING).update(
                status=OutboxStatus.SENT, sent_at=timezone.now(), attempts=F("attempts") + 1
            )

    def _fail(self, row: OutboxMessage, error: str) -> None:
        from orders.services.routing import outbox_mark_failed

        logger.error("outbox row %s cannot be sent: %s", row.pk, error)
        outbox_mark_failed(outbox_id=row.pk, error=error)


class GatewayRunner:
    """The whole gateway: QuickFIX sessions, outbox dispatcher, session-state writer."""

    def __init__(
        self,
        rows: list[SessionRow],
        *,
        sweep_interval: float = 1.0,
        status_interval: float = 2.0,
        listen: bool = True,
        max_resend_age: float | None = None,
        background_events: bool = False,
    ) -> None:
        self.rows = rows
        # True in the gateway process: blotter events leave from a background thread.
        self.background_events = background_events
        self.handler = DjangoGatewayHandler()
        # One QuickFIX thread per session: sessions never wait on each other's fills.
        self.gateway = Gateway(
            [r.spec for r in rows], self.handler, threaded=True, max_resend_age=max_resend_age
        )
        # One dispatcher per session: sessions send in parallel (their durable commits group
        # in PostgreSQL), and each session's messages still leave in outbox order.
        self.dispatchers = [
            OutboxDispatcher(
                self.gateway, {r.pk: r.key}, sweep_interval=sweep_interval, listen=listen
            )
            for r in rows
        ]
        self.status_interval = status_interval
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect the sessions and start the threads."""
        if self.background_events:
            from oms_site.realtime import send_in_background

            send_in_background()
        self.gateway.start()
        for dispatcher in self.dispatchers:
            dispatcher.start()
        self._status_thread = threading.Thread(
            target=self._status_loop, name="fix-session-status", daemon=True
        )
        self._status_thread.start()

    def stop(self) -> None:
        """Stop sending, log out, stop QuickFIX, write the final session state."""
        for dispatcher in self.dispatchers:
            dispatcher.stop_event.set()
            dispatcher.wake.set()
        for dispatcher in self.dispatchers:
            dispatcher.stop()
        self._stop.set()
        self.handler.state_changed.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=10)
        self.gateway.stop()
        try:
            self.write_status(stopped=True)
        except Exception:
            logger.exception("could not write the final session state")
        finally:
            self.handler.close_connections()

    def wait_logged_on(self, timeout: float = 10.0) -> bool:
        """Block until every session is logged on."""
        return self.gateway.wait_logged_on(timeout=timeout)

    def write_status(self, *, stopped: bool = False) -> None:
        """Write logged_on and sequence numbers of every session to its FixSession row."""
        now = timezone.now()
        for row in self.rows:
            status = self.gateway.session_status(row.key)
            values: dict[str, Any] = {
                "status_at": now,
                "logged_on": status.logged_on and not stopped,
            }
            if status.next_sender_seq_num is not None:
                values["next_sender_seq"] = status.next_sender_seq_num
            if status.next_target_seq_num is not None:
                values["next_target_seq"] = status.next_target_seq_num
            FixSession.objects.filter(pk=row.pk).update(**values)

    def _status_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.write_status()
                except Exception:
                    logger.exception("session state not written")
                    _drop_broken_connection()
                self.handler.state_changed.wait(self.status_interval)
                self.handler.state_changed.clear()
                if self.gateway.running:
                    # A logon makes pending orders of that session sendable: look now.
                    for dispatcher in self.dispatchers:
                        dispatcher.wake.set()
        finally:
            connection.close()


def seq_of(raw: str) -> int | None:
    """MsgSeqNum of a raw message (re-exported for tests)."""
    return seq_num_of(raw)
