"""Routing services: placements, the outbox, best execution, cancel/replace requests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from oms_site.errors import ConflictError, NotPermitted
from oms_site.models import AuditEvent
from orders.enums import OrderStatus, OutboxStatus
from orders.models import KillSwitch, Order, OutboxMessage, Placement
from orders.services.routing import (
    order_cancel_request,
    order_replace_request,
    order_route,
    outbox_request,
    route_choose,
)

pytestmark = pytest.mark.django_db


def test_route_writes_placement_outbox_row_and_pending_new(trader, brokers, make_order):
    # given an approved order
    order = make_order(quantity=Decimal("250"), order_type="limit", limit_price=Decimal("101"))
    # when the trader routes it to BRKB
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKB")
    # then the order is pending new, one version on
    order.refresh_from_db()
    assert (order.status, order.version) == (OrderStatus.PENDING_NEW, 2)
    # and the placement and its outbox row carry the NewOrderSingle
    assert (placement.broker.code, placement.quantity, placement.status) == (
        "BRKB",
        Decimal("250"),
        "pending_new",
    )
    assert len(placement.cl_ord_id) == 20
    (row,) = OutboxMessage.objects.all()
    assert (row.msg_type, row.cl_ord_id, row.status, row.fix_session.target_comp_id) == (
        "D",
        placement.cl_ord_id,
        OutboxStatus.PENDING,
        "BRKB",
    )
    assert row.payload == {
        "cl_ord_id": placement.cl_ord_id,
        "symbol": "ACME",
        "side": "buy",
        "quantity": "250",
        "order_type": "limit",
        "limit_price": "101",
        "stop_price": None,
        "time_in_force": "day",
        "expire_date": None,
        "account": "ACC-A",
    }
    request = outbox_request(row.msg_type, row.payload)
    assert (request.quantity, request.limit_price) == (Decimal("250"), Decimal("101"))
    # and the route and its reason are audited
    event = AuditEvent.objects.get(action="order.routed")
    assert (event.object_id, event.meta["broker"], event.meta["reason"]) == (
        str(order.pk),
        "BRKB",
        "chosen by trader: BRKB",
    )


def test_best_execution_buy_takes_lowest_ask(trader, brokers, make_order, instrument):
    # given quotes around 100: BRKA 99.96/100.04, BRKB 99.96/100.10, BRKC 99.86/100.06
    choice = route_choose(instrument=instrument, side="buy", broker_code=None)
    # then a buy goes to the lowest ask
    assert choice.broker.code == "BRKA"
    assert choice.quotes == {
        "BRKA": {"bid": "99.96", "ask": "100.04"},
        "BRKB": {"bid": "99.96", "ask": "100.1"},
        "BRKC": {"bid": "99.86", "ask": "100.06"},
    }
    assert choice.reason == (
        "best execution: buy at BRKA ask 100.04 (vs BRKB 100.1, BRKC 100.06); ties by broker rank"
    )


def test_best_execution_sell_tie_goes_to_lower_rank(trader, brokers, instrument):
    # given BRKA and BRKB both bid 99.96, and BRKB ranked before BRKA
    brokers["BRKB"].rank = 0
    brokers["BRKB"].save()
    # when a sell is routed by best execution
    choice = route_choose(instrument=instrument, side="sell", broker_code=None)
    # then the tie goes to the lower rank
    assert choice.broker.code == "BRKB"


def test_route_by_best_execution_records_reason(trader, brokers, make_order):
    order = make_order()
    placement = order_route(user=trader, order_id=order.pk, broker_code=None)
    assert placement.broker.code == "BRKA"
    assert placement.route_reason.startswith("best execution: buy at BRKA ask 100.04")


def test_only_traders_route(pm, brokers, make_order):
    order = make_order()
    with pytest.raises(NotPermitted):
        order_route(user=pm, order_id=order.pk, broker_code="BRKA")
    assert OutboxMessage.objects.count() == 0


def test_route_refuses_an_order_that_is_not_approved(trader, brokers, make_order):
    order = make_order(status=OrderStatus.AWAITING_OVERRIDE)
    with pytest.raises(ConflictError) as exc:
        order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    assert exc.value.code == "not_routable"
    assert Placement.objects.count() == 0


def test_route_twice_is_refused_and_sends_once(trader, brokers, make_order):
    order = make_order()
    order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    with pytest.raises(ConflictError):
        order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    assert OutboxMessage.objects.count() == 1


def test_route_refused_under_kill_switch(trader, brokers, make_order, account):
    order = make_order()
    KillSwitch.objects.create(scope="desk", target="EQ", engaged_by=trader)
    with pytest.raises(ConflictError) as exc:
        order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    assert (exc.value.code, exc.value.errors) == (
        "kill_switch_active",
        {"kill_switch": ["desk:EQ"]},
    )


def test_unknown_broker_is_a_field_error(trader, brokers, make_order):
    order = make_order()
    with pytest.raises(Exception) as exc:
        order_route(user=trader, order_id=order.pk, broker_code="NOPE")
    assert exc.value.errors == {"broker": ["unknown broker 'NOPE'"]}


def _working(trader, make_order, **kw):
    order = make_order(**kw)
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.WORKING)
    Placement.objects.filter(pk=placement.pk).update(status="working", broker_order_id="B1")
    return order, placement


def test_cancel_request_writes_35F_with_orig_cl_ord_id(trader, brokers, make_order):
    order, placement = _working(trader, make_order)
    result = order_cancel_request(user=trader, order_id=order.pk)
    assert result.status == OrderStatus.PENDING_CANCEL
    row = OutboxMessage.objects.get(msg_type="F")
    assert row.cl_ord_id.startswith("C") and len(row.cl_ord_id) == 20
    assert (row.payload["orig_cl_ord_id"], row.payload["order_id"], row.payload["quantity"]) == (
        placement.cl_ord_id,
        "B1",
        "100",
    )
    # a second cancel while the first is in flight is refused
    with pytest.raises(ConflictError) as exc:
        order_cancel_request(user=trader, order_id=order.pk)
    assert exc.value.code == "request_pending"


def test_replace_request_writes_35G_with_new_terms(trader, brokers, make_order):
    order, placement = _working(trader, make_order, order_type="limit", limit_price=Decimal("99"))
    result = order_replace_request(
        user=trader, order_id=order.pk, quantity=Decimal("150"), limit_price=Decimal("99.5")
    )
    assert result.status == OrderStatus.PENDING_REPLACE
    row = OutboxMessage.objects.get(msg_type="G")
    assert (
        row.payload["orig_cl_ord_id"],
        row.payload["quantity"],
        row.payload["limit_price"],
        row.payload["order_type"],
    ) == (placement.cl_ord_id, "150", "99.5", "limit")
    # the order's terms change only when the broker confirms
    order.refresh_from_db()
    assert (order.quantity, order.limit_price) == (Decimal("100"), Decimal("99"))


def test_replace_below_filled_quantity_is_refused(trader, brokers, make_order):
    order, _ = _working(trader, make_order)
    Order.objects.filter(pk=order.pk).update(cum_qty=Decimal("60"), status="partially_filled")
    with pytest.raises(Exception) as exc:
        order_replace_request(user=trader, order_id=order.pk, quantity=Decimal("50"))
    assert exc.value.errors == {"quantity": ["must be above the filled quantity 60"]}


def test_cancel_of_a_filled_order_is_refused(trader, brokers, make_order):
    order, _ = _working(trader, make_order)
    Order.objects.filter(pk=order.pk).update(status="filled", cum_qty=Decimal("100"))
    with pytest.raises(ConflictError) as exc:
        order_cancel_request(user=trader, order_id=order.pk)
    assert exc.value.code == "invalid_transition"
