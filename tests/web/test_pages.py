"""Server-rendered pages: login required, role-aware navigation, what each page offers."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests import factories as f

NAV = ("nav-blotter", "nav-pm", "nav-compliance", "nav-backoffice")


def _client(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _nav(html: str) -> set[str]:
    return {name for name in NAV if f'data-testid="{name}"' in html}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/blotter/", "/pm/"])
def test_pages_send_anonymous_users_to_the_login_page(path: str) -> None:
    # when
    resp = Client().get(path)
    # then
    assert resp.status_code == 302
    assert resp["Location"] == f"/accounts/login/?next={path}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "blotter", "pm_page", "nav"),
    [
        ("pm", 403, 200, {"nav-pm"}),
        ("trader", 200, 403, {"nav-blotter"}),
        ("compliance_officer", 200, 403, {"nav-blotter", "nav-compliance"}),
        ("backoffice", 200, 403, {"nav-blotter", "nav-backoffice"}),
        ("administrator", 200, 200, {"nav-blotter", "nav-backoffice"}),
    ],
)
def test_each_role_reaches_its_pages_and_sees_only_its_links(
    request: pytest.FixtureRequest, who: str, blotter: int, pm_page: int, nav: set[str]
) -> None:
    # given
    client = _client(request.getfixturevalue(who))
    # when
    got_blotter = client.get("/blotter/")
    got_pm = client.get("/pm/")
    # then
    assert (got_blotter.status_code, got_pm.status_code) == (blotter, pm_page)
    assert _nav(got_blotter.content.decode()) == nav


@pytest.mark.django_db
def test_blotter_offers_trading_actions_to_traders_and_override_to_compliance(
    trader: Any, compliance_officer: Any, desk: Any
) -> None:
    # given: one active broker
    f.BrokerFactory(code="BRKA", name="Broker A")
    # when
    trader_html = _client(trader).get("/blotter/").content.decode()
    compliance_html = _client(compliance_officer).get("/blotter/").content.decode()
    # then
    for action in ('id="act-block"', 'id="act-route"', 'id="act-amend"', 'id="act-cancel"'):
        assert action in trader_html
        assert action not in compliance_html
    assert 'id="act-kill"' in trader_html
    assert '<option value="BRKA" title="Broker A">BRKA · Broker A</option>' in trader_html
    assert '<option value="EQ">EQ · Desk EQ</option>' in trader_html
    assert 'id="act-override"' in compliance_html
    assert 'id="act-override"' not in trader_html
    assert "vendor/tabulator/tabulator.min.js" in trader_html
    assert "csrftoken" in _client(trader).get("/blotter/").cookies


@pytest.mark.django_db
def test_pm_ticket_lists_only_the_pms_own_accounts(
    pm: Any, account: Any, other_account: Any
) -> None:
    # when
    html = _client(pm).get("/pm/").content.decode()
    # then
    assert '<option value="ACC-A">' in html
    assert "ACC-B" not in html
