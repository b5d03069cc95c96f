"""The orders REST API: every endpoint × role, errors, idempotency, throttling and the schema."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.models import Basket, Block, IdempotencyRecord, Order
from orders.services.orders import block_create
from tests import factories as f
from tests.conftest import client_for
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db

CSV_HEADER = "account,instrument,side,quantity,order_type,limit_price,stop_price,time_in_force"


@pytest.fixture
def clients(
    pm: Any,
    pm_other: Any,
    trader: Any,
    compliance_officer: Any,
    backoffice: Any,
    administrator: Any,
) -> dict[str, APIClient]:
    return {
        "admin": client_for(administrator),
        "pm": client_for(pm),
        "pm_other": client_for(pm_other),
        "trader": client_for(trader),
        "compliance": client_for(compliance_officer),
        "backoffice": client_for(backoffice),
        "anonymous": APIClient(),
    }


# ------------------------------------------------------------------------------ instruments


def test_instruments_list_with_reference_price_and_filters(
    book: Any, clients: dict[str, APIClient]
) -> None:
    f.InstrumentFactory(symbol="BND", asset_class="bond", sector="Government")
    for role in ("pm", "trader", "compliance", "backoffice"):
        r = clients[role].get("/api/v1/instruments/")
        assert r.status_code == 200
        assert [i["symbol"] for i in r.json()["results"]] == ["ACME", "BND"]
    r = clients["pm"].get("/api/v1/instruments/?symbol=acme")
    (acme,) = r.json()["results"]
    assert acme["price"]["bid"] == "99.95" and acme["price"]["ask"] == "100.05"
    assert acme["tick_size"] == "0.01" and acme["lot_size"] == "1"
    r = clients["pm"].get("/api/v1/instruments/?asset_class=bond&sector=government")
    assert [i["symbol"] for i in r.json()["results"]] == ["BND"]
    assert clients["anonymous"].get("/api/v1/instruments/").status_code in (401, 403)


# ------------------------------------------------------------------------------ create


def test_pm_creates_order_201_with_compliance(book: Any, clients: dict[str, APIClient]) -> None:
    r = clients["pm"].post("/api/v1/orders/", order_data(), format="json")
    assert r.status_code == 201
    body = r.json()
    assert body["status"] == "approved" and body["version"] == 2
    assert body["compliance"] == {"outcome": "pass", "results": []}
    assert body["quantity"] == "100" and body["limit_price"] == "100"
    assert body["account"] == "ACC-A" and body["instrument"] == "ACME"


@pytest.mark.parametrize("role", ["trader", "compliance", "backoffice", "admin"])
def test_other_roles_cannot_create_orders(
    book: Any, clients: dict[str, APIClient], role: str
) -> None:
    r = clients[role].post("/api/v1/orders/", order_data(), format="json")
    assert r.status_code == 403
    assert r.json()["code"] == "permission_denied"
    assert Order.objects.count() == 0


def test_anonymous_cannot_create(book: Any, clients: dict[str, APIClient]) -> None:
    r = clients["anonymous"].post("/api/v1/orders/", order_data(), format="json")
    assert r.status_code in (401, 403)


def test_create_validation_error_envelope(book: Any, clients: dict[str, APIClient]) -> None:
    r = clients["pm"].post("/api/v1/orders/", order_data(quantity="0"), format="json")
    assert r.status_code == 400
    assert r.json() == {
        "code": "invalid",
        "detail": "quantity: must be greater than zero",
        "errors": {"quantity": ["must be greater than zero"]},
    }


def test_create_for_an_invisible_account_names_the_field(
    book: Any, clients: dict[str, APIClient]
) -> None:
    r = clients["pm"].post("/api/v1/orders/", order_data(account="ACC-B"), format="json")
    assert r.status_code == 400
    assert r.json()["errors"] == {"account": ["unknown account ACC-B"]}


def test_non_object_body_is_400(book: Any, clients: dict[str, APIClient]) -> None:
    r = clients["pm"].post("/api/v1/orders/", [1, 2], format="json")
    assert r.status_code == 400
    assert r.json()["errors"] == {"non_field_errors": ["the body must be a JSON object"]}


def test_kill_switch_is_409(book: Any, clients: dict[str, APIClient], trader: Any) -> None:
    from orders.models import KillSwitch

    KillSwitch.objects.create(scope="firm", target="", engaged_by=trader)
    r = clients["pm"].post("/api/v1/orders/", order_data(), format="json")
    assert r.status_code == 409
    assert r.json()["code"] == "kill_switch_active"


def test_client_order_id_retry_returns_first_order_with_200(
    book: Any, clients: dict[str, APIClient]
) -> None:
    first = clients["pm"].post("/api/v1/orders/", order_data(client_order_id="k1"), format="json")
    again = clients["pm"].post("/api/v1/orders/", order_data(client_order_id="k1"), format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert Order.objects.count() == 1


def test_idempotency_key_replays_first_response_and_creates_nothing(
    book: Any, clients: dict[str, APIClient]
) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": "req-1"}
    first = clients["pm"].post("/api/v1/orders/", order_data(), format="json", **headers)
    again = clients["pm"].post("/api/v1/orders/", order_data(), format="json", **headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    # a new key creates a new order; the same key from another user is independent
    other = clients["pm"].post(
        "/api/v1/orders/", order_data(), format="json", HTTP_IDEMPOTENCY_KEY="req-2"
    )
    assert other.json()["id"] != first.json()["id"]
    assert IdempotencyRecord.objects.count() == 2


def test_idempotency_key_reused_with_another_body_is_409(
    book: Any, clients: dict[str, APIClient]
) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": "req-1"}
    clients["pm"].post("/api/v1/orders/", order_data(), format="json", **headers)
    r = clients["pm"].post("/api/v1/orders/", order_data(quantity="5"), format="json", **headers)
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"
    assert Order.objects.count() == 1


def test_idempotency_key_of_a_failed_request_is_not_kept(
    book: Any, clients: dict[str, APIClient]
) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": "req-9"}
    bad = clients["pm"].post("/api/v1/orders/", order_data(quantity="0"), format="json", **headers)
    assert bad.status_code == 400
    assert IdempotencyRecord.objects.count() == 0


def _fingerprint(body: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def test_idempotency_key_in_flight_is_409(
    book: Any, clients: dict[str, APIClient], pm: Any
) -> None:
    # given: the first request with this key is still running
    IdempotencyRecord.objects.create(
        user=pm,
        key="busy",
        endpoint="/api/v1/orders/",
        status_code=0,
        body={},
        request_hash=_fingerprint(order_data()),
    )
    # when
    r = clients["pm"].post(
        "/api/v1/orders/", order_data(), format="json", HTTP_IDEMPOTENCY_KEY="busy"
    )
    # then
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_in_progress"
    assert Order.objects.count() == 0


def test_idempotency_reservation_of_a_crashed_request_is_taken_over(
    book: Any, clients: dict[str, APIClient], pm: Any
) -> None:
    import datetime as dt

    from django.utils import timezone

    record = IdempotencyRecord.objects.create(
        user=pm,
        key="crashed",
        endpoint="/api/v1/orders/",
        status_code=0,
        body={},
        request_hash=_fingerprint(order_data()),
    )
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        created_at=timezone.now() - dt.timedelta(minutes=5)
    )
    r = clients["pm"].post(
        "/api/v1/orders/", order_data(), format="json", HTTP_IDEMPOTENCY_KEY="crashed"
    )
    assert r.status_code == 201
    record.refresh_from_db()
    assert (record.status_code, record.body["id"]) == (201, r.json()["id"])


# ------------------------------------------------------------------------------ list/detail


@pytest.fixture
def two_orders(book: Any, make_order: Any, pm_other: Any) -> tuple[Order, Order]:
    from orders.services.orders import order_create

    mine = make_order()
    theirs = order_create(user=pm_other, data=order_data(account="ACC-B", side="sell"))
    return mine, theirs


@pytest.mark.parametrize(
    ("role", "visible"),
    [
        ("pm", {"ACC-A"}),
        ("pm_other", {"ACC-B"}),
        ("trader", {"ACC-A"}),
        ("compliance", {"ACC-A", "ACC-B"}),
        ("backoffice", {"ACC-A", "ACC-B"}),
        ("admin", {"ACC-A", "ACC-B"}),
    ],
)
def test_list_shows_only_entitled_orders(
    two_orders: Any, clients: dict[str, APIClient], role: str, visible: set[str]
) -> None:
    r = clients[role].get("/api/v1/orders/")
    assert r.status_code == 200
    assert {o["account"] for o in r.json()["results"]} == visible


def test_list_filters_and_ordering(two_orders: Any, clients: dict[str, APIClient]) -> None:
    c = clients["compliance"]
    mine, theirs = two_orders
    assert [o["id"] for o in c.get("/api/v1/orders/?account=ACC-B").json()["results"]] == [
        theirs.pk
    ]
    assert [o["id"] for o in c.get("/api/v1/orders/?side=buy").json()["results"]] == [mine.pk]
    assert c.get("/api/v1/orders/?instrument=ACME").json()["count"] == 2
    assert c.get("/api/v1/orders/?status=approved").json()["count"] == 2
    assert c.get("/api/v1/orders/?status=canceled").json()["count"] == 0
    assert c.get("/api/v1/orders/?created_after=2000-01-01T00:00:00Z").json()["count"] == 2
    assert c.get("/api/v1/orders/?created_before=2000-01-01T00:00:00Z").json()["count"] == 0
    ordered = c.get("/api/v1/orders/?ordering=id").json()["results"]
    assert [o["id"] for o in ordered] == [mine.pk, theirs.pk]
    assert c.get("/api/v1/orders/?status=bogus").status_code == 400


def test_list_query_count_is_constant(
    book: Any, make_order: Any, clients: dict[str, APIClient], django_assert_max_num_queries: Any
) -> None:
    for _ in range(30):
        make_order()
    with django_assert_max_num_queries(8):
        r = clients["compliance"].get("/api/v1/orders/")
    assert r.json()["count"] == 30


def test_detail_has_compliance_executions_and_history(
    two_orders: Any, clients: dict[str, APIClient]
) -> None:
    mine, _ = two_orders
    r = clients["trader"].get(f"/api/v1/orders/{mine.pk}/")
    assert r.status_code == 200
    body = r.json()
    assert body["executions"] == []
    assert [h["action"] for h in body["history"]] == ["order.created", "order.compliance_checked"]
    assert body["compliance"]["outcome"] == "pass"


def test_detail_lists_executions(two_orders: Any, clients: dict[str, APIClient]) -> None:
    from django.utils import timezone

    from orders.models import Execution

    mine, _ = two_orders
    broker = f.BrokerFactory(code="BRKX")
    Execution.objects.create(
        session_key="FIX.4.4:OMS->BRKX",
        exec_id="E1",
        order=mine,
        broker=broker,
        exec_type="F",
        ord_status="1",
        last_qty=Decimal("40"),
        last_px=Decimal("100.01"),
        cum_qty=Decimal("40"),
        avg_px=Decimal("100.01"),
        transact_time=timezone.now(),
    )
    body = clients["pm"].get(f"/api/v1/orders/{mine.pk}/").json()
    (e,) = body["executions"]
    assert (e["exec_id"], e["broker"], e["last_qty"], e["last_px"]) == (
        "E1",
        "BRKX",
        "40",
        "100.01",
    )


@pytest.mark.parametrize("role", ["pm_other"])
def test_detail_of_invisible_order_is_404(
    two_orders: Any, clients: dict[str, APIClient], role: str
) -> None:
    mine, _ = two_orders
    r = clients[role].get(f"/api/v1/orders/{mine.pk}/")
    assert r.status_code == 404
    assert clients["pm"].get("/api/v1/orders/999999/").status_code == 404


# ------------------------------------------------------------------------------ amend/cancel


@pytest.mark.parametrize("role", ["pm", "trader"])
def test_pm_and_trader_amend(two_orders: Any, clients: dict[str, APIClient], role: str) -> None:
    mine, _ = two_orders
    r = clients[role].post(
        f"/api/v1/orders/{mine.pk}/amend/",
        {"quantity": "150", "limit_price": "99.5", "version": 2},
        format="json",
    )
    assert r.status_code == 200
    assert (r.json()["quantity"], r.json()["limit_price"], r.json()["version"]) == (
        "150",
        "99.5",
        4,
    )


@pytest.mark.parametrize("role", ["compliance", "backoffice", "admin"])
def test_other_roles_cannot_amend_or_cancel(
    two_orders: Any, clients: dict[str, APIClient], role: str
) -> None:
    mine, _ = two_orders
    url = f"/api/v1/orders/{mine.pk}"
    assert clients[role].post(f"{url}/amend/", {"quantity": "1", "version": 2}).status_code == 403
    assert clients[role].post(f"{url}/cancel/", {}).status_code == 403


def test_amend_and_cancel_of_invisible_order_is_404(
    two_orders: Any, clients: dict[str, APIClient]
) -> None:
    _, theirs = two_orders
    for role in ("pm", "trader"):
        url = f"/api/v1/orders/{theirs.pk}"
        r = clients[role].post(f"{url}/amend/", {"quantity": "1", "version": 2}, format="json")
        assert r.status_code == 404
        assert clients[role].post(f"{url}/cancel/", {}, format="json").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "approved"


def test_stale_amend_is_409(two_orders: Any, clients: dict[str, APIClient]) -> None:
    mine, _ = two_orders
    r = clients["pm"].post(
        f"/api/v1/orders/{mine.pk}/amend/", {"quantity": "150", "version": 1}, format="json"
    )
    assert r.status_code == 409
    assert r.json() == {
        "code": "stale_version",
        "detail": "The order changed meanwhile (version 2, you sent 1).",
        "errors": {"version": ["current version is 2"]},
    }


def test_cancel_then_cancel_again_is_409(two_orders: Any, clients: dict[str, APIClient]) -> None:
    mine, _ = two_orders
    r = clients["trader"].post(f"/api/v1/orders/{mine.pk}/cancel/", {}, format="json")
    assert (r.status_code, r.json()["status"]) == (200, "canceled")
    again = clients["pm"].post(f"/api/v1/orders/{mine.pk}/cancel/", {}, format="json")
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"


def test_cancel_of_filled_order_is_409(two_orders: Any, clients: dict[str, APIClient]) -> None:
    mine, _ = two_orders
    Order.objects.filter(pk=mine.pk).update(status=OrderStatus.FILLED, cum_qty=100)
    r = clients["pm"].post(f"/api/v1/orders/{mine.pk}/cancel/", {}, format="json")
    assert r.status_code == 409


# ------------------------------------------------------------------------------ baskets


def test_basket_json_201(book: Any, clients: dict[str, APIClient]) -> None:
    rows = [order_data(client_order_id=f"j{i}") for i in range(3)]
    r = clients["pm"].post("/api/v1/baskets/", {"orders": rows}, format="json")
    assert r.status_code == 201
    body = r.json()
    assert body["summary"] == {"created": 3, "passed": 3, "warned": 0, "blocked": 0}
    assert [o["client_order_id"] for o in body["orders"]] == ["j0", "j1", "j2"]
    assert Basket.objects.get().pk == body["id"]


def test_basket_csv_201(book: Any, clients: dict[str, APIClient]) -> None:
    csv_text = "\n".join(
        [
            CSV_HEADER + ",client_order_id",
            "ACC-A,ACME,buy,100,limit,100.00,,day,c1",
            "ACC-A,ACME,sell,50,market,,,day,c2",
            "",
        ]
    )
    upload = SimpleUploadedFile("basket.csv", csv_text.encode(), content_type="text/csv")
    r = clients["pm"].post("/api/v1/baskets/", {"file": upload}, format="multipart")
    assert r.status_code == 201, r.json()
    assert r.json()["summary"]["created"] == 2
    assert Basket.objects.get().source == "csv"
    assert list(Order.objects.order_by("pk").values_list("side", "order_type")) == [
        ("buy", "limit"),
        ("sell", "market"),
    ]


def test_basket_csv_invalid_rows_400_nothing_created(
    book: Any, clients: dict[str, APIClient]
) -> None:
    csv_text = "\n".join(
        [
            CSV_HEADER,
            "ACC-A,ACME,buy,100,limit,100.00,,day",
            "ACC-A,ACME,buy,0,limit,100.00,,day",
            "ACC-A,ACME,buy,10,market,100.00,,day",
        ]
    )
    upload = SimpleUploadedFile("basket.csv", csv_text.encode(), content_type="text/csv")
    r = clients["pm"].post("/api/v1/baskets/", {"file": upload}, format="multipart")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid"
    assert r.json()["errors"] == [
        {"row": 2, "field": "quantity", "detail": "must be greater than zero"},
        {"row": 3, "field": "limit_price", "detail": "must not be set for a market order"},
    ]
    assert Order.objects.count() == 0 and Basket.objects.count() == 0


def test_basket_csv_header_is_checked(book: Any, clients: dict[str, APIClient]) -> None:
    upload = SimpleUploadedFile("b.csv", b"account,instrument,side\nACC-A,ACME,buy\n")
    r = clients["pm"].post("/api/v1/baskets/", {"file": upload}, format="multipart")
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {
            "row": 0,
            "field": "file",
            "detail": "missing column(s): quantity, order_type, limit_price, stop_price, "
            "time_in_force",
        }
    ]


def test_basket_without_orders_is_400(book: Any, clients: dict[str, APIClient]) -> None:
    r = clients["pm"].post("/api/v1/baskets/", {"foo": 1}, format="json")
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"row": 0, "field": "orders", "detail": "send a CSV file or a JSON list of orders"}
    ]


@pytest.mark.parametrize("role", ["trader", "compliance", "backoffice", "admin"])
def test_only_pms_upload_baskets(book: Any, clients: dict[str, APIClient], role: str) -> None:
    r = clients[role].post("/api/v1/baskets/", {"orders": [order_data()]}, format="json")
    assert r.status_code == 403


def test_basket_idempotency_key(book: Any, clients: dict[str, APIClient]) -> None:
    body = {"orders": [order_data(), order_data()]}
    a = clients["pm"].post("/api/v1/baskets/", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    b = clients["pm"].post("/api/v1/baskets/", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    assert a.json() == b.json()
    assert Order.objects.count() == 2 and Basket.objects.count() == 1


# ------------------------------------------------------------------------------ blocks


@pytest.fixture
def blockable(book: Any, make_order: Any, pm: Any, desk: Any) -> list[Order]:
    acc = f.AccountFactory(code="ACC-C", desk=desk)
    acc.managers.add(pm)
    f.CashBalanceFactory(account=acc)
    return [make_order(), make_order(account="ACC-C", quantity="40")]


def test_trader_creates_and_dissolves_block(
    blockable: list[Order], clients: dict[str, APIClient]
) -> None:
    ids = [o.pk for o in blockable]
    r = clients["trader"].post("/api/v1/blocks/", {"orders": ids}, format="json")
    assert r.status_code == 201
    body = r.json()
    assert (body["quantity"], body["status"], body["orders"]) == ("140", "open", sorted(ids))
    listed = clients["trader"].get("/api/v1/blocks/").json()["results"]
    assert [b["id"] for b in listed] == [body["id"]]
    d = clients["trader"].post(f"/api/v1/blocks/{body['id']}/dissolve/", {}, format="json")
    assert (d.status_code, d.json()["status"]) == (200, "dissolved")
    again = clients["trader"].post(f"/api/v1/blocks/{body['id']}/dissolve/", {}, format="json")
    assert again.status_code == 409


@pytest.mark.parametrize("role", ["pm", "compliance", "backoffice", "admin"])
def test_only_traders_create_or_dissolve_blocks(
    blockable: list[Order], clients: dict[str, APIClient], role: str, trader: Any
) -> None:
    ids = [o.pk for o in blockable]
    assert clients[role].post("/api/v1/blocks/", {"orders": ids}, format="json").status_code == 403
    block = block_create(user=trader, order_ids=ids)
    r = clients[role].post(f"/api/v1/blocks/{block.pk}/dissolve/", {}, format="json")
    assert r.status_code == 403


def test_dissolve_of_invisible_block_is_404(
    blockable: list[Order], trader: Any, role_groups: None
) -> None:
    block = block_create(user=trader, order_ids=[o.pk for o in blockable])
    stranger = f.UserFactory(username="trader_z", role="Trader")
    r = client_for(stranger).post(f"/api/v1/blocks/{block.pk}/dissolve/", {}, format="json")
    assert r.status_code == 404
    assert Block.objects.get().status == "open"


def test_a_pm_sees_only_their_own_orders_in_a_shared_block(
    book: Any, make_order: Any, desk: Any, pm_other: Any, trader: Any, clients: dict[str, APIClient]
) -> None:
    # Given a block holding pm_a's order and pm_b's order (pm_b's account on the same desk)
    shared = f.AccountFactory(code="ACC-D", desk=desk)
    shared.managers.add(pm_other)
    f.CashBalanceFactory(account=shared)
    mine = make_order()
    theirs = make_order(user=pm_other, account="ACC-D", quantity="40")
    block = block_create(user=trader, order_ids=[mine.pk, theirs.pk])

    # Then each PM's view of the block lists only their own order ids; the desk sees both
    def seen(role: str) -> list[tuple[int, list[int]]]:
        rows = clients[role].get("/api/v1/blocks/").json()["results"]
        return [(b["id"], b["orders"]) for b in rows]

    assert seen("pm") == [(block.pk, [mine.pk])]
    assert seen("pm_other") == [(block.pk, [theirs.pk])]
    assert seen("trader") == [(block.pk, sorted([mine.pk, theirs.pk]))]
    assert seen("compliance") == [(block.pk, sorted([mine.pk, theirs.pk]))]


def test_block_validation_400(blockable: list[Order], clients: dict[str, APIClient]) -> None:
    r = clients["trader"].post("/api/v1/blocks/", {"orders": "x"}, format="json")
    assert r.status_code == 400
    assert r.json()["errors"] == {"orders": ["must be a list of order ids"]}


# ------------------------------------------------------------------------------ throttling


def test_order_entry_is_throttled_per_user_and_audited(
    book: Any, clients: dict[str, APIClient], settings: Any, pm: Any
) -> None:
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], order_entry="2/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    codes = [
        clients["pm"].post("/api/v1/orders/", order_data(), format="json").status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 429]
    throttled = clients["pm"].post("/api/v1/orders/", order_data(), format="json")
    assert throttled.json()["code"] == "throttled"
    assert Order.objects.count() == 2
    events = AuditEvent.objects.filter(action="order_entry.throttled")
    assert events.count() == 2
    assert events.first().object_id == str(pm.pk)
    # other users are unaffected; reads are not throttled
    other = clients["pm_other"].post("/api/v1/orders/", order_data(account="ACC-B"), format="json")
    assert other.status_code == 201
    assert clients["pm"].get("/api/v1/orders/").status_code == 200


# ------------------------------------------------------------------------------ schema


def test_schema_documents_the_operations_without_errors() -> None:
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    GENERATOR_STATS.reset()
    generator = SchemaGenerator(urlconf="tests.orders.schema_urls")
    schema = generator.get_schema(request=None, public=True)
    validate_schema(schema)
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache
    paths = schema["paths"]
    assert set(paths) == {
        "/api/v1/instruments/",
        "/api/v1/orders/",
        "/api/v1/orders/{id}/",
        "/api/v1/orders/{id}/amend/",
        "/api/v1/orders/{id}/cancel/",
        "/api/v1/baskets/",
        "/api/v1/blocks/",
        "/api/v1/blocks/{id}/dissolve/",
    }
    assert set(paths["/api/v1/orders/"]) == {"get", "post"}
    params = {p["name"] for p in paths["/api/v1/orders/"]["get"]["parameters"]}
    assert {"status", "account", "instrument", "side", "created_after", "created_before"} <= params
    post_params = {p["name"] for p in paths["/api/v1/orders/"]["post"]["parameters"]}
    assert "Idempotency-Key" in post_params
    basket_body = paths["/api/v1/baskets/"]["post"]["requestBody"]["content"]
    assert set(basket_body) == {"application/json", "multipart/form-data"}


def test_schema_view_serves_the_orders_paths(clients: dict[str, APIClient]) -> None:
    r = clients["pm"].get("/api/schema/?format=json")
    assert r.status_code == 200
    assert "/api/v1/orders/{id}/amend/" in r.json()["paths"]


def test_decimal_strings_are_exact(book: Any, clients: dict[str, APIClient]) -> None:
    f.InstrumentFactory(symbol="BTC", lot_size=Decimal("0.0001"), asset_class="crypto")
    r = clients["pm"].post(
        "/api/v1/orders/",
        order_data(instrument="BTC", quantity="12345.5", limit_price="0.01"),
        format="json",
    )
    assert (r.json()["quantity"], r.json()["limit_price"]) == ("12345.5", "0.01")
    assert Order.objects.get().quantity == Decimal("12345.5")


def test_a_basket_is_created_with_the_garbage_collector_paused_and_answered_as_drf_renders(
    book: Any, clients: dict[str, APIClient], monkeypatch: Any
) -> None:
    import gc

    from compliance.models import Rule
    from orders.api.serializers import BasketResultSerializer
    from orders.services import orders as services

    # given a basket with a named, an unnamed and a blocked order; the collector observed
    # while the orders are checked
    Rule.objects.create(name="size", rule_type="fat_finger", params={"max_quantity": "500"})
    rows = [
        order_data(client_order_id="g1"),
        order_data(side="sell", order_type="market", limit_price=None),
        order_data(quantity="1000"),
    ]
    seen: list[bool] = []
    check_new = services._check_and_insert

    def observed(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return check_new(*args, **kwargs)

    monkeypatch.setattr(services, "_check_and_insert", observed)
    gc.enable()
    # when
    r = clients["pm"].post("/api/v1/baskets/", {"orders": rows}, format="json")
    # then the collector was off during the work and is on again
    assert r.status_code == 201, r.json()
    assert seen == [False]
    assert gc.isenabled()
    # and the orders are rendered exactly as the serializer renders them
    orders = list(
        Order.objects.filter(basket_id=r.json()["id"])
        .select_related("account", "instrument")
        .order_by("pk")
    )
    summary = r.json()["summary"]
    expected = BasketResultSerializer(
        {"id": r.json()["id"], "orders": orders, "summary": summary}
    ).data["orders"]
    assert r.json()["orders"] == [dict(o) for o in expected]
    assert [o["client_order_id"] for o in r.json()["orders"]] == ["g1", None, None]
    assert [o["compliance_outcome"] for o in r.json()["orders"]] == ["pass", "pass", "block"]


def test_an_invalid_basket_leaves_the_garbage_collector_on(
    book: Any, clients: dict[str, APIClient]
) -> None:
    import gc

    # given
    gc.enable()
    # when
    r = clients["pm"].post(
        "/api/v1/baskets/", {"orders": [order_data(quantity="-1")]}, format="json"
    )
    # then
    assert r.status_code == 400
    assert gc.isenabled()
    assert Order.objects.count() == 0


def test_block_list_reads_its_orders_in_one_query(
    blockable: list[Order], make_order: Any, trader: Any, clients: dict[str, APIClient]
) -> None:
    # Given two blocks of two orders each
    first = block_create(user=trader, order_ids=[o.pk for o in blockable])
    more = [make_order(), make_order(account="ACC-C", quantity="40")]
    second = block_create(user=trader, order_ids=[o.pk for o in more])
    # When the desk lists blocks (twice: the second request as the first)
    for _ in range(2):
        with CaptureQueriesContext(connection) as queries:
            rows = clients["trader"].get("/api/v1/blocks/").json()["results"]
        # Then each block lists its order ids, and the orders were read in one query
        assert [(b["id"], b["orders"]) for b in rows] == [
            (second.pk, sorted(o.pk for o in more)),
            (first.pk, sorted(o.pk for o in blockable)),
        ]
        order_reads = [
            q for q in queries.captured_queries if q["sql"].startswith('SELECT "orders_order".')
        ]
        assert len(order_reads) == 1
