"""Overrides of warned orders: who may, which orders, what is recorded; API and browser page."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from compliance.models import Override
from compliance.services import order_override
from oms_site import roles
from oms_site.errors import ConflictError, NotPermitted, ValidationError
from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.models import Order
from tests import factories as f
from tests.compliance.conftest import check
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def warned_order(account: Any, instrument: Any, make_rule: Any, make_order: Any) -> Order:
    """pm_a's order of 50 ACME that a warn-level fat-finger rule flagged (awaiting override)."""
    make_rule("fat_finger", params={"max_quantity": "10"}, severity="warn", name="size check")
    order = make_order(account, instrument, quantity="50")
    assert check([order]) == {order.pk: "warn"}
    Order.objects.filter(pk=order.pk).update(
        status=OrderStatus.AWAITING_OVERRIDE, compliance_outcome="warn"
    )
    order.refresh_from_db()
    return order


def test_officer_overrides_a_warned_order(
    warned_order: Order, compliance_officer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # when
    with django_capture_on_commit_callbacks() as callbacks:
        order = order_override(
            user=compliance_officer, order_id=warned_order.pk, reason=" Client mandate allows "
        )
    # then
    assert (order.status, order.version) == (OrderStatus.APPROVED, warned_order.version + 1)
    saved = Order.objects.get(pk=warned_order.pk)
    assert (saved.status, saved.version) == (OrderStatus.APPROVED, warned_order.version + 1)
    override = Override.objects.get(order=warned_order)
    assert (override.officer, override.reason) == (compliance_officer, "Client mandate allows")
    event = AuditEvent.objects.get(action="order.override")
    assert (event.object_type, event.object_id, event.actor_id) == (
        "order",
        str(warned_order.pk),
        compliance_officer.pk,
    )
    assert event.before == {"status": "awaiting_override", "version": warned_order.version}
    assert event.after == {"status": "approved", "version": warned_order.version + 1}
    assert event.meta["reason"] == "Client mandate allows"
    assert [w["rule_name"] for w in event.meta["warnings"]] == ["size check"]
    assert len(callbacks) == 1  # the blotter event, after commit


def test_officer_cannot_override_own_order(warned_order: Order, compliance_officer: Any) -> None:
    # given the warned order was entered by the officer (a PM who is also compliance)
    Order.objects.filter(pk=warned_order.pk).update(created_by=compliance_officer)
    # when / then
    with pytest.raises(NotPermitted) as exc:
        order_override(user=compliance_officer, order_id=warned_order.pk, reason="fine")
    assert exc.value.code == "own_order"
    assert Order.objects.get(pk=warned_order.pk).status == OrderStatus.AWAITING_OVERRIDE
    assert not Override.objects.exists()


def test_blocked_order_cannot_be_overridden(warned_order: Order, compliance_officer: Any) -> None:
    Order.objects.filter(pk=warned_order.pk).update(status=OrderStatus.BLOCKED)
    with pytest.raises(ConflictError) as exc:
        order_override(user=compliance_officer, order_id=warned_order.pk, reason="please")
    assert exc.value.code == "blocked_cannot_override"
    assert exc.value.status_code == 409
    assert not Override.objects.exists()


@pytest.mark.parametrize(
    "status", [OrderStatus.APPROVED, OrderStatus.WORKING, OrderStatus.CANCELED]
)
def test_only_orders_awaiting_override_can_be_overridden(
    warned_order: Order, compliance_officer: Any, status: str
) -> None:
    Order.objects.filter(pk=warned_order.pk).update(status=status)
    with pytest.raises(ConflictError) as exc:
        order_override(user=compliance_officer, order_id=warned_order.pk, reason="please")
    assert exc.value.code == "not_awaiting_override"


@pytest.mark.parametrize("reason", ["", "   "])
def test_override_needs_a_written_reason(
    warned_order: Order, compliance_officer: Any, reason: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        order_override(user=compliance_officer, order_id=warned_order.pk, reason=reason)
    assert exc.value.errors == {"reason": ["a written reason is required"]}
    assert Order.objects.get(pk=warned_order.pk).status == OrderStatus.AWAITING_OVERRIDE


@pytest.mark.parametrize("who", ["pm", "trader", "backoffice", "administrator"])
def test_only_compliance_officers_override(warned_order: Order, who: str, request: Any) -> None:
    user = request.getfixturevalue(who)
    with pytest.raises(NotPermitted):
        order_override(user=user, order_id=warned_order.pk, reason="ok")
    assert not Override.objects.exists()


def test_second_override_is_refused(warned_order: Order, compliance_officer: Any) -> None:
    order_override(user=compliance_officer, order_id=warned_order.pk, reason="ok")
    with pytest.raises(ConflictError):
        order_override(user=compliance_officer, order_id=warned_order.pk, reason="again")
    assert Override.objects.count() == 1


# --- API ----------------------------------------------------------------------------------------


def test_api_override(warned_order: Order, compliance_officer: Any) -> None:
    response = client_for(compliance_officer).post(
        f"/api/v1/orders/{warned_order.pk}/override/", {"reason": "Within mandate"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["id"], body["status"], body["version"]) == (
        warned_order.pk,
        "approved",
        warned_order.version + 1,
    )
    assert body["override"]["reason"] == "Within mandate"
    assert body["override"]["officer"] == compliance_officer.username


def test_api_override_errors(warned_order: Order, compliance_officer: Any, pm: Any) -> None:
    url = f"/api/v1/orders/{warned_order.pk}/override/"
    assert client_for(pm).post(url, {"reason": "x"}, format="json").status_code == 403
    empty = client_for(compliance_officer).post(url, {"reason": ""}, format="json")
    assert (empty.status_code, empty.json()["code"]) == (400, "reason_required")
    Order.objects.filter(pk=warned_order.pk).update(status=OrderStatus.BLOCKED)
    blocked = client_for(compliance_officer).post(url, {"reason": "x"}, format="json")
    assert (blocked.status_code, blocked.json()["code"]) == (409, "blocked_cannot_override")
    missing = client_for(compliance_officer).post(
        "/api/v1/orders/999999/override/", {"reason": "x"}, format="json"
    )
    assert missing.status_code == 404


def test_api_queue_lists_orders_awaiting_override_with_results(
    warned_order: Order,
    compliance_officer: Any,
    pm: Any,
    account: Any,
    instrument: Any,
    make_order: Any,
) -> None:
    # given another order that is approved (not in the queue)
    make_order(account, instrument, status=OrderStatus.APPROVED)
    # when
    response = client_for(compliance_officer).get("/api/v1/compliance/queue/")
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    [row] = body["results"]
    assert (row["id"], row["account"], row["instrument"], row["status"]) == (
        warned_order.pk,
        "ACC-A",
        "ACME",
        "awaiting_override",
    )
    assert row["compliance"]["outcome"] == "warn"
    assert [(r["rule"], r["outcome"]) for r in row["compliance"]["results"]] == [
        ("size check", "warn")
    ]
    assert client_for(pm).get("/api/v1/compliance/queue/").status_code == 403


# --- browser page -------------------------------------------------------------------------------


def _browser(user: Any) -> Any:
    from django.test import Client

    c = Client()
    c.force_login(user)
    return c


def test_page_lists_the_queue_for_compliance_only(
    warned_order: Order, compliance_officer: Any, pm: Any, trader: Any
) -> None:
    page = _browser(compliance_officer).get("/compliance/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-order-id="{warned_order.pk}"' in html
    assert "size check" in html
    assert 'name="reason"' in html
    assert _browser(pm).get("/compliance/").status_code == 403
    assert _browser(trader).get("/compliance/").status_code == 403


def test_page_override_form_releases_the_order(
    warned_order: Order, compliance_officer: Any
) -> None:
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    c.force_login(compliance_officer)
    page = c.get("/compliance/")
    token = page.cookies["csrftoken"].value
    # without the CSRF token the post is refused
    assert (
        c.post(f"/compliance/orders/{warned_order.pk}/override/", {"reason": "ok"}).status_code
        == 403
    )
    response = c.post(
        f"/compliance/orders/{warned_order.pk}/override/",
        {"reason": "Documented exception", "csrfmiddlewaretoken": token},
        follow=True,
    )
    assert response.status_code == 200
    assert f"Order {warned_order.pk} released" in response.content.decode()
    assert Order.objects.get(pk=warned_order.pk).status == OrderStatus.APPROVED
    assert Override.objects.get().reason == "Documented exception"


def test_page_shows_own_orders_without_a_form(warned_order: Order, role_groups: Any) -> None:
    officer = f.UserFactory(username="officer_pm", role=roles.COMPLIANCE)
    Order.objects.filter(pk=warned_order.pk).update(created_by=officer)
    html = _browser(officer).get("/compliance/").content.decode()
    assert "your own order" in html
    assert f"/compliance/orders/{warned_order.pk}/override/" not in html


def test_page_post_by_non_officer_is_forbidden(warned_order: Order, pm: Any) -> None:
    response = _browser(pm).post(f"/compliance/orders/{warned_order.pk}/override/", {"reason": "x"})
    assert response.status_code == 403
    with transaction.atomic():
        assert Order.objects.get(pk=warned_order.pk).status == OrderStatus.AWAITING_OVERRIDE
