"""Many fills of one block applied by parallel threads: exact totals, no deadlock (PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from allocations import engine
from allocations.models import Allocation, CashBalance, Position
from allocations.services import fill_allocate
from oms_site.audit import audit_verify
from orders.models import Block
from tests import factories as f
from tests.allocations.support import allocated, make_block, new_execution

D = Decimal
THREADS = 8
FILLS = 48
ACCOUNTS = 25


def _fill_in_threads(chunks: list[list[tuple[Any, Decimal, Decimal]]]) -> list[BaseException]:
    """Each chunk's fills (placement, quantity, price) applied in order by a thread of its own,
    all threads released at once; what any of them raised."""
    start = threading.Barrier(len(chunks))
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[Any, Decimal, Decimal]]) -> None:
        try:
            start.wait()
            for placement, qty, px in chunk:
                with transaction.atomic():
                    fill_allocate(execution=new_execution(placement, qty, px))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    with ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(worker, chunks))
    return errors


@pytest.mark.django_db(transaction=True)
def test_parallel_fills_of_one_block_exact_totals(role_groups):
    # given a block of 25 orders of 100..2500 (lot 100) and a commission schedule
    trader = f.UserFactory(username="trader_c", role="Trader")
    desk = f.DeskFactory(code="CONC")
    instrument = f.InstrumentFactory(symbol="CONC", lot_size=D(100))
    broker = f.BrokerFactory(code="CB")
    accounts = [f.AccountFactory(code=f"C{i:02d}", desk=desk) for i in range(ACCOUNTS)]
    quantities = [D(100) * (i + 1) for i in range(ACCOUNTS)]
    block, orders, placement = make_block(
        instrument=instrument, accounts=accounts, quantities=quantities, user=trader, broker=broker
    )
    fills = [(D(100) * (1 + i % 3), D("10.00") + D(i % 7) / 100) for i in range(FILLS)]
    # when 8 threads apply 48 fills at once
    errors = _fill_in_threads(
        [[(placement, q, p) for q, p in fills[i::THREADS]] for i in range(THREADS)]
    )

    # then nothing failed (no deadlock, no serialization error)
    assert errors == []
    filled = sum(q for q, _ in fills)
    notional = sum(q * p for q, p in fills)
    block.refresh_from_db()
    avg = (notional / filled).quantize(D("0.00000001"))
    assert (block.cum_qty, block.avg_px, block.version) == (filled, avg, 1 + FILLS)
    # and each order holds exactly its target for the total, at the block's average price
    targets = engine.allocate_cumulative(
        [
            engine.AllocationTarget(key=o.pk, requested=o.quantity, entry_seq=(o.created_at, o.pk))
            for o in orders
        ],
        filled,
        D(100),
    )
    for order, account in zip(orders, accounts, strict=True):
        sums = allocated(order)
        assert sums["quantity"] == targets[order.pk]
        assert sums["gross"] == (targets[order.pk] * avg).quantize(D("0.01"))
        order.refresh_from_db()
        assert (order.cum_qty, order.avg_px if order.cum_qty else avg) == (targets[order.pk], avg)
        pos = Position.objects.filter(account=account, instrument=instrument).first()
        assert (pos.quantity if pos else D(0)) == targets[order.pk]
        cash = CashBalance.objects.filter(account=account).first()
        assert (cash.pending if cash else D(0)) == -sums["net"]
    assert sum(Allocation.objects.values_list("quantity", flat=True)) == filled
    # and the audit chain of the block is complete and unbroken
    assert audit_verify(streams=[f"block:{block.pk}:allocations"]) == []
    assert Block.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_parallel_fills_of_blocks_sharing_accounts_and_cash_exact_totals(role_groups):
    # given three blocks in three instruments of one currency over the same 12 accounts, their
    # orders created in different account orders (so order ids and account ids do not agree)
    trader = f.UserFactory(username="trader_x", role="Trader")
    desk = f.DeskFactory(code="XCON")
    broker = f.BrokerFactory(code="XB")
    accounts = [f.AccountFactory(code=f"X{i:02d}", desk=desk) for i in range(12)]
    orderings = [accounts, accounts[::-1], accounts[6:] + accounts[:6]]
    placements = []
    for n, ordering in enumerate(orderings):
        instrument = f.InstrumentFactory(symbol=f"XC{n}", lot_size=D(100), currency="USD")
        _, _, placement = make_block(
            instrument=instrument,
            accounts=ordering,
            quantities=[D(1000)] * len(ordering),
            user=trader,
            broker=broker,
        )
        placements.append(placement)
    # (each thread fills every block in turn, starting from a different one)
    fills = [
        (placements[(t + i) % 3], D(300), D("10.00") + D(i % 5) / 100)
        for t in range(6)
        for i in range(6)
    ]
    # when six threads apply their fills at once
    errors = _fill_in_threads([fills[i * 6 : (i + 1) * 6] for i in range(6)])

    # then nothing failed (no deadlock), and each account's one balance holds exactly minus the
    # net of its allocation rows across the three blocks, moved once per fill that booked it
    assert errors == []
    assert sum(Allocation.objects.values_list("quantity", flat=True)) == D(300) * len(fills)
    for account in accounts:
        rows = Allocation.objects.filter(account=account)
        net = sum(r.net for r in rows)
        cash = CashBalance.objects.get(account=account)
        assert (cash.currency, cash.settled, cash.pending) == ("USD", D(0), -net)
        moved = len({r.execution_id for r in rows if r.net})
        assert cash.version == moved
    for placement in placements:
        assert audit_verify(streams=[f"block:{placement.block_id}:allocations"]) == []
