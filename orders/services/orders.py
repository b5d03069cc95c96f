"""Order entry and lifecycle: create (single and basket), amend, cancel, expire, blocks.

Every command opens its own durable transaction, locks rows in a fixed order (block before
order, orders by primary key), writes audit events in that transaction and publishes blotter
events only after it commits. Validation of business rules lives here, not in serializers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.fields import NOT_PROVIDED
from django.utils import timezone

from allocations.models import Account
from allocations.selectors import accounts_visible_to
from oms_site import refcache
from oms_site.audit import (
    AuditEntry,
    audit_record_many,
    json_safe,
    new_object_events_params,
    new_object_events_sql,
)
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError
from oms_site.gcpause import collection_paused
from oms_site.roles import has_role, role_keys
from oms_site.rows import array_literal, model_from_row, set_prefetched
from orders.enums import (
    BUY_SIDES,
    BlockStatus,
    ComplianceOutcome,
    KillScope,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from orders.events import publish_orders_updated
from orders.models import Basket, Block, Instrument, Issuer, Order, ReferencePrice
from orders.selectors import active_kill_switches, kill_switch_covering, orders_visible_to
from orders.state import (
    AMENDABLE_BEFORE_ROUTING,
    AT_BROKER,
    CANCELABLE_BEFORE_ROUTING,
    ensure_transition,
)

ORDER_FIELDS = (
    "account",
    "instrument",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "expire_date",
    "client_order_id",
)
REQUIRED_FIELDS = ("account", "instrument", "side", "quantity", "order_type")
MAX_DECIMALS = 8
MAX_DIGITS = 24
CLIENT_ORDER_ID_MAX = 64

LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
OUTCOME_STATUS = {
    ComplianceOutcome.PASS: OrderStatus.APPROVED,
    ComplianceOutcome.WARN: OrderStatus.AWAITING_OVERRIDE,
    ComplianceOutcome.BLOCK: OrderStatus.BLOCKED,
}
# Orders the firm itself expires at the close; orders at a broker are expired by the broker's
# ExecutionReport, except "done for day" ones, where the broker has already stopped working them.
EXPIRABLE_BY_FIRM = frozenset(
    {
        OrderStatus.BLOCKED,
        OrderStatus.AWAITING_OVERRIDE,
        OrderStatus.APPROVED,
        OrderStatus.DONE_FOR_DAY,
    }
)
ORDER_TYPE = "order"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BasketSummary:
    """What a basket upload did: its id and how many orders passed, warned or were blocked."""

    basket_id: int | None
    created: int
    passed: int
    warned: int
    blocked: int

    def as_dict(self) -> dict[str, int]:
        """The API's summary object."""
        return {
            "created": self.created,
            "passed": self.passed,
            "warned": self.warned,
            "blocked": self.blocked,
        }


@dataclass(slots=True)
class _Clean:
    """One order row after type coercion (business rules not yet applied)."""

    account: str
    instrument: str
    side: str
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    expire_date: dt.date | None
    client_order_id: str | None


