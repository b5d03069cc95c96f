"""execution_apply in psycopg's pipeline mode: a big fill's writing statement is not waited for.

Blocks of at least `PIPELINE_MIN_ORDERS` orders are filled in pipeline mode; the tests lower it
to put small blocks there.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import django.db
import psycopg
import pytest
from psycopg import pq

from allocations import services as allocation_services
from allocations.models import Allocation, BlockAllocationPolicy, CashBalance, Position
from oms_site.errors import ConflictError
from oms_site.models import AuditEvent
from orders.models import Execution, Order
from orders.services import executions
from orders.services.executions import execution_apply, executions_apply
from tests import factories as f
from tests.routing.conftest import acknowledged_block, acknowledged_block_of, report


def _first_fill(p: Any, qty: str = "50", *, exec_id: str | None = None) -> Any:
    """Placement `p`'s first fill: `qty` at 100 (cumulative and last both `qty`)."""
    return report(
        p.cl_ord_id, "F", "1", exec_id=exec_id, cum=qty, avg="100", last_qty=qty, last_px="100"
    )


pytestmark = pytest.mark.django_db
KEY = "FIX.4.4:OMS->BRKA"


def _acknowledged_block(trader, make_order, quantities):
    return acknowledged_block(trader, make_order, quantities, session_key=KEY)


def _rows(execution):
    return list(
        Allocation.objects.filter(execution=execution)
        .order_by("pk")
        .values_list("pk", "order_id", "kind", "quantity", "price", "gross", "net", "cum_quantity")
    )


def _book_state() -> dict:
    return {
        "executions": sorted(Execution.objects.values_list("pk", "exec_id", "last_qty")),
        "allocations": sorted(Allocation.objects.values_list("pk", "order_id", "quantity")),
        "audit": AuditEvent.objects.count(),
        "orders": sorted(Order.objects.values_list("pk", "status", "cum_qty", "version")),
        "positions": sorted(Position.objects.values_list("pk", "quantity", "version")),
        "cash": sorted(CashBalance.objects.values_list("pk", "pending", "version")),
    }


@pytest.mark.parametrize("pipelined", [True, False])
def test_block_fills_write_the_rows_their_audit_event_names(
    trader, brokers, make_order, monkeypatch, pipelined
):
    # given an acknowledged block of two orders (one account, a broker without commissions),
    # filled in pipeline mode or not
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 2 if pipelined else 64)
    block, (a, b), p = _acknowledged_block(trader, make_order, [60, 40])
    cash_before = CashBalance.objects.filter(
        account=a.account, currency=a.instrument.currency
    ).values_list("settled", "pending")
    settled, pending = cash_before.first() or (Decimal(0), Decimal(0))
    # when it is filled 50 at 100.3, then 50 at 102
    first = execution_apply(
        session_key=KEY,
        report=report(p.cl_ord_id, "F", "1", cum="50", avg="100.3", last_qty="50", last_px="100.3"),
    )
    second = execution_apply(
        session_key=KEY,
        report=report(p.cl_ord_id, "F", "2", cum="100", avg="101.15", last_qty="50", last_px="102"),
    )
    # then each fill wrote one row per order, ids ascending in order of the orders
    first_rows, second_rows = _rows(first), _rows(second)
    assert [r[1:] for r in first_rows] == [
        (a.pk, "fill", Decimal("30"), Decimal("100.3"), Decimal("3009.00"), Decimal("3009.00"), 30),
        (b.pk, "fill", Decimal("20"), Decimal("100.3"), Decimal("2006.00"), Decimal("2006.00"), 20),
    ]
    assert [r[1:] for r in second_rows] == [
        (a.pk, "fill", 30, Decimal("101.15"), Decimal("3060.00"), Decimal("3060.00"), 60),
        (b.pk, "fill", 20, Decimal("101.15"), Decimal("2040.00"), Decimal("2040.00"), 40),
    ]
    assert first_rows[0][0] < first_rows[1][0] < second_rows[0][0] < second_rows[1][0]
    # and each fill's audit event names exactly the rows stored, with their ids
    for execution, rows in ((first, first_rows), (second, second_rows)):
        event = AuditEvent.objects.get(action="allocation.created", object_id=str(execution.pk))
        assert [
            (x["id"], x["order"], x["quantity"], x["gross"]) for x in event.after["allocations"]
        ] == [(pk, order, str(qty), str(gross)) for pk, order, _, qty, _, gross, _, _ in rows]
    # and the book moved exactly: the account holds 100 at the block's average, owes the gross
    position = Position.objects.get(account=a.account, instrument=a.instrument)
    assert (position.quantity, position.avg_cost) == (Decimal("100"), Decimal("101.15"))
    cash = CashBalance.objects.get(account=a.account, currency=a.instrument.currency)
    assert (cash.settled, cash.pending) == (settled, pending - Decimal("10115.00"))
    block.refresh_from_db()
    assert (block.status, block.cum_qty, block.avg_px) == ("filled", 100, Decimal("101.15"))


