"""Helpers for allocation tests: blocks of orders, fills applied the way execution_apply does."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.db import transaction

from allocations.models import Allocation
from allocations.services import fill_allocate
from orders.models import Block, Execution, Order, Placement
from tests import factories as f

TRADE_DATE = dt.date(2026, 11, 20)  # a Friday; T+1 on XNYS settles Monday 2026-11-23
SETTLE_DATE = dt.date(2026, 11, 23)

_exec_ids = itertools.count(1)
_cl_ord_ids = itertools.count(1)


def make_block(
    *,
    instrument: Any,
    accounts: Sequence[Any],
    quantities: Sequence[Decimal | int],
    user: Any,
    side: str = "buy",
    broker: Any = None,
) -> tuple[Block, list[Order], Placement]:
    """A block of one order per (account, quantity), entered in that order, and a placement."""
    total = sum((Decimal(q) for q in quantities), Decimal(0))
    block = Block.objects.create(
        instrument=instrument,
        side=side,
        order_type="market",
        quantity=total,
        status="routed",
        created_by=user,
    )
    orders = [
        Order.objects.create(
            account=account,
            instrument=instrument,
            side=side,
            quantity=Decimal(q),
            leaves_qty=Decimal(q),
            order_type="market",
            status="working",
            created_by=user,
            block=block,
        )
        for account, q in zip(accounts, quantities, strict=True)
    ]
    placement = Placement.objects.create(
        block=block,
        broker=broker or f.BrokerFactory(),
        cl_ord_id=f"T{next(_cl_ord_ids)}-{block.pk}",
        quantity=total,
        status="working",
    )
    return block, orders, placement


def block_100_200_300(
    accounts: Sequence[Any], instrument: Any, user: Any, broker: Any
) -> tuple[Block, list[Order], Placement]:
    """The usual block of the allocation tests: buy orders of 100, 200 and 300 (one per account,
    in that order) and a placement with the broker."""
    return make_block(
        instrument=instrument,
        accounts=accounts,
        quantities=[100, 200, 300],
        user=user,
        broker=broker,
    )


def make_lone_order(*, account: Any, instrument: Any, user: Any, quantity: int = 100) -> Order:
    """A working market order to buy, not in a block."""
    return Order.objects.create(
        account=account,
        instrument=instrument,
        side="buy",
        quantity=Decimal(quantity),
        leaves_qty=Decimal(quantity),
        order_type="market",
        status="working",
        created_by=user,
    )


def make_order_placement(*, order: Order, broker: Any = None) -> Placement:
    """A placement of a lone order (not in a block)."""
    return Placement.objects.create(
        order=order,
        broker=broker or f.BrokerFactory(),
        cl_ord_id=f"T{next(_cl_ord_ids)}-o{order.pk}",
        quantity=order.quantity,
        status="working",
    )


def new_execution(
    placement: Placement, qty: Decimal | int | str, px: Decimal | str, *, trade_date=TRADE_DATE
) -> Execution:
    """An Execution row for a fill of the placement (what execution_apply saves)."""
    side = placement.block.side if placement.block_id else placement.order.side
    instrument_id = (
        placement.block.instrument_id if placement.block_id else placement.order.instrument_id
    )
    return Execution.objects.create(
        session_key="TEST",
        exec_id=f"E{next(_exec_ids)}",
        placement=placement,
        block_id=placement.block_id,
        order_id=placement.order_id,
        broker_id=placement.broker_id,
        instrument_id=instrument_id,
        side=side,
        exec_type="trade",
        ord_status="partially_filled",
        last_qty=Decimal(qty),
        last_px=Decimal(px),
        trade_date=trade_date,
    )


def fill(
    placement: Placement, qty: Decimal | int | str, px: Decimal | str, *, trade_date=TRADE_DATE
) -> list[Allocation]:
    """Save a fill and allocate it in one transaction, as execution_apply does."""
    with transaction.atomic():
        execution = new_execution(placement, qty, px, trade_date=trade_date)
        return fill_allocate(execution=execution)


def allocated(order: Order) -> dict[str, Decimal]:
    """Sums of an order's allocation rows."""
    rows = list(Allocation.objects.filter(order=order))
    return {
        "quantity": sum((r.quantity for r in rows), Decimal(0)),
        "gross": sum((r.gross for r in rows), Decimal(0)),
        "commission": sum((r.commission for r in rows), Decimal(0)),
        "fees": sum((r.fees for r in rows), Decimal(0)),
        "net": sum((r.net for r in rows), Decimal(0)),
    }
