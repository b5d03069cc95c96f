"""Load what the compliance engine reads from the database, in a constant number of queries.

Everything here turns rows into the engine's plain dataclasses (`compliance.engine`); nothing
here decides an outcome. The number of queries does not depend on how many orders are checked
(every lookup is one query over the whole batch).

Valuation choices (documented because the engine takes them as given):
- Reference price = `ReferencePrice.last`; an instrument without one is priced 0 (the engine
  fails every notional check on it, naming the missing price).
- NAV, in the account's base currency = cash of every currency (settled + pending) + Σ position
  quantity × reference price, each amount converted to the base currency at `orders.fx`'s rate
  (exact product). An amount without a rate leaves the NAV unknown: the rate is named in
  `AccountInfo.nav_missing_rates` and the NAV-based checks fail naming it. Open orders, priced
  in their instrument's currency, are converted to the base currency too (by the engine, or
  here when summed in advance). The rates are reference data (cached per refdata version).
- Available cash = base-currency settled + pending when pending is negative (unsettled
  purchases already spent it); positive pending (unsettled sale proceeds) is not yet cash and
  is not credited. Cash in other currencies counts in NAV, not in buying power (it is not
  available to pay in the base currency without an FX trade).
- Open orders are valued at their limit price when they carry one (limit, stop-limit), else at
  the reference price; their remaining quantity is `quantity - cum_qty`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from allocations.models import Account
from compliance import engine
from compliance.models import RestrictedEntry, Rule
from oms_site import refcache
from oms_site.rows import array_literal
from orders import fx
from orders.enums import OPEN_STATUSES, OrderType
from orders.models import Instrument, Order, ReferencePrice

ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
# An amount in the base currency already, or in no currency: converted as it is.
_SAME = object()


def firm_now() -> datetime:
    """Now, on the firm's clock: rules and restrictions take effect on the firm's calendar day."""
    return timezone.now().astimezone(ZoneInfo(settings.FIRM_TIME_ZONE))


def _in_effect_q(day: date) -> Q:
    return (Q(effective_from__isnull=True) | Q(effective_from__lte=day)) & (
        Q(effective_to__isnull=True) | Q(effective_to__gte=day)
    )


def rule_spec(
    rule: Rule, account_ids: Iterable[int] = (), group_ids: Iterable[int] = ()
) -> engine.RuleSpec:
    """The engine's view of one version of a rule."""
    return engine.RuleSpec(
        id=rule.pk or 0,
        version=rule.version,
        name=rule.name,
        rule_type=rule.rule_type,
        severity=rule.severity,
        scope=rule.scope,
        scope_account_ids=frozenset(account_ids),
        scope_group_ids=frozenset(group_ids),
        params=dict(rule.params or {}),
        active=rule.active,
        effective_from=rule.effective_from,
        effective_to=rule.effective_to,
    )


def _load_rule_specs(day: date) -> list[engine.RuleSpec]:
    rules = list(Rule.objects.filter(_in_effect_q(day), active=True).order_by("pk"))
    if not rules:
        return []
    ids = [r.pk for r in rules]
    scope_accounts: dict[int, set[int]] = {}
    for rule_id, account_id in Rule.accounts.through.objects.filter(rule_id__in=ids).values_list(
        "rule_id", "account_id"
    ):
        scope_accounts.setdefault(rule_id, set()).add(account_id)
    scope_groups: dict[int, set[int]] = {}
    for rule_id, group_id in Rule.groups.through.objects.filter(rule_id__in=ids).values_list(
        "rule_id", "accountgroup_id"
    ):
        scope_groups.setdefault(rule_id, set()).add(group_id)
    return [rule_spec(r, scope_accounts.get(r.pk, ()), scope_groups.get(r.pk, ())) for r in rules]


def load_rules(
    *, day: date, rule_types: Iterable[str] | None = None, version: int | None = None
) -> list[engine.RuleSpec]:
    """Active rules in effect on `day` with their scope accounts/groups (cached per refdata
    version; three queries when not cached)."""
    values = refcache.generation(version)
    rules = refcache.cached(values, ("compliance.rules", day), lambda: _load_rule_specs(day))
    if rule_types is not None:
        wanted = set(rule_types)
        return [r for r in rules if r.rule_type in wanted]
    return list(rules)


_LOCK_CASH_SQL = (
    "SELECT c.account_id, c.settled, c.pending FROM allocations_cashbalance c"
    " JOIN allocations_account a ON a.id = c.account_id AND c.currency = a.base_currency"
    # In account order, as fills lock cash (allocations.services): two transactions taking
    # the same balances never wait on each other crosswise.
    " WHERE c.account_id = ANY(%b::bigint[]) ORDER BY c.account_id, c.currency FOR UPDATE OF c"
)
_READ_CASH_SQL = (
    "SELECT c.account_id, c.settled, c.pending FROM allocations_cashbalance c"
    " JOIN allocations_account a ON a.id = c.account_id AND c.currency = a.base_currency"
    " WHERE c.account_id = ANY(%b::bigint[])"
)


