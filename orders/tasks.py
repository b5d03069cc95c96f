"""Celery tasks of the orders app: thin wrappers that call one service each."""

from __future__ import annotations

from celery import shared_task

from orders import marketdata


@shared_task(name="orders.tasks.market_data_tick", ignore_result=True)
def market_data_tick() -> int:
    """Move the simulated reference prices (beat, every few seconds)."""
    return marketdata.market_data_tick()
