"""Instruments, brokers, orders, blocks, placements, executions and the FIX tables."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from oms_site.fields import MoneyField, NotionalField, PriceField, QtyField
from orders.enums import (
    AssetClass,
    BlockStatus,
    ComplianceOutcome,
    Direction,
    FixVersion,
    KillScope,
    OrderStatus,
    OrderType,
    OutboxStatus,
    PlacementStatus,
    Side,
    TimeInForce,
)


class Issuer(models.Model):
    """A company or government that issues securities; restrictions may target it."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    country = models.CharField(max_length=2, help_text="ISO 3166 alpha-2")
    sector = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Instrument(models.Model):
    """A tradable security with its trading and settlement conventions."""

    symbol = models.CharField(max_length=32, unique=True)
    isin = models.CharField(max_length=12, unique=True, null=True, blank=True)
    name = models.CharField(max_length=200)
    asset_class = models.CharField(max_length=16, choices=AssetClass.choices)
    currency = models.CharField(max_length=3)
    lot_size = QtyField(default=1)
    tick_size = PriceField(default="0.01")
    issuer = models.ForeignKey(Issuer, on_delete=models.PROTECT, related_name="instruments")
    sector = models.CharField(max_length=64)
    country = models.CharField(max_length=2)
    shares_outstanding = QtyField(null=True, blank=True)
    settlement_cycle = models.PositiveSmallIntegerField(default=1, help_text="T+n business days")
    calendar_code = models.CharField(
        max_length=16, default="XNYS", help_text="exchange_calendars code, or 24/7"
    )
    tradable = models.BooleanField(default=True)

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.CheckConstraint(
                condition=Q(lot_size__gt=0), name="instrument_lot_size_positive"
            ),
            models.CheckConstraint(
                condition=Q(tick_size__gt=0), name="instrument_tick_size_positive"
            ),
            models.CheckConstraint(
                condition=Q(shares_outstanding__isnull=True) | Q(shares_outstanding__gt=0),
                name="instrument_shares_outstanding_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["asset_class", "sector"], name="instrument_class_sector_idx")
        ]

    def __str__(self) -> str:
        return self.symbol


class ReferencePrice(models.Model):
    """The latest quote of an instrument, moved by the simulated market-data feed."""

    instrument = models.OneToOneField(
        Instrument, on_delete=models.CASCADE, primary_key=True, related_name="price"
    )
    bid = PriceField()
    ask = PriceField()
    last = PriceField()
    as_of = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(bid__gt=0), name="refprice_bid_positive"),
            models.CheckConstraint(condition=Q(ask__gte=F("bid")), name="refprice_ask_gte_bid"),
            models.CheckConstraint(condition=Q(last__gt=0), name="refprice_last_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.bid}/{self.ask}"


class Broker(models.Model):
    """A broker or venue that orders can be routed to."""

    code = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=200)
    bic = models.CharField(max_length=11, blank=True)
    rank = models.PositiveSmallIntegerField(
        default=100, help_text="best-execution tie-break: lower ranks first"
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["rank", "code"]

    def __str__(self) -> str:
        return self.code


class FixSession(models.Model):
    """A FIX initiator session from the gateway to one broker, and its live state."""

    broker = models.ForeignKey(Broker, on_delete=models.PROTECT, related_name="fix_sessions")
    host = models.CharField(max_length=255, default="127.0.0.1")
    port = models.PositiveIntegerField()
    sender_comp_id = models.CharField(max_length=32)
    target_comp_id = models.CharField(max_length=32)
    fix_version = models.CharField(
        max_length=8, choices=FixVersion.choices, default=FixVersion.FIX44
    )
    heartbeat_seconds = models.PositiveSmallIntegerField(default=30)
    enabled = models.BooleanField(default=True)
    # Live state written by the gateway.
    logged_on = models.BooleanField(default=False)
    next_sender_seq = models.PositiveBigIntegerField(default=1)
    next_target_seq = models.PositiveBigIntegerField(default=1)
    status_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["sender_comp_id", "target_comp_id", "fix_version"],
                name="fixsession_comp_ids_uniq",
            ),
            models.CheckConstraint(
                condition=Q(port__gte=1) & Q(port__lte=65535), name="fixsession_port_range"
            ),
            models.CheckConstraint(
                condition=Q(heartbeat_seconds__gte=1), name="fixsession_heartbeat_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.session_key

    @property
    def session_key(self) -> str:
        return f"{self.fix_version}:{self.sender_comp_id}->{self.target_comp_id}"


class Basket(models.Model):
    """A batch of orders uploaded together by a PM (a rebalance)."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=16, default="json")
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    order_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["created_by", "idempotency_key"], name="basket_idempotency_uniq"
            )
        ]


class Block(models.Model):
    """Several accounts' orders of one instrument and side, sent to the market as one."""

    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="blocks")
    side = models.CharField(max_length=16, choices=Side.choices)
    order_type = models.CharField(max_length=16, choices=OrderType.choices)
    limit_price = PriceField(null=True, blank=True)
    stop_price = PriceField(null=True, blank=True)
    time_in_force = models.CharField(
        max_length=8, choices=TimeInForce.choices, default=TimeInForce.DAY
    )
    quantity = QtyField()
    cum_qty = QtyField(default=0)
    avg_px = PriceField(default=0)
    # With cum_qty, the block's fills' totals: the exact sum of last_qty * last_px of its
    # placements' executions with last_qty > 0 (cum_qty is the sum of their last_qty). Each fill
    # adds its own to the values it reads from the block's locked row and writes both in the
    # statement that moves the block, so a fill never sums the block's earlier executions
    # (that grew by about 0.2 ms of PostgreSQL CPU per 100 earlier fills of the block).
    # A database default, so that rows inserted by SQL naming only the other columns get 0.
    filled_notional = NotionalField(default=Decimal(0), db_default=Decimal(0))
    status = models.CharField(max_length=20, choices=BlockStatus.choices, default=BlockStatus.OPEN)
    version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="block_quantity_positive"),
            models.CheckConstraint(
                condition=Q(cum_qty__gte=0) & Q(cum_qty__lte=F("quantity")), name="block_cum_le_qty"
            ),
            # No notional without a filled quantity (a fill's last_qty is > 0).
            models.CheckConstraint(
                condition=Q(cum_qty__gt=0) | Q(filled_notional=0),
                name="block_notional_only_filled",
            ),
        ]

    def __str__(self) -> str:
        return f"B{self.pk}"