def _rows(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    # Plain SQL on the hot path: the ORM spent more time compiling these few fixed queries
    # than PostgreSQL spent answering them.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def lock_cash(*, account_ids: Iterable[int]) -> dict[int, tuple[Decimal, Decimal]]:
    """Lock the accounts' base-currency cash rows (in account order); {account: (settled, pending)}.

    Why: two orders of one account checked at once must not both see the same buying power. The
    lock is taken before anything else is read, so the second checker waits for the first to
    commit and then reads its order as open (READ COMMITTED takes a new snapshot per statement).
    """
    rows = _rows(_LOCK_CASH_SQL, [sorted({int(a) for a in account_ids})])
    return {account_id: (settled, pending) for account_id, settled, pending in rows}


def read_cash(*, account_ids: Iterable[int]) -> dict[int, tuple[Decimal, Decimal]]:
    """The accounts' base-currency cash without locking (post-trade reads)."""
    rows = _rows(_READ_CASH_SQL, [sorted({int(a) for a in account_ids})])
    return {account_id: (settled, pending) for account_id, settled, pending in rows}


# Instruments by id with their reference price, as Instrument.objects.filter(pk in ids)
# .values_list("pk", "symbol", "issuer_id", "sector", "shares_outstanding", "tradable",
# "price__last") reads them: each instrument a process has not cached yet (every one once per
# refdata version) cost about 1.5 ms of Python through the ORM, mostly compiling the query.
_INSTRUMENT_INFOS_SQL = (
    "SELECT i.id, i.symbol, i.issuer_id, i.sector, i.shares_outstanding, i.tradable, p.last,"
    " i.currency"
    f" FROM {Instrument._meta.db_table} i"
    f" LEFT JOIN {ReferencePrice._meta.db_table} p"
    " ON p.instrument_id = i.id WHERE i.id = ANY(%s::bigint[])"
)


def _instrument_infos(ids: list[int]) -> dict[int, engine.InstrumentInfo]:
    rows = _rows(_INSTRUMENT_INFOS_SQL, [array_literal(ids)])
    return {
        pk: engine.InstrumentInfo(
            id=pk,
            symbol=symbol,
            issuer_id=issuer_id,
            sector=sector or None,
            shares_outstanding=shares,
            reference_price=last if last is not None else ZERO,
            tradable=tradable,
            currency=currency,
        )
        for pk, symbol, issuer_id, sector, shares, tradable, last, currency in rows
    }


def load_instruments(
    ids: Iterable[int], *, version: int | None = None
) -> dict[int, engine.InstrumentInfo]:
    """Instruments with issuer, sector, shares outstanding and reference price (cached per
    refdata version; one query for those not cached)."""
    wanted = set(ids)
    if not wanted:
        return {}
    values = refcache.generation(version)
    found = refcache.cached_many(values, "compliance.instruments", wanted, _instrument_infos)
    return {pk: info for pk, info in found.items() if info is not None}


def _account_statics(ids: list[int]) -> dict[int, tuple[str, bool, frozenset[int], str]]:
    groups: dict[int, set[int]] = {}
    for account_id, group_id in Account.groups.through.objects.filter(
        account_id__in=ids
    ).values_list("account_id", "accountgroup_id"):
        groups.setdefault(account_id, set()).add(group_id)
    return {
        pk: (code, short_allowed, frozenset(groups.get(pk, ())), base_currency)
        for pk, code, short_allowed, base_currency in Account.objects.filter(
            pk__in=ids
        ).values_list("pk", "code", "short_selling_allowed", "base_currency")
    }


def _base_currency(account_id: int, version: int) -> str:
    """The account's base currency from the refdata cache ("" for no such account)."""
    values = refcache.generation(version)
    static = refcache.cached_many(values, "compliance.accounts", [account_id], _account_statics)
    found = static[account_id]
    return found[3] if found is not None else ""


def fx_pairs(
    instruments: Mapping[int, engine.InstrumentInfo],
    accounts: Mapping[int, engine.AccountInfo],
    rates: fx.FxRates,
) -> dict[tuple[str, str], Decimal]:
    """The rates the engine may need: each instrument's currency into each account's base."""
    bases = {a.base_currency for a in accounts.values() if a.base_currency}
    out: dict[tuple[str, str], Decimal] = {}
    for currency in {i.currency for i in instruments.values() if i.currency}:
        for base in bases:
            if currency != base:
                found = rates.find(currency, base)
                if found is not None:
                    out[(currency, base)] = found
    return out


def load_accounts(
    *,
    account_ids: Iterable[int],
    cash: dict[int, tuple[Decimal, Decimal]],
    holdings: dict[tuple[int, int], Decimal],
    instruments: dict[int, engine.InstrumentInfo],
    version: int | None = None,
    other_cash: Mapping[int, Sequence[tuple[str, Decimal]]] | None = None,
) -> dict[int, engine.AccountInfo]:
    """AccountInfo with NAV and available cash (short selling, groups and base currency cached
    per refdata version; two queries for accounts not cached). `cash` is the base-currency
    (settled, pending), `other_cash` the non-zero totals in other currencies."""
    ids = sorted(set(account_ids))
    values = refcache.generation(version)
    statics = refcache.cached_many(values, "compliance.accounts", ids, _account_statics)
    rates = fx.rates(version=version)
    bases = {pk: static[3] for pk, static in statics.items() if static is not None}
    converted: dict[int, Decimal] = {}
    missing: dict[int, set[tuple[str, str]]] = {}
    lacking: set[tuple[str, str]] = set()

    def add(account_id: int, amount: Decimal, currency: str) -> None:
        value = engine.convert(amount, currency, bases.get(account_id, ""), rates, lacking)
        if value is None:
            missing.setdefault(account_id, set()).update(lacking)
            lacking.clear()
        else:
            converted[account_id] = converted.get(account_id, ZERO) + value

    for (account_id, instrument_id), qty in holdings.items():
        inst = instruments.get(instrument_id)
        if inst is not None:
            add(account_id, qty * inst.reference_price, inst.currency)
    for account_id, amounts in (other_cash or {}).items():
        for currency, amount in amounts:
            add(account_id, amount, currency)
    out: dict[int, engine.AccountInfo] = {}
    # In the accounts' own order (by code), as a query over them would list them.
    known = sorted(
        ((static, pk) for pk, static in statics.items() if static is not None),
        key=lambda item: item[0][0],
    )
    for (_, short_allowed, group_ids, base_currency), pk in known:
        settled, pending = cash.get(pk, (ZERO, ZERO))
        out[pk] = engine.AccountInfo(
            id=pk,
            nav=settled + pending + converted.get(pk, ZERO),
            available_cash=settled + min(pending, ZERO),
            short_allowed=short_allowed,
            group_ids=group_ids,
            base_currency=base_currency,
            nav_missing_rates=frozenset(missing.get(pk, ())),
        )
    return out


_OTHER_CASH_SQL = (
    "SELECT c.account_id, c.currency, c.settled + c.pending FROM allocations_cashbalance c"
    " JOIN allocations_account a ON a.id = c.account_id AND c.currency <> a.base_currency"
    " WHERE c.account_id = ANY(%b::bigint[]) AND c.settled + c.pending <> 0"
    " ORDER BY c.account_id, c.currency"
)


def read_other_cash(*, account_ids: Iterable[int]) -> dict[int, list[tuple[str, Decimal]]]:
    """The accounts' non-zero cash totals in currencies other than their base (no lock)."""
    out: dict[int, list[tuple[str, Decimal]]] = {}
    for account_id, currency, total in _rows(
        _OTHER_CASH_SQL, [sorted({int(a) for a in account_ids})]
    ):
        out.setdefault(account_id, []).append((currency, total))
    return out


class _Restricted:
    """The restricted entries in effect on one day, indexed by instrument and by issuer."""

    def __init__(self, day: date) -> None:
        rows = (
            RestrictedEntry.objects.filter(_in_effect_q(day), active=True)
            .order_by("pk")
            .values_list(
                "instrument_id",
                "issuer_id",
                "account_id",
                "reason",
                "effective_from",
                "effective_to",
            )
        )
        self.by_instrument: dict[int, list[engine.RestrictedEntry]] = {}
        self.by_issuer: dict[int, list[engine.RestrictedEntry]] = {}
        self.order: dict[int, int] = {}
        for n, (instrument_id, issuer_id, account_id, reason, start, end) in enumerate(rows):
            entry = engine.RestrictedEntry(
                instrument_id=instrument_id,
                issuer_id=issuer_id,
                account_id=account_id,
                reason=reason,
                effective_from=start,
                effective_to=end,
            )
            self.order[id(entry)] = n
            if instrument_id is not None:
                self.by_instrument.setdefault(instrument_id, []).append(entry)
            if issuer_id is not None:
                self.by_issuer.setdefault(issuer_id, []).append(entry)


def load_restricted(
    *,
    day: date,
    instrument_ids: Iterable[int],
    issuer_ids: Iterable[int],
    account_ids: Iterable[int],
    version: int | None = None,
) -> list[engine.RestrictedEntry]:
    """Restricted entries in effect naming these instruments or issuers, firm-wide or for these
    accounts (the day's list cached per refdata version; one query when not cached)."""
    values = refcache.generation(version)
    table = refcache.cached(values, ("compliance.restricted", day), lambda: _Restricted(day))
    accounts = set(account_ids)
    hits: dict[int, engine.RestrictedEntry] = {}
    for index, ids in ((table.by_instrument, instrument_ids), (table.by_issuer, issuer_ids)):
        for key in set(ids):
            for entry in index.get(key, ()):
                if entry.account_id is None or entry.account_id in accounts:
                    hits[id(entry)] = entry
    return sorted(hits.values(), key=lambda e: table.order[id(e)])


# Everything live the checks read, in one round trip (rows tagged by their first column):
# 'o' the checked accounts' open orders one by one (they feed buying power, concentration,
# short selling and duplicates); 't' every other account's open orders with leaves, summed per
# account, instrument and side, and only where a check reads them: the checked instruments
# (conflicts) and buys in the checked issuers (ownership), count in the last column; 'h' the
# checked accounts' non-zero positions; 'f' the firm's long holding per checked issuer, summed
# over all accounts; 'k' the checked accounts' non-zero cash in currencies other than their base
# (currency in the side column, for NAV). Orders being checked belong to checked accounts, so
# only 'o' excludes them.
# Creation times travel as microseconds since the epoch (exact): Django's timestamptz loader
# cost more per row than everything else the row needed.
_BOOK_SQL = (
    "SELECT 'o', o.account_id, o.instrument_id, o.side, o.quantity, o.cum_qty, o.order_type,"
    " o.limit_price, (EXTRACT(EPOCH FROM o.created_at) * 1000000)::bigint, NULL::bigint"
    " FROM orders_order o"
    " WHERE o.status = ANY(%(statuses)b::text[]) AND o.account_id = ANY(%(accounts)b::bigint[])"
    " AND NOT (o.id = ANY(%(exclude)b::bigint[]))"
    " UNION ALL"
    " SELECT 't', o.account_id, o.instrument_id, o.side, NULL, SUM(o.quantity - o.cum_qty), NULL,"
    " NULL, NULL, COUNT(*) FROM orders_order o"
    " WHERE o.instrument_id IN (SELECT i.id FROM orders_instrument i"
    " WHERE i.id = ANY(%(instruments)b::bigint[]) OR i.issuer_id = ANY(%(issuers)b::bigint[]))"
    " AND (o.instrument_id = ANY(%(instruments)b::bigint[]) OR o.side = ANY(%(buy_sides)b::text[]))"
    " AND o.status = ANY(%(statuses)b::text[])"
    " AND NOT (o.account_id = ANY(%(accounts)b::bigint[])) AND o.quantity > o.cum_qty"
    " GROUP BY o.account_id, o.instrument_id, o.side"
    " UNION ALL"
    " SELECT 'h', p.account_id, p.instrument_id, NULL, p.quantity, NULL, NULL, NULL, NULL, NULL"
    " FROM allocations_position p"
    " WHERE p.account_id = ANY(%(accounts)b::bigint[]) AND p.quantity <> 0"
    " UNION ALL"
    " SELECT 'f', NULL, i.issuer_id, NULL, SUM(p.quantity), NULL, NULL, NULL, NULL, NULL"
    " FROM allocations_position p JOIN orders_instrument i ON i.id = p.instrument_id"
    " WHERE i.issuer_id = ANY(%(issuers)b::bigint[]) AND p.quantity > 0 GROUP BY i.issuer_id"
    " UNION ALL"
    " SELECT 'k', c.account_id, NULL, c.currency, c.settled + c.pending, NULL, NULL, NULL, NULL,"
    " NULL FROM allocations_cashbalance c"
    " JOIN allocations_account a ON a.id = c.account_id AND c.currency <> a.base_currency"
    " WHERE c.account_id = ANY(%(accounts)b::bigint[]) AND c.settled + c.pending <> 0"
)
_OPEN_STATUSES = sorted(str(s) for s in OPEN_STATUSES)
_BUY_SIDES = sorted(engine.BUY_SIDES)


def _book_rows(
    *,
    account_ids: list[int],
    instrument_ids: list[int],
    issuer_ids: list[int],
    exclude_ids: list[int],
) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            _BOOK_SQL,
            {
                "statuses": _OPEN_STATUSES,
                "accounts": account_ids,
                "exclude": exclude_ids,
                "instruments": instrument_ids,
                "buy_sides": _BUY_SIDES,
                "issuers": issuer_ids,
            },
        )
        return cursor.fetchall()


