"""Write services of compliance: pre-trade checks, rule and restricted-list changes, overrides,
post-trade sweeps. Every change is audited in its own transaction; versions bump on every edit.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from allocations.models import Account
from compliance import engine
from compliance.context import (
    build_pretrade,
    build_pretrade_one,
    firm_now,
    fx_pairs,
    load_accounts,
    load_instruments,
    load_rules,
    read_cash,
    read_other_cash,
    rule_spec,
)
from compliance.models import (
    SET_COLUMNS,
    BreachReport,
    ComplianceResult,
    ComplianceResultSet,
    Override,
    RestrictedEntry,
    Rule,
    RuleType,
    Scope,
    Severity,
)
from compliance.posttrade import POST_TRADE_RULE_TYPES, Breach, find_breaches
from oms_site import refcache
from oms_site.audit import AuditEntry, audit_record, audit_record_many, model_snapshot
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError, field_error
from oms_site.roles import has_role
from oms_site.rows import array_literal, model_from_row
from orders import fx
from orders.enums import OrderStatus
from orders.models import Instrument, Issuer, Order
from orders.state import ensure_transition

# --- pre-trade -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The verdict of a pre-trade check: outcome per order pk, and each order's result rows."""

    outcomes: dict[int, str]
    results: dict[int, list[engine.RuleResult]]
    checked_at: datetime | None = None
    # The refdata version read inside the caller's transaction, where the check read it.
    version: int | None = None

    def result_rows(self) -> dict[int, list[ComplianceResult]]:
        """The stored result rows per order, built in memory (equal to a read-back, minus ids)."""
        at = self.checked_at
        if at is None:
            return {}
        rows: dict[int, list[ComplianceResult]] = {}
        # model_from_row, not ComplianceResult(...): the model's __init__ cost about 29 us a
        # row, more than half a millisecond of every single order's 20 results.
        for key, per_order in self.results.items():
            rows[key] = [
                model_from_row(
                    ComplianceResult,
                    {
                        "id": None,
                        "order_id": key,
                        "rule_id": r.rule_id,
                        "rule_name": r.rule_name,
                        "rule_type": r.rule_type,
                        "rule_version": r.rule_version,
                        "outcome": r.outcome,
                        "message": r.message,
                        "measured": _as_stored(r.measured),
                        "limit": _as_stored(r.limit),
                        "checked_at": at,
                    },
                )
                for r in per_order
            ]
        return rows


_STORED_PLACES = Decimal(1).scaleb(-ComplianceResult._meta.get_field("measured").decimal_places)
_WIDE = Context(prec=80)


def _as_stored(value: Decimal | None) -> Decimal | None:
    """A number as its numeric(30, 8) column gives it back (PostgreSQL rounds half away from 0)."""
    if value is None:
        return None
    return value.quantize(_STORED_PLACES, rounding=ROUND_HALF_UP, context=_WIDE)


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (most values need nothing, so test first)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def _array_text(value: str) -> str:
    """A string as a quoted element of an array literal (before COPY's own escaping)."""
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


_SETS_TABLE = ComplianceResultSet._meta.db_table
_QUOTED_COLUMNS = ", ".join('"' + c + '"' for c in SET_COLUMNS)

# A few orders' results go in one INSERT: a COPY costs a second round trip (the server's
# go-ahead before the data) and more client work, which only pays off in bulk.
_INSERT_AT_MOST = 64
# The arrays go as text literals (oms_site.rows.array_literal): psycopg's binary list dumper
# cost ~15 us per array, 120 us of the 8 arrays of one order.
_SET_VALUES = (
    "(%s, %s, %s::bigint[], %s::text[], %s::text[], %s::integer[], %s::text[], %s::text[],"
    " %s::numeric[], %s::numeric[])"
)


