"""Settlement runs and files, custodian/broker statements and reconciliation breaks."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"  # started, files being written
    DONE = "done", "Done"  # every custodian produced (or confirmed unchanged) its file
    FAILED = "failed", "Failed"  # at least one custodian's file could not be produced


class FileOutcome(models.TextChoices):
    """What a run did for one custodian (SettlementRun.summary["custodians"][i]["outcome"])."""

    CREATED = "created", "Created"  # first version of the day
    NEW_VERSION = "new_version", "New version"  # content changed: next version written
    UNCHANGED = "unchanged", "Unchanged"  # byte-identical to the latest version: nothing written
    FAILED = "failed", "Failed"  # the file could not be produced (reason in "error")


class SettlementRun(models.Model):
    """One generation of a trade date's settlement files (scheduled or on demand)."""

    trade_date = models.DateField()
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["trade_date"], name="settlementrun_date_idx")]


class SettlementFile(models.Model):
    """A stored, checksummed, never-overwritten file for one custodian and trade date."""

    run = models.ForeignKey(SettlementRun, on_delete=models.PROTECT, related_name="files")
    custodian = models.ForeignKey(
        "allocations.Custodian", on_delete=models.PROTECT, related_name="+"
    )
    trade_date = models.DateField()
    version = models.PositiveIntegerField()
    file_format = models.CharField(max_length=8)
    filename = models.CharField(max_length=200, default="")
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    line_count = models.PositiveIntegerField()
    # {"previous_version", "previous_sha256", "added", "removed", "changed": [allocation ids],
    #  "counts": {...}, "truncated": bool}; empty for version 1.
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["custodian", "trade_date", "version"], name="settlementfile_version_uniq"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="settlementfile_version_pos"),
        ]
        ordering = ["-trade_date", "custodian_id", "-version"]


class Statement(models.Model):
    """An uploaded custodian or broker statement and its matching run."""

    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=64)
    # "custodian" or "broker": which OMS allocations the statement is matched against.
    source_kind = models.CharField(max_length=16, default="custodian")
    source_code = models.CharField(max_length=16, default="")
    filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    line_count = models.PositiveIntegerField()
    trade_dates = models.JSONField(default=list, blank=True)
    price_tolerance = models.DecimalField(max_digits=24, decimal_places=8, default=0)
    matched_count = models.PositiveIntegerField(default=0)
    break_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-uploaded_at", "-id"]


class BreakStatus(models.TextChoices):
    OPEN = "open", "Open"  # found by reconciliation, waiting for someone
    RESOLVED = "resolved", "Resolved"  # explained or fixed, with a comment (terminal)


class ReconBreak(models.Model):
    """A difference between the OMS and a statement, for someone to resolve."""

    statement = models.ForeignKey(Statement, on_delete=models.PROTECT, related_name="breaks")
    kind = models.CharField(max_length=24)
    status = models.CharField(max_length=12, choices=BreakStatus.choices, default=BreakStatus.OPEN)
    account_code = models.CharField(max_length=32)
    instrument = models.CharField(max_length=64)
    trade_date = models.DateField()
    side = models.CharField(max_length=16)
    oms_allocation_id = models.BigIntegerField(null=True, blank=True)
    statement_row = models.PositiveIntegerField(null=True, blank=True)
    oms_values = models.JSONField(default=dict, blank=True)
    statement_values = models.JSONField(default=dict, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status", "id"], name="reconbreak_status_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="open") | (Q(resolved_at__isnull=False) & ~Q(comment="")),
                name="reconbreak_resolved_has_comment",
            )
        ]
