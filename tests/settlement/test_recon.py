import datetime as dt
import random
import time
from decimal import Decimal

import pytest

from settlement.recon import (
    MISSING_IN_OMS,
    MISSING_IN_STATEMENT,
    PRICE_MISMATCH,
    QUANTITY_MISMATCH,
    Break,
    OmsTrade,
    StatementLine,
    match,
    parse_statement_csv,
)

DAY = dt.date(2026, 11, 25)
TOLERANCE = Decimal("0.005")


def _trade(allocation_id, account, instrument, side, quantity, price, isin="", day=DAY):
    return OmsTrade(
        allocation_id=allocation_id,
        account=account,
        instrument=instrument,
        trade_date=day,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        isin=isin,
    )


def _stmt(row, account, instrument, side, quantity, price, day=DAY):
    return StatementLine(
        row=row,
        account=account,
        instrument=instrument,
        trade_date=day,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
    )


# ------------------------------------------------------------------------- parsing


def test_parse_good_statement():
    # given a statement with a BOM, upper-case sides, a blank trailing line and an extra column
    text = (
        "\ufeffaccount,instrument,trade_date,side,quantity,price,comment\n"
        "ACC-001,AAPL,2026-11-25,BUY,100,189.50,ok\n"
        "ACC-002, US5949181045 ,2026-11-25,sell,250.000,412.3456,\n"
        "\n"
    )
    # when parsed
    lines, errors = parse_statement_csv(text)
    # then two lines, numbered by file row, and no errors
    assert errors == []
    assert lines == [
        StatementLine(2, "ACC-001", "AAPL", DAY, "buy", Decimal("100"), Decimal("189.50")),
        StatementLine(
            3, "ACC-002", "US5949181045", DAY, "sell", Decimal("250.000"), Decimal("412.3456")
        ),
    ]


def test_parse_columns_in_any_order():
    lines, errors = parse_statement_csv(
        "price,quantity,side,trade_date,instrument,account\n1.5,10,buy,2026-11-25,X,A\n"
    )
    assert errors == []
    assert lines == [StatementLine(2, "A", "X", DAY, "buy", Decimal("10"), Decimal("1.5"))]


def test_parse_rejects_bad_rows_with_row_and_field():
    # given a statement with one good row and several bad ones
    text = (
        "account,instrument,trade_date,side,quantity,price\n"
        "ACC-001,AAPL,2026-11-25,buy,100,189.50\n"
        ",AAPL,2026-13-01,hold,abc,-1\n"
        "ACC-001,,25/11/2026,sell,0,1e3\n"
        "ACC-001,AAPL,20261125,sell,1,000,5\n"
        'ACC-001,AAPL,2026-11-25,sell,"1,000",\n'
    )
    # when parsed
    lines, errors = parse_statement_csv(text)
    # then the good row parses and every bad field is reported with its row
    assert [line.row for line in lines] == [2]
    assert errors == [
        {"row": 3, "field": "account", "detail": "required"},
        {
            "row": 3,
            "field": "trade_date",
            "detail": "'2026-13-01' is not a date in YYYY-MM-DD form",
        },
        {
            "row": 3,
            "field": "side",
            "detail": "must be one of buy, sell, sell_short, buy_to_cover",
        },
        {"row": 3, "field": "quantity", "detail": "'abc' is not a decimal number like 1234.56"},
        {"row": 3, "field": "price", "detail": "must be greater than zero"},
        {"row": 4, "field": "instrument", "detail": "required"},
        {
            "row": 4,
            "field": "trade_date",
            "detail": "'25/11/2026' is not a date in YYYY-MM-DD form",
        },
        {"row": 4, "field": "quantity", "detail": "must be greater than zero"},
        {"row": 4, "field": "price", "detail": "'1e3' is not a decimal number like 1234.56"},
        {"row": 5, "field": "row", "detail": "has 7 cells, the header has 6"},
        {"row": 6, "field": "quantity", "detail": "'1,000' is not a decimal number like 1234.56"},
        {"row": 6, "field": "price", "detail": "required"},
    ]