def _insert_results(
    results: dict[Any, list[engine.RuleResult]],
    checked_at: datetime,
    order_ids: Mapping[Any, int] | None,
) -> None:
    """Few results: one INSERT, a row of arrays per order (as array literals)."""
    rows = []
    for key, per_order in results.items():
        if not per_order:
            continue
        rows.append(
            [
                key if order_ids is None else order_ids[key],
                checked_at,
                *_result_arrays(per_order),
            ]
        )
    if not rows:
        return
    # Django's cursor wrapper would only add its bookkeeping: like the COPY, a plain statement.
    with connection.cursor() as cursor:
        cursor.cursor.execute(
            f"INSERT INTO {_SETS_TABLE} ({_QUOTED_COLUMNS}) VALUES "
            + ", ".join([_SET_VALUES] * len(rows)),
            [value for row in rows for value in row],
        )


def _copy_results(
    results: dict[Any, list[engine.RuleResult]],
    checked_at: datetime,
    order_ids: Mapping[Any, int] | None = None,
) -> None:
    """Store each order's results as one row of arrays; many go in one COPY (text format).

    Why: 500 orders x 20 rules is 10,000 results; as 10,000 rows their COPY, index entries
    and checks were most of a basket's PostgreSQL time, as 500 rows a fraction. The rule
    columns of a check mostly repeat from order to order, so their text is built once per
    distinct list of rules. `order_ids` maps the check's keys to the orders' primary keys when
    they differ.
    """
    if sum(len(rows) for rows in results.values()) <= _INSERT_AT_MOST:
        _insert_results(results, checked_at, order_ids)
        return
    at = checked_at.isoformat()
    heads: dict[tuple[tuple[int, int], ...], str] = {}
    lines: list[str] = []
    append = lines.append
    for key, per_order in results.items():
        if not per_order:
            continue
        order_id = key if order_ids is None else order_ids[key]
        rules = tuple([(r.rule_id, r.rule_version) for r in per_order])
        head = heads.get(rules)
        if head is None:
            head = heads[rules] = "\t".join(
                _copy_text("{" + ",".join(column) + "}")
                for column in (
                    ["NULL" if r.rule_id is None else str(r.rule_id) for r in per_order],
                    [_array_text(r.rule_name) for r in per_order],
                    [_array_text(r.rule_type) for r in per_order],
                    [str(r.rule_version) for r in per_order],
                )
            )
        outcomes = ",".join([r.outcome for r in per_order])
        texts = [r.message for r in per_order]
        messages = '","'.join(texts)
        if "\\" in messages or messages.count('"') != 2 * len(texts) - 2:
            messages = ",".join([_array_text(text) for text in texts])
        else:
            messages = '"' + messages + '"'
        messages = _copy_text(messages)
        measured = ",".join(["NULL" if r.measured is None else str(r.measured) for r in per_order])
        limits = ",".join(["NULL" if r.limit is None else str(r.limit) for r in per_order])
        append(
            f"{order_id}\t{at}\t{head}\t{{{outcomes}}}\t{{{messages}}}\t{{{measured}}}\t"
            f"{{{limits}}}\n"
        )
    if not lines:
        return
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {_SETS_TABLE} ({_QUOTED_COLUMNS}) FROM STDIN") as copy,
    ):
        copy.write("".join(lines))


def compliance_check_detailed(
    *, orders: Sequence[Order], as_of: datetime | None = None
) -> CheckOutcome:
    """Check inserted orders (one account lock, constant queries) and store their results.

    Must run inside the caller's transaction, after the orders are inserted; the accounts'
    cash rows stay locked until that transaction ends, which serialises concurrent checks of
    one account so buying power cannot be spent twice.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("compliance_check must run inside the transaction that wrote the orders")
    if not orders:
        return CheckOutcome(outcomes={}, results={})
    if any(o.pk is None for o in orders):
        raise ValueError("compliance_check needs saved orders")
    loaded = build_pretrade(orders=orders, as_of=as_of)
    results = engine.evaluate(loaded.intents, loaded.context, loaded.rules)
    checked_at = timezone.now()
    _copy_results(results, checked_at)
    outcomes = {int(key): engine.order_outcome(rows_) for key, rows_ in results.items()}
    return CheckOutcome(
        outcomes=outcomes,
        results={int(k): v for k, v in results.items()},
        checked_at=checked_at,
    )


def compliance_check_new(*, orders: Sequence[Order]) -> CheckOutcome:
    """Check orders before they are inserted (keys 0..n-1, in order); store nothing yet.

    Must run inside the transaction that then inserts the orders and calls
    `compliance_results_store`: the accounts' cash rows stay locked until it ends, as with
    `compliance_check_detailed`. Inserting the orders with their outcome spares updating every
    order row right after inserting it.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("compliance_check must run inside the transaction that writes orders")
    if not orders:
        return CheckOutcome(outcomes={}, results={})
    if len(orders) == 1:
        # One order reads a few sums of its account's book: PostgreSQL computes them instead
        # of handing over every open order of the account (the same results).
        loaded = build_pretrade_one(order=orders[0], key=0)
    else:
        loaded = build_pretrade(orders=orders, keys=range(len(orders)))
    results = engine.evaluate(loaded.intents, loaded.context, loaded.rules)
    return CheckOutcome(
        outcomes={int(key): engine.order_outcome(rows_) for key, rows_ in results.items()},
        results={int(k): v for k, v in results.items()},
        version=loaded.version,
    )


