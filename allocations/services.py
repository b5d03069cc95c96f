"""Allocation of fills to accounts, and the book (positions and cash) they move.

How a block's fills are booked
------------------------------
After every fill the state of each order of the block is the *target* of the block's cumulative
fills, whatever way they were split:

* ``F`` = the sum of ``last_qty`` of the block's executions, ``N`` = the exact sum of
  ``last_qty * last_px``; the block's average price is ``P = N / F`` rounded half-up to
  8 decimals (``Block.avg_px``). The block's row keeps ``F`` and ``N`` (``cum_qty`` and
  ``filled_notional``; a lone order's row its own), and each fill adds its own to them
  (``fill_totals``): no fill sums the executions before it.
* Each order's cumulative quantity ``Q`` is ``allocations.engine.allocate_cumulative`` of ``F``
  (pro-rata by order quantity by default; fixed ratios or manual quantities when the block has
  a ``BlockAllocationPolicy``). Lots, largest remainder, ties by ``(created_at, id)``, never
  more than the order asked for: see the engine's docstring.
* Its cumulative money is priced at ``P``: ``engine.commission_for(schedule, Q, P)`` gives
  ``gross = round(Q * P)``, commission (the per-ticket minimum charged once per order and block,
  not per fill), fees and net.

The ``Allocation`` rows of an order are the *differences*: each fill writes, for every order
whose target changed, one row with ``quantity = Q - booked quantity`` and ``gross``,
``commission``, ``fees`` and ``net`` = target minus the sums of its earlier rows, at
``price = P``. So the sum of an order's rows is always exactly ``Q`` at the block's current
average price, and the final rows' sums depend only on the fills' total quantity and notional
(split-independent). A row is of ``kind``:

* ``fill`` (quantity > 0): more quantity; its money also re-prices the quantity held before.
* ``reversal`` (quantity < 0): quantity taken back (the largest-remainder rule is not monotone,
  see the engine; a manual re-allocation also takes back); ``reversal_of`` points to the
  order's latest earlier row.
* ``reprice`` (quantity 0): only the price moved (a fill at another price went to other orders).

So yes, earlier allocations are re-priced: every account ends up at the block's average price,
and a row's ``gross`` is generally not ``quantity * price``: it is the change of the order's
cumulative gross. Settlement should net an order's rows per trade date (the sums are the
settlement instruction: quantity, gross, commission, fees, net at the last row's price);
``allocations.selectors.allocation_net_lines`` does that.

Positions follow the same rows: a row re-prices the quantity held before from the previous
average to ``P`` (``allocations.book.position_reprice``), then books the quantity change at ``P``
(``engine.apply_trade`` for more, ``book.position_reverse`` for a reversal). Pending cash moves
by the row's net (buys pay, sells receive) in the instrument's currency; ``cash_settle_due``
moves it to settled on the settlement date.

Commission of a block filled by several brokers: each row's commission difference uses the
schedule of the broker whose fill triggered it (exact when one broker fills the whole block).

Locks (fixed order, so parallel fills neither deadlock nor lose updates): the block (or the
single order), its orders by pk, positions by (account_id, instrument_id), cash by account_id,
then the audit stream of the block. A missing position or cash row is made where it would be
locked, by the same pass (INSERT ... ON CONFLICT DO UPDATE ... WHERE false in key order, or the
cash upsert): a fill whose orders were all filled before finds every position (see
``positions_may_be_missing``), and one with an order never filled locks or makes them all in
one pass (``fill_read``'s ``create``), deleting the ones it made that no move needed. A trade
bust (a fill taken back by the broker) is not handled here: the executions service must not
call ``fill_allocate`` for one.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from types import SimpleNamespace
from typing import Any, NamedTuple, cast, overload
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.base import ModelState
from django.utils import timezone
from psycopg import pq

from allocations import engine
from allocations.book import position_move
from allocations.models import (
    Account,
    Allocation,
    AllocationKind,
    AllocationMethod,
    BlockAllocationPolicy,
    CashBalance,
    CommissionSchedule,
    Position,
)
from allocations.selectors import account_ids_visible_to
from oms_site.audit import AuditEntry, CanonicalJson, audit_record_many, canonical_text
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError
from oms_site.gcpause import collection_paused
from oms_site.roles import has_role
from oms_site.rows import array_literal, fast_datetimes, model_from_row, raw_cursor
from orders.enums import BUY_SIDES, OrderStatus
from orders.models import (
    PLACEMENT_REPORT_FIELDS,
    Block,
    Execution,
    Instrument,
    Order,
    Placement,
)
from settlement.calendars import settlement_date as calendar_settlement_date

__all__ = [
    "allocation_reallocate",
    "cash_settle_due",
    "fill_allocate",
]

ZERO = Decimal(0)
PRICE_QUANTUM = Decimal("0.00000001")
# Orders that will never trade again hold nothing open, whatever they were allocated.
_CLOSED_STATUSES = frozenset({OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED})


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros ("100", "0", "12.5") for audit payloads."""
    return format(value.normalize(), "f") if value else "0"


def _side_sign(side: str) -> int:
    return 1 if side in BUY_SIDES else -1


def _trade_date(execution: Execution) -> dt.date:
    if execution.trade_date:
        return execution.trade_date
    moment = execution.transact_time or execution.received_at or timezone.now()
    return timezone.localtime(moment, ZoneInfo(settings.FIRM_TIME_ZONE)).date()


def _schedule(broker_id: int) -> engine.CommissionSchedule:
    row = CommissionSchedule.objects.filter(broker_id=broker_id).first()
    if row is None:
        return engine.CommissionSchedule()
    return engine.CommissionSchedule(
        bps=row.bps,
        per_share=row.per_share,
        min_per_ticket=row.min_per_ticket,
        fees_bps=row.fees_bps,
    )


def _array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of numbers, ids or plain words (None as NULL).

    psycopg dumps a list element by element in Python (about 6 µs per Decimal); joining
    ``str()`` of each value is ten times cheaper, and PostgreSQL parses the literal exactly
    (``Decimal`` text, exponent included, is valid ``numeric`` input). Only for values whose
    text needs no quoting: numbers, ids and the allocation kinds.
    """
    return "{" + ",".join(map(str, values)).replace("None", "NULL") + "}"


def _array_of_texts(texts: list[str]) -> str:
    """`_array` of values already made text (str() of each; None as NULL)."""
    return "{" + ",".join(texts).replace("None", "NULL") + "}"


# One allocation row of a fill's audit payload in canonical JSON (keys sorted, no spaces):
# ids as numbers, decimals as json_safe writes them (their str(), which needs no escaping).
_AUDIT_ROW_JSON = (
    '{"account":%s,"commission":"%s","cum_quantity":"%s","fees":"%s","gross":"%s","id":%s,'
    '"kind":%s,"net":"%s","order":%s,"quantity":"%s"}'
)
_KIND_JSON = {str(kind): json.dumps(str(kind)) for kind in AllocationKind}


def _allocations_payload(
    shared: dict[str, Any], id_texts: list[str], texts: list[list[str]]
) -> CanonicalJson:
    """A fill's audit payload, `shared` plus "allocations" (one object per row: id, order,
    account, kind, quantity, cum_quantity, gross, commission, fees, net), as the canonical
    JSON text `audit_record_many` would write for the same dict (see CanonicalJson).

    `texts` are the str() of the rows' columns in _ALLOCATION_ROW_COLUMNS order; `id_texts`
    the rows' ids. Every key of `shared` sorts after "allocations".
    """
    assert all(key > "allocations" for key in shared)
    order, account, kind, quantity, gross, commission, fees, net, cum_quantity = texts[:9]
    kinds = [_KIND_JSON[k] for k in kind]
    rows = map(
        _AUDIT_ROW_JSON.__mod__,
        zip(
            account,
            commission,
            cum_quantity,
            fees,
            gross,
            id_texts,
            kinds,
            net,
            order,
            quantity,
            strict=True,
        ),
    )
    rest = canonical_text(shared)
    return CanonicalJson('{"allocations":[' + ",".join(rows) + "]," + rest[1:])


def _column_types(model: Any, fields: Sequence[str]) -> list[str]:
    meta = model._meta
    types = []
    for name in fields:
        field = meta.pk if name == "id" else meta.get_field(name)
        if field.is_relation:
            field = field.target_field
        types.append(field.db_type(connection).split("(")[0])
    return types


def _update_rows(model: Any, fields: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """One `UPDATE ... FROM unnest(arrays)`: a constant statement with one array per column."""
    if not rows:
        return
    meta = model._meta
    columns = ["id", *(meta.get_field(f).column for f in fields)]  # type: ignore[union-attr]
    arrays = ", ".join(f"%b::{t}[]" for t in _column_types(model, ["id", *fields]))
    names = ", ".join(f'"{c}"' for c in columns)
    sets = ", ".join(f'"{c}" = v."{c}"' for c in columns[1:])
    sql = (
        f'UPDATE "{meta.db_table}" AS t SET {sets} '
        f"FROM unnest({arrays}) AS v({names}) "
        f'WHERE t."id" = v."id"'
    )
    with raw_cursor() as cursor:
        cursor.execute(sql, [list(col) for col in zip(*rows, strict=True)])


@dataclass(slots=True)
class _OrderRow:
    """The locked columns of an order that allocation reads and moves (not a model instance)."""

    id: int
    account_id: int
    instrument_id: int
    side: str
    quantity: Decimal
    created_at: dt.datetime
    status: str
    cum_qty: Decimal
    avg_px: Decimal
    leaves_qty: Decimal
    version: int
    account_code: str
    account_custodian_id: int
    account_short_ok: bool
    filled_notional: Decimal | None  # a lone order's (Order.filled_notional); None in a block
    updated_at: dt.datetime | None = None  # set when the order moves

    @property
    def pk(self) -> int:
        return self.id


# {notional}: a lone order's fills' notional (Order.filled_notional); a block's orders read none
# (NULL: the block holds its fills' totals), so a big block's 1,000 rows parse no numeric more.
_ORDERS_LOCK_SQL = (
    'SELECT o."id", o."account_id", o."instrument_id", o."side", o."quantity", o."created_at", '
    'o."status", o."cum_qty", o."avg_px", o."leaves_qty", o."version", '
    'a."code", a."custodian_id", a."short_selling_allowed", {notional} '
    f'FROM "{Order._meta.db_table}" AS o JOIN "{Account._meta.db_table}" AS a '
    'ON a."id" = o."account_id" WHERE o."{column}" = %s ORDER BY o."id" FOR UPDATE OF o'
)


def _lock_orders(*, block_id: int | None = None, order_id: int | None = None) -> list[_OrderRow]:
    """Lock a block's orders (or one lone order) by pk; plain rows with their account's fields."""
    column, key = ("block_id", block_id) if block_id is not None else ("id", order_id)
    notional = "NULL::numeric" if block_id is not None else 'o."filled_notional"'
    sql = _ORDERS_LOCK_SQL.replace("{column}", column).replace("{notional}", notional)
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute(sql, [key])
        return [_OrderRow(*row) for row in cursor.fetchall()]


# The broker's commission schedule (NULLs when it has none), as one row: a fill's read's first.
_SCHEDULE_SQL = (
    'SELECT c."bps", c."per_share", c."min_per_ticket", c."fees_bps" FROM (SELECT) AS one '
    f'LEFT JOIN "{CommissionSchedule._meta.db_table}" AS c ON c."broker_id" = %s::bigint'
)
# Sums of quantity * price never rounded: 64 digits hold any NOTIONAL_DIGITS value (48), and
# a result that would need more raises (Inexact) instead of being rounded.
_EXACT = Context(prec=64, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
# An execution's last_qty and last_px as its row holds them (PostgreSQL rounds a numeric to its
# column's scale half away from zero, as ROUND_HALF_UP does).
_LAST_QTY_QUANTUM = Decimal(1).scaleb(-Execution._meta.get_field("last_qty").decimal_places)  # type: ignore[union-attr]
_LAST_PX_QUANTUM = Decimal(1).scaleb(-Execution._meta.get_field("last_px").decimal_places)  # type: ignore[union-attr]


def fill_totals(
    filled: Decimal, notional: Decimal, last_qty: Decimal, last_px: Decimal
) -> tuple[Decimal, Decimal]:
    """The fills' totals after one more fill: `filled` (cum_qty) and `notional` (the exact sum
    of last_qty * last_px) of a block or lone order, as its locked row holds them, with the
    fill's own `last_qty` at `last_px` added (a report with no quantity adds nothing), at
    their columns' scale, as the fill's Execution row stores them.

    They were the sums over every execution of the block so far, read with each fill: the
    PostgreSQL CPU of a small fill grew by about 0.2 ms per 100 earlier fills of its block
    (2.9 ms at 70, 3.6 ms at 420), so a block's day of fills was quadratic. Kept on the row
    the fill locks anyway and written by the statement that moves it (`_rebook`), the fill's
    cost no longer depends on how many came before. Measured (session 17) on blocks of 5
    orders, the old and new code alternated in one process on identical blocks, the block's
    executions spread over the table (15 other executions after each): at fill ~1,000,
    PostgreSQL CPU per fill 4.79 -> 3.75 ms via execution_apply (paired median -1.00 ms, lower
    in 36/40 pairs; wall -1.14 ms, 33/40), 4.28 -> 3.14 ms via fill_allocate (-1.13 ms, 39/40;
    wall -1.28 ms, 34/40), 38.6 -> 24.2 ms per executions_apply batch of 10 fills (-13.1 ms,
    39/40; wall -18.0 ms, 38/40); at fill ~20, no worse (-0.14 ms, 76/120 via execution_apply;
    -0.06 ms, 70/120 via fill_allocate; Python +0.08 ms, 56/120, within the noise).
    """
    if last_qty <= 0:
        return filled, notional
    qty = last_qty.quantize(_LAST_QTY_QUANTUM, rounding=ROUND_HALF_UP)
    px = last_px.quantize(_LAST_PX_QUANTUM, rounding=ROUND_HALF_UP)
    return _EXACT.add(filled, qty), _EXACT.add(notional, _EXACT.multiply(qty, px))


def _average(filled: Decimal, notional: Decimal) -> Decimal:
    if not filled:
        return ZERO
    return (notional / filled).quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP)


def _entry_target(order: Any, *, requested: Decimal, weight: Decimal | None = None) -> Any:
    return engine.AllocationTarget(
        key=order.id, requested=requested, weight=weight, entry_seq=(order.created_at, order.id)
    )


def _pro_rata(orders: Sequence[Any]) -> engine.ProRata:
    return engine.ProRata(
        [o.id for o in orders], [o.quantity for o in orders], [(o.created_at, o.id) for o in orders]
    )


def _policy_targets(
    orders: Sequence[Any],
    filled: Decimal,
    lot: Decimal,
    policy: BlockAllocationPolicy | None,
    pro_rata: engine.ProRata | None = None,
) -> dict[int, Decimal]:
    """Each order's cumulative quantity for `filled` under the block's allocation policy
    (`pro_rata`: `_pro_rata(orders)`, when the caller made it already)."""
    if policy is not None and policy.method == AllocationMethod.FIXED_RATIO:
        targets = [
            _entry_target(o, requested=o.quantity, weight=Decimal(policy.ratios[str(o.pk)]))
            for o in orders
        ]
        return cast(dict[int, Decimal], engine.allocate_cumulative(targets, filled, lot))
    if (
        policy is not None
        and policy.method == AllocationMethod.MANUAL
        and filled >= policy.filled_at
    ):
        manual = {o.pk: Decimal(policy.quantities.get(str(o.pk), "0")) for o in orders}
        # Fills after a manual allocation are shared pro-rata to what each order has room for.
        room = [_entry_target(o, requested=o.quantity - manual[o.pk]) for o in orders]
        extra = engine.allocate_cumulative(room, filled - policy.filled_at, lot)
        return {o.pk: manual[o.pk] + extra[o.pk] for o in orders}
    return cast(dict[int, Decimal], (pro_rata or _pro_rata(orders)).allocate(filled, lot))


class _Booked(NamedTuple):
    """An order's cumulative allocation so far (a tuple: built 1,000 times for a big fill)."""

    quantity: Decimal = ZERO
    gross: Decimal = ZERO
    commission: Decimal = ZERO
    fees: Decimal = ZERO
    net: Decimal = ZERO
    last_id: int | None = None


