import datetime as dt
import hashlib
import io
import os
import re
from decimal import Decimal
from pathlib import Path

import pytest

from settlement.calendars import settlement_date
from settlement.formats import (
    CSV_COLUMNS,
    SettlementLine,
    atomic_write,
    file_checksum,
    format_for,
    message_type,
    mt54x_message,
    swift_decimal,
    write_csv,
    write_mt54x,
)

GOLDEN = Path(__file__).parent / "golden"
TRADE_DATE = dt.date(2026, 11, 25)  # the Wednesday before US Thanksgiving
MT_OPTIONS = {
    "sender_bic": "OPENUS33",
    "receiver_bic": "IRVTUS3NXXX",
    "file_reference_prefix": "OMS",
}


def _line(**overrides) -> SettlementLine:
    values = {
        "allocation_id": 1001,
        "trade_date": TRADE_DATE,
        "settlement_date": settlement_date(TRADE_DATE, cycle_days=1, calendar_code="XNYS"),
        "account_code": "ACC-001",
        "custodian_account": "BNY-77001",
        "isin": "US0378331005",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal("100"),
        "price": Decimal("189.50"),
        "gross": Decimal("18950.00"),
        "commission": Decimal("5.00"),
        "fees": Decimal("0.12"),
        "net": Decimal("18955.12"),
        "currency": "USD",
        "broker_code": "GS",
        "custodian_bic": "IRVTUS3N",
        "broker_bic": "GOLDUS33",
        "our_bic": "OPENUS33",
        "pset_bic": "DTCYUS33",
    }
    values.update(overrides)
    return SettlementLine(**values)


def golden_day() -> list[SettlementLine]:
    """Five allocations at one custodian on 2026-11-25: every side, two markets."""
    uk_t2 = settlement_date(TRADE_DATE, cycle_days=2, calendar_code="XLON")
    return [
        _line(),
        _line(
            allocation_id=1002,
            account_code="ACC-002",
            custodian_account="BNY-77002",
            isin="US5949181045",
            symbol="MSFT",
            side="sell",
            quantity=Decimal("250"),
            price=Decimal("412.3456"),
            gross=Decimal("103086.40"),
            commission=Decimal("12.50"),
            fees=Decimal("2.31"),
            net=Decimal("103071.59"),
            broker_code="MS",
            broker_bic="MSNYUS33",
        ),
        _line(
            allocation_id=1003,
            isin="US88160R1014",
            symbol="TSLA",
            side="sell_short",
            quantity=Decimal("50"),
            price=Decimal("240.1"),
            gross=Decimal("12005.00"),
            commission=Decimal("3"),
            fees=Decimal("0.29"),
            net=Decimal("12001.71"),
        ),
        _line(
            allocation_id=1004,
            account_code="ACC-002",
            custodian_account="BNY-77002",
            isin="US67066G1040",
            symbol="NVDA",
            side="buy_to_cover",
            quantity=Decimal("10"),
            price=Decimal("140.25"),
            gross=Decimal("1402.50"),
            commission=Decimal("1.00"),
            fees=Decimal("0"),
            net=Decimal("1403.50"),
        ),
        _line(
            allocation_id=1005,
            settlement_date=uk_t2,
            isin="GB00BH4HYN58",
            symbol="VOD",
            quantity=Decimal("10000"),
            price=Decimal("0.7250"),
            gross=Decimal("7250.00"),
            commission=Decimal("7.25"),
            fees=Decimal("36.25"),
            net=Decimal("7293.50"),
            currency="GBP",
            broker_code="BARC",
            broker_bic="BARCGB22",
            pset_bic="CRSTGB22",
        ),
    ]


def _render(writer, lines, **options) -> bytes:
    out = io.BytesIO()
    writer(lines, out, **options)
    return out.getvalue()


def _check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":  # regenerate deliberately, then review the diff
        path.write_bytes(data)
    assert data == path.read_bytes()


