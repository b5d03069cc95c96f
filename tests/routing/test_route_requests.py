"""Asynchronous routes (202) are durable RouteRequest rows: a lost Celery message loses nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db.models import F

from oms_site.models import AuditEvent
from orders import tasks
from orders.models import Block, KillSwitch, Order, OutboxMessage, Placement, RouteRequest
from orders.services.orders import block_create
from orders.services.routing import order_route, route_requests_resweep
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The request ids handed to Celery (the broker itself is not touched)."""
    calls: list[Any] = []
    monkeypatch.setattr(tasks.route_request, "delay", lambda *a, **kw: calls.append((a, kw)))
    return calls


def _route_async(user: Any, order: Order, broker: str | None = "BRKC") -> Any:
    return client_for(user).post(
        f"/api/v1/orders/{order.pk}/route/", {"broker": broker, "asynchronous": True}, format="json"
    )


def _age(request: RouteRequest, seconds: float) -> None:
    RouteRequest.objects.filter(pk=request.pk).update(
        published_at=F("published_at") - dt.timedelta(seconds=seconds)
    )


def _actions(request: RouteRequest) -> list[str]:
    return list(
        AuditEvent.objects.filter(object_type="route_request", object_id=str(request.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )


def test_202_creates_one_pending_request_and_publishes_it_once_after_commit(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _route_async(trader, order)
    assert response.status_code == 202, response.json()
    request = RouteRequest.objects.get()
    assert response.json() == {"queued": True, "order": order.pk, "request": request.pk}
    assert (request.order_id, request.block_id, request.user_id, request.broker_code) == (
        order.pk,
        None,
        trader.pk,
        "BRKC",
    )
    assert (request.status, request.attempts, request.placement_id) == ("pending", 1, None)
    assert request.finished_at is None
    assert len(callbacks) == 1
    assert published == [((request.pk,), {})]
    assert _actions(request) == ["route_request.accepted"]
    # accepted, not routed: the order waits for the worker
    order.refresh_from_db()
    assert (order.status, order.version) == ("approved", 1)
    assert Placement.objects.count() == 0
    assert OutboxMessage.objects.count() == 0


def test_a_second_async_route_while_pending_answers_the_same_202(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        first = _route_async(trader, order)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        second = _route_async(trader, order, broker=None)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == first.json()
    assert RouteRequest.objects.count() == 1
    assert callbacks == []
    assert len(published) == 1


def test_the_task_routes_and_marks_the_request_done(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    placement_id = tasks.route_request(request_id)
    placement = Placement.objects.get()
    assert placement_id == placement.pk
    assert (placement.order_id, placement.broker.code, placement.routed_by_id) == (
        order.pk,
        "BRKC",
        trader.pk,
    )
    request = RouteRequest.objects.get(pk=request_id)
    assert (request.status, request.placement_id, request.last_error) == ("done", placement.pk, "")
    assert request.finished_at is not None
    assert _actions(request) == ["route_request.accepted", "route_request.done"]
    order.refresh_from_db()
    assert (order.status, order.version) == ("pending_new", 2)
    assert OutboxMessage.objects.count() == 1
    # done: a new async route of the order may be accepted later (no pending one blocks it)
    assert RouteRequest.objects.filter(status="pending").count() == 0


def test_running_the_task_twice_routes_once(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    first = tasks.route_request(request_id)
    second = tasks.route_request(request_id)
    assert first == second == Placement.objects.get().pk
    assert OutboxMessage.objects.count() == 1
    request = RouteRequest.objects.get(pk=request_id)
    assert request.status == "done"
    assert _actions(request) == ["route_request.accepted", "route_request.done"]
    assert Order.objects.get(pk=order.pk).version == 2


def test_a_run_that_died_after_routing_is_completed_without_routing_again(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    # given: the worker routed the order, then died before recording the request
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKC")
    # when: the message comes back (redelivery or sweep)
    assert tasks.route_request(request_id) == placement.pk
    # then: the request records that placement; nothing is routed or refused a second time
    request = RouteRequest.objects.get(pk=request_id)
    assert (request.status, request.placement_id) == ("done", placement.pk)
    assert Placement.objects.count() == 1
    assert OutboxMessage.objects.count() == 1


def test_a_lost_message_is_republished_by_the_sweep_after_the_threshold_and_not_before(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks, settings
):
    settings.ROUTE_REQUEST_RETRY_SECONDS = 30
    order = make_order()
    # the 202's message is lost: its on-commit publication never runs
    with django_capture_on_commit_callbacks(execute=False):
        request_id = _route_async(trader, order).json()["request"]
    assert published == []
    request = RouteRequest.objects.get(pk=request_id)
    _age(request, 29)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert route_requests_resweep() == 0
    assert (callbacks, published) == ([], [])
    assert RouteRequest.objects.get(pk=request_id).attempts == 1
    _age(request, 2)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.route_requests_resweep() == 1
    assert published == [((request_id,), {})]
    request.refresh_from_db()
    assert (request.status, request.attempts) == ("pending", 2)
    # re-published just now: the next sweep leaves it alone
    with django_capture_on_commit_callbacks(execute=True):
        assert route_requests_resweep() == 0
    assert len(published) == 1
    # the re-published message routes the order once
    assert tasks.route_request(request_id) == Placement.objects.get().pk
    assert Order.objects.get(pk=order.pk).status == "pending_new"
    assert OutboxMessage.objects.count() == 1
    _age(request, 60)
    assert route_requests_resweep() == 0


def test_a_broker_down_at_accept_time_still_answers_202_and_the_sweep_publishes(
    trader, brokers, make_order, django_capture_on_commit_callbacks, monkeypatch, settings
):
    settings.ROUTE_REQUEST_RETRY_SECONDS = 30
    calls: list[int] = []

    def down(request_id: int) -> None:
        calls.append(request_id)
        raise ConnectionError("redis is down")

    monkeypatch.setattr(tasks.route_request, "delay", down)
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        response = _route_async(trader, order)
    assert response.status_code == 202
    request = RouteRequest.objects.get()
    assert (request.status, calls) == ("pending", [request.pk])
    _age(request, 31)
    with django_capture_on_commit_callbacks(execute=True):
        assert route_requests_resweep() == 1
    assert calls == [request.pk, request.pk]


def test_a_kill_switch_refuses_the_request_and_changes_nothing_else(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    KillSwitch.objects.create(scope="account", target="ACC-A", engaged_by=trader)
    assert tasks.route_request(request_id) is None
    request = RouteRequest.objects.get(pk=request_id)
    assert (request.status, request.placement_id) == ("refused", None)
    assert request.last_error == (
        "kill_switch_active: A kill switch is active for account ACC-A: routing is stopped."
    )
    assert request.finished_at is not None
    assert _actions(request) == ["route_request.accepted", "route_request.refused"]
    refused = AuditEvent.objects.get(object_type="route_request", action="route_request.refused")
    assert refused.meta["code"] == "kill_switch_active"
    order.refresh_from_db()
    assert (order.status, order.version) == ("approved", 1)
    assert Placement.objects.count() == 0
    assert OutboxMessage.objects.count() == 0
    assert AuditEvent.objects.filter(object_type="order").count() == 0
    # refused is final: running it again does nothing
    assert tasks.route_request(request_id) is None
    assert _actions(request) == ["route_request.accepted", "route_request.refused"]


def test_a_canceled_order_refuses_the_request(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    Order.objects.filter(pk=order.pk).update(status="canceled", leaves_qty=0)
    assert tasks.route_request(request_id) is None
    request = RouteRequest.objects.get(pk=request_id)
    assert request.status == "refused"
    assert (
        request.last_error
        == "not_routable: Only approved orders can be routed (this one is canceled)."
    )
    order.refresh_from_db()
    assert (order.status, order.version) == ("canceled", 1)
    assert Placement.objects.count() == 0
    assert OutboxMessage.objects.count() == 0


def test_an_async_block_route_is_a_request_too(
    trader, brokers, make_order, published, django_capture_on_commit_callbacks
):
    orders = [make_order(), make_order()]
    block = block_create(user=trader, order_ids=[o.pk for o in orders])
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(trader).post(
            f"/api/v1/blocks/{block.pk}/route/",
            {"broker": None, "asynchronous": True},
            format="json",
        )
    assert response.status_code == 202, response.json()
    request = RouteRequest.objects.get()
    assert response.json() == {"queued": True, "block": block.pk, "request": request.pk}
    assert (request.order_id, request.block_id, request.broker_code) == (None, block.pk, "")
    assert published == [((request.pk,), {})]
    assert tasks.route_request(request.pk) == Placement.objects.get(block=block).pk
    assert tasks.route_request(request.pk) == Placement.objects.get(block=block).pk
    assert Block.objects.get(pk=block.pk).status == "routed"
    assert OutboxMessage.objects.count() == 1
    assert RouteRequest.objects.get().status == "done"


def test_async_route_of_an_invisible_or_unknown_order_creates_nothing(
    trader, pm, brokers, make_order, published, django_capture_on_commit_callbacks
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        unknown = client_for(trader).post(
            "/api/v1/orders/999999/route/", {"asynchronous": True}, format="json"
        )
        not_trader = _route_async(pm, order)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert not_trader.status_code == 403
    assert RouteRequest.objects.count() == 0
    assert published == []


def test_the_old_task_signatures_still_route_messages_queued_before(trader, brokers, make_order):
    order = make_order()
    assert tasks.route_order(order.pk, trader.pk, "BRKA") == Placement.objects.get().pk
    assert tasks.route_order(order.pk, trader.pk, "BRKA") is None
    assert OutboxMessage.objects.count() == 1
    assert RouteRequest.objects.count() == 0


def test_route_requests_are_read_only_in_the_admin(
    trader, pm, brokers, make_order, published, django_capture_on_commit_callbacks, client
):
    from tests import factories as f

    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        request_id = _route_async(trader, order).json()["request"]
    admin = f.UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    assert client.get("/admin/orders/routerequest/").status_code == 200
    assert client.get(f"/admin/orders/routerequest/{request_id}/change/").status_code == 200
    assert client.get("/admin/orders/routerequest/add/").status_code == 403
    assert client.post(f"/admin/orders/routerequest/{request_id}/delete/").status_code == 403
    assert RouteRequest.objects.filter(pk=request_id).exists()
    # roles: traders and administrators may view them, nobody may change them
    assert trader.has_perm("orders.view_routerequest")
    assert not trader.has_perm("orders.change_routerequest")
    client.force_login(trader)
    assert client.get("/admin/orders/routerequest/").status_code == 200
    assert not pm.has_perm("orders.view_routerequest")
    client.force_login(pm)
    assert client.get("/admin/orders/routerequest/").status_code == 403
