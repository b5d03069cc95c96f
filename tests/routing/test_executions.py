"""execution_apply and friends, fed with reports encoded and parsed as on the wire (no sockets)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from allocations.models import Allocation, Position
from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.fix.messages import CancelReject, encode_message, parse_message
from orders.models import Block, Execution, Order, OutboxMessage, Placement
from orders.services.executions import cancel_reject_apply, execution_apply
from orders.services.routing import (
    block_route,
    order_cancel_request,
    order_replace_request,
    order_route,
)
from tests.routing.conftest import acknowledged_block, report

pytestmark = pytest.mark.django_db
KEY = "FIX.4.4:OMS->BRKA"


def apply(r):
    return execution_apply(session_key=KEY, report=r)


@pytest.fixture
def routed(trader, brokers, make_order):
    order = make_order(quantity=Decimal("100"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    return order, placement


def state(order):
    order.refresh_from_db()
    return order.status, order.cum_qty, order.avg_px, order.leaves_qty


def test_ack_partial_fills_and_fill(routed):
    order, p = routed
    c = p.cl_ord_id
    apply(report(c, "0", "0"))
    assert state(order)[0] == OrderStatus.WORKING
    apply(report(c, "F", "1", cum="40", avg="100", last_qty="40", last_px="100"))
    assert state(order) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal("40"),
        Decimal("100"),
        Decimal("60"),
    )
    apply(report(c, "F", "2", cum="100", avg="100.6", last_qty="60", last_px="101"))
    assert state(order) == (OrderStatus.FILLED, Decimal("100"), Decimal("100.6"), Decimal("0"))
    p.refresh_from_db()
    assert (p.status, p.cum_qty, p.avg_px, p.broker_order_id) == (
        "filled",
        Decimal("100"),
        Decimal("100.6"),
        "BRK-ORD-1",
    )
    # and the fills were allocated to the account and its position
    assert sorted(Allocation.objects.values_list("quantity", flat=True)) == [
        Decimal("40"),
        Decimal("60"),
    ]
    assert Position.objects.get(account=order.account).quantity == Decimal("100")
    assert list(
        AuditEvent.objects.filter(object_type="order", object_id=str(order.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["order.routed", "order.acknowledged", "order.partially_filled", "order.filled"]


def test_duplicate_and_possdup_reports_count_once(routed):
    order, p = routed
    fill = report(
        p.cl_ord_id, "F", "1", exec_id="E1", cum="30", avg="100", last_qty="30", last_px="100"
    )
    first = apply(fill)
    # when the same ExecID arrives again, and again as a PossDup resend
    again = apply(fill)
    resent = apply(
        report(
            p.cl_ord_id,
            "F",
            "1",
            exec_id="E1",
            cum="30",
            avg="100",
            last_qty="30",
            last_px="100",
            poss_dup=True,
        )
    )
    # then it is booked once
    assert first is not None and (again, resent) == (None, None)
    assert Execution.objects.filter(exec_id="E1").count() == 1
    assert state(order)[1] == Decimal("30")
    assert Allocation.objects.count() == 1


def test_fill_before_ack_and_late_ack_does_not_regress(routed):
    order, p = routed
    # a fill arrives before the acknowledgement
    apply(report(p.cl_ord_id, "F", "1", cum="50", avg="99", last_qty="50", last_px="99"))
    assert state(order)[:2] == (OrderStatus.PARTIALLY_FILLED, Decimal("50"))
    # then the late ack changes nothing but is stored
    assert apply(report(p.cl_ord_id, "0", "0")) is not None
    assert state(order)[:2] == (OrderStatus.PARTIALLY_FILLED, Decimal("50"))
    p.refresh_from_db()
    assert p.status == "partially_filled"


def test_unknown_cl_ord_id_is_stored_flagged_and_audited(routed):
    order, _ = routed
    e = apply(report("NOSUCHID", "F", "1", cum="10", avg="5", last_qty="10", last_px="5"))
    assert (e.unknown_order, e.placement_id, e.last_qty) == (True, None, Decimal("10"))
    assert AuditEvent.objects.filter(action="execution.unknown_order").count() == 1
    assert state(order)[1] == Decimal("0")


def test_cancel_with_a_fill_while_pending_cancel(trader, routed):
    order, p = routed
    apply(report(p.cl_ord_id, "0", "0"))
    order_cancel_request(user=trader, order_id=order.pk)
    cancel_id = OutboxMessage.objects.get(msg_type="F").cl_ord_id
    # a fill arrives while the cancel is pending: it counts, the order stays pending cancel
    apply(report(p.cl_ord_id, "F", "1", cum="20", avg="100", last_qty="20", last_px="100"))
    assert state(order)[:2] == (OrderStatus.PENDING_CANCEL, Decimal("20"))
    apply(report(cancel_id, "6", "6", orig=p.cl_ord_id, cum="20", avg="100"))
    apply(report(cancel_id, "4", "4", orig=p.cl_ord_id, cum="20", avg="100"))
    assert state(order) == (OrderStatus.CANCELED, Decimal("20"), Decimal("100"), Decimal("0"))
    p.refresh_from_db()
    assert (p.status, p.cl_ord_id, p.orig_cl_ord_id) == ("canceled", cancel_id, p.orig_cl_ord_id)


def test_cancel_reject_returns_to_prior_status(trader, routed):
    order, p = routed
    apply(report(p.cl_ord_id, "0", "0"))
    apply(report(p.cl_ord_id, "F", "1", cum="10", avg="100", last_qty="10", last_px="100"))
    order_cancel_request(user=trader, order_id=order.pk)
    cancel_id = OutboxMessage.objects.get(msg_type="F").cl_ord_id
    raw = encode_message(
        begin_string="FIX.4.4",
        msg_type="9",
        sender_comp_id="BRKA",
        target_comp_id="OMS",
        msg_seq_num=7,
        fields=[
            (37, "B1"),
            (11, cancel_id),
            (41, p.cl_ord_id),
            (39, "1"),
            (434, "1"),
            (102, "0"),
            (58, "too late"),
        ],
    )
    reject = parse_message(raw)
    assert isinstance(reject, CancelReject)
    cancel_reject_apply(session_key=KEY, reject=reject)
    assert state(order)[0] == OrderStatus.PARTIALLY_FILLED
    # a resent copy changes nothing
    cancel_reject_apply(session_key=KEY, reject=reject)
    assert AuditEvent.objects.filter(action="order.cancel_rejected").count() == 1


def test_replace_confirmed_updates_terms_and_cl_ord_id(trader, brokers, make_order):
    order = make_order(order_type="limit", limit_price=Decimal("99"))
    p = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    apply(report(p.cl_ord_id, "0", "0"))
    order_replace_request(
        user=trader, order_id=order.pk, quantity=Decimal("150"), limit_price=Decimal("99.5")
    )
    new_id = OutboxMessage.objects.get(msg_type="G").cl_ord_id
    apply(report(new_id, "E", "E", orig=p.cl_ord_id))
    assert state(order)[0] == OrderStatus.PENDING_REPLACE
    apply(report(new_id, "5", "0", orig=p.cl_ord_id, qty="150"))
    order.refresh_from_db()
    assert (order.status, order.quantity, order.limit_price, order.leaves_qty) == (
        OrderStatus.WORKING,
        Decimal("150"),
        Decimal("99.5"),
        Decimal("150"),
    )
    p.refresh_from_db()
    assert (p.cl_ord_id, p.orig_cl_ord_id, p.quantity) == (new_id, p.orig_cl_ord_id, Decimal("150"))
    # fills under the new ClOrdID find the placement
    apply(
        report(new_id, "F", "2", qty="150", cum="150", avg="99.5", last_qty="150", last_px="99.5")
    )
    assert state(order)[:2] == (OrderStatus.FILLED, Decimal("150"))


def test_venue_reject_rejects_the_order(routed):
    order, p = routed
    apply(report(p.cl_ord_id, "8", "8", text="unknown symbol"))
    assert state(order) == (OrderStatus.REJECTED, Decimal("0"), Decimal("0"), Decimal("0"))
    assert Placement.objects.get(pk=p.pk).status == "rejected"


def test_expired_and_restated(routed):
    order, p = routed
    apply(report(p.cl_ord_id, "0", "0"))
    apply(report(p.cl_ord_id, "D", "0", text="restated"))
    assert state(order)[0] == OrderStatus.WORKING
    apply(report(p.cl_ord_id, "C", "C"))
    assert state(order)[0] == OrderStatus.EXPIRED


def test_block_fills_are_allocated_to_its_orders(trader, brokers, make_order, pm):
    a = make_order(quantity=Decimal("60"))
    b = make_order(quantity=Decimal("40"))
    block = Block.objects.create(
        instrument=a.instrument,
        side="buy",
        order_type="market",
        quantity=Decimal("100"),
        created_by=trader,
    )
    Order.objects.filter(pk__in=[a.pk, b.pk]).update(block=block)
    p = block_route(user=trader, block_id=block.pk, broker_code="BRKA")
    assert set(Order.objects.filter(block=block).values_list("status", flat=True)) == {
        "pending_new"
    }
    apply(report(p.cl_ord_id, "0", "0"))
    apply(report(p.cl_ord_id, "F", "1", cum="50", avg="100", last_qty="50", last_px="100"))
    assert (state(a)[:2], state(b)[:2]) == (
        (OrderStatus.PARTIALLY_FILLED, Decimal("30")),
        (OrderStatus.PARTIALLY_FILLED, Decimal("20")),
    )
    apply(report(p.cl_ord_id, "F", "2", cum="100", avg="101", last_qty="50", last_px="102"))
    assert (state(a), state(b)) == (
        (OrderStatus.FILLED, Decimal("60"), Decimal("101"), Decimal("0")),
        (OrderStatus.FILLED, Decimal("40"), Decimal("101"), Decimal("0")),
    )
    block.refresh_from_db()
    assert (block.status, block.cum_qty, block.avg_px) == ("filled", Decimal("100"), Decimal("101"))


def _block_of(trader, make_order, quantities):
    return acknowledged_block(trader, make_order, quantities, session_key=KEY)


def _statements(monkeypatch):
    """Count every statement sent, Django's cursors and the services' raw psycopg ones alike."""
    import psycopg

    sent = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(query)
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def test_a_block_fill_costs_the_same_statements_for_3_or_12_orders(
    trader, brokers, make_order, monkeypatch
):
    # given two acknowledged blocks, of 3 and of 12 orders, each partly filled once
    _, _, small = _block_of(trader, make_order, [30, 30, 40])
    _, _, big = _block_of(trader, make_order, [10] * 12)
    for p in (small, big):
        apply(report(p.cl_ord_id, "F", "1", cum="20", avg="100", last_qty="20", last_px="100"))
    sent = _statements(monkeypatch)
    # when each gets a second fill at a new price (every order re-priced and topped up)
    apply(report(small.cl_ord_id, "F", "1", cum="60", avg="101", last_qty="40", last_px="101.5"))
    for_small = len(sent)
    sent.clear()
    apply(report(big.cl_ord_id, "F", "1", cum="60", avg="101", last_qty="40", last_px="101.5"))
    # then the number of statements does not depend on the number of orders (set-based SQL),
    # and stays well under the 29 the row-by-row version sent
    assert len(sent) == for_small
    assert for_small <= 18


def test_block_fill_events_carry_each_orders_stored_state(
    trader, brokers, make_order, monkeypatch, django_capture_on_commit_callbacks
):
    # given an acknowledged block of two orders
    _, orders, p = _block_of(trader, make_order, [60, 40])
    sent = []
    monkeypatch.setattr("oms_site.realtime._send_many", lambda items: sent.extend(items))
    # when a fill is applied and committed
    with django_capture_on_commit_callbacks(execute=True):
        apply(report(p.cl_ord_id, "F", "1", cum="50", avg="100", last_qty="50", last_px="100.3"))
    # then each order's execution.created event went out once per group, in one hop, with
    # the order exactly as stored (version, cumulative quantity, average price, status)
    events = {}
    for _group, message in sent:
        if message["event"]["type"] == "execution.created":
            events[message["event"]["order_id"]] = message["event"]
    assert set(events) == {o.pk for o in orders}
    for order in orders:
        order.refresh_from_db()
        event = events[order.pk]
        assert event["version"] == order.version
        data = event["data"]["order"]
        assert (data["cum_qty"], data["avg_px"], data["leaves_qty"], data["status"]) == (
            str(order.cum_qty),
            str(order.avg_px),
            str(order.leaves_qty),
            OrderStatus.PARTIALLY_FILLED,
        )
        assert event["data"]["execution"]["last_qty"] == "50"
    assert [o.cum_qty for o in orders] == [Decimal("30"), Decimal("20")]


def test_unknown_cl_ord_id_resent_is_stored_once(routed):
    # given a report naming no known ClOrdID, already stored
    first = apply(report("NOSUCHID", "F", "1", exec_id="U1", last_qty="10", last_px="5"))
    # when the broker resends it
    again = apply(report("NOSUCHID", "F", "1", exec_id="U1", last_qty="10", last_px="5"))
    # then nothing more is stored or audited
    assert first is not None and again is None
    assert Execution.objects.filter(exec_id="U1").count() == 1
    assert AuditEvent.objects.filter(action="execution.unknown_order").count() == 1


def test_block_fill_event_order_data_is_exactly_json_safe_of_the_order_payload(
    trader, brokers, make_order
):
    # given a block of a limit order and a market order, filled once (versions, prices and
    # timestamps moved), and loaded as the fill loads them
    from oms_site.audit import json_safe
    from orders.events import order_payload
    from orders.services.executions import _lock, _order_json

    _, orders, p = _block_of(trader, make_order, [60, 40])
    Order.objects.filter(pk=orders[0].pk).update(order_type="limit", limit_price=Decimal("101.5"))
    apply(report(p.cl_ord_id, "F", "1", cum="50", avg="100", last_qty="50", last_px="100.3"))
    ctx = _lock([p.cl_ord_id])
    assert ctx is not None and len(ctx.orders) == 2
    for order in ctx.orders:
        # when its event data is written directly
        data = _order_json(order)
        # then it is exactly what json_safe makes of the order's payload, key for key
        assert data == json_safe(order_payload(order))
        assert list(data) == list(order_payload(order))
    limit = next(o for o in ctx.orders if o.pk == orders[0].pk)
    assert _order_json(limit)["limit_price"] == "101.50000000"
    assert _order_json(limit)["stop_price"] is None
    creator = Order.objects.select_related("created_by").get(pk=limit.pk).created_by
    assert creator is not None and _order_json(limit)["created_by"] == creator.get_username()


def test_block_fill_messages_are_exactly_what_publish_many_on_commit_queued(
    trader, brokers, make_order, monkeypatch
):
    # given a block of a limit order and two market orders, filled once (versions, prices and
    # timestamps moved), loaded as the fill loads them, and the shared execution data
    from oms_site import realtime
    from oms_site.audit import json_safe
    from orders.services import executions

    _, orders, p = _block_of(trader, make_order, [60, 40, 20])
    Order.objects.filter(pk=orders[0].pk).update(order_type="limit", limit_price=Decimal("101.5"))
    apply(report(p.cl_ord_id, "F", "1", cum="60", avg="100", last_qty="60", last_px="100.3"))
    ctx = executions._lock([p.cl_ord_id])
    assert ctx is not None and len(ctx.orders) == 3
    execution_data = json_safe({"id": 5, "last_qty": Decimal("60"), "exec_id": "E1"})
    queued: list = []
    monkeypatch.setattr(realtime, "_send_on_commit", queued.append)
    # when the one-pass messages are built, and the events as publish_many_on_commit took them
    built = executions._fill_messages(ctx.orders, execution_data)
    realtime.publish_many_on_commit(
        data_json_safe=True,
        events=[
            {
                "event_type": "execution.created",
                "order_id": order.id,
                "version": order.version,
                "data": {"execution": execution_data, "order": executions._order_json(order)},
                "groups": executions._groups(order),
            }
            for order in ctx.orders
        ],
    )
    # then the pairs are equal, key order included (the bytes sent are the same), three
    # groups per order in groups_for_account's order
    (before,) = queued
    assert built == before
    assert [repr(pair) for pair in built] == [repr(pair) for pair in before]
    assert [group for group, _ in built] == [
        g for o in ctx.orders for g in (f"acct-{o.account_id}", "firm", f"desk-{o.account.desk_id}")
    ]
    limit = built[0][1]["event"]["data"]["order"]
    assert (limit["id"], limit["limit_price"], limit["cum_qty"]) == (
        orders[0].pk,
        "101.50000000",
        "30.00000000",
    )
    # and publish_messages_on_commit queues them as they are, nothing when there are none
    queued.clear()
    realtime.publish_messages_on_commit(built)
    realtime.publish_messages_on_commit([])
    assert queued == [built]


def test_order_json_datetime_texts_are_isoformat_from_the_memo_or_made_once(monkeypatch):
    import datetime as dt

    from orders.services import executions

    # given an empty memo of datetime texts, bounded at two entries, and an order's instance
    monkeypatch.setattr(executions, "_UTC_TEXTS", {})
    monkeypatch.setattr(executions, "_UTC_TEXTS_MAX", 2)
    created = dt.datetime(2026, 11, 20, 15, 0, 0, 250000, tzinfo=dt.UTC)
    updated = dt.datetime(2026, 11, 20, 16, 0, tzinfo=dt.UTC)
    order = Order(id=7, side="buy", quantity=Decimal("10"), created_at=created)
    order.__dict__.update(updated_at=updated, created_by_id=None)
    order._state.fields_cache.update(
        account=SimpleNamespace(code="A1"), instrument=SimpleNamespace(symbol="XYZ")
    )
    # when its event data is written twice
    first = executions._order_json(order)
    second = executions._order_json(order)
    # then both carry isoformat()'s texts, made once and kept
    assert first == second
    assert (first["created_at"], first["updated_at"]) == (
        "2026-11-20T15:00:00.250000+00:00",
        "2026-11-20T16:00:00+00:00",
    )
    assert {created: first["created_at"], updated: first["updated_at"]} == executions._UTC_TEXTS
    # and a third datetime empties the full memo before it is kept alone
    order.updated_at = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    assert executions._order_json(order)["updated_at"] == "2026-11-21T00:00:00+00:00"
    assert {order.updated_at: "2026-11-21T00:00:00+00:00"} == executions._UTC_TEXTS
    # and a datetime not in UTC is never kept (json_safe's path, as before)
    third = order.updated_at
    order.updated_at = dt.datetime(2026, 11, 21, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert executions._order_json(order)["updated_at"] == "2026-11-21T00:00:00+00:00"
    assert set(executions._UTC_TEXTS) == {third, created}


def test_block_fill_event_groups_are_groups_for_account_from_the_memo_or_made_once(monkeypatch):
    from allocations.models import Account
    from oms_site.realtime import FIRM_GROUP
    from orders.services import executions

    # given an empty memo of event groups, bounded at two entries, and orders whose accounts
    # are cached with their desk (one account's desk not loaded: read through the attribute)
    monkeypatch.setattr(executions, "_GROUPS", {})
    monkeypatch.setattr(executions, "_GROUPS_MAX", 2)

    class Unloaded:
        desk_id = 9

    def order_of(account_id, account):
        order = Order(id=account_id, account_id=account_id)
        order._state.fields_cache["account"] = account
        return order

    first = order_of(1, Account(id=1, desk_id=5))
    second = order_of(2, Account(id=2, desk_id=None))
    third = order_of(3, Unloaded())
    # when their groups are asked for, the first twice
    groups = executions._groups(first)
    # then they are groups_for_account's, made once and kept
    assert groups == ["acct-1", FIRM_GROUP, "desk-5"]
    assert executions._groups(first) is groups
    assert executions._groups(second) == ["acct-2", FIRM_GROUP]
    assert {(1, 5): groups, (2, None): ["acct-2", FIRM_GROUP]} == executions._GROUPS
    # and a third key empties the full memo before it is kept alone
    assert executions._groups(third) == ["acct-3", FIRM_GROUP, "desk-9"]
    assert executions._GROUPS == {(3, 9): ["acct-3", FIRM_GROUP, "desk-9"]}


def test_a_blocks_locked_orders_are_instances_as_loaded_from_the_database(
    trader, brokers, make_order
):
    # given a block of two orders, filled once (versions, prices and timestamps moved)
    from orders.services.executions import _lock

    _, orders, p = _block_of(trader, make_order, [60, 40])
    apply(report(p.cl_ord_id, "F", "1", cum="50", avg="100", last_qty="50", last_px="100.3"))
    # when the fill's locking step loads them
    ctx = _lock([p.cl_ord_id])
    # then each is an Order as read from the database: every loaded field equal to a fresh
    # read, not adding, on the default database, with its account, instrument and creator
    assert ctx is not None and [o.pk for o in ctx.orders] == sorted(o.pk for o in orders)
    for order in ctx.orders:
        fresh = Order.objects.select_related("account", "instrument", "created_by").get(pk=order.pk)
        assert type(order) is Order
        assert (order._state.adding, order._state.db) == (False, "default")
        for field in Order._meta.concrete_fields:
            assert getattr(order, field.attname) == getattr(fresh, field.attname), field.name
        account = order._state.fields_cache["account"]
        assert type(account) is type(fresh.account)
        assert (account._state.adding, account._state.db) == (False, "default")
        assert (account.pk, account.code, account.desk_id, account.short_selling_allowed) == (
            fresh.account.pk,
            fresh.account.code,
            fresh.account.desk_id,
            fresh.account.short_selling_allowed,
        )
        assert order._state.fields_cache["instrument"] is ctx.block.instrument
        assert order.instrument.symbol == fresh.instrument.symbol
        assert order.created_by.get_username() == fresh.created_by.get_username()
        # a field the locking read did not load is read on access, as on a deferred instance
        assert order.account.name == fresh.account.name


def test_a_fill_writes_its_placement_with_the_allocation_statement(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of two orders, partly filled once
    _, _, p = _block_of(trader, make_order, [60, 40])
    apply(report(p.cl_ord_id, "F", "1", cum="20", avg="100", last_qty="20", last_px="100"))
    p.refresh_from_db()
    version = p.version
    sent = _statements(monkeypatch)
    # when a second fill is applied
    apply(report(p.cl_ord_id, "F", "2", cum="50", avg="101.2", last_qty="30", last_px="102"))
    # then no statement of its own updated the placement, and the row holds the fill's state
    assert not [s for s in sent if str(s).startswith('UPDATE "orders_placement"')]
    p.refresh_from_db()
    assert (p.status, p.cum_qty, p.avg_px, p.version) == (
        "partially_filled",
        Decimal("50"),
        Decimal("101.2"),
        version + 1,
    )


def test_a_fill_writes_its_orders_and_blocks_new_states_with_the_allocation_statement(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of two orders, partly filled once (both partially filled)
    _, orders, p = _block_of(trader, make_order, [60, 40])
    apply(report(p.cl_ord_id, "F", "1", cum="50", avg="100", last_qty="50", last_px="100"))
    versions = {o.pk: o.version for o in Order.objects.filter(pk__in=[o.pk for o in orders])}
    block = Block.objects.get(pk=p.block_id)
    assert block.status == "partially_filled"
    sent = _statements(monkeypatch)
    # when the rest is filled
    execution = apply(
        report(p.cl_ord_id, "F", "2", cum="100", avg="101", last_qty="50", last_px="102")
    )
    # then no statement of its own wrote the orders: the fill's statement wrote their new
    # state, quantities and version (one for the fill, one for the transition)
    assert execution is not None
    assert not [s for s in sent if str(s).startswith('UPDATE "orders_order"')]
    assert not [s for s in sent if str(s).startswith('UPDATE "orders_block"')]
    moved = Block.objects.get(pk=block.pk)
    assert (moved.status, moved.cum_qty, moved.avg_px, moved.version) == (
        "filled",
        Decimal("100"),
        Decimal("101"),
        block.version + 2,
    )
    for order in Order.objects.filter(pk__in=[o.pk for o in orders]):
        assert (order.status, order.cum_qty, order.leaves_qty, order.avg_px, order.version) == (
            OrderStatus.FILLED,
            order.quantity,
            Decimal(0),
            Decimal("101"),
            versions[order.pk] + 2,
        )
    # and the audit trail is as before: the allocation, each order's transition, the block's
    # status, the placement's report
    actions = list(
        AuditEvent.objects.filter(meta__execution=execution.pk)
        .order_by("id")
        .values_list("action", "object_id")
    )
    assert actions == [
        ("allocation.created", str(execution.pk)),
        *(("order.filled", str(o.pk)) for o in sorted(orders, key=lambda o: o.pk)),
        ("block.status_changed", str(p.block_id)),
        ("placement.execution_report", str(p.pk)),
    ]
    status = AuditEvent.objects.get(meta__execution=execution.pk, action="block.status_changed")
    assert (status.before, status.after) == (
        {"status": "partially_filled", "version": block.version + 1},
        {"status": "filled", "version": block.version + 2},
    )
    events = AuditEvent.objects.filter(meta__execution=execution.pk, action="order.filled")
    for event in events:
        before, after = event.before, event.after
        assert before == {
            "status": "partially_filled",
            "version": versions[int(event.object_id)] + 1,
        }
        assert after == {
            "status": "filled",
            "version": versions[int(event.object_id)] + 2,
            "cum_qty": "60" if int(event.object_id) == orders[0].pk else "40",
            "avg_px": "101",
        }


def test_an_acknowledgement_and_a_fill_in_one_batch_write_the_orders_once(
    trader, brokers, make_order, monkeypatch
):
    # given a lone order routed, not yet acknowledged
    from orders.services.executions import executions_apply

    order = make_order(quantity=Decimal("100"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    order.refresh_from_db()
    version = order.version
    sent = _statements(monkeypatch)
    # when its acknowledgement and a partial fill are applied in one batch
    results = executions_apply(
        session_key=KEY,
        reports=[
            (report(placement.cl_ord_id, "0", "0"), None),
            (
                report(
                    placement.cl_ord_id, "F", "1", cum="30", avg="99", last_qty="30", last_px="99"
                ),
                None,
            ),
        ],
    )
    # then both are booked, the order moved through working to partially filled, and no
    # statement of its own wrote the order (the fill's statement wrote both reports' changes)
    assert all(r is not None for r in results)
    assert not [s for s in sent if str(s).startswith('UPDATE "orders_order"')]
    order.refresh_from_db()
    assert (order.status, order.cum_qty, order.leaves_qty, order.avg_px, order.version) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal("30"),
        Decimal("70"),
        Decimal("99"),
        version + 3,
    )
    assert list(
        AuditEvent.objects.filter(object_type="order", object_id=str(order.pk))
        .filter(action__in=["order.acknowledged", "order.partially_filled"])
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["order.acknowledged", "order.partially_filled"]


def test_a_lone_orders_report_locks_its_placement_and_order_in_one_statement(routed, monkeypatch):
    order, placement = routed
    sent = _statements(monkeypatch)
    # when the broker acknowledges the order
    apply(report(placement.cl_ord_id, "0", "0"))
    # then one statement read and locked both rows (no separate read of the order); the audit
    # write's own lock of its stream heads aside
    locking = [
        str(s) for s in sent if "FOR UPDATE" in str(s) and "oms_site_auditstream" not in str(s)
    ]
    assert len(locking) == 1
    assert "FOR UPDATE OF p)" in locking[0] and "FOR UPDATE OF o)" in locking[0]
    # and the report was applied from what it read
    order.refresh_from_db()
    placement.refresh_from_db()
    assert (order.status, order.version, placement.status) == ("working", 3, "working")
    assert Execution.objects.get(exec_type="new").order_id == order.pk


def test_a_block_placement_is_locked_then_its_block_then_its_orders(
    trader, brokers, make_order, monkeypatch
):
    # given an acknowledged block of two orders
    _, orders, p = _block_of(trader, make_order, [60, 40])
    sent = _statements(monkeypatch)
    # when it is filled
    apply(report(p.cl_ord_id, "F", "2", cum="100", avg="100", last_qty="100", last_px="100"))
    # then the placement's statement found no lone order, and the block and its orders followed
    # in one statement, the orders' lock behind a one-time read of the locked block's row
    locking = [str(s) for s in sent if "FOR UPDATE" in str(s)]
    assert [s.split(" FROM ", 2)[1].split()[0] for s in locking[:2]] == [
        "orders_placement",
        "orders_block",
    ]
    block_orders = locking[1]
    assert block_orders.index("FOR UPDATE OF k") < block_orders.index("FOR UPDATE OF o")
    assert "FROM orders_order AS o " in block_orders
    assert "WHERE (SELECT count(*) FROM k) >= 0 AND o.block_id = %s" in block_orders
    assert [state(o)[:2] for o in orders] == [
        ("filled", Decimal("60")),
        ("filled", Decimal("40")),
    ]


@contextlib.contextmanager
def _applier_behind_a_held_order(order_pk: int, applying: Callable[[], None]) -> Iterator[Any]:
    """Hold the order's row lock in another transaction, run `applying` in a thread until it
    waits on a row lock (and has not finished), and yield an autocommit probe connection; on
    leaving, the lock is released and the thread joined."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    holder = psycopg.connect(**params)
    holder.execute("SELECT 1 FROM orders_order WHERE id = %s FOR UPDATE", [order_pk])
    done = threading.Event()

    def run() -> None:
        try:
            applying()
        finally:
            connection.close()
            done.set()

    applier = threading.Thread(target=run)
    applier.start()
    probe = psycopg.connect(**params, autocommit=True)
    try:
        deadline = 0
        while deadline < 200:  # until the applier waits on a row lock
            waiting = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if waiting and waiting[0]:
                break
            deadline += 1
            done.wait(0.05)
        assert not done.is_set()
        yield probe
    finally:
        holder.rollback()
        holder.close()
        applier.join(timeout=30)
        probe.close()


