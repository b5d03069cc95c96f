"""Execution reports (35=8), cancel rejects (35=9) and business rejects (35=j) applied to the book.

`execution_apply` runs in one durable transaction and is idempotent on (session_key, ExecID):
the Execution row is inserted first with ON CONFLICT (session_key, exec_id) DO NOTHING, so the
unique constraint turns a second copy (a PossDup resend, a replayed message, a gateway retry)
into no row, and the report then changes nothing.

Which placement: every ClOrdID the firm ever sent has an OutboxMessage row (the new order and each
cancel/replace in its chain), so tag 11 or 41 of a report finds the placement even after a
replace; a report naming no known ClOrdID is stored with unknown_order=True and audited, never
dropped.

Locks: the placement, then its block, then the block's orders (or the single order) by pk, then
fill_allocate's positions by (account, instrument) and cash by (account, currency), then audit
streams: the same order as the routing services. A position or cash row that does not exist yet
is taken in the same place as one that does: made by the pass that locks the others (an INSERT
... ON CONFLICT DO UPDATE ... WHERE false, in key order), never after a later key is held, so
fills that make the same new rows cannot deadlock. A row made so that no fill moves is deleted
before the transaction ends (no empty row is left that the fills alone would not have made).

`executions_apply` applies many reports of one session in one transaction with exactly the
results of applying them one by one (see its docstring for the locks and the fallback).

Only real executions move quantities: a report with `is_fill` (ExecType 1/2/F, ExecTransType
new) stores LastQty/LastPx; other reports (acks, cancels, trade corrections/busts, restatements)
are stored with LastQty 0 and their text, so fill_allocate's sums never count them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Field
from django.db.models.base import ModelState
from django.utils import timezone
from psycopg import pq

from allocations.models import Account, BlockAllocationPolicy, CashBalance, Position
from oms_site.audit import AuditEntry, audit_record_many, json_safe
from oms_site.gcpause import collection_paused
from oms_site.realtime import groups_for_account, publish_messages_on_commit
from oms_site.rows import (
    array_literal,
    fast_datetimes,
    model_from_row,
    raw_cursor,
    rows_update,
    rows_update_statement,
)
from orders.enums import (
    TERMINAL_STATUSES,
    BlockStatus,
    OrderStatus,
    PlacementStatus,
    Side,
)
from orders.events import (
    publish_execution_created,
    publish_order_updated,
    publish_orders_updated,
)
from orders.fix.messages import (
    MSG_ORDER_CANCEL_REPLACE_REQUEST,
    SIDE_FROM_FIX,
    BusinessReject,
    CancelReject,
    ExecReport,
)
from orders.models import (
    PLACEMENT_REPORT_FIELDS,
    Block,
    Broker,
    Execution,
    FixSession,
    Instrument,
    Order,
    OutboxMessage,
    Placement,
)
from orders.state import can_transition

S = OrderStatus
P = PlacementStatus
PRICE_QUANTUM = Decimal("0.00000001")
CENT = Decimal("0.01")
ZERO = Decimal(0)
PENDING_REQUEST = frozenset({S.PENDING_CANCEL, S.PENDING_REPLACE})
PLACEMENT_DONE = frozenset({P.FILLED, P.CANCELED, P.REJECTED, P.EXPIRED})
# The order fields a fill's writing statement writes besides the quantities (fill_allocate).
_FILL_WRITES = frozenset({"status", "version", "updated_at"})
_SIDES = frozenset(Side.values)  # Side.values builds a new list on every access


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _fill_allocate() -> Any:
    from allocations.services import fill_allocate

    return fill_allocate


def _fill_read() -> Any:
    from allocations.services import fill_read

    return fill_read


def _positions_may_be_missing() -> Any:
    from allocations.services import positions_may_be_missing

    return positions_may_be_missing


def _book_merged(enabled: bool) -> Any:
    from allocations.services import book_merged

    return book_merged(enabled)


def _book_flush() -> None:
    """Send the batch's held booking writes, if any: before a statement that reads or writes
    a row they write."""
    from allocations.services import book_flush

    book_flush()


class _Context:
    """The locked rows of one report and what changed, for audit and publishing."""

    def __init__(
        self,
        placement: Placement,
        block: Block | None,
        orders: list[Order],
        entries: list[AuditEntry] | None = None,
    ) -> None:
        self.placement = placement
        self.block = block
        self.orders = orders
        self.entries: list[AuditEntry] = [] if entries is None else entries
        self.changed: dict[int, Order] = {}
        self.order_fields: set[str] = set()
        # Writes an acknowledgement left to the next report on these rows (defer_save).
        self.unsaved: dict[int, Order] = {}
        self.unsaved_fields: set[str] = set()
        self.unsaved_placement = False
        # A big block fill's read, sent before its orders were built (_EarlyFill).
        self.fill_read: Any = None

    def begin(self, entries: list[AuditEntry]) -> None:
        """Start the next report on the same locked rows."""
        self.entries = entries
        self.changed = {}
        self.order_fields = set()

    def transition(self, order: Order, target: str, *, action: str, meta: dict) -> bool:
        """Move an order if the state table allows it; False (and nothing done) otherwise."""
        if order.status == target or not can_transition(order.status, target):
            return False
        before = {"status": order.status, "version": order.version}
        order.status = target
        order.version += 1
        order.updated_at = timezone.now()
        self.entries.append(
            AuditEntry(
                action=action,
                object_type="order",
                object_id=str(order.pk),
                before=before,
                after={
                    "status": order.status,
                    "version": order.version,
                    "cum_qty": _plain(order.cum_qty),
                    "avg_px": _plain(order.avg_px),
                },
                meta=meta,
            )
        )
        self.changed[order.pk] = order
        self.order_fields.update({"status", "version", "updated_at"})
        return True

    def block_status(self, status: str, *, meta: dict, write: bool = True) -> None:
        """Move the block to `status`, audited; `write=False`: in place only (a fill's writing
        statement writes it)."""
        block = self.block
        if block is None or block.status == status:
            return
        self.entries.append(
            AuditEntry(
                action="block.status_changed",
                object_type="block",
                object_id=str(block.pk),
                before={"status": block.status, "version": block.version},
                after={"status": status, "version": block.version + 1},
                meta=meta,
            )
        )
        block.status = status
        block.version += 1
        block.updated_at = timezone.now()
        if not write:
            return
        _book_flush()
        with raw_cursor() as cursor:
            cursor.execute(_BLOCK_STATUS_SQL, [status, block.version, block.updated_at, block.pk])

    def defer_save(self) -> None:
        """Leave this report's writes of the placement and the orders to the next report on
        these rows, which writes them with its own (the rows hold the same values at commit;
        nothing between the two reads them from the database)."""
        self.unsaved.update(self.changed)
        self.unsaved_fields |= self.order_fields
        self.unsaved_placement = True

    def _orders_to_write(self) -> tuple[list[Order], list[str]]:
        """The changed orders and fields, with what an earlier report left unsaved."""
        orders = {**self.unsaved, **self.changed} if self.unsaved else self.changed
        fields = self.order_fields | self.unsaved_fields
        self.unsaved, self.unsaved_fields, self.unsaved_placement = {}, set(), False
        if not (orders and fields):
            return [], []
        return list(orders.values()), sorted(fields)

    def orders_for_fill(self) -> list[Order]:
        """The changed orders (with what an earlier report left unsaved) for a fill's writing
        statement, which writes their status, version and updated_at; none when other fields
        changed (save_orders then writes them all)."""
        if not (self.order_fields | self.unsaved_fields) <= _FILL_WRITES:
            return []
        orders, _ = self._orders_to_write()
        self.order_fields = set()  # written: save_orders has nothing left to write
        return orders

    def save_orders(self) -> None:
        """Write the changed orders (the placement is written by the caller, as a fill's
        writing statement does)."""
        orders, fields = self._orders_to_write()
        if orders:
            _book_flush()
            rows_update(Order, orders, fields)

    def save_unsaved(self) -> None:
        """Write what an earlier report left unsaved (defer_save), if anything."""
        if self.unsaved_placement:
            self.changed, self.order_fields = {}, set()
            self.save_placement_and_orders()

    def save_placement_and_orders(self) -> None:
        """Write the placement and the changed orders: one statement when both change."""
        _book_flush()
        orders, fields = self._orders_to_write()
        if not orders:
            _placement_save(self.placement)
            return
        placement = self.placement
        placement.updated_at = timezone.now()
        sql, params = rows_update_statement(Order, orders, fields)
        with raw_cursor() as cursor:
            cursor.execute(
                f"WITH placement AS ({_PLACEMENT_SAVE_SQL}) {sql}",
                [*(getattr(placement, name) for name in _PLACEMENT_FIELDS), placement.pk, *params],
            )


def _select(model: Any, alias: str, leave: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The select list of every concrete column of `model` under `alias` (but the fields named
    in `leave`), and their attnames."""
    fields = [f for f in model._meta.concrete_fields if f.name not in leave]
    return ", ".join(f'{alias}."{f.column}"' for f in fields), [f.attname for f in fields]


