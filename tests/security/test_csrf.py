"""CSRF: session-authenticated browser forms and API writes need the token; API tokens do not.

Every client here enforces CSRF checks (Django's test client skips them by default). Each refused
request is checked to have changed nothing, and the same request with the token goes through,
so the 403 is the CSRF check and not something else.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from compliance.models import BreachReport, Rule
from orders.enums import OrderStatus
from orders.models import Order
from settlement.models import ReconBreak, SettlementRun, Statement
from tests import factories as f
from tests.security.conftest import ROLE_NAMES, World
from tests.security.test_api_matrix import MATRIX, Op, _path

pytestmark = pytest.mark.django_db

CSRF_TOKEN = "Zq3xK8mP2vR7tY1wB5nC9dF4gH6jL0sA"  # any 32 alphanumerics: the cookie's secret


def _browser(user: Any = None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.cookies["csrftoken"] = CSRF_TOKEN
    return client


def _with_token(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "csrfmiddlewaretoken": CSRF_TOKEN}


# ----------------------------------------------------------------------------- browser forms


def test_login_form_needs_the_token(pm: Any) -> None:
    for url in ("/accounts/login/", "/admin/login/"):
        client = _browser()
        creds = {"username": "pm_a", "password": f.PASSWORD}
        refused = client.post(url, creds)
        assert refused.status_code == 403
        assert "_auth_user_id" not in client.session
        accepted = client.post(url, _with_token(creds))
        assert accepted.status_code == 302
        assert client.session["_auth_user_id"] == str(pm.pk)


def test_logout_needs_the_token(pm: Any) -> None:
    client = _browser(pm)
    assert client.post("/accounts/logout/").status_code == 403
    assert client.session["_auth_user_id"] == str(pm.pk)
    assert client.post("/accounts/logout/", _with_token({})).status_code == 302
    assert "_auth_user_id" not in client.session


def test_compliance_forms_need_the_token(world: World) -> None:
    client = _browser(world.users["compliance"])
    override = f"/compliance/orders/{world.warned_a.pk}/override/"
    reports = BreachReport.objects.count()
    # without the token: refused, the order still waits and no sweep ran
    assert client.post(override, {"reason": "mandate"}).status_code == 403
    assert client.post("/compliance/reports/run/", {}).status_code == 403
    assert Order.objects.get(pk=world.warned_a.pk).status == OrderStatus.AWAITING_OVERRIDE
    assert BreachReport.objects.count() == reports
    # with it: both go through
    assert client.post(override, _with_token({"reason": "mandate"})).status_code == 302
    assert client.post("/compliance/reports/run/", _with_token({})).status_code == 302
    assert Order.objects.get(pk=world.warned_a.pk).status == OrderStatus.APPROVED
    assert BreachReport.objects.count() == reports + 1


def test_back_office_forms_need_the_token(world: World) -> None:
    client = _browser(world.users["backoffice"])
    resolve = f"/backoffice/breaks/{world.recon_break.pk}/resolve/"
    source = world.extra["settled_account"].custodian.code

    def statement() -> dict[str, Any]:
        content = (
            b"account,instrument,trade_date,side,quantity,price\nACC-S,ACME,2026-11-19,buy,10,100\n"
        )
        return {"file": SimpleUploadedFile("s.csv", content), "source": source}

    counts = (SettlementRun.objects.count(), Statement.objects.count())
    assert client.post("/backoffice/runs/", {"trade_date": "2026-11-20"}).status_code == 403
    assert client.post("/backoffice/statements/", statement()).status_code == 403
    assert client.post(resolve, {"comment": "late booking"}).status_code == 403
    assert (SettlementRun.objects.count(), Statement.objects.count()) == counts
    assert ReconBreak.objects.get(pk=world.recon_break.pk).status == "open"

    assert (
        client.post("/backoffice/runs/", _with_token({"trade_date": "2026-11-20"})).status_code
        == 302
    )
    assert client.post("/backoffice/statements/", _with_token(statement())).status_code == 302
    assert client.post(resolve, _with_token({"comment": "late booking"})).status_code == 302
    assert (SettlementRun.objects.count(), Statement.objects.count()) == (
        counts[0] + 1,
        counts[1] + 1,
    )
    assert ReconBreak.objects.get(pk=world.recon_break.pk).status == "resolved"


def test_admin_forms_need_the_token(world: World) -> None:
    client = _browser(world.users["compliance"])
    url = f"/admin/compliance/rule/{world.rule.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    form = {
        "name": "size check",
        "rule_type": "fat_finger",
        "severity": "block",
        "scope": "firm",
        "params": '{"max_quantity": "1000000"}',
        "active": "on",
        "effective_from": "",
        "effective_to": "",
    }
    assert client.post(url, form).status_code == 403
    assert Rule.objects.get(pk=world.rule.pk).severity == "warn"
    assert client.post("/admin/compliance/rule/add/", {**form, "name": "new"}).status_code == 403
    assert not Rule.objects.filter(name="new").exists()
    changed = client.post(url, _with_token(form))
    assert changed.status_code == 302, changed.content.decode()[:2000]
    assert Rule.objects.get(pk=world.rule.pk).severity == "block"


# ------------------------------------------------------------------------------------- the API

UNSAFE = [op for op in MATRIX if op.method != "GET" and op.route != "api/v1/auth/token/"]


def _allowed_role(op: Op) -> tuple[str, int]:
    for role, code in zip(ROLE_NAMES, op.codes.split(), strict=True):
        if code.startswith("2"):
            return role, int(code)
    raise AssertionError(f"{op.id}: no role may call it")


def _send(client: Client, op: Op, world: World, **extra: Any) -> Any:
    body = op.body(world) if op.body else {}
    path = _path(op, op.own, world)
    atomic = transaction.atomic()
    atomic._from_testcase = True  # type: ignore[attr-defined]
    with atomic:
        send = getattr(client, op.method.lower())
        if isinstance(client, APIClient):
            response = send(path, body, format="multipart" if op.multipart else "json", **extra)
        elif op.multipart:
            response = send(path, body, **extra)
        else:
            response = send(path, body, content_type="application/json", **extra)
        transaction.set_rollback(True)
    return response


@pytest.mark.parametrize("op", UNSAFE, ids=lambda op: op.id)
def test_api_writes_with_a_session_need_the_token_and_with_a_token_do_not(
    op: Op, world: World
) -> None:
    role, allowed = _allowed_role(op)
    user = world.users[role]
    # a browser session without the CSRF header: refused before the view runs
    refused = _send(_browser(user), op, world)
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")
    assert refused.json()["detail"] == "CSRF Failed: CSRF token missing."
    # the same session with the header (as the pages' fetch() sends it): allowed
    assert _send(_browser(user), op, world, HTTP_X_CSRFTOKEN=CSRF_TOKEN).status_code == allowed
    # an API token, no CSRF at all: allowed
    token = Token.objects.create(user=user)
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert _send(client, op, world).status_code == allowed