class _RowErrors:
    """Collected (row, field, message) errors of one call."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, str]] = []

    def add(self, row: int, field: str, message: str) -> None:
        self.items.append((row, field, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def for_single(self) -> ValidationError:
        errors: dict[str, list[str]] = {}
        for _, field, message in self.items:
            errors.setdefault(field, []).append(message)
        _, field, message = self.items[0]
        return ValidationError(f"{field}: {message}", code="invalid", errors=errors)

    def for_basket(self) -> ValidationError:
        errors = [
            {"row": row, "field": field, "detail": message} for row, field, message in self.items
        ]
        row, field, message = self.items[0]
        return ValidationError(
            f"Row {row}, {field}: {message} ({len(self.items)} error(s); nothing was created).",
            code="invalid",
            errors=errors,  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------------------------
# Coercion and validation
# --------------------------------------------------------------------------------------------


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        # Floats cannot carry exact prices; go through their shortest repr, never binary value.
        value = repr(value)
    if isinstance(value, bool):
        raise InvalidOperation
    d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    if not d.is_finite():
        raise InvalidOperation
    return d


def _decimal_field(
    raw: Mapping[str, Any], field: str, row: int, errors: _RowErrors
) -> Decimal | None:
    value = raw.get(field)
    if _blank(value):
        return None
    try:
        d = _to_decimal(value)
    except (InvalidOperation, ValueError, TypeError):
        errors.add(row, field, "must be a number")
        return None
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMALS:
        errors.add(row, field, f"must have at most {MAX_DECIMALS} decimal places")
        return None
    if d.adjusted() >= MAX_DIGITS - MAX_DECIMALS:
        errors.add(row, field, "is too large")
        return None
    return d


# TextChoices.values builds a new list on every access.
_CHOICE_VALUES: dict[Any, frozenset[str]] = {}


def _choice_field(
    raw: Mapping[str, Any], field: str, choices: Any, row: int, errors: _RowErrors
) -> str | None:
    value = raw.get(field)
    if _blank(value):
        return None
    text = str(value).strip().lower()
    allowed = _CHOICE_VALUES.get(choices)
    if allowed is None:
        allowed = _CHOICE_VALUES[choices] = frozenset(choices.values)
    if text not in allowed:
        errors.add(row, field, f"must be one of {', '.join(choices.values)}")
        return None
    return text


def _coerce_row(raw: Mapping[str, Any], row: int, errors: _RowErrors) -> _Clean | None:
    """Types only: the business rules run later, once reference data is loaded."""
    if not isinstance(raw, Mapping):
        errors.add(row, "non_field_errors", "must be an object of order fields")
        return None
    before = len(errors.items)
    for field in REQUIRED_FIELDS:
        if _blank(raw.get(field)):
            errors.add(row, field, "is required")
    unknown = sorted(set(raw) - set(ORDER_FIELDS))
    for field in unknown:
        errors.add(row, str(field), "is not an order field")
    side = _choice_field(raw, "side", Side, row, errors)
    order_type = _choice_field(raw, "order_type", OrderType, row, errors)
    tif = _choice_field(raw, "time_in_force", TimeInForce, row, errors) or TimeInForce.DAY
    quantity = _decimal_field(raw, "quantity", row, errors)
    limit_price = _decimal_field(raw, "limit_price", row, errors)
    stop_price = _decimal_field(raw, "stop_price", row, errors)
    expire_date: dt.date | None = None
    raw_date = raw.get("expire_date")
    if not _blank(raw_date):
        if isinstance(raw_date, dt.datetime):
            errors.add(row, "expire_date", "must be a date (YYYY-MM-DD)")
        elif isinstance(raw_date, dt.date):
            expire_date = raw_date
        else:
            try:
                expire_date = dt.date.fromisoformat(str(raw_date).strip())
            except ValueError:
                errors.add(row, "expire_date", "must be a date (YYYY-MM-DD)")
    client_order_id = raw.get("client_order_id")
    if _blank(client_order_id):
        client_order_id = None
    else:
        client_order_id = str(client_order_id).strip()
        if len(client_order_id) > CLIENT_ORDER_ID_MAX:
            errors.add(row, "client_order_id", f"must be at most {CLIENT_ORDER_ID_MAX} characters")
    if len(errors.items) > before:
        return None
    assert side is not None and order_type is not None and quantity is not None
    return _Clean(
        account=str(raw["account"]).strip(),
        instrument=str(raw["instrument"]).strip(),
        side=side,
        quantity=quantity,
        order_type=order_type,
        limit_price=limit_price,
        stop_price=stop_price,
        time_in_force=tif,
        expire_date=expire_date,
        client_order_id=client_order_id,
    )


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    return step > 0 and value % step == 0


def firm_today(now: dt.datetime | None = None) -> dt.date:
    """Today's date on the firm's clock (FIRM_TIME_ZONE)."""
    now = now or timezone.now()
    return now.astimezone(ZoneInfo(settings.FIRM_TIME_ZONE)).date()


def _check_terms(
    *,
    row: int,
    errors: _RowErrors,
    instrument: Instrument,
    side: str,
    quantity: Decimal | None,
    order_type: str,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
) -> None:
    """Quantity and price rules shared by entry and amend."""
    if quantity is not None:
        if quantity <= 0:
            errors.add(row, "quantity", "must be greater than zero")
        elif not _is_multiple(quantity, instrument.lot_size):
            errors.add(
                row,
                "quantity",
                f"must be a multiple of the lot size {instrument.lot_size.normalize():f}",
            )
    tick = instrument.tick_size.normalize()
    for field, price in (("limit_price", limit_price), ("stop_price", stop_price)):
        if price is None:
            continue
        if price <= 0:
            errors.add(row, field, "must be greater than zero")
        elif not _is_multiple(price, instrument.tick_size):
            errors.add(row, field, f"must be a multiple of the tick size {tick:f}")
    if order_type in LIMIT_TYPES and limit_price is None:
        errors.add(row, "limit_price", f"is required for a {order_type} order")
    if order_type not in LIMIT_TYPES and limit_price is not None:
        errors.add(row, "limit_price", f"must not be set for a {order_type} order")
    if order_type in STOP_TYPES and stop_price is None:
        errors.add(row, "stop_price", f"is required for a {order_type} order")
    if order_type not in STOP_TYPES and stop_price is not None:
        errors.add(row, "stop_price", f"must not be set for a {order_type} order")
    if order_type in STOP_TYPES and stop_price is not None and stop_price > 0:
        price = getattr(instrument, "price", None)
        if price is None:
            errors.add(
                row, "stop_price", "cannot be checked: the instrument has no reference price"
            )
        elif side in BUY_SIDES:
            market = max(price.ask, price.last)
            if stop_price <= market:
                errors.add(
                    row,
                    "stop_price",
                    f"a buy stop must be above the market ({market.normalize():f})",
                )
        else:
            market = min(price.bid, price.last)
            if stop_price >= market:
                errors.add(
                    row,
                    "stop_price",
                    f"a sell stop must be below the market ({market.normalize():f})",
                )
    if (
        order_type == OrderType.STOP_LIMIT
        and limit_price is not None
        and stop_price is not None
        and limit_price > 0
        and stop_price > 0
    ):
        # A stop-limit whose limit is on the wrong side of its own stop can never fill.
        if side in BUY_SIDES and limit_price < stop_price:
            errors.add(row, "limit_price", "a buy stop-limit needs a limit at or above its stop")
        if side not in BUY_SIDES and limit_price > stop_price:
            errors.add(row, "limit_price", "a sell stop-limit needs a limit at or below its stop")


@dataclass(slots=True)
class _Reference:
    """Reference data loaded once per call, with a constant number of queries."""

    instruments: Mapping[str, Instrument]
    accounts: Mapping[str, Account]
    managed_ids: set[int]
    kill_switches: Sequence[tuple[str, str]]


@functools.cache
def _instruments_sql() -> tuple[str, list[Any]]:
    """Instruments by symbol with their price and issuer, as select_related("price", "issuer")
    reads them, in plain SQL built once: (sql, [(model, attnames) for each of the three])."""
    parts = [(Instrument, "i"), (ReferencePrice, "p"), (Issuer, "s")]
    columns = [
        f'{alias}."{f.column}"' for model, alias in parts for f in model._meta.concrete_fields
    ]
    sql = (
        f"SELECT {', '.join(columns)} FROM {Instrument._meta.db_table} i"
        f" JOIN {Issuer._meta.db_table} s ON s.id = i.issuer_id"
        f" LEFT JOIN {ReferencePrice._meta.db_table} p ON p.instrument_id = i.id"
        " WHERE i.symbol = ANY(%s::text[])"
    )
    return sql, [(model, [f.attname for f in model._meta.concrete_fields]) for model, _ in parts]


def _instruments_by_symbol(symbols: list[str]) -> dict[str, Instrument]:
    """Instruments with their price (None when it has none) and issuer cached on them, equal
    to Instrument.objects.filter(symbol__in=symbols).select_related("price", "issuer").

    Why not the ORM: each symbol the process has not cached yet (every instrument once per
    refdata version) cost about 1.5 ms of Python, mostly compiling that query.
    """
    sql, models = _instruments_sql()
    (inst_model, inst_names), (price_model, price_names), (issuer_model, issuer_names) = models
    ni, np_ = len(inst_names), len(price_names)
    # The caches select_related fills: instrument.price (None without a row), price.instrument
    # and instrument.issuer.
    price_rel: Any = Instrument._meta.get_field("price")
    price_instrument: Any = ReferencePrice._meta.get_field("instrument")
    issuer_field: Any = Instrument._meta.get_field("issuer")
    with connection.cursor() as cursor:
        cursor.execute(sql, [array_literal(symbols)])
        rows = cursor.fetchall()
    price_pk = ni + price_names.index(price_model._meta.pk.attname)
    out: dict[str, Instrument] = {}
    alias = connection.alias
    for row in rows:
        inst = inst_model.from_db(alias, inst_names, row[:ni])
        price_row = row[ni : ni + np_]
        price = None
        if row[price_pk] is not None:
            price = price_model.from_db(alias, price_names, price_row)
            price_instrument.set_cached_value(price, inst)
        price_rel.set_cached_value(inst, price)
        issuer_field.set_cached_value(
            inst, issuer_model.from_db(alias, issuer_names, row[ni + np_ :])
        )
        out[inst.symbol] = inst
    return out


def _accounts_by_code(user: Any) -> Callable[[list[str]], dict[str, tuple[Account, bool]]]:
    def load(codes: list[str]) -> dict[str, tuple[Account, bool]]:
        managed = Account.managers.through.objects.filter(
            account_id=OuterRef("pk"), user_id=user.pk
        )
        return {
            a.code: (a, bool(a.managed))  # type: ignore[attr-defined]
            for a in accounts_visible_to(user=user)
            .filter(code__in=codes)
            .annotate(managed=Exists(managed))
            .select_related("desk")
        }

    return load


def _load_reference(*, user: Any, rows: Sequence[_Clean], version: int | None = None) -> _Reference:
    """Instruments and the user's accounts from the refdata cache (one query when current).

    `version`: the refdata version to read them under (the current one, read now, if None).
    The cached model instances are shared by every request of the process: read them, never
    change them.
    """
    values = refcache.generation(version)
    instruments = refcache.cached_many(
        values,
        "orders.instrument_by_symbol",
        {r.instrument for r in rows},
        _instruments_by_symbol,
    )
    # What a user may see depends on their roles (not part of the refdata version) and on
    # account managers and desk traders (part of it).
    accounts = refcache.cached_many(
        values,
        ("orders.account_by_code", user.pk, frozenset(role_keys(user))),
        {r.account for r in rows},
        _accounts_by_code(user),
    )
    found = {code: hit[0] for code, hit in accounts.items() if hit is not None}
    return _Reference(
        instruments={s: i for s, i in instruments.items() if i is not None},
        accounts=found,
        managed_ids={hit[0].pk for hit in accounts.values() if hit is not None and hit[1]},
        kill_switches=refcache.cached(values, "orders.kill_switches", active_kill_switches),
    )


def _validate_rows(
    *,
    user: Any,
    rows: Sequence[_Clean],
    row_numbers: Sequence[int],
    errors: _RowErrors,
    version: int | None = None,
) -> _Reference:
    ref = _load_reference(user=user, rows=rows, version=version)
    today = firm_today()
    for row, r in zip(row_numbers, rows, strict=True):
        account = ref.accounts.get(r.account)
        if account is None:
            errors.add(row, "account", f"unknown account {r.account}")
        elif account.pk not in ref.managed_ids:
            errors.add(row, "account", f"you do not manage account {r.account}")
        elif not account.active:
            errors.add(row, "account", f"account {r.account} is not active")
        instrument = ref.instruments.get(r.instrument)
        if instrument is None:
            errors.add(row, "instrument", f"unknown instrument {r.instrument}")
        elif not instrument.tradable:
            errors.add(row, "instrument", f"{r.instrument} is not tradable")
        else:
            _check_terms(
                row=row,
                errors=errors,
                instrument=instrument,
                side=r.side,
                quantity=r.quantity,
                order_type=r.order_type,
                limit_price=r.limit_price,
                stop_price=r.stop_price,
            )
        if r.time_in_force == TimeInForce.GTD:
            if r.expire_date is None:
                errors.add(row, "expire_date", "is required for a gtd order")
            elif r.expire_date <= today:
                errors.add(row, "expire_date", f"must be after today ({today.isoformat()})")
        elif r.expire_date is not None:
            errors.add(row, "expire_date", "may only be set when time_in_force is gtd")
    return ref


def _ensure_no_kill_switch(
    accounts: Iterable[Account], switches: Sequence[tuple[str, str]]
) -> None:
    hit = kill_switch_covering(accounts, switches)
    if hit is not None:
        raise kill_switch_conflict(hit, "no new orders")


def kill_switch_conflict(hit: tuple[str, str], consequence: str) -> ConflictError:
    """The 409 for a request refused by the engaged kill switch `hit` (scope, target)."""
    scope, target = hit
    where = "the firm" if scope == KillScope.FIRM else f"{scope} {target}"
    return ConflictError(
        f"A kill switch is active for {where}: {consequence}.",
        code="kill_switch_active",
        errors={"kill_switch": [f"{scope}:{target}".rstrip(":")]},
    )


# --------------------------------------------------------------------------------------------
# Hooks into services other helpers write
# --------------------------------------------------------------------------------------------


def _optional_function(module: str, name: str) -> Callable[..., Any] | None:
    """A function from a module that may not exist yet; real import errors still propagate."""
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), name, None)


class _StaleReference(Exception):
    """The order's transaction read another refdata version than it was validated under."""


