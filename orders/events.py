"""Blotter events about orders and executions, published after commit to entitled groups."""

from __future__ import annotations

from typing import Any

from oms_site.realtime import groups_for_account, publish_on_commit


def order_payload(order: Any) -> dict[str, Any]:
    """The JSON-safe blotter row of an order (built inside the transaction)."""
    return {
        "id": order.pk,
        "account": order.account.code,
        "instrument": order.instrument.symbol,
        "side": order.side,
        "quantity": order.quantity,
        "order_type": order.order_type,
        "limit_price": order.limit_price,
        "stop_price": order.stop_price,
        "time_in_force": order.time_in_force,
        "status": order.status,
        "cum_qty": order.cum_qty,
        "leaves_qty": order.leaves_qty,
        "avg_px": order.avg_px,
        "compliance_outcome": order.compliance_outcome,
        "block": order.block_id,
        "version": order.version,
        "created_by": order.created_by.get_username() if order.created_by_id else None,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
    }


def publish_order_updated(order: Any, *, event_type: str = "order.updated") -> None:
    """Send the order's new state to its account, desk and firm groups after commit."""
    publish_on_commit(
        event_type=event_type,
        order_id=order.pk,
        version=order.version,
        data=order_payload(order),
        groups=groups_for_account(order.account_id, order.account.desk_id),
    )


def publish_execution_created(order: Any, execution_data: dict[str, Any]) -> None:
    """Send a fill of an order (with the order's version after the fill) after commit."""
    publish_on_commit(
        event_type="execution.created",
        order_id=order.pk,
        version=order.version,
        data={"execution": execution_data, "order": order_payload(order)},
        groups=groups_for_account(order.account_id, order.account.desk_id),
    )


def publish_orders_updated(orders: Any, *, event_type: str = "order.updated") -> None:
    """Like publish_order_updated for many orders, sent in one hop after commit (baskets)."""
    from oms_site.realtime import publish_many_on_commit

    publish_many_on_commit(
        events=[
            {
                "event_type": event_type,
                "order_id": o.pk,
                "version": o.version,
                "data": order_payload(o),
                "groups": groups_for_account(o.account_id, o.account.desk_id),
            }
            for o in orders
        ]
    )