class Order(models.Model):
    """An account's order, from entry through compliance and routing to its last fill."""

    # No index of its own: order_acct_instr_status_idx starts with it (see Meta.indexes).
    account = models.ForeignKey(
        "allocations.Account", on_delete=models.PROTECT, related_name="orders", db_index=False
    )
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="orders")
    side = models.CharField(max_length=16, choices=Side.choices)
    quantity = QtyField()
    order_type = models.CharField(max_length=16, choices=OrderType.choices)
    limit_price = PriceField(null=True, blank=True)
    stop_price = PriceField(null=True, blank=True)
    time_in_force = models.CharField(
        max_length=8, choices=TimeInForce.choices, default=TimeInForce.DAY
    )
    expire_date = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.NEW)
    cum_qty = QtyField(default=0)
    leaves_qty = QtyField(default=0)
    avg_px = PriceField(default=0)
    # An order outside a block: with cum_qty, its fills' totals, as Block.filled_notional (the
    # exact sum of last_qty * last_px of its own placements' fills). 0 for an order of a block
    # (the block holds its fills' totals; the order's cum_qty is its allocated share).
    filled_notional = NotionalField(default=Decimal(0), db_default=Decimal(0))
    compliance_outcome = models.CharField(
        max_length=8, choices=ComplianceOutcome.choices, null=True, blank=True
    )
    # No index of its own: order_client_order_id_uniq starts with it.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="orders_created",
        db_index=False,
    )
    client_order_id = models.CharField(max_length=64, null=True, blank=True)
    # Basket and block: indexed only where set (Meta.indexes), as most orders have neither.
    basket = models.ForeignKey(
        Basket,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="orders",
        db_index=False,
    )
    block = models.ForeignKey(
        Block,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="orders",
        db_index=False,
    )
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["created_by", "client_order_id"], name="order_client_order_id_uniq"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(condition=Q(cum_qty__gte=0), name="order_cum_qty_nonneg"),
            models.CheckConstraint(condition=Q(leaves_qty__gte=0), name="order_leaves_qty_nonneg"),
            models.CheckConstraint(
                condition=Q(cum_qty__lte=F("quantity")), name="order_cum_le_qty"
            ),
            # No notional without a filled quantity (a fill's last_qty is > 0).
            models.CheckConstraint(
                condition=Q(cum_qty__gt=0) | Q(filled_notional=0),
                name="order_notional_only_filled",
            ),
            models.CheckConstraint(
                condition=~Q(order_type__in=["limit", "stop_limit"]) | Q(limit_price__gt=0),
                name="order_limit_price_for_limit_types",
            ),
            models.CheckConstraint(
                condition=~Q(order_type__in=["stop", "stop_limit"]) | Q(stop_price__gt=0),
                name="order_stop_price_for_stop_types",
            ),
            models.CheckConstraint(
                condition=~Q(time_in_force="gtd") | Q(expire_date__isnull=False),
                name="order_gtd_has_expire_date",
            ),
        ]
        indexes = [
            models.Index(fields=["status"], name="order_status_idx"),
            models.Index(
                fields=["account", "instrument", "status"], name="order_acct_instr_status_idx"
            ),
            models.Index(fields=["created_at"], name="order_created_idx"),
            # Every index of an order gets an entry at its insert and at each status change
            # (a fill's update is never HOT, status being indexed): single orders and most
            # orders of a book have no basket and no block, so those two index only the rows
            # that have one, which are the rows their lookups (`basket_id = ...`,
            # `block_id = ...`) can find.
            models.Index(
                fields=["basket"], name="order_basket_idx", condition=Q(basket__isnull=False)
            ),
            models.Index(
                fields=["block"], name="order_block_idx", condition=Q(block__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"O{self.pk}"


# What an execution report can change on its placement (written under the placement's row lock,
# by orders.services.executions or, for a fill, by the allocation statement of
# allocations.services).
PLACEMENT_REPORT_FIELDS = (
    "status",
    "cum_qty",
    "avg_px",
    "version",
    "broker_order_id",
    "cl_ord_id",
    "orig_cl_ord_id",
    "quantity",
    "limit_price",
    "updated_at",
)


class Placement(models.Model):
    """One piece of an order or block sent to one broker, identified on the wire by ClOrdID."""

    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.PROTECT, related_name="placements"
    )
    block = models.ForeignKey(
        Block, null=True, blank=True, on_delete=models.PROTECT, related_name="placements"
    )
    broker = models.ForeignKey(Broker, on_delete=models.PROTECT, related_name="placements")
    fix_session = models.ForeignKey(
        FixSession, null=True, blank=True, on_delete=models.PROTECT, related_name="placements"
    )
    cl_ord_id = models.CharField(max_length=64, unique=True)
    orig_cl_ord_id = models.CharField(max_length=64, blank=True)
    broker_order_id = models.CharField(max_length=64, blank=True)
    quantity = QtyField()
    limit_price = PriceField(null=True, blank=True)
    cum_qty = QtyField(default=0)
    avg_px = PriceField(default=0)
    status = models.CharField(
        max_length=20, choices=PlacementStatus.choices, default=PlacementStatus.PENDING_NEW
    )
    route_reason = models.TextField(blank=True)
    routed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(order__isnull=False) & Q(block__isnull=True))
                | (Q(order__isnull=True) & Q(block__isnull=False)),
                name="placement_order_xor_block",
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="placement_quantity_positive"),
            models.CheckConstraint(
                condition=Q(cum_qty__lte=F("quantity")), name="placement_cum_le_qty"
            ),
        ]


