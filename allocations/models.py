"""Custodians, desks, accounts, the book (positions and cash), allocations and commissions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from oms_site.fields import MoneyField, PriceField, QtyField


class SettlementFormat(models.TextChoices):
    CSV = "csv", "CSV"
    MT54X = "mt54x", "SWIFT MT541/MT543"


class Custodian(models.Model):
    """The bank that holds accounts' securities and cash, and receives settlement files."""

    code = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=200)
    bic = models.CharField(max_length=11)
    settlement_format = models.CharField(
        max_length=8, choices=SettlementFormat.choices, default=SettlementFormat.CSV
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Desk(models.Model):
    """A trading desk: its traders see and work the orders of the desk's accounts."""

    code = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=200)
    traders = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="desks")

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class AccountGroup(models.Model):
    """A named group of accounts, used as a compliance rule scope."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Account(models.Model):
    """A client portfolio: where positions and cash live; settles at one custodian."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    client = models.CharField(max_length=200)
    managers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="managed_accounts"
    )
    custodian = models.ForeignKey(Custodian, on_delete=models.PROTECT, related_name="accounts")
    custodian_account = models.CharField(max_length=35)
    desk = models.ForeignKey(Desk, on_delete=models.PROTECT, related_name="accounts")
    groups = models.ManyToManyField(AccountGroup, blank=True, related_name="accounts")
    base_currency = models.CharField(max_length=3, default="USD")
    short_selling_allowed = models.BooleanField(default=False)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class CashBalance(models.Model):
    """An account's cash in one currency: settled, and pending until settlement date."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="cash_balances")
    currency = models.CharField(max_length=3)
    settled = MoneyField(default=0)
    pending = MoneyField(default=0)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "currency"], name="cash_account_currency_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.currency}"


class Position(models.Model):
    """An account's holding of one instrument: quantity, average cost and realised P&L."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="positions")
    instrument = models.ForeignKey(
        "orders.Instrument", on_delete=models.PROTECT, related_name="positions"
    )
    quantity = QtyField(default=0)
    avg_cost = PriceField(default=0)
    realised_pnl = MoneyField(default=0)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "instrument"], name="position_account_instrument_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.instrument_id} {self.quantity}"


class CommissionSchedule(models.Model):
    """A broker's commission and fees: basis points, per share, minimum per ticket."""

    broker = models.OneToOneField(
        "orders.Broker", on_delete=models.PROTECT, related_name="commission"
    )
    bps = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    per_share = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    min_per_ticket = MoneyField(default=0)
    fees_bps = models.DecimalField(max_digits=10, decimal_places=4, default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(bps__gte=0)
                & Q(per_share__gte=0)
                & Q(min_per_ticket__gte=0)
                & Q(fees_bps__gte=0),
                name="commission_nonneg",
            )
        ]


class AllocationMethod(models.TextChoices):
    PRO_RATA = "pro_rata", "Pro-rata by requested quantity"
    FIXED_RATIO = "fixed_ratio", "Fixed ratio"
    MANUAL = "manual", "Manual"


class AllocationKind(models.TextChoices):
    FILL = "fill", "Fill"  # quantity > 0: more of the block's fills to the account
    REVERSAL = "reversal", "Reversal"  # quantity < 0: quantity taken back from the account
    REPRICE = "reprice", "Re-price"  # quantity 0: held quantity moved to the new average price


