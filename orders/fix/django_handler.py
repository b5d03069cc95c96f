"""The Django side of the FIX gateway: records every message, applies reports, drains the outbox.

`GatewayRunner` = a QuickFIX `Gateway` with `DjangoGatewayHandler`, an `OutboxDispatcher` thread
and a session-state writer thread. `manage.py run_fix_gateway` runs one; tests and the routing
benchmark run one in a thread of their own process.

Inbound: on QuickFIX's thread of the session the raw message is committed to FixMessage (an
application message waits for the WAL flush: from then on a crash cannot lose it), and the
callback hands the report to one of a few applier threads and returns, so the session reads
on while reports are applied. Appliers (own connections) take whatever is queued and apply a
session's consecutive ExecutionReports in one transaction with `executions_apply` (one by one
with `execution_apply` if the batch fails; both idempotent on session + ExecID), and the reject
services one by one; every report of one placement goes to the same applier, so a placement's
reports are applied in arrival order while placements are applied in parallel. Queues are bounded (QuickFIX's thread waits when they are full), so at most
`recovery_window` reports of a session are stored but unapplied; `recover()` applies those at
the next start, before the sessions connect. Failing to store the raw message is re-raised so
QuickFIX retries and finally rewinds the sequence number (the broker resends); an applier
retries a database failure until it passes; a business-rule error is logged, and does not
block the placement.

Outbound: `on_outbound` stores a message (with its MsgSeqNum) before QuickFIX puts it on the
wire; if that fails the message is not sent. Order messages from the outbox are the exception:
the dispatcher recorded them already (below), so on_outbound only notes their number.

Outbox (dispatcher thread): LISTEN oms_outbox and a sweep every `sweep_interval` seconds read
pending rows of this gateway's sessions in id order. A chunk of rows is recorded in ONE durable
commit before any of it is sent (no MsgSeqNum yet: QuickFIX numbers a message as it sends it),
then sent, then its numbers and wire texts are written with the rows marked sent, one commit.
Restart safety, for a pending row: recorded with a MsgSeqNum below the session's next sender
number, it left (QuickFIX's own resend answers the broker if the broker missed it), so it is
only marked sent; recorded with a number QuickFIX never reached, it did not leave; recorded
without a number (the process died between the two commits), QuickFIX's FileStore decides,
because QuickFIX writes a message there before it writes it to the socket: found, it left;
absent, it never left and is sent now. Never recorded: never sent.
One gateway process owns a set of sessions: two processes must not serve the same session.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.backends.signals import connection_created
from django.utils import timezone

from oms_site.errors import DomainError
from oms_site.models import AuditEvent
from oms_site.rows import fast_datetimes, model_from_row
from orders.enums import Direction, OrderStatus, OutboxStatus
from orders.fix.common import seq_num_of
from orders.fix.gateway import Gateway, SessionSpec
from orders.fix.messages import (
    ADMIN_MSG_TYPES,
    BusinessReject,
    CancelReject,
    ExecReport,
    MessageBuildError,
    OutboundMessage,
    OutboundRequest,
    ParsedMessage,
    build_message,
    parse_message,
    split_fields,
)
from orders.models import Execution, FixMessage, FixSession, Order, OutboxMessage, Placement

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
    used for inbound admin messages (a heartbeat lost in a database crash is harmless).
    Application messages wait: inbound ones are applied after QuickFIX counted them received,
    and the restart logic of the outbox depends on the outbound ones.
    """
    values = _fields(raw)
    if not wait_for_flush:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            return _insert_message(session_key, direction, raw, values)
    return _insert_message(session_key, direction, raw, values)