def _lock_or_create(key: str) -> str:
    """The ON CONFLICT clause of an INSERT ... SELECT ... ORDER BY (account_id, `key`) that
    locks and creates in one pass: a row that exists is locked FOR UPDATE (the clause names a
    key column, so its lock is FOR UPDATE's, and updates nothing: WHERE false), a missing one
    is inserted; either in the order of the SELECT. A row another transaction is inserting
    is waited for as one it has locked. The RETURNING rows are the inserted ones."""
    return (
        f"ON CONFLICT (account_id, {key}) DO UPDATE SET account_id = EXCLUDED.account_id "
        "WHERE false"
    )


class _LockSql:
    """The locking reads of `_lock`, written once: Django compiles a select_related query of
    ~100 columns on every call (most of a small fill's Python time), these are constants."""

    def __init__(self) -> None:
        user_model = get_user_model()
        p_cols, self.placement = _select(Placement, "p")
        b_cols, self.broker = _select(Broker, "br")
        k_cols, self.block = _select(Block, "k")
        i_cols, self.instrument = _select(Instrument, "i")
        o_cols, self.order = _select(Order, "o")
        # A block's orders without their filled_notional (a lone order's fills' notional; the
        # block's are the block's): a big block's 1,000 rows would parse 1,000 numerics more
        # (about 0.4 ms of Python). Left deferred on the instances (nothing reads it).
        ob_cols, self.block_order = _select(Order, "o", frozenset({"filled_notional"}))
        self.user_name = user_model.USERNAME_FIELD
        user_column = cast(Field, user_model._meta.get_field(self.user_name)).column
        # The block (with its instrument and its allocation policy's id) and then its orders,
        # locked in that order in one round trip: the orders' CTE starts with a one-time filter
        # reading the block's (an InitPlan, run before its own scan), so the block's row lock
        # is taken before the first order's, as with two statements. The first row (marked
        # true) is the block's, with what a big fill's early read is sent with
        # (`_EarlyFill.send`): the orders' ids, their accounts' ids and whether one of them
        # was never filled (h: one pass over the locking CTE's rows, so the newest versions,
        # as the orders' own rows; sorted by the caller). Then one row per order (marked
        # false): the read goes out once the first row is parsed, and the orders' rows (1,000
        # of about 40 columns for a big block) are parsed while PostgreSQL runs it. A block's
        # orders share its instrument, so their rows do not carry the instrument's columns.
        self.block_order_width = len(self.block_order) + 4
        self.block_width = len(self.block) + len(self.instrument) + 1
        self.block_orders_sql = (
            f"WITH k AS MATERIALIZED (SELECT {k_cols}, {i_cols}, pol.id "
            f"FROM {Block._meta.db_table} AS k "
            f"JOIN {Instrument._meta.db_table} AS i ON i.id = k.instrument_id "
            f"LEFT JOIN {BlockAllocationPolicy._meta.db_table} AS pol ON pol.block_id = k.id "
            "WHERE k.id = %s FOR UPDATE OF k), "
            "o AS MATERIALIZED ("
            f'SELECT {ob_cols}, a.code, a.desk_id, a.short_selling_allowed, u."{user_column}" '
            f"FROM {Order._meta.db_table} AS o "
            f"JOIN {Account._meta.db_table} AS a ON a.id = o.account_id "
            f"LEFT JOIN {user_model._meta.db_table} AS u ON u.id = o.created_by_id "
            "WHERE (SELECT count(*) FROM k) >= 0 AND o.block_id = %s "
            "ORDER BY o.id FOR UPDATE OF o), "
            "h AS (SELECT array_agg(o.id) AS ids, array_agg(o.account_id) AS accounts, "
            "COALESCE(bool_or(o.cum_qty = 0), false) AS missing FROM o) "
            "SELECT true, k.*, h.ids, h.accounts, h.missing, "
            f"{', '.join(['NULL'] * self.block_order_width)} FROM k, h "
            f"UNION ALL SELECT false, {', '.join(['NULL'] * (self.block_width + 3))}, o.* FROM o"
        )
        # The placement and, when it is a lone order's, the order: one round trip. The order is
        # locked by the second CTE, which reads the first (already locked) placement row, so
        # the placement is always locked before the order, the order every writer follows. A
        # block's placement comes with empty order columns (its block and orders are read
        # next, in that order).
        self.placement_order_sql = (
            f"WITH p AS MATERIALIZED (SELECT * FROM {Placement._meta.db_table} AS p "
            "WHERE p.id = COALESCE("
            f"(SELECT m.placement_id FROM {OutboxMessage._meta.db_table} AS m "
            "WHERE m.cl_ord_id = ANY(%s) ORDER BY m.id LIMIT 1), "
            f"(SELECT x.id FROM {Placement._meta.db_table} AS x "
            "WHERE x.cl_ord_id = ANY(%s) ORDER BY x.id LIMIT 1)) FOR UPDATE OF p), "
            f"o AS MATERIALIZED (SELECT {o_cols}, a.code, a.desk_id, a.short_selling_allowed, "
            f'u."{user_column}", {i_cols} FROM {Order._meta.db_table} AS o '
            "JOIN p ON o.id = p.order_id "
            f"JOIN {Account._meta.db_table} AS a ON a.id = o.account_id "
            f"LEFT JOIN {user_model._meta.db_table} AS u ON u.id = o.created_by_id "
            f"JOIN {Instrument._meta.db_table} AS i ON i.id = o.instrument_id FOR UPDATE OF o) "
            f"SELECT {p_cols}, {b_cols}, o.* FROM p "
            f"JOIN {Broker._meta.db_table} AS br ON br.id = p.broker_id LEFT JOIN o ON true"
        )
        # executions_apply's up-front locks, one statement: each kind in the order one report
        # takes them (placements, blocks, orders by id; positions by (account, instrument),
        # cash by (account, currency)). Each CTE after the first starts with a one-time
        # filter reading the whole previous CTE (an InitPlan, run before the CTE's own scan),
        # so every row of one kind is locked before the first row of the next; the arrays of
        # ids are InitPlan parameters, so the index scans of the one-by-one reads still apply.
        # The positions and cash are locked only when the batch holds a fill: those of every
        # (account, instrument) and (account, currency) of the orders, each kind in one sorted
        # pass that locks the rows that exist and creates the missing ones
        # (`_lock_or_create`), so that a row first made in the batch is taken in the same
        # order as one that exists (two batches cannot deadlock over the rows they create).
        # A row made here and moved by no fill of the batch is deleted before the batch ends
        # (`_drop_unmoved`): a new position is made as the fill that creates it would make
        # it (version 1, moved to 2), a new cash row with version 0 (the fill's upsert then
        # leaves version 1, as when it creates it). Once every lock is held, it answers what
        # `placement_order_sql` would for each of the given single ClOrdIDs whose placement
        # is a lone order's (not in a block): the key, then the same columns (from the
        # locking CTEs, so the newest row versions), then the order's id again, and two
        # empty columns; then, when rows were made, one more row: NULLs, and the ids of the
        # positions and of the cash rows made.
        width = 1 + len(self.placement) + len(self.broker) + len(self.order) + 4
        width += len(self.instrument) + 1
        self.batch_lock_sql = (
            "WITH batch_placements AS MATERIALIZED ("
            f"SELECT {p_cols} FROM {Placement._meta.db_table} AS p "
            "WHERE p.id = ANY(ARRAY("
            f"SELECT m.placement_id FROM {OutboxMessage._meta.db_table} AS m "
            "WHERE m.cl_ord_id = ANY(%s::varchar[]) "
            f"UNION SELECT x.id FROM {Placement._meta.db_table} AS x "
            "WHERE x.cl_ord_id = ANY(%s::varchar[]))) ORDER BY p.id FOR UPDATE OF p), "
            "ids AS MATERIALIZED (SELECT "
            "array_agg(DISTINCT block_id) FILTER (WHERE block_id IS NOT NULL) AS blocks, "
            "array_agg(DISTINCT order_id) FILTER (WHERE block_id IS NULL AND order_id IS NOT NULL) "
            "AS orders FROM batch_placements), "
            "batch_blocks AS MATERIALIZED ("
            f"SELECT k.id FROM {Block._meta.db_table} AS k "
            "WHERE (SELECT count(*) FROM batch_placements) >= 0 "
            "AND k.id = ANY((SELECT blocks FROM ids)::bigint[]) ORDER BY k.id FOR UPDATE OF k), "
            "batch_orders AS MATERIALIZED ("
            f"SELECT {o_cols}, a.code, a.desk_id, a.short_selling_allowed, "
            f'u."{user_column}", {i_cols}, o.id AS batch_order_id '
            f"FROM {Order._meta.db_table} AS o "
            f"JOIN {Account._meta.db_table} AS a ON a.id = o.account_id "
            f"LEFT JOIN {user_model._meta.db_table} AS u ON u.id = o.created_by_id "
            f"JOIN {Instrument._meta.db_table} AS i ON i.id = o.instrument_id "
            "WHERE (SELECT count(*) FROM batch_blocks) >= 0 "
            "AND (o.block_id = ANY((SELECT blocks FROM ids)::bigint[]) "
            "OR o.id = ANY((SELECT orders FROM ids)::bigint[])) ORDER BY o.id FOR UPDATE OF o), "
            "batch_positions AS ("
            f"INSERT INTO {Position._meta.db_table} AS t (account_id, instrument_id, quantity, "
            "avg_cost, realised_pnl, version, updated_at) "
            "SELECT DISTINCT b.account_id, b.instrument_id, 0, 0, 0, 1, statement_timestamp() "
            "FROM batch_orders AS b WHERE %s::boolean "
            "ORDER BY b.account_id, b.instrument_id "
            f"{_lock_or_create('instrument_id')} RETURNING t.id), "
            "batch_cash AS ("
            f"INSERT INTO {CashBalance._meta.db_table} AS c (account_id, currency, settled, "
            "pending, version, updated_at) "
            "SELECT DISTINCT b.account_id, b.currency, 0, 0, 0, statement_timestamp() "
            "FROM batch_orders AS b WHERE %s::boolean "
            "AND (SELECT count(*) FROM batch_positions) >= 0 ORDER BY b.account_id, b.currency "
            f"{_lock_or_create('currency')} RETURNING c.id), "
            "batch_keys AS MATERIALIZED (SELECT k.c, COALESCE("
            f"(SELECT m.placement_id FROM {OutboxMessage._meta.db_table} AS m "
            "WHERE m.cl_ord_id = k.c ORDER BY m.id LIMIT 1), "
            f"(SELECT x.id FROM {Placement._meta.db_table} AS x "
            "WHERE x.cl_ord_id = k.c ORDER BY x.id LIMIT 1)) AS placement_id "
            "FROM unnest(%s::varchar[]) AS k(c)) "
            f"SELECT k.c, bp.*, {b_cols}, bo.*, NULL::bigint[], NULL::bigint[] "
            "FROM batch_keys AS k "
            "JOIN batch_placements AS bp ON bp.id = k.placement_id "
            f"JOIN {Broker._meta.db_table} AS br ON br.id = bp.broker_id "
            "JOIN batch_orders AS bo ON bo.batch_order_id = bp.order_id "
            "WHERE (SELECT count(*) FROM batch_cash) >= 0 AND bo.block_id IS NULL "
            f"UNION ALL SELECT {', '.join(['NULL'] * width)}, made.p, made.c FROM ("
            "SELECT ARRAY(SELECT t.id FROM batch_positions AS t ORDER BY t.id) AS p, "
            "ARRAY(SELECT c.id FROM batch_cash AS c ORDER BY c.id) AS c) AS made "
            "WHERE cardinality(made.p) + cardinality(made.c) > 0"
        )


