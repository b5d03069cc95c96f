"""Celery tasks of the allocations app: thin wrappers that call one service each."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from allocations.services import cash_settle_due


@shared_task(name="allocations.tasks.settle_cash", ignore_result=True)
def settle_cash(as_of: str | None = None) -> int:
    """Move pending cash to settled for allocations due on or before `as_of` (default: today).

    Safe to run twice: each allocation's cash moves once. "Today" is the firm's date.
    """
    if as_of:
        day = dt.date.fromisoformat(as_of)
    else:
        day = timezone.localtime(timezone.now(), ZoneInfo(settings.FIRM_TIME_ZONE)).date()
    return cash_settle_due(as_of=day)
