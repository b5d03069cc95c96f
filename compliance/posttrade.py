"""Pure post-trade checks: the position-based rules re-run on actual holdings; no database.

Rules covered: ``concentration`` (per account, per bucket, long or short exposure as % of NAV),
``ownership`` (the firm's long holding of an issuer as % of an instrument's shares outstanding;
firm-wide whatever the rule's scope, since it is a firm figure) and ``short_selling`` (a negative
position in an account that may not sell short). Limits use the engine's semantics: a value
exactly at the limit passes, compared exactly by cross-multiplication.

Concentration compares in the account's base currency: position values (in the instrument's
currency) are converted at ``fx_rates[(currency, base)]``. An account whose NAV or positions
lack a rate gets one breach per concentration rule naming the missing rates, with no measured
value (the exposure cannot be measured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from compliance import engine

ZERO = Decimal(0)
HUNDRED = Decimal(100)
_PCT_PLACES = Decimal("0.000001")
POST_TRADE_RULE_TYPES = (
    engine.RULE_CONCENTRATION,
    engine.RULE_OWNERSHIP,
    engine.RULE_SHORT_SELLING,
)


@dataclass(frozen=True, slots=True)
class Breach:
    """One rule broken by actual holdings."""

    rule_id: int
    rule_name: str
    rule_version: int
    rule_type: str
    severity: str
    account_id: int | None
    subject: str
    measured: Decimal | None
    limit: Decimal
    message: str


def _pct(x: Decimal) -> Decimal:
    return x.quantize(_PCT_PLACES, rounding=ROUND_CEILING)


def _covers(rule: engine.RuleSpec, account: engine.AccountInfo) -> bool:
    if rule.scope == engine.SCOPE_FIRM:
        return True
    if rule.scope == engine.SCOPE_ACCOUNT:
        return account.id in rule.scope_account_ids
    return not account.group_ids.isdisjoint(rule.scope_group_ids)


def _num(x: Decimal) -> str:
    s = f"{x:f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _bucket(dim: str, inst: engine.InstrumentInfo) -> tuple[Any, str]:
    if dim == engine.DIMENSION_ISSUER and inst.issuer_id is not None:
        return ("issuer", inst.issuer_id), f"issuer {inst.issuer_id}"
    if dim == engine.DIMENSION_SECTOR and inst.sector:
        return ("sector", inst.sector), f"sector {inst.sector}"
    return ("instrument", inst.id), f"instrument {inst.symbol}"


def find_breaches(
    *,
    rules: Sequence[engine.RuleSpec],
    accounts: Mapping[int, engine.AccountInfo],
    holdings: Mapping[tuple[int, int], Decimal],
    instruments: Mapping[int, engine.InstrumentInfo],
    firm_issuer_holdings: Mapping[int, Decimal],
    fx_rates: Mapping[tuple[str, str], Decimal] | None = None,
) -> list[Breach]:
    """Every breach of the position-based rules by the given holdings, in rule then key order."""
    by_account: dict[int, list[tuple[engine.InstrumentInfo, Decimal]]] = {}
    for (account_id, instrument_id), qty in sorted(holdings.items()):
        if qty:
            by_account.setdefault(account_id, []).append((instruments[instrument_id], qty))
    breaches: list[Breach] = []
    for rule in rules:
        if rule.rule_type not in POST_TRADE_RULE_TYPES or not rule.active:
            continue
        engine.validate_rule(rule)
        if rule.rule_type == engine.RULE_CONCENTRATION:
            breaches += _concentration(rule, accounts, by_account, fx_rates or {})
        elif rule.rule_type == engine.RULE_OWNERSHIP:
            breaches += _ownership(rule, holdings, instruments, firm_issuer_holdings)
        else:
            breaches += _short_positions(rule, accounts, by_account)
    return breaches


def _breach(
    rule: engine.RuleSpec,
    account_id: int | None,
    subject: str,
    measured: Decimal | None,
    limit: Decimal,
    message: str,
) -> Breach:
    return Breach(
        rule_id=rule.id,
        rule_name=rule.name,
        rule_version=rule.version,
        rule_type=rule.rule_type,
        severity=rule.severity,
        account_id=account_id,
        subject=subject,
        measured=measured,
        limit=limit,
        message=message,
    )


def _concentration(
    rule: engine.RuleSpec,
    accounts: Mapping[int, engine.AccountInfo],
    by_account: Mapping[int, list[tuple[engine.InstrumentInfo, Decimal]]],
    fx_rates: Mapping[tuple[str, str], Decimal],
) -> list[Breach]:
    dim = str(rule.params["dimension"]).strip()
    max_pct = Decimal(str(rule.params["max_pct"]).strip())
    out: list[Breach] = []
    for account_id in sorted(by_account):
        account = accounts[account_id]
        if not _covers(rule, account):
            continue
        buckets: dict[Any, tuple[str, Decimal]] = {}
        base = account.base_currency
        missing = set(account.nav_missing_rates)
        for inst, qty in by_account[account_id]:
            key, label = _bucket(dim, inst)
            prev = buckets.get(key, (label, ZERO))[1]
            value = engine.convert(
                qty * inst.reference_price, inst.currency, base, fx_rates, missing
            )
            if value is None:
                continue
            buckets[key] = (label, prev + value)
        if missing:
            labels = ", ".join(f"{src}/{dst}" for src, dst in sorted(missing))
            out.append(
                _breach(
                    rule,
                    account_id,
                    "NAV",
                    None,
                    max_pct,
                    f"Account {account_id} concentration cannot be measured in {base}: "
                    f"no FX rate {labels}",
                )
            )
            continue
        nav = account.nav
        for label, value in buckets.values():
            exposure = abs(value)
            if not exposure:
                continue
            direction = "long" if value > 0 else "short"
            if nav <= 0:
                out.append(
                    _breach(
                        rule,
                        account_id,
                        label,
                        exposure,
                        max_pct,
                        f"Account {account_id} holds {direction} {label} worth {_num(exposure)} "
                        f"but its NAV {_num(nav)} is not positive",
                    )
                )
                continue
            if exposure * HUNDRED > max_pct * nav:
                pct = _pct(exposure * HUNDRED / nav)
                out.append(
                    _breach(
                        rule,
                        account_id,
                        label,
                        pct,
                        max_pct,
                        f"Account {account_id} {direction} exposure to {label} is "
                        f"{_num(exposure)}, {_num(pct)}% of NAV {_num(nav)}, over the "
                        f"{_num(max_pct)}% limit",
                    )
                )
    return out


def _ownership(
    rule: engine.RuleSpec,
    holdings: Mapping[tuple[int, int], Decimal],
    instruments: Mapping[int, engine.InstrumentInfo],
    firm_issuer_holdings: Mapping[int, Decimal],
) -> list[Breach]:
    max_pct = Decimal(str(rule.params["max_pct"]).strip())
    held_instruments = sorted({i for (_, i), q in holdings.items() if q > 0})
    worst: dict[int, tuple[Decimal, engine.InstrumentInfo]] = {}
    for instrument_id in held_instruments:
        inst = instruments[instrument_id]
        outstanding = inst.shares_outstanding
        if inst.issuer_id is None or outstanding is None or outstanding <= 0:
            continue
        held = firm_issuer_holdings.get(inst.issuer_id, ZERO)
        if held * HUNDRED > max_pct * outstanding:
            pct = _pct(held * HUNDRED / outstanding)
            if inst.issuer_id not in worst or pct > worst[inst.issuer_id][0]:
                worst[inst.issuer_id] = (pct, inst)
    out = []
    for issuer_id in sorted(worst):
        pct, inst = worst[issuer_id]
        held = firm_issuer_holdings[issuer_id]
        out.append(
            _breach(
                rule,
                None,
                f"issuer {issuer_id}",
                pct,
                max_pct,
                f"Firm holds {_num(held)} shares of issuer {issuer_id}, {_num(pct)}% of "
                f"{inst.symbol}'s {_num(inst.shares_outstanding or ZERO)} shares outstanding, "
                f"over the {_num(max_pct)}% limit",
            )
        )
    return out


def _short_positions(
    rule: engine.RuleSpec,
    accounts: Mapping[int, engine.AccountInfo],
    by_account: Mapping[int, list[tuple[engine.InstrumentInfo, Decimal]]],
) -> list[Breach]:
    out = []
    for account_id in sorted(by_account):
        account = accounts[account_id]
        if account.short_allowed or not _covers(rule, account):
            continue
        for inst, qty in by_account[account_id]:
            if qty < 0:
                out.append(
                    _breach(
                        rule,
                        account_id,
                        f"instrument {inst.symbol}",
                        qty,
                        ZERO,
                        f"Account {account_id} is short {_num(-qty)} {inst.symbol} but may "
                        "not sell short",
                    )
                )
    return out