def order_intent(order: Order, *, key: int | None = None) -> engine.OrderIntent:
    """The engine's view of an order row (key = primary key unless given)."""
    return engine.OrderIntent(
        key=order.pk if key is None else key,
        account_id=order.account_id,
        instrument_id=order.instrument_id,
        side=order.side,
        quantity=order.quantity,
        order_type=order.order_type,
        limit_price=order.limit_price,
        created_at=order.created_at,
        created_by_id=order.created_by_id,
    )


@dataclass(frozen=True, slots=True)
class LoadedCheck:
    """Everything one pre-trade check needs: the engine's inputs."""

    intents: list[engine.OrderIntent]
    context: engine.ComplianceContext
    rules: list[engine.RuleSpec]
    # The refdata version the check's own statement read in the caller's transaction (the
    # one-order check reads it with the book's sums; None where it is not read in there).
    version: int | None = None


def build_pretrade(
    *,
    orders: Sequence[Order],
    as_of: datetime | None = None,
    lock: bool = True,
    keys: Sequence[int] | None = None,
) -> LoadedCheck:
    """Lock the accounts' cash rows, then load the engine's inputs for these orders.

    A constant number of queries whatever the number of orders: the cash lock, the refdata
    version, and one statement for holdings, open orders and the firm's issuer holdings
    (`_BOOK_SQL`); reference data (rules,
    instruments, accounts, restricted list) comes from the per-process cache when its version
    is current, else with a few more queries. `keys` name orders not inserted yet (default:
    their primary keys).
    """
    as_of = as_of or firm_now()
    day = as_of.date()
    account_ids = sorted({o.account_id for o in orders})
    cash = lock_cash(account_ids=account_ids) if lock else read_cash(account_ids=account_ids)
    # Read after the lock, so reference data is at least as fresh as the cash and open orders.
    version = refcache.refdata_version()

    order_instrument_ids = {o.instrument_id for o in orders}
    instruments = load_instruments(order_instrument_ids, version=version)
    issuer_ids = sorted({i.issuer_id for i in instruments.values() if i.issuer_id is not None})
    rows = _book_rows(
        account_ids=account_ids,
        instrument_ids=sorted(order_instrument_ids),
        issuer_ids=issuer_ids,
        exclude_ids=sorted({int(o.pk) for o in orders if o.pk is not None}),
    )
    holdings: dict[tuple[int, int], Decimal] = {}
    firm_issuer_holdings: dict[int, Decimal] = {}
    other_cash: dict[int, list[tuple[str, Decimal]]] = {}
    open_rows = []
    tallies = []
    for row in rows:
        kind = row[0]
        if kind == "o":
            open_rows.append(row)
        elif kind == "t":
            tallies.append(
                engine.OpenOrderTally(
                    account_id=row[1],
                    instrument_id=row[2],
                    side=row[3],
                    count=row[9],
                    leaves_quantity=row[5],
                )
            )
        elif kind == "h":
            holdings[(row[1], row[2])] = row[4]
        elif kind == "k":
            other_cash.setdefault(row[1], []).append((row[3], row[4]))
        else:
            firm_issuer_holdings[row[2]] = row[4]
    extra = (
        {i for (_, i) in holdings} | {r[2] for r in open_rows} | {t.instrument_id for t in tallies}
    ) - instruments.keys()
    if extra:
        instruments.update(load_instruments(extra, version=version))

    open_orders = []
    for (
        _,
        account_id,
        instrument_id,
        side,
        qty,
        cum,
        order_type,
        limit_price,
        created_us,
        _,
    ) in open_rows:
        price = (
            limit_price
            if limit_price is not None and order_type in _LIMIT_TYPES
            else instruments[instrument_id].reference_price
        )
        open_orders.append(
            engine.OpenOrder(
                account_id=account_id,
                instrument_id=instrument_id,
                side=side,
                leaves_quantity=qty - cum,
                price=price,
                created_at=_EPOCH + timedelta(microseconds=created_us),
                quantity=qty,
            )
        )
    accounts = load_accounts(
        account_ids=account_ids,
        cash=cash,
        holdings=holdings,
        instruments=instruments,
        version=version,
        other_cash=other_cash,
    )
    context = engine.ComplianceContext(
        instruments=instruments,
        accounts=accounts,
        as_of=as_of,
        holdings=holdings,
        fx_rates=fx_pairs(instruments, accounts, fx.rates(version=version)),
        open_orders=open_orders,
        open_tallies=tallies,
        restricted=load_restricted(
            day=day,
            instrument_ids=order_instrument_ids,
            issuer_ids=issuer_ids,
            account_ids=account_ids,
            version=version,
        ),
        firm_issuer_holdings=firm_issuer_holdings,
    )
    if keys is None:
        intents = [order_intent(o) for o in orders]
    else:
        intents = [order_intent(o, key=k) for o, k in zip(orders, keys, strict=True)]
    return LoadedCheck(
        intents=intents,
        context=context,
        rules=load_rules(day=day, version=version),
    )