def test_the_writing_statement_of_a_big_block_is_sent_in_pipeline_mode(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders, and a smaller one, with blocks of three or
    # more filled in pipeline mode
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    _, _, p = _acknowledged_block(trader, make_order, [60, 30, 10])
    _, _, small = _acknowledged_block(trader, make_order, [60, 40])
    seen = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        if query is allocation_services._BOOK_WRITE_SQL:
            seen.append(self.connection.pgconn.pipeline_status)
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    # when one report is applied, then a batch of two
    execution_apply(
        session_key=KEY,
        report=_first_fill(p, "10"),
    )
    executions_apply(
        session_key=KEY,
        reports=[
            (
                report(p.cl_ord_id, "F", "2", cum="20", avg="100", last_qty="10", last_px="100"),
                None,
            ),
            (
                report(p.cl_ord_id, "F", "3", cum="30", avg="100", last_qty="10", last_px="100"),
                None,
            ),
        ],
    )
    # then every fill's write went out in pipeline mode
    assert seen == [pq.PipelineStatus.ON] * 3
    # and a fill of the smaller block is written and read back as usual
    seen.clear()
    execution_apply(
        session_key=KEY,
        report=_first_fill(small, "10"),
    )
    assert seen == [pq.PipelineStatus.OFF]


def test_an_error_of_the_write_not_waited_for_rolls_the_whole_report_back(
    trader, brokers, make_order, monkeypatch, django_capture_on_commit_callbacks
):
    # given an acknowledged block filled in pipeline mode, and a writing statement that fails
    # in PostgreSQL
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 2)
    _, _, p = _acknowledged_block(trader, make_order, [60, 40])
    before = _book_state()
    failing = allocation_services._BOOK_WRITE_SQL.replace("SELECT NULL", "SELECT 1 / 0")
    assert failing != allocation_services._BOOK_WRITE_SQL
    monkeypatch.setattr(allocation_services, "_BOOK_WRITE_SQL", failing)
    # when a fill is applied
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises((psycopg.Error, django.db.Error), match="division by zero"),
    ):
        execution_apply(
            session_key=KEY,
            report=_first_fill(p, exec_id="BAD1"),
        )
    # then nothing of it stayed: no execution, allocation, book row, order change, audit event
    # or blotter event
    assert not Execution.objects.filter(exec_id="BAD1").exists()
    assert _book_state() == before
    assert callbacks == []