_NOTHING_BOOKED = _Booked()

# One row per order: its latest allocation row's cumulative fields (NULL when it has none), and
# a new id of the allocation table's sequence for the row this fill may write for it. Taking
# the ids here, before the rows are written, lets the writing statement answer nothing the
# caller waits for: in pipeline mode (execution_apply's big fills) the rest of the fill's
# Python (its audit entry, the orders' states, the blotter events) runs while PostgreSQL
# writes. An order that gets no row leaves its id unused (a gap in the sequence, as a rollback
# leaves). The sequence is named by a scalar subquery (an InitPlan, run once per statement):
# as a joined one-row subquery the planner pulls it up and runs pg_get_serial_sequence (a
# catalog look-up and a name parse) again for every order, about 3.5 ms for 1,000 orders.
_BOOKED_SQL = (
    'SELECT o.id, a."cum_quantity", a."cum_gross", a."cum_commission", a."cum_fees", '
    'a."cum_net", a."id", nextval((SELECT pg_get_serial_sequence('
    f"'\"{Allocation._meta.db_table}\"', 'id')::regclass)) "
    "FROM unnest(%s::bigint[]) AS o(id) LEFT JOIN LATERAL ("
    f'SELECT * FROM "{Allocation._meta.db_table}" AS a '
    'WHERE a."order_id" = o.id AND {block_match} ORDER BY a."block_id" DESC, a."id" DESC LIMIT 1) '
    "AS a ON true"
)
# A block's rows matched as a range of (order_id, block_id) pairs, not `block_id = %s`: only
# allocation_order_block_id_idx can use that, so the planner cannot pick the block_id index
# instead and read every row of the block for each order (it did for blocks newer than the
# table's statistics, which it guesses hold one row: 0.84 -> 0.04 ms for a block of 5 orders
# with 1,045 rows). The two bounds name the same pair, so it is exactly `block_id = %s`; the
# latest row is then the first of a backward scan of the index.
_BLOCK_MATCH = (
    '(a."order_id", a."block_id") >= (o.id, %s::bigint) '
    'AND (a."order_id", a."block_id") <= (o.id, %s::bigint)'
)


def _booked_rows(rows: Sequence[Sequence[Any]]) -> tuple[dict[int, _Booked], dict[int, int]]:
    """The booked orders' cumulative allocations, and every order's new row id (_BOOKED_SQL)."""
    make = _Booked._make
    booked = {row[0]: make(row[1:7]) for row in rows if row[6] is not None}
    return booked, {row[0]: row[7] for row in rows}


def _booked(
    *, block_id: int | None, order_ids: Sequence[int]
) -> tuple[dict[int, _Booked], dict[int, int]]:
    """Each order's cumulative allocation so far (the cum_* fields of its latest row), and a
    new allocation id for each order.

    One index probe per order (allocation_order_block_id_idx), so the cost does not grow with the
    number of fills already allocated.
    """
    if not order_ids:
        return {}, {}
    block_match = _BLOCK_MATCH if block_id is not None else 'a."block_id" IS NULL'
    params: list[Any] = [_array(order_ids)]
    if block_id is not None:
        params += [block_id, block_id]
    with raw_cursor() as cursor:
        cursor.execute(_BOOKED_SQL.replace("{block_match}", block_match), params)
        return _booked_rows(cursor.fetchall())


_POSITIONS_LOCK_SQL = (
    'SELECT "id", "account_id", "quantity", "avg_cost", "realised_pnl", "version" '
    f'FROM "{Position._meta.db_table}" WHERE "instrument_id" = %s '
    'AND "account_id" = ANY(%s::bigint[]) ORDER BY "account_id" FOR UPDATE'
)
# Lock or create, one pass in account order (`made`, a data-modifying WITH part): a position
# that exists is locked FOR UPDATE (the ON CONFLICT clause names a key column, so its lock is
# FOR UPDATE's, and updates nothing: WHERE false), a missing one is inserted (version 1, as a
# fill finds a new position), and one another transaction is inserting is waited for as one
# it has locked: every position is taken in the one order, found or made. RETURNING gives the
# inserted rows only. {after}: a one-time filter that runs an earlier WITH part first.
_POSITIONS_MAKE_SQL = (
    f'INSERT INTO "{Position._meta.db_table}" AS t ("account_id", "instrument_id", "quantity", '
    '"avg_cost", "realised_pnl", "version", "updated_at") '
    "SELECT a, %s, 0, 0, 0, 1, statement_timestamp() FROM unnest(%s::bigint[]) AS a {after} "
    'ORDER BY a ON CONFLICT ("account_id", "instrument_id") DO UPDATE '
    'SET "account_id" = EXCLUDED."account_id" WHERE false RETURNING t."id", t."account_id"'
)
# The values of the positions `made` locked (a statement's snapshot does not see its own
# inserts, and the lock's read takes the newest version of a row locked after a wait).
_POSITIONS_AFTER_MADE_SQL = _POSITIONS_LOCK_SQL.replace(
    " WHERE ", " WHERE (SELECT count(*) FROM made) >= 0 AND ", 1
)
_POSITIONS_DROP_SQL = f'DELETE FROM "{Position._meta.db_table}" WHERE "id" = ANY(%s::bigint[])'
# `_lock_positions` and a split read's positions when some may be missing: the rows found and
# the rows made (zero, version 1), each with whether it was made.
_POSITIONS_LOCK_OR_CREATE_SQL = (
    f"WITH made AS ({_POSITIONS_MAKE_SQL.replace(' {after}', '')}), "
    f"found AS MATERIALIZED ({_POSITIONS_AFTER_MADE_SQL}) "
    "SELECT f.*, false FROM found AS f UNION ALL SELECT m.id, m.account_id, 0::numeric, "
    "0::numeric, 0::numeric, 1, true FROM made AS m"
)


def positions_may_be_missing(orders: Iterable[Any]) -> bool:
    """Whether an account of `orders` (locked, of one instrument) may hold no position in it yet:
    one of them was never filled. An order filled before has its account's position: the fill
    that moved its cum_qty moved that position (made it when missing), in the same transaction,
    and a position moved once is never deleted."""
    return any(not o.cum_qty for o in orders)


# fill_read's with an Execution insert (`ins`) in the same statement: the positions locked once
# the insert is done.
_POSITIONS_AFTER_INSERT_SQL = _POSITIONS_LOCK_SQL.replace(
    " WHERE ", " WHERE (SELECT count(*) FROM ins) >= 0 AND ", 1
)


@dataclass(slots=True)
class _PositionRow:
    pk: int
    account_id: int
    quantity: Decimal
    avg_cost: Decimal
    realised_pnl: Decimal
    version: int
    made: bool = False  # inserted by this lock (`_POSITIONS_MAKE_SQL`): dropped if not moved


class FillRead:
    """A fill's read (`fill_read`) sent and not yet answered: in pipeline mode PostgreSQL runs
    it while the caller goes on, and `result` waits for it. `lock_positions`: the parameters
    of the positions' lock, sent as a statement of its own once the rest of the read is
    answered (`fill_read`'s `split`)."""

    def __init__(
        self,
        cursor: Any,
        block_id: int | None,
        order_ids: list[int],
        lock_positions: list[Any] | None = None,
        lock_accounts: frozenset[int] = frozenset(),
        lock_sql: str = _POSITIONS_LOCK_SQL,
    ) -> None:
        self.cursor = cursor
        self.block_id = block_id
        self.order_ids = order_ids
        self.lock_positions = lock_positions
        self.lock_accounts = lock_accounts
        self.lock_sql = lock_sql
        self.positions_cursor: Any = None
        self._rows: list[Any] | None = None
        self._positions: dict[int, _PositionRow] | None = None
        # `prepare`'s: the orders it was made of (the very list) and their pro-rata part.
        self._prepared: tuple[Sequence[Any], engine.ProRata] | None = None

    def prepare(self, orders: Sequence[Any]) -> None:
        """Make the allocation's part that needs no fill (`_pro_rata` of `orders`, the orders
        of a block without allocation policy) while PostgreSQL runs this read, for
        fill_allocate given this read and the same `orders` list. Orders it refuses are left
        to fill_allocate, which refuses them where an allocation's errors are raised."""
        with suppress(ValueError, TypeError):
            self._prepared = (orders, _pro_rata(orders))

    def pro_rata_of(self, orders: Sequence[Any]) -> engine.ProRata | None:
        """`prepare`'s pro-rata part, when it was made of this very list of orders."""
        prepared = self._prepared
        return prepared[1] if prepared is not None and prepared[0] is orders else None

    def _fetch(self) -> list[Any]:
        if self._rows is None:
            with self.cursor as cursor:
                self._rows = cursor.fetchall()
            if self.lock_positions is not None:
                # Right behind the read's answer (psycopg's pipeline waits for every statement
                # sent before it answers one): PostgreSQL locks them while the caller makes the
                # fill's rows from that answer.
                self.positions_cursor = raw_cursor()
                self.positions_cursor.execute(self.lock_sql, self.lock_positions)
        return self._rows

    def inserted_id(self) -> int | None:
        """The id of the Execution row the read inserted (`fill_read`'s `insert`); None when
        it inserted none (its (session, ExecID) was stored already)."""
        (fills,) = [row for row in self._fetch() if row[4] is None and row[12] is None]
        return cast(int | None, fills[11])

    def result(
        self,
    ) -> tuple[
        engine.CommissionSchedule,
        dict[int, _Booked],
        dict[int, int],
        dict[int, _PositionRow],
    ]:
        """The broker's schedule, what each order has booked and its new row id, and the
        positions locked (by account_id). The fills' totals are not read: the fill takes them
        from its locked block or lone order (`fill_totals`)."""
        return (*self.totals(), self.positions())

    def totals(
        self,
    ) -> tuple[engine.CommissionSchedule, dict[int, _Booked], dict[int, int]]:
        """`result` but the positions: with the positions' lock sent on its own, this does not
        wait for it."""
        rows = self._fetch()
        # The schedule's row has no order (column 4) and no version (12); an order's row no
        # version; a position's row has column 8 set when the read made it (`create`).
        # One pass over the rows (a big fill's are 2,000): what _booked_rows makes of the
        # orders' rows (columns 4 to 11), built here directly.
        found: list[Any] = []
        positions: dict[int, _PositionRow] = {}
        booked: dict[int, _Booked] = {}
        new_ids: dict[int, int] = {}
        make = _Booked._make
        for row in rows:
            if row[12] is not None:
                positions[row[4]] = _PositionRow(
                    row[10], row[4], row[5], row[6], row[7], row[12], row[8] is not None
                )
            elif row[4] is None:
                found.append(row)
            else:
                order_id = row[4]
                if row[10] is not None:
                    booked[order_id] = make(row[5:11])
                new_ids[order_id] = row[11]
        if self.lock_positions is None:
            self._positions = positions
        (fills,) = found
        bps, per_share, minimum, fees_bps = fills[:4]
        schedule = (
            engine.CommissionSchedule()
            if bps is None
            else engine.CommissionSchedule(
                bps=bps, per_share=per_share, min_per_ticket=minimum, fees_bps=fees_bps
            )
        )
        return schedule, booked, new_ids

    def positions_found(self, account_ids: set[int]) -> bool:
        """Whether the positions' lock (sent on its own: `fill_read`'s `split`) asked for every
        one of `account_ids` and found (or, with `create`, made) a position for each account it
        asked for. Waits for the lock's answer but does not parse its rows (a big fill's 1,000:
        over a millisecond), so a caller that needs none created can send its rows first."""
        if self.lock_positions is None or not account_ids <= self.lock_accounts:
            return False
        self._fetch()
        cursor = self.positions_cursor
        # Waits for the answer (its row count), its rows left unparsed; an empty answer has
        # no row 0 to stay at, and its count is set all the same.
        with suppress(IndexError):
            cursor.scroll(0)
        # One position per (account, instrument) (unique), so as many rows as accounts asked
        # for means none is missing.
        return bool(cursor.rowcount == len(self.lock_accounts))

    def discard(self) -> None:
        """Delete the positions the read made (`create`), for a read whose fill is not booked:
        a duplicate report's read, sent before its insert was known to insert nothing, must
        leave the book as it was (no empty position that no fill made)."""
        made = [p.pk for p in self.positions().values() if p.made]
        if made:
            with raw_cursor() as cursor:
                cursor.execute(_POSITIONS_DROP_SQL, [_array(made)])

    def positions(self) -> dict[int, _PositionRow]:
        """The positions the read locked, by account_id (waits for their lock)."""
        if self._positions is None:
            if self.lock_positions is None:
                self.totals()  # the read's own rows hold them
            else:
                self._fetch()  # the lock is sent once the rest is answered
                with self.positions_cursor as cursor:
                    self._positions = {row[1]: _PositionRow(*row) for row in cursor.fetchall()}
        assert self._positions is not None
        return self._positions


