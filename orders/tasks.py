"""Celery tasks of the orders app: thin wrappers that call one service each."""

from __future__ import annotations

from celery import shared_task

from orders import marketdata


@shared_task(name="orders.tasks.market_data_tick", ignore_result=True)
def market_data_tick() -> int:
    """Move the simulated reference prices (beat, every few seconds)."""
    return marketdata.market_data_tick()


@shared_task(name="orders.tasks.expire_orders", ignore_result=True)
def expire_orders() -> int:
    """Expire DAY orders after the close and GTD orders after their date (beat, at the close)."""
    from orders.services.orders import orders_expire

    return orders_expire()


@shared_task(
    name="orders.tasks.route_order",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def route_order(order_id: int, user_id: int, broker_code: str | None = None) -> int | None:
    """Route one approved order (routing queue); safe to run twice: the second run is refused.

    Kept for messages queued before route requests: new asynchronous routes use route_request.
    """
    import logging

    from django.contrib.auth import get_user_model

    from oms_site.errors import DomainError
    from orders.services.routing import order_route

    user = get_user_model().objects.get(pk=user_id)
    try:
        placement = order_route(user=user, order_id=order_id, broker_code=broker_code)
    except DomainError as exc:
        # Already routed (a redelivered task), canceled meanwhile, or a kill switch: nothing
        # to retry; the order's state and audit trail say what happened.
        logging.getLogger("orders.tasks").warning(
            "route_order %s not routed: %s (%s)", order_id, exc.detail, exc.code
        )
        return None
    return placement.pk


@shared_task(
    name="orders.tasks.route_block",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def route_block(block_id: int, user_id: int, broker_code: str | None = None) -> int | None:
    """Route one open block (routing queue); safe to run twice (kept for queued messages)."""
    import logging

    from django.contrib.auth import get_user_model

    from oms_site.errors import DomainError
    from orders.services.routing import block_route

    user = get_user_model().objects.get(pk=user_id)
    try:
        placement = block_route(user=user, block_id=block_id, broker_code=broker_code)
    except DomainError as exc:
        logging.getLogger("orders.tasks").warning(
            "route_block %s not routed: %s (%s)", block_id, exc.detail, exc.code
        )
        return None
    return placement.pk


@shared_task(
    name="orders.tasks.route_request",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def route_request(request_id: int) -> int | None:
    """Run one accepted asynchronous route (routing queue); safe to run twice: it routes once."""
    from orders.services.routing import route_request_run

    request = route_request_run(request_id=request_id)
    return None if request is None else request.placement_id


@shared_task(name="orders.tasks.route_requests_resweep", ignore_result=True)
def route_requests_resweep() -> int:
    """Re-publish asynchronous routes still pending after the retry delay (beat, every 10 s)."""
    from orders.services.routing import route_requests_resweep as resweep

    return resweep()
