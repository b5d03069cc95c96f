"""fill_allocate in psycopg's pipeline mode: a big block's writing statement is not waited for.

Blocks of at least `allocations.services.PIPELINE_MIN_ORDERS` orders send it in pipeline mode
(when the caller has not turned it on already); the tests lower it to put small blocks there.
"""

from __future__ import annotations

from decimal import Decimal

import django.db
import psycopg
import pytest
from django.db import connection, transaction
from psycopg import pq

from allocations import services as allocation_services
from allocations.models import Allocation, CashBalance, Position
from allocations.services import fill_allocate
from oms_site.audit import audit_verify
from oms_site.errors import ConflictError
from oms_site.models import AuditEvent
from orders.models import Block, Execution, Order
from tests.allocations.support import block_100_200_300, new_execution

pytestmark = pytest.mark.django_db
D = Decimal


def _book(instrument):
    return {
        "allocations": sorted(
            Allocation.objects.values_list("order_id", "kind", "quantity", "price", "net")
        ),
        "audit": AuditEvent.objects.count(),
        "orders": sorted(Order.objects.values_list("pk", "status", "cum_qty", "version")),
        "blocks": sorted(Block.objects.values_list("pk", "cum_qty", "version")),
        "positions": sorted(
            Position.objects.filter(instrument=instrument).values_list(
                "account_id", "quantity", "avg_cost"
            )
        ),
        "cash": sorted(CashBalance.objects.values_list("account_id", "pending")),
    }


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_big_fill_books_the_same_in_pipeline_mode(
    three_accounts, instrument, broker, trader, monkeypatch, pipelined
):
    # given a block of 100/200/300, its fills' writes sent in pipeline mode or not
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3 if pipelined else 64)
    block, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    seen = []
    original = psycopg.Cursor.execute
    writes = {
        allocation_services._BOOK_WRITE_SQL: "rows and moves",
        allocation_services._BOOK_ORDERS_SQL: "orders",
        allocation_services._BOOK_ROWS_SQL: "rows",
        allocation_services._BOOK_POSITIONS_SQL: "positions",
    }

    def execute(self, query, *args, **kwargs):
        if query in writes:
            seen.append((writes[query], self.connection.pgconn.pipeline_status))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    # when 150 fill at 10.00
    with transaction.atomic():
        execution = new_execution(placement, 150, "10.00")
        rows = fill_allocate(execution=execution)
        # then the pipeline is over when fill_allocate returns: the caller reads as usual
        assert connection.connection.pgconn.pipeline_status == pq.PipelineStatus.OFF
        assert Allocation.objects.filter(execution=execution).count() == 3
    # and the writes went out in the mode asked for: in pipeline mode the orders (and block)
    # first, then the rows (with their cash), then the positions; otherwise one statement
    if pipelined:
        assert seen == [
            ("orders", pq.PipelineStatus.ON),
            ("rows", pq.PipelineStatus.ON),
            ("positions", pq.PipelineStatus.ON),
        ]
    else:
        assert seen == [("rows and moves", pq.PipelineStatus.OFF)]
    # and the rows returned are the rows stored, each order's exact share at 10.00
    stored = list(
        Allocation.objects.filter(execution=execution)
        .order_by("pk")
        .values_list("pk", "order_id", "quantity", "gross", "commission", "fees", "net")
    )
    assert [(r.pk, r.order_id, r.quantity, r.gross, r.commission, r.fees, r.net) for r in rows] == (
        stored
    )
    assert [r[1:] for r in stored] == [
        (a.pk, D(25), D("250.00"), D("5.00"), D("0.01"), D("255.01")),
        (b.pk, D(50), D("500.00"), D("5.00"), D("0.03"), D("505.03")),
        (c.pk, D(75), D("750.00"), D("5.00"), D("0.04"), D("755.04")),
    ]
    # and the book moved: positions at 10.00, pending cash minus the net, orders and block
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "avg_cost"
        )
    ) == [(acct.pk, D(q), D(10)) for acct, q in zip(three_accounts, (25, 50, 75), strict=True)]
    assert sorted(CashBalance.objects.values_list("account_id", "pending")) == [
        (acct.pk, -D(net))
        for acct, net in zip(three_accounts, ("255.01", "505.03", "755.04"), strict=True)
    ]
    assert sorted(Order.objects.values_list("pk", "cum_qty", "version")) == [
        (a.pk, D(25), 2),
        (b.pk, D(50), 2),
        (c.pk, D(75), 2),
    ]
    block.refresh_from_db()
    assert (block.cum_qty, block.avg_px, block.version) == (D(150), D(10), 2)
    # and the fill's audit event names the rows stored, in a chain that verifies
    event = AuditEvent.objects.get(action="allocation.created", object_id=str(execution.pk))
    assert [(x["id"], x["order"], x["net"]) for x in event.after["allocations"]] == [
        (pk, order, str(net)) for pk, order, _, _, _, _, net in stored
    ]
    assert audit_verify() == []


