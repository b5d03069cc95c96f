"""Pure tests of FIX message building and parsing (no sockets, no quickfix)."""

import datetime as dt
from decimal import Decimal

import pytest

from orders.fix.messages import (
    SOH,
    BusinessReject,
    CancelReject,
    CancelRequest,
    ExecReport,
    MessageBuildError,
    NewOrder,
    OtherMessage,
    ParseError,
    ReplaceRequest,
    SessionReject,
    build_message,
    encode_message,
    exec_report_fields,
    format_decimal,
    parse_message,
    parse_order_message,
    parse_utc_timestamp,
    split_fields,
)

T0 = dt.datetime(2025, 3, 4, 14, 30, 5, 123000, tzinfo=dt.UTC)


def _raw(msg_type: str, fields, *, seq: int = 7, poss_dup: bool = False, version="FIX.4.4") -> str:
    return encode_message(
        begin_string=version,
        msg_type=msg_type,
        sender_comp_id="BRKA",
        target_comp_id="OMS",
        msg_seq_num=seq,
        fields=fields,
        sending_time=T0,
        poss_dup=poss_dup,
        orig_sending_time=T0 if poss_dup else None,
    )


def test_new_order_limit_gtd_builds_all_tags_in_order():
    # given a short-sell GTD limit order
    order = NewOrder(
        cl_ord_id="C1",
        symbol="AAPL",
        side="sell_short",
        quantity=Decimal("100.000"),
        order_type="limit",
        limit_price=Decimal("187.2500"),
        time_in_force="gtd",
        expire_date=dt.date(2025, 3, 31),
        account="ACC1",
        transact_time=T0,
    )
    # when it is built
    message = build_message(order)
    # then every tag carries the FIX value
    assert message.msg_type == "D"
    assert message.fields == (
        (11, "C1"),
        (1, "ACC1"),
        (21, "1"),
        (55, "AAPL"),
        (54, "5"),
        (60, "20250304-14:30:05.123"),
        (38, "100"),
        (40, "2"),
        (44, "187.25"),
        (59, "6"),
        (432, "20250331"),
    )


@pytest.mark.parametrize(
    ("side", "fix_side"), [("buy", "1"), ("sell", "2"), ("sell_short", "5"), ("buy_to_cover", "1")]
)
def test_side_mapping(side, fix_side):
    message = build_message(NewOrder("C", "X", side, Decimal(1), transact_time=T0))
    assert message.get(54) == fix_side


@pytest.mark.parametrize(
    ("order_type", "tif", "expected"),
    [
        ("market", "day", {40: "1", 59: "0"}),
        ("stop", "gtc", {40: "3", 59: "1", 99: "10"}),
        ("stop_limit", "ioc", {40: "4", 59: "3", 99: "10", 44: "9.5"}),
        ("limit", "fok", {40: "2", 59: "4", 44: "9.5"}),
    ],
)
def test_order_type_and_tif_mapping(order_type, tif, expected):
    order = NewOrder(
        "C",
        "X",
        "buy",
        Decimal(5),
        order_type=order_type,
        limit_price=Decimal("9.50"),
        stop_price=Decimal("10"),
        time_in_force=tif,
        transact_time=T0,
    )
    fields = dict(build_message(order).fields)
    assert {tag: fields.get(tag) for tag in expected} == expected
    assert (44 in fields) == (44 in expected)
    assert (99 in fields) == (99 in expected)


@pytest.mark.parametrize(
    "order",
    [
        NewOrder("C", "X", "buy", Decimal(0)),
        NewOrder("C", "X", "buy", Decimal(-1)),
        NewOrder("C", "X", "hold", Decimal(1)),
        NewOrder("C", "X", "buy", Decimal(1), order_type="limit"),
        NewOrder("C", "X", "buy", Decimal(1), order_type="limit", limit_price=Decimal(0)),
        NewOrder("C", "X", "buy", Decimal(1), order_type="stop"),
        NewOrder("C", "X", "buy", Decimal(1), time_in_force="gtd"),
        NewOrder("C", "X", "buy", Decimal("NaN")),
        NewOrder("", "X", "buy", Decimal(1)),
        NewOrder("C\x01", "X", "buy", Decimal(1)),
    ],
)
def test_bad_outbound_orders_raise_build_error(order):
    with pytest.raises(MessageBuildError):
        build_message(order)