# ------------------------------------------------------------------------- golden files


def test_golden_day_settles_over_thanksgiving():
    # given the golden day / then US lines settle on Friday, the UK line T+2 on Friday too
    lines = golden_day()
    assert [line.settlement_date for line in lines] == [dt.date(2026, 11, 27)] * 5


def test_csv_matches_golden_file():
    # given a known day / when written as CSV / then byte for byte the reviewed file
    _check_golden("settlement_2026-11-25.csv", _render(write_csv, golden_day()))


def test_mt54x_matches_golden_file():
    data = _render(write_mt54x, golden_day(), **MT_OPTIONS)
    _check_golden("settlement_2026-11-25.fin", data)


def test_rerun_is_byte_identical():
    # given the same lines twice (fresh objects) / then the same bytes
    assert _render(write_csv, golden_day()) == _render(write_csv, golden_day())
    assert _render(write_mt54x, golden_day(), **MT_OPTIONS) == _render(
        write_mt54x, golden_day(), **MT_OPTIONS
    )


# ------------------------------------------------------------------------- CSV


def test_csv_header_and_fixed_decimals():
    # given one line with values of varying precision
    line = _line(quantity=Decimal("100.0"), price=Decimal("189.5"), commission=Decimal("5"))
    # when
    text = _render(write_csv, [line]).decode()
    # then the header is the documented column list and decimals have fixed places
    assert text == (
        ",".join(CSV_COLUMNS) + "\n"
        "1001,2026-11-25,2026-11-27,ACC-001,BNY-77001,US0378331005,AAPL,buy,"
        "100.00000000,189.50000000,18950.00,5.00,0.12,18955.12,USD,GS\n"
    )


def test_csv_quotes_values_with_commas():
    text = _render(write_csv, [_line(account_code='Fund "A", Ltd')]).decode()
    assert ',"Fund ""A"", Ltd",' in text


def test_csv_of_no_lines_is_just_the_header():
    assert _render(write_csv, []) == (",".join(CSV_COLUMNS) + "\n").encode()


def test_csv_refuses_to_round():
    # given an amount with more places than the column carries / then an error, not rounding
    with pytest.raises(ValueError, match=r"allocation 1001: gross 18950\.005 has more than 2"):
        _render(write_csv, [_line(gross=Decimal("18950.005"))])


def test_csv_streams_in_chunks():
    # given a writer that records each write
    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(len(data))
            return len(data)

    out = Recorder()
    lines = (_line(allocation_id=i) for i in range(5000))
    # when 5,000 lines are written
    write_csv(lines, out)
    # then they went out in several writes, not as one file-sized string
    assert len(out.writes) == 3


# ------------------------------------------------------------------------- MT541 / MT543


def _fields(message: str) -> list[str]:
    body = message.split("{4:\r\n", 1)[1]
    assert body.endswith("\r\n-}\r\n")
    return body[: -len("\r\n-}\r\n")].split("\r\n")


