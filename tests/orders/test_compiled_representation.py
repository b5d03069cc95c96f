"""The compiled rendering of orders equals DRF's rendering of the same serializer, field by field."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.db.models import Prefetch, prefetch_related_objects
from rest_framework import serializers

from compliance.models import ComplianceResult, Rule
from orders.api.serializers import CompiledRepresentation, OrderSerializer
from orders.models import Order

pytestmark = pytest.mark.django_db


def _loaded(pks: list[int]) -> list[Order]:
    orders = list(
        Order.objects.filter(pk__in=pks)
        .select_related("account", "instrument", "created_by")
        .order_by("pk")
    )
    prefetch_related_objects(
        orders, Prefetch("compliance_results", queryset=ComplianceResult.objects.order_by("pk"))
    )
    return orders


def test_orders_of_every_shape_render_exactly_as_drf_renders_them(
    make_order: Any, book: Any
) -> None:
    # given: results with and without measured values, nulls, a stop-limit, a GTD date
    Rule.objects.create(name="Buying power", rule_type="buying_power", severity="block")
    Rule.objects.create(
        name="Fat finger",
        rule_type="fat_finger",
        severity="warn",
        params={"max_quantity": "50", "max_notional": "12345.67"},
    )
    made = [
        make_order(),
        make_order(quantity="7", limit_price="10.25", client_order_id="c-1"),
        make_order(
            side="sell",
            order_type="stop_limit",
            stop_price="99.5",
            limit_price="99",
            time_in_force="gtd",
            expire_date=(dt.date.today() + dt.timedelta(days=30)).isoformat(),
        ),
        make_order(order_type="market", limit_price=None),
    ]
    orders = _loaded([o.pk for o in made])
    assert any(o.compliance_results.all() for o in orders)
    drf = OrderSerializer()
    compiled = CompiledRepresentation(OrderSerializer())
    # when / then
    for order in orders:
        expected = drf.to_representation(order)
        got = compiled(order)
        assert got == expected
        assert json.dumps(got) == json.dumps(expected)  # same key order, same types


def test_a_missing_related_object_falls_back_to_the_fields_own_lookup(
    make_order: Any, book: Any
) -> None:
    class Loose(serializers.Serializer):
        id = serializers.IntegerField()
        block = serializers.IntegerField(source="block.pk", allow_null=True)
        basket = serializers.CharField(source="basket.source", default="none")

    order = _loaded([make_order().pk])[0]
    assert order.block is None and order.basket is None
    assert CompiledRepresentation(Loose())(order) == Loose().to_representation(order)
    assert CompiledRepresentation(Loose())(order) == {
        "id": order.pk,
        "block": None,
        "basket": "none",
    }


def test_fields_that_are_not_attribute_paths_are_refused_when_compiling() -> None:
    class WithMethod(serializers.Serializer):
        id = serializers.IntegerField()
        extra = serializers.SerializerMethodField()

        def get_extra(self, obj: Any) -> int:
            return 1

    with pytest.raises(TypeError, match="extra: SerializerMethodField"):
        CompiledRepresentation(WithMethod())


def test_one_datetime_object_shared_by_results_renders_as_drf_renders_it(
    make_order: Any, book: Any
) -> None:
    # given: an order whose results all hold one checked_at object, as a new order's do
    Rule.objects.create(name="Buying power", rule_type="buying_power", severity="block")
    Rule.objects.create(name="Restricted", rule_type="restricted_list", severity="block")
    order = _loaded([make_order().pk])[0]
    results = list(order.compliance_results.all())
    assert len(results) == 2
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    for result in results:
        result.checked_at = at
    # when
    got = CompiledRepresentation(OrderSerializer())(order)
    # then
    assert got == OrderSerializer().to_representation(order)
    assert [r["checked_at"] for r in got["compliance"]["results"]] == [
        "2026-01-02T03:04:05.678901Z",
        "2026-01-02T03:04:05.678901Z",
    ]


def test_a_shared_memo_keeps_each_fields_own_format() -> None:
    # given: two date-time fields of different formats over the same object, one memo for
    # two instances
    class Stamped(serializers.Serializer):
        at = serializers.DateTimeField()
        day = serializers.DateTimeField(source="at", format="%Y-%m-%d")

    class Row:
        def __init__(self, at: dt.datetime) -> None:
            self.at = at

    at = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    later = dt.datetime(2026, 5, 7, 0, 0, 1, tzinfo=dt.UTC)
    compiled = CompiledRepresentation(Stamped())
    memo: dict[Any, Any] = {}
    # when
    first = compiled(Row(at), memo)
    second = compiled(Row(later), memo)
    again = compiled(Row(at), memo)
    # then
    assert first == again == {"at": "2026-05-06T07:08:09Z", "day": "2026-05-06"}
    assert second == {"at": "2026-05-07T00:00:01Z", "day": "2026-05-07"}
    assert second == Stamped().to_representation(Row(later))


def test_methods_are_called_or_not_as_drf_decides_also_from_the_memo_of_their_functions() -> None:
    # given: a method DRF calls (no arguments) and one it does not (an argument required),
    # and a plain function stored on an instance
    class Row:
        def __init__(self, n: int) -> None:
            self.n = n
            self.loose = lambda: "loose"

        def caption(self) -> str:
            return f"row {self.n}"

        def scaled(self, factor: int) -> int:
            return self.n * factor

    class Rows(serializers.Serializer):
        caption = serializers.CharField()
        scaled = serializers.CharField()
        loose = serializers.CharField()

    compiled = CompiledRepresentation(Rows())
    # when: rendered twice (the second time from what the first learnt of each function)
    rows = [Row(1), Row(2)]
    got = [compiled(row) for row in rows]
    # then: as DRF renders them, the method with an argument rendered uncalled
    assert got == [Rows().to_representation(row) for row in rows]
    assert [(g["caption"], g["loose"]) for g in got] == [("row 1", "loose"), ("row 2", "loose")]
    assert got[1]["scaled"].startswith("<bound method ")