def compliance_results_store(*, check: CheckOutcome, order_ids: Sequence[int]) -> CheckOutcome:
    """Store the results of `compliance_check_new` for the orders it checked, now inserted
    (`order_ids` in the checked order); returns the check keyed by primary key."""
    if len(order_ids) != len(check.outcomes):
        raise ValueError("compliance_results_store needs one order id per checked order")
    checked_at = timezone.now()
    _copy_results(check.results, checked_at, order_ids=dict(enumerate(order_ids)))
    return compliance_results_stored(check=check, order_ids=order_ids, checked_at=checked_at)


# One order's result set, written by the statement that inserts the order (the API's single
# entry): an INSERT for a data-modifying CTE after the order's, whose id it takes from that
# CTE, named "o"; its parameters are `compliance_results_one`'s. One round trip and one
# statement less per order than storing them after the insert.
RESULT_SET_AFTER_ORDER_SQL = (
    f"INSERT INTO {_SETS_TABLE} ({_QUOTED_COLUMNS}) SELECT o.id, %s, %s::bigint[], %s::text[],"
    " %s::text[], %s::integer[], %s::text[], %s::text[], %s::numeric[], %s::numeric[] FROM o"
)


def _rule_arrays(per_order: Sequence[Any]) -> tuple[str, str, str, str]:
    return (
        array_literal([r.rule_id for r in per_order]),
        array_literal([r.rule_name for r in per_order]),
        array_literal([r.rule_type for r in per_order]),
        array_literal([r.rule_version for r in per_order]),
    )


def _result_arrays(per_order: Sequence[Any], version: int | None = None) -> list[str]:
    """One order's results as the array texts of a stored result set's columns, in order.

    The rule columns (id, name, type, version) are the same for every order the same rules
    apply to: with the refdata version the check read, they are cached in that version's
    generation (`oms_site.refcache`, where the check's rules were cached), keyed by the rule
    ids in order. Within one generation a rule id has one name, type and version: any change
    to a rule bumps the refdata version, which drops the generation.
    """
    if version is None:
        rule_columns = _rule_arrays(per_order)
    else:
        rule_columns = refcache.cached(
            refcache.generation(version),
            ("compliance.result_rule_arrays", tuple([r.rule_id for r in per_order])),
            lambda: _rule_arrays(per_order),
        )
    return [
        *rule_columns,
        array_literal([r.outcome for r in per_order]),
        array_literal([r.message for r in per_order]),
        array_literal([r.measured for r in per_order]),
        array_literal([r.limit for r in per_order]),
    ]


def compliance_results_one(check: CheckOutcome) -> tuple[datetime, list[Any]] | None:
    """(checked_at, parameters of RESULT_SET_AFTER_ORDER_SQL) for a check of one order, as
    `compliance_results_store` would store them; None when that would write no row, or not
    with a plain INSERT (then store them with it after the insert)."""
    if len(check.outcomes) != 1:
        raise ValueError("compliance_results_one stores the results of one order")
    per_order = next(iter(check.results.values()), None)
    if not per_order or len(per_order) > _INSERT_AT_MOST:
        return None
    checked_at = timezone.now()
    return checked_at, [
        checked_at,
        *_result_arrays(per_order, check.version),
    ]