def _check_and_insert(
    orders: Sequence[Order],
    *,
    attach_results: bool,
    version: int | None = None,
    audit: Callable[[Sequence[ComplianceOutcome]], Sequence[AuditEntry]] | None = None,
) -> tuple[dict[int, str], bool]:
    """Check new orders, insert them with their outcome, store the results; ({pk: outcome},
    whether the orders' first audit events were written too).

    Compliance runs before the insert (it locks the accounts' cash first, as before), so each
    row is written once, already moved by its outcome (version 2), instead of inserted pending
    and updated right after: one statement and 500 row versions less for a basket.

    `version`: the refdata version the orders were validated under, when it was not read for
    them but guessed (the one this process saw last); raises _StaleReference, before writing
    anything, unless the check read that same version in this transaction.

    `audit`: for a single order, its first audit events given its outcome (their object id is
    not used); written by the order's own insert when its results are (one statement less),
    else left to the caller.
    """
    from compliance.services import (
        compliance_check_new,
        compliance_results_one,
        compliance_results_store,
        compliance_results_stored,
    )

    if not _insert_orders_supported():
        # The model has changed: the ORM inserts pending orders, checked and updated after.
        _insert_orders(orders)
        outcomes = _run_compliance(orders, attach_results=attach_results)
        _set_outcomes(orders, outcomes)
        return outcomes, False
    check = compliance_check_new(orders=orders)
    if version is not None and check.version != version:
        raise _StaleReference
    final = [
        ComplianceOutcome(check.outcomes.get(n, ComplianceOutcome.BLOCK))
        for n in range(len(orders))
    ]
    statuses = [OUTCOME_STATUS[outcome].value for outcome in final]
    values = [outcome.value for outcome in final]
    one = compliance_results_one(check) if len(orders) == 1 else None
    audited = False
    if one is not None:
        # The order and its result set in one statement (the set takes the order's id), and
        # its first audit events with them when the caller gives them.
        checked_at, result_params = one
        params = [*_insert_one_params(orders[0], statuses, values), *result_params]
        entries = audit(final) if audit is not None else ()
        if entries:
            sql = _insert_one_with_results_sql(events=len(entries))
            params += new_object_events_params(entries, timezone.now())
            audited = True
        else:
            sql = _insert_one_with_results_sql()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            ids = cursor.fetchall()
        _saved(orders, ids)
        stored = compliance_results_stored(
            check=check, order_ids=[orders[0].pk], checked_at=checked_at
        )
    else:
        _insert_orders(orders, statuses=statuses, outcomes=values)
        stored = compliance_results_store(check=check, order_ids=[o.pk for o in orders])
    if attach_results:
        rows = stored.result_rows()
        for order in orders:
            set_prefetched(order, "compliance_results", rows.get(order.pk, []))
    return {o.pk: outcome.value for o, outcome in zip(orders, final, strict=True)}, audited


def _set_outcomes(orders: Sequence[Order], outcomes: Mapping[int, str]) -> None:
    """Move inserted pending orders by their outcomes: one UPDATE per outcome (at most three)."""
    # bulk_update's CASE per row cost ~8 ms/order.
    by_outcome: dict[str, list[int]] = {}
    for o in orders:
        outcome = ComplianceOutcome(outcomes.get(o.pk, ComplianceOutcome.BLOCK))
        by_outcome.setdefault(outcome.value, []).append(o.pk)
    now = orders[0].updated_at
    with connection.cursor() as cursor:
        for value, pks in sorted(by_outcome.items()):
            cursor.execute(
                _SET_OUTCOME_SQL,
                [OUTCOME_STATUS[ComplianceOutcome(value)].value, value, now, pks],
            )


def _run_compliance(orders: Sequence[Order], *, attach_results: bool = False) -> dict[int, str]:
    check = _optional_function("compliance.services", "compliance_check_detailed")
    if check is None:
        # Only until compliance.services.compliance_check lands; the coordinator checks wiring.
        return {o.pk: ComplianceOutcome.PASS for o in orders}
    checked = check(orders=orders)
    if attach_results:
        # The rows just stored, handed over as if prefetched: the API answers a new single
        # order with its results without reading them back (baskets answer without them).
        rows = checked.result_rows()
        for order in orders:
            set_prefetched(order, "compliance_results", rows.get(order.pk, []))
    return dict(checked.outcomes)


# --------------------------------------------------------------------------------------------
# Transitions
# --------------------------------------------------------------------------------------------


def _transition(
    order: Order,
    target: str,
    *,
    action: str,
    entries: list[AuditEntry],
    actor: Any,
    meta: dict[str, Any] | None = None,
    extra_before: dict[str, Any] | None = None,
    extra_after: dict[str, Any] | None = None,
) -> None:
    ensure_transition(order.status, target)
    entries.append(
        _transition_entry(
            order,
            target,
            action=action,
            actor=actor,
            object_id=str(order.pk),
            meta=meta,
            extra_before=extra_before,
            extra_after=extra_after,
        )
    )
    order.status = target
    order.version += 1
    order.updated_at = timezone.now()