# One order's check reads only a few sums of its account's open orders (buy notional; sells,
# notional and creation times in its instrument; notional in its issuer and sector), all
# accounts' open orders in its instrument (conflicts) and buys in its issuer (ownership).
# PostgreSQL sums them here in the statement that also reads the refdata version (same
# snapshot, after the cash lock), so the work no longer grows with the account's open orders.
# Tags: 'v' the version; 'a' per direction (column 2: is_buy) the limit-priced notional in
# total, in the instrument, issuer and sector, and the leaves in the instrument; 'm' leaves of
# orders valued at the reference price, per direction and instrument (priced from the
# refdata cache, as the full loader prices them); 'd' creation times of the account's open
# orders with the order's instrument, side and quantity; 'c' open orders per account and
# direction in the instrument; 'i' open buy leaves of all accounts in the issuer; 'h' the
# account's non-zero positions; 'f' the firm's long holding of the issuer; 'x' limit-priced
# notional of open orders in instruments of another currency than the account's base, per
# direction and instrument (left out of the 'a' sums; converted here at the refdata rates);
# 'k' || currency the account's non-zero cash in another currency than its base (for NAV).


def _literal(values: Iterable[str]) -> str:
    """A constant text array written into a statement (enum values: letters and underscores)."""
    items = sorted(str(v) for v in values)
    if not all(item.replace("_", "").isalnum() for item in items):
        raise ValueError(f"not a plain enum value: {items}")
    return "'{" + ",".join(items) + "}'::text[]"