def fill_read(
    *,
    block_id: int | None,
    order_id: int | None,
    broker_id: int | None,
    order_ids: list[int],
    instrument_id: int,
    account_ids: list[int],
    insert: tuple[str, Sequence[Any]] | None = None,
    split: bool = False,
    create: bool = False,
) -> FillRead:
    """Send the read of a fill: the broker's commission schedule and `_booked`, and its orders'
    accounts' positions in the instrument locked as `_lock_positions` locks them (by
    account_id; missing ones are made only with `create`), in one statement: one row of the
    schedule, one per order, then one per position found (the schedule once, not on each of a
    big block's 1,000 order rows). The fills' totals are not read (`fill_totals`).

    Taken after the orders' locks and after the fill's Execution row is written, in the fixed
    lock order; the positions of every order of the block are locked, whether this fill moves
    them or not. The answer is read by `FillRead.result` (or by `fill_allocate`, given it).

    `insert`: the fill's Execution row written by the same statement, first (a small fill's
    caller: one round trip less), as an `INSERT ... ON CONFLICT DO NOTHING RETURNING id` and
    its parameters. Its id is `FillRead.inserted_id`. The positions' lock starts with a
    one-time read of the insert's result (an InitPlan), so it is taken once the insert is done
    (after any wait on a concurrent copy of the report), in the same order as with two
    statements; the booked rows are read under the orders' locks the caller took in earlier
    statements, as before.

    `split` (in pipeline mode, without `insert`; for a caller that sends nothing else before
    it reads the answer): the positions' lock is a statement of its own, sent as soon as the
    rest is answered (`FillRead.totals`), and `FillRead.positions` waits for it. PostgreSQL
    locks a big fill's positions (about 3 ms for 1,000) while the caller makes the fill's rows
    from the rest; the same locks in the same order, the first statement taking none.

    `create` (some account may hold no position yet: `positions_may_be_missing`): the
    positions are locked or made in one pass in account order (`_POSITIONS_MAKE_SQL`), so a
    missing one is taken in the same order as one found, never after locking a later account
    (two fills making the same positions cannot deadlock); the rows made are marked
    (`_PositionRow.made`), and `_rebook` deletes those no move needed. With `insert`, none is
    made when the insert inserted nothing (a duplicate, whose read is not used). Without
    `create` the positions found are locked, and a missing one would be made by `_rebook`,
    after them.
    """
    block_match = _BLOCK_MATCH if block_id is not None else 'a."block_id" IS NULL'
    if split:
        if insert is not None:
            raise ValueError("a split read inserts nothing")
        return _fill_read_split(
            block_id,
            broker_id,
            order_ids,
            instrument_id,
            account_ids,
            block_match,
            create,
        )
    if insert is None:
        head, positions, inserted = "WITH", _POSITIONS_LOCK_SQL, "NULL::bigint"
    else:
        head = f"WITH ins AS ({insert[0]}),"
        positions = _POSITIONS_AFTER_INSERT_SQL
        inserted = "(SELECT i.id FROM ins AS i)"
    made = ""
    if create:
        after = "WHERE (SELECT count(*) FROM ins) > 0" if insert is not None else ""
        head = f"{head} made AS ({_POSITIONS_MAKE_SQL.replace('{after}', after)}),"
        positions = _POSITIONS_AFTER_MADE_SQL
        made = (
            " UNION ALL SELECT NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, "
            "m.account_id, 0, 0, 0, 1, NULL::numeric, m.id, NULL::bigint, 1 FROM made AS m"
        )
    sql = (
        f"{head} pos AS MATERIALIZED ({positions}) "
        f"SELECT fl.*, NULL::bigint, NULL::numeric, NULL::numeric, NULL::numeric, "
        f"NULL::numeric, NULL::numeric, NULL::bigint, {inserted}, NULL::integer "
        f"FROM ({_SCHEDULE_SQL}) AS fl "
        "UNION ALL SELECT NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, "
        "bk.*, NULL::integer "
        f"FROM ({_BOOKED_SQL.replace('{block_match}', block_match)}) AS bk "
        "UNION ALL SELECT NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, "
        "p.account_id, p.quantity, p.avg_cost, p.realised_pnl, "
        f"NULL::numeric, NULL::numeric, p.id, NULL::bigint, p.version FROM pos AS p{made}"
    )
    accounts = _array(account_ids)
    params: list[Any] = [instrument_id, accounts, broker_id, _array(order_ids)]
    if create:
        params = [instrument_id, accounts, *params]
    if block_id is not None:
        params += [block_id, block_id]
    if insert is not None:
        params = [*insert[1], *params]
    cursor = raw_cursor()
    cursor.execute(sql, params)
    return FillRead(cursor, block_id, order_ids)


def _fill_read_split(
    block_id: int | None,
    broker_id: int | None,
    order_ids: list[int],
    instrument_id: int,
    account_ids: list[int],
    block_match: str,
    create: bool,
) -> FillRead:
    """`fill_read`'s `split`: the schedule and what each order booked, the positions' lock
    sent by `FillRead` once that is answered."""
    sql = (
        f"SELECT fl.*, NULL::bigint, NULL::numeric, NULL::numeric, NULL::numeric, "
        f"NULL::numeric, NULL::numeric, NULL::bigint, NULL::bigint, NULL::integer "
        f"FROM ({_SCHEDULE_SQL}) AS fl "
        "UNION ALL SELECT NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, "
        "bk.*, NULL::integer "
        f"FROM ({_BOOKED_SQL.replace('{block_match}', block_match)}) AS bk"
    )
    params: list[Any] = [broker_id, _array(order_ids)]
    if block_id is not None:
        params += [block_id, block_id]
    cursor = raw_cursor()
    cursor.execute(sql, params)
    accounts = _array(account_ids)
    return FillRead(
        cursor,
        block_id,
        order_ids,
        [instrument_id, accounts, instrument_id, accounts] if create else [instrument_id, accounts],
        frozenset(account_ids),
        _POSITIONS_LOCK_OR_CREATE_SQL if create else _POSITIONS_LOCK_SQL,
    )


def _lock_positions(instrument_id: int, account_ids: set[int]) -> dict[int, _PositionRow]:
    """Lock (creating when missing) the accounts' positions in one instrument, by account_id:
    one pass in account order (`_POSITIONS_LOCK_OR_CREATE_SQL`). Made for accounts a move
    needs, so none is left unmoved."""
    if not account_ids:
        return {}
    ids = _array(sorted(account_ids))
    with raw_cursor() as cursor:
        cursor.execute(_POSITIONS_LOCK_OR_CREATE_SQL, [instrument_id, ids, instrument_id, ids])
        return {row[1]: _PositionRow(*row) for row in cursor.fetchall()}


def _lock_cash(pairs: set[tuple[int, str]]) -> dict[tuple[int, str], SimpleNamespace]:
    """Lock (creating when missing) the cash balances of (account_id, currency) pairs."""
    if not pairs:
        return {}
    account_ids = sorted({a for a, _ in pairs})
    currencies = sorted({c for _, c in pairs})

    def select() -> dict[tuple[int, str], SimpleNamespace]:
        qs = (
            CashBalance.objects.select_for_update()
            .filter(account_id__in=account_ids, currency__in=currencies)
            .order_by("account_id", "currency")
            .values("id", "account_id", "currency", "settled", "pending")
            .annotate(v=F("version"))
        )
        return {
            (c["account_id"], c["currency"]): SimpleNamespace(
                pk=c.pop("id"), version=c.pop("v"), **c
            )
            for c in qs
        }

    found = select()
    missing = sorted(pairs - found.keys())
    if missing:
        CashBalance.objects.bulk_create(
            [CashBalance(account_id=a, currency=c) for a, c in missing], ignore_conflicts=True
        )
        found = select()
    return found


# The columns that differ between the rows of one fill; the others are parameters once.
_ALLOCATION_ROW_COLUMNS = (
    "order_id",
    "account_id",
    "kind",
    "quantity",
    "gross",
    "commission",
    "fees",
    "net",
    "cum_quantity",
    "cum_gross",
    "cum_commission",
    "cum_fees",
    "cum_net",
    "reversal_of",
)

