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
