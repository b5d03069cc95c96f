"""Browser pages of the back office: settlement files, statements and breaks, reports.

The pages call the same services and selectors as the API; downloads go through the API's
download endpoint (session-authenticated), so every download is verified and audited once.
"""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from oms_site.errors import DomainError
from oms_site.roles import has_role
from settlement import reports, selectors, services
from settlement.tasks import firm_today

PAGE_ROWS = 200


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "403.html", status=403)


def _error_text(exc: DomainError) -> str:
    if isinstance(exc.errors, list) and exc.errors:
        rows = "; ".join(f"row {e['row']} {e['field']}: {e['detail']}" for e in exc.errors[:20])
        more = f" (and {len(exc.errors) - 20} more)" if len(exc.errors) > 20 else ""
        return f"{exc.detail} — {rows}{more}"
    return exc.detail


@login_required
def backoffice(request: HttpRequest) -> HttpResponse:
    """Settlement files (with download links), statement upload, breaks with a resolve form."""
    if not has_role(request.user, *selectors.BACK_OFFICE):
        return _forbidden(request)
    filters = {k: v for k, v in request.GET.items() if k in ("trade_date", "custodian")}
    files = selectors.settlement_file_list(user=request.user, filters=filters)[:PAGE_ROWS]
    status = request.GET.get("status", "open")
    breaks = selectors.break_list(user=request.user, filters={"status": status})[:PAGE_ROWS]
    context = {
        "files": files,
        "filters": filters,
        "breaks": breaks,
        "break_status": status,
        "statements": selectors.statements_visible_to(user=request.user)[:20],
        "runs": selectors.settlement_runs_visible_to(user=request.user)[:10],
        "today": firm_today().isoformat(),
        "reports": reports.report_names(),
        "default_tolerance": services.default_price_tolerance(),
    }
    return render(request, "settlement/backoffice.html", context)


@login_required
@require_POST
def run_now(request: HttpRequest) -> HttpResponse:
    """Generate a trade date's settlement files now."""
    if not has_role(request.user, *selectors.BACK_OFFICE):
        return _forbidden(request)
    try:
        day = dt.date.fromisoformat(request.POST.get("trade_date", ""))
    except ValueError:
        messages.error(request, "Trade date must be YYYY-MM-DD.")
        return redirect("backoffice")
    try:
        run = services.settlement_run(trade_date=day, user=request.user)
    except DomainError as exc:
        messages.error(request, _error_text(exc))
        return redirect("backoffice")
    outcomes = ", ".join(
        f"{c['custodian']}: {c['outcome']}" + (f" ({c['error']})" if c.get("error") else "")
        for c in run.summary.get("custodians", [])
    )
    level = messages.error if run.status == "failed" else messages.success
    level(request, f"Settlement run {run.pk} for {day}: {outcomes or 'no activity'}.")
    return redirect("backoffice")


@login_required
@require_POST
def statement_upload(request: HttpRequest) -> HttpResponse:
    """Upload a statement CSV and match it."""
    if not has_role(request.user, *selectors.BACK_OFFICE):
        return _forbidden(request)
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a statement file to upload.")
        return redirect("backoffice")
    try:
        statement = services.statement_upload(
            user=request.user,
            filename=upload.name or "statement.csv",
            content=upload.read(),
            source=request.POST.get("source", ""),
            price_tolerance=request.POST.get("price_tolerance") or None,
        )
    except DomainError as exc:
        messages.error(request, _error_text(exc))
        return redirect("backoffice")
    messages.success(
        request,
        f"Statement {statement.pk}: {statement.line_count} lines, "
        f"{statement.matched_count} matched, {statement.break_count} breaks.",
    )
    return redirect("backoffice")


@login_required
@require_POST
def break_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    """Resolve a break with a comment."""
    if not has_role(request.user, *selectors.BACK_OFFICE):
        return _forbidden(request)
    try:
        services.break_resolve(
            user=request.user, break_id=pk, comment=request.POST.get("comment", "")
        )
    except DomainError as exc:
        messages.error(request, f"Break {pk}: {_error_text(exc)}")
        return redirect("backoffice")
    messages.success(request, f"Break {pk} resolved.")
    return redirect("backoffice")


@login_required
def report_page(request: HttpRequest, name: str) -> HttpResponse:
    """A report as an HTML table, with CSV and XLSX download links."""
    if not has_role(request.user, *reports.REPORT_READERS):
        return _forbidden(request)
    raw = request.GET.get("date", "")
    try:
        day = dt.date.fromisoformat(raw) if raw else firm_today()
    except ValueError:
        day = firm_today()
        messages.error(request, "Date must be YYYY-MM-DD; showing today.")
    try:
        report = reports.report_build(user=request.user, name=name, day=day)
    except DomainError as exc:
        return render(request, "403.html", {"detail": exc.detail}, status=exc.status_code)
    context = {
        "report": report,
        "rows": [list(r.values()) for r in reports.json_rows(report)],
        "reports": reports.report_names(),
    }
    return render(request, "settlement/report.html", context)