# Everything a fill writes once its rows are computed, in one statement (one round trip and
# one parse instead of six; PostgreSQL runs every data-modifying WITH part to completion):
# the allocation rows, the locked positions, the pending cash (an upsert fed in account_id
# order: a missing balance is created, and the row locks are taken in a fixed order), the
# locked orders, the locked block and the caller's locked placement (no block or placement:
# a NULL id, nothing updated). Arrays travel as text literals (see _array). A big fill in
# pipeline mode sends the same writes as three statements, each as soon as its values are
# made: the orders, block and placement (_BOOK_ORDERS_SQL), the rows with their cash
# (_BOOK_ROWS_SQL), then the positions (_BOOK_POSITIONS_SQL): see PIPELINE_MIN_ORDERS.
# Why the cash stays an upsert (session 15): a plain UPDATE ... FROM unnest (a nested loop in
# account order) took 1.5 ms less PostgreSQL CPU on a 1,000-account fill (50 alternated pairs),
# but makes no missing balance. Choosing it in the same statement needs a look-up of the
# accounts' balances, which cost what it saved (+0.02 ms); and a fill cannot know beforehand
# that they all exist (a balance-less first fill, an instrument whose currency changed).
# Updating the ones found and then upserting the rest would lock out of account order.
_BOOK_INSERT_SQL = (
    f'INSERT INTO "{Allocation._meta.db_table}" ("id", "execution_id", "block_id", '
    '"order_id", "account_id", "instrument_id", "broker_id", "side", "kind", "quantity", '
    '"price", "gross", "commission", "fees", "net", "cum_quantity", "cum_gross", '
    '"cum_commission", "cum_fees", "cum_net", "currency", "trade_date", "settlement_date", '
    '"method", "reversal_of_id", "cash_settled", "created_by_id", "created_at") '
    "SELECT v.id, %(execution)s::bigint, %(block)s::bigint, v.order_id, v.account_id, "
    "%(instrument)s::bigint, %(broker)s::bigint, %(side)s::varchar, v.kind, v.quantity, "
    "%(price)s::numeric, v.gross, v.commission, v.fees, v.net, v.cum_quantity, v.cum_gross, "
    "v.cum_commission, v.cum_fees, v.cum_net, %(currency)s::varchar, %(trade_date)s::date, "
    "%(settles)s::date, %(method)s::varchar, v.reversal_of, false, %(user)s::bigint, "
    "%(now)s::timestamptz FROM unnest(%(id)s::bigint[], %(order_id)s::bigint[], "
    "%(account_id)s::bigint[], "
    "%(kind)s::varchar[], %(quantity)s::numeric[], %(gross)s::numeric[], "
    "%(commission)s::numeric[], %(fees)s::numeric[], %(net)s::numeric[], "
    "%(cum_quantity)s::numeric[], %(cum_gross)s::numeric[], %(cum_commission)s::numeric[], "
    "%(cum_fees)s::numeric[], %(cum_net)s::numeric[], %(reversal_of)s::bigint[]) "
    "AS v(id, order_id, account_id, kind, quantity, gross, commission, fees, net, "
    "cum_quantity, cum_gross, cum_commission, cum_fees, cum_net, reversal_of)"
)
_BOOK_POSITIONS = (
    f'pos AS (UPDATE "{Position._meta.db_table}" AS t SET "quantity" = v.quantity, '
    '"avg_cost" = v.avg_cost, "realised_pnl" = v.realised_pnl, "version" = v.version, '
    '"updated_at" = %(now)s::timestamptz FROM unnest(%(pos_id)s::bigint[], '
    "%(pos_quantity)s::numeric[], %(pos_avg_cost)s::numeric[], %(pos_pnl)s::numeric[], "
    "%(pos_version)s::integer[]) AS v(id, quantity, avg_cost, realised_pnl, version) "
    'WHERE t."id" = v.id)'
)
_BOOK_CASH = (
    f'cash AS (INSERT INTO "{CashBalance._meta.db_table}" AS c ("account_id", "currency", '
    '"settled", "pending", "version", "updated_at") '
    "SELECT v.account_id, %(currency)s::varchar, 0, v.delta, 1, %(now)s::timestamptz "
    "FROM unnest(%(cash_account)s::bigint[], %(cash_delta)s::numeric[]) "
    "WITH ORDINALITY AS v(account_id, delta, n) ORDER BY v.n "
    'ON CONFLICT ("account_id", "currency") DO UPDATE SET '
    '"pending" = c."pending" + EXCLUDED."pending", "version" = c."version" + 1, '
    '"updated_at" = EXCLUDED."updated_at")'
)
_BOOK_ORDERS = (
    f'ord AS (UPDATE "{Order._meta.db_table}" AS t SET "status" = v.status, '
    '"cum_qty" = v.cum_qty, "leaves_qty" = v.leaves_qty, "avg_px" = v.avg_px, '
    '"filled_notional" = CASE t."id" WHEN %(lone)s::bigint THEN %(notional)s::numeric '
    'ELSE t."filled_notional" END, '
    '"version" = v.version, "updated_at" = %(now)s::timestamptz '
    "FROM unnest(%(ord_id)s::bigint[], %(ord_status)s::varchar[], "
    "%(ord_cum)s::numeric[], %(ord_leaves)s::numeric[], %(ord_avg)s::numeric[], "
    "%(ord_version)s::integer[]) AS v(id, status, cum_qty, leaves_qty, avg_px, version) "
    'WHERE t."id" = v.id), '
    f'blk AS (UPDATE "{Block._meta.db_table}" SET "status" = %(block_status)s::varchar, '
    '"cum_qty" = %(block_cum)s::numeric, "filled_notional" = %(notional)s::numeric, '
    '"avg_px" = %(block_avg)s::numeric, "version" = %(block_version)s::integer, '
    '"updated_at" = %(now)s::timestamptz WHERE "id" = %(block_move)s::bigint), '
    f'plc AS (UPDATE "{Placement._meta.db_table}" SET "status" = (%(plc)s::text[])[1], '
    '"cum_qty" = (%(plc)s::text[])[2]::numeric, "avg_px" = (%(plc)s::text[])[3]::numeric, '
    '"version" = (%(plc)s::text[])[4]::integer, "broker_order_id" = (%(plc)s::text[])[5], '
    '"cl_ord_id" = (%(plc)s::text[])[6], "orig_cl_ord_id" = (%(plc)s::text[])[7], '
    '"quantity" = (%(plc)s::text[])[8]::numeric, "limit_price" = (%(plc)s::text[])[9]::numeric, '
    '"updated_at" = (%(plc)s::text[])[10]::timestamptz WHERE "id" = %(plc_id)s::bigint)'
)
_BOOK_MOVES = f"{_BOOK_POSITIONS}, {_BOOK_CASH}, {_BOOK_ORDERS} SELECT NULL"
_BOOK_WRITE_SQL = f"WITH ins AS ({_BOOK_INSERT_SQL}), {_BOOK_MOVES}"
_BOOK_ORDERS_SQL = f"WITH {_BOOK_ORDERS} SELECT NULL"
_BOOK_ROWS_SQL = f"WITH ins AS ({_BOOK_INSERT_SQL}), {_BOOK_CASH} SELECT NULL"
_BOOK_POSITIONS_SQL = f"WITH {_BOOK_POSITIONS} SELECT NULL"
# The placement columns a caller's locked placement has written with the fill (plc above),
# as one text array: psycopg parses a statement once only while it has at most 50 parameters.
_PLACEMENT_WRITTEN = PLACEMENT_REPORT_FIELDS


def _placement_texts(placement: Placement) -> list[str | None]:
    """The written columns of `placement` as text (None as NULL), in _PLACEMENT_WRITTEN order."""
    values = placement.__dict__
    texts: list[str | None] = []
    for name in _PLACEMENT_WRITTEN:
        value = values[name]
        if value is None:
            texts.append(None)
        elif isinstance(value, dt.datetime):
            texts.append(value.isoformat())
        else:
            texts.append(str(value))
    return texts


# A fill of at least this many orders writes in psycopg's pipeline mode (when its caller has
# not turned it on already, as execution_apply does for big blocks), in three statements that
# answer nothing (see _BOOKED_SQL), each sent as soon as its values are made so that PostgreSQL
# writes while the rest is computed: the orders, block and placement once the orders' states
# are known (while the rows are made); the rows and their cash (while the positions are
# moved); the positions (while the Allocation instances, the audit entry and its statements
# are made). Before, the orders' update went with the positions after the rows, and
# PostgreSQL sat idle while the rows were made: writing them first measured -2.3 ms wall per
# 1,000-order fill through fill_allocate (lower in 93 of 128 alternated pairs), -1.0 ms
# through execution_apply (71/128), for +0.6 ms of PostgreSQL CPU (one statement more). The
# gain needs a free core for PostgreSQL while Python makes the rows: with the other core busy
# it was nil. PostgreSQL's writes are then the critical path: what is left idle before them
# waits on the fill's read and targets (benchmarks/fill_timeline).
# Leaving the pipeline (before fill_allocate returns) waits for all of it, and an error of any
# of them is raised there, in the caller's transaction. Small fills write in one statement
# (_BOOK_WRITE_SQL): they gain less than the pipeline's own cost per statement.
PIPELINE_MIN_ORDERS = 64


def _pipeline_enter(stack: ExitStack) -> None:
    """Pipeline mode until `stack` closes, unless the connection is in it already."""
    conn = connection.connection
    if conn.pgconn.pipeline_status == pq.PipelineStatus.OFF:
        stack.enter_context(conn.pipeline())


# A batch's small fills (executions_apply) merged into one booking statement per flush: the
# writes `_BOOK_WRITE_SQL` would make for each fill, held (`BookBuffer.add`) and sent together
# (`BookBuffer.flush`), so that its fixed cost (the parse or the prepared plan's start, one
# run of each data-modifying part and of the allocation table's statement-level reference
# trigger) is paid once per flush instead of once per fill. `fl`: each held fill's shared
# columns (one row of a two-dimensional text array, 1-based in held order); every other part
# names its fill by that index. The rows are inserted in held order (the ids each fill took
# with its read ascend in it); positions, orders, blocks and placements get their last held
# values (each row once, `updated_at` its last fill's moment); cash gets each (account,
# currency)'s summed delta and one version per fill that moved it, upserted in key order.
# A later fill's read of its orders' latest rows and of its positions is not a reason to
# flush: it goes out as it is and what the held writes give those rows is laid over its
# answer (`booked_over`, `positions_over`), so a batch's repeated fills of a block write its
# rows once. Measured against one statement per fill (40 alternated pairs of identical
# worlds, batches of 50 fills over 10 blocks of 5 orders filled before, the benchmark's
# shape: one merged statement a batch), medians per fill: PostgreSQL CPU 2.70 -> 1.14 ms
# (paired -1.59, lower in 40/40), Python CPU 2.56 -> 1.87 ms (-0.71, 39/40), wall 5.50 ->
# 3.22 ms (-2.23, 39/40). Flushing before such a read instead (five merged statements a
# batch, each block's rows updated once per round) cost +0.47 ms of PostgreSQL CPU per fill
# (39/40), +0.20 ms of Python (28/40), +0.70 ms wall (36/40).
_MERGED_FILLS = (
    "fl AS MATERIALIZED (SELECT i AS f, s.a[i][1]::bigint AS execution_id, "
    "s.a[i][2]::bigint AS block_id, s.a[i][3]::bigint AS instrument_id, "
    "s.a[i][4]::bigint AS broker_id, s.a[i][5]::varchar AS side, s.a[i][6]::numeric AS price, "
    "s.a[i][7]::varchar AS currency, s.a[i][8]::date AS trade_date, "
    "s.a[i][9]::date AS settles, s.a[i][10]::varchar AS method, "
    "s.a[i][11]::bigint AS user_id, s.a[i][12]::timestamptz AS now "
    "FROM (SELECT %(fills)s::text[] AS a) AS s, generate_subscripts(s.a, 1) AS i)"
)
_MERGED_INSERT = (
    f'ins AS (INSERT INTO "{Allocation._meta.db_table}" ("id", "execution_id", "block_id", '
    '"order_id", "account_id", "instrument_id", "broker_id", "side", "kind", "quantity", '
    '"price", "gross", "commission", "fees", "net", "cum_quantity", "cum_gross", '
    '"cum_commission", "cum_fees", "cum_net", "currency", "trade_date", "settlement_date", '
    '"method", "reversal_of_id", "cash_settled", "created_by_id", "created_at") '
    "SELECT v.id, fl.execution_id, fl.block_id, v.order_id, v.account_id, fl.instrument_id, "
    "fl.broker_id, fl.side, v.kind, v.quantity, fl.price, v.gross, v.commission, v.fees, "
    "v.net, v.cum_quantity, v.cum_gross, v.cum_commission, v.cum_fees, v.cum_net, "
    "fl.currency, fl.trade_date, fl.settles, fl.method, v.reversal_of, false, fl.user_id, "
    "fl.now FROM unnest(%(id)s::bigint[], %(order_id)s::bigint[], %(account_id)s::bigint[], "
    "%(kind)s::varchar[], %(quantity)s::numeric[], %(gross)s::numeric[], "
    "%(commission)s::numeric[], %(fees)s::numeric[], %(net)s::numeric[], "
    "%(cum_quantity)s::numeric[], %(cum_gross)s::numeric[], %(cum_commission)s::numeric[], "
    "%(cum_fees)s::numeric[], %(cum_net)s::numeric[], %(reversal_of)s::bigint[], "
    "%(row_fill)s::integer[]) WITH ORDINALITY AS v(id, order_id, account_id, kind, quantity, "
    "gross, commission, fees, net, cum_quantity, cum_gross, cum_commission, cum_fees, cum_net, "
    "reversal_of, f, n) JOIN fl ON fl.f = v.f ORDER BY v.n)"
)
_MERGED_POSITIONS = (
    f'pos AS (UPDATE "{Position._meta.db_table}" AS t SET "quantity" = v.quantity, '
    '"avg_cost" = v.avg_cost, "realised_pnl" = v.realised_pnl, "version" = v.version, '
    '"updated_at" = fl.now FROM unnest(%(pos_id)s::bigint[], %(pos_quantity)s::numeric[], '
    "%(pos_avg_cost)s::numeric[], %(pos_pnl)s::numeric[], %(pos_version)s::integer[], "
    "%(pos_fill)s::integer[]) AS v(id, quantity, avg_cost, realised_pnl, version, f) "
    'JOIN fl ON fl.f = v.f WHERE t."id" = v.id)'
)
_MERGED_CASH = (
    f'cash AS (INSERT INTO "{CashBalance._meta.db_table}" AS c ("account_id", "currency", '
    '"settled", "pending", "version", "updated_at") '
    "SELECT v.account_id, v.currency, 0, v.delta, v.moves, fl.now "
    "FROM unnest(%(cash_account)s::bigint[], %(cash_currency)s::varchar[], "
    "%(cash_delta)s::numeric[], %(cash_moves)s::integer[], %(cash_fill)s::integer[]) "
    "WITH ORDINALITY AS v(account_id, currency, delta, moves, f, n) JOIN fl ON fl.f = v.f "
    'ORDER BY v.n ON CONFLICT ("account_id", "currency") DO UPDATE SET '
    '"pending" = c."pending" + EXCLUDED."pending", "version" = c."version" + EXCLUDED."version", '
    '"updated_at" = EXCLUDED."updated_at")'
)
_MERGED_ORDERS = (
    f'ord AS (UPDATE "{Order._meta.db_table}" AS t SET "status" = v.status, '
    '"cum_qty" = v.cum_qty, "leaves_qty" = v.leaves_qty, "avg_px" = v.avg_px, '
    '"filled_notional" = COALESCE(v.notional, t."filled_notional"), '
    '"version" = v.version, "updated_at" = fl.now '
    "FROM unnest(%(ord_id)s::bigint[], %(ord_status)s::varchar[], "
    "%(ord_cum)s::numeric[], %(ord_leaves)s::numeric[], %(ord_avg)s::numeric[], "
    "%(ord_notional)s::numeric[], %(ord_version)s::integer[], %(ord_fill)s::integer[]) "
    "AS v(id, status, cum_qty, leaves_qty, avg_px, notional, version, f) "
    'JOIN fl ON fl.f = v.f WHERE t."id" = v.id), '
    f'blk AS (UPDATE "{Block._meta.db_table}" AS t SET "status" = v.status, '
    '"cum_qty" = v.cum_qty, "avg_px" = v.avg_px, "filled_notional" = v.notional, '
    '"version" = v.version, "updated_at" = fl.now '
    "FROM unnest(%(blk_id)s::bigint[], %(blk_status)s::varchar[], %(blk_cum)s::numeric[], "
    "%(blk_avg)s::numeric[], %(blk_notional)s::numeric[], %(blk_version)s::integer[], "
    "%(blk_fill)s::integer[]) AS v(id, status, cum_qty, avg_px, notional, version, f) "
    'JOIN fl ON fl.f = v.f WHERE t."id" = v.id), '
    f'plc AS (UPDATE "{Placement._meta.db_table}" AS t SET "status" = s.a[v.n][1], '
    '"cum_qty" = s.a[v.n][2]::numeric, "avg_px" = s.a[v.n][3]::numeric, '
    '"version" = s.a[v.n][4]::integer, "broker_order_id" = s.a[v.n][5], '
    '"cl_ord_id" = s.a[v.n][6], "orig_cl_ord_id" = s.a[v.n][7], '
    '"quantity" = s.a[v.n][8]::numeric, "limit_price" = s.a[v.n][9]::numeric, '
    '"updated_at" = s.a[v.n][10]::timestamptz '
    "FROM unnest(%(plc_id)s::bigint[]) WITH ORDINALITY AS v(id, n), "
    '(SELECT %(plc)s::text[] AS a) AS s WHERE t."id" = v.id)'
)
_BOOK_MERGED_SQL = (
    f"WITH {_MERGED_FILLS}, {_MERGED_INSERT}, {_MERGED_POSITIONS}, {_MERGED_CASH}, "
    f"{_MERGED_ORDERS} SELECT NULL"
)