def test_cancel_and_replace_carry_the_clordid_chain():
    cancel = build_message(
        CancelRequest("C2", "C1", "AAPL", "buy", Decimal(100), order_id="O9", transact_time=T0)
    )
    replace = build_message(
        ReplaceRequest(
            "C3",
            "C2",
            "AAPL",
            "buy",
            Decimal(150),
            limit_price=Decimal("10.1"),
            order_id="O9",
            transact_time=T0,
        )
    )
    assert cancel.msg_type == "F"
    assert cancel.fields == (
        (41, "C1"),
        (11, "C2"),
        (37, "O9"),
        (55, "AAPL"),
        (54, "1"),
        (60, "20250304-14:30:05.123"),
        (38, "100"),
    )
    assert replace.msg_type == "G"
    assert dict(replace.fields) == {
        41: "C2",
        11: "C3",
        37: "O9",
        21: "1",
        55: "AAPL",
        54: "1",
        60: "20250304-14:30:05.123",
        38: "150",
        40: "2",
        44: "10.1",
        59: "0",
    }


def test_format_decimal_is_plain_and_trimmed():
    assert format_decimal(Decimal("1E+2")) == "100"
    assert format_decimal(Decimal("0.000100")) == "0.0001"
    assert format_decimal(Decimal("12.50")) == "12.5"
    assert format_decimal(Decimal("-0.00")) == "0"


def test_encode_message_has_correct_length_and_checksum():
    raw = _raw("0", [])
    body_start = raw.index(SOH, raw.index("9=")) + 1
    body_end = raw.index(SOH + "10=") + 1
    assert int(raw[raw.index("9=") + 2 : body_start - 1]) == body_end - body_start
    assert int(raw[body_end + 3 : body_end + 6]) == sum(raw[:body_end].encode()) % 256


def test_parse_fill_exec_report_with_decimals():
    # given a FIX 4.4 partial fill resent as PossDup
    body = exec_report_fields(
        begin_string="FIX.4.4",
        order_id="O1",
        exec_id="E1",
        exec_type="F",
        ord_status="1",
        symbol="AAPL",
        side="1",
        order_qty=Decimal(300),
        cum_qty=Decimal(100),
        avg_px=Decimal("187.255"),
        leaves_qty=Decimal(200),
        cl_ord_id="C1",
        last_qty=Decimal(100),
        last_px=Decimal("187.255"),
        price=Decimal("188"),
        transact_time=T0,
    ).fields
    # when it is parsed
    parsed = parse_message(_raw("8", body, poss_dup=True))
    # then every field is typed
    assert isinstance(parsed, ExecReport)
    assert parsed.exec_id == "E1"
    assert parsed.exec_type_name == "trade"
    assert parsed.ord_status_name == "partially_filled"
    assert parsed.cl_ord_id == "C1"
    assert parsed.orig_cl_ord_id is None
    assert parsed.order_id == "O1"
    assert parsed.last_qty == Decimal(100)
    assert parsed.last_px == Decimal("187.255")
    assert parsed.cum_qty == Decimal(100)
    assert parsed.avg_px == Decimal("187.255")
    assert parsed.leaves_qty == Decimal(200)
    assert parsed.transact_time == T0
    assert parsed.poss_dup is True
    assert parsed.is_fill is True
    assert parsed.header.msg_seq_num == 7
    assert parsed.header.sender_comp_id == "BRKA"
    assert parsed.header.orig_sending_time == T0


