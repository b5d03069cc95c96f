"""Routing API: route endpoints, kill switch endpoints, FIX sessions; the error envelope."""

from __future__ import annotations

import pytest

from orders.models import Order, OutboxMessage
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_route_endpoint(trader, brokers, make_order):
    order = make_order()
    response = client_for(trader).post(f"/api/v1/orders/{order.pk}/route/", {"broker": None})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["placement"]["broker"] == "BRKA"
    assert body["placement"]["route_reason"].startswith("best execution")
    assert body["orders"] == [{"id": order.pk, "status": "pending_new", "version": 2}]
    assert OutboxMessage.objects.count() == 1


def test_route_endpoint_errors(trader, pm, brokers, make_order):
    order = make_order(status="awaiting_override")
    response = client_for(trader).post(f"/api/v1/orders/{order.pk}/route/", {"broker": "BRKA"})
    assert (response.status_code, response.json()["code"]) == (409, "not_routable")
    response = client_for(pm).post(f"/api/v1/orders/{order.pk}/route/", {})
    assert response.status_code == 403
    response = client_for(trader).post("/api/v1/orders/999999/route/", {})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_async_route_queues_a_task_after_commit(
    trader, brokers, make_order, django_capture_on_commit_callbacks, monkeypatch
):
    from orders import tasks
    from orders.models import RouteRequest

    calls = []
    monkeypatch.setattr(tasks.route_request, "delay", lambda *a: calls.append(a))
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(trader).post(
            f"/api/v1/orders/{order.pk}/route/", {"broker": "BRKC", "asynchronous": True}
        )
    assert response.status_code == 202
    request = RouteRequest.objects.get()
    assert (request.order_id, request.user_id, request.broker_code) == (order.pk, trader.pk, "BRKC")
    assert calls == [(request.pk,)]
    # the task itself routes, and a second run routes nothing more (tests/routing/test_route_requests)
    placement_id = tasks.route_request(request.pk)
    assert placement_id is not None
    assert tasks.route_request(request.pk) == placement_id
    assert Order.objects.get(pk=order.pk).status == "pending_new"
    assert OutboxMessage.objects.count() == 1


def test_kill_switch_endpoints(trader, second_trader, brokers, make_order):
    make_order()
    response = client_for(trader).post(
        "/api/v1/kill-switch/", {"scope": "account", "target": "ACC-A", "reason": "test"}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["scope"], body["target"], body["active"], body["canceled"]) == (
        "account",
        "ACC-A",
        True,
        1,
    )
    listed = client_for(trader).get("/api/v1/kill-switch/").json()
    assert [s["id"] for s in listed["results"]] == [body["id"]]
    same = client_for(trader).post(f"/api/v1/kill-switch/{body['id']}/lift/")
    assert (same.status_code, same.json()["code"]) == (403, "four_eyes")
    lifted = client_for(second_trader).post(f"/api/v1/kill-switch/{body['id']}/lift/")
    assert (lifted.status_code, lifted.json()["active"], lifted.json()["lifted_by"]) == (
        200,
        False,
        "trader_b",
    )


def test_fix_sessions_endpoint(trader, pm, brokers):
    response = client_for(trader).get("/api/v1/fix-sessions/")
    assert response.status_code == 200
    assert [s["session_key"] for s in response.json()["results"]] == [
        "FIX.4.4:OMS->BRKA",
        "FIX.4.4:OMS->BRKB",
        "FIX.4.4:OMS->BRKC",
    ]
    assert client_for(pm).get("/api/v1/fix-sessions/").status_code == 403