_INSERT_MESSAGE_SQL = (
    f"INSERT INTO {FixMessage._meta.db_table} "
    "(session_key, direction, msg_type, seq_num, poss_dup, cl_ord_id, raw, received_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)


def _message_row(session_key: str, direction: str, raw: str, values: dict[int, str]) -> list[Any]:
    """The values of `_INSERT_MESSAGE_SQL` for one message."""
    seq = values.get(34, "")
    return [
        session_key,
        direction,
        values.get(35, "")[:4],
        int(seq) if seq.isdigit() else None,
        values.get(43) == "Y",
        values.get(11, "")[:64],
        raw,
        timezone.now(),
    ]


_MESSAGE_COLUMNS = (
    "session_key",
    "direction",
    "msg_type",
    "seq_num",
    "poss_dup",
    "cl_ord_id",
    "raw",
    "received_at",
)


def _insert_message(
    session_key: str, direction: str, raw: str, values: dict[int, str]
) -> FixMessage:
    # A constant INSERT: every message in and out passes here, and Model.objects.create
    # compiles the statement each time (about 1 ms of a QuickFIX thread's time per message).
    values_list = _message_row(session_key, direction, raw, values)
    row = dict(zip(_MESSAGE_COLUMNS, values_list, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_MESSAGE_SQL, values_list)
        (row["id"],) = cursor.fetchone()
    return model_from_row(FixMessage, row)


def _plain_connection_params() -> dict[str, Any]:
    """Django's connection parameters for a plain psycopg connection of our own."""
    params = dict(connection.get_connection_params())
    for name in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(name, None)
    return params


_gateway_thread = threading.local()


def _prepare_statements() -> None:
    """Let this gateway thread's database connection prepare the statements it repeats.

    Each gateway thread (QuickFIX's database threads, appliers, dispatchers) keeps one
    connection for the life of the process and runs a handful of constant statements on it
    thousands of times: after `DB_PREPARE_THRESHOLD` runs psycopg prepares one, and PostgreSQL
    no longer parses and plans it (the applier's locking reads cost 3-4 times as long to plan
    as to run). Django turns preparing off by default (for PgBouncer in transaction mode);
    `DB_PREPARE_THRESHOLD=off` keeps it off here too. A connection opened later on this
    thread (after a database failure) is set up the same way (`_on_connection_created`).
    """
    _gateway_thread.prepare = True
    if connection.connection is not None:
        prepare_connection(connection.connection)


def prepare_connection(conn: Any) -> None:
    """Set up a psycopg connection to prepare the statements it repeats, as a gateway thread's.

    With `DB_GENERIC_PLANS` (on by default) its prepared statements also keep one generic plan
    (`plan_cache_mode`, for this session only): PostgreSQL's default kept planning a fill's three
    largest statements (the fills and positions read, the allocation write, the audit insert)
    for their parameters on every run, because their generic plans' estimated cost, guessing 10
    elements per array, exceeds that of a custom plan; those plans are the same index look-ups.
    Nothing is set when preparing is off (a pooler in transaction mode would hand the session
    setting to other clients).

    Those plans are made once, guessing 10 elements for every array parameter, against the
    table sizes of the moment; with the server's `random_page_cost` (4, made for disks) the
    planner then hashed whole tables for a fill of a few orders: all the accounts to join the
    block's orders, the audit stream heads three times (seq scans of 2,200 and 1,000 rows
    where a few index look-ups do). With `DB_RANDOM_PAGE_COST` (1.1 by default: the book is in
    memory), set in the same statement, those plans look the rows up by index. A 1,000-order
    fill's plans then do so too (its positions, the reference check's accounts), where hashing
    the benchmark's 2,200-row tables was about as cheap: within 2 ms of its ~65 ms of
    PostgreSQL CPU (measured in the README; custom plans for big fills cost more).
    """
    conn.prepare_threshold = settings.DB_PREPARE_THRESHOLD
    if settings.DB_PREPARE_THRESHOLD is not None and settings.DB_GENERIC_PLANS:
        if settings.DB_RANDOM_PAGE_COST is None:
            conn.execute("SELECT set_config('plan_cache_mode', 'force_generic_plan', false)")
        else:
            conn.execute(
                "SELECT set_config('plan_cache_mode', 'force_generic_plan', false), "
                "set_config('random_page_cost', %s, false)",
                [str(settings.DB_RANDOM_PAGE_COST)],
            )


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if getattr(_gateway_thread, "prepare", False):
        prepare_connection(connection.connection)


connection_created.connect(_on_connection_created, dispatch_uid="orders.fix.prepare_statements")


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
    message is stored before QuickFIX counts it as received. Used for outbound records and
    inbound admin messages; inbound application messages, the hot path, are stored on the
    callback's own thread with a plain connection per session (`_SessionStore`).
    """

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=name, initializer=_prepare_statements
        )

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


class _SessionStore:
    """A session's own connection for storing its inbound application messages on QuickFIX's
    thread of the session, in the callback itself.

    Why not a `_DbThread`: handing each report to another thread and waiting for it cost two
    thread wake-ups per message (GIL hand-overs included) on the path from receipt to commit.
    A plain psycopg connection (autocommit: each INSERT commits and waits for the WAL flush)
    does not depend on Django's per-thread connection, which QuickFIX's native threads cannot
    keep. QuickFIX calls a session's callbacks on one thread at a time; the lock covers
    `close()` from another thread.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(autocommit=True, **self._params)
            self._conn.prepare_threshold = settings.DB_PREPARE_THRESHOLD
        return self._conn

    def insert(self, row: list[Any]) -> int:
        """INSERT one FixMessage row (the values of `_INSERT_MESSAGE_SQL`); its id."""
        import psycopg

        with self._lock:
            try:
                cursor = self._connection().execute(_INSERT_MESSAGE_SQL, row)
                return int(cursor.fetchone()[0])
            except psycopg.Error:
                self._drop()
                raise

    def placement_of(self, cl_ord_ids: list[str]) -> int | None:
        """The placement whose outbox row carries one of these ClOrdIDs (the first row)."""
        import psycopg

        with self._lock:
            try:
                row = self._connection().execute(_PLACEMENT_OF_SQL, [cl_ord_ids]).fetchone()
            except psycopg.Error:
                self._drop()
                raise
        return None if row is None else int(row[0])

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the connection (it reopens on the next insert)."""
        with self._lock:
            self._drop()


_PLACEMENT_OF_SQL = (
    f"SELECT placement_id FROM {OutboxMessage._meta.db_table} "
    "WHERE cl_ord_id = ANY(%s::varchar[]) ORDER BY id LIMIT 1"
)


@dataclass(slots=True)
class _Inbound:
    """A stored inbound application message waiting for its applier."""

    session_key: str
    parsed: ParsedMessage
    raw_id: int
    received: float  # perf_counter() when QuickFIX handed it over
    recorded: float  # perf_counter() when its raw row was committed


# Transient database trouble (connection lost, server restarting): retried until it passes.
_TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


class _Applier:
    """One thread with its own database connection applying stored reports in queue order.

    It takes everything queued (up to `batch_size`) and applies a session's consecutive
    execution reports in one transaction (`executions_apply`), one by one if that fails.

    Every report of one placement goes to the same applier (see `partition`), so a placement's
    acknowledgement, fills and cancel are applied in the order the broker sent them, while
    different placements are applied in parallel. The queue is bounded: when the appliers fall
    behind, QuickFIX's thread waits and TCP pushes back on the broker, and the number of stored
    but unapplied reports stays below `DjangoGatewayHandler.recovery_window`.
    """

    def __init__(self, handler: DjangoGatewayHandler, index: int, capacity: int) -> None:
        self.handler = handler
        self.queue: queue.Queue[_Inbound | None] = queue.Queue(maxsize=capacity)
        self.thread = threading.Thread(target=self._run, name=f"fix-apply-{index}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        _prepare_statements()
        try:
            stopping = False
            while not stopping:
                # Whatever queued up while the last batch was applied goes in one transaction:
                # the busier the gateway, the bigger (and cheaper per report) the batches.
                items: list[_Inbound] = []
                taken = 0
                lingered = False
                while not stopping and len(items) < self.handler.batch_size:
                    try:
                        item = self.queue.get() if taken == 0 else self.queue.get_nowait()
                    except queue.Empty:
                        # A message of these sessions being stored right now (a fill right
                        # behind its acknowledgement) joins this transaction instead of
                        # waiting for it to commit: wait for that store, once, briefly.
                        if lingered or not self.handler.wait_stored(items):
                            break
                        lingered = True
                        continue
                    taken += 1
                    if item is None:
                        stopping = True
                    else:
                        items.append(item)
                try:
                    if items:
                        self.handler._apply_items(items)
                finally:
                    for _ in range(taken):
                        self.queue.task_done()
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Apply what is queued, then end the thread (and close its connection)."""
        self.queue.put(None)
        self.thread.join(timeout=timeout)


class DjangoGatewayHandler:
    """GatewayHandler storing messages in FixMessage and applying reports through services.

    Inbound, on QuickFIX's thread of the session: the raw message is committed (durably, so a
    report survives a gateway crash once QuickFIX counts it as received), then the report is
    queued to its applier and the callback returns. Appliers run `execution_apply` and the
    reject services on their own threads and connections. A gateway killed with reports still
    queued applies them at its next start (`recover`), before any session connects.
    """

    def __init__(
        self,
        *,
        latency_samples: int = 100_000,
        appliers: int = 4,
        queue_size: int = 16,
        retry_delay: float = 0.2,
        batch_size: int = 16,
        linger: float = 0.005,
        follow_gap: float = 0.002,
    ) -> None:
        self.state_changed = threading.Event()
        self.fill_latencies: collections.deque[float] = collections.deque(maxlen=latency_samples)
        # Where the time of each applied report goes (seconds): raw message committed, waiting
        # for its applier, applying (service call to commit).
        self.stage_latencies: dict[str, collections.deque[float]] = {
            name: collections.deque(maxlen=latency_samples) for name in ("record", "queue", "apply")
        }
        # Fills from the broker's SendingTime (ms precision, same host in the benchmark) to
        # commit: also counts time spent in socket buffers while the queues are full.
        self.wire_latencies: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.fills_applied = 0
        self.retry_delay = retry_delay
        self.queue_size = queue_size
        self.batch_size = max(1, batch_size)
        self.applier_count = max(1, appliers)
        # Raw messages are stored on a thread per session (inbound) and per session (outbound):
        # sessions never wait on each other and a burst of reports never delays an order out.
        self._inbound: dict[str, _DbThread] = {}
        # Application messages: stored on QuickFIX's thread with the session's own connection.
        self._stores: dict[str, _SessionStore] = {}
        self._store_params: dict[str, Any] | None = None
        self._outbound: dict[str, _DbThread] = {}
        self._appliers: list[_Applier] = []
        # ClOrdID -> placement pk: the partition key of a report (the dispatcher fills it before
        # sending; a miss is looked up in the outbox).
        self._placements: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Session key -> {ClOrdID: record pk} the outbox dispatcher recorded before sending, and
        # the (MsgSeqNum, raw) QuickFIX gave each of them (see expect_outbound).
        self._expected: dict[str, dict[str, int]] = {}
        self._numbered: dict[str, dict[str, tuple[int, str]]] = {}
        self._outbound_lock = threading.Lock()
        # Session key -> application messages being stored on QuickFIX's thread now, so an
        # applier about to commit can take a report that is moments from its queue.
        self._storing: dict[str, int] = {}
        self._storing_changed = threading.Condition()
        self.linger = linger
        # An acknowledgement's fill is usually read with it: after QuickFIX's thread stored
        # the acknowledgement it takes a moment (parsing, sequence numbers) before it starts
        # storing the fill, so an applier holding an acknowledgement waits this long for a
        # store of its session to start (then for it, as for any store under way).
        self.follow_gap = follow_gap

    @property
    def recovery_window(self) -> int:
        """At most this many stored reports of one session can be unapplied at any moment.

        Per applier: a full queue and the batch it is applying; plus the one QuickFIX's thread
        stored and is waiting to queue.
        """
        return self.applier_count * (self.queue_size + self.batch_size) + 1

    def _thread(self, threads: dict[str, _DbThread], session_key: str, name: str) -> _DbThread:
        thread = threads.get(session_key)
        if thread is None:
            with self._lock:
                thread = threads.get(session_key)
                if thread is None:
                    thread = threads[session_key] = _DbThread(name)
        return thread

    def _applier_list(self) -> list[_Applier]:
        appliers = self._appliers
        if not appliers:
            with self._lock:
                if not self._appliers:
                    self._appliers = [
                        _Applier(self, i, self.queue_size) for i in range(self.applier_count)
                    ]
                appliers = self._appliers
        return appliers

    def close_connections(self) -> None:
        """Apply what is queued, then close the database threads (after the gateway stopped)."""
        with self._lock:
            self._closed = True
            appliers, self._appliers = self._appliers, []
            threads = [*self._inbound.values(), *self._outbound.values()]
            self._inbound, self._outbound = {}, {}
            stores, self._stores = list(self._stores.values()), {}
        for applier in appliers:
            applier.stop()
        for thread in threads:
            thread.close()
        for store in stores:
            store.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued report is applied (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        for applier in list(self._appliers):
            while applier.queue.unfinished_tasks:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
        return True

    def remember_placement(self, cl_ord_id: str, placement_id: int) -> None:
        """Note which placement a ClOrdID about to be sent belongs to (partitioning)."""
        placements = self._placements
        if len(placements) >= 200_000:
            placements.clear()  # a long-lived gateway: misses are looked up in the outbox
        placements[cl_ord_id] = placement_id

    def on_logon(self, session_key: str) -> None:
        self.state_changed.set()

    def on_logout(self, session_key: str) -> None:
        self.state_changed.set()

    def expect_outbound(self, session_key: str, records: dict[str, int]) -> None:
        """These ClOrdIDs are recorded already (durably): on_outbound only notes their number."""
        with self._outbound_lock:
            self._expected.setdefault(session_key, {}).update(records)

    def take_outbound(self, session_key: str) -> dict[str, tuple[int, str]]:
        """(MsgSeqNum, raw) of the expected messages sent since expect_outbound; forgets them."""
        with self._outbound_lock:
            self._expected.pop(session_key, None)
            return self._numbered.pop(session_key, {})

    def on_outbound(self, session_key: str, raw: str) -> None:
        if self._expected.get(session_key) and self._note_expected(session_key, raw):
            return
        self._thread(self._outbound, session_key, "fix-out-db").run(
            self._record_outbound, session_key, raw
        )

    def _note_expected(self, session_key: str, raw: str) -> bool:
        values = _fields(raw)
        if values.get(43) == "Y" or values.get(35, "") in ADMIN_MSG_TYPES:
            return False  # a resend or an admin message: recorded as it goes
        seq = values.get(34, "")
        with self._outbound_lock:
            expected = self._expected.get(session_key)
            cl_ord_id = values.get(11, "")
            if not expected or cl_ord_id not in expected or not seq.isdigit():
                return False
            del expected[cl_ord_id]
            self._numbered.setdefault(session_key, {})[cl_ord_id] = (int(seq), raw)
        return True

    def on_inbound(self, session_key: str, raw: str, parsed: ParsedMessage) -> None:
        received = time.perf_counter()
        admin = parsed.header.msg_type in ADMIN_MSG_TYPES
        if admin:
            self._thread(self._inbound, session_key, "fix-in-db").run(
                self._store_inbound, session_key, raw, parsed, admin, received
            )
            return
        with self._storing_changed:
            self._storing[session_key] = self._storing.get(session_key, 0) + 1
            self._storing_changed.notify_all()  # an applier waiting for a store to start
        try:
            store = self._session_store(session_key)
            raw_id = store.insert(_message_row(session_key, Direction.IN, raw, _fields(raw)))
            partition = self._partition(parsed, store)
            item = _Inbound(session_key, parsed, raw_id, received, time.perf_counter())
            # Queued after the raw row is committed: from here a crash loses nothing (recover).
            self._applier_list()[partition].queue.put(item)
        finally:
            with self._storing_changed:
                self._storing[session_key] -= 1
                self._storing_changed.notify_all()

    def _session_store(self, session_key: str) -> _SessionStore:
        store = self._stores.get(session_key)
        if store is None:
            with self._lock:
                store = self._stores.get(session_key)
                if store is None:
                    if self._store_params is None:
                        self._store_params = _plain_connection_params()
                    store = self._stores[session_key] = _SessionStore(self._store_params)
        return store

    def wait_stored(self, items: list[_Inbound]) -> bool:
        """Wait (at most `linger` seconds) while an application message of the sessions of
        `items` is being stored; True if one was (it may be queued now). When the last item
        is an acknowledgement and nothing is being stored, first wait (at most `follow_gap`
        seconds) for a store of those sessions to start."""
        if not items or self.linger <= 0:
            return False
        sessions = {item.session_key for item in items}

        def storing() -> bool:
            return any(self._storing.get(key) for key in sessions)

        last = items[-1].parsed
        with self._storing_changed:
            if not storing() and not (
                self.follow_gap > 0
                and isinstance(last, ExecReport)
                and last.exec_type == "0"
                and self._storing_changed.wait_for(storing, self.follow_gap)
            ):
                return False
            self._storing_changed.wait_for(lambda: not storing(), self.linger)
        return True

    def _record_outbound(self, session_key: str, raw: str) -> None:
        try:
            record_message(session_key, Direction.OUT, raw)
        except _DB_ERRORS:
            _drop_broken_connection()
            raise

    def _store_inbound(
        self, session_key: str, raw: str, parsed: ParsedMessage, admin: bool, received: float
    ) -> tuple[int, _Inbound] | None:
        try:
            # Application messages wait for the WAL flush: they are applied after the callback
            # returned, so their stored copy is what survives a crash. A lost heartbeat is not.
            stored = record_message(session_key, Direction.IN, raw, wait_for_flush=not admin)
            if admin:
                return None
            partition = self._partition(parsed)
        except _DB_ERRORS:
            _drop_broken_connection()
            raise
        item = _Inbound(session_key, parsed, stored.pk, received, time.perf_counter())
        return partition, item

    def _partition(self, parsed: ParsedMessage, store: _SessionStore | None = None) -> int:
        ids = [
            i
            for i in (getattr(parsed, "cl_ord_id", None), getattr(parsed, "orig_cl_ord_id", None))
            if i
        ]
        placement_id = None
        for cl_ord_id in ids:
            placement_id = self._placements.get(cl_ord_id)
            if placement_id is not None:
                break
        if placement_id is None and ids:
            if store is not None:
                placement_id = store.placement_of(ids)
            else:
                placement_id = (
                    OutboxMessage.objects.filter(cl_ord_id__in=ids)
                    .values_list("placement_id", flat=True)
                    .first()
                )
            if placement_id is not None:
                for cl_ord_id in ids:
                    self.remember_placement(cl_ord_id, placement_id)
        if placement_id is None:
            return 0  # unknown orders and business rejects: one applier keeps their order
        return placement_id % self.applier_count

    def _apply_items(self, items: list[_Inbound]) -> None:
        """Apply stored reports in order: a session's consecutive ExecutionReports as a batch."""
        by_session: dict[str, list[_Inbound]] = {}
        for item in items:
            by_session.setdefault(item.session_key, []).append(item)
        for key, session_items in by_session.items():
            run: list[_Inbound] = []
            for item in session_items:
                if isinstance(item.parsed, ExecReport):
                    run.append(item)
                    continue
                self._apply_run(key, run)
                run = []
                self._apply_with_retries(item)
            self._apply_run(key, run)

    def _apply_run(self, session_key: str, run: list[_Inbound]) -> None:
        if len(run) <= 1:
            for item in run:
                self._apply_with_retries(item)
            return
        from orders.services.executions import executions_apply

        started = time.perf_counter()
        try:
            results = executions_apply(
                session_key=session_key,
                reports=[(cast(ExecReport, i.parsed), i.raw_id) for i in run],
            )
        except Exception as exc:
            # All or nothing: nothing of the batch is in the book. One by one confines the
            # failure (a report a business rule refuses, a deadlock, a lost connection) to
            # its report, with the retries of a single report.
            if isinstance(exc, _DB_ERRORS):
                _drop_broken_connection()
            logger.warning(
                "FIX %s: a batch of %d reports failed (%s: %s); applying them one by one",
                session_key,
                len(run),
                type(exc).__name__,
                exc,
            )
            for item in run:
                self._apply_with_retries(item)
            return
        done = time.perf_counter()
        for item, result in zip(run, results, strict=True):
            self._note_applied(item, result, started, done)

    def _note_applied(self, item: _Inbound, result: Any, started: float, done: float) -> None:
        self.stage_latencies["record"].append(item.recorded - item.received)
        self.stage_latencies["queue"].append(started - item.recorded)
        self.stage_latencies["apply"].append(done - started)
        if isinstance(result, Execution) and result.last_qty > 0:
            self.fill_latencies.append(done - item.received)
            self.fills_applied += 1
            sent = item.parsed.header.sending_time
            if sent is not None and not item.parsed.header.poss_dup:
                self.wire_latencies.append(time.time() - sent.timestamp())

    def _apply_with_retries(self, item: _Inbound) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._apply(item.session_key, item.parsed, item.raw_id)
                break
            except _TRANSIENT_DB_ERRORS:
                # The raw message is stored and later reports of this placement wait behind it:
                # retry until the database is back (a restart's recovery also finds it).
                _drop_broken_connection()
                if self._closed:
                    logger.error(
                        "FIX %s: message %s left for recovery", item.session_key, item.raw_id
                    )
                    return
                logger.exception(
                    "FIX %s: applying message %s failed (attempt %d); retrying",
                    item.session_key,
                    item.raw_id,
                    attempt,
                )
                time.sleep(min(5.0, self.retry_delay * attempt))
            except Exception:
                _drop_broken_connection()
                if attempt < 3:
                    logger.exception(
                        "FIX %s: applying message %s failed (attempt %d)",
                        item.session_key,
                        item.raw_id,
                        attempt,
                    )
                    time.sleep(self.retry_delay * attempt)
                    continue
                # Not a passing fault: retrying would stall the placement for ever. The raw
                # message is stored; the next start's recovery tries it again.
                logger.exception(
                    "FIX %s: message %s not applied after %d attempts",
                    item.session_key,
                    item.raw_id,
                    attempt,
                )
                return
        self._note_applied(item, result, started, time.perf_counter())

    def _apply(self, session_key: str, parsed: ParsedMessage, raw_id: int) -> Any:
        from orders.services.executions import (
            business_reject_apply,
            cancel_reject_apply,
            execution_apply,
        )

        try:
            if isinstance(parsed, ExecReport):
                return execution_apply(
                    session_key=session_key, report=parsed, raw_message_id=raw_id
                )
            if isinstance(parsed, CancelReject):
                return cancel_reject_apply(
                    session_key=session_key, reject=parsed, raw_message_id=raw_id
                )
            if isinstance(parsed, BusinessReject):
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
        return None

    def recover(self, session_keys: Iterable[str]) -> int:
        """Apply the stored reports a stopped or killed gateway never applied; returns how many.

        Run before the sessions connect, so they come before anything the broker sends or
        resends. Only a session's last `recovery_window` application messages can be unapplied
        (the queues are bounded), and each kind is checked against what its service leaves in
        the book: an Execution with the (session, ExecID), the audit event of a business
        reject or unknown cancel reject, an order still waiting for the rejected request.
        """
        applied = 0
        for key in session_keys:
            rows = list(
                FixMessage.objects.filter(
                    session_key=key, direction=Direction.IN, msg_type__in=APPLIED_MSG_TYPES
                )
                .order_by("-pk")
                .values_list("pk", "raw")[: self.recovery_window]
            )
            messages = [(pk, parse_message(raw)) for pk, raw in reversed(rows)]
            booked = set(
                Execution.objects.filter(
                    session_key=key,
                    exec_id__in=[m.exec_id for _, m in messages if isinstance(m, ExecReport)],
                ).values_list("exec_id", flat=True)
            )
            audited = set(
                AuditEvent.objects.filter(
                    action__in=("fix.business_reject", "fix.cancel_reject_unknown"),
                    object_type="fix_message",
                    object_id__in=[str(pk) for pk, _ in messages],
                ).values_list("object_id", flat=True)
            )
            for pk, message in messages:
                if isinstance(message, ExecReport):
                    pending = message.exec_id not in booked
                    booked.add(message.exec_id)
                elif isinstance(message, BusinessReject):
                    pending = str(pk) not in audited
                elif isinstance(message, CancelReject):
                    pending = str(pk) not in audited and _cancel_reject_pending(message)
                else:
                    pending = False
                if pending:
                    logger.warning("FIX %s: applying stored message %s left unapplied", key, pk)
                    self._apply(key, message, pk)
                    applied += 1
        return applied


# Inbound message types the gateway applies to the book (the rest is only stored).
APPLIED_MSG_TYPES = ("8", "9", "j")


def _cancel_reject_pending(reject: CancelReject) -> bool:
    """True while a cancel reject was not applied: its request is the latest and still pending."""
    ids = [i for i in (reject.cl_ord_id, reject.orig_cl_ord_id) if i]
    placement_id = (
        OutboxMessage.objects.filter(cl_ord_id__in=ids)
        .values_list("placement_id", flat=True)
        .first()
    )
    if placement_id is None:
        return True  # unknown: its audit event (checked by the caller) is the trace
    latest = (
        OutboxMessage.objects.filter(placement_id=placement_id, msg_type__in=["F", "G"])
        .order_by("-pk")
        .values_list("cl_ord_id", flat=True)
        .first()
    )
    if latest != reject.cl_ord_id:
        return False
    placement = Placement.objects.filter(pk=placement_id).values("order_id", "block_id").first()
    if placement is None:
        return False
    orders = (
        Order.objects.filter(block_id=placement["block_id"])
        if placement["block_id"]
        else Order.objects.filter(pk=placement["order_id"])
    )
    return orders.filter(
        status__in=[OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE]
    ).exists()


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


def listen_connection() -> Any:
    """A psycopg connection (autocommit) listening on the outbox channel."""
    import psycopg

    from orders.services.routing import OUTBOX_CHANNEL

    conn = psycopg.connect(autocommit=True, **_plain_connection_params())
    conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
    return conn


# How far a message's SendingTime may lie before its record's time (clock steps) when the store
# is searched for a recorded but unnumbered message.
STORE_CLOCK_MARGIN = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class _Record:
    """The first outbound record of a ClOrdID and message type."""

    pk: int
    seq: int | None
    at: dt.datetime


_NO_RECORD = _Record(0, 0, dt.datetime.min.replace(tzinfo=dt.UTC))


def _unsent_raw(message: OutboundMessage) -> str:
    """The message's type and body before QuickFIX adds its header (replaced once it is sent)."""
    return "".join(f"{tag}={value}\x01" for tag, value in ((35, message.msg_type), *message.fields))


# Pending rows of these sessions in id order, each with the first outbound record of its
# ClOrdID and message type (none, or one a dispatcher wrote before a restart): one constant
# statement, which every dispatcher runs on each wake-up and sweep, mostly finding nothing.
_PENDING_SQL = (
    "SELECT o.id, o.fix_session_id, o.placement_id, o.msg_type, o.cl_ord_id, o.payload, "
    "r.id, r.seq_num, r.received_at "
    f"FROM {OutboxMessage._meta.db_table} AS o LEFT JOIN LATERAL ("
    f"SELECT m.id, m.seq_num, m.received_at FROM {FixMessage._meta.db_table} AS m "
    "WHERE m.cl_ord_id = o.cl_ord_id AND m.direction = %s AND m.msg_type = o.msg_type "
    "AND NOT m.poss_dup ORDER BY m.id LIMIT 1) AS r ON true "
    "WHERE o.status = %s AND o.fix_session_id = ANY(%s) ORDER BY o.id LIMIT %s"
)


def _pending_rows(
    session_ids: list[int], limit: int
) -> tuple[list[OutboxMessage], dict[tuple[str, str], _Record]]:
    """Pending outbox rows of these sessions in id order, and the records found for them by
    (ClOrdID, message type)."""
    with connection.cursor() as cursor:
        fast_datetimes(cursor)
        cursor.execute(
            _PENDING_SQL, [Direction.OUT.value, OutboxStatus.PENDING.value, session_ids, limit]
        )
        found = cursor.fetchall()
    rows = []
    records: dict[tuple[str, str], _Record] = {}
    for pk, session_id, placement_id, msg_type, cl_ord_id, payload, *record in found:
        rows.append(
            model_from_row(
                OutboxMessage,
                {
                    "id": pk,
                    "fix_session_id": session_id,
                    "placement_id": placement_id,
                    "msg_type": msg_type,
                    "cl_ord_id": cl_ord_id,
                    "payload": json.loads(payload) if isinstance(payload, str) else payload,
                    "status": OutboxStatus.PENDING.value,
                },
            )
        )
        if record[0] is not None:
            records[(cl_ord_id, msg_type)] = _Record(*record)
    return rows, records


# The records of a chunk, written before any of it is sent: one statement, autocommit (the
# WAL flush is waited for).
_INSERT_RECORDS_SQL = (
    f"INSERT INTO {FixMessage._meta.db_table} "
    "(session_key, direction, msg_type, seq_num, poss_dup, cl_ord_id, raw, received_at) "
    "SELECT %s, %s, v.msg_type, NULL, false, v.cl_ord_id, v.raw, %s "
    "FROM unnest(%s::varchar[], %s::varchar[], %s::text[]) WITH ORDINALITY "
    "AS v(msg_type, cl_ord_id, raw, n) ORDER BY v.n RETURNING id, cl_ord_id"
)
# Rows marked sent and their records numbered: one statement, one commit.
_FINISH_SQL = (
    f"WITH numbered AS (UPDATE {FixMessage._meta.db_table} AS m "
    "SET seq_num = v.seq, raw = v.raw "
    "FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(id, seq, raw) WHERE m.id = v.id) "
    f"UPDATE {OutboxMessage._meta.db_table} SET status = %s, sent_at = %s, "
    "attempts = attempts + 1 WHERE id = ANY(%s::bigint[]) AND status = %s"
)


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
        on_send: Callable[[str, int], None] | None = None,
        recorder: DjangoGatewayHandler | None = None,
        chunk: int = 100,
    ) -> None:
        self.gateway = gateway
        self.sessions = sessions  # FixSession pk -> session key
        self.sweep_interval = sweep_interval
        self.batch = batch
        self.listen = listen
        # Called with (ClOrdID, placement pk) before a row is sent: the broker's answer can
        # arrive before send() returns.
        self.on_send = on_send
        # The handler whose on_outbound hands back the MsgSeqNum of rows recorded here.
        self.recorder = recorder
        self.chunk = chunk
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
        return listen_connection()

    def _run(self) -> None:
        _prepare_statements()
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
                got += list(listener.notifies(timeout=0.0))
                if any(self.concerns(n.payload) for n in got):
                    return
        self.wake.clear()

    def concerns(self, payload: str) -> bool:
        """Whether a notification (payload: a FixSession pk, or empty) is for this dispatcher."""
        return not payload.isdigit() or int(payload) in self.sessions

    def dispatch_once(self) -> int:
        """Send what is pending now; returns the number of rows looked at."""
        rows, records = _pending_rows(list(self.sessions), self.batch)
        if not rows:
            return 0
        by_session: dict[str, list[OutboxMessage]] = {}
        for row in rows:
            by_session.setdefault(self.sessions[row.fix_session_id], []).append(row)
        for key, session_rows in by_session.items():
            self._dispatch_session(key, session_rows, records)
        return len(rows)

    def _dispatch_session(
        self, key: str, rows: list[OutboxMessage], records: dict[tuple[str, str], _Record]
    ) -> None:
        status = self.gateway.session_status(key)
        if not status.logged_on:
            return
        nxt = status.next_sender_seq_num
        left: list[int] = []
        unnumbered: list[OutboxMessage] = []
        ready: list[OutboxMessage] = []
        for row in rows:
            record = records.get((row.cl_ord_id, row.msg_type))
            if record is None:
                ready.append(row)
            elif record.seq is None:
                unnumbered.append(row)  # recorded, then the process died before numbering it
            elif nxt is not None and record.seq < nxt:
                left.append(row.pk)  # it left before a restart; QuickFIX resends if needed
            else:
                ready.append(row)  # QuickFIX never numbered it past its store: it did not leave
        numbers: list[tuple[int, int, str]] = []
        if unnumbered:
            # The store decides: QuickFIX writes a message there before it reaches the socket.
            since = min(records[(r.cl_ord_id, r.msg_type)].at for r in unnumbered)
            lookup = getattr(self.gateway, "stored_orders", None)
            found = (
                lookup(key, [r.cl_ord_id for r in unnumbered], since - STORE_CLOCK_MARGIN)
                if lookup is not None
                else {}
            )
            for row in unnumbered:
                hit = found.get(row.cl_ord_id)
                if hit is None:
                    ready.append(row)  # never numbered, so it never left: send it now
                    continue
                left.append(row.pk)
                numbers.append((records[(row.cl_ord_id, row.msg_type)].pk, hit[0], hit[1]))
            ready.sort(key=lambda r: r.pk)  # a session's messages leave in outbox order
        self._finish(left, numbers)
        for start in range(0, len(ready), self.chunk):
            if not self._send_chunk(key, ready[start : start + self.chunk], records):
                return  # logged out meanwhile: the rest waits for the next logon

    def _send_chunk(
        self, key: str, rows: list[OutboxMessage], records: dict[tuple[str, str], _Record]
    ) -> bool:
        """Record a chunk of rows in one durable commit, send them, then mark them sent.

        The records are committed (waiting for the WAL flush) before the first message of the
        chunk reaches QuickFIX, so no message leaves unrecorded; their MsgSeqNum is known only
        once QuickFIX numbered them, and is written with the rows marked sent. A crash between
        the two leaves records without a number: `_dispatch_session` then asks QuickFIX's
        store whether each one was numbered (it left) or not (it is sent now).
        """
        from orders.services.routing import outbox_request

        messages: list[tuple[OutboxMessage, OutboundRequest, OutboundMessage]] = []
        for row in rows:
            try:
                request = outbox_request(row.msg_type, row.payload)
                message = build_message(request)
            except (MessageBuildError, KeyError, TypeError, ValueError) as exc:
                self._fail(row, str(exc))
                continue
            messages.append((row, request, message))
        if not messages:
            return True
        new = [
            (row.msg_type[:4], row.cl_ord_id[:64], _unsent_raw(message))
            for row, _, message in messages
            if records.get((row.cl_ord_id, row.msg_type), _NO_RECORD).seq is not None
        ]
        record_pks: dict[str, int] = {}
        if new:
            with connection.cursor() as cursor:
                cursor.execute(
                    _INSERT_RECORDS_SQL,
                    [
                        key,
                        Direction.OUT.value,
                        timezone.now(),
                        [m for m, _, _ in new],
                        [c for _, c, _ in new],
                        [r for _, _, r in new],
                    ],
                )
                record_pks.update((c, pk) for pk, c in cursor.fetchall())
        for row, _, _ in messages:
            record = records.get((row.cl_ord_id, row.msg_type))
            if record is not None and record.seq is None:
                record_pks[row.cl_ord_id] = record.pk
        if self.recorder is not None:
            self.recorder.expect_outbound(key, record_pks)
        sent: list[int] = []
        logged_on = True
        try:
            for row, request, _ in messages:
                if self.on_send is not None:
                    self.on_send(row.cl_ord_id, row.placement_id)
                if not self.gateway.send(key, request):
                    logged_on = False
                    break
                sent.append(row.pk)
        finally:
            numbered = self.recorder.take_outbound(key) if self.recorder is not None else {}
            self._finish(
                sent,
                [
                    (record_pks[c], seq, raw)
                    for c, (seq, raw) in numbered.items()
                    if c in record_pks
                ],
            )
        self.sent += len(sent)
        return logged_on

    def _finish(self, ids: list[int], numbers: list[tuple[int, int, str]]) -> None:
        """Mark rows sent and write the MsgSeqNum and wire text of their records, one commit."""
        if not ids and not numbers:
            return
        # One statement: if a crash loses it, the rows are pending again and their records
        # (flushed before they left) lead to QuickFIX's store, not to a resend.
        with connection.cursor() as cursor:
            cursor.execute(
                _FINISH_SQL,
                [
                    [n[0] for n in numbers],
                    [n[1] for n in numbers],
                    [n[2] for n in numbers],
                    OutboxStatus.SENT.value,
                    timezone.now(),
                    ids,
                    OutboxStatus.PENDING.value,
                ],
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
        appliers: int = 4,
        apply_batch: int = 16,
    ) -> None:
        self.rows = rows
        # True in the gateway process: blotter events leave from a background thread.
        self.background_events = background_events
        self.handler = DjangoGatewayHandler(appliers=appliers, batch_size=apply_batch)
        # One QuickFIX thread per session: sessions never wait on each other's fills.
        self.gateway = Gateway(
            [r.spec for r in rows], self.handler, threaded=True, max_resend_age=max_resend_age
        )
        # One dispatcher per session: sessions send in parallel (their durable commits group
        # in PostgreSQL), and each session's messages still leave in outbox order.
        # They do not LISTEN themselves: one listener wakes the dispatcher of the session a
        # notification names, so a route wakes one thread, not one per session.
        self.dispatchers = [
            OutboxDispatcher(
                self.gateway,
                {r.pk: r.key},
                sweep_interval=sweep_interval,
                listen=False,
                on_send=self.handler.remember_placement,
                recorder=self.handler,
            )
            for r in rows
        ]
        self.listen = listen
        self._listener: threading.Thread | None = None
        self.status_interval = status_interval
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect the sessions and start the threads."""
        if self.background_events:
            from oms_site.realtime import send_in_background

            send_in_background()
        # Reports a killed gateway stored but never applied come before anything new.
        self.handler.recover([r.key for r in self.rows])
        self.gateway.start()
        for dispatcher in self.dispatchers:
            dispatcher.start()
        if self.listen and self.dispatchers:
            self._listener = threading.Thread(
                target=self._listen_loop, name="outbox-listener", daemon=True
            )
            self._listener.start()
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
        if self._listener is not None:
            self._listener.join(timeout=10)
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

    def _listen_loop(self) -> None:
        """LISTEN oms_outbox; wake the dispatcher of the session each notification names."""
        listener = None
        try:
            while not self._stop.is_set():
                try:
                    if listener is None:
                        listener = listen_connection()
                        for dispatcher in self.dispatchers:
                            dispatcher.wake.set()  # whatever was notified while not listening
                    for note in listener.notifies(timeout=0.2):
                        for dispatcher in self.dispatchers:
                            if dispatcher.concerns(note.payload):
                                dispatcher.wake.set()
                except Exception:
                    logger.exception("outbox listener failed; reconnecting")
                    if listener is not None:
                        with contextlib.suppress(Exception):
                            listener.close()
                        listener = None
                    self._stop.wait(1.0)
        finally:
            if listener is not None:
                listener.close()

    def _status_loop(self) -> None:
        _prepare_statements()
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