def test_parse_rejects_a_bad_header():
    lines, errors = parse_statement_csv("account,account,trade_date,side,qty,price\n")
    assert lines == []
    assert errors == [
        {"row": 1, "field": "account", "detail": "duplicate column"},
        {"row": 1, "field": "instrument", "detail": "missing column"},
        {"row": 1, "field": "quantity", "detail": "missing column"},
    ]


def test_parse_rejects_an_empty_file():
    assert parse_statement_csv("") == (
        [],
        [{"row": 1, "field": "header", "detail": "the file is empty"}],
    )


def test_parse_rejects_overlong_text():
    _, errors = parse_statement_csv(
        "account,instrument,trade_date,side,quantity,price\n" + "A" * 65 + ",X,2026-11-25,buy,1,1\n"
    )
    assert errors == [{"row": 2, "field": "account", "detail": "longer than 64 characters"}]


# ------------------------------------------------------------------------- matching


def test_each_kind_of_break():
    # given OMS allocations and a statement that agree on some lines only
    oms = [
        _trade(1, "ACC-001", "AAPL", "buy", "100", "189.50", isin="US0378331005"),  # agrees
        _trade(2, "ACC-001", "MSFT", "sell", "250", "412.3456"),  # price off
        _trade(3, "ACC-002", "TSLA", "sell_short", "50", "240.10"),  # quantity off
        _trade(4, "ACC-002", "NVDA", "buy", "10", "140.25"),  # not on the statement
        _trade(5, "ACC-001", "AAPL", "buy", "20", "190.00", isin="US0378331005"),  # agrees
    ]
    statement = [
        _stmt(2, "ACC-001", "US0378331005", "buy", "100.00", "189.504"),  # by ISIN, in tolerance
        _stmt(3, "ACC-001", "MSFT", "sell", "250", "412.40"),
        _stmt(4, "ACC-002", "TSLA", "sell", "40", "240.10"),  # a short sale reported as a sale
        _stmt(5, "ACC-003", "AMZN", "buy", "5", "200"),  # not in the OMS
        _stmt(6, "ACC-001", "AAPL", "buy", "20", "190.00"),
    ]
    # when matched
    breaks = match(oms, statement, price_tolerance=TOLERANCE)
    # then exactly one break of each kind, with both sides' values
    assert breaks == [
        Break(
            kind=PRICE_MISMATCH,
            account="ACC-001",
            instrument="MSFT",
            trade_date=DAY,
            side="sell",
            oms_allocation_id=2,
            oms_side="sell",
            oms_quantity=Decimal("250"),
            oms_price=Decimal("412.3456"),
            statement_row=3,
            statement_side="sell",
            statement_quantity=Decimal("250"),
            statement_price=Decimal("412.40"),
        ),
        Break(
            kind=MISSING_IN_STATEMENT,
            account="ACC-002",
            instrument="NVDA",
            trade_date=DAY,
            side="buy",
            oms_allocation_id=4,
            oms_side="buy",
            oms_quantity=Decimal("10"),
            oms_price=Decimal("140.25"),
            statement_row=None,
            statement_side=None,
            statement_quantity=None,
            statement_price=None,
        ),
        Break(
            kind=QUANTITY_MISMATCH,
            account="ACC-002",
            instrument="TSLA",
            trade_date=DAY,
            side="sell",
            oms_allocation_id=3,
            oms_side="sell_short",
            oms_quantity=Decimal("50"),
            oms_price=Decimal("240.10"),
            statement_row=4,
            statement_side="sell",
            statement_quantity=Decimal("40"),
            statement_price=Decimal("240.10"),
        ),
        Break(
            kind=MISSING_IN_OMS,
            account="ACC-003",
            instrument="AMZN",
            trade_date=DAY,
            side="buy",
            oms_allocation_id=None,
            oms_side=None,
            oms_quantity=None,
            oms_price=None,
            statement_row=5,
            statement_side="buy",
            statement_quantity=Decimal("5"),
            statement_price=Decimal("200"),
        ),
    ]


