"""Celery tasks of compliance: thin wrappers that call one service each."""

from __future__ import annotations

from datetime import date

from celery import shared_task

from compliance.context import firm_now
from compliance.models import BreachReport


@shared_task(name="compliance.tasks.post_trade_sweep", ignore_result=True)
def post_trade_sweep(as_of: str | None = None, force: bool = False) -> int:
    """End-of-day post-trade compliance sweep (beat); returns the report id.

    Safe to run twice: a second scheduled run for the same day returns the first report unless
    `force` asks for a fresh one (holdings may have changed since).
    """
    from compliance.services import compliance_post_trade_sweep

    day = date.fromisoformat(as_of) if as_of else firm_now().date()
    if not force:
        existing = (
            BreachReport.objects.filter(as_of=day, run_by__isnull=True)
            .order_by("-run_at")
            .values_list("pk", flat=True)
            .first()
        )
        if existing is not None:
            return existing
    return compliance_post_trade_sweep(as_of=day).pk