def _quanta(model: Any, names: Sequence[str]) -> tuple[Decimal, ...]:
    """The smallest step of each decimal column (its scale)."""
    return tuple(Decimal(1).scaleb(-model._meta.get_field(n).decimal_places) for n in names)


_CUM_QUANTA = _quanta(
    Allocation, ("cum_quantity", "cum_gross", "cum_commission", "cum_fees", "cum_net")
)
_POSITION_QUANTA = _quanta(Position, ("quantity", "avg_cost", "realised_pnl"))


def _matrix_literal(rows: Iterable[Sequence[Any]]) -> str:
    """A two-dimensional text array literal (rows of one length; None as NULL)."""
    return "{" + ",".join(map(array_literal, rows)) + "}"


def _held_arrays(
    prefix: str, held: Mapping[int, Sequence[Any]], names: Sequence[str]
) -> dict[str, str]:
    """`held` rows (by id) as one array per column, in id order: `<prefix>_id`, then
    `<prefix>_<name>` for each of the rows' columns, in `names` order."""
    ids = sorted(held)
    rows = [held[pk] for pk in ids]
    arrays = {f"{prefix}_id": _array(ids)}
    for i, name in enumerate(names):
        arrays[f"{prefix}_{name}"] = _array(row[i] for row in rows)
    return arrays


class BookBuffer:
    """The booking writes of a batch's small fills, held to be sent as one statement
    (`_BOOK_MERGED_SQL`): see `book_merged`."""

    def __init__(self) -> None:
        self.fills: list[list[Any]] = []
        self.row_texts: list[list[str]] = [[] for _ in range(len(_ALLOCATION_ROW_COLUMNS) + 2)]
        # By id: the last held values and the index (1-based) of the fill that held them.
        self.positions: dict[int, tuple[Any, ...]] = {}
        self.orders: dict[int, tuple[Any, ...]] = {}
        self.blocks: dict[int, tuple[Any, ...]] = {}
        self.placements: dict[int, list[str | None]] = {}
        # (account_id, currency): [summed delta, fills that moved it, last such fill]
        self.cash: dict[tuple[int, str], list[Any]] = {}
        # What a later statement must not read or write before the flush (`touches`).
        self.order_ids: set[int] = set()
        self.placement_ids: set[int] = set()
        # A lone order's fills' notional (Order.filled_notional), by order id: the last held.
        self.notionals: dict[int, Decimal] = {}
        self.block_ids: set[int] = set()
        # What a later fill's read finds of the held rows, as their columns will hold it
        # (`booked_over`, `positions_over`): each order's latest held row, and each held
        # position by (account_id, instrument_id).
        self.booked: dict[int, _Booked] = {}
        self.held_positions: dict[tuple[int, int], _PositionRow] = {}

    def __bool__(self) -> bool:
        return bool(self.fills)

    def touches(
        self,
        *,
        placement_id: int | None = None,
        block_id: int | None = None,
        order_ids: Iterable[int] = (),
    ) -> bool:
        """Whether a held write is of one of these rows."""
        if not self.fills:
            return False
        return (
            placement_id in self.placement_ids
            or block_id in self.block_ids
            or not self.order_ids.isdisjoint(order_ids)
        )

    def booked_over(
        self, booked: dict[int, _Booked], order_ids: Iterable[int]
    ) -> dict[int, _Booked]:
        """A fill's read of what its orders booked (`_BOOKED_SQL`, sent before the held rows
        are written) completed with the held rows: an order's latest held row is its latest."""
        held = self.booked
        over = [pk for pk in order_ids if pk in held] if held else []
        if not over:
            return booked
        return {**booked, **{pk: held[pk] for pk in over}}

    def positions_over(
        self, positions: dict[int, _PositionRow], instrument_id: int
    ) -> dict[int, _PositionRow]:
        """A fill's locked positions (by account_id, read before the held writes are sent)
        with the values the held writes give them."""
        held = self.held_positions
        if not held:
            return positions
        out = dict(positions)
        for account_id, position in positions.items():
            values = held.get((account_id, instrument_id))
            if values is not None:
                assert values.pk == position.pk
                out[account_id] = _PositionRow(
                    position.pk,
                    account_id,
                    values.quantity,
                    values.avg_cost,
                    values.realised_pnl,
                    values.version,
                    position.made,
                )
        return out

    def add(
        self,
        common: Mapping[str, Any],
        row_ids: Sequence[int],
        rows: Sequence[tuple[Any, ...]],
        id_texts: list[str],
        texts: list[list[str]],
        positions: Sequence[_PositionRow],
        instrument_id: int,
        cash: Mapping[int, Decimal],
        orders: Sequence[Any],
        order_ids: Sequence[int],
        block: Block | None,
        placement: Placement | None,
        lone: tuple[int, Decimal] | None = None,
    ) -> None:
        """Hold one fill's writes (`_rebook`'s `_BOOK_WRITE_SQL`, with the same values).

        `lone`: a lone order's id and its fills' new notional (`Order.filled_notional`)."""
        now = common["now"]
        self.fills.append(
            [
                common["execution"],
                common["block"],
                common["instrument"],
                common["broker"],
                common["side"],
                common["price"],
                common["currency"],
                common["trade_date"],
                common["settles"],
                common["method"],
                common["user"],
                now.isoformat(),
            ]
        )
        f = len(self.fills)
        if id_texts:
            columns = self.row_texts
            columns[0] += id_texts
            for column, column_texts in zip(columns[1:], texts, strict=False):
                column += column_texts
            columns[-1] += [str(f)] * len(id_texts)
        booked, make = self.booked, _Booked._make
        for pk, row in zip(row_ids, rows, strict=True):
            # As the columns will hold them: rounded to their scale (PostgreSQL's numeric
            # rounds half away from zero, as ROUND_HALF_UP).
            booked[row[0]] = make(
                [v.quantize(q, ROUND_HALF_UP) for v, q in zip(row[8:13], _CUM_QUANTA, strict=True)]
                + [pk]
            )
        at = self.held_positions
        quantity_q, cost_q, pnl_q = _POSITION_QUANTA
        for p in positions:
            self.positions[p.pk] = (p.quantity, p.avg_cost, p.realised_pnl, p.version, f)
            at[(p.account_id, instrument_id)] = _PositionRow(
                p.pk,
                p.account_id,
                p.quantity.quantize(quantity_q, ROUND_HALF_UP),
                p.avg_cost.quantize(cost_q, ROUND_HALF_UP),
                p.realised_pnl.quantize(pnl_q, ROUND_HALF_UP),
                p.version,
            )
        currency = common["currency"]
        for account_id, delta in cash.items():
            key = (account_id, currency)
            held = self.cash.get(key)
            if held is None:
                self.cash[key] = [delta, 1, f]
            else:
                held[0] += delta
                held[1] += 1
                held[2] = f
        for o in orders:
            self.orders[o.id] = (o.status, o.cum_qty, o.leaves_qty, o.avg_px, o.version, f)
        if lone is not None:
            self.notionals[lone[0]] = lone[1]
        self.order_ids.update(order_ids)
        if block is not None:
            self.blocks[block.pk] = (
                block.status,
                block.cum_qty,
                block.avg_px,
                block.version,
                f,
                block.filled_notional,
            )
            self.block_ids.add(block.pk)
        if placement is not None:
            self.placements[placement.pk] = _placement_texts(placement)
            self.placement_ids.add(placement.pk)

    def flush(self) -> None:
        """Send the held writes as one statement (nothing when none is held)."""
        if not self.fills:
            return
        columns = self.row_texts
        params: dict[str, Any] = {"fills": _matrix_literal(self.fills)}
        params["id"] = _array_of_texts(columns[0])
        for name, column_texts in zip(_ALLOCATION_ROW_COLUMNS, columns[1:], strict=False):
            params[name] = _array_of_texts(column_texts)
        params["row_fill"] = _array_of_texts(columns[-1])
        params.update(
            _held_arrays("pos", self.positions, ("quantity", "avg_cost", "pnl", "version", "fill"))
        )
        keys = sorted(self.cash)
        cash = [self.cash[k] for k in keys]
        params.update(
            cash_account=_array(k[0] for k in keys),
            cash_currency=array_literal([k[1] for k in keys]),
            cash_delta=_array(c[0] for c in cash),
            cash_moves=_array(c[1] for c in cash),
            cash_fill=_array(c[2] for c in cash),
        )
        orders = self.orders
        params.update(
            _held_arrays("ord", orders, ("status", "cum", "leaves", "avg", "version", "fill")),
            ord_notional=_array(map(self.notionals.get, sorted(orders))),
        )
        params.update(
            _held_arrays(
                "blk", self.blocks, ("status", "cum", "avg", "version", "fill", "notional")
            )
        )
        placements = self.placements
        params["plc_id"] = _array(sorted(placements))
        params["plc"] = _matrix_literal([placements[pk] for pk in sorted(placements)])
        self.__init__()  # type: ignore[misc]  # emptied before the statement: it is sent once
        with raw_cursor() as cursor:
            cursor.execute(_BOOK_MERGED_SQL, params)


_book = threading.local()


@contextmanager
def book_merged(enabled: bool = True) -> Iterator[BookBuffer | None]:
    """Hold the booking writes of the small fills `fill_allocate` books from here on (not a
    pipelined big fill's) in a `BookBuffer` (None when not `enabled`), for the caller to
    flush before any statement that reads or writes a row they write, and at the end. Left
    without a flush (an error), what is held is dropped: the caller's transaction rolls back."""
    if not enabled:
        yield None
        return
    buffer = BookBuffer()
    _book.buffer = buffer
    try:
        yield buffer
    finally:
        _book.buffer = None


def book_pending() -> BookBuffer | None:
    """The `book_merged` buffer of this thread, if one is open."""
    return getattr(_book, "buffer", None)


def book_flush() -> None:
    """Send what this thread's `book_merged` buffer holds (nothing without one)."""
    buffer = getattr(_book, "buffer", None)
    if buffer is not None:
        buffer.flush()


def _short_ok(order: Any) -> bool:
    ok = getattr(order, "account_short_ok", None)
    if ok is None:  # an Order model instance loaded with its account (execution_apply)
        ok = order.account.short_selling_allowed
    return bool(ok)


