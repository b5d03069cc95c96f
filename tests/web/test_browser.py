"""The browser app as people use it: real uvicorn (HTTP + websockets), real Redis, headless chromium.

Simulated: the broker. The route goes through the real API (outbox row, PendingNew); the broker's
acknowledgement and fills are ExecutionReports handed straight to the real executions service
(`execution_apply`) instead of arriving over a FIX session from the venue simulator.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.authtoken.models import Token

from orders.fix.messages import ExecReport, FixHeader
from orders.models import Order, Placement
from orders.services.executions import execution_apply
from tests import factories as f
from tests.web.conftest import in_thread, login, make_order, set_browser_password

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"


def _row(order_id: int) -> str:
    return f'.tabulator-row[data-order-id="{order_id}"]'


def _broker_reports(order_id: int, fills: list[tuple[str, str, str]]) -> None:
    """Play the broker: acknowledge the order's placement, then fill it, through the real
    executions service (orders.services.executions.execution_apply), as the FIX gateway would."""
    placement = Placement.objects.select_related("fix_session").get(order_id=order_id)
    session_key = placement.fix_session.session_key
    qty = placement.quantity

    def report(exec_id: str, exec_type: str, ord_status: str, **kw: Any) -> ExecReport:
        values: dict[str, Any] = {
            "header": FixHeader(msg_type="8"),
            "exec_id": exec_id,
            "exec_type": exec_type,
            "ord_status": ord_status,
            "order_id": f"BRK-{order_id}",
            "cl_ord_id": placement.cl_ord_id,
            "orig_cl_ord_id": None,
            "symbol": None,
            "side": "1",
            "order_qty": qty,
            "price": None,
            "last_qty": None,
            "last_px": None,
            "cum_qty": Decimal(0),
            "avg_px": Decimal(0),
            "leaves_qty": qty,
            "text": None,
            "transact_time": timezone.now(),
            "poss_dup": False,
        }
        values.update(kw)
        return ExecReport(**values)

    execution_apply(session_key=session_key, report=report(f"ACK-{order_id}", "0", "0"))
    cum, notional = Decimal(0), Decimal(0)
    for exec_id, last_qty, last_px in fills:
        cum += Decimal(last_qty)
        notional += Decimal(last_qty) * Decimal(last_px)
        execution_apply(
            session_key=session_key,
            report=report(
                exec_id,
                "F",
                "2" if cum == qty else "1",
                last_qty=Decimal(last_qty),
                last_px=Decimal(last_px),
                cum_qty=cum,
                avg_px=notional / cum,
                leaves_qty=qty - cum,
            ),
        )


def _background_book(pm: Any, account: Any, desk: Any) -> None:
    """A dozen orders in every phase, so the blotter looks like a working morning."""
    second = f.AccountFactory(code="ACC-C", desk=desk, name="Fund ACC-C")
    second.managers.add(pm)
    specs = [
        ("MSFT", "buy", "5000", "limit", "412.50", "partially_filled", "3200", "412.31"),
        ("AAPL", "sell", "1200", "limit", "228.10", "filled", "1200", "228.14"),
        ("NVDA", "buy", "800", "market", None, "working", "0", "0"),
        ("JPM", "sell_short", "2500", "limit", "241.00", "pending_new", "0", "0"),
        ("XOM", "buy", "10000", "limit", "117.25", "approved", "0", "0"),
        ("KO", "sell", "3000", "market", None, "canceled", "1000", "70.02"),
        ("PFE", "buy", "15000", "limit", "25.80", "awaiting_override", "0", "0"),
        ("TSLA", "buy_to_cover", "400", "limit", "352.00", "partially_filled", "150", "351.62"),
        ("GE", "sell", "600", "limit", "181.40", "rejected", "0", "0"),
        ("AMZN", "buy", "1500", "limit", "214.75", "filled", "1500", "214.70"),
    ]
    for n, (sym, side, qty, typ, limit, status, cum, avg) in enumerate(specs):
        make_order(
            account=account if n % 2 else second,
            instrument=f.InstrumentFactory(symbol=sym),
            created_by=pm,
            side=side,
            quantity=Decimal(qty),
            order_type=typ,
            limit_price=Decimal(limit) if limit else None,
            status=status,
            cum_qty=Decimal(cum),
            leaves_qty=Decimal(qty) - Decimal(cum),
            avg_px=Decimal(avg),
            compliance_outcome="warn" if status == "awaiting_override" else "pass",
        )


def test_trader_sees_a_pm_order_arrive_routes_it_and_watches_it_fill_live(
    page: Any, asgi_server: str, pm: Any, trader: Any, desk: Any, account: Any, instrument: Any
) -> None:
    # given: a trader on the desk of pm_a's accounts, a broker, and a morning's orders
    f.FixSessionFactory(broker=f.BrokerFactory(code="BRKA", name="Alpha Securities"))
    _background_book(pm, account, desk)
    set_browser_password(trader)
    token = Token.objects.create(user=pm).key
    login(page, trader)
    page.goto("/blotter/")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.wait_for_selector("body[data-snapshot]")
    page.evaluate("window.__sameDocument = true")

    # when: the PM enters an order through the API
    resp = httpx.post(
        asgi_server + "/api/v1/orders/",
        headers={"Authorization": f"Token {token}"},
        json={
            "account": "ACC-A",
            "instrument": "ACME",
            "side": "buy",
            "quantity": "100",
            "order_type": "limit",
            "limit_price": "100.50",
            "time_in_force": "day",
        },
    )
    created = time.monotonic()
    assert resp.status_code == 201, resp.text
    order_id = resp.json()["id"]

    # then: it appears on the blotter within a second, without polling or reload
    page.wait_for_selector(_row(order_id), timeout=1000)
    arrived = time.monotonic() - created
    assert arrived < 1.0
    assert page.get_attribute(_row(order_id), "data-status") == "approved"

    # when: the trader selects it and routes it to Alpha Securities
    page.click(_row(order_id) + ' [tabulator-field="instrument"]')
    page.select_option("#route-broker", "BRKA")
    page.click("#act-route")
    page.wait_for_selector(_row(order_id) + '[data-status="pending_new"]')

    # when: the broker acknowledges it and fills it in two pieces
    in_thread(_broker_reports, order_id, [("EX-1", "40", "100.10"), ("EX-2", "60", "100.20")])

    # then: status, cumulative quantity and average price update live, and the fills panel
    # of the selected order lists both fills
    page.wait_for_selector(_row(order_id) + '[data-status="filled"]', timeout=1000)
    cells = page.locator(_row(order_id))
    assert cells.locator('[tabulator-field="cum_qty"]').inner_text().strip() == "100"
    assert cells.locator('[tabulator-field="leaves_qty"]').inner_text().strip() == "0"
    assert cells.locator('[tabulator-field="avg_px"]').inner_text().strip() == "100.16"
    assert cells.locator('[tabulator-field="status"]').inner_text().strip() == "FILLED"
    page.wait_for_selector('#fills tr[data-exec-id="EX-2"]')
    assert page.locator("#fills tbody tr").count() == 2
    assert page.evaluate("window.__sameDocument") is True

    # when: the connection drops and the client reconnects (it refetches the snapshot)
    page.evaluate("window.blotter.feed.ws.close()")
    page.wait_for_selector('body[data-connects="2"]')
    page.wait_for_selector('#live-status[data-state="live"]')
    # then: an older version of the order is never shown over the newer one
    stale_applied = page.evaluate(
        "(id) => window.blotter.store.upsert("
        "Object.assign({}, window.blotter.store.get(id), {version: 1, status: 'approved'}))",
        order_id,
    )
    assert stale_applied is False
    assert page.get_attribute(_row(order_id), "data-status") == "filled"

    # when: a frame arrives with a seq gap (frames were lost) / then: the client refetches
    before = page.get_attribute("body", "data-snapshot")
    page.evaluate(
        "(id) => { const f = window.blotter.feed;"
        " f._message({type: 'order.updated', seq: f.seq + 3, order_id: id, version: 1, data: null}); }",
        order_id,
    )
    page.wait_for_function("(b) => document.body.dataset.snapshot !== b", arg=before)
    assert page.get_attribute(_row(order_id), "data-status") == "filled"
    assert page.evaluate("window.__sameDocument") is True
    assert page.js_errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1300)  # let the update highlight fade
    page.screenshot(path=str(SCREENSHOTS / "blotter.png"))


def test_compliance_officer_overrides_a_warned_order(
    page: Any, pm: Any, compliance_officer: Any, account: Any, instrument: Any
) -> None:
    # given: an order the compliance check warned about, awaiting an officer
    order = make_order(
        account=account,
        instrument=instrument,
        created_by=pm,
        status="awaiting_override",
        compliance_outcome="warn",
    )
    set_browser_password(compliance_officer)
    login(page, compliance_officer)
    page.goto("/blotter/")
    page.wait_for_selector(_row(order.pk) + '[data-status="awaiting_override"]')

    # when: the officer filters to what needs attention, selects it and overrides with a reason
    page.click('[data-quick-filter="attention"]')
    page.click(_row(order.pk) + ' [tabulator-field="instrument"]')
    page.click("#act-override")
    page.fill("#override-reason", "Concentration warning reviewed with the PM; within mandate.")
    page.click('#dlg-override button[value="ok"]')

    # then: the order is released to the desk, on screen and in the database
    page.wait_for_selector(_row(order.pk) + '[data-status="approved"]')
    assert page.locator("#flash").inner_text().startswith("Override: 1 order done")
    order.refresh_from_db()
    assert (order.status, order.version) == ("approved", 2)
    assert page.js_errors == []


def test_pm_sees_ticket_validation_and_the_bad_row_of_a_basket(
    page: Any, pm: Any, account: Any, instrument: Any, tmp_path: Path
) -> None:
    # given: pm_a on their page
    set_browser_password(pm)
    login(page, pm)
    page.goto("/pm/")
    page.wait_for_selector('#live-status[data-state="live"]')

    # when: a ticket with a zero quantity is submitted
    page.fill("#t-instrument", "ACME")
    page.fill("#t-quantity", "0")
    page.fill("#t-limit", "100.10")
    page.click("#t-submit")

    # then: the API's message shows next to the field, and nothing was created
    error = page.locator('[data-error-for="quantity"]')
    error.wait_for()
    page.wait_for_function(
        "document.querySelector('[data-error-for=\"quantity\"]').textContent.length > 0"
    )
    assert page.get_attribute("#t-quantity", "aria-invalid") == "true"
    assert Order.objects.count() == 0

    # when: a good order goes through the same ticket
    page.fill("#t-quantity", "250")
    page.click("#t-submit")
    page.wait_for_selector('#ticket-result:has-text("compliance")')
    first = Order.objects.get()
    page.wait_for_selector(_row(first.pk))

    # when: a basket of three rows, the second with an unknown instrument, is uploaded
    csv = tmp_path / "rebalance.csv"
    csv.write_text(
        "account,instrument,side,quantity,order_type,limit_price,stop_price,time_in_force\n"
        "ACC-A,ACME,buy,100,limit,100.00,,day\n"
        "ACC-A,NOPE,buy,100,limit,100.00,,day\n"
        "ACC-A,ACME,sell,50,market,,,day\n"
    )
    page.set_input_files("#basket-file", str(csv))
    page.click("#basket-submit")

    # then: the bad row is shown with its row number and field, and the basket created nothing
    table = page.locator('[data-testid="basket-errors"]')
    table.wait_for()
    rows = table.locator("tbody tr")
    assert rows.count() == 1
    assert rows.nth(0).locator("td").nth(0).inner_text() == "2"
    assert rows.nth(0).locator("td").nth(1).inner_text() == "instrument"
    assert "nothing was created" in page.locator("#basket-result").inner_text()
    assert Order.objects.count() == 1
    assert page.js_errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1300)  # let the new row's highlight fade
    page.screenshot(path=str(SCREENSHOTS / "ticket.png"))