def test_mt541_for_a_buy_has_the_mandatory_sequences_in_order():
    # given a buy / when written as MT54x
    message = mt54x_message(_line(), **MT_OPTIONS)
    # then it is an MT541 from us to the custodian with sequences A, B, C, E in order
    assert message.startswith("{1:F01OPENUS33AXXX0000000000}{2:I541IRVTUS3NXXXXN}{4:\r\n")
    assert _fields(message) == [
        ":16R:GENL",
        ":20C::SEME//OMS1001",
        ":23G:NEWM",
        ":16S:GENL",
        ":16R:TRADDET",
        ":98A::SETT//20261127",
        ":98A::TRAD//20261125",
        ":90B::DEAL//ACTU/USD189,5",
        ":35B:ISIN US0378331005",
        "/TS/AAPL",
        ":16S:TRADDET",
        ":16R:FIAC",
        ":36B::SETT//UNIT/100,",
        ":97A::SAFE//BNY-77001",
        ":16S:FIAC",
        ":16R:SETDET",
        ":22F::SETR//TRAD",
        ":16R:SETPRTY",
        ":95P::SELL//GOLDUS33",
        ":16S:SETPRTY",
        ":16R:SETPRTY",
        ":95P::DEAG//GOLDUS33",
        ":16S:SETPRTY",
        ":16R:SETPRTY",
        ":95P::BUYR//OPENUS33",
        ":16S:SETPRTY",
        ":16R:SETPRTY",
        ":95P::REAG//IRVTUS3N",
        ":16S:SETPRTY",
        ":16R:SETPRTY",
        ":95P::PSET//DTCYUS33",
        ":16S:SETPRTY",
        ":16R:AMT",
        ":19A::SETT//USD18955,12",
        ":16S:AMT",
        ":16R:AMT",
        ":19A::DEAL//USD18950,",
        ":16S:AMT",
        ":16R:AMT",
        ":19A::EXEC//USD5,",
        ":16S:AMT",
        ":16R:AMT",
        ":19A::CHAR//USD0,12",
        ":16S:AMT",
        ":16S:SETDET",
    ]


@pytest.mark.parametrize(("side", "mt"), [("sell", "543"), ("sell_short", "543")])
def test_mt543_for_a_sale_delivers_to_the_broker(side, mt):
    # given a sale / when written
    message = mt54x_message(_line(side=side), **MT_OPTIONS)
    fields = _fields(message)
    # then an MT543 whose counterparty is the receiving side and we are the delivering side
    assert message_type(side) == mt
    assert "{2:I543IRVTUS3NXXXXN}" in message
    parties = [f for f in fields if f.startswith(":95P::")]
    assert parties == [
        ":95P::BUYR//GOLDUS33",
        ":95P::REAG//GOLDUS33",
        ":95P::SELL//OPENUS33",
        ":95P::DEAG//IRVTUS3N",
        ":95P::PSET//DTCYUS33",
    ]


def test_buy_to_cover_is_a_receipt():
    assert message_type("buy_to_cover") == "541"
    assert "{2:I541" in mt54x_message(_line(side="buy_to_cover"), **MT_OPTIONS)


def test_every_golden_message_opens_and_closes_its_blocks_in_order():
    # given the golden day as MT54x
    data = _render(write_mt54x, golden_day(), **MT_OPTIONS).decode("ascii")
    messages = re.findall(r"\{1:.*?-\}\r\n", data, flags=re.S)
    assert len(messages) == 5
    assert [m[33:36] for m in messages] == ["541", "543", "543", "541", "541"]
    for message in messages:
        stack = []
        order = []
        for field in _fields(message):
            if field.startswith(":16R:"):
                stack.append(field[5:])
                order.append(field[5:])
            elif field.startswith(":16S:"):
                assert stack.pop() == field[5:]
        # then every block is closed, and the mandatory sequences come in order
        assert stack == []
        top = [b for b in order if b in {"GENL", "TRADDET", "FIAC", "SETDET"}]
        assert top == ["GENL", "TRADDET", "FIAC", "SETDET"]
        assert ":22F::SETR//TRAD" in message
        assert message.count(":19A::SETT//") == 1
        assert message.count(":95P::PSET//") == 1


def test_no_isin_uses_the_ticker_alone():
    message = mt54x_message(_line(isin="", symbol="BTC-USD"), **MT_OPTIONS)
    assert ":35B:/TS/BTC-USD\r\n" in message


def test_pset_defaults_to_the_custodian():
    message = mt54x_message(_line(pset_bic=""), **MT_OPTIONS)
    assert ":95P::PSET//IRVTUS3N" in message