_lock_sql: _LockSql | None = None


def _lock_sql_get() -> _LockSql:
    global _lock_sql
    if _lock_sql is None:
        _lock_sql = _LockSql()
    return _lock_sql


class _EarlyFill:
    """A fill of a block of PIPELINE_MIN_ORDERS orders or more: its Execution insert and then
    its fill's read (fill_allocate's `fill_read`, with the ids of the orders just locked) are
    sent in pipeline mode as soon as the lock's first row (the block's, with the orders' ids
    and accounts) is parsed, so PostgreSQL runs them while the orders' rows are parsed and
    their instances built (about 6 ms of Python for 1,000 orders); the same statements
    in the same order as without, nothing between them. The allocation's pro-rata part (a
    block without allocation policy) is made then too, before the insert's answer, which
    waits for the read (`FillRead.prepare`): about 2 ms of Python that fill_allocate made
    after the read's answer, while PostgreSQL waited for the orders' write. A duplicate
    (session, ExecID) inserts nothing, and its read then only locks the positions and takes
    row ids, unused (a gap in the sequence, as a rollback leaves); positions it made for
    orders never filled are deleted (`FillRead.discard`)."""

    def __init__(
        self,
        session_key: str,
        report: ExecReport,
        raw_message_id: int | None,
        held: bool = False,
    ) -> None:
        self.session_key = session_key
        self.report = report
        self.raw_message_id = raw_message_id
        self.held = held  # the batch locked (made) the positions already (`_lock_batch`)
        self.execution: Execution | None = None
        self.cursor: Any = None
        self.read: Any = None

    def send(
        self,
        placement: Placement,
        block: Block,
        order_ids: list[int],
        account_ids: list[int],
        missing: bool,
    ) -> None:
        """Send the insert and the read, when the report is a fill that books (not an overfill):
        the block's orders' ids (ascending), their accounts' ids (sorted, distinct) and whether
        one of them was never filled (`positions_may_be_missing`), from the lock's first row."""
        if not _books(self.report, placement):
            return
        _book_flush()  # a big fill reads and writes after the batch's held writes
        execution = _new_execution(
            self.session_key, self.report, self.raw_message_id, placement, block, None, fill=True
        )
        _pipeline_on()
        self.cursor = _insert_execution_send(execution)
        self.read = _fill_read()(
            block_id=block.pk,
            order_id=None,
            broker_id=execution.broker_id,
            order_ids=order_ids,
            instrument_id=block.instrument_id,
            account_ids=account_ids,
            create=not self.held and missing,
        )
        self.execution = execution


def _lock(
    cl_ord_ids: list[str],
    entries: list[AuditEntry] | None = None,
    early: _EarlyFill | None = None,
) -> _Context | None:
    """Find the placement of a report's ClOrdIDs and lock it, its block and its orders.

    The look-up and the placement's lock are one statement. Loaded with what the fill needs
    (the block's instrument and allocation policy, the orders' accounts, instruments and
    creators, for allocation and the blotter events), so fill_allocate works on these locked
    rows instead of reading them again. `early`: a fill's, told of a big block's locked rows
    before its orders are built (`_EarlyFill.send`).
    """
    if not cl_ord_ids:
        return None
    q = _lock_sql_get()
    with connection.cursor() as cursor:
        fast_datetimes(cursor)
        cursor.execute(q.placement_order_sql, [cl_ord_ids, cl_ord_ids])
        row = cursor.fetchone()
        if row is None:
            return None
        placement, m = _placement_of_row(q, row)
        if row[m] is not None:  # a lone order's placement: the order came with it
            return _Context(placement, None, _orders_from_rows(q, [row[m:]], None), entries)
        block = None
        if placement.block_id is not None:
            block, rows = _lock_block_orders(q, cursor, placement, early)
        else:
            rows = []  # no order (its row is gone): what the order's own read would find

    shared = block._state.fields_cache["instrument"] if block is not None else None
    return _Context(placement, block, _orders_from_rows(q, rows, shared), entries)


def _block_of_row(q: _LockSql, row: Sequence[Any]) -> Block:
    """The block (its instrument cached, and its policy when it has none) of the block's row
    of `block_orders_sql`."""
    n, m = 1 + len(q.block), 1 + len(q.block) + len(q.instrument)
    block = model_from_row(Block, dict(zip(q.block, row[1:n], strict=True)))
    block._state.fields_cache["instrument"] = model_from_row(
        Instrument, dict(zip(q.instrument, row[n:m], strict=True))
    )
    if row[m] is None:  # no policy: pro-rata (what select_related would cache)
        block._state.fields_cache["allocation_policy"] = None
    return block


def _lock_block_orders(
    q: _LockSql, cursor: Any, placement: Placement, early: _EarlyFill | None
) -> tuple[Block, list[Sequence[Any]]]:
    """Lock the placement's block and its orders (`block_orders_sql`): the block and the
    orders' rows (by pk, as the CTE locked them). A big fill's early read is sent once the
    block's row is parsed, before the orders' rows are."""
    cursor.execute(q.block_orders_sql, [placement.block_id, placement.block_id])
    head = cursor.fetchone()
    rest = None
    if head is None or not head[0]:  # UNION ALL answers the block's row first
        rest = [] if head is None else [head, *cursor.fetchall()]
        (head,) = [r for r in rest if r[0]]  # the block's (its placement refers to it)
    block = _block_of_row(q, head)
    at = 1 + q.block_width
    ids, accounts, missing = head[at : at + 3]
    if early is not None and ids is not None and len(ids) >= PIPELINE_MIN_ORDERS:
        # Sorted here (the CTE's rows come by pk, so the ids already are: no cost to speak of).
        early.send(placement, block, sorted(ids), sorted(set(accounts)), missing)
    answer = cursor.fetchall() if rest is None else [r for r in rest if not r[0]]
    start = at + 3
    return block, [r[start:] for r in answer]


def _placement_of_row(q: _LockSql, row: Sequence[Any]) -> tuple[Placement, int]:
    """The placement (its broker cached) of a `placement_order_sql` row, and where the order's
    columns start."""
    n, m = len(q.placement), len(q.placement) + len(q.broker)
    placement = model_from_row(Placement, dict(zip(q.placement, row[:n], strict=True)))
    placement._state.fields_cache["broker"] = model_from_row(
        Broker, dict(zip(q.broker, row[n:m], strict=True))
    )
    return placement, m