@pytest.mark.parametrize(
    ("statement", "text", "failing_text"),
    [
        ("_BOOK_ORDERS_SQL", "SELECT NULL", "SELECT 1 / 0"),
        ("_BOOK_ROWS_SQL", "false, %(user)s", "(1 / 0 = 1), %(user)s"),
        ("_BOOK_ROWS_SQL", "SELECT NULL", "SELECT 1 / 0"),
        ("_BOOK_POSITIONS_SQL", "SELECT NULL", "SELECT 1 / 0"),
    ],
)
def test_an_error_of_the_write_not_waited_for_is_raised_by_fill_allocate(
    three_accounts, instrument, broker, trader, monkeypatch, statement, text, failing_text
):
    # given a block whose fills' writes go out in pipeline mode, and one of its three writing
    # statements (the orders, the rows and cash, or the positions) failing in PostgreSQL
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    before = _book(instrument)
    sql = getattr(allocation_services, statement)
    failing = sql.replace(text, failing_text)
    assert failing != sql
    monkeypatch.setattr(allocation_services, statement, failing)
    reached = []
    # when a fill is allocated
    with (
        pytest.raises((psycopg.Error, django.db.Error), match="division by zero"),
        transaction.atomic(),
    ):
        execution = new_execution(placement, 150, "10.00")
        fill_allocate(execution=execution)
        reached.append(True)
    # then the error came out of fill_allocate itself, and nothing of the fill stayed: no
    # execution, allocation, audit event, order, block, position or cash change
    assert reached == []
    assert not Execution.objects.exists()
    assert _book(instrument) == before


def test_a_read_of_other_orders_is_refused_and_nothing_is_booked(
    three_accounts, instrument, broker, trader
):
    # given a block of 100/200/300 and a fill of it
    _, (a, b, _c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    before = _book(instrument)
    with transaction.atomic():
        execution = new_execution(placement, 150, "10.00")
        # when fill_allocate is given a read of two of its three orders
        read = allocation_services.fill_read(
            block_id=placement.block_id,
            order_id=None,
            broker_id=placement.broker_id,
            order_ids=[a.pk, b.pk],
            instrument_id=instrument.pk,
            account_ids=sorted({a.account_id, b.account_id}),
        )
        with pytest.raises(ValueError, match="not of the orders allocated"):
            fill_allocate(execution=execution, read=read)
        # then nothing was booked
        assert not Allocation.objects.exists()
        transaction.set_rollback(True)
    assert _book(instrument) == before


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_big_blocks_read_is_sent_before_its_order_rows_are_made_and_its_positions_after(
    three_accounts, instrument, broker, trader, monkeypatch, pipelined
):
    # given a block of 100/200/300, big enough for pipeline mode or not
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3 if pipelined else 64)
    _, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    events = []
    original_execute = psycopg.Cursor.execute
    original_row = allocation_services._OrderRow

    def execute(self, query, *args, **kwargs):
        status = self.connection.pgconn.pipeline_status
        if query == allocation_services._POSITIONS_LOCK_SQL:
            events.append(("positions", status))
        elif query == allocation_services._POSITIONS_LOCK_OR_CREATE_SQL:
            events.append(("positions, made where missing", status))
        elif isinstance(query, str) and "pg_get_serial_sequence" in query:  # fill_read's
            with_positions = "pos AS MATERIALIZED" in query
            label = "read and positions" if with_positions else "read"
            if "made AS (INSERT" in query:
                label += ", made where missing"
            events.append((label, status))
        return original_execute(self, query, *args, **kwargs)

    def order_row(*values):
        events.append(("order row", values[0]))
        return original_row(*values)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(allocation_services, "_OrderRow", order_row)
    # when 150 fill at 10.00
    with transaction.atomic():
        rows = fill_allocate(execution=new_execution(placement, 150, "10.00"))
    # then a big block's read went out in pipeline mode as soon as its orders were locked,
    # before their rows were made (PostgreSQL reads meanwhile), and its positions' lock once
    # the read was answered; a small block's read, with the positions' lock, after them
    # (the orders' first fill: the lock makes the missing positions in the same pass, and
    # nothing locks or creates any apart)
    made = [("order row", a.pk), ("order row", b.pk), ("order row", c.pk)]
    if pipelined:
        on = pq.PipelineStatus.ON
        assert events == [("read", on), *made, ("positions, made where missing", on)]
    else:
        off = pq.PipelineStatus.OFF
        assert events == [*made, ("read and positions, made where missing", off)]
    # and the fill booked each order's exact share either way
    assert [(r.order_id, r.quantity, r.net) for r in rows] == [
        (a.pk, D(25), D("255.01")),
        (b.pk, D(50), D("505.03")),
        (c.pk, D(75), D("755.04")),
    ]
    # when 150 more fill at 12.00 (the positions exist now)
    events.clear()
    with transaction.atomic():
        rows = fill_allocate(execution=new_execution(placement, 150, "12.00"))
    # then the read's own lock (split or not) found and locked them all, and nothing else did
    if pipelined:
        assert events == [("read", on), *made, ("positions", on)]
    else:
        assert events == [*made, ("read and positions", off)]
    # and the positions moved from the values that lock read: 50/100/150 at the average 11.00
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "avg_cost"
        )
    ) == [(acct.pk, D(q), D(11)) for acct, q in zip(three_accounts, (50, 100, 150), strict=True)]
    assert [(r.order_id, r.quantity, r.gross) for r in rows] == [
        (a.pk, D(25), D("300.00")),
        (b.pk, D(50), D("600.00")),
        (c.pk, D(75), D("900.00")),
    ]


