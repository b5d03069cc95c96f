"""fill_allocate creates the positions of accounts that get their first quantity in a later fill."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from allocations import services as allocation_services
from allocations.models import CashBalance, Position
from tests.allocations.support import allocated, block_100_200_300, fill

pytestmark = pytest.mark.django_db
D = Decimal


def test_accounts_first_filled_by_a_later_fill_get_their_positions(
    three_accounts, instrument, free_broker, trader, monkeypatch
):
    # given orders of 100/200/300 (lot 100) at a broker without commissions
    instrument.lot_size = D(100)
    instrument.save()
    _, orders, placement = block_100_200_300(three_accounts, instrument, trader, free_broker)
    a, b, c = three_accounts
    sent = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query is allocation_services._POSITIONS_DROP_SQL:
            sent.append(("drop", len(params[0].strip("{}").split(","))))
        elif isinstance(query, str) and "made AS (INSERT" in query:
            sent.append(("read, locking or making the positions", None))
        elif query in (
            allocation_services._POSITIONS_LOCK_SQL,
            allocation_services._POSITIONS_LOCK_OR_CREATE_SQL,
        ):
            sent.append(("positions", params[1]))
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    # when 100 fill at 20.00 (shares 16.7/33.3/50: only the third order gets the lot)
    fill(placement, 100, "20.00")
    # then the fill's read locked or made the three positions in one pass (no order was
    # filled before), and the two it made for the accounts that got nothing were dropped
    assert sent == [("read, locking or making the positions", None), ("drop", 2)]
    assert [allocated(o)["quantity"] for o in orders] == [D(0), D(0), D(100)]
    assert list(Position.objects.filter(instrument=instrument).values_list("account_id")) == [
        (c.pk,)
    ]
    # when 200 more fill at 21.00 (shares 50/100/150 of 300: one lot each, the tie to the
    # earlier)
    sent.clear()
    fill(placement, 200, "21.00")
    # then the read locked the third account's position and made the two others, one pass,
    # and nothing was locked (created) apart or dropped
    assert sent == [("read, locking or making the positions", None)]
    # and every account holds 100 at the block's average (2000 + 4200) / 300, rounded to 8
    # places, and owes its gross
    assert [allocated(o)["quantity"] for o in orders] == [D(100), D(100), D(100)]
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "avg_cost", "realised_pnl", "version"
        )
    ) == [
        (a.pk, D(100), D("20.66666667"), D(0), 2),
        (b.pk, D(100), D("20.66666667"), D(0), 2),
        (c.pk, D(100), D("20.66666667"), D(0), 3),
    ]
    assert sorted(CashBalance.objects.values_list("account_id", "settled", "pending")) == [
        (a.pk, D(0), D("-2066.67")),
        (b.pk, D(0), D("-2066.67")),
        (c.pk, D(0), D("-2066.67")),
    ]
