"""Role × page matrix over every browser page (the server-rendered side of the site).

Like the API matrix: every URL pattern outside api/ and the Django admin's own pages must have an
entry, and each role gets exactly the listed status (302 is the login redirect for anonymous
users, or a form's redirect back to its page). Codes in the order anonymous, user without role,
PM, trader, compliance, back office, administrator.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client

from tests.security.conftest import ROLE_NAMES, World
from tests.security.test_api_matrix import _PARAM, _value, _walk

pytestmark = pytest.mark.django_db

PAGES: list[tuple[str, str, str, str | None, Any]] = [
    # (method, route, codes, row filling the route's parameter, form body)
    ("GET", "", "302 200 302 302 302 302 200", None, None),
    ("GET", "accounts/login/", "200 302 302 302 302 302 302", None, None),
    ("POST", "accounts/logout/", "302 302 302 302 302 302 302", None, {}),
    ("GET", "healthz/", "200 200 200 200 200 200 200", None, None),
    ("GET", "admin/login/", "200 302 302 302 302 302 302", None, None),
    ("GET", "admin/", "302 302 200 200 200 200 200", None, None),
    ("GET", "blotter/", "302 403 403 200 200 200 200", None, None),
    ("GET", "pm/", "302 403 200 403 403 403 200", None, None),
    ("GET", "compliance/", "302 403 403 403 200 403 403", None, None),
    (
        "POST",
        "compliance/orders/<int:pk>/override/",
        "302 403 403 403 302 403 403",
        "warned_a",
        {"reason": "mandate"},
    ),
    ("POST", "compliance/reports/run/", "302 403 403 403 302 403 403", None, {}),
    (
        "GET",
        "compliance/reports/<int:pk>/download/",
        "302 403 403 403 200 200 200",
        "breach_report",
        None,
    ),
    ("GET", "backoffice/", "302 403 403 403 403 200 200", None, None),
    ("POST", "backoffice/runs/", "302 403 403 403 403 302 302", None, {"trade_date": "2026-11-20"}),
    ("POST", "backoffice/statements/", "302 403 403 403 403 302 302", None, "statement"),
    (
        "POST",
        "backoffice/breaks/<int:pk>/resolve/",
        "302 403 403 403 403 302 302",
        "recon_break",
        {"comment": "late booking"},
    ),
    ("GET", "reports/<slug:name>/", "302 403 403 403 200 200 200", "positions", None),
]


def _page_routes() -> set[str]:
    from django.urls import get_resolver

    routes = set()
    for route, _callback in _walk(get_resolver().url_patterns):
        if route.startswith("api/") or (route.startswith("admin/") and route != "admin/login/"):
            continue
        routes.add(route)
    return routes | {"admin/"}


def test_every_page_is_in_the_matrix() -> None:
    assert sorted(_page_routes() - {p[1] for p in PAGES}) == []
    assert sorted({p[1] for p in PAGES} - _page_routes()) == []


def _body(world: World, body: Any) -> Any:
    if body == "statement":
        content = (
            b"account,instrument,trade_date,side,quantity,price\nACC-S,ACME,2026-11-19,buy,10,100\n"
        )
        return {
            "file": SimpleUploadedFile("s.csv", content),
            "source": world.extra["settled_account"].custodian.code,
        }
    return body


@pytest.mark.parametrize(
    "method, route, codes, target, body", PAGES, ids=[f"{p[0]} /{p[1]}" for p in PAGES]
)
def test_page_matrix(
    world: World, method: str, route: str, codes: str, target: str | None, body: Any
) -> None:
    path = "/" + (_PARAM.sub(lambda _m: _value(world, target), route) if target else route)
    got = []
    for role in ROLE_NAMES:
        client = Client()
        if world.users[role] is not None:
            client.force_login(world.users[role])
        atomic = transaction.atomic()
        atomic._from_testcase = True  # type: ignore[attr-defined]
        with atomic:
            if method == "GET":
                response = client.get(path)
            else:
                response = client.post(path, _body(world, body))
            transaction.set_rollback(True)
        if (
            role == "anonymous"
            and response.status_code == 302
            and route not in ("accounts/logout/",)
        ):
            assert response["Location"].startswith(("/accounts/login/", "/admin/login/")), path
        got.append(str(response.status_code))
    assert " ".join(got) == codes, dict(zip(ROLE_NAMES, got, strict=True))