def _row_texts(rows: Sequence[tuple[Any, ...]]) -> list[list[str]]:
    """The str() of each value of a fill's rows, by column (_ALLOCATION_ROW_COLUMNS order).

    A row's cum_quantity, cum_gross, cum_commission, cum_fees and cum_net are its order's
    target and the money `engine.commissions_for` priced for it (one tuple per distinct
    quantity): the orders given the same five objects (a big block's 1,000 orders share a
    few dozen) have the same five texts, made once (keyed by the five objects' ids, alive as
    long as `rows`, so rows sharing a quantity object but not its money get their own). The
    other columns' are made for every row. Measured on 1,000-order fills (two
    runs of 160 and 200 alternated pairs, busy machine): Python CPU -0.88 / -1.22 ms via
    fill_allocate (117/160, 144/200 pairs lower), wall -1.0 ms (92/160, 118/200); -0.91 /
    -0.43 ms via execution_apply (99/160, 105/200), its wall within the noise.
    """
    columns = list(zip(*rows, strict=True))
    if not columns:
        return []
    texts = [list(map(str, column)) for column in columns[:8]]
    made: dict[tuple[int, ...], tuple[str, str, str, str, str]] = {}
    cumulative: list[tuple[str, str, str, str, str]] = []
    append = cumulative.append
    for quantity, gross, commission, fees, net in zip(*columns[8:13], strict=True):
        key = (id(quantity), id(gross), id(commission), id(fees), id(net))
        text = made.get(key)
        if text is None:
            text = made[key] = (str(quantity), str(gross), str(commission), str(fees), str(net))
        append(text)
    texts += map(list, zip(*cumulative, strict=True))
    texts.append(list(map(str, columns[13])))
    return texts


def _rebook(
    *,
    block: Block | None,
    orders: Sequence[Any],
    instrument: Instrument,
    execution: Execution,
    filled: Decimal,
    price: Decimal,
    old_price: Decimal,
    targets: Mapping[int, Decimal],
    method: str,
    schedule: engine.CommissionSchedule,
    user: Any = None,
    action: str = "allocation.created",
    audit: list[AuditEntry] | None = None,
    returning: bool = True,
    block_fill: tuple[Decimal, Decimal, Decimal] | None = None,
    booked: tuple[dict[int, _Booked], dict[int, int]] | None = None,
    placement: Placement | None = None,
    positions: dict[int, _PositionRow] | Callable[[], dict[int, _PositionRow]] | None = None,
    positions_found: Callable[[set[int]], bool] | None = None,
    states: Callable[[], Sequence[Any]] | None = None,
) -> Sequence[Allocation]:
    """Book the difference between each order's target and its rows so far; move the book.

    `orders` are the locked orders (model instances or `_OrderRow`s); their cum_qty, avg_px,
    leaves_qty, version and updated_at are moved in place as well as in the database; so are
    the block's cum_qty, avg_px and filled_notional with `block_fill` (the fill's totals and
    average price: `(filled, price, notional)`), and its version; without a block, the lone
    order's filled_notional (its cum_qty is its target). `booked`: each order's
    cumulative allocation so far and its new row id, when the caller read them already
    (`_booked`). `placement`: a locked placement whose fields (as the caller set them) the
    same statement writes. `positions`: positions the caller locked already (by account_id,
    `fill_read`), or a function that waits for them (`FillRead.positions`: called once the
    rows' texts are made); the ones a move needs that are not there are locked (created) here.
    `positions_found` (with such a function: `FillRead.positions_found`): when it answers that
    every account of the orders has its position locked already (asked before the orders'
    statement is sent), a big fill's rows are sent before the positions are parsed. `states`:
    see `fill_allocate`. Returns the rows written as model instances (`AllocationRows`, made
    when first read; none without `returning`).
    """
    side = block.side if block is not None else orders[0].side
    sign = _side_sign(side)
    broker_id = execution.broker_id or (
        execution.placement.broker_id if execution.placement is not None else None
    )
    if broker_id is None:
        raise ValidationError("execution has no broker", code="unknown_broker")
    trade_date = _trade_date(execution)
    settles = calendar_settlement_date(
        trade_date, cycle_days=instrument.settlement_cycle, calendar_code=instrument.calendar_code
    )
    currency = instrument.currency
    block_id = block.pk if block is not None else None
    if booked is None:
        booked = _booked(block_id=block_id, order_ids=[o.id for o in orders])
    booked_rows, new_ids = booked
    fill_kind, reversal_kind, reprice_kind = (
        str(AllocationKind.FILL),
        str(AllocationKind.REVERSAL),
        str(AllocationKind.REPRICE),
    )

    ids = [o.id for o in orders]
    quantities = [targets.get(pk, ZERO) for pk in ids]
    now = timezone.now()
    user_id = user.pk if user is not None else None
    common = {
        "execution": execution.pk,
        "block": block_id,
        "instrument": instrument.pk,
        "broker": broker_id,
        "side": side,
        "price": price,
        "currency": currency,
        "trade_date": trade_date,
        "settles": settles,
        "method": method,
        "user": user_id,
        "now": now,
    }
    pipelined = len(orders) >= PIPELINE_MIN_ORDERS
    # A batch's held writes (book_merged): a small fill's join them; a big fill writes its
    # own at once, after them (it may write the same cash rows).
    merged = book_pending()
    if merged is not None and pipelined:
        merged.flush()
        merged = None

    with ExitStack() as stack:
        # Orders: cumulative quantity and the block's average price (status is the caller's).
        changed = []
        for order, quantity in zip(orders, quantities, strict=True):
            avg = price if quantity else ZERO
            leaves = ZERO if order.status in _CLOSED_STATUSES else order.quantity - quantity
            if (order.cum_qty, order.avg_px, order.leaves_qty) == (quantity, avg, leaves):
                continue
            order.cum_qty, order.avg_px, order.leaves_qty = quantity, avg, leaves
            order.version += 1
            order.updated_at = now
            changed.append(order)

        block_move = lone = notional = None
        if block_fill is not None:
            notional = block_fill[2]
            if block is not None:
                block.cum_qty, block.avg_px, block.filled_notional = block_fill
                block.version += 1
                block.updated_at = now
                block_move = block.pk
            else:
                # A lone order's fills' totals are its own (its cum_qty is all of them).
                (order,) = orders
                order.filled_notional = notional
                lone = order.id
        if states is not None:
            # The caller's order (and block) states after the fill (status, version), in place:
            # written by the same statement, with the fill's moment, as the rows it moved.
            seen = {id(o) for o in changed}
            for order in states():
                if id(order) not in seen:
                    seen.add(id(order))
                    changed.append(order)
                order.updated_at = now
            if block_move is not None and block is not None:
                block.updated_at = now

        params = dict(common)
        params.update(
            ord_id=_array(o.id for o in changed),
            ord_status=_array(o.status for o in changed),
            ord_cum=_array(o.cum_qty for o in changed),
            ord_leaves=_array(o.leaves_qty for o in changed),
            ord_avg=_array(o.avg_px for o in changed),
            ord_version=_array(o.version for o in changed),
            block_move=block_move,
            block_cum=block.cum_qty if block is not None and block_move else None,
            block_avg=block.avg_px if block is not None and block_move else None,
            block_version=block.version if block is not None and block_move else None,
            block_status=block.status if block is not None and block_move else None,
            notional=notional,
            lone=lone,
            plc_id=placement.pk if placement is not None else None,
            plc=_placement_texts(placement) if placement is not None else None,
        )
        # Whether the caller's lock found every position of the orders' accounts (so of every
        # account a move needs), asked before the orders' statement is sent: psycopg's pipeline
        # answers a statement only once every statement sent before the question is answered.
        found = (
            pipelined
            and callable(positions)
            and positions_found is not None
            and positions_found({o.account_id for o in orders})
        )
        if pipelined:
            # A big fill's orders, block and placement (all locked already: no new lock) are
            # written first, in pipeline mode: PostgreSQL updates them (about a fifth of the
            # fill's writing) while the rows are made here.
            _pipeline_enter(stack)
            with raw_cursor() as cursor:
                cursor.execute(_BOOK_ORDERS_SQL, params)

        # (order_id, account_id, kind, quantity, gross, commission, fees, net, cum_quantity,
        #  cum_gross, cum_commission, cum_fees, cum_net, reversal_of): _ALLOCATION_ROW_COLUMNS.
        rows: list[tuple[Any, ...]] = []
        # Every order holding quantity is re-priced when the average moves, even when rounding
        # to the cent left it without a row, so position cost stays exactly at the block's
        # average: (order, its account_id, quantity held before, quantity change) of each order
        # whose position moves (account_id read once: on a model instance it is a descriptor).
        moves: list[tuple[Any, int, Decimal, Decimal]] = []
        repriced = price != old_price
        monies = engine.commissions_for(schedule, quantities, price, sign)
        for order, pk, quantity, money in zip(orders, ids, quantities, monies, strict=True):
            before = booked_rows.get(pk, _NOTHING_BOOKED)
            cum_gross, cum_commission, cum_fees, cum_net = money
            held = before.quantity
            delta = quantity - held
            gross = cum_gross - before.gross
            commission = cum_commission - before.commission
            fees = cum_fees - before.fees
            net = cum_net - before.net
            if not (delta or gross or commission or fees or net):
                if repriced and held:
                    moves.append((order, order.account_id, held, ZERO))
                continue
            kind = fill_kind if delta > 0 else reversal_kind if delta < 0 else reprice_kind
            account_id = order.account_id
            rows.append(
                (
                    pk,
                    account_id,
                    kind,
                    delta,
                    gross,
                    commission,
                    fees,
                    net,
                    quantity,
                    cum_gross,
                    cum_commission,
                    cum_fees,
                    cum_net,
                    before.last_id if delta < 0 else None,
                )
            )
            moves.append((order, account_id, held, delta))

        cash_moves: dict[int, Decimal] = defaultdict(Decimal)
        for row in rows:
            # A buy pays its net, a sell receives it; pending until the settlement date.
            # (Negating the net instead of this product, and no sum for an account's first
            # row: -0.1 to -0.2 ms of Python per 1,000 rows, 160 alternated pairs: not kept.)
            cash_moves[row[1]] += -sign * row[7]
        cash_accounts = sorted(k for k, v in cash_moves.items() if v)
        params.update(
            cash_account=_array(cash_accounts),
            cash_delta=_array(cash_moves[k] for k in cash_accounts),
        )

        # Positions, then cash, each locked in account order (before the rows are written).
        moving = {account_id for _, account_id, _, _ in moves}
        split = bool(rows) and pipelined
        later: Callable[[], dict[int, _PositionRow]] | None = None
        if callable(positions):
            if split and found:
                # The caller's lock found them all: nothing to create before the rows, so they
                # are sent first and the positions parsed while PostgreSQL inserts them.
                later, positions = positions, {}
            else:
                positions = positions()  # the caller's lock, sent with its read (fill_read)
                if merged is not None:
                    positions = merged.positions_over(positions, instrument.pk)
        if merged is not None and (
            positions is None or (later is None and not moving <= positions.keys())
        ):
            merged.flush()  # a lock that reads positions: after the writes held for them
        if positions is None:
            positions = _lock_positions(instrument.pk, moving)
        elif later is None and not moving <= positions.keys():
            # Accounts whose position the caller's lock did not find (the caller read without
            # `create`, as for orders filled before: `positions_may_be_missing`): only those
            # are locked (created) here, after the caller's.
            positions = {
                **positions,
                **_lock_positions(instrument.pk, moving - positions.keys()),
            }

        # The rows' ids, taken with what was booked (_BOOKED_SQL), ascending in row order: the
        # statement inserts the rows in its arrays' order, which is id order (no sort to ask for).
        row_ids = sorted(new_ids[row[0]] for row in rows)
        # Each row value's text is made once, for the statement's arrays and the audit payload.
        id_texts = list(map(str, row_ids))
        texts = _row_texts(rows)
        params["id"] = _array_of_texts(id_texts)
        if rows:
            for name, column_texts in zip(_ALLOCATION_ROW_COLUMNS, texts, strict=True):
                params[name] = _array_of_texts(column_texts)
        else:
            params.update(dict.fromkeys(_ALLOCATION_ROW_COLUMNS, "{}"))
        # A big fill sends its rows (and their cash: every position is locked by now) as soon
        # as they are made, in pipeline mode: PostgreSQL inserts them (and checks their
        # references) while the positions are moved here; their writes follow in a statement
        # of their own. Same rows, same values.
        if split:
            _pipeline_enter(stack)
            with raw_cursor() as cursor:
                cursor.execute(_BOOK_ROWS_SQL, params)
        if later is not None:
            positions = later()
        # Positions the caller's lock made (`fill_read`'s `create`) that no move needs: deleted,
        # so the fill leaves the rows it would have made for its moves alone.
        unmoved = [p.pk for a, p in positions.items() if p.made and a not in moving]
        if unmoved:
            with raw_cursor() as cursor:
                cursor.execute(_POSITIONS_DROP_SQL, [_array(unmoved)])
        short_breach: set[int] = set()
        for order, account_id, held, delta in moves:
            pos = positions[account_id]
            # book.position_reprice, then engine.apply_trade or book.position_reverse, in one call.
            quantity, pos.avg_cost, pos.realised_pnl = position_move(
                pos.quantity, pos.avg_cost, pos.realised_pnl, sign, held, old_price, price, delta
            )
            pos.quantity = quantity
            pos.version += 1
            if quantity < 0 and not _short_ok(order):
                short_breach.add(account_id)
        locked = [positions[account_id] for account_id in sorted(moving)]

        params.update(
            pos_id=_array(p.pk for p in locked),
            pos_quantity=_array(p.quantity for p in locked),
            pos_avg_cost=_array(p.avg_cost for p in locked),
            pos_pnl=_array(p.realised_pnl for p in locked),
            pos_version=_array(p.version for p in locked),
        )
        # psycopg parses a statement once (and caches it) only up to 50 parameters.
        assert len(params) <= 50, "the fill statement must keep at most 50 parameters"
        if pipelined:
            _pipeline_enter(stack)
        if merged is not None:
            # A batch's small fill: held, and sent with the batch's others (book_merged). Not
            # making the parameters above when they are not sent measured -0.09 ms of Python
            # per fill, lower in 25 of 40 alternated pairs (wall 22/40): within the noise, not
            # kept.
            merged.add(
                common,
                row_ids,
                rows,
                id_texts,
                texts,
                locked,
                instrument.pk,
                {k: cash_moves[k] for k in cash_accounts},
                changed,
                ids,
                block if block_move is not None else None,
                placement,
                (lone, notional) if lone is not None and notional is not None else None,
            )
        else:
            # A big fill without rows has no cash to move either (the cash follows the rows'
            # net).
            sql = _BOOK_POSITIONS_SQL if pipelined else _BOOK_WRITE_SQL
            with raw_cursor() as cursor:
                cursor.execute(sql, params)  # nothing to read back (see _BOOKED_SQL)
        # In pipeline mode (PIPELINE_MIN_ORDERS) what follows runs while PostgreSQL writes.
        allocations: Sequence[Allocation] = (
            AllocationRows(
                row_ids,
                rows,
                {
                    "execution_id": execution.pk,
                    "block_id": block_id,
                    "instrument_id": instrument.pk,
                    "broker_id": broker_id,
                    "side": side,
                    "price": price,
                    "currency": currency,
                    "trade_date": trade_date,
                    "settlement_date": settles,
                    "method": method,
                    "cash_settled": False,
                    "cash_settled_at": None,
                    "created_by_id": user_id,
                    "created_at": now,
                },
            )
            if returning
            else []
        )

        stream = f"block:{block_id}:allocations" if block else f"order:{orders[0].pk}:allocations"
        # One event per fill listing every row it booked: a 1,000-account block would otherwise
        # write (and hash) 1,000 events inside the fill's transaction, half of the fill's time.
        if rows:
            entry = AuditEntry(
                action=action,
                object_type="execution",
                object_id=str(execution.pk),
                # What every row of the fill shares is said once (price, dates, method): the
                # payload is hashed and stored (as its json text) inside the fill's transaction,
                # 1,000 rows for a big block. Written as its canonical text from the rows' texts
                # above.
                after=_allocations_payload(
                    {
                        "price": price,
                        "trade_date": trade_date,
                        "settlement_date": settles,
                        "method": method,
                    },
                    id_texts,
                    texts,
                ),
                meta={
                    "execution": execution.pk,
                    "block": block_id,
                    "filled": filled,
                    "short_not_allowed": sorted(short_breach),
                },
                actor=user,
                stream=stream,
            )
            if audit is not None:
                audit.append(entry)  # the caller writes it with its own events, in one go
            else:
                if merged is not None:
                    merged.flush()  # the audit is written after the book
                audit_record_many(entries=[entry])
    return allocations