def _orders_from_rows(q: _LockSql, rows: Sequence[Any], shared: Instrument | None) -> list[Order]:
    """Orders (with the account, creator and instrument fields the fill reads) from the rows of
    an orders locking read; `shared`: the block's instrument (the rows then carry none, nor
    the orders' filled_notional: `_LockSql.block_order`).

    Each instance is what `model_from_row` makes (fields not read are deferred), its state and
    the account's written directly: a block's 1,000 rows are most of a big fill's locking step.
    """
    names = q.order if shared is None else q.block_order
    n = len(names)
    user_model = get_user_model()
    user_name = q.user_name
    users: dict[int, Any] = {}
    orders = []
    new_order, new_account, new_state = Order.__new__, Account.__new__, ModelState.__new__
    shared_id = shared.pk if shared is not None else None
    for row in rows:
        # The order's columns come first: zip stops at the last name.
        values = dict(zip(names, row, strict=False))
        account = new_account(Account)
        account_state = new_state(ModelState)
        account_state.__dict__ = {"adding": False, "db": "default"}
        account_id = values["account_id"]
        account.__dict__ = {
            "id": account_id,
            "code": row[n],
            "desk_id": row[n + 1],
            "short_selling_allowed": row[n + 2],
            "_state": account_state,
        }
        # Only what allocation and the blotter events read; other fields load on access.
        cache: dict[str, Any] = {"account": account}
        if shared is None:
            cache["instrument"] = model_from_row(
                Instrument, dict(zip(q.instrument, row[n + 4 :], strict=True))
            )
        elif values["instrument_id"] == shared_id:
            cache["instrument"] = shared
        creator = values["created_by_id"]
        if creator is not None:
            user = users.get(creator)
            if user is None:
                user = users[creator] = model_from_row(
                    user_model, {"id": creator, user_name: row[n + 3]}
                )
            cache["created_by"] = user
        state = new_state(ModelState)
        state.__dict__ = {"adding": False, "db": "default", "fields_cache": cache}
        values["_state"] = state
        order = new_order(Order)
        order.__dict__ = values
        orders.append(order)
    return orders


_EXECUTION_COLUMNS = [f for f in Execution._meta.concrete_fields if not f.primary_key]
_EXECUTION_FIELDS = [f.attname for f in _EXECUTION_COLUMNS]
_INSERT_EXECUTION_SQL = (
    f'INSERT INTO "{Execution._meta.db_table}" ('
    + ", ".join(f'"{f.column}"' for f in _EXECUTION_COLUMNS)
    + f") VALUES ({', '.join(['%s'] * len(_EXECUTION_COLUMNS))}) "
    'ON CONFLICT ("session_key", "exec_id") DO NOTHING RETURNING "id"'
)
# The same insert sent in fill_read's `insert`: the read needs only its id (the fill adds its
# own last_qty and last_px to its block's or order's totals in Python: fill_totals).
_INSERT_EXECUTION_READ_SQL = _INSERT_EXECUTION_SQL
_PLACEMENT_FIELDS = PLACEMENT_REPORT_FIELDS
# What a report can change on its placement (under the placement's row lock).
_PLACEMENT_SAVE_SQL = (
    f'UPDATE "{Placement._meta.db_table}" SET '
    + ", ".join(f'"{name}" = %s' for name in _PLACEMENT_FIELDS)
    + ' WHERE "id" = %s'
)
_BLOCK_STATUS_SQL = (
    f'UPDATE "{Block._meta.db_table}" SET "status" = %s, "version" = %s, "updated_at" = %s '
    'WHERE "id" = %s'
)


def _placement_save(placement: Placement) -> None:
    _book_flush()
    placement.updated_at = timezone.now()
    with raw_cursor() as cursor:
        cursor.execute(
            _PLACEMENT_SAVE_SQL,
            [*(getattr(placement, name) for name in _PLACEMENT_FIELDS), placement.pk],
        )


def _insert_execution(execution: Execution) -> bool:
    """INSERT ... ON CONFLICT (session_key, exec_id) DO NOTHING: False when already stored.

    One round trip instead of a look-up and an insert (or a savepoint around the insert).
    """
    return _insert_execution_done(execution, _insert_execution_send(execution))


def _insert_execution_and_read(execution: Execution, ctx: _Context, held: bool = False) -> Any:
    """`_insert_execution` sent with its fill's read (fill_allocate's `fill_read`, of the
    orders locked in `ctx`), one statement; the read, or None when (session, ExecID) was
    stored already (nothing inserted; the read's position locks are then held unused, as
    after a duplicate's early read). The positions are locked or made in one pass when one
    of the orders was never filled (`positions_may_be_missing`), unless `held` (the batch's
    up-front lock made them)."""
    execution.received_at = timezone.now()
    block = ctx.block
    orders = ctx.orders
    read = _fill_read()(
        block_id=block.pk if block is not None else None,
        order_id=None if block is not None else orders[0].pk,
        broker_id=execution.broker_id,
        order_ids=[o.id for o in orders],
        instrument_id=block.instrument_id if block is not None else orders[0].instrument_id,
        account_ids=sorted({o.account_id for o in orders}),
        create=not held and _positions_may_be_missing()(orders),
        insert=(
            _INSERT_EXECUTION_READ_SQL,
            [getattr(execution, name) for name in _EXECUTION_FIELDS],
        ),
    )
    pk = read.inserted_id()
    if pk is None:
        return None
    execution.pk = pk
    execution._state.adding = False
    execution._state.db = "default"
    return read


def _insert_execution_send(execution: Execution) -> Any:
    """Send `_insert_execution`'s statement; its cursor, for `_insert_execution_done`."""
    execution.received_at = timezone.now()
    cursor = raw_cursor()
    cursor.execute(_INSERT_EXECUTION_SQL, [getattr(execution, name) for name in _EXECUTION_FIELDS])
    return cursor


def _insert_execution_done(execution: Execution, cursor: Any) -> bool:
    """`_insert_execution`'s answer, read from its cursor."""
    with cursor:
        row = cursor.fetchone()
    if row is None:
        return False
    execution.pk = row[0]
    execution._state.adding = False
    execution._state.db = "default"
    return True


def _trade_date(moment: dt.datetime | None) -> dt.date:
    moment = moment or timezone.now()
    return timezone.localtime(moment, ZoneInfo(settings.FIRM_TIME_ZONE)).date()


def _fix_session_id(session_key: str) -> int | None:
    try:
        version, comp_ids = session_key.split(":", 1)
        sender, target = comp_ids.split("->", 1)
    except ValueError:
        return None
    return (
        FixSession.objects.filter(fix_version=version, sender_comp_id=sender, target_comp_id=target)
        .values_list("pk", flat=True)
        .first()
    )


def _report_text(report: ExecReport, applied: bool) -> str:
    parts = [report.text or ""]
    if not applied and report.last_qty:
        parts.append(f"[not applied: LastQty {_plain(report.last_qty)} @ {_plain(report.last_px)}]")
    if report.exec_trans_type not in (None, "0"):
        parts.append(f"[ExecTransType {report.exec_trans_type} ref {report.exec_ref_id or ''}]")
    if report.poss_dup:
        parts.append("[PossDup]")
    return " ".join(p for p in parts if p)[:2000]


def execution_apply(
    *, session_key: str, report: ExecReport, raw_message_id: int | None = None
) -> Execution | None:
    """Apply one ExecutionReport exactly once; None when (session, ExecID) was already applied.

    The cyclic garbage collector is paused meanwhile: a fill of a 1,000-order block allocates
    tens of thousands of short-lived objects, which otherwise trip about 40 collections.
    """
    with collection_paused(), transaction.atomic(durable=True), _pipeline_scope():
        entries: list[AuditEntry] = []
        execution = _execution_apply(session_key, report, raw_message_id, entries)
        audit_record_many(entries=entries)
    return execution


# A fill of a block of at least this many orders runs the rest of its transaction in psycopg's
# pipeline mode: a statement that answers nothing the code reads (the fill's writing statement)
# is sent and not waited for, so Python goes on (the fill's audit entry, the orders' states,
# the blotter events, the audit texts) while PostgreSQL writes, and the next read waits for
# everything sent before it. Below this size the overlap is smaller than the pipeline's own
# Python cost per statement (about 0.5 ms per small fill, measured).
PIPELINE_MIN_ORDERS = 64

_scope = threading.local()


@contextmanager
def _pipeline_scope() -> Iterator[None]:
    """Where a big fill may turn pipeline mode on (_pipeline_on); leaving syncs the pipeline,
    so an error of a statement not waited for is raised here, inside the transaction, which
    then rolls back. Only raw statements run in pipeline mode (no ORM write: a rowcount is
    unknown until a read)."""
    with ExitStack() as stack:
        _scope.stack = stack
        try:
            yield
        finally:
            _scope.stack = None


def _pipeline_on() -> None:
    """Pipeline mode from here to the end of the transaction (inside _pipeline_scope)."""
    stack = getattr(_scope, "stack", None)
    conn = connection.connection
    if stack is not None and conn.pgconn.pipeline_status == pq.PipelineStatus.OFF:
        stack.enter_context(conn.pipeline())