# The constant arrays are written into the statement: psycopg would otherwise dump the same
# lists of strings on every call.
_BUYS = _literal(engine.BUY_SIDES)
_OPEN = _literal(OPEN_STATUSES)
_AT_LIMIT = _literal(_LIMIT_TYPES)
# The book's issuer and sector buckets are the order's issuer's and sector's instruments, given
# as id arrays from the refdata cache (the statement reads the version they belong to): joining
# each open order to its instrument was 180 index probes, most of the statement's buffer reads,
# on a book of 180 open orders.
_ONE_SQL = (
    "WITH book AS (SELECT o.instrument_id, o.side, o.quantity, o.created_at,"
    " o.instrument_id = ANY(%(issuer_instruments)s::bigint[]) AS in_issuer,"
    " o.instrument_id = ANY(%(sector_instruments)s::bigint[]) AS in_sector,"
    f" o.side = ANY({_BUYS}) AS buy, o.quantity - o.cum_qty AS leaves,"
    f" (o.limit_price IS NOT NULL AND o.order_type = ANY({_AT_LIMIT})) AS at_limit,"
    # Tested for limit-priced rows only (NULL otherwise: their notional is NULL anyway).
    f" CASE WHEN o.limit_price IS NOT NULL AND o.order_type = ANY({_AT_LIMIT})"
    " THEN o.instrument_id <@ %(foreign_instruments)s::int8multirange END AS foreign_ccy,"
    # Each row's notional once (numeric products are the statement's main cost).
    f" CASE WHEN o.limit_price IS NOT NULL AND o.order_type = ANY({_AT_LIMIT})"
    " THEN (o.quantity - o.cum_qty) * o.limit_price END AS notional"
    " FROM orders_order o"
    f" WHERE o.account_id = %(account)b::bigint AND o.status = ANY({_OPEN})"
    " AND o.quantity > o.cum_qty AND o.id <> %(exclude)b::bigint)"
    " SELECT 'v', NULL::boolean, v.version, NULL::numeric, NULL::numeric, NULL::numeric,"
    " NULL::numeric, NULL::numeric FROM oms_refdata_version v WHERE v.id = 1"
    " UNION ALL"
    " SELECT 'a', b.buy, NULL, SUM(b.notional) FILTER (WHERE NOT b.foreign_ccy),"
    " SUM(b.notional) FILTER (WHERE b.instrument_id = %(instrument)b::bigint"
    " AND NOT b.foreign_ccy),"
    " SUM(b.notional) FILTER (WHERE b.in_issuer AND NOT b.foreign_ccy),"
    " SUM(b.notional) FILTER (WHERE b.in_sector AND NOT b.foreign_ccy),"
    " SUM(b.leaves) FILTER (WHERE b.instrument_id = %(instrument)b::bigint)"
    " FROM book b GROUP BY b.buy"
    " UNION ALL"
    " SELECT 'm', b.buy, b.instrument_id, SUM(b.leaves), NULL, NULL, NULL, NULL FROM book b"
    " WHERE NOT b.at_limit GROUP BY b.buy, b.instrument_id"
    " UNION ALL"
    " SELECT 'x', b.buy, b.instrument_id, SUM(b.notional), NULL, NULL, NULL, NULL FROM book b"
    " WHERE b.at_limit AND b.foreign_ccy GROUP BY b.buy, b.instrument_id"
    " UNION ALL"
    " SELECT 'd', NULL, (EXTRACT(EPOCH FROM b.created_at) * 1000000)::bigint, NULL, NULL, NULL,"
    " NULL, NULL FROM book b WHERE b.instrument_id = %(instrument)b::bigint"
    " AND b.side = %(side)b::text"
    " AND b.quantity = %(quantity)b::numeric"
    " UNION ALL"
    f" SELECT 'c', o.side = ANY({_BUYS}), o.account_id, COUNT(*), NULL, NULL, NULL,"
    " NULL FROM orders_order o WHERE o.instrument_id = %(instrument)b::bigint"
    f" AND o.status = ANY({_OPEN}) AND o.quantity > o.cum_qty"
    " AND o.id <> %(exclude)b::bigint GROUP BY 2, 3"
    " UNION ALL"
    " SELECT 'i', NULL, NULL, SUM(o.quantity - o.cum_qty), NULL, NULL, NULL, NULL"
    " FROM orders_order o WHERE o.instrument_id IN (SELECT i.id FROM orders_instrument i"
    f" WHERE i.issuer_id = %(issuer)b::bigint) AND o.side = ANY({_BUYS})"
    f" AND o.status = ANY({_OPEN}) AND o.quantity > o.cum_qty"
    " AND o.id <> %(exclude)b::bigint"
    " UNION ALL"
    " SELECT 'h', NULL, p.instrument_id, p.quantity, NULL, NULL, NULL, NULL"
    " FROM allocations_position p WHERE p.account_id = %(account)b::bigint AND p.quantity <> 0"
    " UNION ALL"
    " SELECT 'f', NULL, NULL, SUM(p.quantity), NULL, NULL, NULL, NULL"
    " FROM allocations_position p JOIN orders_instrument i ON i.id = p.instrument_id"
    " WHERE i.issuer_id = %(issuer)b::bigint AND p.quantity > 0"
    " UNION ALL"
    " SELECT 'k' || c.currency, NULL, NULL, c.settled + c.pending, NULL, NULL, NULL, NULL"
    " FROM allocations_cashbalance c WHERE c.account_id = %(account)b::bigint"
    " AND c.currency <> %(base)b::text AND c.settled + c.pending <> 0"
)


