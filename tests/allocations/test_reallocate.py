"""allocation_reallocate: manual and fixed-ratio re-allocation, its invariants, audit and refusals."""

from __future__ import annotations

from decimal import Decimal

import pytest

from allocations.models import Allocation, BlockAllocationPolicy, CashBalance, Position
from allocations.services import allocation_reallocate
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError
from oms_site.models import AuditEvent
from settlement.models import SettlementFile, SettlementRun
from tests import factories as f
from tests.allocations.support import TRADE_DATE, allocated, block_100_200_300, fill

D = Decimal


@pytest.fixture
def filled_block(three_accounts, instrument, broker, trader):
    """Orders 100/200/300 (lot 1), 300 filled at 10.00 → pro-rata 50/100/150."""
    block, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 300, "10.00")
    return block, orders, placement


def test_manual_reallocation_reverses_and_rebooks(filled_block, three_accounts, instrument, trader):
    block, (a, b, c), _placement = filled_block
    # when the trader gives the 300 to A (100) and B (200), by order id and by account code
    rows = allocation_reallocate(
        user=trader, block_id=block.pk, method="manual", quantities={str(a.pk): "100", "A2": "200"}
    )
    # then A and B get more, C's 150 is reversed, all at the block's price 10.00
    assert [(r.order_id, r.kind, r.quantity, r.price, r.method) for r in rows] == [
        (a.pk, "fill", D(50), D(10), "manual"),
        (b.pk, "fill", D(100), D(10), "manual"),
        (c.pk, "reversal", D(-150), D(10), "manual"),
    ]
    assert all(r.created_by_id == trader.pk for r in rows)
    # and the sums are the new allocation, with commission recomputed on it
    assert allocated(a) == {
        "quantity": D(100),
        "gross": D("1000.00"),
        "commission": D("5.00"),
        "fees": D("0.05"),
        "net": D("1005.05"),
    }
    assert allocated(c) == {
        "quantity": D(0),
        "gross": D("0.00"),
        "commission": D("0.00"),
        "fees": D("0.00"),
        "net": D("0.00"),
    }
    # and positions and cash follow
    assert Position.objects.get(account=three_accounts[2]).quantity == D(0)
    assert CashBalance.objects.get(account=three_accounts[2]).pending == D("0.00")
    assert Position.objects.get(account=three_accounts[1]).quantity == D(200)
    # and orders' cumulative quantities are the new ones
    for order, qty in ((a, 100), (b, 200), (c, 0)):
        order.refresh_from_db()
        assert order.cum_qty == D(qty)
    # and it is audited: one event listing the rows and one for the block, by the trader
    events = AuditEvent.objects.filter(action="allocation.reallocated").order_by("seq")
    assert [r["id"] for e in events for r in e.after["allocations"]] == [r.pk for r in rows]
    assert {e.actor_name for e in events} == {"trader_a"}
    block_event = AuditEvent.objects.get(action="block.reallocated")
    assert block_event.after["allocated"] == {str(a.pk): "100", str(b.pk): "200", str(c.pk): "0"}
    assert block_event.before["policy"] == {"method": "pro_rata"}


def test_fills_after_manual_share_the_remaining_room(filled_block, trader):
    block, (a, b, c), placement = filled_block
    allocation_reallocate(
        user=trader, block_id=block.pk, method="manual", quantities={a.pk: "100", b.pk: "200"}
    )
    # when the rest (300) fills, only C has room
    fill(placement, 300, "10.00")
    # then everyone is complete
    assert [allocated(o)["quantity"] for o in (a, b, c)] == [D(100), D(200), D(300)]
    assert BlockAllocationPolicy.objects.get(block=block).method == "manual"


def test_fixed_ratio_and_back_to_pro_rata(filled_block, backoffice):
    block, (a, b, c), _ = filled_block
    # when back office sets ratios 1:1:1 (by account code)
    allocation_reallocate(
        user=backoffice, block_id=block.pk, method="fixed_ratio", ratios={"A1": 1, "A2": 1, "A3": 1}
    )
    assert [allocated(o)["quantity"] for o in (a, b, c)] == [D(100), D(100), D(100)]
    # when reset to pro-rata
    allocation_reallocate(user=backoffice, block_id=block.pk, method="pro_rata")
    assert [allocated(o)["quantity"] for o in (a, b, c)] == [D(50), D(100), D(150)]
    assert not BlockAllocationPolicy.objects.filter(block=block).exists()


