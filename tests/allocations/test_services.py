"""fill_allocate, cash_settle_due: exact rows, positions, cash and audit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from allocations.models import Allocation, CashBalance, Position
from allocations.services import cash_settle_due, fill_allocate
from oms_site.models import AuditEvent
from orders.models import Block, Order, Placement
from tests import factories as f
from tests.allocations.support import (
    SETTLE_DATE,
    TRADE_DATE,
    allocated,
    block_100_200_300,
    fill,
    make_block,
    make_lone_order,
    make_order_placement,
    new_execution,
)

D = Decimal


def _rows(order: Order) -> list[tuple[str, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal]]:
    return [
        (r.kind, r.quantity, r.price, r.gross, r.commission, r.fees, r.net)
        for r in Allocation.objects.filter(order=order).order_by("pk")
    ]


def _position(account: Any, instrument: Any) -> tuple[Decimal, Decimal, Decimal]:
    p = Position.objects.get(account=account, instrument=instrument)
    return p.quantity, p.avg_cost, p.realised_pnl


def _cash(account: Any) -> tuple[Decimal, Decimal]:
    c = CashBalance.objects.get(account=account, currency="USD")
    return c.settled, c.pending


def test_block_of_three_two_fills_exact(three_accounts, instrument, broker, trader):
    # given a block of 100/200/300 (lot 1) at a broker charging 10 bps + 0.01/sh, min 5, fees 0.5
    block, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    a, b, c = orders
    # when 150 fill at 10.00
    first = fill(placement, 150, "10.00")
    # then each order gets its exact share at 10.00, with a minimum ticket each
    assert [(r.order_id, r.quantity) for r in first] == [
        (a.pk, D(25)),
        (b.pk, D(50)),
        (c.pk, D(75)),
    ]
    assert _rows(a) == [("fill", D(25), D(10), D("250.00"), D("5.00"), D("0.01"), D("255.01"))]
    assert _rows(b) == [("fill", D(50), D(10), D("500.00"), D("5.00"), D("0.03"), D("505.03"))]
    assert _rows(c) == [("fill", D(75), D(10), D("750.00"), D("5.00"), D("0.04"), D("755.04"))]
    # when 450 more fill at 10.10 (block average (1500 + 4545) / 600 = 10.075)
    fill(placement, 450, "10.10")
    # then the second rows re-price the first ones and add the new quantity at 10.075
    assert _rows(a)[1] == (
        "fill",
        D(75),
        D("10.075"),
        D("757.50"),
        D("0.00"),
        D("0.04"),
        D("757.54"),
    )
    assert _rows(b)[1] == (
        "fill",
        D(150),
        D("10.075"),
        D("1515.00"),
        D("0.00"),
        D("0.07"),
        D("1515.07"),
    )
    assert _rows(c)[1] == (
        "fill",
        D(225),
        D("10.075"),
        D("2272.50"),
        D("1.02"),
        D("0.11"),
        D("2273.63"),
    )
    # and the sums are each order's whole quantity at the block's average price
    assert allocated(a) == {
        "quantity": D(100),
        "gross": D("1007.50"),
        "commission": D("5.00"),
        "fees": D("0.05"),
        "net": D("1012.55"),
    }
    assert allocated(b) == {
        "quantity": D(200),
        "gross": D("2015.00"),
        "commission": D("5.00"),
        "fees": D("0.10"),
        "net": D("2020.10"),
    }
    assert allocated(c) == {
        "quantity": D(300),
        "gross": D("3022.50"),
        "commission": D("6.02"),
        "fees": D("0.15"),
        "net": D("3028.67"),
    }
    # and positions are at the average price, pending cash is minus the net
    for account, qty in zip(three_accounts, (100, 200, 300), strict=True):
        assert _position(account, instrument) == (D(qty), D("10.075"), D(0))
    assert [_cash(acct) for acct in three_accounts] == [
        (D(0), D("-1012.55")),
        (D(0), D("-2020.10")),
        (D(0), D("-3028.67")),
    ]
    # and orders and the block carry the cumulative quantity and average price
    block.refresh_from_db()
    assert (block.cum_qty, block.avg_px, block.version) == (D(600), D("10.075"), 3)
    for order, qty in zip(orders, (100, 200, 300), strict=True):
        order.refresh_from_db()
        assert (order.cum_qty, order.leaves_qty, order.avg_px, order.version, order.status) == (
            D(qty),
            D(0),
            D("10.075"),
            3,
            "working",
        )
    # and every row has its settlement date and an audit event in the block's stream
    assert set(Allocation.objects.values_list("trade_date", "settlement_date")) == {
        (TRADE_DATE, SETTLE_DATE)
    }
    # (one event per fill, listing every row that fill booked)
    events = AuditEvent.objects.filter(stream=f"block:{block.pk}:allocations").order_by("seq")
    assert {(e.action, e.object_type) for e in events} == {("allocation.created", "execution")}
    assert [r["id"] for e in events for r in e.after["allocations"]] == list(
        Allocation.objects.order_by("pk").values_list("pk", flat=True)
    )
    first = events[0].after["allocations"][0]
    assert D(first["quantity"]) == D(25) and first["net"] == "255.01"


def test_split_fills_end_in_the_same_state_as_one_fill(three_accounts, instrument, broker, trader):
    # given two identical blocks (lot 100), one filled 150 + 450, the other 600 at once
    instrument.lot_size = D(100)
    instrument.save()
    _, split_orders, p1 = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(p1, 150, "10.00")
    fill(p1, 450, "10.10")
    other = f.InstrumentFactory(symbol="OTHER", lot_size=D(100))
    _, whole_orders, p2 = make_block(
        instrument=other,
        accounts=three_accounts,
        quantities=[100, 200, 300],
        user=trader,
        broker=broker,
    )
    fill(p2, 600, "10.075")
    # then the sums of rows per order are identical
    assert [allocated(o) for o in split_orders] == [allocated(o) for o in whole_orders]


def test_lot_rounding_and_entry_time_tiebreak(three_accounts, instrument, free_broker, trader):
    # given orders of 100/200/300 (lot 100) entered in that order
    instrument.lot_size = D(100)
    instrument.save()
    _, orders, placement = block_100_200_300(three_accounts, instrument, trader, free_broker)
    # when 300 fill: shares 50/100/150, floors 0/100/100, the leftover lot ties 50/50
    fill(placement, 300, "20.00")
    # then the earlier-entered first order wins the tie
    assert [allocated(o)["quantity"] for o in orders] == [D(100), D(100), D(100)]


def test_reversal_takes_back_and_unwinds_position_and_cash(
    three_accounts, instrument, free_broker, trader
):
    # given orders 100/300/300 (lot 100), free broker, filled 300 at 10.00 → 100/100/100
    instrument.lot_size = D(100)
    instrument.save()
    _, orders, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[100, 300, 300],
        user=trader,
        broker=free_broker,
    )
    fill(placement, 300, "10.00")
    a, b, _c = orders
    assert [allocated(o)["quantity"] for o in orders] == [D(100), D(100), D(100)]
    # when 100 more fill at 11.00 (400 allocates 0/200/200: the Alabama paradox)
    rows = fill(placement, 100, "11.00")
    # then the first account's 100 is reversed at the new average 10.25 and re-priced away
    reversal = next(r for r in rows if r.order_id == a.pk)
    first = Allocation.objects.filter(order=a).order_by("pk").first()
    assert (reversal.kind, reversal.quantity, reversal.price, reversal.gross, reversal.net) == (
        "reversal",
        D(-100),
        D("10.25"),
        D("-1000.00"),
        D("-1000.00"),
    )
    assert reversal.reversal_of_id == first.pk
    assert [(r.kind, r.quantity, r.gross) for r in rows if r.order_id == b.pk] == [
        ("fill", D(100), D("1050.00"))
    ]
    # and the first account is flat again with no P&L and no cash moved
    assert _position(three_accounts[0], instrument) == (D(0), D(0), D(0))
    assert _cash(three_accounts[0]) == (D(0), D("0.00"))
    # and the others hold 200 at 10.25
    assert _position(three_accounts[1], instrument) == (D(200), D("10.25"), D(0))
    assert _cash(three_accounts[2]) == (D(0), D("-2050.00"))


def test_reprice_row_when_only_the_price_moves(three_accounts, instrument, free_broker, trader):
    # given orders 100/100 (lot 100) of which 100 filled at 10 → the first order has it
    instrument.lot_size = D(100)
    instrument.save()
    _, _orders, placement = make_block(
        instrument=instrument,
        accounts=three_accounts[:2],
        quantities=[100, 100],
        user=trader,
        broker=free_broker,
    )
    fill(placement, 100, "10.00")
    # when the other 100 fill at 12 (average 11)
    rows = fill(placement, 100, "12.00")
    # then the first order gets a re-price row (quantity 0, +100 gross), the second a fill
    assert [(r.kind, r.quantity, r.price, r.gross) for r in rows] == [
        ("reprice", D(0), D(11), D("100.00")),
        ("fill", D(100), D(11), D("1100.00")),
    ]
    assert _position(three_accounts[0], instrument) == (D(100), D(11), D(0))


def test_sell_short_when_the_account_allows(pm, desk, instrument, free_broker, trader):
    # given an account allowed to sell short, with no position
    account = f.AccountFactory(code="SHORTY", desk=desk, short_selling_allowed=True)
    _, _orders, placement = make_block(
        instrument=instrument,
        accounts=[account],
        quantities=[100],
        user=trader,
        side="sell_short",
        broker=free_broker,
    )
    # when 100 are sold short at 20 then bought back by another block at 18
    fill(placement, 100, "20.00")
    assert _position(account, instrument) == (D(-100), D(20), D(0))
    assert _cash(account) == (D(0), D("2000.00"))
    _, _, cover = make_block(
        instrument=instrument,
        accounts=[account],
        quantities=[100],
        user=trader,
        side="buy_to_cover",
        broker=free_broker,
    )
    fill(cover, 100, "18.00")
    # then the position is flat with 200 realised
    assert _position(account, instrument) == (D(0), D(0), D(200))
    assert _cash(account) == (D(0), D("200.00"))


def test_short_beyond_holdings_is_flagged_when_not_allowed(
    pm, desk, instrument, free_broker, trader
):
    # given an account that may not sell short and holds nothing
    account = f.AccountFactory(code="LONGONLY", desk=desk)
    block, _, placement = make_block(
        instrument=instrument,
        accounts=[account],
        quantities=[50],
        user=trader,
        side="sell",
        broker=free_broker,
    )
    # when a sell fills (a fill happened at the market: it is booked, not refused)
    fill(placement, 50, "10.00")
    # then the position is short and the audit event flags it for compliance
    assert _position(account, instrument) == (D(-50), D(10), D(0))
    event = AuditEvent.objects.get(stream=f"block:{block.pk}:allocations")
    assert event.meta["short_not_allowed"] == [account.pk]


def test_sell_realises_pnl_against_the_held_position(account, instrument, free_broker, trader):
    # given 1,000 held at 100 (the account fixture has 1,000,000 settled cash)
    f.PositionFactory(account=account, instrument=instrument, quantity=D(1000), avg_cost=D(100))
    _, _, placement = make_block(
        instrument=instrument,
        accounts=[account],
        quantities=[400],
        user=trader,
        side="sell",
        broker=free_broker,
    )
    # when 400 are sold at 110 in two fills of 200 at 105 and 115
    fill(placement, 200, "105")
    fill(placement, 200, "115")
    # then 400 × (110 − 100) is realised and 44,000 is pending in
    assert _position(account, instrument) == (D(600), D(100), D(4000))
    assert _cash(account) == (D("1000000.00"), D("44000.00"))


def test_single_order_placement(account, instrument, broker, trader):
    # given a lone order (no block) for 100
    order = make_lone_order(account=account, instrument=instrument, user=trader)
    placement = make_order_placement(order=order, broker=broker)
    # when it fills 40 at 50 and 60 at 51
    fill(placement, 40, "50")
    fill(placement, 60, "51")
    # then it holds 100 at 50.60 with one minimum ticket
    order.refresh_from_db()
    assert (order.cum_qty, order.leaves_qty, order.avg_px) == (D(100), D(0), D("50.6"))
    assert allocated(order) == {
        "quantity": D(100),
        "gross": D("5060.00"),
        "commission": D("6.06"),
        "fees": D("0.25"),
        "net": D("5066.31"),
    }
    assert Allocation.objects.filter(order=order, block__isnull=True).count() == 2


def test_fill_allocate_needs_the_callers_transaction(three_accounts, instrument, broker, trader):
    _, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[1, 1, 1],
        user=trader,
        broker=broker,
    )
    execution = new_execution(placement, 1, "1")
    # pytest-django's transaction is open here; a bare call outside any is refused
    with transaction.atomic():
        assert len(fill_allocate(execution=execution)) == 1


def test_overfill_is_a_conflict(three_accounts, instrument, broker, trader):
    from oms_site.errors import ConflictError

    _, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts,
        quantities=[1, 1, 1],
        user=trader,
        broker=broker,
    )
    fill(placement, 3, "1")
    with pytest.raises(ConflictError):
        fill(placement, 1, "1")


def test_constant_query_count_regardless_of_accounts(
    pm, desk, instrument, free_broker, trader, django_assert_max_num_queries
):
    # given blocks of 5 and of 60 accounts
    counts = []
    for n, symbol in ((5, "Q5"), (60, "Q60")):
        inst = f.InstrumentFactory(symbol=symbol)
        accounts = [f.AccountFactory(code=f"{symbol}-{i}", desk=desk) for i in range(n)]
        _, _, placement = make_block(
            instrument=inst,
            accounts=accounts,
            quantities=[100] * n,
            user=trader,
            broker=free_broker,
        )
        fill(placement, 10 * n, "10")
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            fill(placement, 10 * n, "11")
        counts.append(len(ctx.captured_queries))
    # then the number of queries does not grow with the number of accounts
    assert counts[0] == counts[1]
    assert counts[1] <= 24  # includes the test's own savepoint and Execution insert


def test_cash_settles_on_settlement_date_once(three_accounts, instrument, broker, trader):
    # given the exact block above, filled on Friday 2026-11-20 (settles Monday 2026-11-23)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 150, "10.00")
    fill(placement, 450, "10.10")
    # when settlement runs on Sunday nothing moves
    assert cash_settle_due(as_of=D and SETTLE_DATE.replace(day=22)) == 0
    # when it runs on Monday, then twice
    assert cash_settle_due(as_of=SETTLE_DATE) == 6
    assert cash_settle_due(as_of=SETTLE_DATE) == 0
    # then pending moved to settled exactly once
    assert [_cash(a) for a in three_accounts] == [
        (D("-1012.55"), D("0.00")),
        (D("-2020.10"), D("0.00")),
        (D("-3028.67"), D("0.00")),
    ]
    assert Allocation.objects.filter(cash_settled=False).count() == 0
    assert AuditEvent.objects.filter(action="cash.settled").count() == 3


def test_block_version_only_is_touched_by_fill(three_accounts, instrument, broker, trader):
    block, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 60, "10")
    block.refresh_from_db()
    assert (Block.objects.get(pk=block.pk).status, block.cum_qty) == ("routed", D(60))


def test_settle_cash_task_calls_the_service(three_accounts, instrument, broker, trader):
    from allocations.tasks import settle_cash

    _, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts[:1],
        quantities=[100],
        user=trader,
        broker=broker,
    )
    fill(placement, 100, "10.00")
    assert settle_cash("2026-11-20") == 0
    assert settle_cash(SETTLE_DATE.isoformat()) == 1
    assert settle_cash(SETTLE_DATE.isoformat()) == 0
    assert _cash(three_accounts[0]) == (D("-1005.05"), D("0.00"))


@pytest.mark.django_db
def test_array_literals_carry_decimals_exactly():
    # given values as the services send them: Decimals (some printing with an exponent),
    # ids, kinds and NULLs joined into PostgreSQL array literals
    from allocations.services import _array
    from oms_site.rows import raw_cursor

    decimals = [D("6E+2"), D("1.05E+1"), D("-0E-8"), D("-12.34000000"), D("0.00000001"), None]
    # when PostgreSQL parses them
    with transaction.atomic(), raw_cursor() as cursor:
        cursor.execute(
            "SELECT %s::numeric[], %s::bigint[], %s::varchar[]",
            [_array(decimals), _array([1, None, 3]), _array(["fill", "reversal", "reprice"])],
        )
        numbers, ids, kinds = cursor.fetchone()
    # then every value comes back exactly
    assert (str(D("6E+2")), _array(decimals)) == (
        "6E+2",
        "{6E+2,10.5,-0E-8,-12.34000000,1E-8,NULL}",
    )
    assert numbers == [D(600), D("10.5"), D(0), D("-12.34"), D("0.00000001"), None]
    assert ids == [1, None, 3]
    assert kinds == ["fill", "reversal", "reprice"]


def test_a_fills_audit_payload_text_is_the_canonical_json_of_its_dict() -> None:
    # given rows with every kind, negative, exponent and zero decimals and big ids
    import datetime as dt

    from allocations.services import _allocations_payload
    from oms_site.audit import canonical_text

    rows = [
        (11, 21, "fill", D(100), D("1001.50"), D("1.00"), D(0), D("-1002.50"), D(100)),
        (12, 22, "reversal", D(-100), D("-1E+3"), D("0E-8"), D("0.01"), D("999.99"), D(0)),
        (2**40, 2**41, "reprice", D(0), D("0.00000001"), D(-1), D("1.5E-7"), D(3), D(5)),
    ]
    ids = [10**12, 10**12 + 1, 10**12 + 2]
    shared = {
        "price": D("10.12345678"),
        "trade_date": dt.date(2026, 11, 20),
        "settlement_date": dt.date(2026, 11, 23),
        "method": "pro_rata",
    }
    # when the payload is written from the rows' texts
    texts = [list(map(str, column)) for column in zip(*rows, strict=True)]
    text = _allocations_payload(shared, list(map(str, ids)), texts)
    # then it is exactly the canonical JSON of the dict the fill used to build
    expected = dict(shared)
    expected["allocations"] = [
        {
            "id": pk,
            "order": row[0],
            "account": row[1],
            "kind": row[2],
            "quantity": str(row[3]),
            "cum_quantity": str(row[8]),
            "gross": str(row[4]),
            "commission": str(row[5]),
            "fees": str(row[6]),
            "net": str(row[7]),
        }
        for pk, row in zip(ids, rows, strict=True)
    ]
    assert text == canonical_text(expected)


def test_a_fills_row_texts_are_each_values_str_by_column() -> None:
    # given rows as a fill makes them: targets shared by orders given the same object, one
    # target of equal value printing otherwise (100 and 1E+2), and the money priced once
    # per value (the same tuple for both)
    from allocations.services import _row_texts

    hundred, other_hundred, fifty = D(100), D("1E+2"), D("50.00000000")
    money = (D("1001.50"), D("1.00"), D("0.00"), D("-1002.50"))
    half = (D("500.75"), D("1.00"), D("0.00"), D("-501.75"))
    rows = [
        (
            11,
            21,
            "fill",
            D(100),
            D("1001.50"),
            D("1.00"),
            D("0.00"),
            D("-1002.50"),
            hundred,
            *money,
            None,
        ),
        (
            12,
            22,
            "reversal",
            D("-1E+1"),
            D("-1E+3"),
            D("0E-8"),
            D("0.01"),
            D("999.99"),
            other_hundred,
            *money,
            7,
        ),
        (13, 23, "fill", D(50), D("500.75"), D("1.00"), D(0), D("-501.75"), fifty, *half, None),
        (14, 24, "reprice", D(0), D("0.01"), D(0), D(0), D("-0.01"), hundred, *money, None),
    ]
    # when their texts are made
    texts = _row_texts(rows)
    # then they are every value's str(), column by column, each target with its own digits
    assert texts == [list(map(str, column)) for column in zip(*rows, strict=True)]
    assert texts[8] == ["100", "1E+2", "50.00000000", "100"]
    assert texts[13] == ["None", "7", "None", "None"]
    # and a fill without rows has no texts
    assert _row_texts([]) == []


def test_rows_sharing_a_target_object_but_not_its_money_keep_their_own_texts() -> None:
    # given two rows whose cum_quantity is the very same object but whose money differs
    from allocations.services import _row_texts

    target = D(100)
    rows = [
        (
            11,
            21,
            "fill",
            D(100),
            D("10.00"),
            D(1),
            D(0),
            D("-11.00"),
            target,
            *(D("10.00"), D(1), D(0), D("-11.00")),
            None,
        ),
        (
            12,
            22,
            "fill",
            D(100),
            D("20.00"),
            D(2),
            D(0),
            D("-22.00"),
            target,
            *(D("20.00"), D(2), D(0), D("-22.00")),
            None,
        ),
    ]
    # when their texts are made, then each row has its own money's texts
    texts = _row_texts(rows)
    assert [texts[9], texts[10], texts[12]] == [
        ["10.00", "20.00"],
        ["1", "2"],
        ["-11.00", "-22.00"],
    ]
    assert texts == [list(map(str, column)) for column in zip(*rows, strict=True)]


def test_a_fills_audit_events_verify(three_accounts, instrument, broker, trader):
    # given a block filled twice (the second fill re-prices every order)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 300, "10.00")
    fill(placement, 300, "10.10")
    # then the block's allocation stream holds one event per fill, its rows the rows written,
    # and the chain verifies
    from oms_site.audit import audit_verify

    stream = f"block:{placement.block_id}:allocations"
    events = AuditEvent.objects.filter(stream=stream).order_by("seq")
    assert [[r["id"] for r in e.after["allocations"]] for e in events] == [
        list(ids)
        for ids in (
            Allocation.objects.filter(execution=e).order_by("pk").values_list("pk", flat=True)
            for e in placement.executions.order_by("pk")
        )
    ]
    assert [e.after["price"] for e in events] == ["10.00000000", "10.05000000"]
    assert audit_verify(streams=[stream]) == []


def test_what_each_order_booked_is_its_latest_row_in_that_block_through_the_pair_index(
    three_accounts, instrument, broker, trader
):
    from django.db import connection

    from allocations.services import _BLOCK_MATCH, _BOOKED_SQL, _booked

    # given a block of three orders filled twice, then two of its orders moved into a second
    # block and filled there once (their rows now in two blocks), and a lone order's rows
    first, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 60, "10.00")
    fill(placement, 120, "10.10")
    second = Block.objects.create(
        instrument=instrument,
        side="buy",
        order_type="market",
        quantity=D(500),
        status="routed",
        created_by=trader,
    )
    moved = orders[1:]
    Order.objects.filter(pk__in=[o.pk for o in moved]).update(block=second)
    again = Placement.objects.create(
        block=second, broker=broker, cl_ord_id=f"T-second-{second.pk}", quantity=D(500)
    )
    fill(again, 50, "10.20")
    ids = [o.pk for o in orders]

    def latest(block: Block, order: Order) -> tuple[Decimal, ...] | None:
        row = Allocation.objects.filter(order=order, block=block).order_by("-id").first()
        if row is None:
            return None
        return (row.cum_quantity, row.cum_gross, row.cum_commission, row.cum_fees, row.cum_net)

    # when each block's booked amounts are read
    for block in (first, second):
        with transaction.atomic():
            booked, new_ids = _booked(block_id=block.pk, order_ids=ids)
        # then each order has exactly its latest row of that block (none where it has no row),
        # and a new row id
        assert {pk: tuple(b[:5]) for pk, b in booked.items()} == {
            o.pk: latest(block, o) for o in orders if latest(block, o) is not None
        }
        assert {pk: b.last_id for pk, b in booked.items()} == {
            o.pk: Allocation.objects.filter(order=o, block=block).latest("id").pk
            for o in orders
            if latest(block, o) is not None
        }
        assert sorted(new_ids) == ids and len(set(new_ids.values())) == 3
    assert set(_booked(block_id=second.pk, order_ids=ids)[0]) == {o.pk for o in moved}
    assert booked[moved[0].pk].quantity == latest(second, moved[0])[0]  # type: ignore[index]

    # and the read is served by the (order, block, id) index, and the block's own index can
    # never narrow it (that read every row of the block for each order): without the pair
    # index (dropped in a transaction rolled back), no index condition is left on the block
    sql = f"EXPLAIN {_BOOKED_SQL.replace('{block_match}', _BLOCK_MATCH)}"
    params = [f"{{{','.join(map(str, ids))}}}", first.pk, first.pk]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "allocation_order_block_id_idx" in plan
        with transaction.atomic():
            cursor.execute("DROP INDEX allocation_order_block_id_idx")
            cursor.execute(sql, params)
            without = "\n".join(row[0] for row in cursor.fetchall())
            transaction.set_rollback(True)
    assert "Index Cond: (block_id" not in plan + without


@pytest.mark.django_db
def test_the_booked_read_names_the_allocation_sequence_once_per_statement():
    from django.db import connection

    from allocations.services import _BLOCK_MATCH, _BOOKED_SQL

    # given the read of what 1,000 orders have booked (and their new row ids)
    sql = f"EXPLAIN VERBOSE {_BOOKED_SQL.replace('{block_match}', _BLOCK_MATCH)}"
    params = [f"{{{','.join(map(str, range(1, 1001)))}}}", 1, 1]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        plan = [row[0].strip() for row in cursor.fetchall()]

    # then the sequence is looked up once, by an InitPlan, and each order's row only calls
    # nextval on its result (not pg_get_serial_sequence again for every order)
    named = [line for line in plan if "pg_get_serial_sequence" in line]
    assert len(named) == 1 and named[0].startswith("Output: (pg_get_serial_sequence(")
    assert any(line.startswith("InitPlan 1 (returns $0)") for line in plan)
    assert any(line.startswith("Output: o.id,") and "nextval($0)" in line for line in plan)


def test_a_blocks_lock_reads_the_block_then_its_orders_in_one_statement(
    three_accounts, instrument, broker, trader, monkeypatch
):
    import psycopg

    from allocations.models import BlockAllocationPolicy
    from allocations.services import _lock_block_orders, _lock_orders

    # given a block of three orders filled once, first without an allocation policy
    block, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 60, "10.00")
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    for with_policy in (False, True):
        if with_policy:
            BlockAllocationPolicy.objects.create(
                block=block, method="fixed_ratio", ratios={str(orders[0].pk): "2"}
            )
        # when the allocation locks it
        with transaction.atomic():
            sent.clear()
            locked, rows = _lock_block_orders(block.pk)
            statements = list(sent)
            expected_rows = _lock_orders(block_id=block.pk)
        # then one statement locked the block and then its orders (a policy is read after it)
        assert len(statements) == (2 if with_policy else 1)
        assert statements[0].index("FOR UPDATE OF k)") < statements[0].index("FOR UPDATE OF o")
        # and the block is as read from the database, with its instrument and policy
        fresh = Block.objects.select_related("instrument").get(pk=block.pk)
        for field in Block._meta.concrete_fields:
            assert getattr(locked, field.attname) == getattr(fresh, field.attname), field.name
        assert (locked._state.adding, locked._state.db) == (False, "default")
        assert locked.instrument.pk == instrument.pk
        assert locked.instrument.lot_size == fresh.instrument.lot_size
        if with_policy:
            assert (locked.allocation_policy.method, locked.allocation_policy.ratios) == (
                "fixed_ratio",
                {str(orders[0].pk): "2"},
            )
        else:
            with pytest.raises(BlockAllocationPolicy.DoesNotExist):
                locked.allocation_policy  # noqa: B018
        # and the orders are the rows the orders' own lock reads, by pk
        assert rows == expected_rows
        assert [r.id for r in rows] == sorted(o.pk for o in orders)


def test_the_rows_fill_allocate_returns_are_the_rows_written(
    three_accounts, instrument, broker, trader
):
    # given a block of 100/200/300 filled once, then again at another price (fill rows that
    # re-price the first ones)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 150, "10.00")
    # when the next fill's rows are returned
    returned = fill(placement, 300, "10.10")
    # then each instance holds exactly what a read of its row gives, field for field, and is
    # an instance as loaded (not to be inserted)
    fields = [f.attname for f in Allocation._meta.concrete_fields]
    stored = Allocation.objects.filter(pk__in=[r.pk for r in returned]).order_by("pk")
    assert len(returned) == 3
    assert [[getattr(r, f) for f in fields] for r in returned] == [
        [getattr(r, f) for f in fields] for r in stored
    ]
    assert all(not r._state.adding and r._state.db == "default" for r in returned)


def test_the_rows_fill_allocate_returns_are_made_once_when_first_read(
    three_accounts, instrument, broker, trader, monkeypatch
):
    from allocations import services

    made: list[int] = []
    original = services._allocation_instances

    def counting(ids, rows, shared):
        made.append(len(ids))
        return original(ids, rows, shared)

    monkeypatch.setattr(services, "_allocation_instances", counting)
    # given a block of 100/200/300
    _, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    # when 150 fill at 10.00 and the caller only counts the rows returned
    returned = fill(placement, 150, "10.00")
    assert len(returned) == 3
    # then no instance was made for it
    assert made == []
    # when they are read (twice, by index, by slice, compared with a list)
    first = [(r.order_id, r.quantity, r.net) for r in returned]
    again = [(r.order_id, r.quantity, r.net) for r in returned]
    # then they were made once, with each order's exact share, the same instances every time
    assert made == [3]
    assert (
        first
        == again
        == [
            (orders[0].pk, D(25), D("255.01")),
            (orders[1].pk, D(50), D("505.03")),
            (orders[2].pk, D(75), D("755.04")),
        ]
    )
    assert returned[0] is next(iter(returned))
    assert returned[1:] == list(returned)[1:]
    assert returned == list(returned)
    assert returned != []
    assert len(returned) == 3
    assert made == [3]
    assert [r.pk for r in returned] == list(
        Allocation.objects.order_by("pk").values_list("pk", flat=True)
    )


def test_a_blocks_lock_answers_the_fills_read_before_its_orders_rows_are_parsed(
    three_accounts, instrument, broker, trader, monkeypatch
):
    import psycopg

    from allocations.services import _lock_block_orders, positions_may_be_missing

    # given a block of 100/200/300 and a fourth order of the first account, never filled
    block, orders, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    extra, *_ = make_block(
        instrument=instrument, accounts=[three_accounts[0]], quantities=[50], user=trader
    )[1]
    Order.objects.filter(pk=extra.pk).update(block=block)
    Block.objects.filter(pk=block.pk).update(quantity=650)
    seen: list[Any] = []
    original = psycopg.Cursor.fetchall

    def fetchall(self):
        rows = original(self)
        seen.append(("rows parsed", len(rows)))
        return rows

    def read(locked, order_ids, account_ids, missing):
        seen.append(("read", locked.pk, order_ids, account_ids, missing))

    monkeypatch.setattr(psycopg.Cursor, "fetchall", fetchall)
    ids = sorted([*(o.pk for o in orders), extra.pk])
    accounts = sorted(a.pk for a in three_accounts)
    for filled in (None, 650):
        if filled is not None:
            # (every order filled: no position can be missing)
            monkeypatch.setattr(psycopg.Cursor, "fetchall", original)
            fill(placement, filled, "10.00")
            monkeypatch.setattr(psycopg.Cursor, "fetchall", fetchall)
        # when the allocation locks it with a read to send
        seen.clear()
        with transaction.atomic():
            _, rows = _lock_block_orders(block.pk, read)
        # then the read was told the orders' ids, their distinct accounts and whether one was
        # never filled (as the orders' rows say), before the orders' rows were parsed
        missing = filled is None
        assert seen == [("read", block.pk, ids, accounts, missing), ("rows parsed", 4)]
        assert [r.id for r in rows] == ids
        assert positions_may_be_missing(rows) is missing


def test_a_blocks_lock_of_a_missing_block_raises_and_reads_nothing(db):
    from allocations.services import _lock_block_orders

    told: list[Any] = []
    # when a block that does not exist is locked, then it raises, and no read is sent
    with transaction.atomic(), pytest.raises(Block.DoesNotExist):
        _lock_block_orders(0, lambda *args: told.append(args))
    assert told == []