class AllocationRows(Sequence[Allocation]):
    """The rows a fill wrote, as Allocation instances made on first use (`ids` and `rows` in
    _ALLOCATION_ROW_COLUMNS order, `shared` the fill's columns that are the same on every row).

    Why lazily: most callers only count them or drop them, and a 1,000-row fill's instances
    cost about 2.6 ms of Python; made inside the fill's garbage-collector pause, they are
    also what the collector's first young pass after it walks (about 0.7 ms, before the
    caller's COMMIT). Made once, on the first access past `len`, with the values written."""

    __slots__ = ("_ids", "_made", "_rows", "_shared")

    def __init__(
        self, ids: Sequence[int], rows: Sequence[tuple[Any, ...]], shared: dict[str, Any]
    ) -> None:
        self._ids, self._rows, self._shared = ids, rows, shared
        self._made: list[Allocation] | None = None

    def _instances(self) -> list[Allocation]:
        if self._made is None:
            self._made = _allocation_instances(self._ids, self._rows, self._shared)
            self._ids, self._rows = (), ()
        return self._made

    def __len__(self) -> int:
        return len(self._made) if self._made is not None else len(self._ids)

    @overload
    def __getitem__(self, index: int) -> Allocation: ...
    @overload
    def __getitem__(self, index: slice) -> list[Allocation]: ...
    def __getitem__(self, index: int | slice) -> Allocation | list[Allocation]:
        return self._instances()[index]

    def __iter__(self) -> Iterator[Allocation]:
        return iter(self._instances())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AllocationRows):
            other = other._instances()
        return self._instances() == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, and as unhashable

    def __repr__(self) -> str:
        return repr(self._instances())


def _allocation_instances(
    ids: Sequence[int], rows: Sequence[tuple[Any, ...]], shared: dict[str, Any]
) -> list[Allocation]:
    """The Allocation instances of rows just written (`ids` and `rows` in _ALLOCATION_ROW_COLUMNS
    order), as `model_from_row` makes them: every field set, `shared` the fill's columns that
    are the same on every row. Each instance's dict and state are made directly (a 1,000-row
    fill's instances: about half of model_from_row's time)."""
    new_allocation, new_state = Allocation.__new__, ModelState.__new__
    instances = []
    for pk, row in zip(ids, rows, strict=True):
        state = new_state(ModelState)
        state.__dict__ = {"adding": False, "db": "default"}
        allocation = new_allocation(Allocation)
        allocation.__dict__ = {
            "id": pk,
            "order_id": row[0],
            "account_id": row[1],
            "kind": row[2],
            "quantity": row[3],
            "gross": row[4],
            "commission": row[5],
            "fees": row[6],
            "net": row[7],
            "cum_quantity": row[8],
            "cum_gross": row[9],
            "cum_commission": row[10],
            "cum_fees": row[11],
            "cum_net": row[12],
            "reversal_of_id": row[13],
            **shared,
            "_state": state,
        }
        instances.append(allocation)
    return instances


def _columns(model: Any, alias: str) -> tuple[str, list[str]]:
    fields = model._meta.concrete_fields
    return ", ".join(f'{alias}."{f.column}"' for f in fields), [f.attname for f in fields]


_BLOCK_COLUMNS, _BLOCK_NAMES = _columns(Block, "k")
_INSTRUMENT_COLUMNS, _INSTRUMENT_NAMES = _columns(Instrument, "i")
_ORDER_ROW_WIDTH = len(_OrderRow.__dataclass_fields__) - 1  # all but updated_at
# The block (with its instrument and its allocation policy's id) and then its orders, locked in
# that order in one statement: the orders' CTE starts with a one-time filter reading the
# block's (an InitPlan, run before its own scan). The first row (marked true) is the block's,
# with what a fill's read is sent with (`_lock_block_orders`' `read`): its orders' ids, their
# accounts' ids and whether one of them was never filled (h: one pass over the locking CTE's
# rows, so the newest versions, as the orders' own rows; unsorted, the caller sorts them:
# sorting in PostgreSQL, on the lock's critical path, cost 0.3 ms more per 1,000 orders).
# Then one row per order (marked false) with _OrderRow's columns. So the read goes out once
# the first row is parsed, and the orders' rows (1,000 for a big block) are parsed while
# PostgreSQL runs it.
_BLOCK_ORDERS_LOCK_SQL = (
    f"WITH k AS MATERIALIZED (SELECT {_BLOCK_COLUMNS}, {_INSTRUMENT_COLUMNS}, pol.id "
    f'FROM "{Block._meta.db_table}" AS k '
    f'JOIN "{Instrument._meta.db_table}" AS i ON i.id = k.instrument_id '
    f'LEFT JOIN "{BlockAllocationPolicy._meta.db_table}" AS pol ON pol.block_id = k.id '
    "WHERE k.id = %s FOR UPDATE OF k), "
    "o AS MATERIALIZED ("
    + _ORDERS_LOCK_SQL.replace("{column}", "block_id")
    .replace("{notional}", "NULL::numeric")
    .replace(" WHERE ", " WHERE (SELECT count(*) FROM k) >= 0 AND ")
    + "), h AS (SELECT array_agg(o.id) AS ids, array_agg(o.account_id) AS accounts, "
    "COALESCE(bool_or(o.cum_qty = 0), false) AS missing FROM o) "
    f"SELECT true, k.*, h.ids, h.accounts, h.missing, {', '.join(['NULL'] * _ORDER_ROW_WIDTH)} "
    "FROM k, h UNION ALL SELECT false, "
    f"{', '.join(['NULL'] * (len(_BLOCK_NAMES) + len(_INSTRUMENT_NAMES) + 4))}, o.* FROM o"
)


def _lock_block_orders(
    block_id: int, read: Callable[[Block, list[int], list[int], bool], None] | None = None
) -> tuple[Block, list[_OrderRow]]:
    """Lock a block (loaded with its instrument and allocation policy) and then its orders by
    pk, in one round trip; the orders as plain rows with their account's fields.

    `read`: called with the block, its orders' ids (ascending), their accounts' ids (sorted,
    distinct) and whether one of them was never filled (`positions_may_be_missing`) once the
    block's row is parsed and before the orders' rows are, to send a statement that PostgreSQL
    runs while they are parsed and made `_OrderRow`s (fill_allocate's `fill_read`)."""
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute(_BLOCK_ORDERS_LOCK_SQL, [block_id, block_id])
        head = cursor.fetchone()
        rest = None
        if head is not None and not head[0]:  # UNION ALL answers the block's row first
            rest = [head, *cursor.fetchall()]
            head = next((row for row in rest if row[0]), None)
        if head is None:
            raise Block.DoesNotExist(f"block {block_id} does not exist")
        block = _block_of_head(head)
        start = 1 + len(_BLOCK_NAMES) + len(_INSTRUMENT_NAMES) + 1
        if read is not None:
            ids, accounts, missing = head[start : start + 3]
            read(block, sorted(ids or ()), sorted(set(accounts or ())), missing)
        rows = cursor.fetchall() if rest is None else [row for row in rest if not row[0]]
    start += 3
    return block, sorted((_OrderRow(*row[start:]) for row in rows), key=_row_pk)


def _block_of_head(head: Sequence[Any]) -> Block:
    """The block (its instrument and allocation policy cached) of a block-orders lock's first
    row."""
    n_block = 1 + len(_BLOCK_NAMES)
    n_instrument = n_block + len(_INSTRUMENT_NAMES)
    block = model_from_row(Block, dict(zip(_BLOCK_NAMES, head[1:n_block], strict=True)))
    cache = block._state.fields_cache
    cache["instrument"] = model_from_row(
        Instrument, dict(zip(_INSTRUMENT_NAMES, head[n_block:n_instrument], strict=True))
    )
    policy_id = head[n_instrument]
    # What select_related would cache: the policy (read only when there is one), or None.
    cache["allocation_policy"] = (
        None if policy_id is None else BlockAllocationPolicy.objects.get(pk=policy_id)
    )
    return block


def _row_pk(row: _OrderRow) -> int:
    return row.id


def _policy_of(block: Block) -> BlockAllocationPolicy | None:
    try:
        return block.allocation_policy
    except BlockAllocationPolicy.DoesNotExist:
        return None