class Execution(models.Model):
    """A fill (or other execution report) received from a broker; unique per (session, ExecID)."""

    fix_session = models.ForeignKey(
        FixSession, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    session_key = models.CharField(max_length=100)
    exec_id = models.CharField(max_length=64)
    placement = models.ForeignKey(
        Placement, null=True, blank=True, on_delete=models.PROTECT, related_name="executions"
    )
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.PROTECT, related_name="executions"
    )
    block = models.ForeignKey(
        Block, null=True, blank=True, on_delete=models.PROTECT, related_name="executions"
    )
    broker = models.ForeignKey(
        Broker, null=True, blank=True, on_delete=models.PROTECT, related_name="executions"
    )
    instrument = models.ForeignKey(
        Instrument, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    side = models.CharField(max_length=16, choices=Side.choices, blank=True)
    exec_type = models.CharField(max_length=24)
    ord_status = models.CharField(max_length=24, blank=True)
    last_qty = QtyField(default=0)
    last_px = PriceField(default=0)
    cum_qty = QtyField(default=0)
    avg_px = PriceField(default=0)
    gross = MoneyField(default=0)
    trade_date = models.DateField(null=True, blank=True)
    transact_time = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    unknown_order = models.BooleanField(default=False, help_text="no placement matched its ClOrdID")
    cl_ord_id = models.CharField(max_length=64, blank=True)
    text = models.TextField(blank=True)
    raw_message = models.ForeignKey(
        "FixMessage", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session_key", "exec_id"], name="execution_session_exec_id_uniq"
            ),
            models.CheckConstraint(condition=Q(last_qty__gte=0), name="execution_last_qty_nonneg"),
        ]
        indexes = [models.Index(fields=["trade_date"], name="execution_trade_date_idx")]


