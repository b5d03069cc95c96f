"""Serializers of the orders API.

Input serializers describe request bodies (for the OpenAPI schema and clients); the services
parse and validate them, so single orders, baskets and scripts share one set of rules and
messages. Output serializers are plain `Serializer`s with decimals as normalised strings.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db.models.manager import BaseManager
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import SkipField, is_simple_callable

from orders.enums import OrderType, Side, TimeInForce


class PlainDecimalField(serializers.DecimalField):
    """A decimal rendered as its shortest exact string ("100", "10.25"), never float."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 24)
        kwargs.setdefault("decimal_places", 8)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        if value is None:
            return None
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        text = format(d.normalize(), "f")
        return "0" if text in ("-0", "0") else text


# ----------------------------------------------------------------------------- errors


class ErrorSerializer(serializers.Serializer):
    """The error envelope of every endpoint."""

    code = serializers.CharField()
    detail = serializers.CharField()
    errors = serializers.JSONField()  # type: ignore[assignment]


_BASKET_ROW_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "row": {"type": "integer", "description": "1-based number of the order in the basket"},
        "field": {"type": "string"},
        "detail": {"type": "string"},
    },
    "required": ["row", "field", "detail"],
}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": _BASKET_ROW_ERROR_SCHEMA},
            {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
                "description": "an error of the request itself (e.g. its Idempotency-Key)",
            },
        ]
    }
)
class BasketErrorsField(serializers.JSONField):
    """Row errors of a rejected basket, or field errors of the request around it."""


class BasketErrorSerializer(serializers.Serializer):
    """A rejected basket: every invalid row (or the request's own error), nothing created."""

    code = serializers.CharField()
    detail = serializers.CharField()
    errors = BasketErrorsField()  # type: ignore[assignment]


# ----------------------------------------------------------------------------- inputs


class OrderInputSerializer(serializers.Serializer):
    """One order as entered by a PM (also one basket row)."""

    account = serializers.CharField(help_text="account code")
    instrument = serializers.CharField(help_text="instrument symbol")
    side = serializers.ChoiceField(choices=Side.choices)
    quantity = PlainDecimalField()
    order_type = serializers.ChoiceField(choices=OrderType.choices)
    limit_price = PlainDecimalField(required=False, allow_null=True)
    stop_price = PlainDecimalField(required=False, allow_null=True)
    time_in_force = serializers.ChoiceField(
        choices=TimeInForce.choices, required=False, default=TimeInForce.DAY
    )
    expire_date = serializers.DateField(required=False, allow_null=True, help_text="gtd only")
    client_order_id = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=64,
        help_text="your id; a retry with the same id returns the first order",
    )


class OrderAmendInputSerializer(serializers.Serializer):
    """New terms for an order, with the version the client last saw."""

    quantity = PlainDecimalField(required=False, allow_null=True)
    limit_price = PlainDecimalField(required=False, allow_null=True)
    stop_price = PlainDecimalField(required=False, allow_null=True)
    version = serializers.IntegerField()


class OrderCancelInputSerializer(serializers.Serializer):
    """Optionally the version the client last saw (a stale version is refused)."""

    version = serializers.IntegerField(required=False, allow_null=True)


class BasketJsonInputSerializer(serializers.Serializer):
    orders = OrderInputSerializer(many=True)


class BasketUploadInputSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text=(
            "CSV with header account,instrument,side,quantity,order_type,limit_price,"
            "stop_price,time_in_force[,expire_date,client_order_id]"
        )
    )


class BlockCreateInputSerializer(serializers.Serializer):
    orders = serializers.ListField(child=serializers.IntegerField(), min_length=1)


# ----------------------------------------------------------------------------- outputs


class ReferencePriceSerializer(serializers.Serializer):
    bid = PlainDecimalField()
    ask = PlainDecimalField()
    last = PlainDecimalField()
    as_of = serializers.DateTimeField()


class InstrumentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    symbol = serializers.CharField()
    isin = serializers.CharField(allow_null=True)
    name = serializers.CharField()
    asset_class = serializers.CharField()
    currency = serializers.CharField()
    sector = serializers.CharField()
    country = serializers.CharField()
    lot_size = PlainDecimalField()
    tick_size = PlainDecimalField()
    tradable = serializers.BooleanField()
    price = serializers.SerializerMethodField()

    @extend_schema_field(ReferencePriceSerializer(allow_null=True))
    def get_price(self, obj: Any) -> dict[str, Any] | None:
        price = getattr(obj, "price", None)
        return ReferencePriceSerializer(price).data if price is not None else None


