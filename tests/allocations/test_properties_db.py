"""Property tests through the database: fill_allocate against the engine and the book."""

from __future__ import annotations

import itertools
from decimal import Decimal

from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from allocations import engine
from allocations.models import Allocation, CashBalance, Position
from orders.models import Block
from tests import factories as f
from tests.allocations.support import allocated, fill, make_block

D = Decimal
_symbols = itertools.count(1)


@st.composite
def scenarios(draw):
    lot = draw(st.sampled_from([D(1), D(100)]))
    lots = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    quantities = [lot * n for n in lots]
    total = sum(quantities)
    filled = draw(st.integers(1, int(total // lot))) * lot
    cuts = sorted(
        draw(st.lists(st.integers(1, int(filled) - 1), max_size=5, unique=True))
        if filled > 1
        else []
    )
    bounds = [0, *cuts, int(filled)]
    sizes = [D(b - a) for a, b in itertools.pairwise(bounds) if b > a]
    prices = [D(draw(st.integers(900, 1100))) / 100 for _ in sizes]
    side = draw(st.sampled_from(["buy", "sell"]))
    return lot, quantities, list(zip(sizes, prices, strict=True)), side


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenarios())
# Found by hypothesis: a price move too small to change any cent must still re-price positions.
@example(
    case=(
        D(1),
        [D(1), D(1), D(8)],
        [
            (D(1), D(9)),
            (D(1), D("9.85")),
            (D(1), D("9.4")),
            (D(1), D("10.88")),
            (D(2), D("9.96")),
            (D(1), D(9)),
        ],
        "buy",
    )
)
def test_db_allocation_matches_engine_and_book_reconciles(case, desk, trader, broker):
    lot, quantities, fills, side = case
    with transaction.atomic():
        accounts = [
            f.AccountFactory(code=f"P{next(_symbols)}", desk=desk, short_selling_allowed=True)
            for _ in quantities
        ]
        results = []
        for path in (fills, list(reversed(fills))):
            instrument = f.InstrumentFactory(symbol=f"PX{next(_symbols)}", lot_size=lot)
            block, orders, placement = make_block(
                instrument=instrument,
                accounts=accounts,
                quantities=quantities,
                user=trader,
                side=side,
                broker=broker,
            )
            for qty, px in path:
                fill(placement, qty, px)
            filled = sum(q for q, _ in fills)
            targets = engine.allocate_cumulative(
                [
                    engine.AllocationTarget(
                        key=o.pk, requested=o.quantity, entry_seq=(o.created_at, o.pk)
                    )
                    for o in orders
                ],
                filled,
                lot,
            )
            sums = [allocated(o) for o in orders]
            # allocated sums are the engine's target; nobody gets more than asked; total is exact
            assert [s["quantity"] for s in sums] == [targets[o.pk] for o in orders]
            assert all(s["quantity"] <= o.quantity for s, o in zip(sums, orders, strict=True))
            assert sum(s["quantity"] for s in sums) == filled
            # positions and cash reconcile with the sums of allocations
            block.refresh_from_db()
            sign = 1 if side == "buy" else -1
            for account, s in zip(accounts, sums, strict=True):
                pos = Position.objects.filter(account=account, instrument=instrument).first()
                qty = pos.quantity if pos else D(0)
                assert qty == sign * s["quantity"]
                if qty:
                    assert (pos.avg_cost, pos.realised_pnl) == (block.avg_px, D(0))
            rows = Allocation.objects.filter(instrument=instrument)
            for account, s in zip(accounts, sums, strict=True):
                assert sum((r.net for r in rows if r.account_id == account.pk), D(0)) == s["net"]
            results.append(
                (
                    [
                        (s["quantity"], s["gross"], s["commission"], s["fees"], s["net"])
                        for s in sums
                    ],
                    block.avg_px,
                )
            )
        # split-independent: the same fills in another order end in the same state
        assert results[0] == results[1]
        # cash of each account is minus (buys) / plus (sells) the nets of both blocks
        for account in accounts:
            nets = sum(
                Allocation.objects.filter(account=account).values_list("net", flat=True), D(0)
            )
            pending = CashBalance.objects.get(account=account).pending if nets else D(0)
            assert pending == -sign * nets
        assert Block.objects.filter(pk=block.pk).exists()
        transaction.set_rollback(True)
