"""Blotter events: built inside the transaction, sent to narrow Channels groups after commit.

Groups: `acct-<account id>` (PMs of the account), `desk-<desk id>` (the desk's traders) and
`firm` (compliance, back office, administrators). Delivery is at most once, so every event
carries the order's version; clients refetch on a gap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from oms_site.audit import json_safe

log = logging.getLogger(__name__)

FIRM_GROUP = "firm"


def account_group(account_id: int) -> str:
    """The group of everyone entitled to one account's events."""
    return f"acct-{account_id}"


def desk_group(desk_id: int) -> str:
    """The group of a desk's traders."""
    return f"desk-{desk_id}"


def groups_for_account(account_id: int, desk_id: int | None) -> list[str]:
    """Every group an event about this account's order goes to."""
    groups = [account_group(account_id), FIRM_GROUP]
    if desk_id is not None:
        groups.append(desk_group(desk_id))
    return groups


def publish_on_commit(
    *,
    event_type: str,
    order_id: int | None,
    version: int | None,
    data: dict[str, Any],
    groups: Iterable[str],
) -> None:
    """Queue a blotter event to be sent once the current transaction commits."""
    message = {
        "type": "blotter.event",
        "event": {
            "type": event_type,
            "order_id": order_id,
            "version": version,
            "data": json_safe(data),
        },
    }
    _send_on_commit([(group, message) for group in dict.fromkeys(groups)])


class _Hop:
    """Blotter events queued back to back in one transaction: sent in one hop after commit."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        self.items = items

    def __call__(self) -> None:
        _send_many(self.items)


def _send_on_commit(items: list[tuple[str, dict[str, Any]]]) -> None:
    """`_send_many(items)` once the current transaction commits (at once outside one).

    Joined to the hop queued right before it when that is the transaction's last commit hook
    and was queued under the same savepoints (so a rollback to a savepoint drops both or
    neither): the gateway's batch of 50 fills then sends its events in one hop, one channel
    layer round trip, instead of 50. The events go out in the order they were queued, as
    with one hop each (hops are sent one after another, in order; _send_all)."""
    conn = transaction.get_connection()
    if conn.in_atomic_block and conn.run_on_commit:
        sids, last, robust = conn.run_on_commit[-1]
        if type(last) is _Hop and not robust and sids == set(conn.savepoint_ids):
            last.items += items
            return
    transaction.on_commit(_Hop(items))


# Added by the orders helper (additive): one hop to the channel layer for many events. Sending
# 500 basket events one async_to_sync call at a time cost ~4 ms per group_send here.
SEND_CONCURRENCY = 16


_batch_lock: Any = None


async def _send_all(layer: Any, items: list[tuple[str, dict[str, Any]]]) -> None:
    import asyncio

    global _batch_lock
    if _batch_lock is None:
        _batch_lock = asyncio.Lock()
    gate = asyncio.Semaphore(SEND_CONCURRENCY)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for group, message in items:
        by_group.setdefault(group, []).append(message)

    async def one_group(group: str, messages: list[dict[str, Any]]) -> None:
        # A group's events go out in commit order; different groups go out concurrently. Many
        # events for one group travel as one `blotter.events` message: a group_send costs a
        # Redis round trip whatever its size, so a busy gateway's backlog cannot outgrow it.
        async with gate:
            for message in _coalesce(messages):
                try:
                    await layer.group_send(group, message)
                except Exception:  # a full channel or Redis outage must not break the write
                    log.exception("blotter event to %s not delivered", group)

    send_many = getattr(layer, "group_send_many", None)
    # Batches (one per commit) are sent one after another, in the order they were queued.
    async with _batch_lock:
        if send_many is None:
            await asyncio.gather(*(one_group(g, m) for g, m in by_group.items()))
            return
        # The pub/sub layer publishes the whole batch in one pipelined round trip (a group's
        # messages in order) instead of one per group.
        batch = [
            (g, message) for g, messages in by_group.items() for message in _coalesce(messages)
        ]
        try:
            await send_many(batch)
        except Exception:  # a Redis outage must not break the write
            log.exception("%d blotter messages not delivered", len(batch))


# Events per coalesced message: keeps one Redis message well under a megabyte.
MAX_EVENTS_PER_MESSAGE = 200


def _coalesce(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group's messages in order, runs of `blotter.event` merged into `blotter.events`."""
    if len(messages) <= 1:
        return messages
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) == 1:
            out.append({"type": "blotter.event", "event": run[0]})
        elif run:
            out.append({"type": "blotter.events", "events": list(run)})
        run.clear()

    for message in messages:
        if message.get("type") != "blotter.event":
            flush()
            out.append(message)
            continue
        run.append(message["event"])
        if len(run) >= MAX_EVENTS_PER_MESSAGE:
            flush()
    flush()
    return out


def _send_many(items: list[tuple[str, dict[str, Any]]]) -> None:
    if not items:
        return
    if _background is not None:
        _background.put(items)
        return
    _send_now(items)


# One long-lived event loop per process sends every event: async_to_sync from sync code would
# build a new loop, and with it a new Redis connection, for each commit (40 ms p99 under load).
_loop_lock = threading.Lock()
_loop_state: dict[str, Any] = {"pid": None, "loop": None}


