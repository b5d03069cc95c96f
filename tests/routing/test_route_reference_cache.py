"""Routing reads brokers, FIX sessions and kill switches from the reference-data cache, exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from oms_site import refcache
from oms_site.errors import ConflictError
from orders.enums import OrderStatus
from orders.models import (
    Broker,
    FixSession,
    KillSwitch,
    Order,
    OutboxMessage,
    Placement,
    ReferencePrice,
)
from orders.services.routing import order_route, orders_route

pytestmark = pytest.mark.django_db

REFERENCE_TABLES = (
    "orders_broker",
    "orders_fixsession",
    "orders_killswitch",
    "allocations_account",
    "allocations_desk",
    "orders_instrument",
    "orders_referenceprice",
)


def _bumped(change) -> bool:
    before = refcache.refdata_version()
    change()
    return refcache.refdata_version() != before


def _nothing_routed(orders: list[Order]) -> None:
    assert (Placement.objects.count(), OutboxMessage.objects.count()) == (1, 1)
    assert [Order.objects.get(pk=o.pk).status for o in orders] == [OrderStatus.APPROVED] * len(
        orders
    )


def test_a_warm_route_reads_no_reference_row(trader, brokers, make_order):
    # given a first route (the cache is filled)
    first, *rest = [make_order().pk for _ in range(5)]
    orders_route(user=trader, order_ids=[first], broker_code="BRKA")
    # when a list is routed by best execution (instruments and sides each choose a broker)
    sells = [make_order(side="sell").pk for _ in range(2)]
    with CaptureQueriesContext(connection) as queries:
        placements = orders_route(user=trader, order_ids=rest + sells)
    # then no statement reads brokers, sessions, kill switches, accounts or instruments (the
    # order visibility check reads the user's accounts: it is not reference data of the cache)
    sql = [q["sql"] for q in queries.captured_queries]
    visibility, *others = sql
    assert '"orders_order"."account_id" IN (SELECT' in visibility
    assert [s for s in others if any(t in s for t in REFERENCE_TABLES)] == []
    assert sum("oms_refdata_version" in s for s in sql) == 1
    assert [p.broker.code for p in placements] == ["BRKA"] * 6
    assert [p.fix_session_id for p in placements] == [
        FixSession.objects.get(target_comp_id="BRKA").pk
    ] * 6


def test_a_broker_deactivated_after_a_route_is_refused_at_once(trader, brokers, make_order):
    order_route(user=trader, order_id=make_order().pk, broker_code="BRKA")
    order = make_order()
    # when BRKA is deactivated after the cache was filled
    Broker.objects.filter(code="BRKA").update(active=False)
    # then routing to it is refused and nothing is written
    with pytest.raises(ConflictError) as refused:
        order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    assert refused.value.code == "broker_inactive"
    _nothing_routed([order])
    # and best execution picks the best of the others (BRKC's ask is below BRKB's)
    placement = orders_route(user=trader, order_ids=[order.pk])[0]
    assert placement.broker.code == "BRKC"
    assert placement.route_reason.startswith("best execution: buy at BRKC ask 100.06 (vs BRKB")


def test_a_session_disabled_after_a_route_is_refused_at_once(trader, brokers, make_order):
    order_route(user=trader, order_id=make_order().pk, broker_code="BRKA")
    order = make_order()
    FixSession.objects.filter(target_comp_id="BRKA").update(enabled=False)
    with pytest.raises(ConflictError) as refused:
        orders_route(user=trader, order_ids=[order.pk], broker_code="BRKA")
    assert refused.value.code == "no_fix_session"
    _nothing_routed([order])


def test_a_kill_switch_engaged_after_a_route_stops_the_next_one(
    trader, pm, desk, brokers, make_order
):
    order_route(user=trader, order_id=make_order().pk, broker_code="BRKA")
    orders = [make_order(), make_order()]
    # when a desk switch is engaged after the cache was filled (it bumps the version)
    KillSwitch.objects.create(scope="desk", target=desk.code, reason="x", engaged_by=pm)
    # then the next route is refused, naming the switch, and nothing is written
    with pytest.raises(ConflictError) as refused:
        orders_route(user=trader, order_ids=[o.pk for o in orders], broker_code="BRKA")
    assert refused.value.code == "kill_switch_active"
    assert refused.value.errors == {"kill_switch": [f"desk:{desk.code}"]}
    _nothing_routed(orders)


def test_another_desks_kill_switch_does_not_stop_a_route(
    trader, pm, other_desk, brokers, make_order
):
    KillSwitch.objects.create(scope="desk", target=other_desk.code, reason="x", engaged_by=pm)
    KillSwitch.objects.create(scope="account", target="OTHER", reason="x", engaged_by=pm)
    placement = order_route(user=trader, order_id=make_order().pk, broker_code="BRKC")
    assert placement.broker.code == "BRKC"


def test_session_live_state_does_not_bump_the_version_but_configuration_does(brokers):
    session = FixSession.objects.get(target_comp_id="BRKA")
    live = FixSession.objects.filter(pk=session.pk)
    # the gateway's status writer, every few seconds: no bump (caches stay warm)
    assert not _bumped(
        lambda: live.update(
            logged_on=True, next_sender_seq=7, next_target_seq=9, status_at=timezone.now()
        )
    )
    # configuration: a bump each
    assert _bumped(lambda: live.update(enabled=False))
    assert _bumped(lambda: live.update(port=9879))
    assert _bumped(lambda: live.update(heartbeat_seconds=5, logged_on=False))
    assert _bumped(lambda: Broker.objects.filter(code="BRKB").update(rank=Decimal(7)))
    assert _bumped(
        lambda: FixSession.objects.create(
            broker=brokers["BRKB"], port=9000, sender_comp_id="OMS2", target_comp_id="BRKB"
        )
    )
    assert _bumped(lambda: FixSession.objects.filter(sender_comp_id="OMS2").delete())


def test_a_price_moved_after_a_route_is_used_by_the_next_one(
    trader, instrument, brokers, make_order
):
    order_route(user=trader, order_id=make_order().pk)
    order = make_order()
    # when the market moves after the cache was filled
    ReferencePrice.objects.filter(instrument=instrument).update(
        bid=Decimal("109.95"), ask=Decimal("110.05"), last=Decimal("110")
    )
    # then best execution quotes the new price
    placement = order_route(user=trader, order_id=order.pk)
    assert placement.route_reason == (
        "best execution: buy at BRKA ask 110.05 (vs BRKB 110.1, BRKC 110.07); ties by broker rank"
    )
    assert placement.order.instrument.price.last == Decimal("110")
