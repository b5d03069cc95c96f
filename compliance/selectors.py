"""Reads of compliance data: results per order, the override queue, breach reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Prefetch, QuerySet

from compliance.models import (
    RESULT_ID_SHIFT,
    SET_COLUMNS,
    BreachReport,
    ComplianceResult,
    ComplianceResultSet,
)
from oms_site.roles import has_role
from oms_site.rows import model_from_row, set_prefetched
from orders.enums import OrderStatus
from orders.models import Order

RESULT_FIELDS = (
    "order_id",
    "rule_id",
    "rule_name",
    "rule_type",
    "rule_version",
    "outcome",
    "message",
    "measured",
    "limit",
)


def result_dict(r: ComplianceResult) -> dict[str, Any]:
    """The API form of one result row (`rule`, `outcome`, `message` as in the contract)."""
    return {
        "rule": r.rule_name,
        "rule_id": r.rule_id,
        "rule_type": r.rule_type,
        "rule_version": r.rule_version,
        "outcome": r.outcome,
        "message": r.message,
        "measured": None if r.measured is None else str(r.measured),
        "limit": None if r.limit is None else str(r.limit),
    }


def latest_results(rows: Iterable[ComplianceResult]) -> list[ComplianceResult]:
    """The rows of an order's latest check (an amend re-checks; older rows stay as history)."""
    rows = list(rows)
    if not rows:
        return rows
    last = max(r.checked_at for r in rows)
    return [r for r in rows if r.checked_at == last]


def fold_outcome(results: Iterable[dict[str, Any]]) -> str | None:
    """block if any result blocks, else warn if any warns, else pass (None without results)."""
    outcomes = {r["outcome"] for r in results}
    if not outcomes:
        return None
    return "block" if "block" in outcomes else "warn" if "warn" in outcomes else "pass"


def compliance_summaries(*, order_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """{order id: {"outcome", "results": [...]}} of each order's latest check, in one query.

    Orders never checked map to {"outcome": None, "results": []}.
    """
    ids = list(order_ids)
    per_order: dict[int, list[ComplianceResult]] = {i: [] for i in ids}
    for r in ComplianceResult.objects.filter(order_id__in=ids).order_by("order_id", "pk"):
        per_order[r.order_id].append(r)
    out: dict[int, dict[str, Any]] = {}
    for order_id, rows in per_order.items():
        results = [result_dict(r) for r in latest_results(rows)]
        out[order_id] = {"outcome": fold_outcome(results), "results": results}
    return out


_SET_COLUMNS = ("id", *SET_COLUMNS)


def compliance_results_of(*, order_ids: Iterable[int]) -> dict[int, list[ComplianceResult]]:
    """{order id: its results}, the rows the `ComplianceResult` view lists for it, by id.

    One query over the stored sets (one row per check of an order) instead of the view's row
    per rule, and instances built as `compliance.services` builds a new order's: a page of 50
    orders with 12 results each made 600 model instances through Django's prefetch. The
    results of one check share one `checked_at` object, as in a new order's answer.
    """
    ids = list(order_ids)
    out: dict[int, list[ComplianceResult]] = {i: [] for i in ids}
    if not ids:
        return out
    sets = (
        ComplianceResultSet.objects.filter(order_id__in=ids)
        .order_by("id")
        .values_list(*_SET_COLUMNS)
    )
    for set_id, order_id, at, *columns in sets:
        rows = out[order_id]
        base = set_id << RESULT_ID_SHIFT
        # The view's id numbers a set's elements from 1 and hides deleted ones (no outcome).
        for n, (rule_id, name, rule_type, version, outcome, message, measured, limit) in enumerate(
            zip(*columns, strict=True), start=1
        ):
            if outcome is None:
                continue
            rows.append(
                model_from_row(
                    ComplianceResult,
                    {
                        "id": base | n,
                        "order_id": order_id,
                        "rule_id": rule_id,
                        "rule_name": name,
                        "rule_type": rule_type,
                        "rule_version": version,
                        "outcome": outcome,
                        "message": message,
                        "measured": measured,
                        "limit": limit,
                        "checked_at": at,
                    },
                )
            )
    return out


def compliance_results_attach(orders: Iterable[Order]) -> None:
    """Load these orders' `compliance_results` as `prefetch_related` would, in one query."""
    orders = list(orders)
    results = compliance_results_of(order_ids=[o.pk for o in orders])
    for order in orders:
        set_prefetched(order, "compliance_results", results[order.pk])


def override_queue(*, user: Any) -> QuerySet[Order]:
    """Orders awaiting a compliance override, oldest first, with their results (compliance only)."""
    if not has_role(user, "compliance"):
        return Order.objects.none()
    return (
        Order.objects.filter(status=OrderStatus.AWAITING_OVERRIDE)
        .select_related("account", "instrument", "created_by")
        .prefetch_related(
            Prefetch(
                "compliance_results",
                queryset=ComplianceResult.objects.order_by("pk"),
                to_attr="results",
            )
        )
        .order_by("created_at", "pk")
    )


def breach_reports_visible_to(*, user: Any) -> QuerySet[BreachReport]:
    """Breach reports: compliance, back office and administrators."""
    if not has_role(user, "compliance", "backoffice", "admin"):
        return BreachReport.objects.none()
    return BreachReport.objects.select_related("run_by").order_by("-run_at", "-pk")
