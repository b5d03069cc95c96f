"""orders_route: many orders routed in one transaction, same rules and records as order_route."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from oms_site.errors import ConflictError, NotFound
from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.models import KillSwitch, Order, OutboxMessage, Placement
from orders.services.routing import orders_route, outbox_request

pytestmark = pytest.mark.django_db


def test_routes_each_order_with_its_placement_outbox_row_and_audit(trader, brokers, make_order):
    # given three approved orders
    orders = [make_order(quantity=Decimal(q)) for q in ("100", "200", "300")]
    # when the trader routes them to BRKB at once
    placements = orders_route(user=trader, order_ids=[o.pk for o in orders], broker_code="BRKB")
    # then each is pending new at version 2 with its own placement and NewOrderSingle
    assert [(p.order_id, p.quantity, p.broker.code) for p in placements] == [
        (orders[0].pk, Decimal("100"), "BRKB"),
        (orders[1].pk, Decimal("200"), "BRKB"),
        (orders[2].pk, Decimal("300"), "BRKB"),
    ]
    assert list(Order.objects.order_by("pk").values_list("status", "version", "leaves_qty")) == [
        (OrderStatus.PENDING_NEW, 2, Decimal("100")),
        (OrderStatus.PENDING_NEW, 2, Decimal("200")),
        (OrderStatus.PENDING_NEW, 2, Decimal("300")),
    ]
    rows = list(OutboxMessage.objects.order_by("pk"))
    assert [(r.placement_id, r.cl_ord_id, r.msg_type) for r in rows] == [
        (p.pk, p.cl_ord_id, "D") for p in placements
    ]
    request = outbox_request(rows[1].msg_type, rows[1].payload)
    assert (request.symbol, request.quantity, request.account) == ("ACME", Decimal("200"), "ACC-A")
    # and the audit trail has the route of every order and every placement
    assert AuditEvent.objects.filter(action="order.routed").count() == 3
    assert AuditEvent.objects.filter(action="placement.created").count() == 3


def test_query_count_does_not_grow_with_the_orders(trader, brokers, make_order):
    first, *few = [make_order().pk for _ in range(3)]
    many = [make_order().pk for _ in range(20)]
    orders_route(user=trader, order_ids=[first], broker_code="BRKA")  # the user's roles cached
    with CaptureQueriesContext(connection) as two:
        orders_route(user=trader, order_ids=few, broker_code="BRKA")
    with CaptureQueriesContext(connection) as twenty:
        orders_route(user=trader, order_ids=many, broker_code="BRKA")
    assert len(twenty.captured_queries) == len(two.captured_queries)


def test_best_execution_per_instrument_and_side(trader, brokers, make_order):
    orders = [make_order(), make_order(side="sell")]
    placements = orders_route(user=trader, order_ids=[o.pk for o in orders])
    # a buy takes the lowest ask, a sell the highest bid (BRKA and BRKB tie: rank)
    assert [p.broker.code for p in placements] == ["BRKA", "BRKA"]
    assert placements[0].route_reason.startswith("best execution: buy at BRKA ask 100.04")
    assert placements[1].route_reason.startswith("best execution: sell at BRKA bid 99.96")


def test_one_order_not_approved_routes_none(trader, brokers, make_order):
    ok = make_order()
    held = make_order(status=OrderStatus.PENDING_COMPLIANCE)
    with pytest.raises(ConflictError) as err:
        orders_route(user=trader, order_ids=[ok.pk, held.pk], broker_code="BRKA")
    assert err.value.code == "not_routable"
    assert (Placement.objects.count(), OutboxMessage.objects.count()) == (0, 0)
    assert Order.objects.get(pk=ok.pk).status == OrderStatus.APPROVED


def test_invisible_order_and_kill_switch_route_none(trader, brokers, make_order, account):
    order = make_order()
    with pytest.raises(NotFound):
        orders_route(user=trader, order_ids=[order.pk, 999_999], broker_code="BRKA")
    KillSwitch.objects.create(scope="account", target=account.code, engaged_by=trader)
    with pytest.raises(ConflictError) as err:
        orders_route(user=trader, order_ids=[order.pk], broker_code="BRKA")
    assert err.value.code == "kill_switch_active"
    assert (Placement.objects.count(), Order.objects.get(pk=order.pk).status) == (
        0,
        OrderStatus.APPROVED,
    )
