"""Enumerations of the orders app; each value has a one-line meaning."""

from __future__ import annotations

from django.db import models


class AssetClass(models.TextChoices):
    EQUITY = "equity", "Equity"
    BOND = "bond", "Bond"
    FX = "fx", "FX"
    FUTURE = "future", "Future"
    OPTION = "option", "Option"
    CRYPTO = "crypto", "Crypto"


class Side(models.TextChoices):
    BUY = "buy", "Buy"
    SELL = "sell", "Sell"
    SELL_SHORT = "sell_short", "Sell short"
    BUY_TO_COVER = "buy_to_cover", "Buy to cover"


BUY_SIDES = frozenset({Side.BUY, Side.BUY_TO_COVER})
SELL_SIDES = frozenset({Side.SELL, Side.SELL_SHORT})


class OrderType(models.TextChoices):
    MARKET = "market", "Market"
    LIMIT = "limit", "Limit"
    STOP = "stop", "Stop"
    STOP_LIMIT = "stop_limit", "Stop limit"


class TimeInForce(models.TextChoices):
    DAY = "day", "Day"
    GTC = "gtc", "Good till cancel"
    IOC = "ioc", "Immediate or cancel"
    FOK = "fok", "Fill or kill"
    GTD = "gtd", "Good till date"


class OrderStatus(models.TextChoices):
    # OMS states, before the order leaves the firm.
    NEW = "new", "New"  # entered, not yet checked
    PENDING_COMPLIANCE = "pending_compliance", "Pending compliance"  # being checked
    BLOCKED = "blocked", "Blocked by compliance"  # a blocking rule failed; only cancel remains
    AWAITING_OVERRIDE = "awaiting_override", "Awaiting override"  # warned; needs an officer
    APPROVED = "approved", "Approved"  # released to the trading desk (staged)
    # FIX OrdStatus states, once routed.
    PENDING_NEW = "pending_new", "Pending new"  # sent, not yet acknowledged
    WORKING = "working", "New (working)"  # acknowledged by the broker (OrdStatus New)
    PARTIALLY_FILLED = "partially_filled", "Partially filled"
    FILLED = "filled", "Filled"  # terminal
    DONE_FOR_DAY = "done_for_day", "Done for day"
    PENDING_CANCEL = "pending_cancel", "Pending cancel"
    CANCELED = "canceled", "Canceled"  # terminal
    PENDING_REPLACE = "pending_replace", "Pending replace"
    REPLACED = "replaced", "Replaced"
    REJECTED = "rejected", "Rejected"  # terminal
    EXPIRED = "expired", "Expired"  # terminal
    SUSPENDED = "suspended", "Suspended"


TERMINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
# Orders that count as "open" for compliance (buying power, concentration, conflicts).
OPEN_STATUSES = frozenset(
    {
        OrderStatus.NEW,
        OrderStatus.PENDING_COMPLIANCE,
        OrderStatus.AWAITING_OVERRIDE,
        OrderStatus.APPROVED,
        OrderStatus.PENDING_NEW,
        OrderStatus.WORKING,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.PENDING_CANCEL,
        OrderStatus.PENDING_REPLACE,
        OrderStatus.REPLACED,
        OrderStatus.SUSPENDED,
        OrderStatus.DONE_FOR_DAY,
    }
)


class ComplianceOutcome(models.TextChoices):
    PASS = "pass", "Pass"
    WARN = "warn", "Warn"
    BLOCK = "block", "Block"


class BlockStatus(models.TextChoices):
    OPEN = "open", "Open"  # aggregated, not yet at a broker; may be dissolved
    ROUTED = "routed", "Routed"  # at least one placement sent
    PARTIALLY_FILLED = "partially_filled", "Partially filled"
    FILLED = "filled", "Filled"
    CANCELED = "canceled", "Canceled"
    DISSOLVED = "dissolved", "Dissolved"  # orders returned to the desk


class PlacementStatus(models.TextChoices):
    PENDING_NEW = "pending_new", "Pending new"
    WORKING = "working", "Working"
    PARTIALLY_FILLED = "partially_filled", "Partially filled"
    FILLED = "filled", "Filled"
    PENDING_CANCEL = "pending_cancel", "Pending cancel"
    CANCELED = "canceled", "Canceled"
    PENDING_REPLACE = "pending_replace", "Pending replace"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    DONE_FOR_DAY = "done_for_day", "Done for day"


class FixVersion(models.TextChoices):
    FIX42 = "FIX.4.2", "FIX 4.2"
    FIX44 = "FIX.4.4", "FIX 4.4"


class OutboxStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # written with the business change, not yet on the wire
    SENT = "sent", "Sent"  # handed to the FIX session (sequence number assigned)
    FAILED = "failed", "Failed"  # could not be sent (session refused it); see error


class Direction(models.TextChoices):
    IN = "in", "Inbound"
    OUT = "out", "Outbound"


class KillScope(models.TextChoices):
    FIRM = "firm", "Firm"
    DESK = "desk", "Desk"
    ACCOUNT = "account", "Account"