class ComplianceResultSerializer(serializers.Serializer):
    rule = serializers.CharField(source="rule_name")
    rule_type = serializers.CharField()
    rule_version = serializers.IntegerField()
    outcome = serializers.CharField()
    message = serializers.CharField()
    measured = PlainDecimalField(allow_null=True)
    limit = PlainDecimalField(allow_null=True)
    checked_at = serializers.DateTimeField()


class ComplianceSerializer(serializers.Serializer):
    outcome = serializers.CharField(source="compliance_outcome", allow_null=True)
    results = ComplianceResultSerializer(source="compliance_results.all", many=True)


class OrderSerializer(serializers.Serializer):
    """An order as the blotter and PMs see it."""

    id = serializers.IntegerField()
    account = serializers.CharField(source="account.code")
    instrument = serializers.CharField(source="instrument.symbol")
    side = serializers.CharField()
    quantity = PlainDecimalField()
    order_type = serializers.CharField()
    limit_price = PlainDecimalField(allow_null=True)
    stop_price = PlainDecimalField(allow_null=True)
    time_in_force = serializers.CharField()
    expire_date = serializers.DateField(allow_null=True)
    status = serializers.CharField()
    cum_qty = PlainDecimalField()
    leaves_qty = PlainDecimalField()
    avg_px = PlainDecimalField()
    compliance = ComplianceSerializer(source="*")
    client_order_id = serializers.CharField(allow_null=True)
    basket = serializers.IntegerField(source="basket_id", allow_null=True)
    block = serializers.IntegerField(source="block_id", allow_null=True)
    version = serializers.IntegerField()
    created_by = serializers.CharField(source="created_by.username")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ExecutionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    exec_id = serializers.CharField()
    exec_type = serializers.CharField()
    ord_status = serializers.CharField()
    broker = serializers.CharField(source="broker.code", allow_null=True, default=None)
    last_qty = PlainDecimalField()
    last_px = PlainDecimalField()
    cum_qty = PlainDecimalField()
    avg_px = PlainDecimalField()
    transact_time = serializers.DateTimeField(allow_null=True)
    received_at = serializers.DateTimeField()


class AuditEventSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    occurred_at = serializers.DateTimeField()
    actor = serializers.CharField(source="actor_name")
    action = serializers.CharField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    meta = serializers.JSONField()


class OrderDetailSerializer(OrderSerializer):
    """One order with its executions and its audit history."""

    executions = ExecutionSerializer(many=True, source="executions.all")
    history = serializers.SerializerMethodField()

    @extend_schema_field(AuditEventSerializer(many=True))
    def get_history(self, obj: Any) -> Any:
        events = self.context.get("history", [])
        return AuditEventSerializer(events, many=True).data


class BasketOrderSerializer(serializers.Serializer):
    """The compact row of an order in a basket response."""

    id = serializers.IntegerField()
    client_order_id = serializers.CharField(allow_null=True)
    account = serializers.CharField(source="account.code")
    instrument = serializers.CharField(source="instrument.symbol")
    side = serializers.CharField()
    quantity = PlainDecimalField()
    status = serializers.CharField()
    compliance_outcome = serializers.CharField(allow_null=True)
    version = serializers.IntegerField()


class BasketSummarySerializer(serializers.Serializer):
    created = serializers.IntegerField()
    passed = serializers.IntegerField()
    warned = serializers.IntegerField()
    blocked = serializers.IntegerField()


class BasketResultSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    orders = BasketOrderSerializer(many=True)
    summary = BasketSummarySerializer()


class BlockSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    instrument = serializers.CharField(source="instrument.symbol")
    side = serializers.CharField()
    order_type = serializers.CharField()
    limit_price = PlainDecimalField(allow_null=True)
    stop_price = PlainDecimalField(allow_null=True)
    time_in_force = serializers.CharField()
    quantity = PlainDecimalField()
    cum_qty = PlainDecimalField()
    avg_px = PlainDecimalField()
    status = serializers.CharField()
    version = serializers.IntegerField()
    orders = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username")
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_orders(self, obj: Any) -> list[int]:
        return sorted(o.pk for o in obj.orders.all())


# ----------------------------------------------------------------------------- fast rendering