def compliance_results_stored(
    *, check: CheckOutcome, order_ids: Sequence[int], checked_at: datetime
) -> CheckOutcome:
    """The check keyed by the orders' primary keys, as stored at `checked_at`."""
    return CheckOutcome(
        outcomes={order_ids[k]: v for k, v in check.outcomes.items()},
        results={order_ids[k]: v for k, v in check.results.items()},
        checked_at=checked_at,
        version=check.version,
    )


def compliance_check(*, orders: Sequence[Order]) -> dict[int, str]:
    """Run pre-trade compliance on inserted orders; store results; return {order pk: outcome}."""
    return compliance_check_detailed(orders=orders).outcomes


# --- rules -----------------------------------------------------------------------------------

RULE_FIELDS = (
    "name",
    "rule_type",
    "severity",
    "scope",
    "params",
    "active",
    "effective_from",
    "effective_to",
)


def rule_validate(
    *, rule: Rule, account_ids: Sequence[int] = (), group_ids: Sequence[int] = ()
) -> None:
    """Raise ValidationError (field "params") if the engine would refuse this rule."""
    if not isinstance(rule.params, dict):
        raise field_error("params", "must be a JSON object of parameter names to values")
    try:
        engine.validate_rule(rule_spec(rule, account_ids, group_ids))
    except engine.RuleConfigError as exc:
        raise field_error("params", str(exc), code="invalid_rule") from exc
    if (
        rule.effective_from is not None
        and rule.effective_to is not None
        and rule.effective_to < rule.effective_from
    ):
        raise field_error("effective_to", "must not be before effective_from")


def _require_compliance(user: Any) -> None:
    if not has_role(user, "compliance"):
        raise NotPermitted("Only compliance officers may do this.", code="compliance_only")


def rule_save(*, user: Any, data: dict[str, Any], rule_id: int | None = None) -> Rule:
    """Create or change a rule (compliance only): validated, version bumped, audited."""
    _require_compliance(user)
    with transaction.atomic(durable=True):
        if rule_id is None:
            rule = Rule()
            before = None
        else:
            found = Rule.objects.select_for_update().filter(pk=rule_id).first()
            if found is None:
                raise NotFound(f"Rule {rule_id} does not exist.")
            rule = found
            before = {**model_snapshot(rule), **_rule_scope(rule)}
        for name in RULE_FIELDS:
            if name in data:
                setattr(rule, name, data[name])
        if rule.rule_type not in RuleType.values:
            raise field_error("rule_type", f"unknown rule type {rule.rule_type!r}")
        if rule.severity not in Severity.values:
            raise field_error("severity", f"unknown severity {rule.severity!r}")
        if rule.scope not in Scope.values:
            raise field_error("scope", f"unknown scope {rule.scope!r}")
        accounts = data.get("accounts")
        groups = data.get("groups")
        current = _rule_scope(rule) if rule.pk else {"accounts": [], "groups": []}
        account_ids = list(accounts) if accounts is not None else current["accounts"]
        group_ids = list(groups) if groups is not None else current["groups"]
        rule_validate(rule=rule, account_ids=account_ids, group_ids=group_ids)
        if rule.pk:
            rule.version += 1
        rule.save()
        if accounts is not None:
            rule.accounts.set(account_ids)
        if groups is not None:
            rule.groups.set(group_ids)
        audit_record(
            action="compliance.rule_changed" if before else "compliance.rule_created",
            object_type="compliance.rule",
            object_id=rule.pk,
            before=before,
            after={**model_snapshot(rule), **_rule_scope(rule)},
            actor=user,
        )
    return rule


def _rule_scope(rule: Rule) -> dict[str, list[int]]:
    return {
        "accounts": sorted(rule.accounts.values_list("pk", flat=True)),
        "groups": sorted(rule.groups.values_list("pk", flat=True)),
    }


# --- restricted list -------------------------------------------------------------------------