def executions_apply(
    *, session_key: str, reports: Sequence[tuple[ExecReport, int | None]]
) -> list[Execution | None]:
    """Apply many ExecutionReports of one session in one transaction, in order, as one by one.

    `reports` are (report, raw FixMessage id) pairs; the result has one entry per report,
    exactly what `execution_apply` would have returned for it applied alone in that order
    (None for a (session, ExecID) already in the book, earlier in the same batch included).
    Every row the batch can touch is locked first, each kind in a fixed order (placements,
    blocks, orders by pk; positions by (account, instrument); cash by (account, currency)),
    the order `execution_apply` follows for one report, so two appliers cannot deadlock; the
    audit events of the whole batch are written at the end, in report order. Reports that
    all name the same ClOrdIDs (one placement) skip that: the first takes the locks one
    report takes, in the same order, and the rest find them held.

    All or nothing: any exception rolls the whole batch back. The caller then applies the same
    reports one by one with `execution_apply`, which confines the failure to its report: a
    `oms_site.errors.DomainError` (a report a business rule refuses, such as an overfill of
    the allocation) or a database error (a lost connection, ...). Positions and cash rows
    first made by the batch are made by its up-front lock, in the fixed order (`_lock_batch`),
    so two batches making the same new rows wait for each other instead of deadlocking; the
    ones no fill of the batch moved are deleted before it commits (`_drop_unmoved`), and a
    batch rolled back leaves none.
    """
    if not reports:
        return []
    with collection_paused(), transaction.atomic(durable=True), _pipeline_scope():
        # Reports naming one placement alone (an acknowledgement and its fill) take their
        # locks as the first of them would alone: in the fixed order, the same rows each time.
        contexts = _Contexts()
        if len({(r.cl_ord_id, r.orig_cl_ord_id) for r, _ in reports}) > 1:
            _lock_batch([report for report, _ in reports], contexts)
        entries: list[AuditEntry] = []
        results = []
        last = len(reports) - 1
        # The small fills' booking writes are held and sent merged (_BOOK_MERGED_SQL) when
        # every position and cash row was locked up front: a merged write then takes no row
        # lock the batch does not hold already, nor makes a row (the reference triggers'
        # FOR KEY SHARE of the rows' parents aside, as one by one), so the lock order is that
        # of one by one. Without the up-front lock (one placement's reports) nothing is held.
        with _book_merged(contexts.positions_held) as book:
            for i, (report, raw_message_id) in enumerate(reports):
                # An acknowledgement right before a fill of the same ClOrdIDs leaves its writes
                # to that fill's (one statement less per order).
                after = reports[i + 1][0] if i < last else None
                defer = (
                    after is not None
                    and after.is_fill
                    and (after.cl_ord_id, after.orig_cl_ord_id)
                    == (report.cl_ord_id, report.orig_cl_ord_id)
                )
                results.append(
                    _execution_apply(
                        session_key, report, raw_message_id, entries, contexts, defer, book
                    )
                )
            if book is not None:
                book.flush()
        _drop_unmoved(*contexts.made)
        audit_record_many(entries=entries)
    return results


# The rows `_lock_batch` made that no fill of the batch moved: a fill moves a position it
# finds at version 1 to 2 or more, and a cash row it finds at version 0 to 1 or more.
_DROP_UNMOVED_SQL = (
    f"WITH gone AS (DELETE FROM {Position._meta.db_table} "
    "WHERE id = ANY(%s::bigint[]) AND version = 1) "
    f"DELETE FROM {CashBalance._meta.db_table} WHERE id = ANY(%s::bigint[]) AND version = 0"
)


def _drop_unmoved(positions: list[int], cash: list[int]) -> None:
    """Delete the positions and cash rows a batch made up front that none of its fills moved,
    so that the batch leaves the rows its fills, applied one by one, would have made."""
    if positions or cash:
        with raw_cursor() as cursor:
            cursor.execute(_DROP_UNMOVED_SQL, [array_literal(positions), array_literal(cash)])


def _normalised(obj: Any) -> None:
    """Decimals at their column's scale, as a row read back holds them ("100.00000000")."""
    values = obj.__dict__
    for attname, quantum in _decimal_columns(type(obj)):
        value = values.get(attname)
        if value is not None:
            values[attname] = value.quantize(quantum)


_DECIMAL_COLUMNS: dict[type, list[tuple[str, Decimal]]] = {}


def _decimal_columns(model: type) -> list[tuple[str, Decimal]]:
    columns = _DECIMAL_COLUMNS.get(model)
    if columns is None:
        columns = _DECIMAL_COLUMNS[model] = [
            (f.attname, Decimal(1).scaleb(-f.decimal_places))
            for f in model._meta.concrete_fields  # type: ignore[attr-defined]
            if getattr(f, "decimal_places", None) is not None
        ]
    return columns


class _Contexts:
    """The locked rows of a batch's placements, kept from one report to the next.

    A later report of the same ClOrdIDs reuses them instead of reading them again: they hold
    exactly what the database holds (every change a report makes is written from them, and
    their decimals are brought to the columns' scale after each report). Only reports that
    cannot rename a placement are followed by reuse (acknowledgements and fills); any other
    report, or the same rows read through other ClOrdIDs, drops what was kept.
    """

    def __init__(self) -> None:
        self.kept: dict[tuple[str, ...], _Context] = {}
        # The ids of the positions and of the cash rows `_lock_batch` made (`_drop_unmoved`).
        self.made: tuple[list[int], list[int]] = ([], [])
        # Whether `_lock_batch` locked (or made) the positions of every order of the batch.
        self.positions_held = False

    def get(self, key: tuple[str, ...]) -> _Context | None:
        return self.kept.get(key)

    def forget(self, ctx: _Context) -> None:
        """Drop what was kept of any row `ctx` holds (read again under other ClOrdIDs)."""
        rows = _rows_of(ctx)
        self.kept = {k: c for k, c in self.kept.items() if not rows & _rows_of(c)}

    def after(self, key: tuple[str, ...], ctx: _Context | None, report: ExecReport) -> None:
        if ctx is None:
            return
        if not (report.is_fill or report.exec_type == "0"):
            self.kept.clear()
            return
        for obj in (ctx.placement, ctx.block, *ctx.orders):
            if obj is not None:
                _normalised(obj)
        self.kept[key] = ctx


def _rows_of(ctx: _Context) -> set[tuple[str, int]]:
    rows = {("placement", ctx.placement.pk)} | {("order", o.pk) for o in ctx.orders}
    if ctx.block is not None:
        rows.add(("block", ctx.block.pk))
    return rows


def _lock_batch(reports: Sequence[ExecReport], contexts: _Contexts) -> None:
    """Lock every placement, block, order, position and cash row the reports can touch.

    A superset is fine (a lock held a little longer); what matters is the order. The positions
    and cash rows of every order of the batch's placements (when it holds a fill) are locked
    where they exist and made where they do not, one pass per kind in key order
    (`_LockSql.batch_lock_sql`); `contexts.made` keeps the ids of those made, for
    `_drop_unmoved` (never an empty row the fills would not have made). One statement (`_LockSql.batch_lock_sql`) instead of one per kind, which also reads
    the locked rows of the lone orders' placements named by a report's ClOrdID alone (an
    acknowledgement's, a fill's): `contexts` keeps them under that key, so those reports
    do not read them again (`_lock`). A placement or an order two keys lead to is not kept
    (each report then reads it, as alone).
    """
    cl_ord_ids = sorted({i for r in reports for i in (r.cl_ord_id, r.orig_cl_ord_id) if i})
    if not cl_ord_ids:
        return
    fills = any(r.is_fill for r in reports)
    singles = sorted({r.cl_ord_id for r in reports if r.cl_ord_id and not r.orig_cl_ord_id})
    q = _lock_sql_get()
    ids = array_literal(cl_ord_ids)
    with connection.cursor() as cursor:
        fast_datetimes(cursor)
        cursor.execute(q.batch_lock_sql, [ids, ids, fills, fills, array_literal(singles)])
        rows = cursor.fetchall()
    contexts.positions_held = fills
    if rows and rows[-1][0] is None:  # the ids of the rows made (none was: no such row)
        made = rows.pop()
        contexts.made = (made[-2], made[-1])
    if not rows:
        return
    found = [(row[0], *_placement_of_row(q, row[1:])) for row in rows]
    placements = Counter(p.pk for _, p, _ in found)
    orders_seen = Counter(p.order_id for _, p, _ in found)
    for (key, placement, m), row in zip(found, rows, strict=True):
        if placements[placement.pk] > 1 or orders_seen[placement.order_id] > 1:
            continue
        orders = _orders_from_rows(q, [row[1 + m : -3]], None)
        contexts.kept[(key,)] = _Context(placement, None, orders)


def _execution_apply(
    session_key: str,
    report: ExecReport,
    raw_message_id: int | None,
    entries: list[AuditEntry],
    contexts: _Contexts | None = None,
    defer: bool = False,
    book: Any = None,
) -> Execution | None:
    """execution_apply inside the caller's transaction; its audit entries go to `entries`.

    `defer`: the next report applied is a fill of the same ClOrdIDs (with the same
    `contexts`), so an acknowledgement may leave its writes to it (`_Context.defer_save`);
    whatever is still unsaved after a report that was not told so is written then.

    `book`: the batch's held booking writes (`allocations.services.BookBuffer`), sent before
    any report that is not a fill, before a fill's locking read of a row they write (its
    placement, block or orders) and before a big fill. A small fill's read of what its orders
    booked and of its accounts' positions goes out without them, and what they hold of those
    rows is laid over its answer (`BookBuffer.booked_over`, `BookBuffer.positions_over`)."""
    ids = [i for i in (report.cl_ord_id, report.orig_cl_ord_id) if i]
    key = tuple(ids)
    if book is not None and not report.is_fill:
        book.flush()
    ctx = contexts.get(key) if contexts is not None else None
    held = contexts is not None and contexts.positions_held
    early = None
    if ctx is None:
        early = _EarlyFill(session_key, report, raw_message_id, held) if report.is_fill else None
        ctx = _lock(ids, entries, early)
        if book is not None and ctx is not None and _touched(book, ctx):
            # Its rows were read as they were before the held writes: read again once they
            # are sent (locked by this transaction already). A big fill's early read flushed
            # them before it was sent, and no held write is of a big block's rows.
            if early is not None and early.execution is not None:
                raise RuntimeError("a big fill's rows read before the writes held for them")
            book.flush()
            ctx = _lock(ids, entries, early)
        if contexts is not None and ctx is not None:
            contexts.forget(ctx)
    else:
        ctx.begin(entries)
    execution = _execution_book(
        session_key, report, raw_message_id, entries, ctx, defer, early, held, book
    )
    if ctx is not None and not defer:
        ctx.save_unsaved()
    if contexts is not None:
        contexts.after(key, ctx, report)
    return execution