# Fields whose value is not a plain attribute path rendered by the field itself.
_NOT_COMPILED = (
    serializers.SerializerMethodField,
    serializers.HiddenField,
    serializers.RelatedField,
    serializers.ManyRelatedField,
)


class CompiledRepresentation:
    """Renders exactly what `serializer.to_representation(instance)` renders, faster.

    Why: DRF walks each field through generic lookups (Mapping checks, callables, nested
    serializers' field iterators); for the answer to a new order that cost about half a
    millisecond, as much as the order's own SQL. The plan is built once from the serializer's
    fields; each field still renders through its own `to_representation`, and any lookup
    that does not resolve plainly goes back to the field's own `get_attribute` (defaults,
    nulls, skipped fields). Only plain fields, nested serializers and lists of them are
    accepted: anything else is refused when the plan is built, not rendered differently.

    A date-time field renders a value it has already rendered in the same call (the same
    object, e.g. the one `checked_at` of an order's twelve results) from a memo: DRF's
    rendering asks for the current time zone each time (an asgiref-local lookup), about
    20 us a value. Calls that pass one `memo` dict share it (a basket's orders); the
    values must stay alive while it is used, as the rendered instances keep them.
    """

    def __init__(self, serializer: serializers.Serializer) -> None:
        # (name, field, source attributes, renderer, whether the renderer takes the memo)
        self.plan: list[tuple[str, Any, tuple[str, ...], Callable[..., Any], bool]] = []
        for name, field in serializer.fields.items():
            if field.write_only:
                continue
            render: Callable[..., Any]
            takes_memo = True
            if isinstance(field, serializers.ListSerializer):
                render = _list_renderer(CompiledRepresentation(field.child))  # type: ignore[arg-type]
            elif isinstance(field, serializers.Serializer):
                render = CompiledRepresentation(field)
            elif isinstance(field, _NOT_COMPILED):
                raise TypeError(f"{name}: {type(field).__name__} is not supported here")
            elif (
                isinstance(field, serializers.DateTimeField)
                and type(field).to_representation is serializers.DateTimeField.to_representation
            ):
                render = _datetime_renderer(field)
            else:
                render = field.to_representation
                takes_memo = False
            self.plan.append((name, field, tuple(field.source_attrs), render, takes_memo))

    def __call__(self, instance: Any, memo: dict[Any, Any] | None = None) -> dict[str, Any]:
        if memo is None:
            memo = {}
        out: dict[str, Any] = {}
        for name, field, attrs, render, takes_memo in self.plan:
            value = instance
            try:
                for attr in attrs:
                    value = getattr(value, attr)
                    if callable(value) and _simple_callable(value):
                        value = value()
            except (AttributeError, ObjectDoesNotExist):
                try:
                    value = field.get_attribute(instance)
                except SkipField:
                    continue
            if value is None:
                out[name] = None
            elif takes_memo:
                out[name] = render(value, memo)
            else:
                out[name] = render(value)
        return out


# Whether a bound method is a "simple callable" (DRF calls it for its value) depends only on
# its function; DRF's test builds an inspect.Signature each time (about 8 us, once per order
# for `compliance_results.all`).
_SIMPLE_METHODS: dict[Any, bool] = {}


def _simple_callable(value: Any) -> bool:
    func = getattr(value, "__func__", None)
    if func is None or getattr(value, "__self__", None) is None:
        return is_simple_callable(value)
    try:
        return _SIMPLE_METHODS[func]
    except KeyError:
        simple = _SIMPLE_METHODS[func] = is_simple_callable(value)
        return simple


def _list_renderer(child: CompiledRepresentation) -> Callable[[Any, dict[Any, Any]], list[Any]]:
    def render(data: Any, memo: dict[Any, Any]) -> list[Any]:
        items = data.all() if isinstance(data, BaseManager) else data
        return [child(item, memo) for item in items]

    return render


def _datetime_renderer(
    field: serializers.DateTimeField,
) -> Callable[[Any, dict[Any, Any]], Any]:
    """DRF's rendering of `field`, once per value object and field in one memo.

    Keyed by the objects' ids, and the object itself kept beside its text (an id is only
    unique among live objects); the time zone cannot change within one synchronous call.
    """
    field_id = id(field)

    def render(value: Any, memo: dict[Any, Any]) -> Any:
        key = (field_id, id(value))
        hit = memo.get(key)
        if hit is not None and hit[0] is value:
            return hit[1]
        text = field.to_representation(value)
        memo[key] = (value, text)
        return text

    return render