@collection_paused()
def fill_allocate(
    *,
    execution: Execution,
    block: Block | None = None,
    orders: Sequence[Order] | None = None,
    audit: list[AuditEntry] | None = None,
    returning: bool = True,
    placement: Placement | None = None,
    states: Callable[[], Sequence[Any]] | None = None,
    read: FillRead | None = None,
) -> Sequence[Allocation]:
    """Allocate a block's (or order's) fills after `execution`; move positions and cash.

    Runs inside the caller's transaction (execution_apply); rows as described in the module
    docstring. A caller that already holds the locks passes the locked `block` (loaded with
    its instrument and allocation policy) and `orders` (by pk, with their accounts), which are
    then moved in place; with `audit`, the audit entry is appended there for the caller to
    write. Returns the Allocation rows written (`AllocationRows`: the instances are made when
    first read; an empty list with `returning=False`, for a caller that does not use them).
    With `placement` (the execution's placement, locked, its fields already moved by the
    caller), the same statement writes it: one round trip less per fill. With `states`, called
    once the orders' quantities are moved in place and before anything is written: the
    caller's state changes of the orders (status, version, as its state machine allows them),
    made in place, and the block's; it returns the orders it changed, whose status and
    version the same statement writes (with the orders it moved and the block, all with the
    fill's updated_at). With `read`, the caller sent the fill's read already (`fill_read`, after
    writing `execution` and with the ids of `orders`, so PostgreSQL ran it while the caller
    built them), and it is not sent again; nor is the pro-rata part made again when the caller
    made it of the same `orders` list while PostgreSQL ran the read (`FillRead.prepare`).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("fill_allocate must run inside the transaction that saved the fill")
    written = placement
    placement = execution.placement
    if placement is None:
        raise ValidationError("execution has no placement", code="unknown_placement")
    if written is not None and written.pk != placement.pk:
        raise ValueError("the placement to write is not the execution's")
    locked: Sequence[Any]
    early: list[FillRead] = []
    stack = ExitStack()

    def send_read(
        locked_block: Block, order_ids: list[int], account_ids: list[int], create: bool
    ) -> None:
        """A big block's read, sent in pipeline mode as soon as its orders are locked: PostgreSQL
        runs it while their rows are made (as execution_apply's early read, _EarlyFill)."""
        if read is None and len(order_ids) >= PIPELINE_MIN_ORDERS:
            _pipeline_enter(stack)
            early.append(
                fill_read(
                    block_id=locked_block.pk,
                    order_id=None,
                    broker_id=execution.broker_id or placement.broker_id,
                    order_ids=order_ids,
                    instrument_id=locked_block.instrument.pk,
                    account_ids=account_ids,
                    split=True,
                    create=create,
                )
            )

    # Leaving pipeline mode (entered by send_read or _rebook) waits for what was sent.
    with stack:
        if placement.block_id is not None:
            if block is None or orders is None:
                block, locked = _lock_block_orders(placement.block_id, send_read)
            else:
                locked = orders
            if not locked:
                raise ConflictError(f"block {block.pk} holds no orders", code="empty_block")
            instrument = block.instrument
            policy = _policy_of(block)
            old_price = block.avg_px
            totals = (block.cum_qty, block.filled_notional)
        else:
            block = None
            if orders is None:
                locked = _lock_orders(order_id=placement.order_id)
                instrument = Instrument.objects.get(pk=locked[0].instrument_id)
            else:
                locked = orders
                instrument = orders[0].instrument
            policy = None
            old_price = locked[0].avg_px
            totals = (locked[0].cum_qty, locked[0].filled_notional)

        order_ids = [o.id for o in locked]
        pro_rata = None
        if read is None and early:
            read = early[0]  # sent with these orders' ids and accounts (send_read)
            if policy is None:
                # The allocation's part that needs no fill, made while PostgreSQL reads. Orders
                # it refuses are refused again below, where an allocation's errors are raised.
                with suppress(ValueError):
                    pro_rata = _pro_rata(locked)
        if read is None:
            read = fill_read(
                block_id=block.pk if block else None,
                order_id=None if block else locked[0].pk,
                broker_id=execution.broker_id or placement.broker_id,
                order_ids=order_ids,
                instrument_id=instrument.pk,
                account_ids=sorted({o.account_id for o in locked}),
                create=positions_may_be_missing(locked),
            )
        elif read.block_id != (block.pk if block else None) or read.order_ids != order_ids:
            # The read counts what each order has booked and locks their positions: a read of
            # other orders than the ones allocated here would book them wrong.
            raise ValueError("the fill's read is not of the orders allocated")
        elif policy is None and pro_rata is None:
            pro_rata = read.pro_rata_of(locked)  # made by the caller while PostgreSQL read
        # The positions are waited for only where the rows need them (_rebook): with a big
        # fill's read they are locked by a statement of their own, answered after the rest.
        # Parsing only the fills' row here and the orders' rows once the orders' statement is
        # sent (and execution_apply's positions' rows once the rows' are) was measured in
        # session 16 and not kept: -0.2 to -0.9 ms wall via fill_allocate, -0.3 to -1.1 ms via
        # execution_apply (160-200 alternated pairs, busy machine), within the noise: the parse
        # moves to the next step, which is Python's too.
        # The fills' totals: the locked row's (the block's, or the lone order's) and this fill's.
        filled, notional = fill_totals(*totals, execution.last_qty, execution.last_px)
        schedule, booked, new_ids = read.totals()
        merged = book_pending()
        if merged is not None:
            # Read before the batch's held rows are written: completed from them.
            booked = merged.booked_over(booked, order_ids)
        price = _average(filled, notional)
        try:
            targets = _policy_targets(locked, filled, instrument.lot_size, policy, pro_rata)
        except ValueError as exc:
            raise ConflictError(f"cannot allocate {filled}: {exc}", code="overfill") from exc
        method = policy.method if policy is not None else AllocationMethod.PRO_RATA
        rows = _rebook(
            block=block,
            orders=locked,
            instrument=instrument,
            execution=execution,
            filled=filled,
            price=price,
            old_price=old_price,
            targets=targets,
            method=method,
            schedule=schedule,
            audit=audit,
            returning=returning,
            block_fill=(filled, price, notional),
            booked=(booked, new_ids),
            placement=written,
            positions=read.positions,
            positions_found=read.positions_found,
            states=states,
        )
        return rows


def _parse_by_order(
    raw: Mapping[Any, Any] | None, name: str, orders: Sequence[Any]
) -> dict[int, Decimal]:
    """Map keys (order ids, or account codes of the block's orders) to order ids; parse values."""
    by_id = {o.pk: o for o in orders}
    by_code: dict[str, list[int]] = defaultdict(list)
    for o in orders:
        by_code[getattr(o, "account_code", "")].append(o.pk)
    parsed: dict[int, Decimal] = {}
    errors: list[str] = []
    for key, value in (raw or {}).items():
        text = str(key)
        if text.isdigit() and int(text) in by_id:
            order_id = int(text)
        elif len(by_code.get(text, [])) == 1:
            order_id = by_code[text][0]
        else:
            errors.append(f"{key}: not an order (or account with one order) of this block")
            continue
        try:
            if isinstance(value, float | bool):
                raise InvalidOperation
            number = Decimal(str(value))
            if not number.is_finite():
                raise InvalidOperation
        except (InvalidOperation, ValueError, TypeError):
            errors.append(f"{key}: {value!r} is not a number")
            continue
        if order_id in parsed:
            errors.append(f"{key}: order {order_id} given twice")
        parsed[order_id] = number
    if errors:
        raise ValidationError(f"{name}: {errors[0]}", errors={name: errors})
    return parsed


def allocation_reallocate(
    *,
    user: Any,
    method: str,
    execution_id: int | None = None,
    block_id: int | None = None,
    quantities: Mapping[Any, Any] | None = None,
    ratios: Mapping[Any, Any] | None = None,
) -> list[Allocation]:
    """Re-allocate a block's fills (manual quantities, fixed ratios or back to pro-rata).

    Trader (of every account in the block) or back office; refused (409) once a settlement file
    exists for one of the block's trade dates at one of its accounts' custodians. Reverses and
    re-books through the same rows as fills (same invariants), audited, and remembered for the
    block's later fills.
    """
    from settlement.models import SettlementFile

    if not has_role(user, "trader", "backoffice"):
        raise NotPermitted("only traders and back office may re-allocate")
    if method not in AllocationMethod.values:
        raise ValidationError(f"method: unknown method {method!r}", errors={"method": ["unknown"]})
    if (execution_id is None) == (block_id is None):
        raise ValidationError("give exactly one of execution and block", code="invalid")
    with transaction.atomic(durable=True):
        if execution_id is not None:
            found = (
                Execution.objects.filter(pk=execution_id)
                .values_list("placement__block_id", flat=True)
                .first()
            )
            if found is None:
                raise NotFound("execution not found, or not of a block")
            block_id = found
        assert block_id is not None
        if not Block.objects.filter(pk=block_id).exists():
            raise NotFound("block not found")
        block, orders = _lock_block_orders(block_id)
        visible = account_ids_visible_to(user=user)
        seen = [o for o in orders if o.account_id in visible]
        if not seen:
            raise NotFound("block not found")
        if len(seen) != len(orders):
            raise NotPermitted("the block holds orders of accounts you may not see")

        # The block's fills' totals, as its locked row holds them (what its fills allocated).
        filled, notional = block.cum_qty, block.filled_notional
        if not filled:
            raise ConflictError("the block has no fills to allocate", code="nothing_filled")
        dates = set(
            Allocation.objects.filter(block_id=block.pk).values_list("trade_date", flat=True)
        )
        custodians = {getattr(o, "account_custodian_id", None) for o in orders}
        if SettlementFile.objects.filter(
            trade_date__in=dates, custodian_id__in=custodians
        ).exists():
            raise ConflictError(
                "settlement files already exist for this block's trade date",
                code="settlement_files_exist",
            )

        lot = block.instrument.lot_size
        policy = BlockAllocationPolicy.objects.select_for_update().filter(block=block).first()
        before_policy = (
            {"method": policy.method, "ratios": policy.ratios, "quantities": policy.quantities}
            if policy
            else {"method": AllocationMethod.PRO_RATA}
        )
        order_ids = {o.pk for o in orders}
        new_policy = policy or BlockAllocationPolicy(block=block)
        new_policy.method = method
        new_policy.ratios, new_policy.quantities = {}, {}
        new_policy.filled_at = filled
        new_policy.set_by = user
        if method == AllocationMethod.MANUAL:
            wanted = _parse_by_order(quantities, "quantities", orders)
            full = {o.pk: wanted.get(o.pk, ZERO) for o in orders}
            problems = engine.manual_allocation_validate(
                [_entry_target(o, requested=o.quantity) for o in orders],
                cast(dict[Hashable, Decimal], full),
                filled,
                lot,
            )
            if problems:
                raise ValidationError(f"quantities: {problems[0]}", errors={"quantities": problems})
            new_policy.quantities = {str(k): str(v) for k, v in full.items()}
        elif method == AllocationMethod.FIXED_RATIO:
            wanted = _parse_by_order(ratios, "ratios", orders)
            bad = sorted(k for k in order_ids if wanted.get(k, ZERO) <= 0)
            if bad:
                raise ValidationError(
                    "ratios: every order of the block needs a ratio > 0",
                    errors={"ratios": [f"order {k}: ratio must be > 0" for k in bad]},
                )
            new_policy.ratios = {str(k): str(wanted[k]) for k in sorted(order_ids)}
        try:
            targets = _policy_targets(orders, filled, lot, new_policy)
        except ValueError as exc:
            raise ValidationError(f"cannot allocate {filled}: {exc}") from exc
        if method == AllocationMethod.PRO_RATA:
            if policy is not None:
                policy.delete()
        else:
            if policy is not None:
                new_policy.version += 1
            new_policy.save()

        execution = (
            Execution.objects.select_related("placement", "instrument")
            .filter(placement__block_id=block.pk, last_qty__gt=0)
            .order_by("-received_at", "-pk")
            .first()
        )
        assert execution is not None  # filled > 0
        price = _average(filled, notional)
        before = {o.pk: _plain(o.cum_qty) for o in orders}
        rows = list(
            _rebook(
                block=block,
                orders=orders,
                instrument=block.instrument,
                execution=execution,
                filled=filled,
                price=price,
                old_price=block.avg_px,
                targets=targets,
                method=method,
                schedule=_schedule(
                    execution.broker_id or cast(Placement, execution.placement).broker_id
                ),
                user=user,
                action="allocation.reallocated",
            )
        )
        audit_record_many(
            entries=[
                AuditEntry(
                    action="block.reallocated",
                    object_type="block",
                    object_id=str(block.pk),
                    before={"policy": before_policy, "allocated": before},
                    after={
                        "policy": {
                            "method": method,
                            "ratios": new_policy.ratios,
                            "quantities": new_policy.quantities,
                        },
                        "allocated": {k: _plain(v) for k, v in targets.items()},
                    },
                    meta={"filled": filled, "rows": [r.pk for r in rows]},
                    actor=user,
                )
            ]
        )
        block.version += 1
        block.save(update_fields=["version", "updated_at"])
    return rows


def cash_settle_due(*, as_of: dt.date) -> int:
    """Move the pending cash of allocations settling on or before `as_of` to settled.

    Idempotent: each allocation's cash moves once (``Allocation.cash_settled``). Returns the
    number of allocation rows settled.
    """
    with transaction.atomic(durable=True):
        due = list(
            Allocation.objects.select_for_update()
            .filter(cash_settled=False, settlement_date__lte=as_of)
            .order_by("pk")
            .values_list("pk", "account_id", "currency", "side", "net")
        )
        if not due:
            return 0
        moves: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
        for _pk, account_id, currency, side, net in due:
            moves[(account_id, currency)] += -_side_sign(side) * net
        now = timezone.now()
        cash = _lock_cash(set(moves))
        entries = []
        for key, balance in cash.items():
            amount = moves[key]
            before = {"settled": balance.settled, "pending": balance.pending}
            balance.settled += amount
            balance.pending -= amount
            balance.version += 1
            entries.append(
                AuditEntry(
                    action="cash.settled",
                    object_type="cashbalance",
                    object_id=str(balance.pk),
                    before=before,
                    after={"settled": balance.settled, "pending": balance.pending},
                    meta={"as_of": as_of, "amount": amount, "account": key[0], "currency": key[1]},
                )
            )
        _update_rows(
            CashBalance,
            ["settled", "pending", "version", "updated_at"],
            [(c.pk, c.settled, c.pending, c.version, now) for c in cash.values()],
        )
        Allocation.objects.filter(pk__in=[row[0] for row in due]).update(
            cash_settled=True, cash_settled_at=now
        )
        audit_record_many(entries=entries)
    return len(due)
