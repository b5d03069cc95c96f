"""Reconciliation of a custodian/broker statement (CSV) against OMS allocations.

Matching key: (account, instrument, trade date, settlement direction). Direction, not side:
custodians and brokers report a short sale as a sale and a buy-to-cover as a buy, and both settle
the same way, so "sell" on a statement matches "sell_short" in the OMS. The statement's
instrument may be the OMS symbol or the ISIN (an OmsTrade carries both).

Within a key, lines pair in three passes, each deterministic:

1. same quantity and price within ``price_tolerance``: matched, no break;
2. same quantity, price outside the tolerance: ``price_mismatch``;
3. whatever is left pairs in price order: ``quantity_mismatch`` (its values show the prices
   too); lines with no partner are ``missing_in_statement`` (OMS only) or ``missing_in_oms``
   (statement only).

Cost: one pass to group both sides by key, then sorting inside each key, so O(n log n).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

STATEMENT_COLUMNS = ("account", "instrument", "trade_date", "side", "quantity", "price")
SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
_DIRECTION = {"buy": "buy", "buy_to_cover": "buy", "sell": "sell", "sell_short": "sell"}

MISSING_IN_OMS = "missing_in_oms"
MISSING_IN_STATEMENT = "missing_in_statement"
QUANTITY_MISMATCH = "quantity_mismatch"
PRICE_MISMATCH = "price_mismatch"
BREAK_KINDS = (MISSING_IN_OMS, MISSING_IN_STATEMENT, QUANTITY_MISMATCH, PRICE_MISMATCH)

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")
MAX_TEXT_LENGTH = 64


@dataclasses.dataclass(frozen=True, slots=True)
class StatementLine:
    """One validated statement row; row is its 1-based row number in the file (header = 1)."""

    row: int
    account: str
    instrument: str
    trade_date: dt.date
    side: str
    quantity: Decimal
    price: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class OmsTrade:
    """One OMS allocation as reconciliation sees it."""

    allocation_id: int
    account: str
    instrument: str  # symbol
    trade_date: dt.date
    side: str
    quantity: Decimal
    price: Decimal
    isin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Break:
    """A difference between OMS and statement; the side missing a line has None values."""

    kind: str  # one of BREAK_KINDS
    account: str
    instrument: str  # the OMS symbol when the OMS has the trade, else the statement's text
    trade_date: dt.date
    side: str  # settlement direction: "buy" or "sell"
    oms_allocation_id: int | None
    oms_side: str | None
    oms_quantity: Decimal | None
    oms_price: Decimal | None
    statement_row: int | None
    statement_side: str | None
    statement_quantity: Decimal | None
    statement_price: Decimal | None


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _error(row: int, field: str, detail: str) -> dict[str, object]:
    return {"row": row, "field": field, "detail": detail}


def _text(value: str, row: int, field: str, errors: list[dict[str, object]]) -> str:
    value = value.strip()
    if not value:
        errors.append(_error(row, field, "required"))
    elif len(value) > MAX_TEXT_LENGTH:
        errors.append(_error(row, field, f"longer than {MAX_TEXT_LENGTH} characters"))
    return value


def _positive_decimal(
    value: str, row: int, field: str, errors: list[dict[str, object]]
) -> Decimal | None:
    value = value.strip()
    if not value:
        errors.append(_error(row, field, "required"))
        return None
    # Plain notation only: "1e3" or "1,000" in a statement is more likely a spreadsheet artefact
    # than a number anyone meant.
    if not _DECIMAL_RE.match(value):
        errors.append(_error(row, field, f"{value!r} is not a decimal number like 1234.56"))
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern only lets valid numbers through
        errors.append(_error(row, field, f"{value!r} is not a decimal number"))
        return None
    if number <= 0:
        errors.append(_error(row, field, "must be greater than zero"))
        return None
    return number


def _date(value: str, row: int, field: str, errors: list[dict[str, object]]) -> dt.date | None:
    value = value.strip()
    if not value:
        errors.append(_error(row, field, "required"))
        return None
    try:
        if not _DATE_RE.match(value):
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        errors.append(_error(row, field, f"{value!r} is not a date in YYYY-MM-DD form"))
        return None


def parse_statement_csv(text: str) -> tuple[list[StatementLine], list[dict[str, object]]]:
    """Parse and validate a statement CSV; returns the good lines and every row/field error."""
    errors: list[dict[str, object]] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = next(reader, None)
    if header is None:
        return [], [_error(1, "header", "the file is empty")]
    names = [name.strip().lower() for name in header]
    for name in sorted({n for n in names if names.count(n) > 1 and n}):
        errors.append(_error(1, name, "duplicate column"))
    for name in STATEMENT_COLUMNS:
        if name not in names:
            errors.append(_error(1, name, "missing column"))
    if errors:
        return [], errors
    position = {name: names.index(name) for name in STATEMENT_COLUMNS}

    lines: list[StatementLine] = []
    for row_number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank lines (often at the end of exported files) carry nothing
        if len(cells) != len(names):
            errors.append(
                _error(row_number, "row", f"has {len(cells)} cells, the header has {len(names)}")
            )
            continue
        row_errors: list[dict[str, object]] = []
        account = _text(cells[position["account"]], row_number, "account", row_errors)
        instrument = _text(cells[position["instrument"]], row_number, "instrument", row_errors)
        trade_date = _date(cells[position["trade_date"]], row_number, "trade_date", row_errors)
        side = cells[position["side"]].strip().lower()
        if side not in SIDES:
            row_errors.append(_error(row_number, "side", f"must be one of {', '.join(SIDES)}"))
        quantity = _positive_decimal(
            cells[position["quantity"]], row_number, "quantity", row_errors
        )
        price = _positive_decimal(cells[position["price"]], row_number, "price", row_errors)
        if row_errors:
            errors.extend(row_errors)
            continue
        assert trade_date is not None and quantity is not None and price is not None
        lines.append(
            StatementLine(
                row=row_number,
                account=account,
                instrument=instrument,
                trade_date=trade_date,
                side=side,
                quantity=quantity,
                price=price,
            )
        )
    return lines, errors


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------

_Key = tuple[str, str, dt.date, str]


def _make_break(
    kind: str, key: _Key, oms: OmsTrade | None, statement: StatementLine | None
) -> Break:
    account, instrument, trade_date, direction = key
    return Break(
        kind=kind,
        account=account,
        instrument=instrument,
        trade_date=trade_date,
        side=direction,
        oms_allocation_id=oms.allocation_id if oms else None,
        oms_side=oms.side if oms else None,
        oms_quantity=oms.quantity if oms else None,
        oms_price=oms.price if oms else None,
        statement_row=statement.row if statement else None,
        statement_side=statement.side if statement else None,
        statement_quantity=statement.quantity if statement else None,
        statement_price=statement.price if statement else None,
    )


def _pair_same_quantity(
    oms: list[OmsTrade], statement: list[StatementLine], tolerance: Decimal | None
) -> tuple[list[tuple[OmsTrade, StatementLine]], list[OmsTrade], list[StatementLine]]:
    """Pair lines of equal quantity in price order (prices within tolerance, if one is given)."""
    oms_by_quantity: dict[Decimal, list[OmsTrade]] = defaultdict(list)
    for trade in oms:
        oms_by_quantity[trade.quantity].append(trade)
    statement_by_quantity: dict[Decimal, list[StatementLine]] = defaultdict(list)
    for line in statement:
        statement_by_quantity[line.quantity].append(line)

    pairs: list[tuple[OmsTrade, StatementLine]] = []
    oms_left: list[OmsTrade] = []
    statement_left: list[StatementLine] = []
    for quantity in sorted(oms_by_quantity.keys() | statement_by_quantity.keys()):
        trades = sorted(oms_by_quantity.get(quantity, []), key=lambda t: (t.price, t.allocation_id))
        lines = sorted(statement_by_quantity.get(quantity, []), key=lambda s: (s.price, s.row))
        i = j = 0
        # Both lists are in price order, so a single merge-like walk finds the most pairs whose
        # prices are within the tolerance (a price too low to pair now cannot pair later).
        while i < len(trades) and j < len(lines):
            difference = trades[i].price - lines[j].price
            if tolerance is None or abs(difference) <= tolerance:
                pairs.append((trades[i], lines[j]))
                i += 1
                j += 1
            elif difference < 0:
                oms_left.append(trades[i])
                i += 1
            else:
                statement_left.append(lines[j])
                j += 1
        oms_left.extend(trades[i:])
        statement_left.extend(lines[j:])
    oms_left.sort(key=lambda t: (t.price, t.quantity, t.allocation_id))
    statement_left.sort(key=lambda s: (s.price, s.quantity, s.row))
    return pairs, oms_left, statement_left


def match(
    oms: Iterable[OmsTrade],
    statement: Iterable[StatementLine],
    *,
    price_tolerance: Decimal,
) -> list[Break]:
    """Match statement lines to OMS trades; return the breaks, sorted deterministically."""
    if not isinstance(price_tolerance, Decimal) or price_tolerance < 0:
        raise ValueError("price_tolerance must be a non-negative Decimal")
    oms = list(oms)
    # The statement may name an instrument by symbol or by ISIN.
    canonical: dict[str, str] = {}
    for trade in oms:
        canonical[trade.instrument] = trade.instrument
        if trade.isin:
            canonical.setdefault(trade.isin, trade.instrument)

    oms_groups: dict[_Key, list[OmsTrade]] = defaultdict(list)
    for trade in oms:
        key = (trade.account, trade.instrument, trade.trade_date, _DIRECTION[trade.side])
        oms_groups[key].append(trade)
    statement_groups: dict[_Key, list[StatementLine]] = defaultdict(list)
    for line in statement:
        instrument = canonical.get(line.instrument, line.instrument)
        key = (line.account, instrument, line.trade_date, _DIRECTION[line.side])
        statement_groups[key].append(line)

    breaks: list[Break] = []
    for key in sorted(oms_groups.keys() | statement_groups.keys()):
        oms_left = oms_groups.get(key, [])
        statement_left = statement_groups.get(key, [])
        # Pass 1: agreed trades. Pass 2: same quantity, different price.
        _, oms_left, statement_left = _pair_same_quantity(oms_left, statement_left, price_tolerance)
        price_pairs, oms_left, statement_left = _pair_same_quantity(oms_left, statement_left, None)
        breaks.extend(_make_break(PRICE_MISMATCH, key, o, s) for o, s in price_pairs)
        # Pass 3: the rest pair up in price order; the surplus is missing on the other side.
        for o, s in zip(oms_left, statement_left, strict=False):
            breaks.append(_make_break(QUANTITY_MISMATCH, key, o, s))
        paired = min(len(oms_left), len(statement_left))
        breaks.extend(_make_break(MISSING_IN_STATEMENT, key, o, None) for o in oms_left[paired:])
        breaks.extend(_make_break(MISSING_IN_OMS, key, None, s) for s in statement_left[paired:])

    kind_order = {kind: i for i, kind in enumerate(BREAK_KINDS)}
    breaks.sort(
        key=lambda b: (
            b.trade_date,
            b.account,
            b.instrument,
            b.side,
            kind_order[b.kind],
            b.oms_allocation_id if b.oms_allocation_id is not None else -1,
            b.statement_row if b.statement_row is not None else -1,
        )
    )
    return breaks
