"""Compliance rules, restricted lists, per-order results, overrides and post-trade reports."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from oms_site.fields import PctField


class RuleType(models.TextChoices):
    RESTRICTED_LIST = "restricted_list", "Restricted list"
    CONCENTRATION = "concentration", "Concentration"
    OWNERSHIP = "ownership", "Ownership"
    FAT_FINGER = "fat_finger", "Fat finger"
    SHORT_SELLING = "short_selling", "Holdings and short selling"
    BUYING_POWER = "buying_power", "Buying power"
    CONFLICTING_ORDERS = "conflicting_orders", "Conflicting orders"
    DUPLICATE_ORDERS = "duplicate_orders", "Duplicate orders"


class Severity(models.TextChoices):
    WARN = "warn", "Warn (override needed)"
    BLOCK = "block", "Block"


class Scope(models.TextChoices):
    FIRM = "firm", "Firm"
    ACCOUNT = "account", "Accounts"
    GROUP = "group", "Account groups"


class Rule(models.Model):
    """A configured compliance rule; every change bumps `version` and is audited."""

    name = models.CharField(max_length=120, unique=True)
    rule_type = models.CharField(max_length=24, choices=RuleType.choices)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.BLOCK)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.FIRM)
    accounts = models.ManyToManyField(
        "allocations.Account", blank=True, related_name="compliance_rules"
    )
    groups = models.ManyToManyField(
        "allocations.AccountGroup", blank=True, related_name="compliance_rules"
    )
    params = models.JSONField(default=dict, blank=True)
    active = models.BooleanField(default=True)
    effective_from = models.DateField(null=True, blank=True)
    effective_to = models.DateField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(effective_from__isnull=True)
                | Q(effective_to__isnull=True)
                | Q(effective_to__gte=F("effective_from")),
                name="rule_effective_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class RestrictedEntry(models.Model):
    """An instrument or whole issuer that may not be traded, firm-wide or for one account."""

    instrument = models.ForeignKey(
        "orders.Instrument", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    issuer = models.ForeignKey(
        "orders.Issuer", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    account = models.ForeignKey(
        "allocations.Account",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="empty = firm-wide",
    )
    reason = models.TextField()
    source = models.CharField(max_length=120, blank=True)
    effective_from = models.DateField(null=True, blank=True)
    effective_to = models.DateField(null=True, blank=True)
    active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "restricted entries"
        constraints = [
            models.CheckConstraint(
                condition=(Q(instrument__isnull=False) & Q(issuer__isnull=True))
                | (Q(instrument__isnull=True) & Q(issuer__isnull=False)),
                name="restricted_instrument_xor_issuer",
            ),
            models.CheckConstraint(
                condition=Q(effective_from__isnull=True)
                | Q(effective_to__isnull=True)
                | Q(effective_to__gte=F("effective_from")),
                name="restricted_effective_range",
            ),
        ]


class ComplianceResult(models.Model):
    """One rule's verdict on one order, with the rule version and the numbers it measured."""

    # No index of its own: compresult_order_outcome_idx (order, outcome) serves every lookup by
    # order, and a basket writes 10,000 rows, each of which maintained both indexes.
    # Both references are enforced by statement-level triggers (migration 0003), not by
    # foreign-key constraints: a constraint checks every row on its own at commit, 20,000
    # checks (about 100 ms of PostgreSQL time) for a 500-order basket's 10,000 results; the
    # triggers check and lock each distinct order and rule once per statement.
    order = models.ForeignKey(
        "orders.Order",
        on_delete=models.CASCADE,
        related_name="compliance_results",
        db_index=False,
        db_constraint=False,
    )
    rule = models.ForeignKey(
        Rule,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
    )
    rule_name = models.CharField(max_length=120)
    rule_type = models.CharField(max_length=24, choices=RuleType.choices)
    rule_version = models.PositiveIntegerField()
    outcome = models.CharField(max_length=8)
    message = models.TextField()
    measured = models.DecimalField(max_digits=30, decimal_places=8, null=True, blank=True)
    limit = models.DecimalField(max_digits=30, decimal_places=8, null=True, blank=True)
    checked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["order", "outcome"], name="compresult_order_outcome_idx")]


class Override(models.Model):
    """A compliance officer's release of a warned order, with the written reason."""

    order = models.OneToOneField("orders.Order", on_delete=models.PROTECT, related_name="override")
    officer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class BreachReport(models.Model):
    """A post-trade sweep: position-based rules re-run on actual holdings."""

    as_of = models.DateField()
    run_at = models.DateTimeField(auto_now_add=True)
    run_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    breaches = models.JSONField(default=list)
    breach_count = models.PositiveIntegerField(default=0)
    limit_pct = PctField(null=True, blank=True)

    class Meta:
        ordering = ["-run_at"]