_NO_INSTRUMENTS = array_literal([])


def _foreign_instruments(base: str) -> str:
    """The instruments not in this (base) currency, as an int8multirange literal of id runs.

    Why a multirange: PostgreSQL finds an id in it by binary search over the runs, where
    `= ANY(array)` compares with every element, for every limit-priced open order (124 foreign
    instruments, 329 open orders: 0.03 ms less per check, and it does not grow with the
    number of instruments in other currencies).
    """
    ids = sorted(Instrument.objects.exclude(currency=base).values_list("pk", flat=True))
    runs: list[str] = []
    start = 0
    for n, pk in enumerate(ids):
        if n == 0 or pk != ids[n - 1] + 1:
            start = pk
        if n + 1 == len(ids) or ids[n + 1] != pk + 1:
            runs.append(f"[{start},{pk + 1})")
    return "{" + ",".join(runs) + "}"


def _instrument_groups() -> tuple[dict[int, str], dict[str, str]]:
    """Instrument ids per issuer and per (non-empty) sector, as array literals."""
    by_issuer: dict[int, list[int]] = {}
    by_sector: dict[str, list[int]] = {}
    for pk, issuer_id, sector in Instrument.objects.values_list("pk", "issuer_id", "sector"):
        if issuer_id is not None:
            by_issuer.setdefault(issuer_id, []).append(pk)
        if sector:
            by_sector.setdefault(sector, []).append(pk)
    return (
        {issuer: array_literal(ids) for issuer, ids in by_issuer.items()},
        {sector: array_literal(ids) for sector, ids in by_sector.items()},
    )


