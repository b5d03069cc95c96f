"""A fill's totals kept on the row it locks: the block's (or lone order's) cum_qty and
filled_notional are the exact sums of its fills' executions, whatever their decimals."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from allocations import engine
from allocations.models import Allocation
from allocations.services import allocation_reallocate, fill_totals
from oms_site.errors import ConflictError
from orders.models import Block, Execution, Order
from tests import factories as f
from tests.allocations.support import fill, make_block, make_lone_order, make_order_placement

pytestmark = pytest.mark.django_db
D = Decimal

# Fills of many decimals: 8-decimal quantities at 8-decimal prices, a product of 31 digits
# (more than Python's default 28: summed in the default context it would be rounded), a
# product of 1e-16, and prices that repeat and that move.
FILLS = [
    ("1234567.12345678", "98765432.87654321"),
    ("0.00000001", "0.00000001"),
    ("3333333.33333333", "12.34567891"),
    ("17", "100.5"),
    ("0.5", "98765432.87654321"),
    ("2500000.00000007", "0.00000003"),
    ("1", "99.99999999"),
]


def _exact(fills: list[tuple[str, str]]) -> tuple[Decimal, Decimal]:
    """The quantity and notional of `fills`, not rounded."""
    with localcontext(Context(prec=64)):
        return sum((D(q) for q, _ in fills), D(0)), sum((D(q) * D(p) for q, p in fills), D(0))


def _sums(column: str, key: int) -> tuple[Decimal, Decimal]:
    """The executions' sums the fills read before (`column`: block_id or order_id)."""
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT COALESCE(sum(e."last_qty"), 0), COALESCE(sum(e."last_qty" * e."last_px"), 0) '
            'FROM "orders_execution" AS e JOIN "orders_placement" AS p ON p."id" = e."placement_id" '
            f'WHERE p."{column}" = %s AND e."last_qty" > 0',
            [key],
        )
        return cursor.fetchone()


def _stored(model: Any, pk: int) -> tuple[Decimal, Decimal]:
    return model.objects.values_list("cum_qty", "filled_notional").get(pk=pk)


def _average(filled: Decimal, notional: Decimal) -> Decimal:
    return (notional / filled).quantize(D("0.00000001"), rounding=ROUND_HALF_UP)


def _allocated(order_ids: list[int]) -> list[Decimal]:
    return [
        sum((a.quantity for a in Allocation.objects.filter(order_id=pk)), D(0)) for pk in order_ids
    ]


def test_a_blocks_stored_totals_are_its_executions_sums_after_many_fills_of_many_decimals(
    three_accounts, instrument, free_broker, trader
):
    # given a block of 30,000,000 / 20,000,000 / 50,000,000
    block, orders, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[30_000_000, 20_000_000, 50_000_000],
        user=trader,
        broker=free_broker,
    )
    ids = [o.pk for o in orders]
    targets = [engine.AllocationTarget(key=o.pk, requested=o.quantity) for o in orders]
    for qty, px in FILLS:
        # when it is filled `qty` at `px`
        rows = fill(placement, qty, px)
        # then its row holds its executions' sums exactly (no rounding anywhere)
        filled, notional = _sums("block_id", block.pk)
        assert _stored(Block, block.pk) == (filled, notional)
        # and the fill was allocated as from those sums: each order its pro-rata share of the
        # quantity, at their average price
        assert {r.price for r in rows} == {_average(filled, notional)}
        expected = engine.allocate_cumulative(targets, filled, instrument.lot_size)
        assert _allocated(ids) == [expected[pk] for pk in ids]
    # and the sums are the fills' own, to the last of their 16 decimals
    assert _stored(Block, block.pk) == _exact(FILLS)
    assert _exact(FILLS)[1] == D("121932646900145.6859891194185363")


def test_a_lone_orders_stored_totals_are_its_placements_executions_sums(
    account, other_account, instrument, free_broker, trader
):
    # given a lone order of 10,000,000 placed twice (a second placement with another broker),
    # and another lone order
    order = make_lone_order(account=account, instrument=instrument, user=trader, quantity=10**7)
    other = make_lone_order(account=other_account, instrument=instrument, user=trader)
    first = make_order_placement(order=order, broker=free_broker)
    second = make_order_placement(order=order, broker=f.BrokerFactory(code="SECOND"))
    other_placement = make_order_placement(order=other, broker=free_broker)
    # when its placements are filled in turn, and the other order once
    for n, (qty, px) in enumerate(FILLS):
        rows = fill(first if n % 2 else second, qty, px)
        # then its row holds the sums of both placements' executions, and the fill's price
        # is their average
        filled, notional = _sums("order_id", order.pk)
        assert _stored(Order, order.pk) == (filled, notional)
        assert [(r.order_id, r.price) for r in rows] == [(order.pk, _average(filled, notional))]
    fill(other_placement, 10, "7.25")
    # and each order's row counts its own fills only
    assert _stored(Order, order.pk) == _exact(FILLS)
    assert _stored(Order, other.pk) == (D(10), D("72.5"))


