"""The blotter on the real FIX path: the trader routes in the browser, the gateway sends the order
over a FIX session to the venue simulator, and the venue's fills arrive live on the page."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from orders.models import Execution, Order
from tests.routing import conftest as routing_fixtures
from tests.web.conftest import login, make_order, set_browser_password

pytestmark = [pytest.mark.browser, pytest.mark.fix, pytest.mark.django_db(transaction=True)]

# The routing suite's fixtures: three brokers with FIX sessions, and simulator + gateway runner.
brokers = routing_fixtures.brokers
make_fix_env = routing_fixtures.make_fix_env


def _row(order_id: int) -> str:
    return f'.tabulator-row[data-order-id="{order_id}"]'


def test_trader_routes_over_fix_and_watches_the_venue_fill_it_live(
    page: Any,
    asgi_server: str,
    pm: Any,
    trader: Any,
    desk: Any,
    account: Any,
    instrument: Any,
    request: pytest.FixtureRequest,
) -> None:
    # given: the venue simulator (fills in slices of 60) and the gateway logged on over TCP,
    # and an approved market buy of 100 ACME on the trader's blotter
    env = request.getfixturevalue("make_fix_env")(slice_qty=Decimal(60), slice_interval_ms=100.0)
    ask = env.simulator.quote("BRKA", "ACME").ask
    order = make_order(
        account=account, instrument=instrument, created_by=pm, order_type="market", limit_price=None
    )
    set_browser_password(trader)
    login(page, trader)
    page.goto("/blotter/")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.wait_for_selector(_row(order.pk))

    # when: the trader selects it and routes it to BRKA
    page.click(_row(order.pk) + ' [tabulator-field="instrument"]')
    page.select_option("#route-broker", "BRKA")
    page.click("#act-route")

    # then: the venue's two slices fill it, and the page shows it live without a reload
    page.wait_for_selector(_row(order.pk) + '[data-status="filled"]', timeout=15000)
    cells = page.locator(_row(order.pk))
    assert cells.locator('[tabulator-field="cum_qty"]').inner_text().strip() == "100"
    assert cells.locator('[tabulator-field="leaves_qty"]').inner_text().strip() == "0"
    assert cells.locator('[tabulator-field="avg_px"]').inner_text().strip() == f"{ask:.2f}"
    fills = Execution.objects.filter(order=order, last_qty__gt=0).order_by("pk")
    assert [e.last_qty for e in fills] == [Decimal(60), Decimal(40)]
    page.wait_for_function("() => document.querySelectorAll('#fills tbody tr').length >= 2")
    stored = Order.objects.get(pk=order.pk)
    assert (stored.status, stored.cum_qty, stored.avg_px) == ("filled", Decimal(100), ask)
    assert page.js_errors == []