def _execution_book(
    session_key: str,
    report: ExecReport,
    raw_message_id: int | None,
    entries: list[AuditEntry],
    ctx: _Context | None,
    defer: bool = False,
    early: _EarlyFill | None = None,
    held: bool = False,
    book: Any = None,
) -> Execution | None:
    placement = ctx.placement if ctx else None
    if early is not None and early.execution is not None and ctx is not None:
        # Sent as soon as the block's orders were locked (_EarlyFill), before they were built.
        execution, fill = early.execution, True
        block = ctx.block
        if block is not None and _without_policy(block):
            # While PostgreSQL runs the read: the insert's answer below waits for it too
            # (psycopg's pipeline answers in order), and fill_allocate would make this after.
            early.read.prepare(ctx.orders)
        inserted = _insert_execution_done(execution, early.cursor)
        if inserted:
            ctx.fill_read = early.read
        else:  # a duplicate: its read is not used, and the positions it made are dropped
            early.read.discard()
    else:
        fill = placement is not None and _books(report, placement)
        block = ctx.block if ctx else None
        first = ctx.orders[0] if ctx and not ctx.block else None
        execution = _new_execution(
            session_key, report, raw_message_id, placement, block, first, fill=fill
        )
        if fill and ctx is not None and ctx.orders and ctx.fill_read is None:
            # A small fill (a big block's was sent early above): its Execution row is written
            # by its fill's read, one statement.
            if book is not None and len(ctx.orders) >= PIPELINE_MIN_ORDERS:
                book.flush()  # a big fill reads and writes after the held writes
            read = _insert_execution_and_read(execution, ctx, held)
            inserted = read is not None
            ctx.fill_read = read
        else:
            if book is not None:
                book.flush()
            inserted = _insert_execution(execution)
    if not inserted:
        return None  # this (session, ExecID) is already in the book
    if ctx is None:
        entries.append(
            AuditEntry(
                action="execution.unknown_order",
                object_type="execution",
                object_id=str(execution.pk),
                after={
                    "session": session_key,
                    "exec_id": report.exec_id,
                    "cl_ord_id": report.cl_ord_id,
                    "orig_cl_ord_id": report.orig_cl_ord_id,
                    "exec_type": report.exec_type_name,
                    "last_qty": _plain(report.last_qty),
                    "last_px": _plain(report.last_px),
                },
                stream=f"fix:{session_key}",
            )
        )
        return execution
    _apply(ctx, execution, report, fill=fill, defer=defer)
    return execution


def _touched(book: Any, ctx: _Context) -> bool:
    """Whether the batch's held writes are of a row `ctx` was read from."""
    return bool(
        book.touches(
            placement_id=ctx.placement.pk,
            block_id=ctx.block.pk if ctx.block is not None else None,
            order_ids=[o.pk for o in ctx.orders],
        )
    )


def _without_policy(block: Block) -> bool:
    """Whether the block's lock found it without an allocation policy (pro-rata): its row
    caches None then (_block_of_row); a policy is loaded only by the allocation, not here."""
    return block._state.fields_cache.get("allocation_policy", block) is None


def _books(report: ExecReport, placement: Placement) -> bool:
    """Whether a report on a known placement is a fill that books (an overfill is a broker
    error: stored and flagged, not booked)."""
    return bool(report.is_fill) and placement.cum_qty + report.last_qty <= placement.quantity


def _new_execution(
    session_key: str,
    report: ExecReport,
    raw_message_id: int | None,
    placement: Placement | None,
    block: Block | None,
    first: Order | None,
    *,
    fill: bool,
) -> Execution:
    """The Execution row of a report (not saved); `block` or else `first` (the placement's
    first locked order) gives its side and instrument."""
    side = SIDE_FROM_FIX.get(report.side or "", "")
    if placement is not None and (block is not None or first is not None):
        side = block.side if block is not None else first.side  # type: ignore[union-attr]
    last_qty = report.last_qty if (fill or (placement is None and report.is_fill)) else ZERO
    last_px = report.last_px if last_qty else ZERO
    return Execution(
        fix_session_id=placement.fix_session_id if placement else _fix_session_id(session_key),
        session_key=session_key,
        exec_id=report.exec_id,
        placement=placement,
        order_id=placement.order_id if placement else None,
        block_id=placement.block_id if placement else None,
        broker_id=placement.broker_id if placement else None,
        instrument_id=(
            block.instrument_id
            if block is not None
            else first.instrument_id
            if first is not None
            else None
        ),
        side=side if side in _SIDES else "",
        exec_type=report.exec_type_name,
        ord_status=report.ord_status_name,
        last_qty=last_qty or ZERO,
        last_px=last_px or ZERO,
        cum_qty=report.cum_qty,
        avg_px=report.avg_px.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP),
        gross=((last_qty or ZERO) * (last_px or ZERO)).quantize(CENT, rounding=ROUND_HALF_UP),
        trade_date=_trade_date(report.transact_time),
        transact_time=report.transact_time,
        unknown_order=placement is None,
        cl_ord_id=report.cl_ord_id or report.orig_cl_ord_id or "",
        text=_report_text(report, fill or not report.is_fill),
        raw_message_id=raw_message_id,
    )


def _apply(
    ctx: _Context, execution: Execution, report: ExecReport, *, fill: bool, defer: bool = False
) -> None:
    placement = ctx.placement
    meta = {
        "execution": execution.pk,
        "exec_id": report.exec_id,
        "exec_type": report.exec_type_name,
        "placement": placement.pk,
        "cl_ord_id": report.cl_ord_id,
    }
    before = {"status": placement.status, "cum_qty": _plain(placement.cum_qty)}
    if report.order_id and report.order_id != "NONE" and not placement.broker_order_id:
        placement.broker_order_id = report.order_id[:64]
    kind = report.exec_type
    fills: list[Order] = []
    if fill:
        fills = _apply_fill(ctx, execution, meta)
    elif report.is_fill:
        ctx.entries.append(
            AuditEntry(
                action="execution.overfill",
                object_type="placement",
                object_id=str(placement.pk),
                after={"last_qty": _plain(report.last_qty), "quantity": _plain(placement.quantity)},
                meta=meta,
            )
        )
    elif kind == "0":  # New: the broker acknowledged the order
        if placement.status == P.PENDING_NEW:
            placement.status = P.WORKING
        for order in ctx.orders:
            if order.status in (S.PENDING_NEW, S.DONE_FOR_DAY, S.SUSPENDED):
                ctx.transition(order, S.WORKING, action="order.acknowledged", meta=meta)
    elif kind == "4":  # Canceled
        _rename(placement, report)
        placement.status = P.CANCELED
        for order in ctx.orders:
            if ctx.transition(order, S.CANCELED, action="order.canceled", meta=meta):
                order.leaves_qty = ZERO
                ctx.order_fields.add("leaves_qty")
        ctx.block_status(BlockStatus.CANCELED, meta=meta)
    elif kind == "5":  # Replaced: the new terms are in force under the new ClOrdID
        _apply_replaced(ctx, report, meta)
    elif kind == "8":  # Rejected
        if _is_request(report.cl_ord_id, placement):
            _revert_request(ctx, meta, action="order.request_rejected", text=report.text)
        else:
            placement.status = P.REJECTED
            for order in ctx.orders:
                if ctx.transition(
                    order, S.REJECTED, action="order.rejected", meta={**meta, "text": report.text}
                ):
                    order.leaves_qty = ZERO
                    ctx.order_fields.add("leaves_qty")
            ctx.block_status(BlockStatus.CANCELED, meta=meta)
    elif kind == "C":  # Expired
        placement.status = P.EXPIRED
        for order in ctx.orders:
            if ctx.transition(order, S.EXPIRED, action="order.expired", meta=meta):
                order.leaves_qty = ZERO
                ctx.order_fields.add("leaves_qty")
        ctx.block_status(BlockStatus.CANCELED, meta=meta)
    elif kind == "6":  # PendingCancel
        if placement.status not in PLACEMENT_DONE:
            placement.status = P.PENDING_CANCEL
        for order in ctx.orders:
            if order.status not in PENDING_REQUEST:
                ctx.transition(order, S.PENDING_CANCEL, action="order.pending_cancel", meta=meta)
    elif kind == "E":  # PendingReplace
        if placement.status not in PLACEMENT_DONE:
            placement.status = P.PENDING_REPLACE
        for order in ctx.orders:
            if order.status not in PENDING_REQUEST:
                ctx.transition(order, S.PENDING_REPLACE, action="order.pending_replace", meta=meta)
    elif kind == "3":  # DoneForDay
        if placement.status not in PLACEMENT_DONE:
            placement.status = P.DONE_FOR_DAY
        for order in ctx.orders:
            ctx.transition(order, S.DONE_FOR_DAY, action="order.done_for_day", meta=meta)
    elif kind == "9":  # Suspended
        for order in ctx.orders:
            ctx.transition(order, S.SUSPENDED, action="order.suspended", meta=meta)
    else:  # Restated, PendingNew, Stopped, Calculated, OrderStatus, trade correct/bust: recorded
        ctx.entries.append(
            AuditEntry(
                action=f"execution.{report.exec_type_name}",
                object_type="placement",
                object_id=str(placement.pk),
                after={"text": report.text, "ord_status": report.ord_status_name},
                meta=meta,
            )
        )
    if not fill:  # a fill's placement was written with its allocation (_apply_fill)
        placement.version += 1
    ctx.entries.append(
        AuditEntry(
            action="placement.execution_report",
            object_type="placement",
            object_id=str(placement.pk),
            before=before,
            after={
                "status": placement.status,
                "cum_qty": _plain(placement.cum_qty),
                "avg_px": _plain(placement.avg_px),
            },
            meta=meta,
        )
    )
    if fill:
        ctx.save_orders()
    elif defer and kind == "0" and not report.is_fill:
        ctx.defer_save()  # the fill right behind it writes these rows (_apply_fill)
    else:
        ctx.save_placement_and_orders()
    if fill:
        data = {
            "id": execution.pk,
            "exec_id": execution.exec_id,
            "broker": placement.broker.code,
            "last_qty": execution.last_qty,
            "last_px": execution.last_px,
            "exec_type": execution.exec_type,
            "transact_time": execution.transact_time,
        }
        if len(fills) == 1:
            publish_execution_created(fills[0], data)
        elif fills:  # a block's fill: one hop after commit for all its orders' events
            # The events' data made JSON-safe here (the shared execution once) and published
            # as it is: json_safe would walk it all again. (Made once the audit statement is
            # sent instead, while PostgreSQL writes: -1.1 ms wall, 67 of 120 alternated pairs
            # lower; not kept.)
            publish_messages_on_commit(_fill_messages(fills, json_safe(data)))
    published = {o.id for o in fills}
    rest = [o for o in ctx.changed.values() if o.pk not in published]
    if len(rest) == 1:
        publish_order_updated(rest[0])
    elif rest:
        publish_orders_updated(rest)


