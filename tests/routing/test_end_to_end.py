"""End to end over real TCP on 127.0.0.1: services → outbox → gateway → simulator → executions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orders.enums import OrderStatus
from orders.models import Execution, FixMessage, FixSession, Order, OutboxMessage, Placement
from orders.services.routing import order_cancel_request, order_replace_request, order_route
from tests.routing.conftest import wait_until

pytestmark = [
    pytest.mark.fix,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]
SIM_KEY = "FIX.4.4:BRKA->OMS"


def status_of(order_id):
    return Order.objects.get(pk=order_id).status


def test_route_ack_partial_fills_filled(make_fix_env, trader, make_order):
    # given a venue filling in slices of 30
    env = make_fix_env(slice_qty=Decimal(30), slice_interval_ms=30)
    order = make_order(quantity=Decimal("100"))
    # when the trader routes it
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    # then it is acknowledged, partially filled and filled with the right totals
    wait_until(lambda: status_of(order.pk) == OrderStatus.FILLED)
    order.refresh_from_db()
    assert (order.cum_qty, order.avg_px, order.leaves_qty) == (
        Decimal("100"),
        Decimal("100.04"),
        Decimal("0"),
    )
    fills = list(
        Execution.objects.filter(placement=placement, last_qty__gt=0)
        .order_by("pk")
        .values_list("last_qty", flat=True)
    )
    assert fills == [Decimal(30), Decimal(30), Decimal(30), Decimal(10)]
    types = list(
        Execution.objects.filter(placement=placement)
        .order_by("pk")
        .values_list("exec_type", flat=True)
    )
    assert types[0] == "new"
    # and the outbox row is sent, the NewOrderSingle and reports are stored
    row = OutboxMessage.objects.get(placement=placement)
    assert (row.status, row.sent_at is not None) == ("sent", True)
    assert (
        FixMessage.objects.filter(
            direction="out", msg_type="D", cl_ord_id=placement.cl_ord_id
        ).count()
        == 1
    )
    assert FixMessage.objects.filter(direction="in", msg_type="8").count() == 5
    # and the session state is visible on the FixSession row
    wait_until(lambda: FixSession.objects.get(target_comp_id="BRKA").next_sender_seq > 2)
    assert FixSession.objects.get(target_comp_id="BRKA").logged_on is True
    assert env.simulator.order(SIM_KEY, placement.cl_ord_id).cl_ord_ids == [placement.cl_ord_id]


def test_cancel_of_a_resting_order(make_fix_env, trader, make_order):
    make_fix_env()
    order = make_order(order_type="limit", limit_price=Decimal("90"))
    order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    wait_until(lambda: status_of(order.pk) == OrderStatus.WORKING)
    order_cancel_request(user=trader, order_id=order.pk)
    wait_until(lambda: status_of(order.pk) == OrderStatus.CANCELED)
    order.refresh_from_db()
    assert (order.cum_qty, order.leaves_qty) == (Decimal(0), Decimal(0))


def test_replace_then_fill_at_the_new_limit(make_fix_env, trader, make_order):
    make_fix_env()
    order = make_order(order_type="limit", limit_price=Decimal("90"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    wait_until(lambda: status_of(order.pk) == OrderStatus.WORKING)
    # when the limit is raised above the ask (100.04) and the quantity changed
    order_replace_request(
        user=trader, order_id=order.pk, quantity=Decimal("120"), limit_price=Decimal("101")
    )
    # then the replace is confirmed and the order fills at the ask under the new ClOrdID
    wait_until(lambda: status_of(order.pk) == OrderStatus.FILLED)
    order.refresh_from_db()
    assert (order.quantity, order.limit_price, order.cum_qty, order.avg_px) == (
        Decimal("120"),
        Decimal("101"),
        Decimal("120"),
        Decimal("100.04"),
    )
    placement.refresh_from_db()
    assert placement.cl_ord_id.startswith("R")


def test_venue_reject(make_fix_env, trader, make_order, instrument):
    env = make_fix_env()
    env.prices.pop("ACME")  # the venue does not know the symbol
    order = make_order()
    order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    wait_until(lambda: status_of(order.pk) == OrderStatus.REJECTED)
    e = Execution.objects.get(order=order)
    assert (e.exec_type, e.text) == ("rejected", "unknown symbol")


def test_cancel_reject_when_the_order_filled_meanwhile(make_fix_env, trader, make_order):
    # given a resting limit order at 90, working
    env = make_fix_env()
    order = make_order(order_type="limit", limit_price=Decimal("90"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    wait_until(lambda: status_of(order.pk) == OrderStatus.WORKING)
    # and the gateway away while the market drops and the venue fills the order
    env.runner.stop()
    env.prices["ACME"] = Decimal("80")
    wait_until(lambda: env.simulator.order(SIM_KEY, placement.cl_ord_id).status == "2")
    # when the trader, still seeing it working, asks to cancel, and the gateway comes back
    order_cancel_request(user=trader, order_id=order.pk)
    env.restart_gateway()
    # then the venue answers "too late" (35=9) and the fill (resent) completes the order
    wait_until(lambda: FixMessage.objects.filter(direction="in", msg_type="9").exists())
    wait_until(lambda: status_of(order.pk) == OrderStatus.FILLED)
    order.refresh_from_db()
    assert (order.cum_qty, order.leaves_qty) == (Decimal("100"), Decimal("0"))
    assert Execution.objects.filter(order=order, last_qty__gt=0).count() == 1


def test_fill_while_cancel_pending_counts(make_fix_env, trader, make_order):
    # given a venue that answers slowly (fills still flow before our cancel is handled); the
    # order takes 100 slices (about 2 s) to fill, so a loaded machine still sends the cancel
    # while it is working (with 10 slices it was sometimes filled before the cancel was sent)
    env = make_fix_env(slice_qty=Decimal(10), slice_interval_ms=20, latency_ms=150)
    order = make_order(quantity=Decimal("1000"))
    order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    wait_until(lambda: Order.objects.get(pk=order.pk).cum_qty >= 10)
    order_cancel_request(user=trader, order_id=order.pk)
    wait_until(lambda: status_of(order.pk) in (OrderStatus.CANCELED, OrderStatus.FILLED))
    order.refresh_from_db()
    placement = Placement.objects.get(order=order)
    sim = env.simulator.order(SIM_KEY, placement.orig_cl_ord_id or placement.cl_ord_id)
    # then every fill the venue made is counted, including those while the cancel was pending
    assert order.cum_qty == sim.cum_qty
    assert order.cum_qty > Decimal(10)