def _one_rows(
    order: Order, inst: engine.InstrumentInfo, *, version: int, base: str
) -> list[tuple[Any, ...]]:
    values = refcache.generation(version)
    by_issuer, by_sector = refcache.cached(
        values, "compliance.instrument_groups", _instrument_groups
    )
    foreign = refcache.cached(
        values, ("compliance.foreign_instruments", base), lambda: _foreign_instruments(base)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _ONE_SQL,
            {
                "account": int(order.account_id),
                "instrument": int(inst.id),
                # No issuer or sector: nothing else shares the bucket (NULL matches no row,
                # and no instrument is in an empty array).
                "issuer": inst.issuer_id,
                "issuer_instruments": (
                    by_issuer.get(inst.issuer_id, _NO_INSTRUMENTS)
                    if inst.issuer_id is not None
                    else _NO_INSTRUMENTS
                ),
                "sector_instruments": (
                    by_sector.get(inst.sector, _NO_INSTRUMENTS) if inst.sector else _NO_INSTRUMENTS
                ),
                "foreign_instruments": foreign,
                "base": base,
                "side": order.side,
                "quantity": order.quantity,
                "exclude": int(order.pk) if order.pk is not None else 0,
            },
        )
        return cursor.fetchall()


def _summary(
    order: Order,
    inst: engine.InstrumentInfo,
    rows: list[tuple[Any, ...]],
    instruments: dict[int, engine.InstrumentInfo],
    *,
    base: str,
    rates: fx.FxRates,
) -> engine.OpenOrderSummary:
    """The engine's open-order sums for one order, from `_ONE_SQL`'s 'a', 'm', 'x', 'd', 'c',
    'i'; notional in the account's base currency."""
    acct = int(order.account_id)
    missing: dict[bool, set[tuple[str, str]]] = {}
    keys = inst.buckets
    buy_notional = ZERO
    # [instrument, issuer, sector] notional per direction.
    buckets = {True: [ZERO, ZERO, ZERO], False: [ZERO, ZERO, ZERO]}
    sell_qty = ZERO
    issuer_buy = None
    side_accounts: dict[tuple[int, bool], dict[int, int]] = {}
    times: list[datetime] = []
    # Each currency's rate into the base looked up once per order, not once per row (an
    # account's book in other currencies is one row per direction and instrument): the rate
    # itself, _SAME when the amount needs no conversion, None when there is none (the pair is
    # then named, as engine.convert names it).
    rate_of: dict[str, Any] = {}
    wide_multiply = engine.WIDE.multiply
    key0, key1, key2 = keys
    for tag, buy, number, a, b, c, d, e in rows:
        if tag == "m" or tag == "x":
            other = instruments[number]
            # 'm': leaves at the reference price; 'x': limit-priced notional.
            amount = a * other.reference_price if tag == "m" else a
            currency = other.currency
            try:
                rate = rate_of[currency]
            except KeyError:
                rate = rate_of[currency] = (
                    _SAME
                    if not currency or not base or currency == base
                    else rates.get((currency, base))
                )
            # As engine.convert: a zero amount needs no rate and stays as it is.
            if rate is _SAME or not amount:
                notional = amount
            elif rate is None:
                missing.setdefault(buy, set()).add((currency, base))
                continue
            else:
                notional = wide_multiply(amount, rate)
            if buy:
                buy_notional += notional
            per_dim = buckets[buy]
            bucket = other.buckets
            if bucket[0] == key0:
                per_dim[0] += notional
            if bucket[1] == key1:
                per_dim[1] += notional
            if bucket[2] == key2:
                per_dim[2] += notional
        elif tag == "a":
            per_dim = buckets[buy]
            if a is not None:
                if buy:
                    buy_notional += a
                per_dim[0] += b or ZERO
                # An instrument without issuer or sector is its own bucket (engine._bucket_keys).
                per_dim[1] += (c or ZERO) if inst.issuer_id is not None else (b or ZERO)
                per_dim[2] += (d or ZERO) if inst.sector else (b or ZERO)
            if not buy and e is not None:
                sell_qty += e
        elif tag == "d":
            times.append(_EPOCH + timedelta(microseconds=number))
        elif tag == "c":
            side_accounts.setdefault((inst.id, buy), {})[number] = int(a)
        elif tag == "i":
            issuer_buy = a
    # The 'a' rows count every sell's leaves in the instrument, limit-priced or not.
    return engine.OpenOrderSummary(
        buy_notional={acct: buy_notional} if buy_notional else {},
        sell_qty={(acct, inst.id): sell_qty} if sell_qty else {},
        bucket_notional={
            (acct, dim, keys[dim], buy): value
            for buy, per_dim in buckets.items()
            for dim, value in enumerate(per_dim)
            if value
        },
        issuer_buy_qty=(
            {inst.issuer_id: issuer_buy}
            if inst.issuer_id is not None and issuer_buy is not None
            else {}
        ),
        side_accounts=side_accounts,
        times=({(acct, inst.id, order.side, order.quantity): sorted(times)} if times else {}),
        missing_rates={(acct, buy): frozenset(pairs) for buy, pairs in missing.items()},
    )


