"""Role × endpoint matrix over every API operation, enumerated from the URL resolver.

`MATRIX` is the expected-access table: for every (method, route) of the API the exact status each
role gets, in the order anonymous, user without role, PM, trader, compliance, back office,
administrator. Requests by allowed roles carry a valid body, so an allowed role gets its 2xx and
nothing else. Each request runs in a savepoint that is rolled back, so every role meets the same
rows. An operation that the URL resolver knows and the table does not (a new endpoint) fails
`test_every_api_operation_is_in_the_matrix`.

Where the route targets a row, `own` names an ACC-A row of the world (visible to pm_a and
trader_a) and `foreign` the same kind of ACC-B row: on it, pm_a and trader_a must get 404 (or the
403 their role already gets) and no data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from tests import factories as f
from tests.security.conftest import ROLE_NAMES, World

pytestmark = pytest.mark.django_db

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            found += _walk(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            found.append((route, p.callback))
    return found


def api_operations() -> set[tuple[str, str]]:
    """Every (METHOD, route) the URL resolver serves under api/ (DRF views' own handlers)."""
    ops: set[tuple[str, str]] = set()
    for route, callback in _walk(get_resolver().url_patterns):
        if not route.startswith("api/"):
            continue
        cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
        assert cls is not None, f"{route}: not a class-based view"
        for method in HTTP_METHODS:
            if hasattr(cls, method):
                ops.add((method.upper(), route))
    return ops


def _statement() -> dict[str, Any]:
    content = (
        b"account,instrument,trade_date,side,quantity,price\nACC-S,ACME,2026-11-19,buy,7,100\n"
    )
    return {"file": SimpleUploadedFile("s.csv", content, content_type="text/csv"), "source": ""}


@dataclass(frozen=True)
class Op:
    method: str
    route: str
    codes: str  # anonymous, norole, pm, trader, compliance, backoffice, admin
    own: str | None = None  # world attribute filling the route's parameter
    foreign: str | None = None  # the same kind of row of ACC-B (pm_a and trader_a: 404)
    body: Callable[[World], Any] | None = None
    foreign_body: Callable[[World], Any] | None = None  # the body naming ACC-B's rows
    multipart: bool = False
    # A foreign row named in the body is refused like a row that does not exist: 400 "unknown".
    foreign_code: str = "404"

    @property
    def id(self) -> str:
        return f"{self.method} {self.route.removeprefix('api/v1/')}"


def _order_row(account: str) -> dict[str, Any]:
    return {
        "account": account,
        "instrument": "ACME",
        "side": "buy",
        "quantity": "10",
        "order_type": "limit",
        "limit_price": "100.00",
        "time_in_force": "day",
    }


ALL_200 = "200 200 200 200 200 200 200"
AUTH_200 = "401 200 200 200 200 200 200"
AUTH_ROW = "401 404 200 200 200 200 200"
V1 = "api/v1/"

MATRIX: list[Op] = [
    Op(
        "POST",
        V1 + "auth/token/",
        ALL_200,
        body=lambda w: {"username": "pm_a", "password": f.PASSWORD},
    ),
    Op("GET", V1 + "instruments/", AUTH_200),
    Op("GET", V1 + "orders/", AUTH_200),
    Op(
        "POST",
        V1 + "orders/",
        "401 403 201 403 403 403 403",
        body=lambda w: _order_row("ACC-A"),
        foreign_body=lambda w: _order_row("ACC-B"),
        foreign_code="400",
    ),
    Op("GET", V1 + "orders/<int:pk>/", AUTH_ROW, own="order_a", foreign="order_b"),
    Op(
        "POST",
        V1 + "orders/<int:pk>/amend/",
        "401 403 200 200 403 403 403",
        own="order_a",
        foreign="order_b",
        body=lambda w: {"quantity": "50", "version": w.order_a.version},
        foreign_body=lambda w: {"quantity": "50", "version": w.order_b.version},
    ),
    Op(
        "POST",
        V1 + "orders/<int:pk>/cancel/",
        "401 403 200 200 403 403 403",
        own="order_a",
        foreign="order_b",
    ),
    Op(
        "POST",
        V1 + "orders/<int:pk>/override/",
        "401 403 403 403 200 403 403",
        own="warned_a",
        body=lambda w: {"reason": "mandate allows it"},
    ),
    Op(
        "POST",
        V1 + "orders/<int:pk>/route/",
        "401 403 403 201 403 403 403",
        own="order_a",
        foreign="order_b",
        body=lambda w: {"broker": "GS"},
    ),
    Op(
        "POST",
        V1 + "baskets/",
        "401 403 201 403 403 403 403",
        body=lambda w: {"orders": [_order_row("ACC-A")]},
        foreign_body=lambda w: {"orders": [_order_row("ACC-B")]},
        foreign_code="400",
    ),
    Op("GET", V1 + "blocks/", AUTH_200),
    Op(
        "POST",
        V1 + "blocks/",
        "401 403 403 201 403 403 403",
        body=lambda w: {"orders": [w.order_a.pk, w.extra["order_a2"].pk]},
        foreign_body=lambda w: {"orders": [w.order_b.pk, w.extra["order_b2"].pk]},
        foreign_code="400",
    ),
    Op(
        "POST",
        V1 + "blocks/<int:pk>/dissolve/",
        "401 403 403 200 403 403 403",
        own="block_a",
        foreign="block_b",
    ),
    Op(
        "POST",
        V1 + "blocks/<int:pk>/route/",
        "401 403 403 201 403 403 403",
        own="block_a",
        foreign="block_b",
        body=lambda w: {"broker": "GS"},
    ),
    Op("GET", V1 + "kill-switch/", "401 403 403 200 200 403 200"),
    Op(
        "POST",
        V1 + "kill-switch/",
        "401 403 403 201 403 403 201",
        body=lambda w: {"scope": "account", "target": "ACC-A", "reason": "drill"},
    ),
    Op(
        "POST",
        V1 + "kill-switch/<int:pk>/lift/",
        "401 403 403 200 403 403 200",
        own="kill_switch",
    ),
    Op("GET", V1 + "fix-sessions/", "401 403 403 200 403 403 200"),
    Op("GET", V1 + "accounts/", AUTH_200),
    Op("GET", V1 + "accounts/<str:code>/", AUTH_ROW, own="account_a", foreign="account_b"),
    Op("GET", V1 + "executions/", AUTH_200),
    Op("GET", V1 + "executions/<int:pk>/", AUTH_ROW, own="execution_a", foreign="execution_b"),
    Op("GET", V1 + "allocations/", AUTH_200),
    Op(
        "POST",
        V1 + "allocations/reallocate/",
        "401 403 403 200 403 200 403",
        body=lambda w: {"block": w.filled_block_a.pk, "method": "pro_rata"},
        foreign_body=lambda w: {"block": w.filled_block_b.pk, "method": "pro_rata"},
    ),
    Op("GET", V1 + "allocations/<int:pk>/", AUTH_ROW, own="allocation_a", foreign="allocation_b"),
    Op("GET", V1 + "positions/", AUTH_200),
    Op("GET", V1 + "cash/", AUTH_200),
    Op("GET", V1 + "compliance/queue/", "401 403 403 403 200 403 403"),
    Op("GET", V1 + "compliance/reports/", "401 403 403 403 200 200 200"),
    Op(
        "POST",
        V1 + "compliance/reports/",
        "401 403 403 403 201 403 201",
        body=lambda w: {"as_of": "2026-11-20"},
    ),
    Op(
        "GET",
        V1 + "compliance/reports/<int:pk>/",
        "401 403 403 403 200 200 200",
        own="breach_report",
    ),
    Op(
        "GET",
        V1 + "compliance/reports/<int:pk>/download/",
        "401 403 403 403 200 200 200",
        own="breach_report",
    ),
    Op("GET", V1 + "compliance/rules/", "401 403 200 200 200 200 200"),
    Op(
        "POST",
        V1 + "compliance/rules/",
        "401 403 403 403 201 403 403",
        body=lambda w: {
            "name": "big orders",
            "rule_type": "fat_finger",
            "severity": "warn",
            "params": {"max_quantity": "5000"},
        },
    ),
    Op("GET", V1 + "compliance/rules/<int:pk>/", "401 403 200 200 200 200 200", own="rule"),
    Op(
        "PATCH",
        V1 + "compliance/rules/<int:pk>/",
        "401 403 403 403 200 403 403",
        own="rule",
        body=lambda w: {"active": False},
    ),
    Op("GET", V1 + "settlement/runs/", "401 403 403 403 403 200 200"),
    Op(
        "POST",
        V1 + "settlement/runs/",
        "401 403 403 403 403 201 201",
        body=lambda w: {"trade_date": "2026-11-20"},
    ),
    Op("GET", V1 + "settlement/files/", "401 403 403 403 200 200 200"),
    Op(
        "GET",
        V1 + "settlement/files/<int:pk>/",
        "401 403 403 403 200 200 200",
        own="settlement_file",
    ),
    Op(
        "GET",
        V1 + "settlement/files/<int:pk>/download/",
        "401 403 403 403 200 200 200",
        own="settlement_file",
    ),
    Op("GET", V1 + "reconciliation/statements/", "401 403 403 403 403 200 200"),
    Op(
        "POST",
        V1 + "reconciliation/statements/",
        "401 403 403 403 403 201 201",
        body=lambda w: {**_statement(), "source": w.extra["settled_account"].custodian.code},
        multipart=True,
    ),
    Op("GET", V1 + "reconciliation/breaks/", "401 403 403 403 403 200 200"),
    Op(
        "POST",
        V1 + "reconciliation/breaks/<int:pk>/resolve/",
        "401 403 403 403 403 200 200",
        own="recon_break",
        body=lambda w: {"comment": "booked late"},
    ),
    Op("GET", V1 + "reports/", "401 403 403 403 200 200 200"),
    Op("GET", V1 + "reports/<slug:name>/", "401 403 403 403 200 200 200", own="positions"),
    # The schema and its docs describe the API, not its data: public, as drf-spectacular serves.
    Op("GET", "api/schema/", ALL_200),
    Op("GET", "api/docs/", ALL_200),
]

_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def _value(world: World, name: str) -> str:
    if name == "positions":
        return name
    row = getattr(world, name)
    return str(row.code if hasattr(row, "code") else row.pk)


def _path(op: Op, target: str | None, world: World) -> str:
    if target is None:
        return "/" + op.route
    return "/" + _PARAM.sub(lambda _m: _value(world, target), op.route)


def _client(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


def call(op: Op, world: World, role: str, *, target: str | None, body: Any) -> Any:
    """One request as the role, in a savepoint rolled back afterwards (services may nest in it)."""
    client = _client(world.users[role])
    kwargs: dict[str, Any] = {}
    if op.method != "GET":
        kwargs = {"data": body if body is not None else {}}
        kwargs["format"] = "multipart" if op.multipart else "json"
    # The same flag TestCase sets on its own atomic blocks: services' durable blocks may run
    # inside it, as they do inside the test's transaction.
    atomic = transaction.atomic()
    atomic._from_testcase = True  # type: ignore[attr-defined]
    with atomic:
        response = getattr(client, op.method.lower())(_path(op, target, world), **kwargs)
        transaction.set_rollback(True)
    return response


def test_every_api_operation_is_in_the_matrix() -> None:
    served = api_operations()
    listed = {(op.method, op.route) for op in MATRIX}
    assert len(listed) == len(MATRIX), "an operation is listed twice"
    assert sorted(served - listed) == [], "operations without an entry in MATRIX"
    assert sorted(listed - served) == [], "MATRIX entries the URL resolver does not serve"


def test_every_api_operation_is_in_the_schema() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    in_schema = {
        (method.upper(), re.sub(r"\{\w+\}", "{}", path))
        for path, item in schema["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    expected = {
        (op.method, "/" + _PARAM.sub("{}", op.route))
        for op in MATRIX
        if op.route.startswith("api/v1/")
    }
    assert sorted(expected - in_schema) == []
    assert sorted(in_schema - expected) == []


@pytest.mark.parametrize("op", MATRIX, ids=lambda op: op.id)
def test_role_matrix(op: Op, world: World) -> None:
    got = []
    for role in ROLE_NAMES:
        response = call(op, world, role, target=op.own, body=op.body(world) if op.body else None)
        got.append(str(response.status_code))
    assert " ".join(got) == op.codes, dict(zip(ROLE_NAMES, got, strict=True))


FOREIGN = [op for op in MATRIX if op.foreign or op.foreign_body]


@pytest.mark.parametrize("op", FOREIGN, ids=lambda op: op.id)
def test_rows_of_other_accounts_are_not_found(op: Op, world: World) -> None:
    codes = dict(zip(ROLE_NAMES, op.codes.split(), strict=True))
    for role in ("pm", "trader"):
        body = op.foreign_body(world) if op.foreign_body else (op.body(world) if op.body else None)
        response = call(op, world, role, target=op.foreign or op.own, body=body)
        expected = codes[role] if codes[role] in ("401", "403") else op.foreign_code
        assert (role, str(response.status_code)) == (role, expected), response.content[:300]
        if expected == "404":
            assert response.json()["code"] == "not_found"
            assert b"ACC-B" not in response.content
        if expected == "400":  # the same answer as for a row that does not exist
            assert "unknown" in response.json()["detail"]


def _visible_accounts(role: str, user: Any) -> Any:
    from allocations.models import Account

    if role == "norole":
        return Account.objects.none()
    if role == "pm":
        return Account.objects.filter(managers=user)
    if role == "trader":
        return Account.objects.filter(desk__traders=user)
    return Account.objects.all()


def _expected_rows(route: str, role: str, user: Any) -> set[Any]:
    """The rows a role must get from a list, computed from the tables, not the selectors."""
    from django.db.models import Q

    from allocations.models import Allocation, CashBalance, Position
    from orders.models import Block, Execution, Order

    accounts = _visible_accounts(role, user)
    if route == "accounts/":
        return set(accounts.values_list("code", flat=True))
    by_account = {"orders/": Order, "allocations/": Allocation, "positions/": Position}
    if route in by_account:
        return set(
            by_account[route].objects.filter(account__in=accounts).values_list("pk", flat=True)
        )
    if route == "cash/":
        rows = CashBalance.objects.filter(account__in=accounts)
        return set(rows.values_list("account__code", "currency"))
    if route == "executions/":
        rows = Execution.objects.filter(
            Q(order__account__in=accounts) | Q(block__orders__account__in=accounts)
        )
        return set(rows.values_list("pk", flat=True))
    if route == "blocks/":
        rows = Block.objects.filter(orders__account__in=accounts)
        if role == "trader":  # a trader also sees the blocks they made
            rows = rows | Block.objects.filter(created_by=user)
        return set(rows.values_list("pk", flat=True))
    raise AssertionError(route)


def _row_key(route: str, row: dict[str, Any]) -> Any:
    if route == "accounts/":
        return row["code"]
    if route == "cash/":
        return (row["account"], row["currency"])
    return row["id"]


ENTITLED_LISTS = (
    "orders/",
    "blocks/",
    "accounts/",
    "executions/",
    "allocations/",
    "positions/",
    "cash/",
)


@pytest.mark.parametrize("route", ENTITLED_LISTS)
def test_lists_return_exactly_the_entitled_rows(route: str, world: World) -> None:
    for role in ROLE_NAMES[1:]:
        user = world.users[role]
        response = _client(user).get(f"/api/v1/{route}?page_size=500")
        assert response.status_code == 200
        got = {_row_key(route, r) for r in response.json()["results"]}
        expected = _expected_rows(route, role, user)
        assert (role, got) == (role, expected)
        if role in ("norole", "pm", "trader"):
            assert b"ACC-B" not in response.content
    # and the world is not trivial: pm_a's and the firm's views differ for every list
    assert _expected_rows(route, "pm", world.users["pm"]) != _expected_rows(route, "admin", None)
    assert _expected_rows(route, "pm", world.users["pm"])


def test_rule_scopes_name_only_the_accounts_the_role_may_see(world: World) -> None:
    # given a rule scoped to ACC-A and ACC-B (pm_a manages the first only)
    scoped = next(
        r
        for r in _client(world.users["admin"]).get("/api/v1/compliance/rules/").json()["results"]
        if r["accounts"]
    )
    # when each role reads the rules, as a list and one by one / then
    seen = {}
    for role in ("pm", "trader", "compliance", "backoffice", "admin"):
        client = _client(world.users[role])
        listed = {
            r["id"]: r["accounts"]
            for r in client.get("/api/v1/compliance/rules/").json()["results"]
        }
        one = client.get(f"/api/v1/compliance/rules/{scoped['id']}/").json()["accounts"]
        assert listed[scoped["id"]] == one
        seen[role] = one
    assert seen == {
        "pm": ["ACC-A"],
        "trader": ["ACC-A"],
        "compliance": ["ACC-A", "ACC-B"],
        "backoffice": ["ACC-A", "ACC-B"],
        "admin": ["ACC-A", "ACC-B"],
    }


def test_asynchronous_routes_of_other_desks_rows_are_not_found(world: World) -> None:
    client = _client(world.users["trader"])
    body = {"broker": "GS", "asynchronous": True}
    codes = {}
    for name, path in (
        ("own order", f"/api/v1/orders/{world.order_a.pk}/route/"),
        ("foreign order", f"/api/v1/orders/{world.order_b.pk}/route/"),
        ("own block", f"/api/v1/blocks/{world.block_a.pk}/route/"),
        ("foreign block", f"/api/v1/blocks/{world.block_b.pk}/route/"),
    ):
        codes[name] = client.post(path, body, format="json").status_code
    assert codes == {"own order": 202, "foreign order": 404, "own block": 202, "foreign block": 404}
