"""Compliance rules, restricted lists, per-order results, overrides and post-trade reports."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
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


class ComplianceResultSet(models.Model):
    """One check of one order as stored: its results per rule as parallel arrays.

    Why: a 500-order basket checked against 20 rules made 10,000 rows (about 60 ms of
    PostgreSQL to COPY, index and check); one row per order makes 500. Reads go through the
    `ComplianceResult` view, one row per rule as before. A NULL outcome marks a result deleted
    through the view (ids of the others stay). Element NOT NULL, equal lengths and the
    references to orders and rules are enforced in SQL (compliance migration 0004).
    """

    order = models.ForeignKey(
        "orders.Order", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    checked_at = models.DateTimeField()
    rule_ids = ArrayField(models.BigIntegerField(null=True))
    rule_names = ArrayField(models.CharField(max_length=120))
    rule_types = ArrayField(models.CharField(max_length=24, choices=RuleType.choices))
    rule_versions = ArrayField(models.IntegerField())
    outcomes = ArrayField(models.CharField(max_length=8, null=True))
    messages = ArrayField(models.TextField())
    measured = ArrayField(models.DecimalField(max_digits=30, decimal_places=8, null=True))
    limits = ArrayField(models.DecimalField(max_digits=30, decimal_places=8, null=True))


# The stored form's columns as written by a check (compliance.services) and read back, after
# the row's id, by compliance.selectors.
SET_COLUMNS = (
    "order_id",
    "checked_at",
    "rule_ids",
    "rule_names",
    "rule_types",
    "rule_versions",
    "outcomes",
    "messages",
    "measured",
    "limits",
)

# Ids of the view's rows: the stored row's id times 2**16 plus the result's position in it.
RESULT_ID_SHIFT = 16


class ComplianceResult(models.Model):
    """One rule's verdict on one order, with the rule version and the numbers it measured.

    A view over `ComplianceResultSet` (compliance migration 0004), one row per array element,
    with INSTEAD OF triggers so the ORM can still insert, update and delete single results
    (tests, the admin, Django's CASCADE and SET_NULL); the application writes whole sets.
    """

    # Both references are enforced by statement-level triggers on the stored rows (migrations
    # 0003 and 0004), not by foreign-key constraints: one set-based check per statement.
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
        managed = False
        db_table = "compliance_complianceresult"


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
