"""Browser pages of compliance officers: the override queue and post-trade reports."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from compliance.selectors import (
    breach_reports_visible_to,
    latest_results,
    override_queue,
    result_dict,
)
from compliance.services import breach_report_csv, compliance_post_trade_sweep, order_override
from oms_site.errors import DomainError
from oms_site.roles import has_role


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "403.html", status=403)


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """Orders awaiting a compliance override, with their rule results and an override form."""
    if not has_role(request.user, "compliance"):
        return _forbidden(request)
    orders = list(override_queue(user=request.user)[:500])
    rows = [
        {
            "order": o,
            "results": [result_dict(r) for r in latest_results(o.results)],
            "own": o.created_by_id == request.user.pk,
        }
        for o in orders
    ]
    reports = list(breach_reports_visible_to(user=request.user)[:20])
    return render(request, "compliance/queue.html", {"rows": rows, "reports": reports})


@login_required
@require_POST
def override(request: HttpRequest, pk: int) -> HttpResponse:
    """Form target: release one warned order with the officer's written reason."""
    if not has_role(request.user, "compliance"):
        return _forbidden(request)
    try:
        order = order_override(
            user=request.user, order_id=pk, reason=request.POST.get("reason", "")
        )
    except DomainError as exc:
        messages.error(request, f"Order {pk}: {exc.detail}")
    else:
        messages.success(request, f"Order {order.pk} released (version {order.version}).")
    return redirect("compliance-queue")


@login_required
@require_POST
def run_report(request: HttpRequest) -> HttpResponse:
    """Form target: run the post-trade sweep now."""
    if not has_role(request.user, "compliance"):
        return _forbidden(request)
    report = compliance_post_trade_sweep(user=request.user)
    messages.success(request, f"Post-trade report {report.pk}: {report.breach_count} breach(es).")
    return redirect("compliance-queue")


@login_required
def report_download(request: HttpRequest, pk: int) -> HttpResponse:
    """A breach report as CSV (compliance, back office, administrators)."""
    if not has_role(request.user, "compliance", "backoffice", "admin"):
        return _forbidden(request)
    report = get_object_or_404(breach_reports_visible_to(user=request.user), pk=pk)
    response = HttpResponse(
        breach_report_csv(report=report), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="compliance-breaches-{report.as_of.isoformat()}-{report.pk}.csv"'
    )
    return response
