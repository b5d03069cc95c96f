"""Whatever path a fill takes (one report, a batch, a big block's pipelined fill, a duplicate,
a refused overfill, a re-allocation between fills), the block's and the lone order's stored
totals stay the exact sums of their executions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from allocations import services as allocation_services
from allocations.services import allocation_reallocate
from oms_site.errors import ConflictError
from orders.models import Block, Order
from orders.services import executions
from orders.services.executions import execution_apply, executions_apply
from tests.allocations.test_fill_totals import _sums
from tests.routing.test_executions_batch import KEY, World

pytestmark = pytest.mark.django_db
D = Decimal


def _totals_kept(world: World) -> tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]:
    """The block's and the lone order's stored totals, checked against their executions."""
    block = Block.objects.values_list("cum_qty", "filled_notional").get(pk=world.block.pk)
    lone = Order.objects.values_list("cum_qty", "filled_notional").get(pk=world.orders[3].pk)
    assert block == _sums("block_id", world.block.pk)
    assert lone == _sums("order_id", world.orders[3].pk)
    # the block's orders keep none of their own
    members = Order.objects.filter(block=world.block).values_list("filled_notional", flat=True)
    assert set(members) == {D(0)}
    return block, lone


@pytest.mark.parametrize("pipelined", [False, True], ids=["small", "big-block-pipelined"])
def test_the_stored_totals_are_the_executions_sums_after_fills_through_every_path(
    trader, pm, desk, brokers, monkeypatch, pipelined
):
    if pipelined:  # the block's three orders: its fills' reads sent early, writes pipelined
        monkeypatch.setattr(executions, "PIPELINE_MIN_ORDERS", 3)
        monkeypatch.setattr(allocation_services, "PIPELINE_MIN_ORDERS", 3)
    # given a block of 60/30/10 placed twice (60 with BRKA, 40 with BRKB) and a lone order of
    # 100, nothing filled yet
    world = World(trader, pm, desk)
    world.split_block()
    assert _totals_kept(world) == ((D(0), D(0)), (D(0), D(0)))
    # when reports are applied one by one: fills of the block's two placements and of the lone
    # order, of many decimals
    for report in world.reports(
        [
            ("block", "F", "1", 1, "10.12345678", "100.00000001"),
            ("block2", "F", "1", 2, "3.5", "99.98765432"),
            ("lone", "F", "1", 3, "33.33333333", "12.3456789"),
        ]
    ):
        assert execution_apply(session_key=KEY, report=report) is not None
    _totals_kept(world)
    # and a batch: more fills, a duplicate of one already applied (nothing), an acknowledgement
    batch = world.reports(
        [
            ("block", "F", "1", 4, "20", "101.5"),
            ("block", "F", "1", 1, "10.12345678", "100.00000001"),
            ("lone", "F", "1", 5, "0.00000001", "0.00000001"),
            ("block2", "F", "1", 6, "6.5", "98.1"),
            ("lone", "F", "1", 7, "16.66666667", "13"),
        ]
    )
    results = executions_apply(session_key=KEY, reports=[(r, None) for r in batch])
    assert [r is None for r in results] == [False, True, False, False, False]
    _totals_kept(world)
    # and the block is re-allocated by hand between fills (no total moves), then filled again
    before = _totals_kept(world)
    allocation_reallocate(
        user=trader,
        method="manual",
        block_id=world.block.pk,
        quantities={
            str(o.pk): q for o, q in zip(world.orders[:3], ("30", "10", "0.12345678"), strict=True)
        },
    )
    assert _totals_kept(world) == before
    for report in world.reports(
        [("block", "F", "1", 8, "9.87654322", "100.25"), ("block2", "F", "1", 9, "30", "97")]
    ):
        execution_apply(session_key=KEY, report=report)
    # and a fill past the block's 100 (80 filled) is refused, alone and in a batch
    before = _totals_kept(world)
    (over,) = world.reports([("block", "F", "1", 10, "30", "96")])
    with pytest.raises(ConflictError, match="cannot allocate 110"):
        execution_apply(session_key=KEY, report=over)
    with pytest.raises(ConflictError, match="cannot allocate 110"):
        executions_apply(session_key=KEY, reports=[(over, None)])
    # then the stored totals are the executions' sums after each step, exactly, and the refused
    # fill moved none
    block, lone = _totals_kept(world)
    assert (block, lone) == before
    assert block == (
        D("10.12345678") + D("3.5") + D(20) + D("6.5") + D("9.87654322") + D(30),
        D("10.12345678") * D("100.00000001")
        + D("3.5") * D("99.98765432")
        + D(20) * D("101.5")
        + D("6.5") * D("98.1")
        + D("9.87654322") * D("100.25")
        + D(30) * D(97),
    )
    assert lone == (
        D("33.33333333") + D("0.00000001") + D("16.66666667"),
        D("33.33333333") * D("12.3456789")
        + D("0.00000001") * D("0.00000001")
        + D("16.66666667") * D(13),
    )