def test_zero_costs_are_left_out_and_negative_amounts_use_n():
    message = mt54x_message(
        _line(
            side="sell",
            gross=Decimal("1.00"),
            commission=Decimal("0"),
            fees=Decimal("0.00"),
            net=Decimal("-4.00"),
            quantity=Decimal("1"),
            price=Decimal("1"),
        ),
        **MT_OPTIONS,
    )
    assert ":19A::SETT//NUSD4," in message
    assert ":19A::EXEC//" not in message
    assert ":19A::CHAR//" not in message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1234.56"), "1234,56"),
        (Decimal("100"), "100,"),
        (Decimal("100.00"), "100,"),
        (Decimal("0.5"), "0,5"),
        (Decimal("0.12345678"), "0,12345678"),
        (Decimal("1E+3"), "1000,"),
        (Decimal("0"), "0,"),
    ],
)
def test_swift_decimal(value, text):
    assert swift_decimal(value) == text


@pytest.mark.parametrize(
    "value", [Decimal("-1"), Decimal("NaN"), Decimal("Infinity"), Decimal("12345678901234.5")]
)
def test_swift_decimal_rejects(value):
    with pytest.raises(ValueError):
        swift_decimal(value)


@pytest.mark.parametrize(
    ("overrides", "options", "message"),
    [
        ({"broker_bic": "GOLD"}, {}, "broker BIC 'GOLD' is not a BIC"),
        ({"custodian_account": "BNY_77001"}, {}, "custodian account 'BNY_77001'"),
        ({"isin": "US037833100"}, {}, "'US037833100' is not an ISIN"),
        ({"currency": "usd"}, {}, "currency 'usd'"),
        ({"allocation_id": 12345678901234}, {}, "sender's reference"),
        ({}, {"sender_bic": "bad"}, "sender BIC 'bad'"),
    ],
)
def test_mt54x_rejects_what_swift_would(overrides, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _render(write_mt54x, [_line(**overrides)], **{**MT_OPTIONS, **options})


def test_settlement_line_validates_side_and_types():
    with pytest.raises(ValueError, match="unknown side 'short'"):
        _line(side="short")
    with pytest.raises(TypeError, match="quantity must be a Decimal"):
        _line(quantity=100)
    with pytest.raises(ValueError, match="settlement before trade date"):
        _line(settlement_date=dt.date(2026, 11, 24))


def test_format_for():
    assert format_for("csv") is write_csv
    assert format_for("mt54x") is write_mt54x
    with pytest.raises(ValueError, match="unknown settlement file format 'xml'"):
        format_for("xml")


# ------------------------------------------------------------------------- atomic files


def test_atomic_write_writes_checksums_and_never_overwrites(tmp_path):
    # given a target in a directory that does not exist yet
    target = tmp_path / "BNY" / "2026-11-25.csv"
    # when written
    written = atomic_write(target, lambda out: write_csv(golden_day(), out))
    # then the file holds exactly the CSV, the checksum and size describe it, no temp file is left
    expected = (GOLDEN / "settlement_2026-11-25.csv").read_bytes()
    assert target.read_bytes() == expected
    assert written.path == str(target)
    assert written.size == len(expected)
    assert written.sha256 == file_checksum(target) == hashlib.sha256(expected).hexdigest()
    assert os.listdir(target.parent) == ["2026-11-25.csv"]
    # when written again / then refused, and the first file is untouched
    with pytest.raises(FileExistsError):
        atomic_write(target, lambda out: out.write(b"other"))
    assert target.read_bytes() == expected
    assert os.listdir(target.parent) == ["2026-11-25.csv"]


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "bad.csv"

    def failing(out):
        out.write(b"half a file")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, failing)
    assert os.listdir(tmp_path) == []


def test_atomic_write_loses_a_race_cleanly(tmp_path):
    # given another process creates the file while ours is being written
    target = tmp_path / "race.csv"

    def writer(out):
        target.write_bytes(b"theirs")
        out.write(b"ours")

    # when ours is published / then refused without overwriting theirs
    with pytest.raises(FileExistsError):
        atomic_write(target, writer)
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["race.csv"]


def test_file_checksum_known_value(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_checksum(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
