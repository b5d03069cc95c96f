"""Order services: validation, compliance wiring, idempotency, amend, cancel, expiry, blocks."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from compliance.models import ComplianceResult, RestrictedEntry, Rule
from oms_site import roles
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError
from oms_site.models import AuditEvent
from orders.enums import BlockStatus, OrderStatus
from orders.models import Block, KillSwitch, Order
from orders.services import orders as svc
from orders.services.orders import (
    block_create,
    block_dissolve,
    firm_today,
    order_amend,
    order_cancel,
    order_create,
    orders_create_bulk,
    orders_expire,
)
from tests import factories as f
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db
NY = ZoneInfo("America/New_York")
TOMORROW = (timezone.now().astimezone(NY).date() + dt.timedelta(days=1)).isoformat()
TODAY = timezone.now().astimezone(NY).date().isoformat()


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return exc.value.errors  # type: ignore[return-value]


# ------------------------------------------------------------------------------ validation

INVALID = [
    ({"quantity": "0"}, "quantity", "must be greater than zero"),
    ({"quantity": "-5"}, "quantity", "must be greater than zero"),
    ({"quantity": "abc"}, "quantity", "must be a number"),
    ({"quantity": "1.123456789"}, "quantity", "must have at most 8 decimal places"),
    ({"quantity": None}, "quantity", "is required"),
    ({"account": None}, "account", "is required"),
    ({"instrument": None}, "instrument", "is required"),
    ({"side": None}, "side", "is required"),
    ({"order_type": None}, "order_type", "is required"),
    ({"side": "hold"}, "side", "must be one of buy, sell, sell_short, buy_to_cover"),
    ({"order_type": "iceberg"}, "order_type", "must be one of market, limit, stop, stop_limit"),
    ({"time_in_force": "gtx"}, "time_in_force", "must be one of day, gtc, ioc, fok, gtd"),
    ({"limit_price": "100.005"}, "limit_price", "must be a multiple of the tick size 0.01"),
    ({"limit_price": "0"}, "limit_price", "must be greater than zero"),
    ({"limit_price": None}, "limit_price", "is required for a limit order"),
    ({"order_type": "market"}, "limit_price", "must not be set for a market order"),
    (
        {"order_type": "market", "limit_price": None, "stop_price": "101"},
        "stop_price",
        "must not be set for a market order",
    ),
    ({"stop_price": "101"}, "stop_price", "must not be set for a limit order"),
    (
        {"order_type": "stop", "limit_price": None},
        "stop_price",
        "is required for a stop order",
    ),
    (
        {"order_type": "stop", "limit_price": None, "stop_price": "100.05"},
        "stop_price",
        "a buy stop must be above the market (100.05)",
    ),
    (
        {"order_type": "stop", "side": "sell", "limit_price": None, "stop_price": "99.95"},
        "stop_price",
        "a sell stop must be below the market (99.95)",
    ),
    (
        {"order_type": "stop_limit", "stop_price": "101", "limit_price": "100.50"},
        "limit_price",
        "a buy stop-limit needs a limit at or above its stop",
    ),
    ({"time_in_force": "gtd"}, "expire_date", "is required for a gtd order"),
    (
        {"time_in_force": "gtd", "expire_date": TODAY},
        "expire_date",
        f"must be after today ({TODAY})",
    ),
    ({"expire_date": TOMORROW}, "expire_date", "may only be set when time_in_force is gtd"),
    (
        {"expire_date": "21/11/2026", "time_in_force": "gtd"},
        "expire_date",
        "must be a date (YYYY-MM-DD)",
    ),
    ({"instrument": "NOPE"}, "instrument", "unknown instrument NOPE"),
    ({"account": "ACC-B"}, "account", "unknown account ACC-B"),
    ({"account": "ZZZ"}, "account", "unknown account ZZZ"),
    ({"client_order_id": "x" * 65}, "client_order_id", "must be at most 64 characters"),
    ({"colour": "red"}, "colour", "is not an order field"),
]


@pytest.mark.parametrize(("overrides", "field", "message"), INVALID, ids=[i[2] for i in INVALID])
def test_invalid_order_names_field_and_rule_and_creates_nothing(
    book: Any, pm: Any, overrides: dict[str, Any], field: str, message: str
) -> None:
    # given
    data = order_data(**overrides)
    for k, v in overrides.items():
        if v is None:
            data.pop(k, None)
    # when
    with pytest.raises(ValidationError) as exc:
        order_create(user=pm, data=data)
    # then
    assert exc.value.code == "invalid"
    assert _errors(exc)[field] == [message]
    assert exc.value.detail == f"{field}: {_errors(exc)[field][0]}" or field in exc.value.detail
    assert Order.objects.count() == 0
    assert AuditEvent.objects.filter(object_type="order").count() == 0


def test_lot_size_and_untradable_instrument(book: Any, pm: Any) -> None:
    # given
    f.InstrumentFactory(symbol="BOND1", lot_size=Decimal("1000"), tick_size=Decimal("0.001"))
    f.InstrumentFactory(symbol="DEAD", tradable=False)
    # when / then
    with pytest.raises(ValidationError) as exc:
        order_create(user=pm, data=order_data(instrument="BOND1", quantity="1500"))
    assert _errors(exc) == {"quantity": ["must be a multiple of the lot size 1000"]}
    with pytest.raises(ValidationError) as exc:
        order_create(user=pm, data=order_data(instrument="DEAD"))
    assert _errors(exc) == {"instrument": ["DEAD is not tradable"]}
    ok = order_create(
        user=pm, data=order_data(instrument="BOND1", quantity="2000", limit_price="99.125")
    )
    assert ok.quantity == Decimal("2000")


def test_pm_may_only_enter_for_accounts_they_manage(book: Any, trader: Any) -> None:
    # given: trader_a also holds the PM role, so sees ACC-A through the desk but does not manage it
    trader.groups.add(Group.objects.get(name=roles.PM))
    trader._oms_role_keys = None
    del trader._oms_role_keys
    # when
    with pytest.raises(ValidationError) as exc:
        order_create(user=trader, data=order_data())
    # then
    assert _errors(exc) == {"account": ["you do not manage account ACC-A"]}


def test_only_pms_enter_orders(book: Any, trader: Any, compliance_officer: Any) -> None:
    for user in (trader, compliance_officer):
        with pytest.raises(NotPermitted):
            order_create(user=user, data=order_data())
    assert Order.objects.count() == 0


# ------------------------------------------------------------------------------ creation


def test_create_approves_on_pass_and_audits_each_step(
    book: Any, pm: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # when
    with django_capture_on_commit_callbacks() as callbacks:
        order = order_create(user=pm, data=order_data())
    # then
    order.refresh_from_db()
    assert order.status == OrderStatus.APPROVED
    assert order.compliance_outcome == "pass"
    assert order.version == 2
    assert order.leaves_qty == Decimal("100")
    events = list(AuditEvent.objects.filter(stream=f"order:{order.pk}").order_by("seq"))
    assert [e.action for e in events] == ["order.created", "order.compliance_checked"]
    assert events[1].before == {"status": "pending_compliance", "version": 1}
    assert events[1].after == {"status": "approved", "version": 2, "compliance_outcome": "pass"}
    assert events[0].actor_name == "pm_a"
    assert len(callbacks) == 1


def test_create_holds_warned_and_blocks_restricted_orders(book: Any, pm: Any) -> None:
    # given: a warning fat-finger rule and a blocking restricted list on RSTR
    Rule.objects.create(
        name="fat finger", rule_type="fat_finger", severity="warn", params={"max_quantity": "1000"}
    )
    Rule.objects.create(name="restricted", rule_type="restricted_list", severity="block")
    restricted = f.InstrumentFactory(symbol="RSTR")
    RestrictedEntry.objects.create(instrument=restricted, reason="MNPI")
    # when
    warned = order_create(user=pm, data=order_data(quantity="5000"))
    blocked = order_create(user=pm, data=order_data(instrument="RSTR"))
    passed = order_create(user=pm, data=order_data(quantity="10"))
    # then
    assert (warned.status, warned.compliance_outcome) == ("awaiting_override", "warn")
    assert (blocked.status, blocked.compliance_outcome) == ("blocked", "block")
    assert (passed.status, passed.compliance_outcome) == ("approved", "pass")
    assert ComplianceResult.objects.filter(order=warned, outcome="warn").count() == 1
    assert ComplianceResult.objects.filter(order=blocked, outcome="block").count() == 1


def test_client_order_id_retry_returns_first_order_and_creates_nothing(book: Any, pm: Any) -> None:
    # given
    first = order_create(user=pm, data=order_data(client_order_id="abc-1"))
    # when: a retry, even with different terms
    again = order_create(user=pm, data=order_data(client_order_id="abc-1", quantity="7"))
    # then
    assert again.pk == first.pk
    assert getattr(again, "replayed", False) is True
    assert Order.objects.count() == 1
    assert AuditEvent.objects.filter(action="order.created").count() == 1


def test_client_order_id_is_per_creator(book: Any, pm: Any, pm_other: Any) -> None:
    a = order_create(user=pm, data=order_data(client_order_id="same"))
    b = order_create(user=pm_other, data=order_data(account="ACC-B", client_order_id="same"))
    assert a.pk != b.pk


@pytest.mark.parametrize(("scope", "target"), [("firm", ""), ("desk", "EQ"), ("account", "ACC-A")])
def test_kill_switch_refuses_orders_in_scope(
    book: Any, pm: Any, trader: Any, scope: str, target: str
) -> None:
    # given
    KillSwitch.objects.create(scope=scope, target=target, engaged_by=trader)
    # when
    with pytest.raises(ConflictError) as exc:
        order_create(user=pm, data=order_data())
    # then
    assert exc.value.code == "kill_switch_active"
    assert exc.value.status_code == 409
    assert Order.objects.count() == 0


def test_kill_switch_elsewhere_does_not_refuse(book: Any, pm: Any, trader: Any) -> None:
    KillSwitch.objects.create(scope="account", target="ACC-B", engaged_by=trader)
    KillSwitch.objects.create(scope="desk", target="FX", engaged_by=trader)
    KillSwitch.objects.create(scope="firm", target="", engaged_by=trader, active=False)
    assert order_create(user=pm, data=order_data()).status == "approved"


# ------------------------------------------------------------------------------ baskets


def test_basket_creates_all_with_summary(book: Any, pm: Any) -> None:
    Rule.objects.create(
        name="ff", rule_type="fat_finger", severity="warn", params={"max_quantity": "1000"}
    )
    rows = [order_data(client_order_id=f"b{i}") for i in range(3)] + [order_data(quantity="2000")]
    orders, summary = orders_create_bulk(user=pm, rows=rows)
    assert [o.client_order_id for o in orders] == ["b0", "b1", "b2", None]
    assert summary.as_dict() == {"created": 4, "passed": 3, "warned": 1, "blocked": 0}
    assert {o.basket_id for o in orders} == {summary.basket_id}
    assert AuditEvent.objects.filter(action="basket.created").count() == 1


def test_basket_is_all_or_nothing_with_every_bad_row(book: Any, pm: Any) -> None:
    rows = [order_data(), order_data(quantity="0"), order_data(), order_data(instrument="NOPE")]
    with pytest.raises(ValidationError) as exc:
        orders_create_bulk(user=pm, rows=rows)
    assert exc.value.errors == [
        {"row": 2, "field": "quantity", "detail": "must be greater than zero"},
        {"row": 4, "field": "instrument", "detail": "unknown instrument NOPE"},
    ]
    assert Order.objects.count() == 0


def test_basket_rejects_duplicate_client_order_ids(book: Any, pm: Any) -> None:
    rows = [order_data(client_order_id="x"), order_data(client_order_id="x")]
    with pytest.raises(ValidationError) as exc:
        orders_create_bulk(user=pm, rows=rows)
    assert exc.value.errors == [
        {"row": 2, "field": "client_order_id", "detail": "duplicates row 1"}
    ]


def test_basket_retry_by_client_order_id_creates_nothing(book: Any, pm: Any) -> None:
    rows = [order_data(client_order_id=f"r{i}") for i in range(3)]
    first, s1 = orders_create_bulk(user=pm, rows=rows)
    again, s2 = orders_create_bulk(user=pm, rows=rows)
    assert [o.pk for o in again] == [o.pk for o in first]
    assert s2.created == 0 and s2.basket_id == s1.basket_id
    assert Order.objects.count() == 3


def _basket_queries(django_assert_max_num_queries: Any, pm: Any, n: int, limit: int) -> None:
    rows = [order_data() for _ in range(n)]
    with django_assert_max_num_queries(limit):
        orders, _ = orders_create_bulk(user=pm, rows=rows)
    assert len(orders) == n


def test_basket_query_count_does_not_grow_with_size(
    book: Any, pm: Any, django_assert_max_num_queries: Any, django_assert_num_queries: Any
) -> None:
    # given: rules of every kind that looks at the book, so compliance loads everything
    Rule.objects.create(name="bp", rule_type="buying_power", severity="block")
    Rule.objects.create(
        name="conc",
        rule_type="concentration",
        severity="warn",
        params={"dimension": "issuer", "max_pct": "50"},
    )
    orders_create_bulk(user=pm, rows=[order_data(quantity="1")])  # warms the role cache
    # when: count the queries of a 2-order basket, then require the same for 200 orders
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as small:
        orders_create_bulk(user=pm, rows=[order_data(quantity="1") for _ in range(2)])
    with CaptureQueriesContext(connection) as large:
        orders_create_bulk(user=pm, rows=[order_data(quantity="1") for _ in range(200)])
    # then
    assert len(large.captured_queries) == len(small.captured_queries)
    with django_assert_max_num_queries(len(small.captured_queries)):
        orders_create_bulk(user=pm, rows=[order_data(quantity="1") for _ in range(500)])


def test_new_orders_are_written_once_with_their_outcome(book: Any, pm: Any) -> None:
    # given a rule that blocks large orders
    Rule.objects.create(
        name="size", rule_type="fat_finger", severity="block", params={"max_quantity": "100"}
    )
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # when a basket with one passing and one blocked order is entered
    with CaptureQueriesContext(connection) as ctx:
        orders, summary = orders_create_bulk(
            user=pm, rows=[order_data(quantity="10"), order_data(quantity="500")]
        )
    # then no statement updates the new orders: they were inserted as the outcome left them
    assert [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("UPDATE")] == []
    stored = {
        o.pk: (o.status, o.compliance_outcome, o.version)
        for o in Order.objects.filter(pk__in=[o.pk for o in orders])
    }
    assert stored == {
        orders[0].pk: (OrderStatus.APPROVED, "pass", 2),
        orders[1].pk: (OrderStatus.BLOCKED, "block", 2),
    }
    assert [(o.status, o.compliance_outcome, o.version) for o in orders] == [
        (OrderStatus.APPROVED, "pass", 2),
        (OrderStatus.BLOCKED, "block", 2),
    ]
    assert (summary.passed, summary.blocked) == (1, 1)
    # and each order's results are stored under its own id, its audit trail unchanged
    assert {r.order_id: (r.rule_name, r.outcome) for r in ComplianceResult.objects.all()} == {
        orders[0].pk: ("size", "pass"),
        orders[1].pk: ("size", "block"),
    }
    trail = list(
        AuditEvent.objects.filter(object_type="order", object_id=str(orders[1].pk))
        .order_by("seq")
        .values_list("action", "after")
    )
    assert [action for action, _ in trail] == ["order.created", "order.compliance_checked"]
    assert (trail[0][1]["status"], trail[0][1]["version"]) == ("pending_compliance", 1)
    assert trail[1][1] == {"status": "blocked", "version": 2, "compliance_outcome": "block"}


# ------------------------------------------------------------------------------ amend


def test_amend_before_routing_rechecks_compliance_and_bumps_version(
    book: Any, make_order: Any, pm: Any
) -> None:
    order = make_order()
    Rule.objects.create(
        name="ff", rule_type="fat_finger", severity="warn", params={"max_quantity": "1000"}
    )
    # when
    amended = order_amend(
        user=pm, order_id=order.pk, version=2, quantity="5000", limit_price="99.50"
    )
    # then
    amended.refresh_from_db()
    assert amended.quantity == Decimal("5000") and amended.limit_price == Decimal("99.50")
    assert amended.leaves_qty == Decimal("5000")
    assert (amended.status, amended.compliance_outcome, amended.version) == (
        "awaiting_override",
        "warn",
        4,
    )
    actions = list(
        AuditEvent.objects.filter(stream=f"order:{order.pk}")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == [
        "order.created",
        "order.compliance_checked",
        "order.amended",
        "order.compliance_checked",
    ]
    amend_event = AuditEvent.objects.get(stream=f"order:{order.pk}", action="order.amended")
    assert amend_event.before["quantity"] == "100" and amend_event.after["quantity"] == "5000"


def test_stale_amend_is_409_and_changes_nothing(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    with pytest.raises(ConflictError) as exc:
        order_amend(user=pm, order_id=order.pk, version=1, quantity="200")
    assert exc.value.code == "stale_version"
    assert exc.value.errors == {"version": ["current version is 2"]}
    order.refresh_from_db()
    assert (order.quantity, order.version) == (Decimal("100"), 2)


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"quantity": "0"}, "quantity", "must be greater than zero"),
        ({"limit_price": "100.001"}, "limit_price", "must be a multiple of the tick size 0.01"),
        ({"stop_price": "120"}, "stop_price", "must not be set for a limit order"),
        ({}, "non_field_errors", "give at least one of quantity, limit_price, stop_price"),
    ],
)
def test_amend_validation(
    book: Any, make_order: Any, pm: Any, kwargs: dict[str, Any], field: str, message: str
) -> None:
    order = make_order()
    with pytest.raises(ValidationError) as exc:
        order_amend(user=pm, order_id=order.pk, version=2, **kwargs)
    assert _errors(exc) == {field: [message]}


def test_amend_requires_version(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    with pytest.raises(ValidationError) as exc:
        order_amend(user=pm, order_id=order.pk, version=None, quantity="5")  # type: ignore[arg-type]
    assert _errors(exc) == {"version": ["is required"]}


def test_amend_of_invisible_order_is_not_found(book: Any, make_order: Any, pm_other: Any) -> None:
    order = make_order()
    with pytest.raises(NotFound):
        order_amend(user=pm_other, order_id=order.pk, version=2, quantity="5")


def test_amend_blocked_order_is_refused(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.BLOCKED)
    with pytest.raises(ConflictError) as exc:
        order_amend(user=pm, order_id=order.pk, version=2, quantity="5")
    assert exc.value.code == "invalid_transition"


def test_amend_at_broker_becomes_cancel_replace(
    book: Any, make_order: Any, trader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the order is working at a broker and the routing service offers cancel/replace
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.WORKING)
    calls: list[dict[str, Any]] = []

    def fake_replace(**kwargs: Any) -> Order:
        calls.append(kwargs)
        return Order.objects.get(pk=kwargs["order_id"])

    monkeypatch.setattr(
        svc,
        "_optional_function",
        lambda module, name: fake_replace if name == "order_replace_request" else None,
    )
    # when
    order_amend(user=trader, order_id=order.pk, version=2, quantity="50")
    # then
    assert calls == [
        {
            "user": trader,
            "order_id": order.pk,
            "quantity": Decimal("50"),
            "limit_price": None,
            "stop_price": None,
            "version": 2,
        }
    ]


def test_amend_at_broker_without_routing_service_is_409(
    book: Any, make_order: Any, pm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.PARTIALLY_FILLED)
    monkeypatch.setattr(svc, "_optional_function", lambda module, name: None)
    with pytest.raises(ConflictError) as exc:
        order_amend(user=pm, order_id=order.pk, version=2, quantity="50")
    assert exc.value.code == "replace_unavailable"


# ------------------------------------------------------------------------------ cancel


def test_cancel_before_routing(book: Any, make_order: Any, trader: Any) -> None:
    order = make_order()
    canceled = order_cancel(user=trader, order_id=order.pk)
    canceled.refresh_from_db()
    assert (canceled.status, canceled.version, canceled.leaves_qty) == ("canceled", 3, Decimal("0"))
    assert (
        AuditEvent.objects.filter(stream=f"order:{order.pk}", action="order.canceled").count() == 1
    )


def test_cancel_twice_is_invalid_transition(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    order_cancel(user=pm, order_id=order.pk)
    with pytest.raises(ConflictError) as exc:
        order_cancel(user=pm, order_id=order.pk)
    assert exc.value.code == "invalid_transition"


def test_filled_order_cannot_be_canceled(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.FILLED, cum_qty=100, leaves_qty=0)
    with pytest.raises(ConflictError) as exc:
        order_cancel(user=pm, order_id=order.pk)
    assert exc.value.code == "invalid_transition"


def test_cancel_with_pending_cancel_is_request_pending(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.PENDING_CANCEL)
    with pytest.raises(ConflictError) as exc:
        order_cancel(user=pm, order_id=order.pk)
    assert exc.value.code == "request_pending"


def test_cancel_at_broker_hands_over_to_routing(
    book: Any, make_order: Any, trader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = make_order()
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.WORKING)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        svc,
        "_optional_function",
        lambda module, name: (
            (lambda **kw: calls.append(kw) or order) if name == "order_cancel_request" else None
        ),
    )
    assert order_cancel(user=trader, order_id=order.pk) is order
    assert calls == [{"user": trader, "order_id": order.pk, "version": None}]


def test_cancel_with_stale_version_is_409(book: Any, make_order: Any, pm: Any) -> None:
    order = make_order()
    with pytest.raises(ConflictError) as exc:
        order_cancel(user=pm, order_id=order.pk, version=1)
    assert exc.value.code == "stale_version"


def test_compliance_officer_cannot_cancel(
    book: Any, make_order: Any, compliance_officer: Any
) -> None:
    order = make_order()
    with pytest.raises(NotPermitted):
        order_cancel(user=compliance_officer, order_id=order.pk)


# ------------------------------------------------------------------------------ expiry


def _at(local: str) -> dt.datetime:
    return dt.datetime.fromisoformat(local).replace(tzinfo=NY)


def test_expire_day_orders_after_close_and_gtd_after_their_date(book: Any, make_order: Any) -> None:
    # given: orders entered on 2026-03-02 (New York)
    day = make_order()
    gtc = make_order(time_in_force="gtc")
    gtd = make_order(time_in_force="gtd", expire_date=TOMORROW)
    working = make_order()
    Order.objects.filter(pk=working.pk).update(status=OrderStatus.WORKING)
    entered = _at("2026-03-02T10:00")
    Order.objects.update(created_at=entered)
    Order.objects.filter(pk=gtd.pk).update(expire_date=dt.date(2026, 3, 3))
    # when: before the close nothing expires; after it, the DAY order does
    assert orders_expire(now=_at("2026-03-02T15:59")) == 0
    assert orders_expire(now=_at("2026-03-02T16:00")) == 1
    # then the GTD order lapses after the close of its date
    assert orders_expire(now=_at("2026-03-03T12:00")) == 0
    assert orders_expire(now=_at("2026-03-03T16:01")) == 1
    statuses = dict(Order.objects.values_list("pk", "status"))
    assert statuses == {
        day.pk: "expired",
        gtc.pk: "approved",
        gtd.pk: "expired",
        working.pk: "working",
    }
    assert AuditEvent.objects.filter(action="order.expired").count() == 2


def test_expire_task_runs_the_service(book: Any, make_order: Any) -> None:
    from orders.tasks import expire_orders

    order = make_order()
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - dt.timedelta(days=3))
    assert expire_orders.apply().get() == 1


# ------------------------------------------------------------------------------ blocks


@pytest.fixture
def second_account(book: Any, pm: Any, desk: Any) -> Any:
    a = f.AccountFactory(code="ACC-C", desk=desk)
    a.managers.add(pm)
    f.CashBalanceFactory(account=a)
    return a


def test_block_aggregates_and_dissolves(
    book: Any, second_account: Any, make_order: Any, trader: Any
) -> None:
    a = make_order()
    c = make_order(account="ACC-C", quantity="250")
    block = block_create(user=trader, order_ids=[c.pk, a.pk])
    assert (block.quantity, block.side, block.status) == (Decimal("350"), "buy", "open")
    assert set(block.orders.values_list("pk", flat=True)) == {a.pk, c.pk}
    assert Order.objects.get(pk=a.pk).version == 3
    # when
    dissolved = block_dissolve(user=trader, block_id=block.pk)
    # then
    assert dissolved.status == BlockStatus.DISSOLVED
    assert Order.objects.filter(block__isnull=False).count() == 0
    with pytest.raises(ConflictError) as exc:
        block_dissolve(user=trader, block_id=block.pk)
    assert exc.value.code == "invalid_transition"


def test_block_needs_same_terms_approved_and_visible_orders(
    book: Any, second_account: Any, make_order: Any, trader: Any, pm_other: Any
) -> None:
    a = make_order()
    sell = make_order(account="ACC-C", side="sell")
    with pytest.raises(ValidationError) as exc:
        block_create(user=trader, order_ids=[a.pk, sell.pk])
    assert exc.value.errors == {"orders": ["the orders differ in side"]}
    with pytest.raises(ValidationError) as exc:
        block_create(user=trader, order_ids=[a.pk])
    assert exc.value.errors == {"orders": ["a block needs at least two orders"]}
    hidden = order_create(user=pm_other, data=order_data(account="ACC-B"))
    with pytest.raises(ValidationError) as exc:
        block_create(user=trader, order_ids=[a.pk, hidden.pk])
    assert exc.value.errors == {"orders": [f"unknown order(s) {hidden.pk}"]}
    held = make_order(account="ACC-C")
    Order.objects.filter(pk=held.pk).update(status=OrderStatus.AWAITING_OVERRIDE)
    with pytest.raises(ConflictError) as exc:
        block_create(user=trader, order_ids=[a.pk, held.pk])
    assert exc.value.errors == {"orders": [f"order {held.pk} is awaiting_override, not approved"]}
    assert Block.objects.count() == 0


def test_block_refuses_orders_already_in_a_block(
    book: Any, second_account: Any, make_order: Any, trader: Any
) -> None:
    a, c, d = make_order(), make_order(account="ACC-C"), make_order(account="ACC-C")
    block_create(user=trader, order_ids=[a.pk, c.pk])
    with pytest.raises(ConflictError) as exc:
        block_create(user=trader, order_ids=[a.pk, d.pk])
    assert exc.value.code == "invalid_transition"


def test_only_traders_create_blocks(book: Any, make_order: Any, pm: Any) -> None:
    with pytest.raises(NotPermitted):
        block_create(user=pm, order_ids=[1, 2])


def test_cancel_of_an_order_in_an_open_block_takes_it_out(
    book: Any, second_account: Any, make_order: Any, trader: Any, pm: Any
) -> None:
    a, c, d = make_order(), make_order(account="ACC-C", quantity="30"), make_order(quantity="20")
    block = block_create(user=trader, order_ids=[a.pk, c.pk, d.pk])
    order_cancel(user=pm, order_id=c.pk)
    block.refresh_from_db()
    assert (block.quantity, block.status) == (Decimal("120"), "open")
    order_cancel(user=pm, order_id=a.pk)
    order_cancel(user=pm, order_id=d.pk)
    block.refresh_from_db()
    assert block.status == "dissolved"


def test_amend_of_an_order_in_an_open_block_is_refused(
    book: Any, second_account: Any, make_order: Any, trader: Any
) -> None:
    a, c = make_order(), make_order(account="ACC-C")
    block_create(user=trader, order_ids=[a.pk, c.pk])
    with pytest.raises(ConflictError) as exc:
        order_amend(user=trader, order_id=a.pk, version=3, quantity="5")
    assert exc.value.code == "in_block"


def test_a_single_order_is_stored_as_a_basket_row_with_the_same_terms(book: Any, pm: Any) -> None:
    # given terms that fill every optional column (stop-limit, gtd, client order id)
    Rule.objects.create(
        name="size", rule_type="fat_finger", severity="warn", params={"max_quantity": "50"}
    )
    expire = (firm_today() + dt.timedelta(days=3)).isoformat()
    terms = order_data(
        order_type="stop_limit",
        stop_price="100.50",
        limit_price="101.25",
        time_in_force="gtd",
        expire_date=expire,
    )
    # when one is entered alone (one-row insert) and one in a basket (array insert)
    single = order_create(user=pm, data={**terms, "client_order_id": "one"})
    (in_basket,), _ = orders_create_bulk(user=pm, rows=[{**terms, "client_order_id": "two"}])
    # then both rows hold the same values, apart from identity, basket and times
    skip = {"id", "client_order_id", "basket_id", "created_at", "updated_at"}

    def row(pk: int) -> dict[str, Any]:
        return {k: v for k, v in Order.objects.filter(pk=pk).values()[0].items() if k not in skip}

    assert row(single.pk) == row(in_basket.pk)
    assert row(single.pk) | {"client_order_id": "one"} == {
        "account_id": book["account"].pk,
        "instrument_id": book["instrument"].pk,
        "side": "buy",
        "quantity": Decimal("100"),
        "order_type": "stop_limit",
        "limit_price": Decimal("101.25"),
        "stop_price": Decimal("100.5"),
        "time_in_force": "gtd",
        "expire_date": dt.date.fromisoformat(expire),
        "status": OrderStatus.AWAITING_OVERRIDE,
        "cum_qty": Decimal("0"),
        "leaves_qty": Decimal("100"),
        "avg_px": Decimal("0"),
        "filled_notional": Decimal("0"),
        "compliance_outcome": "warn",
        "created_by_id": pm.pk,
        "client_order_id": "one",
        "block_id": None,
        "version": 2,
    }
    assert Order.objects.get(pk=single.pk).client_order_id == "one"
    assert Order.objects.get(pk=single.pk).basket_id is None


def _statements(run: Any) -> tuple[Any, list[str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        out = run()
    return out, [q["sql"] for q in ctx.captured_queries]


def test_a_single_order_is_inserted_with_its_results_in_one_statement(book: Any, pm: Any) -> None:
    # given rules that pass, warn and block, with a message that needs quoting
    Rule.objects.create(
        name='size "big", \\ {x}',
        rule_type="fat_finger",
        severity="warn",
        params={"max_quantity": "100"},
    )
    Rule.objects.create(name="bp", rule_type="buying_power", severity="block")
    order_create(user=pm, data=order_data(quantity="1"))  # warms the caches
    # when one order is entered
    order, sql = _statements(lambda: order_create(user=pm, data=order_data(quantity="500")))
    # then the order, its result set and its first audit events (with their stream's head)
    # went in one statement, and nothing else wrote them
    inserts = [s for s in sql if "INSERT INTO" in s]
    assert len(inserts) == 1
    assert inserts[0].startswith("WITH o AS (INSERT INTO orders_order")
    assert "INSERT INTO compliance_complianceresultset" in inserts[0]
    assert "INSERT INTO oms_site_auditevent" in inserts[0]
    assert "INSERT INTO oms_site_auditstream" in inserts[0]
    stored = Order.objects.get(pk=order.pk)
    assert (stored.status, stored.compliance_outcome, stored.version) == (
        OrderStatus.AWAITING_OVERRIDE,
        "warn",
        2,
    )
    # the stored results are the ones the answer carries (read back from the sets' view)
    read = [
        (r.rule_name, r.outcome, r.message, r.measured, r.limit, r.checked_at)
        for r in ComplianceResult.objects.filter(order_id=order.pk).order_by("id")
    ]
    answered = [
        (r.rule_name, r.outcome, r.message, r.measured, r.limit, r.checked_at)
        for r in order.compliance_results.all()
    ]
    assert read == answered
    assert sorted(name for name, *_ in read) == ["bp", 'size "big", \\ {x}']
    assert {name: outcome for name, outcome, *_ in read} == {
        "bp": "pass",
        'size "big", \\ {x}': "warn",
    }
    assert all(at is not None and at >= stored.created_at for *_, at in read)


def test_a_single_order_without_results_is_inserted_alone(book: Any, pm: Any) -> None:
    # given no active rule
    Rule.objects.all().delete()
    order_create(user=pm, data=order_data(quantity="1"))
    # when one order is entered
    order, sql = _statements(lambda: order_create(user=pm, data=order_data(quantity="5")))
    # then the plain insert wrote it, and no result set exists for it
    inserts = [s for s in sql if "INSERT INTO" in s and "oms_site_auditevent" not in s]
    assert len(inserts) == 1
    assert inserts[0].startswith("INSERT INTO orders_order")
    assert ComplianceResult.objects.filter(order_id=order.pk).count() == 0
    assert Order.objects.get(pk=order.pk).status == OrderStatus.APPROVED


def _trail(order_id: int) -> list[dict[str, Any]]:
    return list(
        AuditEvent.objects.filter(stream=f"order:{order_id}")
        .order_by("id")
        .values(
            "id",
            "stream",
            "seq",
            "occurred_at",
            "actor_id",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "before",
            "after",
            "meta",
            "prev_hash",
            "hash",
        )
    )


@pytest.mark.parametrize("quantity", ["5", "500"])
def test_a_single_orders_audit_events_written_by_its_insert_are_the_separate_writes(
    book: Any, pm: Any, monkeypatch: pytest.MonkeyPatch, quantity: str
) -> None:
    from oms_site.audit import GENESIS_HASH, audit_verify, event_hash

    # given rules that pass and warn (a non-ASCII name in the answer's results), and the
    # insert without its audit events (the audit written by its own statement, as before)
    Rule.objects.create(
        name="größe", rule_type="fat_finger", severity="warn", params={"max_quantity": "100"}
    )
    Rule.objects.create(name="bp", rule_type="buying_power", severity="block")
    order_create(user=pm, data=order_data(quantity="1"))  # warms the caches
    check_and_insert = svc._check_and_insert

    def without_audit(*args: Any, **kwargs: Any) -> Any:
        return check_and_insert(*args, **{**kwargs, "audit": None})

    data = order_data(quantity=quantity, client_order_id=None)
    # when the same order is entered both ways
    merged, merged_sql = _statements(lambda: order_create(user=pm, data=dict(data)))
    monkeypatch.setattr(svc, "_check_and_insert", without_audit)
    separate, separate_sql = _statements(lambda: order_create(user=pm, data=dict(data)))
    # then the merged way took one statement less
    assert len(merged_sql) == len(separate_sql) - 1
    # and wrote the same two events, each field as the separate write stores it
    a, b = _trail(merged.pk), _trail(separate.pk)
    assert [e["action"] for e in a] == ["order.created", "order.compliance_checked"]
    assert [e["seq"] for e in a] == [1, 2]
    assert a[0]["id"] < a[1]["id"]
    assert a[0]["prev_hash"] == GENESIS_HASH and a[1]["prev_hash"] == a[0]["hash"]
    assert [(e["object_id"], e["stream"]) for e in a] == [
        (str(merged.pk), f"order:{merged.pk}")
    ] * 2
    assert a[0]["occurred_at"] == a[1]["occurred_at"]
    outcome = "warn" if quantity == "500" else "pass"
    status = "awaiting_override" if quantity == "500" else "approved"
    assert a[1]["after"] == {"status": status, "version": 2, "compliance_outcome": outcome}
    assert a[1]["before"] == {"status": "pending_compliance", "version": 1}
    same = ("actor_id", "actor_name", "action", "object_type", "before", "after", "meta")
    assert [{k: e[k] for k in same} for e in a] == [{k: e[k] for k in same} for e in b]
    # each hash is the one Python computes over the stored event, and the chain verifies
    hashed = ("stream", "seq", "prev_hash", "occurred_at", "actor_id", "actor_name", "action")
    hashed += ("object_type", "object_id", "before", "after", "meta")
    for event in a:
        assert event["hash"] == event_hash(**{k: event[k] for k in hashed})
    assert audit_verify(streams=[f"order:{merged.pk}", f"order:{separate.pk}"]) == []
    # and the stream's head is the second event
    from oms_site.models import AuditStream

    head = AuditStream.objects.get(stream=f"order:{merged.pk}")
    assert (head.last_seq, head.last_hash) == (2, a[1]["hash"])


def test_new_object_events_refuse_entries_of_another_stream() -> None:
    from oms_site.audit import AuditEntry, new_object_events_params

    # given entries of two object types, or with a stream of their own
    mixed = [
        AuditEntry(action="a", object_type="order", object_id=""),
        AuditEntry(action="b", object_type="basket", object_id=""),
    ]
    named = [AuditEntry(action="a", object_type="order", object_id="", stream="other")]
    actors = [
        AuditEntry(action="a", object_type="order", object_id="", actor=None),
        AuditEntry(action="b", object_type="order", object_id="", actor=object()),
    ]
    # then none can be written as a new object's first events
    for entries in (mixed, named, actors):
        with pytest.raises(ValueError):
            new_object_events_params(entries, timezone.now())


def test_a_single_orders_insert_is_a_statement_psycopg_converts_once() -> None:
    from psycopg import _queries

    # given the single order's insert with its results and its two audit events
    sql = svc._insert_one_with_results_sql(events=2)
    # then psycopg keeps its conversion (it converts longer statements, or statements of more
    # parameters, again on every execution: about 0.2 ms of a worker's CPU per order)
    assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    assert sql.count("%s") <= _queries.MAX_CACHED_STATEMENT_PARAMS