def test_an_overfill_refused_leaves_the_stored_totals_unchanged(
    three_accounts, instrument, free_broker, trader, account
):
    # given a block of 1/1/1 filled 2 at 10.5, and a lone order of 5 filled 4 at 3.3
    block, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[1, 1, 1],
        user=trader,
        broker=free_broker,
    )
    fill(placement, 2, "10.5")
    lone = make_lone_order(account=account, instrument=instrument, user=trader, quantity=5)
    lone_placement = make_order_placement(order=lone, broker=free_broker)
    fill(lone_placement, 4, "3.3")
    block_row = Block.objects.values_list("cum_qty", "filled_notional", "avg_px", "version")
    order_row = Order.objects.values_list("cum_qty", "filled_notional", "avg_px", "version")
    before = (block_row.get(pk=block.pk), order_row.get(pk=lone.pk), Execution.objects.count())
    # when each is filled past its quantity
    with pytest.raises(ConflictError, match="cannot allocate 4"):
        fill(placement, 2, "11")
    with pytest.raises(ConflictError, match="cannot allocate 6"):
        fill(lone_placement, 2, "3.4")
    # then both fills are refused and neither row moved (nor any execution stayed)
    assert (block_row.get(pk=block.pk), order_row.get(pk=lone.pk), Execution.objects.count()) == (
        before
    )
    assert before[0][:2] == (D(2), D(21)) and before[1][:2] == (D(4), D("13.2"))


def test_a_reallocation_moves_no_total_and_later_fills_add_to_them(
    three_accounts, instrument, free_broker, trader
):
    # given a block of 100/200/300 filled 150 at 10 and 150 at 12
    block, orders, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[100, 200, 300],
        user=trader,
        broker=free_broker,
    )
    fill(placement, 150, "10")
    fill(placement, 150, "12")
    # when it is re-allocated 100/100/100 by hand, then filled 60 at 13
    allocation_reallocate(
        user=trader,
        method="manual",
        block_id=block.pk,
        quantities={str(o.pk): "100" for o in orders},
    )
    assert _stored(Block, block.pk) == (D(300), D(3300))
    rows = fill(placement, 60, "13")
    # then the totals are the executions' sums, and the fill priced at their average
    assert _stored(Block, block.pk) == _sums("block_id", block.pk) == (D(360), D(4080))
    assert {r.price for r in rows} == {D("11.33333333")}


def test_fill_totals_adds_the_fill_at_its_columns_scale_and_nothing_for_no_quantity():
    # a report's quantity and price are stored at 8 decimals (rounded half away from zero, as
    # PostgreSQL rounds a numeric), and counted as stored
    assert fill_totals(D("1.5"), D("15.75"), D("0.123456785"), D("2.000000005")) == (
        D("1.62345679"),
        D("15.75") + D("0.12345679") * D("2.00000001"),
    )
    assert fill_totals(D(7), D(70), D(0), D(11)) == (D(7), D(70))


@pytest.mark.django_db(transaction=True)
def test_the_migration_backfills_the_totals_from_the_executions_and_goes_back(
    three_accounts, account, instrument, free_broker, trader
):
    # given a block and a lone order filled several times, and a block never filled
    block, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[10**6, 10**6, 10**6],
        user=trader,
        broker=free_broker,
    )
    lone = make_lone_order(account=account, instrument=instrument, user=trader, quantity=10**7)
    lone_placement = make_order_placement(order=lone, broker=free_broker)
    for qty, px in FILLS[:5]:
        fill(placement, D(qty) / 10, px)
        fill(lone_placement, qty, px)
    idle, _, _ = make_block(
        instrument=instrument, accounts=three_accounts[:1], quantities=[5], user=trader
    )
    stored = (_stored(Block, block.pk), _stored(Order, lone.pk), _stored(Block, idle.pk))
    assert stored[0] == _sums("block_id", block.pk) and stored[1] == _sums("order_id", lone.pk)
    before, after = "0004_order_indexes_where_used", "0005_fill_totals_on_locked_rows"
    try:
        # when the migration is taken back (the columns go) and applied again
        executor = MigrationExecutor(connection)
        executor.migrate([("orders", before)])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name IN ('orders_block', 'orders_order') "
                "AND column_name = 'filled_notional'"
            )
            assert cursor.fetchone() == (0,)
        executor = MigrationExecutor(connection)
        executor.migrate([("orders", after)])
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    # then its backfill wrote the same sums, exactly
    assert (_stored(Block, block.pk), _stored(Order, lone.pk), _stored(Block, idle.pk)) == stored
    assert stored[2] == (D(0), D(0))
    # and a notional without a filled quantity is refused
    with pytest.raises(IntegrityError, match="block_notional_only_filled"), transaction.atomic():
        Block.objects.filter(pk=idle.pk).update(filled_notional=D(1))
    with pytest.raises(IntegrityError, match="order_notional_only_filled"), transaction.atomic():
        Order.objects.filter(block=idle).update(filled_notional=D(1))