def _transition_entry(
    order: Order,
    target: str,
    *,
    action: str,
    actor: Any,
    object_id: str,
    meta: dict[str, Any] | None = None,
    extra_before: dict[str, Any] | None = None,
    extra_after: dict[str, Any] | None = None,
) -> AuditEntry:
    """The audit event of moving `order` (as it stands) to `target`, one version on."""
    return AuditEntry(
        action=action,
        object_type=ORDER_TYPE,
        object_id=object_id,
        before={"status": order.status, "version": order.version, **(extra_before or {})},
        after={"status": target, "version": order.version + 1, **(extra_after or {})},
        meta=meta or {},
        actor=actor,
    )


def _created_entry(
    object_id: str, snapshot: dict[str, Any], *, basket: Basket | None, actor: Any
) -> AuditEntry:
    """The audit event of a new order, from its snapshot as created."""
    return AuditEntry(
        action="order.created",
        object_type=ORDER_TYPE,
        object_id=object_id,
        before={"status": OrderStatus.NEW.value},
        after=snapshot,
        meta={"basket": basket.pk} if basket is not None else {},
        actor=actor,
    )


def _apply_outcomes(
    orders: Sequence[Order], outcomes: Mapping[int, str], *, entries: list[AuditEntry], actor: Any
) -> None:
    for order in orders:
        outcome = ComplianceOutcome(outcomes.get(order.pk, ComplianceOutcome.BLOCK))
        order.compliance_outcome = outcome
        _transition(
            order,
            OUTCOME_STATUS[outcome],
            action="order.compliance_checked",
            entries=entries,
            actor=actor,
            extra_after={"compliance_outcome": outcome.value},
        )


def _plain(value: Decimal | None) -> str | None:
    """A decimal as its shortest exact string, so audit records read "100", not "100.00000000"."""
    return None if value is None else format(value.normalize(), "f")


def _order_snapshot(order: Order) -> dict[str, Any]:
    return {
        "account": order.account.code,
        "instrument": order.instrument.symbol,
        "side": order.side,
        "quantity": _plain(order.quantity),
        "order_type": order.order_type,
        "limit_price": _plain(order.limit_price),
        "stop_price": _plain(order.stop_price),
        "time_in_force": order.time_in_force,
        "expire_date": order.expire_date,
        "client_order_id": order.client_order_id,
        "basket": order.basket_id,
        "status": order.status,
        "version": order.version,
    }


def _lock_order(order_id: int) -> Order:
    return (
        Order.objects.select_for_update(of=("self",))
        .select_related("account__desk", "instrument__price", "created_by", "block")
        .get(pk=order_id)
    )


def _visible_order(*, user: Any, order_id: Any) -> Order:
    try:
        pk = int(order_id)
    except (TypeError, ValueError):
        raise NotFound("No such order.") from None
    order = (
        orders_visible_to(user=user)
        .select_related("account__desk", "instrument__price", "block")
        .filter(pk=pk)
        .first()
    )
    if order is None:
        raise NotFound("No such order.")
    return order


def _require_role(user: Any, *roles: str, what: str) -> None:
    if not has_role(user, *roles):
        raise NotPermitted(f"Only {' or '.join(roles)} users may {what}.")


# --------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------


def order_create(*, user: Any, data: Mapping[str, Any]) -> Order:
    """Validate and enter one order, run pre-trade compliance and release it (or hold it)."""
    _require_role(user, "pm", what="enter orders")
    errors = _RowErrors()
    clean = _coerce_row(data, 1, errors)
    if errors:
        raise errors.for_single()
    assert clean is not None
    if clean.client_order_id:
        existing = _existing_by_client_id(user=user, client_ids=[clean.client_order_id])
        if existing:
            return _replayed(existing[clean.client_order_id])
    try:
        orders = _create_single(user=user, clean=clean)
    except IntegrityError:
        # A concurrent retry with the same client_order_id won the unique constraint.
        if clean.client_order_id:
            existing = _existing_by_client_id(user=user, client_ids=[clean.client_order_id])
            if existing:
                return _replayed(existing[clean.client_order_id])
        raise
    return orders[0]


def _create_single(*, user: Any, clean: _Clean) -> list[Order]:
    """Enter one order, validated under the refdata version this process saw last.

    Why: reading the version first cost a round trip and a transaction of its own per order.
    The check reads the version anyway, in the order's transaction after the account's lock:
    the order is written only if that is the version it was validated under (then the cached
    reference data it was validated with is exactly the data as of that statement). Otherwise,
    and for any refusal (a refusal must never rest on a guess), it is decided again under the
    version read now, as a basket is: the first attempt has then written nothing (the check
    comes before the writes) and its transaction is rolled back. A ComplianceDataError is such
    a refusal too: an account or instrument cached under the guess may be gone since.
    """
    from compliance.engine import ComplianceDataError

    version = refcache.last_version()
    if version >= 0 and _insert_orders_supported():
        with contextlib.suppress(
            ValidationError, ConflictError, ComplianceDataError, _StaleReference
        ):
            return _create_many(user=user, rows=[clean], basket=None, single=True, version=version)
    return _create_many(user=user, rows=[clean], basket=None, single=True)


def _replayed(order: Order) -> Order:
    # Lets the API answer 200 (not 201) to a retry that created nothing.
    order.replayed = True  # type: ignore[attr-defined]
    return order


@collection_paused()
def orders_create_bulk(
    *,
    user: Any,
    rows: Sequence[Mapping[str, Any]],
    source: str = "json",
    _retried: bool = False,
) -> tuple[list[Order], BasketSummary]:
    """Enter a basket all-or-nothing, with a constant number of queries whatever its size."""
    _require_role(user, "pm", what="upload baskets")
    errors = _RowErrors()
    if not rows:
        raise ValidationError(
            "orders: a basket needs at least one order",
            code="invalid",
            errors=[{"row": 0, "field": "orders", "detail": "a basket needs at least one order"}],  # type: ignore[arg-type]
        )
    cleaned: list[_Clean] = []
    for i, raw in enumerate(rows, start=1):
        c = _coerce_row(raw, i, errors)
        if c is not None:
            cleaned.append(c)
    if errors:
        raise errors.for_basket()
    seen: dict[str, int] = {}
    for i, c in enumerate(cleaned, start=1):
        if c.client_order_id:
            if c.client_order_id in seen:
                errors.add(i, "client_order_id", f"duplicates row {seen[c.client_order_id]}")
            seen.setdefault(c.client_order_id, i)
    if errors:
        raise errors.for_basket()
    existing = _existing_by_client_id(user=user, client_ids=list(seen))
    todo = [(i, c) for i, c in enumerate(cleaned, start=1) if c.client_order_id not in existing]
    if not todo:
        # A retried basket: every row exists already; return them and create nothing.
        previous = [existing[c.client_order_id] for c in cleaned if c.client_order_id]
        basket_ids = {o.basket_id for o in previous}
        return previous, _summary(
            basket_ids.pop() if len(basket_ids) == 1 else None, previous, created=0
        )
    basket = Basket(created_by=user, source=source[:16], order_count=len(todo))
    try:
        created = _create_many(
            user=user,
            rows=[c for _, c in todo],
            basket=basket,
            single=False,
            row_numbers=[i for i, _ in todo],
        )
    except IntegrityError:
        # A concurrent retry of the same basket inserted some client_order_ids first: answer
        # from what now exists (one retry only, so another integrity problem still surfaces).
        if not seen or _retried:
            raise
        return orders_create_bulk(user=user, rows=rows, source=source, _retried=True)
    by_client = {o.client_order_id: o for o in created if o.client_order_id}
    result: list[Order] = []
    it = iter(created)
    for c in cleaned:
        if c.client_order_id and c.client_order_id in existing:
            result.append(existing[c.client_order_id])
        elif c.client_order_id:
            result.append(by_client[c.client_order_id])
            next(it)
        else:
            result.append(next(it))
    return result, _summary(basket.pk, created, created=len(created))