RESTRICTED_FIELDS = (
    "instrument",
    "issuer",
    "account",
    "reason",
    "source",
    "effective_from",
    "effective_to",
    "active",
)


def restricted_entry_validate(*, entry: RestrictedEntry) -> None:
    """Raise ValidationError if the entry names not exactly one target, no reason, bad dates."""
    if (entry.instrument_id is None) == (entry.issuer_id is None):
        raise field_error("instrument", "name exactly one of an instrument or an issuer")
    if not (entry.reason or "").strip():
        raise field_error("reason", "a reason is required")
    if (
        entry.effective_from is not None
        and entry.effective_to is not None
        and entry.effective_to < entry.effective_from
    ):
        raise field_error("effective_to", "must not be before effective_from")


def restricted_entry_save(
    *, user: Any, data: dict[str, Any], entry_id: int | None = None
) -> RestrictedEntry:
    """Create or change a restricted-list entry (compliance only): validated, versioned, audited."""
    _require_compliance(user)
    with transaction.atomic(durable=True):
        if entry_id is None:
            entry = RestrictedEntry()
            before = None
        else:
            found_entry = RestrictedEntry.objects.select_for_update().filter(pk=entry_id).first()
            if found_entry is None:
                raise NotFound(f"Restricted entry {entry_id} does not exist.")
            entry = found_entry
            before = model_snapshot(entry)
        for name in RESTRICTED_FIELDS:
            if name in data:
                setattr(entry, name, data[name])
        restricted_entry_validate(entry=entry)
        if entry.pk:
            entry.version += 1
        entry.save()
        audit_record(
            action="compliance.restricted_changed" if before else "compliance.restricted_added",
            object_type="compliance.restrictedentry",
            object_id=entry.pk,
            before=before,
            after=model_snapshot(entry),
            actor=user,
        )
    return entry


RESTRICTED_CSV_HEADER = (
    "instrument",
    "issuer",
    "account",
    "reason",
    "source",
    "effective_from",
    "effective_to",
)
RESTRICTED_CSV_MAX_ROWS = 20_000


def _parse_date(raw: str) -> date:
    return date.fromisoformat(raw)


