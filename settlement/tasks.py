"""Celery tasks of the settlement app: thin wrappers that call one service each."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from settlement.services import settlement_run


def firm_today(now: dt.datetime | None = None) -> dt.date:
    """Today's date on the firm's clock (settings.FIRM_TIME_ZONE), not UTC's."""
    moment = now or timezone.now()
    return moment.astimezone(zoneinfo.ZoneInfo(settings.FIRM_TIME_ZONE)).date()


# acks_late + reject_on_worker_lost: a worker that dies mid-run leaves the task on the queue to be
# run again, which is safe because settlement_run is idempotent (an unchanged day writes nothing,
# a half-written staging file never becomes a version).
@shared_task(
    name="settlement.tasks.end_of_day_settlement",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def end_of_day_settlement(trade_date: str | None = None) -> dict:
    """Produce the day's settlement files (trade date = today in FIRM_TIME_ZONE by default)."""
    day = dt.date.fromisoformat(trade_date) if trade_date else firm_today()
    run = settlement_run(trade_date=day, user=None)
    return {"run": run.pk, "status": run.status, "outcomes": run.summary.get("outcomes", {})}