def _summary(basket_id: int | None, orders: Sequence[Order], *, created: int) -> BasketSummary:
    outcomes = [o.compliance_outcome for o in orders]
    return BasketSummary(
        basket_id=basket_id,
        created=created,
        passed=outcomes.count(ComplianceOutcome.PASS),
        warned=outcomes.count(ComplianceOutcome.WARN),
        blocked=outcomes.count(ComplianceOutcome.BLOCK),
    )


def _existing_by_client_id(*, user: Any, client_ids: Sequence[str]) -> dict[str, Order]:
    if not client_ids:
        return {}
    return {
        o.client_order_id: o
        for o in Order.objects.filter(
            created_by_id=user.pk, client_order_id__in=client_ids
        ).select_related("account__desk", "instrument", "created_by")
        if o.client_order_id
    }


# The columns of a new order, as Django's bulk_create would write them; one statement with
# array parameters (binary format: no per-element quoting) costs a fraction of the ORM's
# per-field preparation. A column whose database default is its value for a new order
# (filled_notional: 0) is left to that default.
_INSERT_COLUMNS = (
    "account_id",
    "instrument_id",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "expire_date",
    "status",
    "cum_qty",
    "leaves_qty",
    "avg_px",
    "compliance_outcome",
    "created_by_id",
    "client_order_id",
    "basket_id",
    "block_id",
    "version",
    "created_at",
    "updated_at",
)
_INSERT_ORDERS_SQL = (
    f"INSERT INTO {Order._meta.db_table} ({', '.join(_INSERT_COLUMNS)})"
    " SELECT v.a, v.i, v.s, v.q, v.t, v.lp, v.sp, v.tif, v.ed, v.st, 0, v.q, 0, v.co, %s, v.c,"
    " %s, NULL, %s, %s, %s FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::numeric[],"
    " %b::text[], %b::numeric[], %b::numeric[], %b::text[], %b::date[], %b::text[], %b::text[],"
    " %b::text[]) AS v(a, i, s, q, t, lp, sp, tif, ed, c, st, co) RETURNING id"
)
# One order (the API's single entry): plain values, not one-element arrays, whose element
# types psycopg would have to inspect on every call.
_INSERT_ONE_SQL = (
    f"INSERT INTO {Order._meta.db_table} ({', '.join(_INSERT_COLUMNS)}) VALUES"
    f" ({', '.join(['%s'] * len(_INSERT_COLUMNS))}) RETURNING id"
)

_insert_one_with_results: dict[int, str] = {}


def _insert_one_with_results_sql(*, events: int = 0) -> str:
    """The order's insert (_INSERT_ONE_SQL) and its compliance result set in one statement;
    with `events`, also the order's first that many audit events (new_object_events_sql)."""
    sql = _insert_one_with_results.get(events)
    if sql is None:
        from compliance.services import RESULT_SET_AFTER_ORDER_SQL

        audit = f", {new_object_events_sql('o', events)}" if events else ""
        sql = _insert_one_with_results[events] = (
            f"WITH o AS ({_INSERT_ONE_SQL}), r AS ({RESULT_SET_AFTER_ORDER_SQL}){audit}"
            " SELECT id FROM o"
        )
    return sql


_SET_OUTCOME_SQL = (
    f"UPDATE {Order._meta.db_table} SET status = %s, compliance_outcome = %s, version = 2,"
    " updated_at = %s WHERE id = ANY(%b::bigint[])"
)


# (the model's concrete fields, whether they match _INSERT_COLUMNS), for the fields last seen.
_columns_checked: tuple[Any, bool] | None = None


def _insert_orders_supported() -> bool:
    """Whether _INSERT_COLUMNS still lists the model's columns but those with a database
    default (else the ORM inserts).

    Compared again only when the model's field list is another object (Django builds a new
    one when its options' caches are expired): computed three times per order, the set
    comparison was about 1 % of an order's CPU.
    """
    global _columns_checked
    fields = Order._meta.concrete_fields
    checked = _columns_checked
    if checked is None or checked[0] is not fields:
        columns = {
            f.column for f in fields if not (f.primary_key or f.db_default is not NOT_PROVIDED)
        }
        checked = _columns_checked = (fields, columns == set(_INSERT_COLUMNS))
    return checked[1]


def _insert_orders(
    orders: Sequence[Order],
    *,
    statuses: Sequence[str] | None = None,
    outcomes: Sequence[str | None] | None = None,
) -> None:
    """Insert new orders of one creator, basket and time; set their pks.

    Without `statuses` they are written as they are (pending compliance, version 1); with them,
    each row is written with its status and compliance outcome at version 2, as the outcome's
    transition leaves it (the objects themselves are moved by that transition afterwards).
    """
    if not _insert_orders_supported():
        Order.objects.bulk_create(orders)
        return
    first = orders[0]
    n = len(orders)
    if n == 1:
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_ONE_SQL, _insert_one_params(first, statuses, outcomes))
            ids = cursor.fetchall()
        _saved(orders, ids)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_ORDERS_SQL,
            [
                first.created_by_id,
                first.basket_id,
                1 if statuses is None else 2,
                first.created_at,
                first.updated_at,
                [o.account_id for o in orders],
                [o.instrument_id for o in orders],
                [o.side for o in orders],
                [o.quantity for o in orders],
                [o.order_type for o in orders],
                [o.limit_price for o in orders],
                [o.stop_price for o in orders],
                [o.time_in_force for o in orders],
                [o.expire_date for o in orders],
                [o.client_order_id for o in orders],
                [OrderStatus.PENDING_COMPLIANCE.value] * n if statuses is None else list(statuses),
                [None] * n if outcomes is None else list(outcomes),
            ],
        )
        ids = cursor.fetchall()
    _saved(orders, ids)


def _insert_one_params(
    order: Order, statuses: Sequence[str] | None, outcomes: Sequence[str | None] | None
) -> list[Any]:
    """_INSERT_ONE_SQL's parameters for `order` (see _insert_orders)."""
    return [
        order.account_id,
        order.instrument_id,
        order.side,
        order.quantity,
        order.order_type,
        order.limit_price,
        order.stop_price,
        order.time_in_force,
        order.expire_date,
        OrderStatus.PENDING_COMPLIANCE.value if statuses is None else statuses[0],
        0,
        order.quantity,
        0,
        None if outcomes is None else outcomes[0],
        order.created_by_id,
        order.client_order_id,
        order.basket_id,
        None,
        1 if statuses is None else 2,
        order.created_at,
        order.updated_at,
    ]


def _saved(orders: Sequence[Order], ids: Sequence[tuple[int]]) -> None:
    """Give inserted orders their primary keys and mark them saved."""
    for order, (pk,) in zip(orders, ids, strict=True):
        order.pk = pk
        order._state.adding = False
        order._state.db = "default"


