"""The order list (GET /api/v1/orders/): DRF's rendering, a fixed number of queries, each
visible order once."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db.models import Prefetch

from compliance.models import ComplianceResult, Rule
from oms_site import roles
from orders.api import views
from orders.api.serializers import OrderSerializer
from orders.models import Order
from orders.services.orders import order_amend
from tests import factories as f
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def rules(db: Any) -> None:
    Rule.objects.create(name="Buying power", rule_type="buying_power", severity="block")
    Rule.objects.create(
        name="Fat finger",
        rule_type="fat_finger",
        severity="warn",
        params={"max_quantity": "50", "max_notional": "12345.67"},
    )


def _drf_page(pks: list[int]) -> list[dict[str, Any]]:
    """What DRF's own list rendered: OrderSerializer(many=True) over the prefetched orders."""
    orders = (
        Order.objects.filter(pk__in=pks)
        .select_related("account", "instrument", "created_by")
        .prefetch_related(
            Prefetch("compliance_results", queryset=ComplianceResult.objects.order_by("pk"))
        )
        .order_by("-id")
    )
    return json.loads(json.dumps(OrderSerializer(orders, many=True).data))


def test_the_list_renders_what_drfs_serializer_renders(
    rules: None, make_order: Any, pm: Any
) -> None:
    # given orders of several shapes, one of them amended (two checks, two sets of results)
    made = [
        make_order(),
        make_order(quantity="70", client_order_id="c-1"),
        make_order(side="sell", order_type="market", limit_price=None),
    ]
    order_amend(user=pm, order_id=made[0].pk, version=made[0].version, quantity="60")
    # when
    response = client_for(pm).get("/api/v1/orders/")
    # then the page is DRF's rendering of the same orders, newest first, byte for byte
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert body["results"] == _drf_page([o.pk for o in made])
    assert [o["id"] for o in body["results"]] == sorted((o.pk for o in made), reverse=True)
    assert len(body["results"][2]["compliance"]["results"]) == 4  # both checks of the amended
    assert (
        response.content
        == json.dumps(
            {
                "count": 3,
                "next": None,
                "previous": None,
                "results": _drf_page([o.pk for o in made]),
            },
            separators=(",", ":"),
        ).encode()
    )


def test_the_list_costs_the_same_queries_whatever_the_page_holds(
    rules: None, make_order: Any, pm: Any, django_assert_num_queries: Any
) -> None:
    client = client_for(pm)
    # given two orders with their results: count, page, results (force_authenticate: no token)
    make_order()
    make_order(quantity="70")
    with django_assert_num_queries(3):
        small = client.get("/api/v1/orders/")
    # and given a full page of 50 (of 60) orders, with 120 results
    for _ in range(58):
        make_order()
    with django_assert_num_queries(3):
        full = client.get("/api/v1/orders/")
    assert (small.json()["count"], len(small.json()["results"])) == (2, 2)
    assert (full.json()["count"], len(full.json()["results"])) == (60, 50)
    assert sum(len(o["compliance"]["results"]) for o in full.json()["results"]) == 100


def test_an_order_seen_through_several_entitlements_is_listed_once(
    rules: None, make_order: Any, pm: Any, pm_other: Any, trader: Any, account: Any
) -> None:
    # given pm_a's account also managed by pm_b, and a user who manages it and trades its desk
    account.managers.add(pm_other)
    both: Any = f.UserFactory(username="pm_trader", role=roles.PM)
    both.groups.add(Group.objects.get(name=roles.TRADER))
    account.managers.add(both)
    account.desk.traders.add(both)
    made = [make_order(), make_order()]
    ids = sorted((o.pk for o in made), reverse=True)
    # when / then each of them sees each order once
    for user in (pm, pm_other, trader, both):
        body = client_for(user).get("/api/v1/orders/").json()
        assert (body["count"], [o["id"] for o in body["results"]]) == (2, ids)


def test_the_collector_is_paused_while_the_page_is_built_and_resumed_after(
    rules: None, make_order: Any, pm: Any, monkeypatch: Any
) -> None:
    # given: an order, and the step that attaches the page's results watched
    make_order()
    seen: list[bool] = []
    attach = views.compliance_results_attach

    def watched(orders: Any) -> None:
        seen.append(gc.isenabled())
        attach(orders)

    monkeypatch.setattr(views, "compliance_results_attach", watched)
    assert gc.isenabled()
    # when
    response = client_for(pm).get("/api/v1/orders/")
    # then: the page was built with the collector paused, and it runs again afterwards
    assert response.status_code == 200
    assert seen == [False]
    assert gc.isenabled()