def test_a_big_block_fill_sends_its_execution_and_read_before_the_orders_are_built(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders, and a smaller one, with blocks of three or
    # more filled in pipeline mode
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    _, (a, b, c), p = _acknowledged_block(trader, make_order, [60, 30, 10])
    _, _, small = _acknowledged_block(trader, make_order, [60, 40])
    seen = []
    original_execute = psycopg.Cursor.execute
    original_build = executions._orders_from_rows
    original_read = allocation_services.fill_read

    def execute(self, query, *args, **kwargs):
        if query is executions._INSERT_EXECUTION_SQL:
            seen.append(("execution", self.connection.pgconn.pipeline_status))
        elif isinstance(query, str) and query.startswith(
            f"WITH ins AS ({executions._INSERT_EXECUTION_READ_SQL})"
        ):
            seen.append(("execution in the read", self.connection.pgconn.pipeline_status))
        return original_execute(self, query, *args, **kwargs)

    def build(q, rows, shared):
        if shared is not None:  # a block's orders
            seen.append(("orders built", len(rows)))
        return original_build(q, rows, shared)

    def read(**kwargs):
        seen.append(("read", kwargs["order_ids"]))
        return original_read(**kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(executions, "_orders_from_rows", build)
    monkeypatch.setattr(allocation_services, "fill_read", read)
    # when each block is filled
    execution = execution_apply(
        session_key=KEY,
        report=_first_fill(p),
    )
    big = list(seen)
    seen.clear()
    execution_apply(
        session_key=KEY,
        report=_first_fill(small, "10"),
    )
    # then the big block's Execution insert and its fill's read (of the locked orders' ids)
    # went out in pipeline mode before its orders were built, once each
    assert big == [
        ("execution", pq.PipelineStatus.ON),
        ("read", [a.pk, b.pk, c.pk]),
        ("orders built", 3),
    ]
    # and the smaller block's: the orders built, then the read, which carries the insert (one
    # statement, not in pipeline mode)
    assert seen == [
        ("orders built", 2),
        ("read", sorted(o.pk for o in Order.objects.filter(block_id=small.block_id))),
        ("execution in the read", pq.PipelineStatus.OFF),
    ]
    # and the big block's fill booked its three orders 30/15/5 at 100
    assert [(r[1], r[3]) for r in _rows(execution)] == [
        (a.pk, Decimal("30")),
        (b.pk, Decimal("15")),
        (c.pk, Decimal("5")),
    ]


@pytest.mark.parametrize(
    "pipeline_min_orders, quantities, exec_id",
    [(3, [60, 30, 10], "DUP1"), (None, [60, 40], "DUP3")],
    # a big block's fill is filled in pipeline mode (its insert and read sent before the copy
    # is known); a small block's fill insert rides in its read
    ids=["big-block-sent-early", "small-block-insert-in-read"],
)
def test_a_duplicate_block_fill_changes_nothing(
    trader,
    brokers,
    make_order,
    monkeypatch,
    django_capture_on_commit_callbacks,
    pipeline_min_orders,
    quantities,
    exec_id,
):
    # given an acknowledged block, and one fill applied
    if pipeline_min_orders is not None:
        monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", pipeline_min_orders)
    _, _, p = _acknowledged_block(trader, make_order, quantities)
    fill = report(
        p.cl_ord_id, "F", "1", exec_id=exec_id, cum="50", avg="100", last_qty="50", last_px="100"
    )
    first = execution_apply(session_key=KEY, report=fill)
    before = _book_state()
    # when the same report comes again
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = execution_apply(session_key=KEY, report=fill)
    # then it is not applied: no execution, allocation, audit event, order, position or cash
    # change, and no blotter event
    assert first is not None and again is None
    assert _book_state() == before
    assert callbacks == []


def test_an_overfill_of_a_big_block_sends_nothing_early_and_books_nothing(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders (100 in all) filled in pipeline mode
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    _, _, p = _acknowledged_block(trader, make_order, [60, 30, 10])
    reads = []
    original_read = allocation_services.fill_read

    def read(**kwargs):
        reads.append(kwargs)
        return original_read(**kwargs)

    monkeypatch.setattr(allocation_services, "fill_read", read)
    # when the broker reports 150 filled
    execution = execution_apply(
        session_key=KEY,
        report=report(p.cl_ord_id, "F", "2", cum="150", avg="100", last_qty="150", last_px="100"),
    )
    # then the execution is stored without quantity, flagged, and nothing was read or booked
    assert execution is not None
    execution.refresh_from_db()
    assert (execution.last_qty, execution.last_px) == (Decimal(0), Decimal(0))
    assert AuditEvent.objects.filter(action="execution.overfill").count() == 1
    assert reads == []
    assert not Allocation.objects.exists()


@pytest.mark.parametrize(
    "pipeline_min_orders, exec_id",
    [(3, "DUP2"), (None, "DUP4")],
    # a big block's fill counts its execution in its own read; a small block's read counts
    # the row its insert added
    ids=["big-block-pipelined", "small-block-insert-in-read"],
)
def test_a_batch_with_a_duplicate_block_fill_books_the_next_fill(
    trader, brokers, make_order, monkeypatch, pipeline_min_orders, exec_id
):
    # given an acknowledged block of three orders (filled in pipeline mode, or with each small
    # fill's insert in its read), one fill applied
    if pipeline_min_orders is not None:
        monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", pipeline_min_orders)
    _, (a, b, c), p = _acknowledged_block(trader, make_order, [60, 30, 10])
    fill = report(
        p.cl_ord_id, "F", "1", exec_id=exec_id, cum="50", avg="100", last_qty="50", last_px="100"
    )
    execution_apply(session_key=KEY, report=fill)
    # when a batch brings the same fill again, then a new fill of 50 at 102
    dup, second = executions_apply(
        session_key=KEY,
        reports=[
            (fill, None),
            (
                report(p.cl_ord_id, "F", "2", cum="100", avg="101", last_qty="50", last_px="102"),
                None,
            ),
        ],
    )
    # then the copy is not applied, and the new fill books the whole block at the average of
    # both fills
    assert dup is None and second is not None
    assert [(r[1], r[3], r[4], r[7]) for r in _rows(second)] == [
        (a.pk, Decimal("30"), Decimal("101"), Decimal("60")),
        (b.pk, Decimal("15"), Decimal("101"), Decimal("30")),
        (c.pk, Decimal("5"), Decimal("101"), Decimal("10")),
    ]
    assert Execution.objects.filter(exec_id=exec_id).count() == 1


def test_a_duplicate_big_block_fill_makes_no_position_for_an_order_never_filled(
    trader, brokers, make_order, account, monkeypatch, django_capture_on_commit_callbacks
):
    # given a big block (filled in pipeline mode) whose third order, of another account on the
    # same desk, got nothing from the first fill (98/1/1 filled 50: 49, 1, 0 by the largest
    # remainder, ties by entry time), so that account holds no position in the instrument
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    second_account = f.AccountFactory(code="ACC-A2", desk=account.desk)
    a = make_order(quantity=Decimal(98))
    b = make_order(quantity=Decimal(1))
    c = make_order(quantity=Decimal(1), account=second_account)
    _, p = acknowledged_block_of(trader, [a, b, c], session_key=KEY)
    fill = report(
        p.cl_ord_id, "F", "1", exec_id="DUP5", cum="50", avg="100", last_qty="50", last_px="100"
    )
    first = execution_apply(session_key=KEY, report=fill)
    assert [(r[1], r[3]) for r in _rows(first)] == [(a.pk, Decimal(49)), (b.pk, Decimal(1))]
    assert not Position.objects.filter(account=second_account).exists()
    before = _book_state()
    # when the same report comes again (its read sent before the copy is known, with the
    # never-filled order's position to be made)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = execution_apply(session_key=KEY, report=fill)
    # then nothing changed: in particular no empty position was left for that account
    assert again is None
    assert _book_state() == before
    assert not Position.objects.filter(account=second_account).exists()
    assert callbacks == []


def test_a_big_block_fill_sends_its_read_before_the_orders_rows_are_parsed(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders of one account, with blocks of three or more
    # filled in pipeline mode
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    _, (a, b, c), p = _acknowledged_block(trader, make_order, [60, 30, 10])
    seen = []
    locks = set()
    original_execute = psycopg.Cursor.execute
    original_fetchall = psycopg.Cursor.fetchall
    original_read = allocation_services.fill_read

    def execute(self, query, *args, **kwargs):
        if query == executions._lock_sql_get().block_orders_sql:
            locks.add(id(self))
        return original_execute(self, query, *args, **kwargs)

    def fetchall(self):
        rows = original_fetchall(self)
        if id(self) in locks:
            seen.append(("orders' rows parsed", len(rows)))
        return rows

    def read(**kwargs):
        seen.append(("read", kwargs["order_ids"], kwargs["account_ids"], kwargs["create"]))
        return original_read(**kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Cursor, "fetchall", fetchall)
    monkeypatch.setattr(allocation_services, "fill_read", read)
    # when it is filled twice
    for n, (cum, last) in enumerate((("50", "50"), ("80", "30")), start=1):
        seen.clear()
        execution_apply(
            session_key=KEY,
            report=report(
                p.cl_ord_id, "F", str(n), cum=cum, avg="100", last_qty=last, last_px="100"
            ),
        )
        # then the read (of the orders' ids, their one account, positions made only while an
        # order was never filled) went out before the orders' rows were parsed
        assert seen == [
            ("read", [a.pk, b.pk, c.pk], [a.account_id], n == 1),
            ("orders' rows parsed", 3),
        ]
    # and the fills booked the orders 48/24/8 in all
    assert [
        sum(Allocation.objects.filter(order=o).values_list("quantity", flat=True))
        for o in (a, b, c)
    ] == [Decimal("48"), Decimal("24"), Decimal("8")]


def test_a_big_block_fill_makes_its_pro_rata_part_while_postgresql_reads(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders without allocation policy, filled in
    # pipeline mode, and a record of when the pro-rata part is made and the insert answered
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    _, (a, b, c), p = _acknowledged_block(trader, make_order, [60, 30, 10])
    calls: list[Any] = []
    made = allocation_services._pro_rata
    answered = executions._insert_execution_done

    def pro_rata(orders):
        calls.append([o.pk for o in orders])
        return made(orders)

    def done(execution, cursor):
        calls.append("insert answered")
        return answered(execution, cursor)

    monkeypatch.setattr(allocation_services, "_pro_rata", pro_rata)
    monkeypatch.setattr(executions, "_insert_execution_done", done)
    # when it is filled 50
    execution = execution_apply(
        session_key=KEY,
        report=_first_fill(p),
    )
    # then the pro-rata part was made once, of the block's orders, before the insert's answer
    # (which waits for the read) and not again by the allocation
    assert calls == [[a.pk, b.pk, c.pk], "insert answered"]
    # and the orders got exactly their pro-rata share
    assert [(r[1], r[3], r[7]) for r in _rows(execution)] == [
        (a.pk, Decimal("30"), 30),
        (b.pk, Decimal("15"), 15),
        (c.pk, Decimal("5"), 5),
    ]


@pytest.mark.parametrize("pipelined", [True, False])
def test_orders_the_pro_rata_refuses_are_refused_by_the_allocation_with_its_error(
    trader, brokers, make_order, monkeypatch, pipelined
):
    # given an acknowledged block (pipelined or not) whose orders the pro-rata refuses
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 2 if pipelined else 64)
    _, _, p = _acknowledged_block(trader, make_order, [60, 40])
    before = _book_state()
    calls = []

    def refused(orders):
        calls.append(len(orders))
        raise ValueError("requested must be >= 0, got -1 for 1")

    monkeypatch.setattr(allocation_services, "_pro_rata", refused)
    # when a fill is applied
    with pytest.raises(
        ConflictError, match=r"^cannot allocate 50\.00000000: requested must be >= 0, got -1 for 1$"
    ) as err:
        execution_apply(
            session_key=KEY,
            report=_first_fill(p, exec_id="REF1"),
        )
    # then the allocation refused it as an overfill (tried early too when pipelined), and
    # nothing of it stayed
    assert err.value.code == "overfill"
    assert calls == ([2, 2] if pipelined else [2])
    assert not Execution.objects.filter(exec_id="REF1").exists()
    assert _book_state() == before


def test_a_big_block_with_an_allocation_policy_makes_no_early_pro_rata_part(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of three orders with fixed ratios, filled in pipeline mode
    monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
    block, (a, b, c), p = _acknowledged_block(trader, make_order, [60, 30, 10])
    BlockAllocationPolicy.objects.create(
        block=block,
        method="fixed_ratio",
        ratios={str(a.pk): "2", str(b.pk): "1", str(c.pk): "1"},
    )
    prepared = []
    monkeypatch.setattr(
        allocation_services.FillRead, "prepare", lambda self, orders: prepared.append(orders)
    )
    # when it is filled 40
    execution = execution_apply(
        session_key=KEY,
        report=_first_fill(p, "40"),
    )
    # then no pro-rata part was made, and the fill was shared by the ratios
    assert prepared == []
    assert [(r[1], r[3]) for r in _rows(execution)] == [
        (a.pk, Decimal("20")),
        (b.pk, Decimal("10")),
        (c.pk, Decimal("10")),
    ]
