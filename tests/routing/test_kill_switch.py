"""Kill switch: scope, refused routes and orders, cancels sent, lifting by a second user."""

from __future__ import annotations

from decimal import Decimal

import pytest

from oms_site.errors import ConflictError, NotPermitted
from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.models import KillSwitch, Order, OutboxMessage, Placement
from orders.services.routing import kill_switch_engage, kill_switch_lift, order_route
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def book(trader, brokers, make_order, pm, instrument):
    """Staged, working and filled orders in ACC-A, and a working order in ACC-A2 (same desk)."""
    staged = make_order()
    working = make_order()
    order_route(user=trader, order_id=working.pk, broker_code="BRKA")
    Order.objects.filter(pk=working.pk).update(status=OrderStatus.WORKING)
    filled = make_order()
    order_route(user=trader, order_id=filled.pk, broker_code="BRKA")
    Order.objects.filter(pk=filled.pk).update(status=OrderStatus.FILLED, cum_qty=Decimal(100))
    other_account = f.AccountFactory(code="ACC-A2", desk=staged.account.desk)
    elsewhere = make_order(account=other_account)
    order_route(user=trader, order_id=elsewhere.pk, broker_code="BRKB")
    Order.objects.filter(pk=elsewhere.pk).update(status=OrderStatus.WORKING)
    return {"staged": staged, "working": working, "filled": filled, "elsewhere": elsewhere}


def statuses(book):
    return {k: Order.objects.get(pk=o.pk).status for k, o in book.items()}


def test_account_scope_cancels_staged_and_requests_cancel_at_brokers(trader, book):
    result = kill_switch_engage(user=trader, scope="account", target="ACC-A", reason="runaway")
    assert (result.canceled, result.cancel_requests) == (1, 1)
    assert statuses(book) == {
        "staged": "canceled",
        "working": "pending_cancel",
        "filled": "filled",
        "elsewhere": "working",
    }
    (cancel,) = OutboxMessage.objects.filter(msg_type="F")
    placement = Placement.objects.get(order=book["working"])
    assert (cancel.payload["orig_cl_ord_id"], cancel.placement_id) == (
        placement.cl_ord_id,
        placement.pk,
    )
    assert AuditEvent.objects.filter(action="kill_switch.engaged").count() == 1


def test_desk_scope_reaches_every_account_of_the_desk(trader, book):
    result = kill_switch_engage(user=trader, scope="desk", target="EQ", reason="")
    assert (result.canceled, result.cancel_requests) == (1, 2)
    assert statuses(book)["elsewhere"] == "pending_cancel"


def test_routes_are_refused_while_engaged_and_allowed_after_lift(
    trader, second_trader, brokers, make_order
):
    switch = kill_switch_engage(user=trader, scope="firm", target=None, reason="drill").switch
    order = make_order()
    with pytest.raises(ConflictError) as exc:
        order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    assert exc.value.code == "kill_switch_active"
    # the one who engaged it cannot lift it
    with pytest.raises(NotPermitted) as denied:
        kill_switch_lift(user=trader, switch_id=switch.pk)
    assert denied.value.code == "four_eyes"
    lifted = kill_switch_lift(user=second_trader, switch_id=switch.pk)
    assert (lifted.active, lifted.lifted_by, lifted.lifted_at is not None) == (
        False,
        second_trader,
        True,
    )
    with pytest.raises(ConflictError) as again:
        kill_switch_lift(user=second_trader, switch_id=switch.pk)
    assert again.value.code == "already_lifted"
    assert order_route(user=trader, order_id=order.pk, broker_code="BRKA").pk


def test_new_orders_are_refused_in_scope(trader, pm, account, instrument, brokers):
    from orders.services.orders import order_create

    kill_switch_engage(user=trader, scope="account", target="ACC-A", reason="")
    with pytest.raises(ConflictError) as exc:
        order_create(
            user=pm,
            data={
                "account": "ACC-A",
                "instrument": "ACME",
                "side": "buy",
                "quantity": "10",
                "order_type": "market",
            },
        )
    assert exc.value.code == "kill_switch_active"


def test_only_traders_and_admins_engage(pm, compliance_officer, brokers):
    for user in (pm, compliance_officer):
        with pytest.raises(NotPermitted):
            kill_switch_engage(user=user, scope="firm", target="", reason="")
    assert KillSwitch.objects.count() == 0


def test_bad_scope_and_target_are_field_errors(trader):
    with pytest.raises(Exception) as exc:
        kill_switch_engage(user=trader, scope="galaxy", target="", reason="")
    assert list(exc.value.errors) == ["scope"]
    with pytest.raises(Exception) as exc:
        kill_switch_engage(user=trader, scope="account", target="NOPE", reason="")
    assert exc.value.errors == {"target": ["unknown account 'NOPE'"]}


def test_second_engage_of_the_same_scope_conflicts(trader):
    kill_switch_engage(user=trader, scope="firm", target="", reason="")
    with pytest.raises(ConflictError):
        kill_switch_engage(user=trader, scope="firm", target="", reason="")
