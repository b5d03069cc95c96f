"""The invariant checker: a consistent book passes; each kind of damage is caught."""

from __future__ import annotations

from typing import Any

import pytest

from allocations.models import CashBalance, Position
from oms_site.invariants import book_snapshot, invariants_check
from orders.models import Execution, Order
from orders.services.executions import execution_apply
from orders.services.routing import order_route
from tests.routing.conftest import brokers, make_order, report  # noqa: F401 - fixtures

KEY = "FIX.4.4:OMS->BRKA"


def _failed(results: list[Any]) -> dict[str, str]:
    return {r.name: r.detail for r in results if not r.passed}


@pytest.fixture
def filled_book(trader: Any, brokers: Any, make_order: Any) -> dict[str, Any]:  # noqa: F811
    """An order routed to BRKA and filled 40 of 100 at 10, with the baseline from before."""
    baseline = book_snapshot()
    order = make_order()
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    execution_apply(session_key=KEY, report=report(placement.cl_ord_id, "0", "0"))
    execution_apply(
        session_key=KEY,
        report=report(
            placement.cl_ord_id, "F", "1", cum="40", avg="10", last_qty="40", last_px="10"
        ),
    )
    return {"baseline": baseline, "order": order, "placement": placement}


@pytest.mark.django_db
def test_a_consistent_book_passes_every_invariant(filled_book: dict[str, Any]) -> None:
    results = invariants_check(
        baseline=filled_book["baseline"], accepted_order_ids=[filled_book["order"].pk]
    )
    assert _failed(results) == {"outbox drained": "1 rows pending (by status: {'pending': 1})"}
    assert [r.name for r in results] == [
        "orders consistent",
        "fills neither lost nor doubled",
        "allocations sum to fills",
        "positions = baseline + allocations",
        "cash = baseline + allocation nets",
        "accepted orders exist",
        "queued routes executed",
        "outbox drained",
        "audit trail verifies",
    ]


@pytest.mark.django_db
def test_tampered_quantities_positions_and_cash_are_caught(filled_book: dict[str, Any]) -> None:
    order = filled_book["order"]
    Order.objects.filter(pk=order.pk).update(cum_qty=50, leaves_qty=50)
    Position.objects.filter(account_id=order.account_id).update(quantity=41)
    CashBalance.objects.filter(account_id=order.account_id).update(pending=0)
    failed = _failed(invariants_check(baseline=filled_book["baseline"], quiesced=False))
    assert set(failed) == {
        "orders consistent",
        "positions = baseline + allocations",
        "cash = baseline + allocation nets",
    }


@pytest.mark.django_db
def test_a_fills_notional_other_than_the_fills_sum_is_caught(filled_book: dict[str, Any]) -> None:
    # given the filled order's notional as its one fill left it (40 at 10), then a cent more
    order = filled_book["order"]
    assert Order.objects.get(pk=order.pk).filled_notional == 400
    Order.objects.filter(pk=order.pk).update(filled_notional="400.01")
    # then only the orders' invariant fails, naming the order's notional and its fills'
    (result,) = [
        r
        for r in invariants_check(baseline=filled_book["baseline"], quiesced=False)
        if not r.passed and r.name != "outbox drained"
    ]
    assert result.name == "orders consistent"
    assert result.examples == [
        f"order {order.pk}: notional 400.0100000000000000 != fills 400.0000000000000000"
    ]


@pytest.mark.django_db
def test_a_fill_the_venue_reported_but_the_book_missed_is_caught(
    filled_book: dict[str, Any],
) -> None:
    # the venue's next report says CumQty 80, but the fill of 20 in between never arrived
    placement = filled_book["placement"]
    execution_apply(
        session_key=KEY,
        report=report(
            placement.cl_ord_id, "F", "1", cum="80", avg="10", last_qty="20", last_px="10"
        ),
    )
    results = invariants_check(baseline=filled_book["baseline"], quiesced=False)
    assert _failed(results) == {"fills neither lost nor doubled": "1 placements/fills wrong"}


@pytest.mark.django_db
def test_missing_accepted_orders_and_lost_queued_routes_are_caught(
    filled_book: dict[str, Any],
    make_order: Any,  # noqa: F811
) -> None:
    staged = make_order()
    results = invariants_check(
        accepted_order_ids=[filled_book["order"].pk, 999_999],
        queued_order_ids=[staged.pk],
        quiesced=False,
        audit=False,
    )
    assert _failed(results) == {
        "accepted orders exist": "1 accepted orders missing",
        "queued routes executed": "1 routes lost",
    }
    assert Execution.objects.count() == 2