def test_an_overfill_of_a_big_block_read_early_is_refused_and_nothing_is_booked(
    three_accounts, instrument, broker, trader, monkeypatch
):
    # given a block of 100/200/300 whose read is sent early (pipeline mode)
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    before = _book(instrument)
    # when a fill of 700 is allocated (more than the block's 600)
    with (
        pytest.raises(ConflictError, match="cannot allocate 700") as raised,
        transaction.atomic(),
    ):
        fill_allocate(execution=new_execution(placement, 700, "10.00"))
    # then it is refused as an overfill, as without pipeline mode, and nothing was booked
    assert raised.value.code == "overfill"
    assert connection.connection.pgconn.pipeline_status == pq.PipelineStatus.OFF
    assert not Execution.objects.exists()
    assert _book(instrument) == before


@pytest.mark.parametrize("positions_first", [True, False])
def test_a_split_read_answers_as_the_whole_read(
    three_accounts, instrument, broker, trader, positions_first
):
    # given a block of 100/200/300 filled once (its accounts hold 25/50/75 at 10.00)
    _, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "10.00"))
    with transaction.atomic():
        execution = new_execution(placement, 150, "12.00")
        kwargs = {
            "block_id": placement.block_id,
            "order_id": None,
            "broker_id": placement.broker_id,
            "order_ids": [a.pk, b.pk, c.pk],
            "instrument_id": instrument.pk,
            "account_ids": sorted(acct.pk for acct in three_accounts),
        }
        # when its next fill's read is sent whole, and then split in pipeline mode (its
        # answers asked for in either order)
        whole = allocation_services.fill_read(**kwargs).result()
        with connection.connection.pipeline():
            read = allocation_services.fill_read(**kwargs, split=True)
            if positions_first:
                positions = read.positions()
                totals = read.totals()
            else:
                totals = read.totals()
                positions = read.positions()
            # (asked again: the same answers, nothing sent again)
            assert read.positions() is positions
        # then both answer the same schedule, booked rows and locked positions (and a new row
        # id for each order: the sequence's next ones)
        assert totals[:2] == whole[:2]
        assert positions == whole[3]
        assert list(totals[2]) == list(whole[2]) == [a.pk, b.pk, c.pk]
        assert min(totals[2].values()) > max(whole[2].values())
        # and the fill's totals are its block's (its first fill's, on its row) with its own
        block = Block.objects.get(pk=placement.block_id)
        assert allocation_services.fill_totals(
            block.cum_qty, block.filled_notional, execution.last_qty, execution.last_px
        ) == (D(300), D(3300))
        assert sorted((p.account_id, p.quantity, p.avg_cost) for p in positions.values()) == [
            (acct.pk, D(q), D(10)) for acct, q in zip(three_accounts, (25, 50, 75), strict=True)
        ]
        transaction.set_rollback(True)