def test_everything_agrees():
    oms = [_trade(1, "A", "X", "buy", "10", "1.00")]
    assert match(oms, [_stmt(2, "A", "X", "buy", "10", "1.005")], price_tolerance=TOLERANCE) == []


def test_price_tolerance_boundary():
    # given a price exactly at the tolerance and one just beyond
    oms = [_trade(1, "A", "X", "buy", "10", "1.00"), _trade(2, "A", "X", "buy", "20", "1.00")]
    statement = [
        _stmt(2, "A", "X", "buy", "10", "1.005"),
        _stmt(3, "A", "X", "buy", "20", "1.0051"),
    ]
    # when / then only the second breaks
    assert [
        (b.kind, b.oms_allocation_id, b.statement_row)
        for b in match(oms, statement, price_tolerance=TOLERANCE)
    ] == [(PRICE_MISMATCH, 2, 3)]


def test_different_trade_dates_and_directions_do_not_match():
    oms = [_trade(1, "A", "X", "buy", "10", "1")]
    statement = [
        _stmt(2, "A", "X", "buy", "10", "1", day=dt.date(2026, 11, 24)),
        _stmt(3, "A", "X", "sell", "10", "1"),
    ]
    kinds = [
        (b.kind, b.trade_date, b.side) for b in match(oms, statement, price_tolerance=TOLERANCE)
    ]
    assert kinds == [
        (MISSING_IN_OMS, dt.date(2026, 11, 24), "buy"),
        (MISSING_IN_STATEMENT, DAY, "buy"),
        (MISSING_IN_OMS, DAY, "sell"),
    ]


def test_several_trades_under_one_key_pair_sensibly():
    # given two OMS fills of the same account/instrument/day and a statement with three lines
    oms = [_trade(1, "A", "X", "buy", "100", "10.00"), _trade(2, "A", "X", "buy", "200", "11.00")]
    statement = [
        _stmt(2, "A", "X", "buy", "200", "11.00"),  # agrees with 2
        _stmt(3, "A", "X", "buy", "150", "10.00"),  # 1 with another quantity
        _stmt(4, "A", "X", "buy", "1", "99.00"),  # nothing left for it
    ]
    breaks = match(oms, statement, price_tolerance=TOLERANCE)
    assert [(b.kind, b.oms_allocation_id, b.statement_row) for b in breaks] == [
        (MISSING_IN_OMS, None, 4),
        (QUANTITY_MISMATCH, 1, 3),
    ]


def test_matching_is_deterministic_whatever_the_input_order():
    # given the same data shuffled
    oms = [_trade(i, f"A{i % 7}", f"X{i % 5}", "buy", str(10 + i % 3), "1.00") for i in range(200)]
    statement = [
        _stmt(i + 2, f"A{i % 7}", f"X{i % 5}", "buy", str(10 + i % 4), "1.01") for i in range(190)
    ]
    expected = match(oms, statement, price_tolerance=TOLERANCE)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(oms)
        rng.shuffle(statement)
        # then the breaks are the same list
        assert match(oms, statement, price_tolerance=TOLERANCE) == expected


def test_matching_scales():
    # given 100,000 OMS trades and a statement with all of them, a few altered
    n = 100_000
    oms = [
        _trade(i, f"ACC{i % 500}", f"SYM{i % 300}", "buy", str(1 + i % 97), "10.25")
        for i in range(n)
    ]
    statement = [
        _stmt(
            i + 2,
            t.account,
            t.instrument,
            "buy",
            str(t.quantity),
            "10.30" if i % 1000 == 0 else "10.25",
        )
        for i, t in enumerate(oms)
    ]
    started = time.perf_counter()
    breaks = match(oms, statement, price_tolerance=TOLERANCE)
    elapsed = time.perf_counter() - started
    # then only the altered lines break, quickly
    assert len(breaks) == 100
    assert {b.kind for b in breaks} == {PRICE_MISMATCH}
    assert elapsed < 5


def test_tolerance_must_be_a_non_negative_decimal():
    with pytest.raises(ValueError):
        match([], [], price_tolerance=Decimal("-0.01"))
    with pytest.raises(ValueError):
        match([], [], price_tolerance=0.01)