# Measured and left out (issue #3): sending the cash lock and _ONE_SQL in one flight
# (psycopg's pipeline mode; the read still starts only once the lock is granted). psycopg
# still sends the transaction's BEGIN as a round trip of its own in pipeline mode (it syncs
# and waits after it, _start_query), so this saved one round trip of six: alternated single
# orders through the API (2 x 400 pairs) measured -0.09/-0.17 ms wall, but +0.02/+0.09 ms of
# Python CPU (the pipeline's own work) and -0.04 ms of PostgreSQL CPU, nil in all. Putting
# BEGIN in the same flight too needs psycopg's private API (_exec_command, the pipeline's
# queue): -0.24 ms wall (496/800 pairs lower), Python CPU +0.005 ms (395/800), PostgreSQL
# CPU -0.08 ms (496/800), -0.08 ms CPU in all (457/800): under the 0.1 ms bar, not kept.
def build_pretrade_one(*, order: Order, key: int = 0, as_of: datetime | None = None) -> LoadedCheck:
    """Lock the account's cash row, then load what the rules read for this one order.

    The same inputs to the engine as `build_pretrade` (the same results, see
    tests/compliance/test_pretrade_one.py), in two statements whatever the account's book: the
    cash lock, and `_ONE_SQL`, which also reads the refdata version. The instrument's issuer
    and sector, needed to write that statement, come from the cache of the version this
    process saw last; if the statement finds another version, it runs again with the
    instrument of that version (one more statement, only right after a change).
    """
    as_of = as_of or firm_now()
    day = as_of.date()
    account_id = int(order.account_id)
    cash = lock_cash(account_ids=[account_id])
    version = refcache.last_version()
    while True:
        found = load_instruments([order.instrument_id], version=version)
        inst = found.get(order.instrument_id)
        if inst is None:
            raise engine.ComplianceDataError(
                f"Order instrument {order.instrument_id} is not in the database"
            )
        base = _base_currency(account_id, version)
        rows = _one_rows(order, inst, version=version, base=base)
        seen = next(int(r[2]) for r in rows if r[0] == "v")
        if seen == version:
            break
        version = seen
    instruments = dict(found)
    holdings: dict[tuple[int, int], Decimal] = {}
    firm_issuer_holdings: dict[int, Decimal] = {}
    other_cash: list[tuple[str, Decimal]] = []
    for row in rows:
        tag = row[0]
        if tag == "h":
            holdings[(account_id, row[2])] = row[3]
        elif tag == "f" and row[3] is not None and inst.issuer_id is not None:
            firm_issuer_holdings[inst.issuer_id] = row[3]
        elif tag[0] == "k":
            other_cash.append((tag[1:], row[3]))
    extra = (
        {i for (_, i) in holdings} | {r[2] for r in rows if r[0] == "m" or r[0] == "x"}
    ) - instruments.keys()
    if extra:
        instruments.update(load_instruments(extra, version=version))
    accounts = load_accounts(
        account_ids=[account_id],
        cash=cash,
        holdings=holdings,
        instruments=instruments,
        version=version,
        other_cash={account_id: other_cash} if other_cash else None,
    )
    rates = fx.rates(version=version)
    issuer_ids = [inst.issuer_id] if inst.issuer_id is not None else []
    context = engine.ComplianceContext(
        instruments=instruments,
        accounts=accounts,
        as_of=as_of,
        holdings=holdings,
        fx_rates=fx_pairs(instruments, accounts, rates),
        open_summary=_summary(order, inst, rows, instruments, base=base, rates=rates),
        restricted=load_restricted(
            day=day,
            instrument_ids=[inst.id],
            issuer_ids=issuer_ids,
            account_ids=[account_id],
            version=version,
        ),
        firm_issuer_holdings=firm_issuer_holdings,
    )
    return LoadedCheck(
        intents=[order_intent(order, key=key)],
        context=context,
        rules=load_rules(day=day, version=version),
        version=version,
    )
