"""Pure pre-trade compliance engine: plain data in, one result row per (order, rule) out.

No Django, no database, no I/O. The caller (``compliance.services``) loads rules, reference data,
positions and open orders, builds a :class:`ComplianceContext`, and calls :func:`evaluate`.

Outcome of a rule for an order
    ``pass`` when the check holds, otherwise the rule's ``severity`` (``warn`` or ``block``).
    :func:`order_outcome` folds an order's rows: ``block`` if any row blocks, else ``warn`` if
    any row warns, else ``pass`` (also for an order no rule applied to).

Which rules apply
    A rule produces a row for an order only if it is ``active``, ``as_of.date()`` lies within
    ``[effective_from, effective_to]`` (both ends inclusive, ``None`` = open) and its scope covers
    the order's account: ``firm`` = every account, ``account`` = account id in
    ``scope_account_ids``, ``group`` = the account belongs to one of ``scope_group_ids``.
    Restricted-list entries use the same inclusive date test against ``as_of.date()``.

Limit semantics (one rule for every check)
    A measured value exactly at its limit passes; any value beyond it, however small the
    excess, fails. Comparisons are exact: percentages are compared by cross-multiplication
    (``exposure * 100 <= max_pct * nav``), never after rounding. For ``duplicate_orders`` the
    limit is a minimum gap: a gap of exactly ``window_seconds`` passes, a shorter gap fails.
    ``measured`` and ``limit`` on a result are exact Decimals, except percentages, which are
    rounded up (ceiling) to 6 decimal places, so with a limit of at most 6 decimals a failing
    row always shows ``measured > limit`` and a passing one ``measured <= limit``.

Notional and prices
    An order's price is its limit price when it carries one and is not a market order (limit,
    stop-limit), otherwise the instrument's reference price (market, stop). Notional is
    ``quantity * price``. If that price is not positive (no reference price) every check that
    needs the order's notional fails, naming the missing price. Positions are valued at the
    reference price; ``OpenOrder.price`` is the price the caller wants open orders valued at.

Currencies
    Prices, notionals and position values are in the instrument's ``currency``; NAV, available
    cash and ``max_notional`` in the account's ``base_currency``. Every money comparison is in
    the base currency: an order's notional, open orders' notional and position values are
    converted at ``ComplianceContext.fx_rates[(instrument currency, base)]`` (exact product, no
    rounding). An empty currency on either side means no conversion. A missing rate fails
    every check that needs the converted amount, naming the rate ("no FX rate GBP/USD"), as a
    missing price does: the order's own notional (concentration, buying power, fat finger's
    ``max_notional``), the account's NAV (``AccountInfo.nav_missing_rates``), its positions and
    same-direction open orders (concentration), its open buys (buying power). Open-order sums
    handed over in an ``OpenOrderSummary`` are already in the base currency, with the rates
    they lacked in ``missing_rates``. A converted order's notional is quoted as "1270.00 USD
    (1000.00 GBP at GBP/USD 1.27)"; single-currency messages are unchanged.

Baskets
    Orders are evaluated in the given sequence. Every earlier order of the same call counts as
    an open order for every later one, whatever its own outcome (the conservative reading: a
    warned order may still be overridden and sent). Open orders with ``leaves_quantity <= 0``
    are ignored.

Open orders of other accounts
    Only ``conflicting_orders`` (same instrument) and ``ownership`` (buys in the issuer) read
    the open orders of an account with no order in the call, and they need only how many
    there are and their leaves. The caller may therefore hand those over summed per account,
    instrument and side as :class:`OpenOrderTally` rows instead of one ``OpenOrder`` each;
    the results are the same. A tally of an account that does have an order in the call
    raises ``ValueError`` (its orders would be missing from that account's own checks).

Open orders summed in advance
    A caller checking few orders may hand over, instead of the open orders one by one, an
    :class:`OpenOrderSummary`: the same sums the context would index (buy notional per
    account, sell quantity per account and instrument, notional per account, concentration
    bucket and direction, open buy quantity per issuer, open orders per instrument, side and
    account, creation times per account, instrument, side and quantity), computed elsewhere
    (e.g. by the database) for the keys the checked orders read. Keys it leaves out count as
    no open orders. Open orders and tallies given as well are added on top of it.

Rule types and parameters (``params`` values are decimal strings; unknown names are rejected)
    ``restricted_list`` (no params): fails if the instrument is flagged not tradable, or a
    restricted entry in effect names the instrument, or names its issuer (issuer look-through),
    firm-wide (``account_id`` None) or for the order's account. Applies to every side.
    ``concentration`` (``dimension``: instrument|issuer|sector, ``max_pct``): exposure in the
    direction the order moves the account, as a % of NAV. Buys: position value + open buy
    notional in the bucket + this order, floored at 0. Sells: the short exposure the sells would
    leave, i.e. -(position value - open sell notional - this order), floored at 0. Open orders
    on the other side are not netted (they may never fill), so a trade that reduces exposure
    passes. An instrument without issuer/sector is its own bucket. NAV <= 0 fails.
    ``ownership`` (``max_pct``): buys only. Firm holding of the issuer (``firm_issuer_holdings``)
    + open buy quantity of all accounts in the issuer's instruments + this order, as a % of the
    instrument's ``shares_outstanding``. Passes as not applicable without an issuer or a
    positive shares outstanding. Sells pass.
    ``fat_finger`` (any of ``max_quantity``, ``max_notional``, ``max_price_deviation_pct``):
    per order, no basket effect. Deviation is ``|limit - reference| / reference * 100`` and is
    checked only for orders priced at a limit. ``measured``/``limit`` are those of the first
    failing sub-check (else the first configured one).
    ``short_selling`` (no params): ``sell`` passes if quantity <= holdings - open sells (sell
    and sell_short of the account in the instrument), or if the account may sell short;
    ``sell_short`` passes only if the account may sell short; buys pass.
    ``buying_power`` (``margin_pct``, default 0): buys pass if this notional + open buy notional
    of the account <= ``available_cash * (1 + margin_pct / 100)``. Sale proceeds are not
    credited (they are not cash until settled). Sells pass.
    ``conflicting_orders`` (no params): fails if any open order of any account (including the
    same one) is on the other side (buy/buy_to_cover vs sell/sell_short) of the same
    instrument. ``measured`` is the number of such orders, ``limit`` 0.
    ``duplicate_orders`` (``window_seconds``): fails if an open order of the same account,
    instrument, side and original quantity was created less than ``window_seconds`` before or
    after this order. ``measured`` is the smallest gap in seconds (None if no match).

Errors (fail closed: nothing is evaluated rather than something evaluated on missing data)
    :class:`RuleConfigError` for an active, in-date rule with an unknown type, severity, scope
    or a bad parameter (:func:`validate_rule` runs the same check for admin forms).
    :class:`ComplianceDataError` when an order's account or instrument, or the instrument of
    an open order or of a holding that a concentration rule must value, is not in the context.
    ``ValueError`` for two orders with the same key in one call.

Speed
    The context indexes open orders, holdings and restricted entries once when built; each
    call compiles the rules once, resolves rule scope once per account and keeps the basket's
    running totals in dictionaries, so a call is linear in orders x rules.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation, localcontext
from typing import Any, NamedTuple, Protocol

SIDE_BUY = "buy"
SIDE_SELL = "sell"
SIDE_SELL_SHORT = "sell_short"
SIDE_BUY_TO_COVER = "buy_to_cover"
SIDES = frozenset({SIDE_BUY, SIDE_SELL, SIDE_SELL_SHORT, SIDE_BUY_TO_COVER})
BUY_SIDES = frozenset({SIDE_BUY, SIDE_BUY_TO_COVER})
SELL_SIDES = frozenset({SIDE_SELL, SIDE_SELL_SHORT})

ORDER_TYPE_MARKET = "market"

OUTCOME_PASS = "pass"
OUTCOME_WARN = "warn"
OUTCOME_BLOCK = "block"

SEVERITY_WARN = OUTCOME_WARN
SEVERITY_BLOCK = OUTCOME_BLOCK
SEVERITIES = frozenset({SEVERITY_WARN, SEVERITY_BLOCK})

SCOPE_FIRM = "firm"
SCOPE_ACCOUNT = "account"
SCOPE_GROUP = "group"
SCOPES = frozenset({SCOPE_FIRM, SCOPE_ACCOUNT, SCOPE_GROUP})

RULE_RESTRICTED_LIST = "restricted_list"
RULE_CONCENTRATION = "concentration"
RULE_OWNERSHIP = "ownership"
RULE_FAT_FINGER = "fat_finger"
RULE_SHORT_SELLING = "short_selling"
RULE_BUYING_POWER = "buying_power"
RULE_CONFLICTING_ORDERS = "conflicting_orders"
RULE_DUPLICATE_ORDERS = "duplicate_orders"
RULE_TYPES = frozenset(
    {
        RULE_RESTRICTED_LIST,
        RULE_CONCENTRATION,
        RULE_OWNERSHIP,
        RULE_FAT_FINGER,
        RULE_SHORT_SELLING,
        RULE_BUYING_POWER,
        RULE_CONFLICTING_ORDERS,
        RULE_DUPLICATE_ORDERS,
    }
)

DIMENSION_INSTRUMENT = "instrument"
DIMENSION_ISSUER = "issuer"
DIMENSION_SECTOR = "sector"
DIMENSIONS = (DIMENSION_INSTRUMENT, DIMENSION_ISSUER, DIMENSION_SECTOR)

# Parameter names per rule type: (required, optional).
RULE_PARAMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    RULE_RESTRICTED_LIST: (frozenset(), frozenset()),
    RULE_CONCENTRATION: (frozenset({"dimension", "max_pct"}), frozenset()),
    RULE_OWNERSHIP: (frozenset({"max_pct"}), frozenset()),
    RULE_FAT_FINGER: (
        frozenset(),
        frozenset({"max_quantity", "max_notional", "max_price_deviation_pct"}),
    ),
    RULE_SHORT_SELLING: (frozenset(), frozenset()),
    RULE_BUYING_POWER: (frozenset(), frozenset({"margin_pct"})),
    RULE_CONFLICTING_ORDERS: (frozenset(), frozenset()),
    RULE_DUPLICATE_ORDERS: (frozenset({"window_seconds"}), frozenset()),
}

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_CENT = Decimal("0.01")
_PCT_PLACES = Decimal("0.000001")
_MICRO = Decimal("0.000001")
# Wide enough that products of 20-digit amounts never round before a comparison.
_PRECISION = 60


_WIDE = Context(prec=_PRECISION)
# For callers that convert many amounts with one rate (compliance.context), as `convert` does.
WIDE = _WIDE


class Rates(Protocol):
    """Where rates are looked up: rates.get((from, to)) -> units of `to` per `from`, or None."""

    def get(self, key: tuple[str, str], /) -> Decimal | None: ...


def convert(
    amount: Decimal, currency: str, base: str, rates: Rates, missing: set[tuple[str, str]]
) -> Decimal | None:
    """`amount` of `currency` in `base` (exact product with the rate); None, with the pair added
    to `missing`, when there is no rate. Unconverted when either currency is empty ("" = no
    currency given), both are the same, or the amount is zero (it needs no rate)."""
    if not amount or not currency or not base or currency == base:
        return amount
    rate = rates.get((currency, base))
    if rate is None:
        missing.add((currency, base))
        return None
    return _WIDE.multiply(amount, rate)


class ComplianceDataError(ValueError):
    """Reference data the engine needs (account, instrument) is missing from the context."""


class RuleConfigError(ValueError):
    """A rule's type, severity, scope or parameters are invalid."""


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order to be checked; ``key`` identifies it in the results."""

    key: str | int
    account_id: int
    instrument_id: int
    side: str
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    created_at: datetime
    created_by_id: int | None = None

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"Order {self.key}: unknown side {self.side!r}")
        if self.quantity <= 0:
            raise ValueError(f"Order {self.key}: quantity must be positive, got {self.quantity}")


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """Reference data of one instrument."""

    id: int
    symbol: str
    issuer_id: int | None
    sector: str | None
    shares_outstanding: Decimal | None
    reference_price: Decimal
    tradable: bool = True
    # Prices and notionals are in this currency ("" = the account's own, no conversion).
    currency: str = ""
    # Concentration buckets (instrument, issuer, sector), derived once: the caller caches
    # instruments across checks, and every holding and open order is bucketed on every check.
    buckets: tuple[Any, Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", _bucket_keys(self))


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What the rules need to know about an account."""

    id: int
    nav: Decimal
    available_cash: Decimal
    short_allowed: bool = False
    group_ids: frozenset[int] = frozenset()
    # NAV and available cash are in this currency ("" = every instrument's, no conversion).
    base_currency: str = ""
    # (from, to) rates the NAV needed and the caller did not have: the NAV is then not known.
    nav_missing_rates: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order already in flight; ``price`` values its leaves, ``quantity`` is the original."""

    account_id: int
    instrument_id: int
    side: str
    leaves_quantity: Decimal
    price: Decimal
    created_at: datetime
    quantity: Decimal

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"Open order: unknown side {self.side!r}")


@dataclass(frozen=True, slots=True)
class OpenOrderTally:
    """Open orders of one account (with no order in the call) in one instrument and side.

    ``count`` orders with positive leaves, ``leaves_quantity`` the sum of those leaves.
    """

    account_id: int
    instrument_id: int
    side: str
    count: int
    leaves_quantity: Decimal

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"Open order tally: unknown side {self.side!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrderSummary:
    """Open orders (those with positive leaves) already summed per key the rules read.

    Keys as the context indexes them: ``bucket_notional`` by (account, dimension 0/1/2,
    the instrument's bucket key from :attr:`InstrumentInfo.buckets`, is_buy);
    ``side_accounts`` by (instrument, is_buy) to {account: count}; ``times`` by (account,
    instrument, side, original quantity) to creation times. Notional is leaves x the price
    the caller values an open order at.
    """

    buy_notional: Mapping[int, Decimal] = field(default_factory=dict)
    sell_qty: Mapping[tuple[int, int], Decimal] = field(default_factory=dict)
    bucket_notional: Mapping[tuple[int, int, Any, bool], Decimal] = field(default_factory=dict)
    issuer_buy_qty: Mapping[int, Decimal] = field(default_factory=dict)
    side_accounts: Mapping[tuple[int, bool], Mapping[int, int]] = field(default_factory=dict)
    times: Mapping[tuple[int, int, str, Decimal], Sequence[datetime]] = field(default_factory=dict)
    # (account, is_buy) -> (from, to) rates missing to value some of those open orders in the
    # account's base currency (their notional is then left out of the sums above).
    missing_rates: Mapping[tuple[int, bool], frozenset[tuple[str, str]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True, slots=True)
class RestrictedEntry:
    """One restricted-list line: exactly one of instrument or issuer; account None = firm-wide."""

    instrument_id: int | None = None
    issuer_id: int | None = None
    account_id: int | None = None
    reason: str = ""
    effective_from: date | None = None
    effective_to: date | None = None

    def __post_init__(self) -> None:
        if (self.instrument_id is None) == (self.issuer_id is None):
            raise ValueError("A restricted entry names exactly one of instrument_id or issuer_id")


@dataclass(frozen=True, slots=True, weakref_slot=True)
class RuleSpec:
    """One version of a configured rule."""

    id: int
    version: int
    name: str
    rule_type: str
    severity: str
    scope: str = SCOPE_FIRM
    scope_account_ids: frozenset[int] = frozenset()
    scope_group_ids: frozenset[int] = frozenset()
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    active: bool = True
    effective_from: date | None = None
    effective_to: date | None = None


class RuleResult(NamedTuple):
    """The outcome of one rule for one order, with the numbers behind it."""

    order_key: str | int
    rule_id: int
    rule_version: int
    rule_name: str
    rule_type: str
    outcome: str
    message: str
    measured: Decimal | None
    limit: Decimal | None


# A basket makes one result per (order, rule): 10,000 for 500 orders x 20 rules. Building the
# tuple directly skips the NamedTuple's keyword-handling __new__, and was 2.5x faster than
# writing a frozen dataclass's slots one by one.
_new_tuple = tuple.__new__


def _row(
    p: _Prepared,
    rule: RuleSpec,
    ok: bool,
    message: str,
    measured: Decimal | None,
    limit: Decimal | None,
) -> RuleResult:
    return _new_tuple(
        RuleResult,
        (
            p.key,
            rule.id,
            rule.version,
            rule.name,
            rule.rule_type,
            OUTCOME_PASS if ok else rule.severity,
            message,
            measured,
            limit,
        ),
    )


def _bucket_keys(inst: InstrumentInfo) -> tuple[Any, Any, Any]:
    """Concentration bucket per dimension; an instrument without issuer/sector stands alone."""
    own = ("instrument", inst.id)
    return (
        inst.id,
        inst.issuer_id if inst.issuer_id is not None else own,
        inst.sector if inst.sector else own,
    )


def _in_effect(start: date | None, end: date | None, day: date) -> bool:
    return (start is None or start <= day) and (end is None or day <= end)


def _add(d: dict[Any, Decimal], key: Any, amount: Decimal) -> None:
    d[key] = d.get(key, _ZERO) + amount


@dataclass(frozen=True, slots=True, kw_only=True)
class ComplianceContext:
    """Everything the rules read, indexed once at construction; never mutated by evaluate."""

    instruments: Mapping[int, InstrumentInfo]
    accounts: Mapping[int, AccountInfo]
    as_of: datetime
    holdings: Mapping[tuple[int, int], Decimal] = field(default_factory=dict)
    open_orders: Sequence[OpenOrder] = ()
    open_tallies: Sequence[OpenOrderTally] = ()
    open_summary: OpenOrderSummary | None = None
    restricted: Sequence[RestrictedEntry] = ()
    firm_issuer_holdings: Mapping[int, Decimal] = field(default_factory=dict)
    # (from, to) -> units of `to` per unit of `from`, for the instruments' currencies into the
    # accounts' base currencies; a pair absent here has no rate.
    fx_rates: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)

    _holdings_by_account: dict[int, list[tuple[int, Decimal]]] = field(init=False, repr=False)
    _open_buy_notional: dict[int, Decimal] = field(init=False, repr=False)
    _open_sell_qty: dict[tuple[int, int], Decimal] = field(init=False, repr=False)
    _open_bucket_notional: dict[tuple[int, int, Any, bool], Decimal] = field(init=False, repr=False)
    _open_issuer_buy_qty: dict[int, Decimal] = field(init=False, repr=False)
    _open_side_accounts: dict[tuple[int, bool], dict[int, int]] = field(init=False, repr=False)
    _open_side_count: dict[tuple[int, bool], int] = field(init=False, repr=False)
    _open_times: dict[tuple[int, int, str, Decimal], list[datetime]] = field(init=False, repr=False)
    _open_missing_rates: dict[tuple[int, bool], set[tuple[str, str]]] = field(
        init=False, repr=False
    )
    _tallied_accounts: frozenset[int] = field(init=False, repr=False)
    _restricted_by_instrument: dict[int, list[RestrictedEntry]] = field(init=False, repr=False)
    _restricted_by_issuer: dict[int, list[RestrictedEntry]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        holdings_by_account: dict[int, list[tuple[int, Decimal]]] = {}
        for (account_id, instrument_id), qty in self.holdings.items():
            holdings_by_account.setdefault(account_id, []).append((instrument_id, qty))

        buy_notional: dict[int, Decimal] = {}
        sell_qty: dict[tuple[int, int], Decimal] = {}
        bucket: dict[tuple[int, int, Any, bool], Decimal] = {}
        issuer_buy: dict[int, Decimal] = {}
        side_accounts: dict[tuple[int, bool], dict[int, int]] = {}
        side_count: dict[tuple[int, bool], int] = {}
        times: dict[tuple[int, int, str, Decimal], list[datetime]] = {}
        missing_rates: dict[tuple[int, bool], set[tuple[str, str]]] = {}
        summary = self.open_summary
        if summary is not None:
            for rates_key, pairs in summary.missing_rates.items():
                missing_rates[rates_key] = set(pairs)
            buy_notional.update(summary.buy_notional)
            sell_qty.update(summary.sell_qty)
            bucket.update(summary.bucket_notional)
            issuer_buy.update(summary.issuer_buy_qty)
            for side_key, counts in summary.side_accounts.items():
                side_accounts[side_key] = dict(counts)
                side_count[side_key] = sum(counts.values())
            for times_key, at in summary.times.items():
                times[times_key] = list(at)
        missing: set[int] = set()
        lacking: set[tuple[str, str]] = set()
        instruments = self.instruments
        for oo in self.open_orders:
            leaves = oo.leaves_quantity
            if leaves <= 0:
                continue
            inst = instruments.get(oo.instrument_id)
            if inst is None:
                missing.add(oo.instrument_id)
                continue
            is_buy = oo.side in BUY_SIDES
            notional = leaves * oo.price
            acct = oo.account_id
            account = self.accounts.get(acct)
            if account is not None:
                value = convert(
                    notional, inst.currency, account.base_currency, self.fx_rates, lacking
                )
                if value is None:
                    missing_rates.setdefault((acct, is_buy), set()).update(lacking)
                    lacking.clear()
                    value = _ZERO
                notional = value
            if is_buy:
                _add(buy_notional, acct, notional)
                if inst.issuer_id is not None:
                    _add(issuer_buy, inst.issuer_id, leaves)
            else:
                _add(sell_qty, (acct, oo.instrument_id), leaves)
            k0, k1, k2 = inst.buckets
            # Inlined: this loop and _position_values run once per open order or holding, and
            # the helper call cost more than the addition.
            b0, b1, b2 = (acct, 0, k0, is_buy), (acct, 1, k1, is_buy), (acct, 2, k2, is_buy)
            bucket[b0] = bucket.get(b0, _ZERO) + notional
            bucket[b1] = bucket.get(b1, _ZERO) + notional
            bucket[b2] = bucket.get(b2, _ZERO) + notional
            side_key = (oo.instrument_id, is_buy)
            per_account = side_accounts.setdefault(side_key, {})
            per_account[acct] = per_account.get(acct, 0) + 1
            side_count[side_key] = side_count.get(side_key, 0) + 1
            times.setdefault((acct, oo.instrument_id, oo.side, oo.quantity), []).append(
                oo.created_at
            )
        tallied: set[int] = set()
        for tally in self.open_tallies:
            if tally.count <= 0 or tally.leaves_quantity <= 0:
                continue
            inst = instruments.get(tally.instrument_id)
            if inst is None:
                missing.add(tally.instrument_id)
                continue
            is_buy = tally.side in BUY_SIDES
            acct = tally.account_id
            tallied.add(acct)
            if is_buy and inst.issuer_id is not None:
                _add(issuer_buy, inst.issuer_id, tally.leaves_quantity)
            side_key = (tally.instrument_id, is_buy)
            per_account = side_accounts.setdefault(side_key, {})
            per_account[acct] = per_account.get(acct, 0) + tally.count
            side_count[side_key] = side_count.get(side_key, 0) + tally.count
        if missing:
            raise ComplianceDataError(
                f"Open orders reference instruments missing from the context: {sorted(missing)}"
            )
        for lst in times.values():
            lst.sort()

        by_instrument: dict[int, list[RestrictedEntry]] = {}
        by_issuer: dict[int, list[RestrictedEntry]] = {}
        for entry in self.restricted:
            if entry.instrument_id is not None:
                by_instrument.setdefault(entry.instrument_id, []).append(entry)
            elif entry.issuer_id is not None:
                by_issuer.setdefault(entry.issuer_id, []).append(entry)

        setter = object.__setattr__
        setter(self, "_holdings_by_account", holdings_by_account)
        setter(self, "_open_buy_notional", buy_notional)
        setter(self, "_open_sell_qty", sell_qty)
        setter(self, "_open_bucket_notional", bucket)
        setter(self, "_open_issuer_buy_qty", issuer_buy)
        setter(self, "_open_side_accounts", side_accounts)
        setter(self, "_open_side_count", side_count)
        setter(self, "_open_times", times)
        setter(self, "_open_missing_rates", missing_rates)
        setter(self, "_tallied_accounts", frozenset(tallied))
        setter(self, "_restricted_by_instrument", by_instrument)
        setter(self, "_restricted_by_issuer", by_issuer)


def _parse_decimal(rule: RuleSpec, name: str, raw: Any) -> Decimal:
    if isinstance(raw, bool) or raw is None:
        raise RuleConfigError(f"Rule {rule.id} ({rule.name}): {name} must be a number")
    try:
        value = raw if isinstance(raw, Decimal) else Decimal(str(raw).strip())
    except (InvalidOperation, ValueError) as exc:
        raise RuleConfigError(
            f"Rule {rule.id} ({rule.name}): {name}={raw!r} is not a decimal number"
        ) from exc
    if not value.is_finite() or value < 0:
        raise RuleConfigError(
            f"Rule {rule.id} ({rule.name}): {name}={raw!r} must be a finite number >= 0"
        )
    return value


def _parse_params(rule: RuleSpec) -> dict[str, Any]:
    """Validate a rule's type, severity, scope and parameters; return them parsed."""
    if rule.rule_type not in RULE_TYPES:
        raise RuleConfigError(f"Rule {rule.id} ({rule.name}): unknown rule type {rule.rule_type!r}")
    if rule.severity not in SEVERITIES:
        raise RuleConfigError(f"Rule {rule.id} ({rule.name}): unknown severity {rule.severity!r}")
    if rule.scope not in SCOPES:
        raise RuleConfigError(f"Rule {rule.id} ({rule.name}): unknown scope {rule.scope!r}")
    required, optional = RULE_PARAMS[rule.rule_type]
    given = set(rule.params)
    unknown = given - required - optional
    if unknown:
        raise RuleConfigError(
            f"Rule {rule.id} ({rule.name}): unknown parameter(s) {sorted(unknown)} "
            f"for {rule.rule_type}"
        )
    absent = required - given
    if absent:
        raise RuleConfigError(
            f"Rule {rule.id} ({rule.name}): missing parameter(s) {sorted(absent)} "
            f"for {rule.rule_type}"
        )
    parsed: dict[str, Any] = {}
    for name, raw in rule.params.items():
        if name == "dimension":
            value = str(raw).strip()
            if value not in DIMENSIONS:
                raise RuleConfigError(
                    f"Rule {rule.id} ({rule.name}): dimension must be one of "
                    f"{', '.join(DIMENSIONS)}, got {raw!r}"
                )
            parsed[name] = DIMENSIONS.index(value)
        else:
            parsed[name] = _parse_decimal(rule, name, raw)
    if rule.rule_type == RULE_FAT_FINGER and not parsed:
        raise RuleConfigError(
            f"Rule {rule.id} ({rule.name}): fat_finger needs at least one of "
            "max_quantity, max_notional, max_price_deviation_pct"
        )
    # Limits as they appear in messages, formatted once per rule rather than once per order.
    parsed["_text"] = {
        name: _money(value) if name == "max_notional" else _num(value)
        for name, value in parsed.items()
        if isinstance(value, Decimal)
    }
    return parsed


# Parsed parameters per rule object, while the rule lives (the context loader keeps one list of
# RuleSpecs per reference-data version, so every order of that version meets the same objects).
# Keyed by equality, which covers every field `_parse_params` reads; the parameters are
# compared again on a hit, so a mapping changed in place after parsing is parsed anew.
_PARSED: weakref.WeakKeyDictionary[RuleSpec, tuple[dict[str, Any], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _parsed_params(rule: RuleSpec) -> dict[str, Any]:
    """`_parse_params(rule)`, parsed once per rule (the result is shared: read it only)."""
    hit = _PARSED.get(rule)
    if hit is not None and hit[0] == rule.params:
        return hit[1]
    parsed = _parse_params(rule)
    _PARSED[rule] = (dict(rule.params), parsed)
    return parsed


def validate_rule(rule: RuleSpec) -> None:
    """Raise RuleConfigError if the rule's type, severity, scope or parameters are invalid."""
    _parse_params(rule)


def order_outcome(results: Iterable[RuleResult]) -> str:
    """Fold an order's rows: block if any blocks, else warn if any warns, else pass."""
    outcome = OUTCOME_PASS
    for r in results:
        if r.outcome == OUTCOME_BLOCK:
            return OUTCOME_BLOCK
        if r.outcome == OUTCOME_WARN:
            outcome = OUTCOME_WARN
    return outcome


def evaluate(
    orders: Sequence[OrderIntent], ctx: ComplianceContext, rules: Sequence[RuleSpec]
) -> dict[str | int, list[RuleResult]]:
    """Check a basket in sequence against the rules in force; rows per order key, in rule order."""
    with localcontext() as dctx:
        dctx.prec = _PRECISION
        return _Run(ctx, rules).run(orders)


# ---------------------------------------------------------------------------------------------
# Formatting: exact numbers, no exponent notation, money with at least two decimals.


def _num(x: Decimal) -> str:
    s = f"{x:f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _money(x: Decimal) -> str:
    if not x:
        return "0.00"
    s = f"{x:f}"
    if s[-3:-2] == ".":
        return s
    dot = s.find(".")
    if dot < 0:
        return s + ".00"
    s = s.rstrip("0")
    decimals = len(s) - dot - 1
    return s if decimals >= 2 else s + "0" * (2 - decimals)


def _pct(x: Decimal) -> Decimal:
    return x.quantize(_PCT_PLACES, rounding=ROUND_CEILING)


def _pair_labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{src}/{dst}" for src, dst in sorted(set(pairs)))


def _no_rate_text(p: _Prepared) -> str:
    currency, base = p.missing_rate or ("", "")
    return (
        f"no FX rate {currency}/{base}: the order's notional in {currency} cannot be measured "
        f"in account {p.account.id}'s base currency {base}"
    )


_SIDE_WORDS = {side: side.replace("_", " ").capitalize() for side in SIDES}


def _side_word(side: str) -> str:
    return _SIDE_WORDS[side]


class _Prepared:
    """Per-order values derived once and shared by every rule."""

    __slots__ = (
        "account",
        "inst",
        "is_buy",
        "key",
        "keys",
        "memo",
        "missing_rate",
        "notional",
        "notional_text",
        "order",
        "price",
        "priced_at",
    )

    def __init__(
        self,
        order: OrderIntent,
        inst: InstrumentInfo,
        account: AccountInfo,
        rates: Mapping[tuple[str, str], Decimal],
    ) -> None:
        self.order = order
        self.key = order.key
        self.inst = inst
        self.account = account
        self.is_buy = order.side in BUY_SIDES
        self.keys = inst.buckets
        if order.limit_price is not None and order.order_type != ORDER_TYPE_MARKET:
            self.price = order.limit_price
            self.priced_at = "limit"
        else:
            self.price = inst.reference_price
            self.priced_at = "reference"
        # The notional in the account's base currency (None: no price, or no rate to convert).
        self.notional: Decimal | None = order.quantity * self.price if self.price > 0 else None
        self.missing_rate: tuple[str, str] | None = None
        currency, base = inst.currency, account.base_currency
        if currency and base and currency != base:
            pair = (currency, base)
            rate = rates.get(pair)
            if rate is None:
                self.missing_rate = pair
                self.notional = None
                self.notional_text = ""
            elif self.notional is not None:
                local = self.notional
                self.notional = local * rate
                self.notional_text = (
                    f"{_money(self.notional)} {base} ({_money(local)} {currency} at "
                    f"{currency}/{base} {_num(rate)})"
                )
            else:
                self.notional_text = ""
        else:
            # Concentration, fat finger and buying power all quote the notional: format it once.
            self.notional_text = "" if self.notional is None else _money(self.notional)
        # Measurements shared by several rules of one type on this order (typically a warn
        # and a block threshold), so each is computed and formatted once.
        self.memo: dict[Any, Any] | None = None


# A rule's check, a plain function of the _Run (not a bound method: a run holding its own
# bound methods would be a reference cycle, left to the cyclic collector after every check).
_Check = Callable[["_Run", RuleSpec, dict[str, Any], _Prepared], RuleResult]


class _Run:
    """State of one evaluate() call: compiled rules plus what the basket has added so far."""

    def __init__(self, ctx: ComplianceContext, rules: Sequence[RuleSpec]) -> None:
        self.ctx = ctx
        day = ctx.as_of.date()
        checks: dict[str, _Check] = {
            RULE_RESTRICTED_LIST: _Run._restricted_list,
            RULE_CONCENTRATION: _Run._concentration,
            RULE_OWNERSHIP: _Run._ownership,
            RULE_FAT_FINGER: _Run._fat_finger,
            RULE_SHORT_SELLING: _Run._short_selling,
            RULE_BUYING_POWER: _Run._buying_power,
            RULE_CONFLICTING_ORDERS: _Run._conflicting_orders,
            RULE_DUPLICATE_ORDERS: _Run._duplicate_orders,
        }
        self.compiled: list[tuple[RuleSpec, dict[str, Any], _Check]] = []
        for rule in rules:
            if not rule.active or not _in_effect(rule.effective_from, rule.effective_to, day):
                continue
            self.compiled.append((rule, _parsed_params(rule), checks[rule.rule_type]))
        self.day = day
        self.rules_by_account: dict[int, list[tuple[RuleSpec, dict[str, Any], _Check]]] = {}
        self.position_values: dict[int, tuple[dict[Any, Decimal], ...]] = {}
        self.position_missing_rates: dict[int, set[tuple[str, str]]] = {}
        # Basket deltas layered over the context's open-order indexes.
        self.buy_notional: dict[int, Decimal] = {}
        self.sell_qty: dict[tuple[int, int], Decimal] = {}
        self.bucket_notional: dict[tuple[int, int, Any, bool], Decimal] = {}
        self.issuer_buy_qty: dict[int, Decimal] = {}
        self.side_accounts: dict[tuple[int, bool], dict[int, int]] = {}
        self.side_count: dict[tuple[int, bool], int] = {}
        self.times: dict[tuple[int, int, str, Decimal], list[datetime]] = {}
        self.limit_texts: dict[tuple[int, int], str] = {}
        self.nav_texts: dict[int, str] = {}

    def run(self, orders: Sequence[OrderIntent]) -> dict[str | int, list[RuleResult]]:
        ctx = self.ctx
        out: dict[str | int, list[RuleResult]] = {}
        for order in orders:
            if order.key in out:
                raise ValueError(f"Duplicate order key {order.key!r} in one evaluation")
            inst = ctx.instruments.get(order.instrument_id)
            if inst is None:
                raise ComplianceDataError(
                    f"Order {order.key}: instrument {order.instrument_id} missing from the context"
                )
            account = ctx.accounts.get(order.account_id)
            if account is None:
                raise ComplianceDataError(
                    f"Order {order.key}: account {order.account_id} missing from the context"
                )
            if account.id in ctx._tallied_accounts:
                raise ValueError(
                    f"Order {order.key}: account {account.id} has open orders given as tallies; "
                    "an account with an order in the call needs them one by one"
                )
            p = _Prepared(order, inst, account, ctx.fx_rates)
            applicable = self.rules_by_account.get(account.id)
            if applicable is None:
                applicable = [c for c in self.compiled if self._covers(c[0], account)]
                self.rules_by_account[account.id] = applicable
            out[order.key] = [check(self, rule, params, p) for rule, params, check in applicable]
            self._record(p)
        return out

    @staticmethod
    def _covers(rule: RuleSpec, account: AccountInfo) -> bool:
        if rule.scope == SCOPE_FIRM:
            return True
        if rule.scope == SCOPE_ACCOUNT:
            return account.id in rule.scope_account_ids
        return not account.group_ids.isdisjoint(rule.scope_group_ids)

    def _record(self, p: _Prepared) -> None:
        """Make this order visible as open to every later order of the basket."""
        order = p.order
        acct = order.account_id
        notional = p.notional if p.notional is not None else _ZERO
        if p.is_buy:
            _add(self.buy_notional, acct, notional)
            if p.inst.issuer_id is not None:
                _add(self.issuer_buy_qty, p.inst.issuer_id, order.quantity)
        else:
            _add(self.sell_qty, (acct, order.instrument_id), order.quantity)
        for dim, key in enumerate(p.keys):
            _add(self.bucket_notional, (acct, dim, key, p.is_buy), notional)
        side_key = (order.instrument_id, p.is_buy)
        per_account = self.side_accounts.setdefault(side_key, {})
        per_account[acct] = per_account.get(acct, 0) + 1
        self.side_count[side_key] = self.side_count.get(side_key, 0) + 1
        bisect.insort(
            self.times.setdefault((acct, order.instrument_id, order.side, order.quantity), []),
            order.created_at,
        )

    def _no_price(self, rule: RuleSpec, p: _Prepared, limit: Decimal | None) -> RuleResult:
        if p.price > 0 and p.missing_rate is not None:
            return _row(p, rule, False, _no_rate_text(p), None, limit)
        return _row(
            p,
            rule,
            False,
            f"{p.inst.symbol} has no positive reference price "
            f"({_money(p.inst.reference_price)}); the order's notional cannot be measured",
            None,
            limit,
        )

    def _unvalued(
        self,
        rule: RuleSpec,
        p: _Prepared,
        limit: Decimal | None,
        what: str,
        pairs: set[tuple[str, str]],
    ) -> RuleResult:
        """A failed row: amounts of the account's book have no rate to its base currency."""
        return _row(
            p,
            rule,
            False,
            f"Account {p.account.id} {what} cannot be measured in {p.account.base_currency}: "
            f"no FX rate {_pair_labels(pairs)}",
            None,
            limit,
        )

    # --- rules -------------------------------------------------------------------------------

    def _restricted_list(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(RULE_RESTRICTED_LIST)
        if cached is None:
            cached = memo[RULE_RESTRICTED_LIST] = self._restriction(p)
        ok, message = cached
        return _row(p, rule, ok, message, None, None)

    def _restriction(self, p: _Prepared) -> tuple[bool, str]:
        """Whether the order's instrument is free of restrictions in force, and why not."""
        ctx = self.ctx
        inst = p.inst
        acct = p.account.id
        day = self.day
        hits: list[str] = []
        if not inst.tradable:
            hits.append(f"{inst.symbol} is flagged not tradable")
        for e in ctx._restricted_by_instrument.get(inst.id, ()):
            if (e.account_id is None or e.account_id == acct) and _in_effect(
                e.effective_from, e.effective_to, day
            ):
                who = "firm-wide" if e.account_id is None else f"for account {acct}"
                hits.append(f"instrument {inst.symbol} restricted {who}: {e.reason}")
        if inst.issuer_id is not None:
            for e in ctx._restricted_by_issuer.get(inst.issuer_id, ()):
                if (e.account_id is None or e.account_id == acct) and _in_effect(
                    e.effective_from, e.effective_to, day
                ):
                    who = "firm-wide" if e.account_id is None else f"for account {acct}"
                    hits.append(
                        f"issuer {inst.issuer_id} of {inst.symbol} restricted {who}: {e.reason}"
                    )
        if hits:
            return False, f"{inst.symbol} is restricted: " + "; ".join(hits)
        return True, f"{inst.symbol} is not on the restricted list"

    def _concentration(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        lim: dict[str, str] = params["_text"]
        dim: int = params["dimension"]
        max_pct: Decimal = params["max_pct"]
        if p.notional is None:
            return self._no_price(rule, p, max_pct)
        missing = self._book_missing_rates(p)
        if missing:
            return self._unvalued(rule, p, max_pct, "NAV and exposure", missing)
        nav = p.account.nav
        if nav <= 0:
            return _row(
                p,
                rule,
                False,
                f"Account {p.account.id} NAV {_money(nav)} is not positive; concentration in "
                f"{self._bucket_label(dim, p.inst)} cannot be measured",
                None,
                max_pct,
            )
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(dim)
        if cached is None:
            cached = memo[dim] = self._exposure(dim, p, p.notional, nav)
        exposure, pct, head, tail = cached
        ok = exposure * _HUNDRED <= max_pct * nav
        message = f"{head}{'within' if ok else 'exceeds'} the {lim['max_pct']}% limit{tail}"
        return _row(p, rule, ok, message, pct, max_pct)

    def _exposure(
        self, dim: int, p: _Prepared, notional: Decimal, nav: Decimal
    ) -> tuple[Decimal, Decimal, str, str]:
        """Projected exposure of the order's bucket in the direction the order moves it."""
        acct = p.account.id
        key = p.keys[dim]
        position = self._position_values(acct)[dim].get(key, _ZERO)
        bucket = (acct, dim, key, p.is_buy)
        open_notional = self.ctx._open_bucket_notional.get(
            bucket, _ZERO
        ) + self.bucket_notional.get(bucket, _ZERO)
        if p.is_buy:
            projected = position + open_notional + notional
            exposure = projected if projected > 0 else _ZERO
            direction, open_word = "long", "open buys"
        else:
            projected = position - open_notional - notional
            exposure = -projected if projected < 0 else _ZERO
            direction, open_word = "short", "open sells"
        pct = _pct(exposure * _HUNDRED / nav)
        head = (
            f"Projected {direction} exposure to {self._bucket_label(dim, p.inst)} "
            f"{_money(exposure)} is {_num(pct)}% of NAV {self._nav_text(acct, nav)}, "
        )
        tail = (
            f" (position {_money(position)}, {open_word} {_money(open_notional)}, "
            f"this order {p.notional_text})"
        )
        return exposure, pct, head, tail

    def _nav_text(self, account_id: int, nav: Decimal) -> str:
        text = self.nav_texts.get(account_id)
        if text is None:
            text = self.nav_texts[account_id] = _money(nav)
        return text

    @staticmethod
    def _bucket_label(dim: int, inst: InstrumentInfo) -> str:
        if dim == 1 and inst.issuer_id is not None:
            return f"issuer {inst.issuer_id}"
        if dim == 2 and inst.sector:
            return f"sector {inst.sector}"
        return f"instrument {inst.symbol}"

    def _position_values(self, account_id: int) -> tuple[dict[Any, Decimal], ...]:
        """Market value of the account's positions per bucket, for each dimension."""
        cached = self.position_values.get(account_id)
        if cached is not None:
            return cached
        per_dim: tuple[dict[Any, Decimal], ...] = ({}, {}, {})
        by_instrument, by_issuer, by_sector = per_dim
        instruments = self.ctx.instruments
        base = self.ctx.accounts[account_id].base_currency
        rates = self.ctx.fx_rates
        missing = []
        no_rate: set[tuple[str, str]] = set()
        for instrument_id, qty in self.ctx._holdings_by_account.get(account_id, ()):
            inst = instruments.get(instrument_id)
            if inst is None:
                missing.append(instrument_id)
                continue
            value = convert(qty * inst.reference_price, inst.currency, base, rates, no_rate)
            if value is None:
                continue
            k0, k1, k2 = inst.buckets
            by_instrument[k0] = by_instrument.get(k0, _ZERO) + value
            by_issuer[k1] = by_issuer.get(k1, _ZERO) + value
            by_sector[k2] = by_sector.get(k2, _ZERO) + value
        if missing:
            raise ComplianceDataError(
                f"Holdings of account {account_id} reference instruments missing from the "
                f"context: {sorted(missing)}"
            )
        self.position_values[account_id] = per_dim
        self.position_missing_rates[account_id] = no_rate
        return per_dim

    def _book_missing_rates(self, p: _Prepared) -> set[tuple[str, str]]:
        """Rates missing to value the account's NAV, positions and same-direction open orders."""
        acct = p.account.id
        self._position_values(acct)
        return (
            set(p.account.nav_missing_rates)
            | self.position_missing_rates[acct]
            | self.ctx._open_missing_rates.get((acct, p.is_buy), set())
        )

    def _ownership(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        lim: dict[str, str] = params["_text"]
        max_pct: Decimal = params["max_pct"]
        inst = p.inst
        if not p.is_buy:
            return _row(
                p,
                rule,
                True,
                f"{_side_word(p.order.side)} does not increase the firm's ownership of "
                f"{inst.symbol}",
                None,
                max_pct,
            )
        issuer = inst.issuer_id
        outstanding = inst.shares_outstanding
        if issuer is None or outstanding is None or outstanding <= 0:
            reason = "has no issuer" if issuer is None else "has no shares outstanding"
            return _row(
                p,
                rule,
                True,
                f"Ownership not applicable: {inst.symbol} {reason}",
                None,
                max_pct,
            )
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(RULE_OWNERSHIP)
        if cached is None:
            held = self.ctx.firm_issuer_holdings.get(issuer, _ZERO)
            open_qty = self.ctx._open_issuer_buy_qty.get(issuer, _ZERO) + self.issuer_buy_qty.get(
                issuer, _ZERO
            )
            qty = p.order.quantity
            total = held + open_qty + qty
            pct = _pct(total * _HUNDRED / outstanding)
            head = (
                f"Firm holding of issuer {issuer} would be {_num(total)} shares (held "
                f"{_num(held)}, open buys {_num(open_qty)}, this order {_num(qty)}), {_num(pct)}% "
                f"of {_num(outstanding)} shares outstanding, "
            )
            cached = memo[RULE_OWNERSHIP] = (total, pct, head)
        total, pct, head = cached
        ok = total * _HUNDRED <= max_pct * outstanding
        message = f"{head}{'within' if ok else 'exceeds'} the {lim['max_pct']}% limit"
        return _row(p, rule, ok, message, pct, max_pct)

    def _fat_finger(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        lim: dict[str, str] = params["_text"]
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        pieces = memo.get(RULE_FAT_FINGER)
        if pieces is None:
            pieces = memo[RULE_FAT_FINGER] = self._fat_finger_pieces(p)
        quantity_head, notional_head, deviation = pieces
        parts: list[str] = []
        fail_parts: list[str] = []
        first: tuple[Decimal | None, Decimal] | None = None
        failed: tuple[Decimal | None, Decimal] | None = None

        max_quantity = params.get("max_quantity")
        if max_quantity is not None:
            qty = p.order.quantity
            ok = qty <= max_quantity
            text = f"{quantity_head}{'within' if ok else 'exceeds'} maximum {lim['max_quantity']}"
            parts.append(text)
            first = (qty, max_quantity)
            if not ok:
                fail_parts.append(text)
                failed = first

        max_notional = params.get("max_notional")
        if max_notional is not None:
            if p.notional is None:
                ok = False
                text = notional_head
            else:
                ok = p.notional <= max_notional
                text = (
                    f"{notional_head}{'within' if ok else 'exceeds'} maximum {lim['max_notional']}"
                )
            parts.append(text)
            measured = (p.notional, max_notional)
            first = first or measured
            if not ok:
                fail_parts.append(text)
                failed = failed or measured

        max_dev = params.get("max_price_deviation_pct")
        if max_dev is not None and deviation is not None:
            diff, ref, dev, head = deviation
            if diff is None:
                ok = False
                text = head
            else:
                ok = diff * _HUNDRED <= max_dev * ref
                text = (
                    f"{head}{'within' if ok else 'exceeds'} the "
                    f"{lim['max_price_deviation_pct']}% limit"
                )
            parts.append(text)
            measured = (dev, max_dev)
            first = first or measured
            if not ok:
                fail_parts.append(text)
                failed = failed or measured

        if failed is not None:
            message = "Fat finger: " + "; ".join(fail_parts)
            return _row(p, rule, False, message, failed[0], failed[1])
        if first is None:
            # Only a deviation limit is configured and the order has no limit price.
            return _row(
                p,
                rule,
                True,
                f"Fat finger: {p.order.order_type} order has no limit price to compare",
                None,
                max_dev,
            )
        return _row(p, rule, True, "Fat finger: " + "; ".join(parts), first[0], first[1])

    @staticmethod
    def _fat_finger_pieces(
        p: _Prepared,
    ) -> tuple[str, str, tuple[Decimal | None, Decimal, Decimal | None, str] | None]:
        """The order's side of each fat-finger sentence, shared by all fat-finger rules."""
        quantity_head = f"quantity {_num(p.order.quantity)} "
        if p.notional is None and p.price > 0 and p.missing_rate is not None:
            notional_head = f"notional cannot be measured: {_no_rate_text(p)}"
        elif p.notional is None:
            notional_head = (
                f"notional cannot be measured: {p.inst.symbol} has no positive reference price"
            )
        else:
            notional_head = f"notional {p.notional_text} at {p.priced_at} price {_money(p.price)} "
        deviation: tuple[Decimal | None, Decimal, Decimal | None, str] | None = None
        if p.priced_at == "limit":
            ref = p.inst.reference_price
            if ref <= 0:
                deviation = (
                    None,
                    ref,
                    None,
                    f"price deviation cannot be measured: {p.inst.symbol} has no positive "
                    "reference price",
                )
            else:
                diff = abs(p.price - ref)
                dev = _pct(diff * _HUNDRED / ref)
                deviation = (
                    diff,
                    ref,
                    dev,
                    f"limit price {_money(p.price)} deviates {_num(dev)}% from reference price "
                    f"{_money(ref)}, ",
                )
        return quantity_head, notional_head, deviation

    def _short_selling(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        side = p.order.side
        acct = p.account
        if side == SIDE_SELL_SHORT:
            if acct.short_allowed:
                return _row(p, rule, True, f"Account {acct.id} may sell short", None, None)
            return _row(
                p,
                rule,
                False,
                f"Short sale of {p.inst.symbol} not permitted: account {acct.id} may not sell "
                "short",
                None,
                None,
            )
        if side != SIDE_SELL:
            return _row(p, rule, True, f"{_side_word(side)} does not reduce holdings", None, None)
        pos_key = (acct.id, p.inst.id)
        held = self.ctx.holdings.get(pos_key, _ZERO)
        open_sells = self.ctx._open_sell_qty.get(pos_key, _ZERO) + self.sell_qty.get(pos_key, _ZERO)
        available = held - open_sells
        qty = p.order.quantity
        detail = f"(held {_num(held)} less open sells {_num(open_sells)})"
        if qty <= available:
            message = (
                f"Sell {_num(qty)} {p.inst.symbol} within holdings available to sell "
                f"{_num(available)} {detail}"
            )
            return _row(p, rule, True, message, qty, available)
        if acct.short_allowed:
            message = (
                f"Sell {_num(qty)} {p.inst.symbol} exceeds holdings available to sell "
                f"{_num(available)} {detail}; allowed because account {acct.id} may sell short"
            )
            return _row(p, rule, True, message, qty, available)
        message = (
            f"Sell {_num(qty)} {p.inst.symbol} exceeds holdings available to sell "
            f"{_num(available)} {detail} and account {acct.id} may not sell short"
        )
        return _row(p, rule, False, message, qty, available)

    def _buying_power(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        margin: Decimal = params.get("margin_pct", _ZERO)
        acct = p.account
        cash = acct.available_cash
        limit = cash * (_HUNDRED + margin) / _HUNDRED
        if not p.is_buy:
            return _row(
                p,
                rule,
                True,
                f"{_side_word(p.order.side)} does not use buying power",
                None,
                limit,
            )
        if p.notional is None:
            return self._no_price(rule, p, limit)
        missing = self.ctx._open_missing_rates.get((acct.id, True))
        if missing:
            return self._unvalued(rule, p, limit, "open buy notional", missing)
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(RULE_BUYING_POWER)
        if cached is None:
            open_buys = self.ctx._open_buy_notional.get(acct.id, _ZERO) + self.buy_notional.get(
                acct.id, _ZERO
            )
            required = open_buys + p.notional
            if open_buys:
                head = (
                    f"Buy notional {p.notional_text} plus open buys {_money(open_buys)} "
                    f"(total {_money(required)}) "
                )
            else:
                head = f"Buy notional {p.notional_text} "
            cached = memo[RULE_BUYING_POWER] = (required, head)
        required, head = cached
        ok = required * _HUNDRED <= cash * (_HUNDRED + margin)
        limit_key = (rule.id, acct.id)
        limit_text = self.limit_texts.get(limit_key)
        if limit_text is None:
            if margin:
                limit_text = (
                    f"buying power {_money(limit)} (available cash {_money(cash)} plus "
                    f"{_num(margin)}% margin)"
                )
            else:
                limit_text = f"available cash {_money(cash)}"
            self.limit_texts[limit_key] = limit_text
        message = f"{head}{'within' if ok else 'exceeds'} {limit_text}"
        return _row(p, rule, ok, message, required, limit)

    def _conflicting_orders(
        self, rule: RuleSpec, params: dict[str, Any], p: _Prepared
    ) -> RuleResult:
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(RULE_CONFLICTING_ORDERS)
        if cached is None:
            cached = memo[RULE_CONFLICTING_ORDERS] = self._conflicts(p)
        count, message = cached
        return _row(p, rule, not count, message, count, _ZERO)

    def _conflicts(self, p: _Prepared) -> tuple[Decimal, str]:
        """Open orders on the other side of the order's instrument, and a sentence about them."""
        opposite = (p.inst.id, not p.is_buy)
        count = self.ctx._open_side_count.get(opposite, 0) + self.side_count.get(opposite, 0)
        other_word = "sell" if p.is_buy else "buy"
        if not count:
            return _ZERO, f"No open {other_word} orders in {p.inst.symbol}"
        accounts = sorted(
            set(self.ctx._open_side_accounts.get(opposite, ()))
            | set(self.side_accounts.get(opposite, ()))
        )
        shown = ", ".join(str(a) for a in accounts[:5])
        if len(accounts) > 5:
            shown += f" and {len(accounts) - 5} more"
        plural = "s" if count != 1 else ""
        message = (
            f"{_side_word(p.order.side)} of {p.inst.symbol} conflicts with {count} open "
            f"{other_word} order{plural} in the same instrument (account"
            f"{'s' if len(accounts) != 1 else ''} {shown})"
        )
        return Decimal(count), message

    def _duplicate_orders(self, rule: RuleSpec, params: dict[str, Any], p: _Prepared) -> RuleResult:
        lim: dict[str, str] = params["_text"]
        window: Decimal = params["window_seconds"]
        memo = p.memo
        if memo is None:
            memo = p.memo = {}
        cached = memo.get(RULE_DUPLICATE_ORDERS)
        if cached is None:
            cached = memo[RULE_DUPLICATE_ORDERS] = self._nearest_twin(p)
        gap_seconds, what = cached
        if gap_seconds is None:
            return _row(p, rule, True, f"No other open order for {what}", None, window)
        ok = gap_seconds >= window
        if ok:
            message = (
                f"Nearest other order for {what} was entered {_num(gap_seconds)} s apart, "
                f"outside the {lim['window_seconds']} s duplicate window"
            )
        else:
            message = (
                f"Possible duplicate: another order for {what} was entered "
                f"{_num(gap_seconds)} s apart, within the {lim['window_seconds']} s window"
            )
        return _row(p, rule, ok, message, gap_seconds, window)

    def _nearest_twin(self, p: _Prepared) -> tuple[Decimal | None, str]:
        """Seconds to the nearest open order with the same account, instrument, side, quantity."""
        order = p.order
        key = (order.account_id, order.instrument_id, order.side, order.quantity)
        at = order.created_at
        nearest = None
        for times in (self.ctx._open_times.get(key), self.times.get(key)):
            if not times:
                continue
            i = bisect.bisect_left(times, at)
            for j in (i - 1, i):
                if 0 <= j < len(times):
                    gap = abs(times[j] - at)
                    if nearest is None or gap < nearest:
                        nearest = gap
        what = (
            f"account {order.account_id} {order.side.replace('_', ' ')} {_num(order.quantity)} "
            f"{p.inst.symbol}"
        )
        if nearest is None:
            return None, what
        seconds = Decimal(nearest.days * 86400 + nearest.seconds) + (
            Decimal(nearest.microseconds) * _MICRO
        )
        return seconds, what
