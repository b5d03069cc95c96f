"""Hostile inputs the schema does not describe: NUL characters, out-of-range numbers and dates,
wrong JSON types, bad filters and pages. Each is refused with a 4xx in the error envelope, never
a 500 (the schema-driven fuzzing only sends what the schema declares)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from tests.security.conftest import World

pytestmark = pytest.mark.django_db

NUL = "a\x00b"
HUGE = 10**30

GETS = [
    "orders/?created_after=garbage",
    "orders/?status=nonsense",
    "orders/?ordering=password",
    "orders/?page=0",
    "orders/?page=abc",
    "orders/?page_size=abc",
    "orders/?page_size=-5",
    "orders/?account=%00",
    "orders/?instrument=%00",
    "orders/?side=%00",
    f"orders/{HUGE}/",
    "instruments/?symbol=%00",
    "instruments/?sector=%00&asset_class=%00",
    "accounts/%00/",
    "accounts/?code=%00",
    "executions/?order=abc&block=%00",
    f"executions/?order={HUGE}",
    f"executions/{HUGE}/",
    "allocations/?trade_date=2026-13-45&account=%00",
    f"allocations/{HUGE}/",
    "positions/?account=%00",
    "cash/?account=%00",
    "blocks/?ordering=%00",
    "kill-switch/?active=maybe&scope=%00",
    "fix-sessions/?enabled=%00",
    "compliance/queue/?page=%00",
    "compliance/reports/?as_of=%00",
    "compliance/reports/?as_of=0000-01-01",
    f"compliance/reports/{HUGE}/",
    f"compliance/rules/{HUGE}/",
    "settlement/runs/?page=-1",
    "settlement/files/?trade_date=bad&custodian=%00&latest=maybe",
    f"settlement/files/{HUGE}/download/",
    "reconciliation/statements/?page_size=%00",
    "reconciliation/breaks/?statement=abc&status=%00&kind=%00&trade_date=x",
    "reports/positions/?date=%00",
    "reports/positions/?date=0001-01-01",
    "reports/positions/?date=9999-12-31",
    "reports/positions/?format=xml",
    "reports/no-such-report/",
]


def _order(**over: Any) -> dict[str, Any]:
    row = {
        "account": "ACC-A",
        "instrument": "ACME",
        "side": "buy",
        "quantity": "10",
        "order_type": "limit",
        "limit_price": "100",
        "time_in_force": "day",
    }
    row.update(over)
    return row


# (path, body, role) — the body is JSON unless it is a dict holding "multipart".
POSTS: list[tuple[str, Any, str]] = [
    ("orders/", _order(account=NUL), "pm"),
    ("orders/", _order(instrument=NUL), "pm"),
    ("orders/", _order(client_order_id=NUL), "pm"),
    ("orders/", _order(quantity="1e999999"), "pm"),
    ("orders/", _order(quantity="NaN"), "pm"),
    ("orders/", _order(quantity="Infinity"), "pm"),
    ("orders/", _order(limit_price="1" * 60), "pm"),
    ("orders/", _order(quantity=HUGE), "pm"),
    ("orders/", _order(quantity=[1]), "pm"),
    ("orders/", _order(expire_date="0000-00-00", time_in_force="gtd"), "pm"),
    ("orders/", _order(expire_date=NUL, time_in_force="gtd"), "pm"),
    ("orders/", _order(side={"a": 1}, order_type=None), "pm"),
    ("orders/", "just a string", "pm"),
    ("baskets/", {"orders": [None, [], "x", 5]}, "pm"),
    ("baskets/", {"orders": [_order(account={"a": 1}, quantity=NUL)]}, "pm"),
    ("blocks/", {"orders": [None, "abc"]}, "trader"),
    ("blocks/", {"orders": [HUGE, HUGE + 1]}, "trader"),
    ("blocks/", {"orders": [1.5, {"a": 1}]}, "trader"),
    ("orders/{order}/amend/", {"version": "abc", "quantity": "5"}, "pm"),
    ("orders/{order}/amend/", {"version": HUGE, "quantity": "5"}, "pm"),
    ("orders/{order}/amend/", {"version": 1, "quantity": {"a": 1}}, "pm"),
    ("orders/{order}/amend/", {"version": 1, "limit_price": NUL}, "pm"),
    ("orders/{order}/cancel/", {"version": "abc"}, "pm"),
    ("orders/{order}/cancel/", {"version": [1]}, "trader"),
    ("orders/{order}/route/", {"broker": NUL}, "trader"),
    ("orders/{order}/route/", {"broker": 5, "asynchronous": "maybe"}, "trader"),
    ("orders/{warned}/override/", {"reason": NUL}, "compliance"),
    ("blocks/{block}/route/", {"broker": NUL}, "trader"),
    ("kill-switch/", {"scope": "account", "target": NUL}, "trader"),
    ("kill-switch/", {"scope": "desk", "target": NUL}, "admin"),
    ("kill-switch/", {"scope": NUL, "target": "x", "reason": NUL}, "admin"),
    ("allocations/reallocate/", {"block": HUGE, "method": "pro_rata"}, "backoffice"),
    ("allocations/reallocate/", {"execution": HUGE, "method": "pro_rata"}, "backoffice"),
    (
        "allocations/reallocate/",
        {"block": "{filled_block}", "method": "manual", "quantities": {NUL: "1"}},
        "backoffice",
    ),
    (
        "allocations/reallocate/",
        {"block": "{filled_block}", "method": "fixed_ratio", "ratios": {"ACC-A": "NaN"}},
        "backoffice",
    ),
    (
        "allocations/reallocate/",
        {
            "block": "{filled_block}",
            "method": "manual",
            "quantities": {"99999999999999999999": "1"},
        },
        "trader",
    ),
    ("compliance/reports/", {"as_of": "0001-01-01"}, "compliance"),
    ("compliance/reports/", {"as_of": NUL}, "compliance"),
    ("compliance/rules/", {"name": NUL, "rule_type": "fat_finger"}, "compliance"),
    ("compliance/rules/", {"name": "r", "rule_type": "fat_finger", "params": "x"}, "compliance"),
    (
        "compliance/rules/",
        {"name": "r", "rule_type": "fat_finger", "accounts": [NUL]},
        "compliance",
    ),
    (
        "compliance/rules/",
        {
            "name": "r",
            "rule_type": "fat_finger",
            "effective_from": "2026-12-01",
            "effective_to": "2026-01-01",
        },
        "compliance",
    ),
    (
        "compliance/rules/",
        {"name": "r", "rule_type": "concentration", "params": {"max_pct": NUL}},
        "compliance",
    ),
    ("settlement/runs/", {"trade_date": "0001-01-01"}, "backoffice"),
    ("settlement/runs/", {"trade_date": "9999-12-31"}, "backoffice"),
    ("settlement/runs/", {"trade_date": NUL}, "backoffice"),
    ("reconciliation/breaks/{break}/resolve/", {"comment": NUL}, "backoffice"),
    ("auth/token/", {"username": NUL, "password": NUL}, "anonymous"),
    ("auth/token/", {"username": ["x"], "password": {"a": 1}}, "anonymous"),
]

STATEMENTS = [
    ("source NUL", NUL, b"account,instrument,trade_date,side,quantity,price\n", None),
    ("tolerance NaN", "{custodian}", b"account,instrument,trade_date,side,quantity,price\n", "NaN"),
    (
        "NUL in the file",
        "{custodian}",
        b"account,instrument,trade_date,side,quantity,price\nACC-S\x00,ACME,2026-11-19,buy,1,1\n",
        None,
    ),
    (
        "dates and numbers out of range",
        "{custodian}",
        b"account,instrument,trade_date,side,quantity,price\nACC-S,ACME,0001-01-01,buy,1e999999,NaN\n",
        None,
    ),
    ("not CSV at all", "{custodian}", b"\xff\xfe\x00\x01garbage", None),
]


def _fill(world: World, text: str) -> str:
    return (
        text.replace("{order}", str(world.order_a.pk))
        .replace("{warned}", str(world.warned_a.pk))
        .replace("{block}", str(world.block_a.pk))
        .replace("{break}", str(world.recon_break.pk))
        .replace("{custodian}", world.extra["settled_account"].custodian.code)
    )


def _send(world: World, role: str, method: str, path: str, **kwargs: Any) -> Any:
    client = APIClient(raise_request_exception=False)
    if world.users[role] is not None:
        client.force_authenticate(user=world.users[role])
    atomic = transaction.atomic()
    atomic._from_testcase = True  # type: ignore[attr-defined]
    with atomic:
        response = getattr(client, method)("/api/v1/" + _fill(world, path), **kwargs)
        transaction.set_rollback(True)
    return response


def _envelope_4xx(response: Any) -> tuple[int, bool]:
    """Not a server error; a refusal carries the error envelope (some inputs are just valid)."""
    if response.status_code < 400:
        return response.status_code, True
    ok = response.status_code < 500
    body = response.json() if response["Content-Type"].startswith("application/json") else {}
    return response.status_code, ok and {"code", "detail"} <= set(body)


def test_hostile_queries_are_refused_with_a_4xx(world: World) -> None:
    bad = {}
    for path in GETS:
        for role in ("pm", "admin"):
            response = _send(world, role, "get", path)
            code, ok = _envelope_4xx(response)
            if not ok:
                bad[(role, path)] = (code, response.content[:200])
    assert bad == {}


@pytest.mark.parametrize(
    "path, body, role", POSTS, ids=[f"{p} {i}" for i, (p, _b, _r) in enumerate(POSTS)]
)
def test_hostile_bodies_are_refused_with_a_4xx(
    world: World, path: str, body: Any, role: str
) -> None:
    if isinstance(body, dict) and body.get("block") == "{filled_block}":
        body = {**body, "block": world.filled_block_a.pk}
    response = _send(world, role, "post", path, data=body, format="json")
    code, ok = _envelope_4xx(response)
    assert ok, (code, response.content[:300])


@pytest.mark.parametrize(
    "name, source, content, tolerance", STATEMENTS, ids=[s[0] for s in STATEMENTS]
)
def test_hostile_statements_are_refused_with_a_4xx(
    world: World, name: str, source: str, content: bytes, tolerance: str | None
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    data: dict[str, Any] = {
        "file": SimpleUploadedFile("s.csv", content, content_type="text/csv"),
        "source": _fill(world, source),
    }
    if tolerance is not None:
        data["price_tolerance"] = tolerance
    response = _send(
        world, "backoffice", "post", "reconciliation/statements/", data=data, format="multipart"
    )
    code, ok = _envelope_4xx(response)
    assert ok, (code, response.content[:300])


def test_nul_in_forms_and_uploaded_baskets_is_refused_with_a_4xx(world: World) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    header = b"account,instrument,side,quantity,order_type,limit_price,stop_price,time_in_force\n"
    basket = SimpleUploadedFile(
        "b.csv", header + b"ACC-A\x00,ACME,buy,10,limit,100,,day\n", content_type="text/csv"
    )
    uploaded = _send(world, "pm", "post", "baskets/", data={"file": basket}, format="multipart")
    assert (uploaded.status_code, uploaded.json()["errors"]) == (
        400,
        [{"row": 1, "field": "file", "detail": "contains NUL (0x00)"}],
    )
    form = _send(world, "pm", "post", "orders/", data=_order(account=NUL), format="multipart")
    assert (form.status_code, form.json()["detail"]) == (
        400,
        "The request must not contain NUL (0x00) characters.",
    )
    as_json = _send(world, "pm", "post", "orders/", data=_order(client_order_id=NUL), format="json")
    assert (as_json.status_code, as_json.json()["code"]) == (400, "parse_error")