def _desk_id(order: Order) -> int | None:
    account = order._state.fields_cache.get("account")
    if account is None:
        account = order.account
    # Read from the instance's dict when loaded (the attribute is a descriptor written in
    # Python: about 0.5 us a read, 1,000 a block fill).
    try:
        return account.__dict__["desk_id"]
    except KeyError:
        return account.desk_id


# groups_for_account's lists by (account_id, desk_id), the same for every event of an account:
# a block fill's 1,000 events each made 3 texts. A pure function of the key, so any entry is
# right; bounded by emptying it when full. The lists are only read (publish_many_on_commit).
_GROUPS: dict[tuple[int, int | None], list[str]] = {}
_GROUPS_MAX = 16_384


def _groups(order: Order) -> list[str]:
    """`groups_for_account(order.account_id, _desk_id(order))`, kept in _GROUPS."""
    key = (order.__dict__["account_id"], _desk_id(order))
    groups = _GROUPS.get(key)
    if groups is None:
        if len(_GROUPS) >= _GROUPS_MAX:
            _GROUPS.clear()
        groups = _GROUPS[key] = groups_for_account(*key)
    return groups


# isoformat() of aware UTC datetimes already written in events (about 3 µs each here): a block
# fill's orders share the fill's updated_at, and a block filled again has the same created_at
# values. A pure function of the value, so any entry is right; bounded by emptying it when full.
_UTC_TEXTS: dict[dt.datetime, str] = {}
_UTC_TEXTS_MAX = 16_384


def _utc_text(value: dt.datetime) -> str:
    """`value.isoformat()` of an aware UTC datetime, kept in _UTC_TEXTS."""
    if len(_UTC_TEXTS) >= _UTC_TEXTS_MAX:
        _UTC_TEXTS.clear()
    text = _UTC_TEXTS[value] = value.isoformat()
    return text


def _datetime_text(value: dt.datetime | None) -> Any:
    """json_safe's text of a datetime: an aware UTC one's isoformat(), kept in _UTC_TEXTS;
    others (and None) take json_safe's path."""
    if value is not None and value.tzinfo is dt.UTC:
        return _UTC_TEXTS.get(value) or _utc_text(value)
    return json_safe(value)


def _order_json(order: Order) -> dict[str, Any]:
    """`json_safe(order_payload(order))` written directly (one per order of a block fill).

    The columns are read from the instance's dict and its cached relations; Decimals become
    their text and datetimes their UTC ISO text.
    """
    values = order.__dict__
    cache = order._state.fields_cache
    account = cache.get("account") or order.account
    instrument = cache.get("instrument") or order.instrument
    created, updated = _datetime_text(values["created_at"]), _datetime_text(values["updated_at"])
    creator = None
    if values["created_by_id"] is not None:
        user = cache.get("created_by") or order.created_by
        creator = user.get_username()
    return _order_dict(values, account.code, instrument.symbol, creator, created, updated)


def _order_dict(
    values: dict[str, Any],
    account: str,
    symbol: str,
    creator: str | None,
    created: str | None,
    updated: str | None,
) -> dict[str, Any]:
    """An order's blotter data from its field values (`order.__dict__`) and the texts made
    from its related rows and datetimes (`_order_json`, `_fill_messages`)."""
    limit_price, stop_price = values["limit_price"], values["stop_price"]
    return {
        "id": values["id"],
        "account": account,
        "instrument": symbol,
        "side": values["side"],
        "quantity": str(values["quantity"]),
        "order_type": values["order_type"],
        "limit_price": None if limit_price is None else str(limit_price),
        "stop_price": None if stop_price is None else str(stop_price),
        "time_in_force": values["time_in_force"],
        "status": values["status"],
        "cum_qty": str(values["cum_qty"]),
        "leaves_qty": str(values["leaves_qty"]),
        "avg_px": str(values["avg_px"]),
        "compliance_outcome": values["compliance_outcome"],
        "block": values["block_id"],
        "version": values["version"],
        "created_by": creator,
        "created_at": created,
        "updated_at": updated,
    }


def _fill_messages(fills: list[Order], execution_data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (group, message) pairs of a block fill's execution.created events, in the order of
    `fills`, each group of an order's event in the order of `groups_for_account`: what
    `publish_many_on_commit(events=..., data_json_safe=True)` makes of the events with
    `{"execution": execution_data, "order": _order_json(order)}` and `_groups(order)`.

    One pass, no intermediate event: the order's data is `_order_dict`'s, as `_order_json`
    makes it, with what a fill's orders share read once (the instrument's symbol, the creator's
    name, the fill's updated_at text: a block fill's 1,000 orders carry the same few).
    """
    items: list[tuple[str, Any]] = []
    append = items.append
    groups_memo = _GROUPS
    usernames: dict[int, str] = {}
    symbols: dict[int, str] = {}
    seen: tuple[Any, Any] = (object(), None)  # the last updated_at and its text
    for order in fills:
        values = order.__dict__
        cache = order._state.fields_cache
        account = cache.get("account") or order.account
        instrument = cache.get("instrument") or order.instrument
        symbol = symbols.get(id(instrument))
        if symbol is None:
            symbol = symbols[id(instrument)] = instrument.symbol
        created = _datetime_text(values["created_at"])
        updated_at = values["updated_at"]
        # A fill's orders share its updated_at: its text is made once.
        if updated_at is not seen[0]:
            seen = (updated_at, _datetime_text(updated_at))
        updated = seen[1]
        creator_id = values["created_by_id"]
        creator = None
        if creator_id is not None:
            creator = usernames.get(creator_id)
            if creator is None:
                user = cache.get("created_by") or order.created_by
                creator = usernames[creator_id] = user.get_username()
        order_id, version = values["id"], values["version"]
        message = {
            "type": "blotter.event",
            "event": {
                "type": "execution.created",
                "order_id": order_id,
                "version": version,
                "data": {
                    "execution": execution_data,
                    "order": _order_dict(values, account.code, symbol, creator, created, updated),
                },
            },
        }
        groups = groups_memo.get((values["account_id"], _desk_id(order))) or _groups(order)
        # groups_for_account's texts are distinct (acct-, firm, desk-): no de-duplication.
        for group in groups:
            append((group, message))
    return items


def _apply_fill(ctx: _Context, execution: Execution, meta: dict) -> list[Order]:
    placement = ctx.placement
    # Incremental under the placement's lock (the exact block/order average is fill_allocate's).
    old_cum = placement.cum_qty
    placement.cum_qty = old_cum + execution.last_qty
    placement.avg_px = (
        (placement.avg_px * old_cum + execution.last_qty * execution.last_px) / placement.cum_qty
    ).quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP)
    if placement.cum_qty >= placement.quantity:
        placement.status = P.FILLED
    elif placement.status not in (P.PENDING_CANCEL, P.PENDING_REPLACE, *PLACEMENT_DONE):
        placement.status = P.PARTIALLY_FILLED
    versions = [order.version for order in ctx.orders]
    # The placement's changes for this report are all made: fill_allocate's statement writes
    # it with the fill (_apply does not save it again).
    placement.version += 1
    placement.updated_at = timezone.now()
    # fill_allocate works on the rows locked here and moves them in place (cum_qty, avg_px,
    # leaves_qty, version; the block's cum_qty and avg_px); its audit entry joins ctx.entries.
    if len(ctx.orders) >= PIPELINE_MIN_ORDERS:
        _pipeline_on()
    entries = ctx.entries
    transitions: list[AuditEntry] = []
    touched: list[Order] = []

    def states() -> list[Order]:
        """The orders' and the block's states after the fill (the orders' validated by the
        state table, ctx.transition), before fill_allocate's statement, which then writes
        them with the quantities: no statement of their own. Their audit entries follow the
        allocation's, as before."""
        ctx.entries = transitions
        changed, partially = ctx.changed, S.PARTIALLY_FILLED
        try:
            # The columns read and written in the instances' dicts (all loaded: _orders_from_rows).
            for order, version in zip(ctx.orders, versions, strict=True):
                values = order.__dict__
                cum_qty = values["cum_qty"]
                moved = values["version"] != version
                # As the columns hold them (8 decimals), like a row read back. Made once the
                # fill's statements were sent instead (same values): -0.6 ms wall, -0.16 ms of
                # Python per 1,000-order fill (160 alternated pairs): not kept.
                if moved:
                    values["cum_qty"] = cum_qty = cum_qty.quantize(PRICE_QUANTUM)
                    values["leaves_qty"] = values["leaves_qty"].quantize(PRICE_QUANTUM)
                    values["avg_px"] = values["avg_px"].quantize(PRICE_QUANTUM)
                status = values["status"]
                if status not in TERMINAL_STATUSES:
                    if cum_qty >= values["quantity"]:
                        ctx.transition(order, S.FILLED, action="order.filled", meta=meta)
                    # An order partially filled already stays so: ctx.transition's own first
                    # test, made here without the call (a block's 1,000 orders).
                    elif status != partially and cum_qty > 0 and status not in PENDING_REQUEST:
                        ctx.transition(order, partially, action="order.partially_filled", meta=meta)
                if moved or values["id"] in changed:
                    touched.append(order)
            _fill_block_status(ctx, meta, write=False)
        finally:
            ctx.entries = entries
        return ctx.orders_for_fill()

    read, ctx.fill_read = ctx.fill_read, None
    _fill_allocate()(
        execution=execution,
        block=ctx.block,
        orders=ctx.orders,
        audit=ctx.entries,
        returning=False,
        placement=placement,
        states=states,
        read=read,
    )
    entries.extend(transitions)
    return touched


