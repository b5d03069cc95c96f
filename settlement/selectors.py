"""Reads of the settlement app: allocation lines streamed for files and reconciliation, files,
statements and breaks.

One settlement line per allocation, netted per order and trade date
--------------------------------------------------------------------
``Allocation`` rows are *differences* (allocations.services): every fill writes, for each order
whose share changed, a row with the change of its quantity and money at the block's new average
price (``fill`` > 0, ``reversal`` < 0 with ``reversal_of``, ``reprice`` = 0). What settles is the
sum. So a settlement line is **an order's rows of one trade date netted**: quantity, gross,
commission, fees and net summed, at the last row's price (the block's average price), with the
first row's broker; it is identified by the **first row's allocation id**, which never changes
when later fills, reversals or re-allocations add rows, so a regeneration can say which line was
added, removed or changed. Lines are in allocation id order.

* Reversals therefore never appear as separate lines: they reduce their order's line; an order
  whose rows of the day sum to nothing (quantity and money zero) has no line, and a
  regeneration reports it as "removed".
* A day whose rows take back more than that day gave (a GTC order re-allocated on a later day)
  nets to a negative quantity: the CSV shows it signed; MT541/MT543 cannot carry a negative
  quantity, so it becomes an instruction in the opposite direction with absolute values.
* A day with only a re-pricing (quantity 0, money not 0) is a cash adjustment: the CSV shows it
  with quantity 0; MT541/MT543 instruct securities against cash, so it is left out of an MT54x
  file and listed in the run summary ("cash_only_lines") for the back office.

Everything streams: ``values_list`` tuples through ``.iterator(chunk_size=...)`` (a server-side
cursor on PostgreSQL), never model instances, so memory stays flat whatever the day's size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import django_filters
from django.db.models import F, Min, Q, QuerySet, Window

from allocations.models import Allocation, Custodian
from oms_site.roles import has_role
from settlement.calendars import settlement_date
from settlement.formats import SettlementLine
from settlement.models import ReconBreak, SettlementFile, SettlementRun, Statement
from settlement.recon import OmsTrade

DEFAULT_CHUNK_SIZE = 5000
_ZERO = Decimal(0)

# Column order of allocation_rows() tuples (indices used by net_allocations()).
_ROW_FIELDS = (
    "first_id",
    "id",
    "side",
    "quantity",
    "price",
    "gross",
    "commission",
    "fees",
    "net",
    "currency",
    "account__code",
    "account__custodian_account",
    "instrument__isin",
    "instrument__symbol",
    "instrument__settlement_cycle",
    "instrument__calendar_code",
    "broker__code",
    "broker__bic",
    "trade_date",
)


@dataclasses.dataclass(frozen=True, slots=True)
class NetAllocation:
    """An order's allocation rows of one trade date, netted (see the module docstring)."""

    allocation_id: int
    trade_date: dt.date
    side: str
    quantity: Decimal
    price: Decimal
    gross: Decimal
    commission: Decimal
    fees: Decimal
    net: Decimal
    currency: str
    account_code: str
    custodian_account: str
    isin: str
    symbol: str
    settlement_cycle: int
    calendar_code: str
    broker_code: str
    broker_bic: str
    row_count: int  # rows netted