class FixMessage(models.Model):
    """Every FIX message in and out, stored raw (append-only)."""

    session_key = models.CharField(max_length=100)
    direction = models.CharField(max_length=3, choices=Direction.choices)
    msg_type = models.CharField(max_length=4)
    seq_num = models.PositiveBigIntegerField(null=True, blank=True)
    poss_dup = models.BooleanField(default=False)
    cl_ord_id = models.CharField(max_length=64, blank=True)
    raw = models.TextField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["session_key", "direction", "seq_num"], name="fixmsg_session_seq_idx"
            ),
            models.Index(fields=["cl_ord_id"], name="fixmsg_clordid_idx"),
        ]


class OutboxMessage(models.Model):
    """An outbound FIX message written in the same transaction as the order change it carries."""

    fix_session = models.ForeignKey(FixSession, on_delete=models.PROTECT, related_name="outbox")
    placement = models.ForeignKey(Placement, on_delete=models.PROTECT, related_name="outbox")
    msg_type = models.CharField(max_length=4)
    cl_ord_id = models.CharField(max_length=64, unique=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=8, choices=OutboxStatus.choices, default=OutboxStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "id"], name="outbox_status_idx")]


class KillSwitch(models.Model):
    """A stop on routing for the firm, a desk or an account; lifting needs a second user."""

    scope = models.CharField(max_length=8, choices=KillScope.choices)
    target = models.CharField(max_length=64, blank=True, help_text="desk or account code")
    active = models.BooleanField(default=True)
    reason = models.TextField(blank=True)
    engaged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    engaged_at = models.DateTimeField(auto_now_add=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "target"],
                condition=Q(active=True),
                name="killswitch_one_active_per_scope",
            ),
            models.CheckConstraint(
                condition=Q(lifted_by__isnull=True) | ~Q(lifted_by=F("engaged_by")),
                name="killswitch_lifted_by_other_user",
            ),
        ]


class IdempotencyRecord(models.Model):
    """The stored first response of a write retried with the same Idempotency-Key."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=200)
    request_hash = models.CharField(
        max_length=64,
        blank=True,
        help_text="SHA-256 of the body: a key reused differently is refused",
    )
    status_code = models.PositiveSmallIntegerField(help_text="0 while the first request runs")
    body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key", "endpoint"], name="idempotency_key_uniq")
        ]


class RouteRequestStatus(models.TextChoices):
    PENDING = "pending", "pending: accepted (202), not yet run by a routing worker"
    DONE = "done", "done: routed; the placement is recorded"
    REFUSED = "refused", "refused: the routing service said no (code and detail recorded)"


class RouteRequest(models.Model):
    """An accepted asynchronous route (202), kept until a worker has routed or refused it.

    Celery may lose the message (Redis without persistence, a worker killed after the pop); the
    row is written when the route is accepted and a beat sweep re-publishes pending ones.
    """

    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.PROTECT, related_name="route_requests"
    )
    block = models.ForeignKey(
        Block, null=True, blank=True, on_delete=models.PROTECT, related_name="route_requests"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    broker_code = models.CharField(max_length=32, blank=True, help_text="blank: best execution")
    status = models.CharField(
        max_length=8, choices=RouteRequestStatus.choices, default=RouteRequestStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="times published to Celery")
    last_error = models.TextField(blank=True)
    placement = models.ForeignKey(
        Placement, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(order__isnull=False) & Q(block__isnull=True))
                | (Q(order__isnull=True) & Q(block__isnull=False)),
                name="routerequest_order_xor_block",
            ),
            models.UniqueConstraint(
                fields=["order"],
                condition=Q(status="pending", order__isnull=False),
                name="routerequest_one_pending_per_order",
            ),
            models.UniqueConstraint(
                fields=["block"],
                condition=Q(status="pending", block__isnull=False),
                name="routerequest_one_pending_per_block",
            ),
        ]
        indexes = [
            models.Index(
                fields=["published_at"],
                condition=Q(status="pending"),
                name="routerequest_pending_idx",
            )
        ]

    def __str__(self) -> str:
        return f"RR{self.pk}"
