"""Back-office and compliance reports, viewable (JSON/HTML) and downloadable (CSV, XLSX).

Each report is a title, a column list and rows of plain values for one day:

* ``executions``: fills received for the trade date (Execution.trade_date), in id order;
* ``commissions``: allocations of the trade date summed per broker (reversals included, so the
  figures are net);
* ``compliance``: warn/block results of pre-trade checks made that day and the overrides given
  that day (the day on the firm's clock, settings.FIRM_TIME_ZONE);
* ``positions``: every account's non-zero positions as they stand now (the book keeps no
  history of positions; the date is printed for reference only).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import zoneinfo
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum

from allocations.models import Allocation, Position
from compliance.models import ComplianceResult, Override
from oms_site.errors import NotFound, NotPermitted
from oms_site.roles import has_role
from orders.models import Execution

REPORT_READERS = ("backoffice", "admin", "compliance")
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclasses.dataclass(frozen=True)
class Report:
    """A built report: what it is, for which day, its columns and rows."""

    name: str
    title: str
    day: dt.date
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def _firm_day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    zone = zoneinfo.ZoneInfo(settings.FIRM_TIME_ZONE)
    start = dt.datetime.combine(day, dt.time.min, tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    return start, end


def _executions(day: dt.date) -> tuple[str, tuple[str, ...], list[tuple[Any, ...]]]:
    rows = (
        Execution.objects.filter(trade_date=day, last_qty__gt=0)
        .order_by("id")
        .values_list(
            "id",
            "exec_id",
            "broker__code",
            "instrument__symbol",
            "side",
            "last_qty",
            "last_px",
            "gross",
            "order_id",
            "block_id",
            "transact_time",
        )
    )
    columns = (
        "execution_id",
        "exec_id",
        "broker",
        "instrument",
        "side",
        "quantity",
        "price",
        "gross",
        "order",
        "block",
        "transact_time",
    )
    return "Executions by day", columns, list(rows)


def _commissions(day: dt.date) -> tuple[str, tuple[str, ...], list[tuple[Any, ...]]]:
    rows = (
        Allocation.objects.filter(trade_date=day)
        .values("broker__code")
        .annotate(
            allocations=Count("id"),
            gross=Sum("gross"),
            commission=Sum("commission"),
            fees=Sum("fees"),
        )
        .order_by("broker__code")
        .values_list("broker__code", "allocations", "gross", "commission", "fees")
    )
    columns = ("broker", "allocations", "gross", "commission", "fees")
    return "Commissions by broker", columns, list(rows)


def _compliance(day: dt.date) -> tuple[str, tuple[str, ...], list[tuple[Any, ...]]]:
    start, end = _firm_day_bounds(day)
    rows: list[tuple[Any, ...]] = []
    results = (
        ComplianceResult.objects.filter(
            checked_at__gte=start, checked_at__lt=end, outcome__in=["warn", "block"]
        )
        .order_by("checked_at", "id")
        .values_list(
            "checked_at",
            "order_id",
            "order__account__code",
            "order__instrument__symbol",
            "rule_name",
            "rule_version",
            "outcome",
            "message",
        )
    )
    for at, order, account, symbol, rule, version, outcome, message in results:
        rows.append((at, "breach", order, account, symbol, rule, version, outcome, message, "", ""))
    overrides = (
        Override.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by("created_at", "id")
        .values_list(
            "created_at",
            "order_id",
            "order__account__code",
            "order__instrument__symbol",
            "officer__username",
            "reason",
        )
    )
    for at, order, account, symbol, officer, reason in overrides:
        rows.append((at, "override", order, account, symbol, "", None, "", "", officer, reason))
    rows.sort(key=lambda r: (r[0], r[2], r[1]))
    columns = (
        "time",
        "kind",
        "order",
        "account",
        "instrument",
        "rule",
        "rule_version",
        "outcome",
        "message",
        "officer",
        "reason",
    )
    return "Compliance breaches and overrides", columns, rows


def _positions(day: dt.date) -> tuple[str, tuple[str, ...], list[tuple[Any, ...]]]:
    rows = (
        Position.objects.exclude(quantity=0)
        .order_by("account__code", "instrument__symbol")
        .values_list("account__code", "instrument__symbol", "quantity", "avg_cost", "realised_pnl")
    )
    columns = ("account", "instrument", "quantity", "avg_cost", "realised_pnl")
    return "Positions by account", columns, list(rows)


REPORTS: dict[str, Callable[[dt.date], tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]] = {
    "executions": _executions,
    "commissions": _commissions,
    "compliance": _compliance,
    "positions": _positions,
}


def report_build(*, user: Any, name: str, day: dt.date) -> Report:
    """Build a named report for a day; compliance, back office and administrators only."""
    if not has_role(user, *REPORT_READERS):
        raise NotPermitted("Only back office, compliance and administrators may read reports.")
    builder = REPORTS.get(name)
    if builder is None:
        raise NotFound(f"No report named {name!r}; reports: {', '.join(sorted(REPORTS))}.")
    title, columns, rows = builder(day)
    return Report(name=name, title=title, day=day, columns=columns, rows=rows)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def json_rows(report: Report) -> list[dict[str, str]]:
    """Rows as JSON-safe dicts (decimals and times as strings)."""
    return [dict(zip(report.columns, map(_text, row), strict=True)) for row in report.rows]


def report_csv(report: Report) -> bytes:
    """The report as UTF-8 CSV with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(report.columns)
    writer.writerows([_text(v) for v in row] for row in report.rows)
    return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        # Excel has no time zones: write UTC, naive, and say so in the header.
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def report_xlsx(report: Report) -> bytes:
    """The report as an XLSX workbook (one sheet; numbers stay numbers)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title=report.name[:31])
    sheet.append([f"{report.title} - {report.day.isoformat()} (times in UTC)"])
    sheet.append(list(report.columns))
    for row in report.rows:
        sheet.append([_cell(v) for v in row])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def report_names() -> Sequence[str]:
    """The available report names."""
    return sorted(REPORTS)