def restricted_import_csv(
    *, user: Any, content: bytes | str, source: str = ""
) -> list[RestrictedEntry]:
    """Import restricted entries from CSV, all or nothing; errors list every bad row.

    Header: instrument,issuer,account,reason,source,effective_from,effective_to (instrument is a
    symbol, issuer a code, account a code or empty for firm-wide; dates YYYY-MM-DD or empty).
    """
    _require_compliance(user)
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError("The file is not UTF-8 text.", code="invalid_file") from exc
    reader = csv.DictReader(io.StringIO(content))
    header = tuple((h or "").strip() for h in (reader.fieldnames or ()))
    missing = [h for h in ("instrument", "issuer", "reason") if h not in header]
    unknown = [h for h in header if h not in RESTRICTED_CSV_HEADER]
    if missing or unknown:
        raise ValidationError(
            f"The header must be {','.join(RESTRICTED_CSV_HEADER)}",
            code="invalid_header",
            errors=[
                {"row": 1, "field": "header", "detail": f"missing {missing}, unknown {unknown}"}
            ],
        )
    rows = []
    for raw in reader:
        rows.append({(k or "").strip(): (v or "").strip() for k, v in raw.items() if k})
        if len(rows) > RESTRICTED_CSV_MAX_ROWS:
            raise ValidationError(
                f"At most {RESTRICTED_CSV_MAX_ROWS} rows per file.", code="too_many_rows"
            )
    if not rows:
        raise ValidationError("The file has no rows.", code="empty_file")
    symbols = {r.get("instrument", "") for r in rows} - {""}
    issuer_codes = {r.get("issuer", "") for r in rows} - {""}
    account_codes = {r.get("account", "") for r in rows} - {""}
    instruments = dict(Instrument.objects.filter(symbol__in=symbols).values_list("symbol", "pk"))
    issuers = dict(Issuer.objects.filter(code__in=issuer_codes).values_list("code", "pk"))
    accounts = dict(Account.objects.filter(code__in=account_codes).values_list("code", "pk"))
    errors: list[dict[str, Any]] = []
    entries: list[RestrictedEntry] = []
    for n, r in enumerate(rows, start=2):
        row_errors: list[tuple[str, str]] = []
        symbol, issuer_code, account_code = (
            r.get("instrument", ""),
            r.get("issuer", ""),
            r.get("account", ""),
        )
        if bool(symbol) == bool(issuer_code):
            row_errors.append(("instrument", "give exactly one of instrument or issuer"))
        elif symbol and symbol not in instruments:
            row_errors.append(("instrument", f"unknown instrument {symbol!r}"))
        elif issuer_code and issuer_code not in issuers:
            row_errors.append(("issuer", f"unknown issuer {issuer_code!r}"))
        if account_code and account_code not in accounts:
            row_errors.append(("account", f"unknown account {account_code!r}"))
        if not r.get("reason"):
            row_errors.append(("reason", "a reason is required"))
        dates: dict[str, date | None] = {}
        for name in ("effective_from", "effective_to"):
            value = r.get(name, "")
            try:
                dates[name] = _parse_date(value) if value else None
            except ValueError:
                row_errors.append((name, f"{value!r} is not a date (YYYY-MM-DD)"))
                dates[name] = None
        start, end = dates["effective_from"], dates["effective_to"]
        if start and end and end < start:
            row_errors.append(("effective_to", "must not be before effective_from"))
        if row_errors:
            errors += [{"row": n, "field": f, "detail": d} for f, d in row_errors]
            continue
        entries.append(
            RestrictedEntry(
                instrument_id=instruments.get(symbol) if symbol else None,
                issuer_id=issuers.get(issuer_code) if issuer_code else None,
                account_id=accounts.get(account_code) if account_code else None,
                reason=r["reason"],
                source=(r.get("source") or source)[:120],
                effective_from=start,
                effective_to=end,
            )
        )
    if errors:
        raise ValidationError(
            f"{len({e['row'] for e in errors})} row(s) are invalid; nothing was imported.",
            code="invalid_rows",
            errors=errors,
        )
    with transaction.atomic(durable=True):
        created = RestrictedEntry.objects.bulk_create(entries)
        audit_record_many(
            entries=[
                AuditEntry(
                    action="compliance.restricted_added",
                    object_type="compliance.restrictedentry",
                    object_id=str(e.pk),
                    after=model_snapshot(e),
                    meta={"import": source},
                    actor=user,
                )
                for e in created
            ]
            + [
                AuditEntry(
                    action="compliance.restricted_imported",
                    object_type="compliance.restrictedimport",
                    object_id=timezone.now().strftime("%Y%m%dT%H%M%S%f"),
                    after={"count": len(created), "ids": [e.pk for e in created]},
                    meta={"source": source},
                    actor=user,
                )
            ]
        )
    return created


# --- overrides -------------------------------------------------------------------------------


def order_override(*, user: Any, order_id: int, reason: str) -> Order:
    """Release a warned order (compliance officer, never their own order) with a written reason."""
    from orders.events import publish_order_updated

    _require_compliance(user)
    reason = (reason or "").strip()
    if not reason:
        raise field_error("reason", "a written reason is required", code="reason_required")
    with transaction.atomic(durable=True):
        order = (
            Order.objects.select_for_update(of=("self",))
            .select_related("account", "instrument", "created_by")
            .filter(pk=order_id)
            .first()
        )
        if order is None:
            raise NotFound(f"Order {order_id} does not exist.")
        if order.created_by_id == user.pk:
            raise NotPermitted(
                "A compliance officer may not override their own order.", code="own_order"
            )
        if order.status == OrderStatus.BLOCKED:
            raise ConflictError(
                "A blocked order cannot be overridden, only canceled.",
                code="blocked_cannot_override",
            )
        if order.status != OrderStatus.AWAITING_OVERRIDE:
            raise ConflictError(
                f"Only orders awaiting override can be overridden; this one is {order.status}.",
                code="not_awaiting_override",
            )
        ensure_transition(order.status, OrderStatus.APPROVED)
        before = {"status": order.status, "version": order.version}
        order.status = OrderStatus.APPROVED
        order.version += 1
        order.save(update_fields=["status", "version", "updated_at"])
        override = Override.objects.create(order=order, officer=user, reason=reason)
        warned = list(
            ComplianceResult.objects.filter(order=order, outcome=engine.OUTCOME_WARN).values(
                "rule_id", "rule_name", "rule_version", "message"
            )
        )
        audit_record(
            action="order.override",
            # The same stream as the orders app's own events of this order.
            object_type="order",
            object_id=order.pk,
            before=before,
            after={"status": order.status, "version": order.version},
            meta={"reason": reason, "override_id": override.pk, "warnings": warned},
            actor=user,
        )
        publish_order_updated(order)
    return order


