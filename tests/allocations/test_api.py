"""The book's API × roles: PMs see their accounts, traders their desk's, back office all."""

from __future__ import annotations

from decimal import Decimal

import pytest

from allocations.models import Allocation
from orders.models import Execution
from tests import factories as f
from tests.allocations.support import (
    TRADE_DATE,
    fill,
    make_block,
    make_lone_order,
    make_order_placement,
)
from tests.conftest import client_for

D = Decimal


@pytest.fixture
def book(account, other_account, instrument, broker, trader, pm_other):
    """ACC-A (pm_a, trader_a's desk) and ACC-B (pm_b, other desk) each bought 100 ACME at 10."""
    block_a, orders_a, placement_a = make_block(
        instrument=instrument, accounts=[account], quantities=[100], user=trader, broker=broker
    )
    fill(placement_a, 100, "10.00")
    block_b, orders_b, placement_b = make_block(
        instrument=instrument,
        accounts=[other_account],
        quantities=[100],
        user=trader,
        broker=broker,
    )
    fill(placement_b, 100, "10.00")
    return {"a": (block_a, orders_a[0]), "b": (block_b, orders_b[0])}


def _codes(response, key="account"):
    assert response.status_code == 200, response.content
    return sorted({row[key] for row in response.json()["results"]})


def test_accounts_with_cash_and_nav(book, pm):
    # when pm_a lists accounts
    body = client_for(pm).get("/api/v1/accounts/").json()
    # then only ACC-A, with cash (1,000,000 − 1,005.05 pending) and NAV = cash + 100 × 100.00
    assert body["count"] == 1
    row = body["results"][0]
    assert row["code"] == "ACC-A"
    assert row["cash"] == [{"currency": "USD", "settled": "1000000.00", "pending": "-1005.05"}]
    assert D(row["nav"]) == D("1000000.00") - D("1005.05") + D("10000")


@pytest.mark.parametrize(
    "who, expected",
    [
        ("pm", ["ACC-A"]),
        ("pm_other", ["ACC-B"]),
        ("trader", ["ACC-A"]),
        ("backoffice", ["ACC-A", "ACC-B"]),
        ("compliance_officer", ["ACC-A", "ACC-B"]),
    ],
)
def test_lists_are_entitlement_scoped(book, request, who, expected):
    client = client_for(request.getfixturevalue(who))
    assert _codes(client.get("/api/v1/positions/")) == expected
    assert _codes(client.get("/api/v1/cash/")) == expected
    assert _codes(client.get("/api/v1/allocations/")) == expected
    assert _codes(client.get("/api/v1/accounts/"), key="code") == expected
    executions = client.get("/api/v1/executions/").json()["results"]
    blocks = {"ACC-A": book["a"][0].pk, "ACC-B": book["b"][0].pk}
    assert sorted(e["block"] for e in executions) == sorted(blocks[c] for c in expected)


def test_invisible_rows_are_404(book, pm):
    client = client_for(pm)
    theirs = Allocation.objects.get(account__code="ACC-B")
    mine = Allocation.objects.get(account__code="ACC-A")
    assert client.get(f"/api/v1/allocations/{theirs.pk}/").status_code == 404
    assert client.get(f"/api/v1/allocations/{mine.pk}/").status_code == 200
    assert client.get("/api/v1/accounts/ACC-B/").status_code == 404
    assert client.get("/api/v1/accounts/ACC-A/").status_code == 200
    assert client.get(f"/api/v1/executions/{theirs.execution_id}/").status_code == 404
    assert client.get(f"/api/v1/executions/{mine.execution_id}/").status_code == 200


def test_filters(book, backoffice):
    client = client_for(backoffice)
    assert _codes(client.get("/api/v1/positions/?account=ACC-B")) == ["ACC-B"]
    assert _codes(client.get("/api/v1/cash/?account=ACC-A")) == ["ACC-A"]
    assert (
        client.get("/api/v1/allocations/?account=ACC-A&trade_date=2026-11-20").json()["count"] == 1
    )
    assert client.get("/api/v1/allocations/?trade_date=2026-11-19").json()["count"] == 0
    block_a, order_a = book["a"]
    assert client.get(f"/api/v1/executions/?block={block_a.pk}").json()["count"] == 1
    assert client.get(f"/api/v1/executions/?order={order_a.pk}").json()["count"] == 1
    position = client.get("/api/v1/positions/?account=ACC-A").json()["results"][0]
    assert (position["quantity"], position["avg_cost"], position["market_value"]) == (
        "100.00000000",
        "10.00000000",
        "10000.00000000",
    )
    assert D(position["unrealised_pnl"]) == D("9000")