def _sender_loop() -> asyncio.AbstractEventLoop:
    with _loop_lock:
        # A Celery prefork child inherits the parent's state but not its thread: start anew.
        if _loop_state["pid"] != os.getpid() or _loop_state["loop"] is None:
            global _batch_lock
            _batch_lock = None  # an asyncio.Lock belongs to the loop that first used it
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="blotter-loop", daemon=True).start()
            _loop_state.update(pid=os.getpid(), loop=loop)
        return _loop_state["loop"]


def _report(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("blotter events not delivered: %r", exc)


SEND_TIMEOUT_SECONDS = 10.0


def _send_now(items: list[tuple[str, dict[str, Any]]]) -> Any:
    layer = get_channel_layer()
    if layer is None or not items:
        return None
    try:
        future = asyncio.run_coroutine_threadsafe(_send_all(layer, items), _sender_loop())
        future.add_done_callback(_report)
        return future
    except Exception:
        log.exception("%d blotter events not delivered", len(items))
        return None


def publish_many_on_commit(
    *, events: Iterable[dict[str, Any]], data_json_safe: bool = False
) -> None:
    """Queue many blotter events (keys of publish_on_commit) to be sent in one hop after commit.

    `data_json_safe=True` is for callers that built each event's data with json_safe's
    conversions already: a 1,000-order block fill spent about a tenth of its Python time
    walking its events' data a second time.
    """
    items: list[tuple[str, dict[str, Any]]] = []
    append = items.append
    for e in events:
        message = {
            "type": "blotter.event",
            "event": {
                "type": e["event_type"],
                "order_id": e["order_id"],
                "version": e["version"],
                "data": e["data"] if data_json_safe else json_safe(e["data"]),
            },
        }
        groups = e["groups"]
        for group in dict.fromkeys(groups) if len(groups) > 1 else groups:
            append((group, message))
    if items:
        _send_on_commit(items)


def publish_messages_on_commit(items: list[tuple[str, dict[str, Any]]]) -> None:
    """Queue (group, message) pairs to be sent in one hop after commit, as
    publish_many_on_commit queues them: each message a `{"type": "blotter.event", "event":
    {"type", "order_id", "version", "data"}}` built by the caller with its data JSON-safe
    (execution_apply's block fills: one pass over 1,000 orders instead of an event dict each,
    walked again here)."""
    if items:
        _send_on_commit(items)


# Added by the FIX/routing helper (additive): the FIX gateway applies execution reports on one
# thread, where waiting ~2.5 ms+ on Redis per event would throttle fills; it sends events from a
# background thread instead (FIFO, so per-order version order is kept).
_background: _Background | None = None


class _Background:
    """Hops handed from any thread to the sender loop's thread, which sends them in order.

    Everything queued while a hop is being sent goes in the next hop (FIFO kept), and the next
    hop waits for the current one: a slow Redis makes hops bigger, not the queue longer.

    Why the loop's own thread drains the queue: a consumer thread that took each hop off a
    `queue.Queue`, passed it to the loop and waited for its future cost three cross-thread
    wake-ups per hop (queue, loop, future) instead of one. Whole orders in process, one hop
    each, two runs of 400 and 600 alternated pairs: -71 and -141 us of CPU per order (median
    pair differences; 57 and 61 % of pairs lower). Under load, hops carry several orders.
    """

    def __init__(self) -> None:
        self.pending: deque[list[tuple[str, dict[str, Any]]]] = deque()
        self.draining = False  # read and written on the sender loop's thread only
        self.task: asyncio.Task[None] | None = None  # the loop keeps only weak references
        self.pid = os.getpid()

    def put(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        loop = _sender_loop()
        if self.pid != os.getpid():
            # A forked child (Celery prefork) starts its own loop (_sender_loop); what the
            # parent had queued or was sending is the parent's.
            self.pending.clear()
            self.draining = False
            self.task = None
            self.pid = os.getpid()
        loop.call_soon_threadsafe(self._arrive, items)

    def _arrive(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        self.pending.append(items)
        if not self.draining:
            self.draining = True
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending:
                items = self.pending.popleft()
                while self.pending:
                    items = items + self.pending.popleft()
                await self._send(items)
        finally:
            self.draining = False

    async def _send(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            layer = get_channel_layer()
            if layer is None:
                return
            task = asyncio.ensure_future(_send_all(layer, items))
            task.add_done_callback(_report)
            # Not cancelled after the timeout, as the waiting thread did not cancel it either:
            # the next hop's _send_all waits for it on its lock.
            done, _ = await asyncio.wait({task}, timeout=SEND_TIMEOUT_SECONDS)
            if not done:
                raise TimeoutError(f"no answer in {SEND_TIMEOUT_SECONDS} s")
            task.result()
        except Exception:
            log.exception("%d blotter events not delivered", len(items))


def send_in_background() -> None:
    """From now on, this process sends blotter events from its sender loop's thread."""
    global _background
    if _background is not None:
        return
    _background = _Background()