# --- post-trade ------------------------------------------------------------------------------


def breach_as_dict(b: Breach, account_codes: dict[int, str]) -> dict[str, Any]:
    """The JSON-safe form of a breach stored on a report."""
    return {
        "rule_id": b.rule_id,
        "rule": b.rule_name,
        "rule_version": b.rule_version,
        "rule_type": b.rule_type,
        "severity": b.severity,
        "account": account_codes.get(b.account_id) if b.account_id is not None else None,
        "subject": b.subject,
        "measured": str(b.measured) if b.measured is not None else None,
        "limit": str(b.limit),
        "message": b.message,
    }


def compliance_post_trade_sweep(*, as_of: date | None = None, user: Any = None) -> BreachReport:
    """Re-run the position-based rules on actual holdings and store a report of the breaches."""
    from allocations.models import Position

    if user is not None and not has_role(user, "compliance", "admin"):
        raise NotPermitted("Only compliance officers may run a sweep.", code="compliance_only")
    as_of = as_of or firm_now().date()
    rules = load_rules(day=as_of, rule_types=POST_TRADE_RULE_TYPES)
    holdings = {
        (a, i): q
        for a, i, q in Position.objects.exclude(quantity=0).values_list(
            "account_id", "instrument_id", "quantity"
        )
    }
    instruments = load_instruments({i for (_, i) in holdings})
    account_ids = {a for (a, _) in holdings}
    accounts = load_accounts(
        account_ids=account_ids,
        cash=read_cash(account_ids=account_ids),
        holdings=holdings,
        instruments=instruments,
        other_cash=read_other_cash(account_ids=account_ids),
    )
    firm_issuer: dict[int, Any] = {}
    for (_, instrument_id), qty in holdings.items():
        issuer = instruments[instrument_id].issuer_id
        if qty > 0 and issuer is not None:
            firm_issuer[issuer] = firm_issuer.get(issuer, 0) + qty
    breaches = find_breaches(
        rules=rules,
        accounts=accounts,
        holdings=holdings,
        instruments=instruments,
        firm_issuer_holdings=firm_issuer,
        fx_rates=fx_pairs(instruments, accounts, fx.rates()),
    )
    codes = dict(Account.objects.filter(pk__in=account_ids).values_list("pk", "code"))
    with transaction.atomic(durable=True):
        report = BreachReport.objects.create(
            as_of=as_of,
            run_by=user,
            breaches=[breach_as_dict(b, codes) for b in breaches],
            breach_count=len(breaches),
        )
        audit_record(
            action="compliance.post_trade_sweep",
            object_type="compliance.breachreport",
            object_id=report.pk,
            after={
                "as_of": as_of,
                "breach_count": report.breach_count,
                "rules": [{"id": r.id, "version": r.version} for r in rules],
                "accounts": len(accounts),
                "positions": len(holdings),
            },
            actor=user,
        )
    return report


def breach_report_csv(*, report: BreachReport) -> str:
    """The report's breaches as CSV text, one line per breach."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [
        "as_of",
        "rule",
        "rule_version",
        "rule_type",
        "severity",
        "account",
        "subject",
        "measured",
        "limit",
        "message",
    ]
    writer.writerow(columns)
    for b in report.breaches:
        writer.writerow([report.as_of.isoformat()] + [b.get(c, "") for c in columns[1:]])
    return out.getvalue()