def test_fix42_fill_uses_exec_type_2_and_exec_trans_type():
    body = exec_report_fields(
        begin_string="FIX.4.2",
        order_id="O1",
        exec_id="E2",
        exec_type="F",
        ord_status="2",
        symbol="AAPL",
        side="2",
        order_qty=Decimal(10),
        cum_qty=Decimal(10),
        avg_px=Decimal(5),
        leaves_qty=Decimal(0),
        last_qty=Decimal(10),
        last_px=Decimal(5),
    ).fields
    parsed = parse_message(_raw("8", body, version="FIX.4.2"))
    assert isinstance(parsed, ExecReport)
    assert (parsed.exec_type, parsed.exec_trans_type, parsed.exec_type_name) == ("2", "0", "fill")
    assert parsed.is_fill is True


def test_fix42_execution_cancel_is_not_a_new_fill():
    body = [
        (37, "O"),
        (17, "E3"),
        (20, "1"),
        (150, "2"),
        (39, "2"),
        (54, "1"),
        (32, "5"),
        (31, "1"),
        (151, "0"),
        (14, "5"),
        (6, "1"),
    ]
    parsed = parse_message(_raw("8", body, version="FIX.4.2"))
    assert isinstance(parsed, ExecReport)
    assert parsed.is_fill is False


@pytest.mark.parametrize(
    ("exec_type", "name"),
    [
        ("0", "new"),
        ("3", "done_for_day"),
        ("4", "canceled"),
        ("5", "replaced"),
        ("6", "pending_cancel"),
        ("8", "rejected"),
        ("C", "expired"),
        ("D", "restated"),
        ("E", "pending_replace"),
        ("A", "pending_new"),
    ],
)
def test_non_fill_exec_types_parse_without_last_qty(exec_type, name):
    body = [
        (37, "O"),
        (11, "C"),
        (17, "E"),
        (150, exec_type),
        (39, "0"),
        (54, "1"),
        (151, "10"),
        (14, "0"),
        (6, "0"),
        (58, "why"),
    ]
    parsed = parse_message(_raw("8", body))
    assert isinstance(parsed, ExecReport)
    assert parsed.exec_type_name == name
    assert parsed.is_fill is False
    assert parsed.text == "why"


@pytest.mark.parametrize(
    ("body", "reason_part", "missing"),
    [
        (
            [(37, "O"), (150, "0"), (39, "0"), (54, "1"), (151, "1"), (14, "0"), (6, "0")],
            "missing mandatory tags",
            (17,),
        ),
        (
            [
                (37, "O"),
                (17, "E"),
                (150, "F"),
                (39, "1"),
                (54, "1"),
                (151, "1"),
                (14, "1"),
                (6, "1"),
            ],
            "missing mandatory tags",
            (32, 31),
        ),
        (
            [
                (37, "O"),
                (17, "E"),
                (150, "F"),
                (39, "1"),
                (54, "1"),
                (32, "abc"),
                (31, "1"),
                (151, "1"),
                (14, "1"),
                (6, "1"),
            ],
            "not a number",
            (),
        ),
        (
            [
                (37, "O"),
                (17, "E"),
                (150, "Z"),
                (39, "1"),
                (54, "1"),
                (151, "1"),
                (14, "1"),
                (6, "1"),
            ],
            "unknown ExecType",
            (),
        ),
        (
            [
                (37, "O"),
                (17, "E"),
                (150, "F"),
                (39, "1"),
                (54, "1"),
                (32, "0"),
                (31, "1"),
                (151, "1"),
                (14, "1"),
                (6, "1"),
            ],
            "LastQty",
            (),
        ),
    ],
)
def test_invalid_exec_reports_become_parse_errors(body, reason_part, missing):
    parsed = parse_message(_raw("8", body))
    assert isinstance(parsed, ParseError)
    assert reason_part in parsed.reason
    assert parsed.missing_tags == missing
    assert parsed.header.msg_type == "8"


