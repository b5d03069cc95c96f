"""Input and output serializers of the settlement API (plain serializers, no writes)."""

from __future__ import annotations

from rest_framework import serializers


class RunInput(serializers.Serializer):
    trade_date = serializers.DateField()


class RunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    trade_date = serializers.DateField()
    status = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    requested_by = serializers.CharField(
        source="requested_by.username", default=None, allow_null=True
    )
    summary = serializers.JSONField()


class FileOutput(serializers.Serializer):
    id = serializers.IntegerField()
    run = serializers.IntegerField(source="run_id")
    custodian = serializers.CharField(source="custodian.code")
    trade_date = serializers.DateField()
    version = serializers.IntegerField()
    file_format = serializers.CharField()
    filename = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    line_count = serializers.IntegerField()
    changes = serializers.JSONField()
    created_at = serializers.DateTimeField()
    download_url = serializers.SerializerMethodField()

    def get_download_url(self, obj: object) -> str:
        return f"/api/v1/settlement/files/{obj.pk}/download/"  # type: ignore[attr-defined]


class StatementInput(serializers.Serializer):
    file = serializers.FileField()
    source = serializers.CharField(max_length=64)
    price_tolerance = serializers.DecimalField(
        max_digits=24, decimal_places=8, required=False, allow_null=True, min_value=0
    )


class StatementOutput(serializers.Serializer):
    id = serializers.IntegerField()
    source = serializers.CharField()
    source_kind = serializers.CharField()
    source_code = serializers.CharField()
    filename = serializers.CharField()
    sha256 = serializers.CharField()
    uploaded_at = serializers.DateTimeField()
    uploaded_by = serializers.CharField(source="uploaded_by.username")
    line_count = serializers.IntegerField()
    trade_dates = serializers.JSONField()
    price_tolerance = serializers.DecimalField(max_digits=24, decimal_places=8)
    matched_count = serializers.IntegerField()
    break_count = serializers.IntegerField()


class BreakOutput(serializers.Serializer):
    id = serializers.IntegerField()
    statement = serializers.IntegerField(source="statement_id")
    kind = serializers.CharField()
    status = serializers.CharField()
    account = serializers.CharField(source="account_code")
    instrument = serializers.CharField()
    trade_date = serializers.DateField()
    side = serializers.CharField()
    oms_allocation_id = serializers.IntegerField(allow_null=True)
    statement_row = serializers.IntegerField(allow_null=True)
    oms_values = serializers.JSONField()
    statement_values = serializers.JSONField()
    resolved_by = serializers.CharField(
        source="resolved_by.username", default=None, allow_null=True
    )
    resolved_at = serializers.DateTimeField(allow_null=True)
    comment = serializers.CharField()


class ResolveInput(serializers.Serializer):
    comment = serializers.CharField(allow_blank=True, trim_whitespace=True)
