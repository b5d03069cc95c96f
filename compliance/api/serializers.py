"""Input and output serializers of the compliance API (plain serializers, no per-row queries)."""

from __future__ import annotations

from rest_framework import serializers

from compliance.models import RuleType, Scope, Severity


class OverrideInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=4000, allow_blank=True, trim_whitespace=True)


class ResultSerializer(serializers.Serializer):
    rule = serializers.CharField()
    rule_id = serializers.IntegerField(allow_null=True)
    rule_type = serializers.CharField()
    rule_version = serializers.IntegerField()
    outcome = serializers.CharField()
    message = serializers.CharField()
    measured = serializers.CharField(allow_null=True)
    limit = serializers.CharField(allow_null=True)


class ComplianceSummarySerializer(serializers.Serializer):
    outcome = serializers.CharField(allow_null=True)
    results = ResultSerializer(many=True)


class OverrideOutputSerializer(serializers.Serializer):
    officer = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class OverriddenOrderSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    version = serializers.IntegerField()
    override = OverrideOutputSerializer()


class QueueOrderSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.CharField()
    instrument = serializers.CharField()
    side = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=8)
    order_type = serializers.CharField()
    limit_price = serializers.DecimalField(max_digits=24, decimal_places=8, allow_null=True)
    status = serializers.CharField()
    version = serializers.IntegerField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    compliance = ComplianceSummarySerializer()


class ReportRunInputSerializer(serializers.Serializer):
    as_of = serializers.DateField(required=False, allow_null=True)


class BreachSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField()
    rule = serializers.CharField()
    rule_version = serializers.IntegerField()
    rule_type = serializers.CharField()
    severity = serializers.CharField()
    account = serializers.CharField(allow_null=True)
    subject = serializers.CharField()
    measured = serializers.CharField()
    limit = serializers.CharField()
    message = serializers.CharField()


class ReportSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    as_of = serializers.DateField()
    run_at = serializers.DateTimeField()
    run_by = serializers.CharField(allow_null=True)
    breach_count = serializers.IntegerField()
    breaches = BreachSerializer(many=True)


class RuleInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120, required=False)
    rule_type = serializers.ChoiceField(choices=RuleType.choices, required=False)
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)
    scope = serializers.ChoiceField(choices=Scope.choices, required=False)
    params = serializers.DictField(child=serializers.CharField(), required=False)
    active = serializers.BooleanField(required=False)
    effective_from = serializers.DateField(required=False, allow_null=True)
    effective_to = serializers.DateField(required=False, allow_null=True)
    accounts = serializers.ListField(child=serializers.CharField(), required=False)
    groups = serializers.ListField(child=serializers.CharField(), required=False)


class RuleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    rule_type = serializers.CharField()
    severity = serializers.CharField()
    scope = serializers.CharField()
    params = serializers.DictField()
    active = serializers.BooleanField()
    effective_from = serializers.DateField(allow_null=True)
    effective_to = serializers.DateField(allow_null=True)
    accounts = serializers.ListField(child=serializers.CharField())
    groups = serializers.ListField(child=serializers.CharField())
    version = serializers.IntegerField()