def _order_defaults(now: dt.datetime) -> dict[str, Any]:
    """Every column of a new pending-compliance order as Order(...) would set it."""
    values = {f.attname: f.get_default() for f in Order._meta.concrete_fields}
    values.update(status=OrderStatus.PENDING_COMPLIANCE, version=1, created_at=now, updated_at=now)
    return values


def _new_order(
    base: dict[str, Any],
    *,
    account: Account,
    instrument: Instrument,
    created_by: Any,
    basket: Basket | None,
    values: dict[str, Any],
) -> Order:
    """An unsaved Order equal to Order(**fields), without its __init__ (~35 us an order)."""
    order = model_from_row(
        Order,
        {
            **base,
            **values,
            "account_id": account.pk,
            "instrument_id": instrument.pk,
            "created_by_id": created_by.pk,
            "basket_id": basket.pk if basket is not None else None,
        },
    )
    order._state.adding = True
    order._state.db = None
    # The related objects, cached as Order(account=..., ...) caches them.
    cache = order._state.fields_cache
    cache["account"] = account
    cache["instrument"] = instrument
    cache["created_by"] = created_by
    if basket is not None:
        cache["basket"] = basket
    return order


def _first_events(
    order: Order, created: dict[str, Any], outcome: ComplianceOutcome, *, actor: Any
) -> list[AuditEntry]:
    """A new single order's first audit events, as _create_many writes them after the insert
    (order.created, then its compliance outcome's transition), for its insert to write them;
    the order is not moved (its object id is left blank: the statement puts its id in)."""
    target = OUTCOME_STATUS[outcome]
    ensure_transition(order.status, target)
    return [
        _created_entry("", created, basket=None, actor=actor),
        _transition_entry(
            order,
            target,
            action="order.compliance_checked",
            actor=actor,
            object_id="",
            extra_after={"compliance_outcome": outcome.value},
        ),
    ]


def _create_many(
    *,
    user: Any,
    rows: Sequence[_Clean],
    basket: Basket | None,
    single: bool,
    row_numbers: Sequence[int] | None = None,
    version: int | None = None,
) -> list[Order]:
    errors = _RowErrors()
    numbers = list(row_numbers or range(1, len(rows) + 1))
    ref = _validate_rows(user=user, rows=rows, row_numbers=numbers, errors=errors, version=version)
    if errors:
        raise errors.for_single() if single else errors.for_basket()
    _ensure_no_kill_switch(
        {ref.accounts[r.account].pk: ref.accounts[r.account] for r in rows}.values(),
        ref.kill_switches,
    )
    with transaction.atomic(durable=True):
        if basket is not None:
            basket.save()
        now = timezone.now()
        orders = [
            _new_order(
                base,
                account=ref.accounts[r.account],
                instrument=ref.instruments[r.instrument],
                created_by=user,
                basket=basket,
                values={
                    "side": r.side,
                    "quantity": r.quantity,
                    "order_type": r.order_type,
                    "limit_price": r.limit_price,
                    "stop_price": r.stop_price,
                    "time_in_force": r.time_in_force,
                    "expire_date": r.expire_date,
                    "leaves_qty": r.quantity,
                    "client_order_id": r.client_order_id,
                },
            )
            for base in [_order_defaults(now)]
            for r in rows
        ]
        # Snapshots as created (pending compliance, version 1), before the outcome moves them.
        created = [_order_snapshot(o) for o in orders]

        def first_events(final: Sequence[ComplianceOutcome]) -> list[AuditEntry]:
            return _first_events(orders[0], created[0], final[0], actor=user)

        outcomes, audited = _check_and_insert(
            orders,
            attach_results=single,
            version=version,
            audit=first_events if single and basket is None else None,
        )
        # Written by the single order's insert already when `audited` (the outcomes still
        # move the orders).
        entries = (
            []
            if audited
            else [
                _created_entry(str(o.pk), snapshot, basket=basket, actor=user)
                for o, snapshot in zip(orders, created, strict=True)
            ]
        )
        _apply_outcomes(orders, outcomes, entries=entries, actor=user)
        for o in orders:
            o.updated_at = now
        if basket is not None:
            entries.append(
                AuditEntry(
                    action="basket.created",
                    object_type="basket",
                    object_id=str(basket.pk),
                    after={"orders": [o.pk for o in orders], "source": basket.source},
                    actor=user,
                )
            )
        if not audited:
            # Every stream is a new order's (or the new basket's): heads come with the events.
            audit_record_many(entries=entries, new_streams=True)
        publish_orders_updated(orders, event_type="order.created")
    return orders


# --------------------------------------------------------------------------------------------
# Amend and cancel
# --------------------------------------------------------------------------------------------


def order_amend(
    *,
    user: Any,
    order_id: int,
    version: int,
    quantity: Any = None,
    limit_price: Any = None,
    stop_price: Any = None,
) -> Order:
    """Change quantity or prices: directly (and re-checked) before routing, by cancel/replace after."""
    _require_role(user, "pm", "trader", what="amend orders")
    errors = _RowErrors()
    raw = {"quantity": quantity, "limit_price": limit_price, "stop_price": stop_price}
    new_qty = _decimal_field(raw, "quantity", 1, errors)
    new_limit = _decimal_field(raw, "limit_price", 1, errors)
    new_stop = _decimal_field(raw, "stop_price", 1, errors)
    if version is None or version == "":
        errors.add(1, "version", "is required")
    if errors:
        raise errors.for_single()
    if new_qty is None and new_limit is None and new_stop is None:
        raise ValidationError(
            "non_field_errors: give at least one of quantity, limit_price, stop_price",
            errors={"non_field_errors": ["give at least one of quantity, limit_price, stop_price"]},
        )
    visible = _visible_order(user=user, order_id=order_id)
    _check_amend_terms(visible, new_qty, new_limit, new_stop)
    if visible.status in AT_BROKER or visible.status == OrderStatus.PENDING_NEW:
        return _delegate_replace(
            user=user,
            order=visible,
            version=version,
            quantity=new_qty,
            limit_price=new_limit,
            stop_price=new_stop,
        )
    with transaction.atomic(durable=True):
        order = _lock_order(visible.pk)
        _ensure_version(order, version)
        if order.status in AT_BROKER or order.status == OrderStatus.PENDING_NEW:
            raise ConflictError(
                "The order reached a broker meanwhile; retry the amend.", code="stale_version"
            )
        if order.status not in AMENDABLE_BEFORE_ROUTING:
            raise ConflictError(
                f"An order in status {order.status} cannot be amended.",
                code="invalid_transition",
                errors={"status": [f"cannot amend an order in status {order.status}"]},
            )
        if order.block is not None and order.block.status == BlockStatus.OPEN:
            raise ConflictError(
                f"The order is in block B{order.block_id}; dissolve the block first.",
                code="in_block",
                errors={"block": [f"order is in open block {order.block_id}"]},
            )
        before = {
            "quantity": _plain(order.quantity),
            "limit_price": _plain(order.limit_price),
            "stop_price": _plain(order.stop_price),
        }
        if new_qty is not None:
            order.quantity = new_qty
            order.leaves_qty = new_qty - order.cum_qty
        if new_limit is not None:
            order.limit_price = new_limit
        if new_stop is not None:
            order.stop_price = new_stop
        after = {
            "quantity": _plain(order.quantity),
            "limit_price": _plain(order.limit_price),
            "stop_price": _plain(order.stop_price),
        }
        entries: list[AuditEntry] = []
        _transition(
            order,
            OrderStatus.PENDING_COMPLIANCE,
            action="order.amended",
            entries=entries,
            actor=user,
            extra_before=before,
            extra_after=after,
        )
        # New terms are new risk: the amended order goes through pre-trade compliance again.
        outcomes = _run_compliance([order])
        _apply_outcomes([order], outcomes, entries=entries, actor=user)
        order.save(
            update_fields=[
                "quantity",
                "leaves_qty",
                "limit_price",
                "stop_price",
                "status",
                "compliance_outcome",
                "version",
                "updated_at",
            ]
        )
        audit_record_many(entries=entries)
        publish_orders_updated([order])
    return order