def test_reallocation_by_execution_id(filled_block, trader):
    _block, (a, b, c), placement = filled_block
    execution = placement.executions.get()
    allocation_reallocate(
        user=trader,
        execution_id=execution.pk,
        method="manual",
        quantities={a.pk: 0, b.pk: 0, c.pk: 300},
    )
    assert [allocated(o)["quantity"] for o in (a, b, c)] == [D(0), D(0), D(300)]


@pytest.mark.parametrize(
    "quantities, message",
    [
        ({"A1": "150", "A2": "150"}, "exceeds the order's quantity"),
        ({"A1": "100", "A2": "100"}, "does not equal the filled quantity"),
        ({"A1": "-100", "A2": "200", "A3": "200"}, "negative"),
        ({"NOPE": "300"}, "not an order"),
        ({"A1": "abc"}, "not a number"),
    ],
)
def test_manual_invariants_are_enforced(filled_block, trader, quantities, message):
    block, _orders, _ = filled_block
    before = list(Allocation.objects.values_list("pk", flat=True))
    with pytest.raises(ValidationError) as err:
        allocation_reallocate(
            user=trader, block_id=block.pk, method="manual", quantities=quantities
        )
    assert message in str(err.value.errors)
    # and nothing changed
    assert list(Allocation.objects.values_list("pk", flat=True)) == before


def test_fixed_ratio_needs_every_order(filled_block, trader):
    block, _, _ = filled_block
    with pytest.raises(ValidationError):
        allocation_reallocate(
            user=trader, block_id=block.pk, method="fixed_ratio", ratios={"A1": 1}
        )


def test_refused_once_settlement_files_exist(filled_block, three_accounts, trader, backoffice):
    block, _, _ = filled_block
    run = SettlementRun.objects.create(trade_date=TRADE_DATE, status="done")
    SettlementFile.objects.create(
        run=run,
        custodian=three_accounts[0].custodian,
        trade_date=TRADE_DATE,
        version=1,
        file_format="csv",
        path="x.csv",
        sha256="0" * 64,
        size_bytes=1,
        line_count=1,
    )
    with pytest.raises(ConflictError) as err:
        allocation_reallocate(
            user=backoffice, block_id=block.pk, method="manual", quantities={"A1": 100, "A2": 200}
        )
    assert err.value.code == "settlement_files_exist"


def test_file_of_another_custodian_does_not_block(filled_block, trader):
    block, (a, _b, _c), _ = filled_block
    run = SettlementRun.objects.create(trade_date=TRADE_DATE, status="done")
    SettlementFile.objects.create(
        run=run,
        custodian=f.CustodianFactory(code="ELSEWHERE"),
        trade_date=TRADE_DATE,
        version=1,
        file_format="csv",
        path="y.csv",
        sha256="0" * 64,
        size_bytes=1,
        line_count=1,
    )
    allocation_reallocate(
        user=trader, block_id=block.pk, method="manual", quantities={"A1": 100, "A2": 200}
    )
    assert allocated(a)["quantity"] == D(100)


def test_who_may_reallocate(filled_block, pm, compliance_officer, role_groups):
    block, _, _ = filled_block
    for user in (pm, compliance_officer):
        with pytest.raises(NotPermitted):
            allocation_reallocate(user=user, block_id=block.pk, method="pro_rata")
    other_trader = f.UserFactory(username="trader_other", role="Trader")
    f.DeskFactory(code="OTHER").traders.add(other_trader)
    with pytest.raises(NotFound):
        allocation_reallocate(user=other_trader, block_id=block.pk, method="pro_rata")
    with pytest.raises(NotFound):
        allocation_reallocate(user=other_trader, block_id=999999, method="pro_rata")