def _fill_block_status(ctx: _Context, meta: dict, *, write: bool) -> None:
    """The block's status after a fill moved its cum_qty."""
    block = ctx.block
    if block is not None and block.status != BlockStatus.CANCELED:
        if block.cum_qty >= block.quantity:
            ctx.block_status(BlockStatus.FILLED, meta=meta, write=write)
        elif block.cum_qty > 0:
            ctx.block_status(BlockStatus.PARTIALLY_FILLED, meta=meta, write=write)


def _rename(placement: Placement, report: ExecReport) -> None:
    """The placement is now known by the report's ClOrdID (after a cancel or replace)."""
    new = report.cl_ord_id
    if new and new != placement.cl_ord_id and report.orig_cl_ord_id:
        placement.orig_cl_ord_id = placement.cl_ord_id
        placement.cl_ord_id = new


def _is_request(cl_ord_id: str | None, placement: Placement) -> bool:
    if not cl_ord_id or cl_ord_id == placement.cl_ord_id:
        return False
    return OutboxMessage.objects.filter(
        cl_ord_id=cl_ord_id, placement_id=placement.pk, msg_type__in=["F", "G"]
    ).exists()


def _latest_request(placement: Placement) -> OutboxMessage | None:
    return (
        OutboxMessage.objects.filter(placement_id=placement.pk, msg_type__in=["F", "G"])
        .order_by("-pk")
        .first()
    )


def _resume_status(order: Order) -> str:
    if order.cum_qty >= order.quantity:
        return S.FILLED
    return S.PARTIALLY_FILLED if order.cum_qty > 0 else S.WORKING


def _revert_request(ctx: _Context, meta: dict, *, action: str, text: str | None) -> None:
    placement = ctx.placement
    if placement.status in (P.PENDING_CANCEL, P.PENDING_REPLACE):
        placement.status = (
            P.FILLED
            if placement.cum_qty >= placement.quantity
            else P.PARTIALLY_FILLED
            if placement.cum_qty > 0
            else P.WORKING
        )
    for order in ctx.orders:
        if order.status in PENDING_REQUEST:
            ctx.transition(order, _resume_status(order), action=action, meta={**meta, "text": text})


def _apply_replaced(ctx: _Context, report: ExecReport, meta: dict) -> None:
    placement = ctx.placement
    request = (
        OutboxMessage.objects.filter(
            cl_ord_id=report.cl_ord_id, msg_type=MSG_ORDER_CANCEL_REPLACE_REQUEST
        ).first()
        if report.cl_ord_id
        else None
    )
    _rename(placement, report)
    terms = request.payload if request is not None else {}
    qty = Decimal(terms["quantity"]) if terms.get("quantity") else report.order_qty
    limit = Decimal(terms["limit_price"]) if terms.get("limit_price") else report.price
    stop = Decimal(terms["stop_price"]) if terms.get("stop_price") else None
    if qty is not None and qty >= placement.cum_qty:
        placement.quantity = qty
    if limit is not None:
        placement.limit_price = limit
    placement.status = (
        P.FILLED
        if placement.cum_qty >= placement.quantity
        else P.PARTIALLY_FILLED
        if placement.cum_qty > 0
        else P.WORKING
    )
    for order in ctx.orders:
        before = {
            "quantity": _plain(order.quantity),
            "limit_price": _plain(order.limit_price),
            "stop_price": _plain(order.stop_price),
        }
        if qty is not None and qty >= order.cum_qty:
            order.quantity = qty
            order.leaves_qty = qty - order.cum_qty
        if limit is not None and order.limit_price is not None:
            order.limit_price = limit
        if stop is not None and order.stop_price is not None:
            order.stop_price = stop
        ctx.order_fields.update({"quantity", "leaves_qty", "limit_price", "stop_price"})
        after = {
            "quantity": _plain(order.quantity),
            "limit_price": _plain(order.limit_price),
            "stop_price": _plain(order.stop_price),
        }
        if not ctx.transition(
            order,
            _resume_status(order),
            action="order.replaced",
            meta={**meta, "before": before, "after": after},
        ):
            order.version += 1
            ctx.changed[order.pk] = order
            ctx.order_fields.update({"version", "updated_at"})
            ctx.entries.append(
                AuditEntry(
                    action="order.replaced",
                    object_type="order",
                    object_id=str(order.pk),
                    before=before,
                    after=after,
                    meta=meta,
                )
            )


def cancel_reject_apply(
    *, session_key: str, reject: CancelReject, raw_message_id: int | None = None
) -> Order | None:
    """OrderCancelReject (35=9): the order goes back to where it was before the request."""
    with transaction.atomic(durable=True):
        ctx = _lock([i for i in (reject.cl_ord_id, reject.orig_cl_ord_id) if i])
        if ctx is None:
            audit_record_many(
                entries=[
                    AuditEntry(
                        action="fix.cancel_reject_unknown",
                        object_type="fix_message",
                        object_id=str(raw_message_id or ""),
                        after={"cl_ord_id": reject.cl_ord_id, "text": reject.text},
                        stream=f"fix:{session_key}",
                    )
                ]
            )
            return None
        latest = _latest_request(ctx.placement)
        # Only the answer to the request in flight counts; a resent old reject changes nothing.
        if latest is None or latest.cl_ord_id != reject.cl_ord_id:
            return None
        meta = {
            "placement": ctx.placement.pk,
            "cl_ord_id": reject.cl_ord_id,
            "orig_cl_ord_id": reject.orig_cl_ord_id,
            "reason": reject.reason,
            "response_to": reject.response_to,
            "fix_message": raw_message_id,
        }
        action = "order.cancel_rejected" if reject.response_to == "1" else "order.replace_rejected"
        _revert_request(ctx, meta, action=action, text=reject.text)
        ctx.placement.version += 1
        ctx.placement.save(update_fields=["status", "version", "updated_at"])
        ctx.save_orders()
        audit_record_many(entries=ctx.entries)
        for order in ctx.changed.values():
            publish_order_updated(order)
        return ctx.orders[0] if ctx.orders else None


def business_reject_apply(
    *, session_key: str, reject: BusinessReject, raw_message_id: int | None = None
) -> None:
    """BusinessMessageReject (35=j): stored (FixMessage) and flagged in the audit trail."""
    with transaction.atomic(durable=True):
        audit_record_many(
            entries=[
                AuditEntry(
                    action="fix.business_reject",
                    object_type="fix_message",
                    object_id=str(raw_message_id or ""),
                    after={
                        "ref_msg_type": reject.ref_msg_type,
                        "reason": reject.reason,
                        "ref_seq_num": reject.ref_seq_num,
                        "ref_id": reject.ref_id,
                        "text": reject.text,
                    },
                    meta={"session": session_key},
                    stream=f"fix:{session_key}",
                )
            ]
        )