@pytest.mark.parametrize("raw", ["", "garbage", "8=FIX.4.4\x01x=1\x01", "35\x01"])
def test_garbage_never_raises(raw):
    parsed = parse_message(raw)
    assert isinstance(parsed, ParseError)


def test_parse_cancel_reject_business_reject_session_reject_and_other():
    cxl = parse_message(
        _raw(
            "9",
            [
                (37, "O"),
                (11, "C2"),
                (41, "C1"),
                (39, "2"),
                (434, "1"),
                (102, "0"),
                (58, "too late"),
            ],
        )
    )
    biz = parse_message(_raw("j", [(45, "12"), (372, "AF"), (379, "C9"), (380, "3")]))
    ses = parse_message(_raw("3", [(45, "4"), (371, "44"), (372, "D"), (373, "5")]))
    hb = parse_message(_raw("0", []))
    assert cxl == CancelReject(cxl.header, "O", "C2", "C1", "2", "1", "0", "too late")
    assert biz == BusinessReject(biz.header, "AF", "3", 12, "C9", None)
    assert ses == SessionReject(ses.header, 4, 44, "D", "5", None)
    assert isinstance(hb, OtherMessage) and hb.header.msg_type == "0"


def test_cancel_reject_missing_tags_is_parse_error():
    parsed = parse_message(_raw("9", [(37, "O"), (11, "C2"), (39, "2")]))
    assert isinstance(parsed, ParseError)
    assert parsed.missing_tags == (41, 434)


def test_pipe_separated_text_is_accepted():
    assert split_fields("8=FIX.4.4|35=0|") == [(8, "FIX.4.4"), (35, "0")]


def test_utc_timestamp_precisions():
    assert parse_utc_timestamp("20250304-14:30:05") == T0.replace(microsecond=0)
    assert parse_utc_timestamp("20250304-14:30:05.123456789") == T0.replace(microsecond=123456)
    with pytest.raises(ValueError):
        parse_utc_timestamp("2025-03-04T14:30:05")


@pytest.mark.parametrize(
    "text",
    [
        "20250304-14:30:05",
        "20250304-14:30:05.123",
        "19991231-23:59:59.999999",
        "20240229-00:00:00",
        "20250304-4:30:05",  # not the usual shape: strptime still reads one-digit hours
        "20250230-14:30:05",  # no 30 February
        "20250304-24:00:00",
        "20250304-14:60:05",
        "20250304-14:30:60",
        "2025030a-14:30:05",
        "20250304-14:3a:05",
        "20250304-14-30-05",
        "20250304-14:30:05.12x",
        "+2025034-14:30:05",
    ],
)
def test_utc_timestamps_read_as_strptime_reads_them(text):
    date_part, _, time_part = text.partition("-")
    hms, _, frac = time_part.partition(".")
    try:
        expected = dt.datetime.strptime(date_part + hms, "%Y%m%d%H:%M:%S").replace(tzinfo=dt.UTC)
        if frac:
            expected += dt.timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    except ValueError:
        with pytest.raises(ValueError):
            parse_utc_timestamp(text)
        return
    assert parse_utc_timestamp(text) == expected


def test_venue_side_parses_order_messages_back():
    raw = _raw(
        "D",
        build_message(
            NewOrder(
                "C1",
                "AAPL",
                "sell",
                Decimal("10"),
                order_type="limit",
                limit_price=Decimal("1.5"),
                time_in_force="ioc",
                transact_time=T0,
            )
        ).fields,
    )
    inbound = parse_order_message(raw)
    assert inbound.error is None
    assert inbound.request == NewOrder(
        "C1",
        "AAPL",
        "sell",
        Decimal("10"),
        order_type="limit",
        limit_price=Decimal("1.5"),
        time_in_force="ioc",
        transact_time=T0,
    )
    bad = parse_order_message(_raw("D", [(11, "C1"), (55, "X"), (54, "1"), (40, "1")]))
    assert bad.request is None
    assert "missing mandatory tags [38]" in (bad.error or "")