def test_a_split_read_inserts_nothing(three_accounts, instrument, broker, trader):
    _, (a, _b, _c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    with pytest.raises(ValueError, match="a split read inserts nothing"):
        allocation_services.fill_read(
            block_id=placement.block_id,
            order_id=None,
            broker_id=placement.broker_id,
            order_ids=[a.pk],
            instrument_id=instrument.pk,
            account_ids=[a.account_id],
            insert=("INSERT ...", []),
            split=True,
        )


def test_a_big_fill_sends_its_rows_before_parsing_its_positions_only_when_all_were_found(
    three_accounts, instrument, broker, trader, monkeypatch
):
    # given a block of 100/200/300 in pipeline mode (its read split, its positions' lock a
    # statement of its own), whose accounts hold no position in the instrument yet
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3)
    _, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    events = []
    original_execute = psycopg.Cursor.execute
    original_row = allocation_services._PositionRow
    names = {
        allocation_services._POSITIONS_LOCK_SQL: "lock positions",
        allocation_services._POSITIONS_LOCK_OR_CREATE_SQL: "lock or make positions",
        allocation_services._BOOK_ROWS_SQL: "rows",
    }

    def execute(self, query, *args, **kwargs):
        if query in names:
            events.append(names[query])
        return original_execute(self, query, *args, **kwargs)

    def position_row(*values):
        events.append(("position", values[1]))
        return original_row(*values)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(allocation_services, "_PositionRow", position_row)
    accounts = [acct.pk for acct in three_accounts]
    positions = [("position", acct) for acct in accounts]
    # when 150 fill at 10.00 (no order was filled before, and no position exists)
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "10.00"))
    # then the positions' lock made the three in its pass, so the rows are sent first and the
    # positions parsed after
    assert events == ["lock or make positions", "rows", *positions]
    # when 150 more fill at 12.00 (the lock finds all three)
    events.clear()
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "12.00"))
    # then the rows are sent first, the positions parsed after, none created
    assert events == ["lock positions", "rows", *positions]
    # and they moved from the values the lock read: 50/100/150 at the average 11.00
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "avg_cost", "version"
        )
    ) == [(acct, D(q), D(11), 3) for acct, q in zip(accounts, (50, 100, 150), strict=True)]
    assert [
        (r.order_id, r.quantity, r.gross)
        for r in Allocation.objects.filter(execution__last_px=D(12)).order_by("pk")
    ] == [(a.pk, D(25), D("300.00")), (b.pk, D(50), D("600.00")), (c.pk, D(75), D("900.00"))]
    # when a position of an order filled before is gone (deleted by hand) and 150 more fill
    Position.objects.filter(instrument=instrument, account_id=accounts[1]).delete()
    events.clear()
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "12.00"))
    # then the lock found two of three: the positions are parsed, the missing one is made
    # (after the others: the orders said none was missing), and only then the rows are sent
    assert events == [
        "lock positions",
        *[("position", acct) for acct in (accounts[0], accounts[2])],
        "lock or make positions",
        ("position", accounts[1]),
        "rows",
    ]
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list("account_id", "quantity")
    ) == [(accounts[0], D(75)), (accounts[1], D(50)), (accounts[2], D(225))]