class Allocation(models.Model):
    """A change of one order's share of a block's fills, at the block's average price.

    The rows of one order add up to its cumulative allocation: quantity, gross, commission,
    fees and net (see allocations.services for how re-pricing and reversals are booked).
    """

    # Every reference is enforced by statement-level triggers (migrations 0006 and 0012,
    # oms_site.references), not foreign-key constraints: a fill of a 1,000-account block would
    # otherwise queue and run 8,000 row-by-row checks at commit (one per row and constraint,
    # even for the null reversal_of and created_by).
    execution = models.ForeignKey(
        "orders.Execution",
        on_delete=models.PROTECT,
        related_name="allocations",
        db_constraint=False,
    )
    block = models.ForeignKey(
        "orders.Block",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="allocations",
        db_constraint=False,
    )
    # No single-column indexes where a composite one leads with the column or nothing filters
    # on it: every index costs each fill ~1,000 row insertions on a big block.
    order = models.ForeignKey(
        "orders.Order",
        on_delete=models.PROTECT,
        related_name="allocations",
        db_index=False,
        db_constraint=False,
    )
    # Indexed although the order names the account too (session 15): without it a PM's
    # allocation list counts its accounts' rows through their orders (15 accounts, 13,500 of
    # 900,000 rows: 1.3 -> 18-21 ms), for 1.2 ms less PostgreSQL CPU per 1,000-account fill.
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="allocations", db_constraint=False
    )
    instrument = models.ForeignKey(
        "orders.Instrument",
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    broker = models.ForeignKey(
        "orders.Broker",
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    side = models.CharField(max_length=16)
    kind = models.CharField(
        max_length=8, choices=AllocationKind.choices, default=AllocationKind.FILL
    )
    quantity = QtyField()
    price = PriceField()
    gross = MoneyField()
    commission = MoneyField(default=0)
    fees = MoneyField(default=0)
    net = MoneyField()
    # The order's cumulative allocation after this row (the sums of its rows so far): the
    # latest row of an order says where it stands without summing its history.
    cum_quantity = QtyField(default=0)
    cum_gross = MoneyField(default=0)
    cum_commission = MoneyField(default=0)
    cum_fees = MoneyField(default=0)
    cum_net = MoneyField(default=0)
    currency = models.CharField(max_length=3)
    trade_date = models.DateField()
    settlement_date = models.DateField()
    method = models.CharField(
        max_length=16, choices=AllocationMethod.choices, default=AllocationMethod.PRO_RATA
    )
    reversal_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reversals",
        db_index=False,
        db_constraint=False,
    )
    cash_settled = models.BooleanField(default=False)
    cash_settled_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(quantity=0) | Q(kind="reprice"), name="allocation_quantity_nonzero"
            ),
            models.CheckConstraint(
                condition=(Q(kind="fill") & Q(quantity__gt=0))
                | (Q(kind="reversal") & Q(quantity__lt=0))
                | (Q(kind="reprice") & Q(quantity=0)),
                name="allocation_kind_matches_quantity",
            ),
            models.CheckConstraint(
                condition=Q(settlement_date__gte=F("trade_date")),
                name="allocation_settles_after_trade",
            ),
        ]
        indexes = [
            # A trade date's rows, with their account for index-only reads (which custodians
            # have lines that day). Not (trade_date, account): all of a day's new rows share the
            # key, so a fill's 1,000 entries go to the right edge of the index instead of 1,000
            # places spread over the day's entries (a busy day: about 1.4 ms less PostgreSQL CPU
            # per 1,000-account fill). A day's rows of some accounts are read through it and
            # filtered, or by account (the account index).
            models.Index(
                fields=["trade_date"], include=["account"], name="allocation_trade_date_idx"
            ),
            models.Index(fields=["order", "block", "id"], name="allocation_order_block_id_idx"),
            models.Index(
                fields=["settlement_date"],
                condition=Q(cash_settled=False),
                name="allocation_cash_due_idx",
            ),
        ]


class BlockAllocationPolicy(models.Model):
    """How a block's fills are shared when not pro-rata: fixed ratios or manual quantities.

    Manual quantities are kept for the filled quantity they were set at (``filled_at``); fills
    after that are shared pro-rata to what each order still has room for.
    """

    block = models.OneToOneField(
        "orders.Block", on_delete=models.PROTECT, related_name="allocation_policy"
    )
    method = models.CharField(max_length=16, choices=AllocationMethod.choices)
    ratios = models.JSONField(default=dict, blank=True, help_text="order id → ratio (string)")
    quantities = models.JSONField(
        default=dict, blank=True, help_text="order id → quantity (string)"
    )
    filled_at = QtyField(default=0)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"B{self.block_id} {self.method}"
