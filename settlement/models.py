"""Settlement runs and files, custodian/broker statements and reconciliation breaks."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class SettlementRun(models.Model):
    """One generation of a trade date's settlement files (scheduled or on demand)."""

    trade_date = models.DateField()
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=16, default="running")
    summary = models.JSONField(default=dict, blank=True)


class SettlementFile(models.Model):
    """A stored, checksummed, never-overwritten file for one custodian and trade date."""

    run = models.ForeignKey(SettlementRun, on_delete=models.PROTECT, related_name="files")
    custodian = models.ForeignKey(
        "allocations.Custodian", on_delete=models.PROTECT, related_name="+"
    )
    trade_date = models.DateField()
    version = models.PositiveIntegerField()
    file_format = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    line_count = models.PositiveIntegerField()
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["custodian", "trade_date", "version"], name="settlementfile_version_uniq"
            )
        ]
        ordering = ["-trade_date", "custodian_id", "-version"]


class Statement(models.Model):
    """An uploaded custodian or broker statement and its matching run."""

    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=64)
    filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    line_count = models.PositiveIntegerField()
    matched_count = models.PositiveIntegerField(default=0)
    break_count = models.PositiveIntegerField(default=0)


class ReconBreak(models.Model):
    """A difference between the OMS and a statement, for someone to resolve."""

    statement = models.ForeignKey(Statement, on_delete=models.PROTECT, related_name="breaks")
    kind = models.CharField(max_length=24)
    status = models.CharField(max_length=12, default="open")
    account_code = models.CharField(max_length=32)
    instrument = models.CharField(max_length=32)
    trade_date = models.DateField()
    side = models.CharField(max_length=16)
    oms_values = models.JSONField(default=dict, blank=True)
    statement_values = models.JSONField(default=dict, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