def test_reallocate_api_roles_and_errors(book, account, instrument, broker, trader, pm, backoffice):
    # given a block of two ACC-A orders (on trader_a's desk) filled 100
    acc2 = f.AccountFactory(code="ACC-A2", desk=account.desk)
    block, (_o1, _o2), placement = make_block(
        instrument=instrument,
        accounts=[account, acc2],
        quantities=[100, 100],
        user=trader,
        broker=broker,
    )
    fill(placement, 100, "10.00")
    url = "/api/v1/allocations/reallocate/"
    body = {"block": block.pk, "method": "manual", "quantities": {"ACC-A": "0", "ACC-A2": "100"}}
    # a PM may not
    assert client_for(pm).post(url, body, format="json").status_code == 403
    # a bad body is 400 in the envelope
    bad = client_for(trader).post(url, {"block": block.pk, "method": "manual"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    wrong = client_for(trader).post(
        url, {**body, "quantities": {"ACC-A": "100", "ACC-A2": "100"}}, format="json"
    )
    assert wrong.status_code == 400 and "does not equal" in wrong.json()["detail"]
    # the trader may
    ok = client_for(trader).post(url, body, format="json")
    assert ok.status_code == 200, ok.content
    assert [(r["account"], r["kind"], r["quantity"]) for r in ok.json()["allocations"]] == [
        ("ACC-A", "reversal", "-50.00000000"),
        ("ACC-A2", "fill", "50.00000000"),
    ]
    # back office too (by execution), and an invisible block is 404 for a trader of another desk
    execution = placement.executions.get()
    back = client_for(backoffice).post(
        url, {"execution": execution.pk, "method": "pro_rata"}, format="json"
    )
    assert back.status_code == 200 and back.json()["block"] == block.pk


def test_schema_builds(backoffice):
    response = client_for(backoffice).get("/api/schema/")
    assert response.status_code == 200
    text = response.content.decode()
    for path in (
        "/api/v1/accounts/",
        "/api/v1/allocations/reallocate/",
        "/api/v1/positions/",
        "/api/v1/cash/",
        "/api/v1/executions/",
    ):
        assert path in text


def test_list_query_counts_do_not_grow_with_rows(
    book, backoffice, desk, instrument, broker, trader
):
    # given more accounts with positions, cash and allocations
    client = client_for(backoffice)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx.captured_queries)

    urls = [
        "/api/v1/accounts/",
        "/api/v1/positions/",
        "/api/v1/cash/",
        "/api/v1/allocations/",
        "/api/v1/executions/",
    ]
    count(urls[0])  # the user's roles are read once, then cached on the user
    before = [count(u) for u in urls]
    more = [f.AccountFactory(code=f"MORE{i}", desk=desk) for i in range(6)]
    _, _, placement = make_block(
        instrument=instrument, accounts=more, quantities=[10] * 6, user=trader, broker=broker
    )
    fill(placement, 60, "10.00")
    # then each list costs the same number of queries
    assert [count(u) for u in urls] == before


def test_executions_by_each_link_to_orders_and_blocks(
    account, other_account, instrument, broker, trader, pm, pm_other, backoffice
):
    """An execution belongs to an order or block directly or through its placement: the list,
    `?order=` and `?block=` find it by each of the four links, newest first, entitled only."""
    block, (in_block_a, in_block_b), block_placement = make_block(
        instrument=instrument,
        accounts=[account, other_account],
        quantities=[100, 100],
        user=trader,
        broker=broker,
    )
    single_a = make_order_placement(
        order=make_lone_order(account=account, instrument=instrument, user=trader), broker=broker
    )
    single_b = make_order_placement(
        order=make_lone_order(account=other_account, instrument=instrument, user=trader),
        broker=broker,
    )

    def execution(**links):
        return Execution.objects.create(
            session_key="TEST",
            exec_id=f"LINK-{Execution.objects.count()}",
            broker=broker,
            instrument=instrument,
            side="buy",
            exec_type="trade",
            last_qty=D(1),
            last_px=D(10),
            trade_date=TRADE_DATE,
            **links,
        ).pk

    by_order = execution(order=single_a.order)
    by_order_placement = execution(placement=single_a)
    by_block = execution(block=block)
    by_block_placement = execution(placement=block_placement)
    other_order = execution(placement=single_b)
    unlinked = execution()

    def ids(user, query=""):
        response = client_for(user).get(f"/api/v1/executions/{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    everything = [unlinked, other_order, by_block_placement, by_block, by_order_placement, by_order]
    assert ids(backoffice) == everything
    assert ids(pm) == [by_block_placement, by_block, by_order_placement, by_order]
    assert ids(pm_other) == [other_order, by_block_placement, by_block]
    # a day's fills are checked row by row (executions_visible_to(few=True)): the same rows
    day = f"?trade_date={TRADE_DATE.isoformat()}"
    assert ids(backoffice, day) == everything
    assert ids(pm, day) == [by_block_placement, by_block, by_order_placement, by_order]
    assert ids(pm_other, day) == [other_order, by_block_placement, by_block]
    for user in (backoffice, pm):
        assert ids(user, f"?order={single_a.order_id}") == [by_order_placement, by_order]
        assert ids(user, f"?order={in_block_a.pk}") == [by_block_placement, by_block]
        assert ids(user, f"?block={block.pk}") == [by_block_placement, by_block]
    assert ids(pm_other, f"?order={single_a.order_id}") == []
    assert ids(pm_other, f"?order={in_block_b.pk}") == [by_block_placement, by_block]
    assert ids(pm, f"?order={single_b.order_id}") == []
    assert ids(backoffice, f"?order={single_b.order_id}") == [other_order]
    assert ids(backoffice, "?order=999999999") == []
