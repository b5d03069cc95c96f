"""Serializers of the routing API (routes, kill switch, FIX sessions)."""

from __future__ import annotations

from rest_framework import serializers

from orders.api.serializers import PlainDecimalField
from orders.enums import KillScope


class RouteInputSerializer(serializers.Serializer):
    broker = serializers.CharField(
        allow_null=True,
        required=False,
        default=None,
        help_text="broker code; null: the best-execution rule picks",
    )
    asynchronous = serializers.BooleanField(
        required=False,
        default=False,
        help_text="true: queue the route for a Celery routing worker and answer 202 at once",
    )


class PlacementSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    cl_ord_id = serializers.CharField()
    broker = serializers.CharField(source="broker.code")
    order = serializers.IntegerField(source="order_id", allow_null=True)
    block = serializers.IntegerField(source="block_id", allow_null=True)
    quantity = PlainDecimalField()
    limit_price = PlainDecimalField(allow_null=True)
    cum_qty = PlainDecimalField()
    avg_px = PlainDecimalField()
    status = serializers.CharField()
    route_reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class OrderStateSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    version = serializers.IntegerField()


class RouteResultSerializer(serializers.Serializer):
    placement = PlacementSerializer()
    orders = OrderStateSerializer(many=True)


class RouteQueuedSerializer(serializers.Serializer):
    queued = serializers.BooleanField()
    order = serializers.IntegerField(required=False)
    block = serializers.IntegerField(required=False)


class KillSwitchInputSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=KillScope.choices)
    target = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="desk or account code"
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class KillSwitchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    scope = serializers.CharField()
    target = serializers.CharField()
    active = serializers.BooleanField()
    reason = serializers.CharField()
    engaged_by = serializers.CharField(source="engaged_by.username")
    engaged_at = serializers.DateTimeField()
    lifted_by = serializers.CharField(source="lifted_by.username", allow_null=True, default=None)
    lifted_at = serializers.DateTimeField(allow_null=True)


class KillSwitchResultSerializer(KillSwitchSerializer):
    canceled = serializers.IntegerField(help_text="staged orders canceled directly")
    cancel_requests = serializers.IntegerField(help_text="cancel requests sent to brokers")


class FixSessionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    session_key = serializers.CharField()
    broker = serializers.CharField(source="broker.code")
    host = serializers.CharField()
    port = serializers.IntegerField()
    sender_comp_id = serializers.CharField()
    target_comp_id = serializers.CharField()
    fix_version = serializers.CharField()
    heartbeat_seconds = serializers.IntegerField()
    enabled = serializers.BooleanField()
    logged_on = serializers.BooleanField()
    next_sender_seq = serializers.IntegerField()
    next_target_seq = serializers.IntegerField()
    status_at = serializers.DateTimeField(allow_null=True)