def _check_amend_terms(
    order: Order, qty: Decimal | None, limit: Decimal | None, stop: Decimal | None
) -> None:
    errors = _RowErrors()
    if limit is not None and order.order_type not in LIMIT_TYPES:
        errors.add(1, "limit_price", f"must not be set for a {order.order_type} order")
        limit = None
    if stop is not None and order.order_type not in STOP_TYPES:
        errors.add(1, "stop_price", f"must not be set for a {order.order_type} order")
        stop = None
    _check_terms(
        row=1,
        errors=errors,
        instrument=order.instrument,
        side=order.side,
        quantity=qty,
        order_type=order.order_type,
        limit_price=limit if limit is not None else order.limit_price,
        stop_price=stop if stop is not None else order.stop_price,
    )
    if qty is not None and qty > 0 and qty <= order.cum_qty:
        errors.add(
            1, "quantity", f"must be above the filled quantity {order.cum_qty.normalize():f}"
        )
    if errors:
        raise errors.for_single()


def _ensure_version(order: Order, version: Any) -> None:
    if version is None or version == "":
        raise ValidationError("version: is required", errors={"version": ["is required"]})
    try:
        expected = int(version)
    except (TypeError, ValueError):
        raise ValidationError(
            "version: must be an integer", errors={"version": ["must be an integer"]}
        ) from None
    if order.version != expected:
        raise ConflictError(
            f"The order changed meanwhile (version {order.version}, you sent {expected}).",
            code="stale_version",
            errors={"version": [f"current version is {order.version}"]},
        )


def _delegate_replace(
    *,
    user: Any,
    order: Order,
    version: int,
    quantity: Decimal | None,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
) -> Order:
    replace = _optional_function("orders.services.routing", "order_replace_request")
    if replace is None:
        raise ConflictError(
            "The order is at a broker and cancel/replace is not available.",
            code="replace_unavailable",
        )
    _ensure_version(order, version)
    return replace(
        user=user,
        order_id=order.pk,
        quantity=quantity,
        limit_price=limit_price,
        stop_price=stop_price,
        version=version,
    )