def allocation_rows(
    *,
    trade_dates: Sequence[dt.date],
    custodian_id: int | None = None,
    broker_id: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[tuple[Any, ...]]:
    """Stream allocation tuples (_ROW_FIELDS) of the dates, grouped per order and trade date."""
    qs = Allocation.objects.filter(trade_date__in=list(trade_dates))
    if custodian_id is not None:
        qs = qs.filter(account__custodian_id=custodian_id)
    if broker_id is not None:
        qs = qs.filter(broker_id=broker_id)
    rows = (
        qs.annotate(
            first_id=Window(Min("id"), partition_by=[F("order_id"), F("trade_date")]),
        )
        .order_by("first_id", "id")
        .values_list(*_ROW_FIELDS)
    )
    return rows.iterator(chunk_size=chunk_size)


def net_allocations(rows: Iterable[tuple[Any, ...]]) -> Iterator[NetAllocation]:
    """Fold consecutive rows of one (order, trade date) into a NetAllocation; drop empty ones."""
    group: list[tuple[Any, ...]] = []
    for row in rows:
        if group and row[0] != group[0][0]:
            net = _fold(group)
            if net is not None:
                yield net
            group = []
        group.append(row)
    if group:
        net = _fold(group)
        if net is not None:
            yield net


def _fold(group: list[tuple[Any, ...]]) -> NetAllocation | None:
    first, last = group[0], group[-1]
    quantity, gross, commission, fees, net = first[3], first[5], first[6], first[7], first[8]
    if len(group) > 1:
        for row in group[1:]:
            quantity += row[3]
            gross += row[5]
            commission += row[6]
            fees += row[7]
            net += row[8]
        if not (quantity or gross or commission or fees or net):
            return None
    return NetAllocation(
        allocation_id=first[0],
        trade_date=first[18],
        side=first[2],
        quantity=quantity,
        # Every row re-prices the whole order to the block's average price: the last one holds.
        price=last[4],
        gross=gross,
        commission=commission,
        fees=fees,
        net=net,
        currency=first[9],
        account_code=first[10],
        custodian_account=first[11],
        isin=first[12] or "",
        symbol=first[13],
        settlement_cycle=first[14],
        calendar_code=first[15],
        broker_code=first[16],
        broker_bic=first[17] or "",
        row_count=len(group),
    )


_OPPOSITE = {"buy": "sell", "buy_to_cover": "sell", "sell": "buy", "sell_short": "buy"}


def settlement_lines(
    allocations: Iterable[NetAllocation],
    *,
    file_format: str,
    custodian_bic: str,
    our_bic: str,
    pset_bics: dict[str, str],
    on_line: Callable[[NetAllocation], None] | None = None,
    on_skip: Callable[[NetAllocation], None] | None = None,
) -> Iterator[SettlementLine]:
    """Turn net allocations into SettlementLines (settlement date from the market calendar)."""
    # Per (trade date, cycle, calendar): the settlement date and the place of settlement.
    market_cache: dict[tuple[dt.date, int, str], tuple[dt.date, str]] = {}
    for a in allocations:
        key = (a.trade_date, a.settlement_cycle, a.calendar_code)
        market = market_cache.get(key)
        if market is None:
            market = (
                settlement_date(
                    a.trade_date, cycle_days=a.settlement_cycle, calendar_code=a.calendar_code
                ),
                pset_bics.get(a.calendar_code.upper(), ""),
            )
            market_cache[key] = market
        settle, pset = market
        side, quantity, gross, commission, fees, net = (
            a.side,
            a.quantity,
            a.gross,
            a.commission,
            a.fees,
            a.net,
        )
        if quantity == 0 and file_format == "mt54x":
            if on_skip is not None:  # a cash-only adjustment has no MT541/MT543
                on_skip(a)
            continue
        if quantity < 0 and file_format == "mt54x":
            # SWIFT has no negative quantity: a net take-back settles in the other direction.
            side = _OPPOSITE[side]
            quantity, gross, commission, fees, net = (
                -quantity,
                -gross,
                -commission,
                -fees,
                -net,
            )
        if on_line is not None:
            on_line(a)
        yield SettlementLine(
            allocation_id=a.allocation_id,
            trade_date=a.trade_date,
            settlement_date=settle,
            account_code=a.account_code,
            custodian_account=a.custodian_account,
            isin=a.isin,
            symbol=a.symbol,
            side=side,
            quantity=quantity,
            price=a.price,
            gross=gross,
            commission=commission,
            fees=fees,
            net=net,
            currency=a.currency,
            broker_code=a.broker_code,
            custodian_bic=custodian_bic,
            broker_bic=a.broker_bic,
            our_bic=our_bic,
            pset_bic=pset,
        )


def oms_trades(
    *,
    trade_dates: Sequence[dt.date],
    custodian_id: int | None = None,
    broker_id: int | None = None,
) -> Iterator[OmsTrade]:
    """The OMS side of a reconciliation: net allocations of the dates, as recon.OmsTrade."""
    rows = allocation_rows(trade_dates=trade_dates, custodian_id=custodian_id, broker_id=broker_id)
    for a in net_allocations(rows):
        quantity, side = a.quantity, a.side
        if quantity == 0:  # a cash-only adjustment: statements list trades
            continue
        if quantity < 0:  # a net take-back is reported by the other side as the opposite trade
            quantity, side = -quantity, _OPPOSITE[side]
        yield OmsTrade(
            allocation_id=a.allocation_id,
            account=a.account_code,
            instrument=a.symbol,
            trade_date=a.trade_date,
            side=side,
            quantity=quantity,
            price=a.price,
            isin=a.isin,
        )


def custodians_for_trade_date(*, trade_date: dt.date) -> QuerySet[Custodian]:
    """Custodians with allocations on the trade date, or with a file for it already."""
    with_lines = Allocation.objects.filter(trade_date=trade_date).values("account__custodian_id")
    with_files = SettlementFile.objects.filter(trade_date=trade_date).values("custodian_id")
    return Custodian.objects.filter(Q(pk__in=with_lines) | Q(pk__in=with_files)).order_by("code")


# --------------------------------------------------------------------------------------------
# Files, runs, statements, breaks (what a user may see)
# --------------------------------------------------------------------------------------------

FILE_READERS = ("backoffice", "admin", "compliance")
BACK_OFFICE = ("backoffice", "admin")


def settlement_files_visible_to(*, user: Any) -> QuerySet[SettlementFile]:
    """Settlement files: back office, administrators and compliance see all; others none."""
    qs = SettlementFile.objects.select_related("custodian")
    return qs if has_role(user, *FILE_READERS) else qs.none()


def settlement_runs_visible_to(*, user: Any) -> QuerySet[SettlementRun]:
    """Settlement runs: back office and administrators."""
    qs = SettlementRun.objects.select_related("requested_by")
    return qs if has_role(user, *BACK_OFFICE) else qs.none()


def statements_visible_to(*, user: Any) -> QuerySet[Statement]:
    """Uploaded statements: back office and administrators."""
    qs = Statement.objects.select_related("uploaded_by")
    return qs if has_role(user, *BACK_OFFICE) else qs.none()


def breaks_visible_to(*, user: Any) -> QuerySet[ReconBreak]:
    """Reconciliation breaks: back office and administrators."""
    qs = ReconBreak.objects.select_related("statement", "resolved_by")
    return qs if has_role(user, *BACK_OFFICE) else qs.none()


class SettlementFileFilter(django_filters.FilterSet):
    """?trade_date=YYYY-MM-DD&custodian=<code>&latest=true."""

    trade_date = django_filters.DateFilter(field_name="trade_date")
    custodian = django_filters.CharFilter(field_name="custodian__code")
    latest = django_filters.BooleanFilter(method="filter_latest", label="only latest versions")

    class Meta:
        model = SettlementFile
        fields = ["trade_date", "custodian"]

    def filter_latest(
        self, queryset: QuerySet[SettlementFile], name: str, value: bool
    ) -> QuerySet[SettlementFile]:
        if not value:
            return queryset
        return queryset.order_by("custodian_id", "trade_date", "-version").distinct(
            "custodian_id", "trade_date"
        )


class ReconBreakFilter(django_filters.FilterSet):
    """?status=open|resolved&kind=&statement=&trade_date=."""

    status = django_filters.CharFilter(field_name="status")
    kind = django_filters.CharFilter(field_name="kind")
    statement = django_filters.NumberFilter(field_name="statement_id")
    trade_date = django_filters.DateFilter(field_name="trade_date")

    class Meta:
        model = ReconBreak
        fields = ["status", "kind", "statement", "trade_date"]


def settlement_file_list(
    *, user: Any, filters: dict[str, Any] | None = None
) -> QuerySet[SettlementFile]:
    """Files the user may see, filtered by SettlementFileFilter."""
    return SettlementFileFilter(filters or {}, queryset=settlement_files_visible_to(user=user)).qs


def break_list(*, user: Any, filters: dict[str, Any] | None = None) -> QuerySet[ReconBreak]:
    """Breaks the user may see, filtered by ReconBreakFilter."""
    return ReconBreakFilter(filters or {}, queryset=breaks_visible_to(user=user)).qs