def _assert_locked(probe: Any, table: str, pk: int) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.LockNotAvailable), probe.transaction():
        probe.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE NOWAIT", [pk])


@pytest.mark.django_db(transaction=True)
def test_the_placement_is_locked_before_the_order(trader, brokers, make_order):
    order = make_order(quantity=Decimal("100"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    # given another transaction holding the order's row lock, when a report of the order is
    # applied meanwhile
    with _applier_behind_a_held_order(
        order.pk, lambda: apply(report(placement.cl_ord_id, "0", "0"))
    ) as probe:
        # then it holds the placement's lock while it waits for the order's
        _assert_locked(probe, "orders_placement", placement.pk)
    # and once the order is free the report is applied
    order.refresh_from_db()
    assert order.status == "working"


@pytest.mark.django_db(transaction=True)
def test_a_block_is_locked_before_its_orders(trader, brokers, make_order):
    block, orders, placement = _block_of(trader, make_order, [60, 40])
    fill = report(placement.cl_ord_id, "F", "1", cum="10", avg="100", last_qty="10", last_px="100")
    # given another transaction holding the second order's row lock, when a fill of the block
    # is applied meanwhile
    with _applier_behind_a_held_order(orders[1].pk, lambda: apply(fill)) as probe:
        # then it holds the placement's, the block's and the first order's locks while it
        # waits for the second order's
        _assert_locked(probe, "orders_placement", placement.pk)
        _assert_locked(probe, "orders_block", block.pk)
        _assert_locked(probe, "orders_order", orders[0].pk)
    # and once the order is free the fill is booked
    assert [state(o)[:2] for o in orders] == [
        ("partially_filled", Decimal("6")),
        ("partially_filled", Decimal("4")),
    ]


def _writes_rows(statement: str) -> bool:
    return statement.startswith(("UPDATE", "WITH placement AS (UPDATE"))


def test_an_acknowledgement_writes_its_placement_and_orders_in_one_statement(
    trader, brokers, make_order, monkeypatch
):
    # given a routed block of two orders (pending new)
    orders = [make_order(quantity=Decimal(q)) for q in (60, 40)]
    block = Block.objects.create(
        instrument=orders[0].instrument,
        side="buy",
        order_type="market",
        quantity=Decimal(100),
        created_by=trader,
    )
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(block=block)
    p = block_route(user=trader, block_id=block.pk, broker_code="BRKA")
    p.refresh_from_db()
    before = [(o.pk, Order.objects.get(pk=o.pk).version) for o in orders]
    sent = _statements(monkeypatch)
    # when the broker acknowledges it
    apply(report(p.cl_ord_id, "0", "0"))
    # then one statement wrote the placement and both orders
    updates = [str(s) for s in sent if _writes_rows(str(s))]
    assert len(updates) == 1
    assert updates[0].startswith('WITH placement AS (UPDATE "orders_placement"')
    assert 'UPDATE "orders_order"' in updates[0]
    stored = Placement.objects.get(pk=p.pk)
    assert (stored.status, stored.version, stored.broker_order_id) == (
        "working",
        p.version + 1,
        "BRK-ORD-1",
    )
    assert [
        (o.pk, o.status, o.version) for o in Order.objects.filter(block=block).order_by("pk")
    ] == [(pk, "working", version + 1) for pk, version in before]


def test_a_report_that_moves_no_order_writes_the_placement_alone(routed, monkeypatch):
    order, placement = routed
    apply(report(placement.cl_ord_id, "0", "0"))
    placement.refresh_from_db()
    order.refresh_from_db()
    sent = _statements(monkeypatch)
    # when a restatement arrives (recorded; no order changes state)
    apply(report(placement.cl_ord_id, "D", "0", text="restated"))
    # then only the placement is written, and the order is untouched
    updates = [str(s) for s in sent if _writes_rows(str(s))]
    assert [u.split(" SET ")[0] for u in updates] == ['UPDATE "orders_placement"']
    stored = Placement.objects.get(pk=placement.pk)
    assert (stored.status, stored.version) == ("working", placement.version + 1)
    assert Order.objects.get(pk=order.pk).version == order.version


@pytest.mark.django_db(transaction=True)
def test_parallel_copies_of_a_small_block_fills_book_each_fill_once(trader, brokers, make_order):
    import threading

    from django.db import connection

    from oms_site.audit import audit_verify

    # given an acknowledged block of three orders and five fills of it
    _, orders, p = _block_of(trader, make_order, [50, 30, 20])
    fills = [
        report(
            p.cl_ord_id,
            "F",
            "1",
            exec_id=f"PAR{i}",
            cum=str(10 * (i + 1)),
            avg="100",
            last_qty="10",
            last_px=str(100 + i),
        )
        for i in range(5)
    ]
    start = threading.Barrier(4)
    applied: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            for fill in fills:
                if apply(fill) is not None:
                    applied.append(1)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # when four threads apply every fill at once (each report four times)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then each fill is booked once: 50 in all at the fills' average, split 25/15/10
    assert errors == [] and len(applied) == 5
    assert Execution.objects.filter(exec_id__startswith="PAR").count() == 5
    assert [state(o)[:3] for o in orders] == [
        ("partially_filled", Decimal("25"), Decimal("102")),
        ("partially_filled", Decimal("15"), Decimal("102")),
        ("partially_filled", Decimal("10"), Decimal("102")),
    ]
    booked = {
        o.pk: sum(
            Allocation.objects.filter(order_id=o.pk).values_list("quantity", flat=True),
            Decimal(0),
        )
        for o in orders
    }
    assert booked == {orders[0].pk: 25, orders[1].pk: 15, orders[2].pk: 10}
    assert audit_verify() == []