def test_a_split_reads_positions_found_answers_without_parsing_them(
    three_accounts, instrument, broker, trader, monkeypatch
):
    # given a block of 100/200/300 filled once, so its three accounts hold a position
    _, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "10.00"))
    made = []
    original_row = allocation_services._PositionRow

    def position_row(*values):
        made.append(values[1])
        return original_row(*values)

    monkeypatch.setattr(allocation_services, "_PositionRow", position_row)
    accounts = [acct.pk for acct in three_accounts]
    kwargs = {
        "block_id": placement.block_id,
        "order_id": None,
        "broker_id": placement.broker_id,
        "order_ids": [a.pk, b.pk, c.pk],
        "instrument_id": instrument.pk,
    }
    with transaction.atomic(), connection.connection.pipeline():
        # when its read is split and asks for the three accounts
        read = allocation_services.fill_read(**kwargs, account_ids=accounts, split=True)
        read.totals()
        # then every one asked for is found, and none outside them; no row parsed
        assert read.positions_found(set(accounts)) is True
        assert read.positions_found(set(accounts[:2])) is True
        assert read.positions_found({*accounts, -1}) is False
        assert made == []
        # and the positions parsed afterwards are the three locked
        assert sorted(read.positions()) == accounts
        assert made == accounts
        transaction.set_rollback(True)
    made.clear()
    other = Position.objects.filter(instrument=instrument, account_id=accounts[2])
    with transaction.atomic(), connection.connection.pipeline():
        other.delete()
        # when the third account holds none: not all found
        read = allocation_services.fill_read(**kwargs, account_ids=accounts, split=True)
        read.totals()
        assert read.positions_found(set(accounts[:2])) is False
        assert made == []
        assert sorted(read.positions()) == accounts[:2]
        transaction.set_rollback(True)
    # when the read is not split, it never answers found (its positions come with the read)
    with transaction.atomic():
        read = allocation_services.fill_read(**kwargs, account_ids=accounts)
        assert read.positions_found(set(accounts)) is False
        transaction.set_rollback(True)


def test_a_big_fills_orders_are_written_before_its_rows_are_made(
    three_accounts, instrument, broker, trader, monkeypatch
):
    # given a block of 100/200/300 in pipeline mode, filled once already (its positions exist)
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3)
    block, (a, b, c), placement = block_100_200_300(three_accounts, instrument, trader, broker)
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "10.00"))
    events = []
    original_execute = psycopg.Cursor.execute
    original_commissions = allocation_services.engine.commissions_for
    names = {
        allocation_services._POSITIONS_LOCK_SQL: "lock positions",
        allocation_services._BOOK_ORDERS_SQL: "orders",
        allocation_services._BOOK_ROWS_SQL: "rows and cash",
        allocation_services._BOOK_POSITIONS_SQL: "positions",
    }

    def execute(self, query, *args, **kwargs):
        if query in names:
            events.append(names[query])
        return original_execute(self, query, *args, **kwargs)

    def commissions_for(*args, **kwargs):
        events.append("rows' money")
        return original_commissions(*args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(allocation_services.engine, "commissions_for", commissions_for)
    # when 150 more fill at 12.00
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "12.00"))
    # then the orders' update went out before the rows' money was computed, and the cash with
    # the rows, after the positions' lock (the lock order: orders, positions, cash)
    assert events == ["lock positions", "orders", "rows' money", "rows and cash", "positions"]
    # and everything was written: orders, block, positions and cash at the average 11.00
    assert sorted(Order.objects.values_list("pk", "status", "cum_qty", "avg_px", "version")) == [
        (a.pk, "working", D(50), D(11), 3),
        (b.pk, "working", D(100), D(11), 3),
        (c.pk, "working", D(150), D(11), 3),
    ]
    block.refresh_from_db()
    assert (block.cum_qty, block.avg_px, block.version) == (D(300), D(11), 3)
    accounts = [acct.pk for acct in three_accounts]
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "avg_cost", "version"
        )
    ) == [(acct, D(q), D(11), 3) for acct, q in zip(accounts, (50, 100, 150), strict=True)]
    assert sorted(CashBalance.objects.values_list("account_id", "pending", "version")) == [
        (acct, -D(net), 2)
        for acct, net in zip(accounts, ("555.03", "1105.06", "1655.08"), strict=True)
    ]
    assert audit_verify() == []


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_big_fill_without_rows_books_as_a_small_one(
    three_accounts, instrument, broker, trader, monkeypatch, pipelined
):
    # given a block of 100/200/300 filled 150 at 10.00, its writes in pipeline mode or not
    monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3 if pipelined else 64)
    block, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    with transaction.atomic():
        fill_allocate(execution=new_execution(placement, 150, "10.00"))
    before = _book(instrument)
    # when an execution of nothing is allocated (no order's share or money moves)
    with transaction.atomic():
        rows = fill_allocate(execution=new_execution(placement, 0, "10.00"))
    # then no row is written and the book is as it was, but the block's version
    assert list(rows) == []
    after = _book(instrument)
    block_before, block_after = before.pop("blocks"), after.pop("blocks")
    assert after == before
    assert block_before == [(block.pk, D(150), 2)]
    assert block_after == [(block.pk, D(150), 3)]
