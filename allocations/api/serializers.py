"""Output (and reallocation input) serializers of the book API; decimals travel as strings."""

from __future__ import annotations

from rest_framework import serializers

from allocations.models import AllocationMethod

_QTY = {"max_digits": 24, "decimal_places": 8, "coerce_to_string": True}
_MONEY = {"max_digits": 38, "decimal_places": 8, "coerce_to_string": True}


class CashOutput(serializers.Serializer):
    account = serializers.CharField(source="account.code")
    currency = serializers.CharField()
    settled = serializers.DecimalField(max_digits=24, decimal_places=2)
    pending = serializers.DecimalField(max_digits=24, decimal_places=2)
    total = serializers.DecimalField(**_MONEY, required=False)
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField()


class _AccountCash(serializers.Serializer):
    currency = serializers.CharField()
    settled = serializers.DecimalField(max_digits=24, decimal_places=2)
    pending = serializers.DecimalField(max_digits=24, decimal_places=2)


class AccountOutput(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    name = serializers.CharField()
    client = serializers.CharField()
    custodian = serializers.CharField(source="custodian.code")
    desk = serializers.CharField(source="desk.code")
    base_currency = serializers.CharField()
    short_selling_allowed = serializers.BooleanField()
    active = serializers.BooleanField()
    cash = _AccountCash(source="cash_balances.all", many=True)
    # In base_currency; null when an amount has no FX rate, named in nav_missing_rates.
    nav = serializers.DecimalField(**_MONEY, allow_null=True)
    nav_missing_rates = serializers.ListField(child=serializers.CharField())


class PositionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.CharField(source="account.code")
    instrument = serializers.CharField(source="instrument.symbol")
    currency = serializers.CharField(source="instrument.currency")
    quantity = serializers.DecimalField(**_QTY)
    avg_cost = serializers.DecimalField(**_QTY)
    realised_pnl = serializers.DecimalField(**_QTY)
    market_price = serializers.DecimalField(**_QTY, allow_null=True)
    market_value = serializers.DecimalField(**_MONEY, allow_null=True)
    unrealised_pnl = serializers.DecimalField(**_MONEY, allow_null=True)
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField()


class AllocationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    execution = serializers.IntegerField(source="execution_id")
    block = serializers.IntegerField(source="block_id", allow_null=True)
    order = serializers.IntegerField(source="order_id")
    account = serializers.CharField(source="account.code")
    instrument = serializers.CharField(source="instrument.symbol")
    broker = serializers.CharField(source="broker.code")
    side = serializers.CharField()
    kind = serializers.CharField()
    quantity = serializers.DecimalField(**_QTY)
    cum_quantity = serializers.DecimalField(**_QTY)
    price = serializers.DecimalField(**_QTY)
    gross = serializers.DecimalField(max_digits=24, decimal_places=2)
    commission = serializers.DecimalField(max_digits=24, decimal_places=2)
    fees = serializers.DecimalField(max_digits=24, decimal_places=2)
    net = serializers.DecimalField(max_digits=24, decimal_places=2)
    currency = serializers.CharField()
    trade_date = serializers.DateField()
    settlement_date = serializers.DateField()
    method = serializers.CharField()
    reversal_of = serializers.IntegerField(source="reversal_of_id", allow_null=True)
    cash_settled = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class ExecutionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    exec_id = serializers.CharField()
    session_key = serializers.CharField()
    order = serializers.SerializerMethodField()
    block = serializers.SerializerMethodField()
    placement = serializers.IntegerField(source="placement_id", allow_null=True)
    broker = serializers.SerializerMethodField()
    instrument = serializers.SerializerMethodField()
    side = serializers.CharField()
    exec_type = serializers.CharField()
    ord_status = serializers.CharField()
    last_qty = serializers.DecimalField(**_QTY)
    last_px = serializers.DecimalField(**_QTY)
    cum_qty = serializers.DecimalField(**_QTY)
    avg_px = serializers.DecimalField(**_QTY)
    trade_date = serializers.DateField(allow_null=True)
    transact_time = serializers.DateTimeField(allow_null=True)
    received_at = serializers.DateTimeField()

    def get_order(self, obj) -> int | None:
        if obj.order_id:
            return obj.order_id
        return obj.placement.order_id if obj.placement_id else None

    def get_block(self, obj) -> int | None:
        if obj.block_id:
            return obj.block_id
        return obj.placement.block_id if obj.placement_id else None

    def get_broker(self, obj) -> str | None:
        return obj.broker.code if obj.broker_id else None

    def get_instrument(self, obj) -> str | None:
        return obj.instrument.symbol if obj.instrument_id else None


class ReallocateInput(serializers.Serializer):
    """Exactly one of block or execution; keys of quantities/ratios: order id or account code."""

    block = serializers.IntegerField(required=False, allow_null=True)
    execution = serializers.IntegerField(required=False, allow_null=True)
    method = serializers.ChoiceField(choices=AllocationMethod.choices)
    quantities = serializers.DictField(
        child=serializers.DecimalField(max_digits=24, decimal_places=8), required=False
    )
    ratios = serializers.DictField(
        child=serializers.DecimalField(max_digits=24, decimal_places=8), required=False
    )

    def validate(self, attrs: dict) -> dict:
        if (attrs.get("block") is None) == (attrs.get("execution") is None):
            raise serializers.ValidationError({"block": ["give exactly one of block, execution"]})
        if attrs["method"] == AllocationMethod.MANUAL and not attrs.get("quantities"):
            raise serializers.ValidationError({"quantities": ["required for manual"]})
        if attrs["method"] == AllocationMethod.FIXED_RATIO and not attrs.get("ratios"):
            raise serializers.ValidationError({"ratios": ["required for fixed_ratio"]})
        return attrs


class ReallocateOutput(serializers.Serializer):
    block = serializers.IntegerField()
    method = serializers.CharField()
    allocations = AllocationOutput(many=True)