def order_cancel(*, user: Any, order_id: int, version: int | None = None) -> Order:
    """Cancel an order: directly before routing, as a FIX cancel request once at a broker."""
    _require_role(user, "pm", "trader", what="cancel orders")
    visible = _visible_order(user=user, order_id=order_id)
    if version is not None:
        _ensure_version(visible, version)
    if visible.status not in CANCELABLE_BEFORE_ROUTING:
        return _cancel_at_broker(user=user, order=visible, version=version)
    with transaction.atomic(durable=True):
        # Lock order: the block (parent) before the order (child), as everywhere else.
        block = None
        if visible.block_id is not None:
            block = Block.objects.select_for_update().filter(pk=visible.block_id).first()
        order = _lock_order(visible.pk)
        if order.block_id != (block.pk if block else None):
            raise ConflictError("The order changed meanwhile; retry.", code="stale_version")
        if version is not None:
            _ensure_version(order, version)
        if order.status not in CANCELABLE_BEFORE_ROUTING:
            _refuse_direct_cancel(order)
        entries: list[AuditEntry] = []
        if block is not None:
            if block.status != BlockStatus.OPEN:
                raise ConflictError(
                    f"The order's block B{block.pk} is at a broker; cancel the block.",
                    code="in_block",
                    errors={"block": [f"block {block.pk} is {block.status}"]},
                )
            _leave_blocks([order], {block.pk: block}, entries=entries, actor=user)
        _transition(
            order, OrderStatus.CANCELED, action="order.canceled", entries=entries, actor=user
        )
        order.leaves_qty = Decimal(0)
        order.save(update_fields=["status", "version", "leaves_qty", "block", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated([order])
    return order


def _refuse_direct_cancel(order: Order) -> None:
    """Raise the right 409 for an order that changed state before we locked it."""
    if order.status in AT_BROKER or order.status == OrderStatus.PENDING_NEW:
        raise ConflictError(
            "The order reached a broker meanwhile; retry the cancel.", code="stale_version"
        )
    if order.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
        raise ConflictError(
            f"A {order.status.replace('_', ' ')} request is already in flight.",
            code="request_pending",
            errors={"status": [f"order is {order.status}"]},
        )
    ensure_transition(order.status, OrderStatus.CANCELED)
    raise ConflictError(f"An order in status {order.status} cannot be canceled.")


def _cancel_at_broker(*, user: Any, order: Order, version: int | None) -> Order:
    if order.status in AT_BROKER or order.status == OrderStatus.PENDING_NEW:
        cancel = _optional_function("orders.services.routing", "order_cancel_request")
        if cancel is None:
            raise ConflictError(
                "The order is at a broker and cancel requests are not available.",
                code="cancel_unavailable",
            )
        return cancel(user=user, order_id=order.pk, version=version)
    # Pending requests and terminal states (a filled order cannot be canceled).
    _refuse_direct_cancel(order)
    raise AssertionError("unreachable")  # pragma: no cover


def _leave_blocks(
    orders: Sequence[Order],
    blocks: Mapping[int, Block],
    *,
    entries: list[AuditEntry],
    actor: Any,
) -> None:
    """Take orders out of their open blocks (locked by the caller); an emptied block dissolves."""
    leaving: dict[int, list[Order]] = {}
    for o in orders:
        if o.block_id is not None and o.block_id in blocks:
            leaving.setdefault(o.block_id, []).append(o)
    if not leaving:
        return
    counts: dict[int, int] = {}
    for block_id in (
        Order.objects.filter(block_id__in=list(leaving))
        .exclude(pk__in=[o.pk for o in orders])
        .values_list("block_id", flat=True)
    ):
        counts[block_id] = counts.get(block_id, 0) + 1
    changed: list[Block] = []
    now = timezone.now()
    for block_id, members in leaving.items():
        block = blocks[block_id]
        block.updated_at = now
        before = {
            "quantity": _plain(block.quantity),
            "status": block.status,
            "version": block.version,
        }
        if counts.get(block_id, 0) == 0:
            block.status = BlockStatus.DISSOLVED
        else:
            block.quantity -= sum((o.quantity for o in members), Decimal(0))
        block.version += 1
        changed.append(block)
        entries.append(
            AuditEntry(
                action="block.order_removed",
                object_type="block",
                object_id=str(block.pk),
                before=before,
                after={
                    "quantity": _plain(block.quantity),
                    "status": block.status,
                    "version": block.version,
                    "removed": [o.pk for o in members],
                },
                actor=actor,
            )
        )
        for o in members:
            o.block = None
    Block.objects.bulk_update(changed, ["quantity", "status", "version", "updated_at"])


# --------------------------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------------------------


def market_close_time() -> dt.time:
    """The firm's market close (settings.MARKET_CLOSE, "HH:MM" in FIRM_TIME_ZONE; 16:00)."""
    return dt.time.fromisoformat(getattr(settings, "MARKET_CLOSE", "16:00"))


def orders_expire(*, now: dt.datetime | None = None) -> int:
    """Expire DAY orders after the close of their trading day and GTD orders after their date."""
    now = now or timezone.now()
    tz = ZoneInfo(settings.FIRM_TIME_ZONE)
    local = now.astimezone(tz)
    today = local.date()
    after_close = local.time() >= market_close_time()
    # The last date whose orders are over: today once the close has passed, else yesterday.
    last_over = today if after_close else today - dt.timedelta(days=1)
    day_cutoff = dt.datetime.combine(last_over + dt.timedelta(days=1), dt.time(0), tz)
    due = Q(time_in_force=TimeInForce.DAY, created_at__lt=day_cutoff) | Q(
        time_in_force=TimeInForce.GTD, expire_date__lte=last_over
    )
    with transaction.atomic(durable=True):
        candidates = list(
            Order.objects.filter(due, status__in=EXPIRABLE_BY_FIRM).values_list("pk", "block_id")
        )
        if not candidates:
            return 0
        block_ids = sorted({b for _, b in candidates if b is not None})
        blocks = {
            b.pk: b
            for b in Block.objects.select_for_update()
            .filter(pk__in=block_ids, status=BlockStatus.OPEN)
            .order_by("pk")
        }
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .filter(due, status__in=EXPIRABLE_BY_FIRM, pk__in=[pk for pk, _ in candidates])
            .select_related("account__desk", "instrument", "created_by")
            .order_by("pk")
        )
        entries: list[AuditEntry] = []
        _leave_blocks(orders, blocks, entries=entries, actor=None)
        for o in orders:
            _transition(
                o,
                OrderStatus.EXPIRED,
                action="order.expired",
                entries=entries,
                actor=None,
                meta={"time_in_force": o.time_in_force, "as_of": json_safe(now)},
            )
            o.leaves_qty = Decimal(0)
        Order.objects.filter(pk__in=[o.pk for o in orders]).update(
            status=OrderStatus.EXPIRED,
            version=F("version") + 1,
            leaves_qty=0,
            block=None,
            updated_at=timezone.now(),
        )
        audit_record_many(entries=entries)
        publish_orders_updated(orders)
    return len(orders)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

BLOCK_SHARED_TERMS = (
    "instrument_id",
    "side",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "expire_date",
)


def blocks_visible_to(*, user: Any) -> Any:
    """Blocks the user may see: oversight all; traders their own and those of visible orders."""
    from oms_site.roles import sees_everything

    qs = Block.objects.all()
    if sees_everything(user):
        return qs
    if not has_role(user, "trader", "pm"):
        return qs.none()
    order_blocks = orders_visible_to(user=user).filter(block__isnull=False).values("block_id")
    return qs.filter(Q(created_by_id=user.pk) | Q(pk__in=order_blocks))


def block_create(*, user: Any, order_ids: Sequence[Any]) -> Block:
    """Aggregate approved orders of one instrument, side and terms into one block."""
    _require_role(user, "trader", what="create blocks")
    try:
        ids = sorted({int(i) for i in order_ids})
    except (TypeError, ValueError):
        raise ValidationError(
            "orders: must be a list of order ids",
            errors={"orders": ["must be a list of order ids"]},
        ) from None
    if len(ids) < 2:
        raise ValidationError(
            "orders: a block needs at least two orders",
            errors={"orders": ["a block needs at least two orders"]},
        )
    with transaction.atomic(durable=True):
        visible_ids = set(
            orders_visible_to(user=user).filter(pk__in=ids).values_list("pk", flat=True)
        )
        missing = [i for i in ids if i not in visible_ids]
        if missing:
            raise ValidationError(
                f"orders: unknown order(s) {', '.join(map(str, missing))}",
                errors={"orders": [f"unknown order(s) {', '.join(map(str, missing))}"]},
            )
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .filter(pk__in=ids)
            .select_related("account__desk", "instrument", "created_by", "block")
            .order_by("pk")
        )
        problems: list[str] = []
        for o in orders:
            if o.status != OrderStatus.APPROVED:
                problems.append(f"order {o.pk} is {o.status}, not approved")
            elif o.block is not None and o.block.status != BlockStatus.DISSOLVED:
                problems.append(f"order {o.pk} is already in block {o.block_id}")
        if problems:
            raise ConflictError(
                f"orders: {problems[0]}", code="invalid_transition", errors={"orders": problems}
            )
        first = orders[0]
        for term in BLOCK_SHARED_TERMS:
            values = {getattr(o, term) for o in orders}
            if len(values) > 1:
                name = term.removesuffix("_id")
                raise ValidationError(
                    f"orders: the orders differ in {name}",
                    errors={"orders": [f"the orders differ in {name}"]},
                )
        block = Block.objects.create(
            instrument=first.instrument,
            side=first.side,
            order_type=first.order_type,
            limit_price=first.limit_price,
            stop_price=first.stop_price,
            time_in_force=first.time_in_force,
            quantity=sum((o.quantity for o in orders), Decimal(0)),
            created_by=user,
        )
        now = timezone.now()
        entries = [
            AuditEntry(
                action="block.created",
                object_type="block",
                object_id=str(block.pk),
                after={
                    "instrument": first.instrument.symbol,
                    "side": block.side,
                    "quantity": _plain(block.quantity),
                    "orders": [o.pk for o in orders],
                    "status": block.status,
                },
                actor=user,
            )
        ]
        for o in orders:
            entries.append(
                AuditEntry(
                    action="order.block_joined",
                    object_type=ORDER_TYPE,
                    object_id=str(o.pk),
                    before={"block": o.block_id, "version": o.version},
                    after={"block": block.pk, "version": o.version + 1},
                    actor=user,
                )
            )
            o.block = block
            o.version += 1
            o.updated_at = now
        Order.objects.bulk_update(orders, ["block", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated(orders)
    return block


def block_dissolve(*, user: Any, block_id: Any) -> Block:
    """Return an open block's orders to the desk, one by one."""
    _require_role(user, "trader", what="dissolve blocks")
    try:
        pk = int(block_id)
    except (TypeError, ValueError):
        raise NotFound("No such block.") from None
    if not blocks_visible_to(user=user).filter(pk=pk).exists():
        raise NotFound("No such block.")
    with transaction.atomic(durable=True):
        block = Block.objects.select_for_update().get(pk=pk)
        if block.status != BlockStatus.OPEN:
            raise ConflictError(
                f"Block B{block.pk} is {block.status}; only an open block can be dissolved.",
                code="invalid_transition",
                errors={"status": [f"block is {block.status}"]},
            )
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .filter(block_id=block.pk)
            .select_related("account__desk", "instrument", "created_by")
            .order_by("pk")
        )
        now = timezone.now()
        entries = [
            AuditEntry(
                action="block.dissolved",
                object_type="block",
                object_id=str(block.pk),
                before={"status": block.status, "version": block.version},
                after={
                    "status": BlockStatus.DISSOLVED.value,
                    "version": block.version + 1,
                    "orders": [o.pk for o in orders],
                },
                actor=user,
            )
        ]
        block.status = BlockStatus.DISSOLVED
        block.version += 1
        block.save(update_fields=["status", "version", "updated_at"])
        for o in orders:
            entries.append(
                AuditEntry(
                    action="order.block_left",
                    object_type=ORDER_TYPE,
                    object_id=str(o.pk),
                    before={"block": block.pk, "version": o.version},
                    after={"block": None, "version": o.version + 1},
                    actor=user,
                )
            )
            o.block = None
            o.version += 1
            o.updated_at = now
        Order.objects.bulk_update(orders, ["block", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated(orders)
    return block
