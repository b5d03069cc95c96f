"""settlement_run through the database: golden files, versions, netting, dates, failures."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from oms_site.errors import NotPermitted
from oms_site.models import AuditEvent
from settlement import tasks
from settlement.formats import file_checksum
from settlement.models import SettlementFile, SettlementRun
from settlement.services import settlement_run
from tests import factories as f
from tests.settlement.helpers import (
    TRADE_DATE,
    golden_day,
    golden_reference,
    make_allocation,
    make_order,
)

GOLDEN = Path(__file__).parent / "golden"
pytestmark = pytest.mark.django_db


def _only_file(run: SettlementRun) -> SettlementFile:
    files = list(run.files.all())
    assert len(files) == 1
    return files[0]


# ---------------------------------------------------------------------------- golden files


def test_csv_file_of_the_golden_day_is_byte_identical_to_the_reviewed_file(settlement_dir):
    # given the golden day's five allocations at a CSV custodian
    ref = golden_reference(settlement_format="csv")
    golden_day(ref)
    # when the day is run
    run = settlement_run(trade_date=TRADE_DATE)
    # then one file, v1, exactly the golden bytes, stored under SETTLEMENT_DIR with its checksum
    record = _only_file(run)
    data = Path(record.path).read_bytes()
    assert data == (GOLDEN / "settlement_2026-11-25.csv").read_bytes()
    assert record.path == str(settlement_dir / "2026-11-25" / "BNY_20261125_v1.csv")
    assert (record.version, record.file_format, record.line_count) == (1, "csv", 5)
    assert record.sha256 == file_checksum(record.path)
    assert record.size_bytes == len(data)
    assert record.changes == {}
    assert run.status == "done"
    assert run.summary["outcomes"] == {"created": 1, "new_version": 0, "unchanged": 0, "failed": 0}
    assert run.summary["custodians"] == [
        {
            "custodian": "BNY",
            "format": "csv",
            "outcome": "created",
            "file_id": record.pk,
            "version": 1,
            "sha256": record.sha256,
            "line_count": 5,
        }
    ]


def test_mt54x_file_of_the_golden_day_is_byte_identical_to_the_reviewed_file():
    # given the golden day at a SWIFT custodian (settlement dates over Thanksgiving, CREST for VOD)
    ref = golden_reference(settlement_format="mt54x")
    golden_day(ref)
    # when
    run = settlement_run(trade_date=TRADE_DATE)
    # then MT541 for the buys, MT543 for the sales, byte for byte the reviewed file
    record = _only_file(run)
    assert record.filename == "BNY_20261125_v1.fin"
    assert Path(record.path).read_bytes() == (GOLDEN / "settlement_2026-11-25.fin").read_bytes()


def test_mt54x_messages_have_the_mandatory_structure():
    # given the golden day as MT54x through the database
    ref = golden_reference(settlement_format="mt54x")
    golden_day(ref)
    record = _only_file(settlement_run(trade_date=TRADE_DATE))
    text = Path(record.path).read_bytes().decode("ascii")
    messages = [m + "-}\r\n" for m in text.split("-}\r\n") if m]
    # then five messages, one per allocation, in allocation id order
    assert [m[33:36] for m in messages] == ["541", "543", "543", "541", "541"]
    assert [m.split(":20C::SEME//")[1].split("\r\n")[0] for m in messages] == [
        "OMS1001",
        "OMS1002",
        "OMS1003",
        "OMS1004",
        "OMS1005",
    ]
    for message in messages:
        fields = message.split("{4:\r\n")[1].split("\r\n")[:-2]
        blocks = [x[5:] for x in fields if x.startswith(":16R:")]
        assert blocks[:3] == ["GENL", "TRADDET", "FIAC"]
        assert blocks[3] == "SETDET"
        assert fields.count(":23G:NEWM") == 1
        assert sum(x.startswith(":19A::SETT//") for x in fields) == 1
        assert sum(x.startswith(":36B::SETT//UNIT/") for x in fields) == 1
    # and the sale delivers to the broker, the buy receives from it
    assert ":95P::REAG//MSNYUS33" in messages[1] and ":95P::DEAG//IRVTUS3N" in messages[1]
    assert ":95P::DEAG//GOLDUS33" in messages[0] and ":95P::REAG//IRVTUS3N" in messages[0]
    assert ":95P::PSET//CRSTGB22" in messages[4]


# ------------------------------------------------------------------------------- versions


def test_rerun_with_nothing_changed_is_unchanged_and_writes_nothing(settlement_dir):
    # given a day already run
    ref = golden_reference()
    golden_day(ref)
    first = _only_file(settlement_run(trade_date=TRADE_DATE))
    before = sorted(p.name for p in (settlement_dir / "2026-11-25").iterdir())
    # when it is run again
    again = settlement_run(trade_date=TRADE_DATE)
    # then no new version, no new file on disk (no staging left behind), outcome "unchanged"
    assert SettlementFile.objects.count() == 1
    assert list(again.files.all()) == []
    assert sorted(p.name for p in (settlement_dir / "2026-11-25").iterdir()) == before
    assert before == ["BNY_20261125_v1.csv"]
    assert again.summary["custodians"] == [
        {
            "custodian": "BNY",
            "format": "csv",
            "outcome": "unchanged",
            "file_id": first.pk,
            "version": 1,
            "sha256": first.sha256,
            "line_count": 5,
        }
    ]


def test_late_fill_and_reallocation_make_v2_with_the_changes(settlement_dir):
    # given the golden day, run once
    ref = golden_reference()
    allocations = golden_day(ref)
    v1 = _only_file(settlement_run(trade_date=TRADE_DATE))
    v1_bytes = Path(v1.path).read_bytes()
    # when a late fill adds 50 AAPL to order of 1001 at a new average price, 1004 is fully
    # taken back, and a new order is allocated
    make_allocation(
        ref,
        order=allocations[0].order,
        broker="GS",
        quantity="50",
        price="189.60",
        gross="9494.00",
        commission="2.50",
        fees="0.06",
    )
    make_allocation(
        ref,
        order=allocations[3].order,
        broker="GS",
        quantity="-10",
        price="140.25",
        gross="-1402.50",
        commission="-1.00",
        fees="0",
        reversal_of=allocations[3],
    )
    new_order = make_order(ref, account="ACC-002", symbol="AAPL", side="buy", quantity="20")
    added = make_allocation(
        ref, order=new_order, broker="GS", quantity="20", price="189.60", gross="3792.00"
    )
    run = settlement_run(trade_date=TRADE_DATE)
    # then a v2 file next to the untouched v1, with what changed by allocation id
    v2 = _only_file(run)
    assert (v2.version, v2.line_count) == (2, 5)
    assert v2.path == str(settlement_dir / "2026-11-25" / "BNY_20261125_v2.csv")
    assert Path(v1.path).read_bytes() == v1_bytes
    assert file_checksum(v1.path) == v1.sha256
    assert v2.changes == {
        "previous_version": 1,
        "previous_sha256": v1.sha256,
        "added": [added.pk],
        "removed": [1004],
        "changed": [1001],
        "counts": {"added": 1, "removed": 1, "changed": 1, "unchanged": 3},
        "truncated": False,
    }
    assert run.summary["custodians"][0]["outcome"] == "new_version"
    assert run.summary["custodians"][0]["changes"] == v2.changes["counts"]
    # and the order of 1001 is one netted line: 150 at the last price, summed amounts
    lines = Path(v2.path).read_text().splitlines()
    assert lines[1] == (
        "1001,2026-11-25,2026-11-27,ACC-001,BNY-77001,US0378331005,AAPL,buy,"
        "150.00000000,189.60000000,28444.00,7.50,0.18,28451.68,USD,GS"
    )
    assert [line.split(",")[0] for line in lines[1:]] == [
        "1001",
        "1002",
        "1003",
        "1005",
        str(added.pk),
    ]
    # and each version is audited
    created = AuditEvent.objects.filter(action="settlement_file.created").order_by("id")
    assert [e.after["version"] for e in created] == [1, 2]
    assert created[1].after["changes"] == {
        "counts": {"added": 1, "removed": 1, "changed": 1, "unchanged": 3}
    }


def test_a_day_whose_lines_are_all_reversed_gets_an_empty_new_version():
    # given a day with one allocation, run once
    ref = golden_reference()
    order = make_order(ref, account="ACC-001", symbol="AAPL", side="buy", quantity="100")
    first = make_allocation(
        ref, order=order, broker="GS", quantity="100", price="10", gross="1000.00"
    )
    settlement_run(trade_date=TRADE_DATE)
    # when the allocation is taken back entirely
    make_allocation(
        ref,
        order=order,
        broker="GS",
        quantity="-100",
        price="10",
        gross="-1000.00",
        reversal_of=first,
    )
    v2 = _only_file(settlement_run(trade_date=TRADE_DATE))
    # then v2 is the header alone and says the line was removed
    assert Path(v2.path).read_text().count("\n") == 1
    assert (v2.version, v2.line_count) == (2, 0)
    assert v2.changes["removed"] == [first.pk]


def test_a_file_is_never_overwritten_even_if_one_exists_without_a_record(settlement_dir):
    # given a day whose v1 path is already taken on disk by a file with other content
    ref = golden_reference()
    golden_day(ref)
    target = settlement_dir / "2026-11-25" / "BNY_20261125_v1.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's file\n")
    # when the day is run
    run = settlement_run(trade_date=TRADE_DATE)
    # then that file is untouched, nothing is recorded, and the run says why it failed
    assert target.read_bytes() == b"someone else's file\n"
    assert SettlementFile.objects.count() == 0
    assert run.status == "failed"
    assert run.summary["custodians"][0]["outcome"] == "failed"
    assert "exists on disk with different content" in run.summary["custodians"][0]["error"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["BNY_20261125_v1.csv"]


def test_an_orphan_file_with_the_same_bytes_is_adopted(settlement_dir):
    # given the v1 file left on disk by a run that lost its transaction
    ref = golden_reference()
    golden_day(ref)
    target = settlement_dir / "2026-11-25" / "BNY_20261125_v1.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes((GOLDEN / "settlement_2026-11-25.csv").read_bytes())
    # when the day is run / then the file is recorded as v1
    record = _only_file(settlement_run(trade_date=TRADE_DATE))
    assert (record.version, record.path) == (1, str(target))


# ---------------------------------------------------------------------- per custodian, dates


def test_each_custodian_gets_its_own_file_in_its_format_and_one_failure_does_not_stop_others():
    # given a CSV custodian and a SWIFT custodian whose broker has no BIC
    ref = golden_reference(settlement_format="csv")
    golden_day(ref)
    swift = f.CustodianFactory(code="SWF", bic="SWFTUS33", settlement_format="mt54x")
    account = f.AccountFactory(code="ACC-S", custodian=swift, custodian_account="S-1")
    no_bic = f.BrokerFactory(code="NOBIC", bic="")
    ref["brokers"]["NOBIC"] = no_bic
    ref["accounts"]["ACC-S"] = account
    order = make_order(ref, account="ACC-S", symbol="AAPL", side="buy", quantity="1")
    bad = make_allocation(ref, order=order, broker="NOBIC", quantity="1", price="1", gross="1.00")
    # when
    run = settlement_run(trade_date=TRADE_DATE)
    # then BNY's file exists and SWF's failure is reported with the allocation at fault
    assert run.status == "failed"
    outcomes = {c["custodian"]: c for c in run.summary["custodians"]}
    assert outcomes["BNY"]["outcome"] == "created"
    assert outcomes["SWF"]["outcome"] == "failed"
    assert (
        outcomes["SWF"]["error"]
        == f"allocation {bad.pk}: broker BIC '' is not a BIC (8 or 11 characters)"
    )
    assert [x.custodian.code for x in SettlementFile.objects.all()] == ["BNY"]


def test_settlement_dates_through_the_service_skip_weekends_and_holidays():
    # given trades on Christmas Eve 2026 (Thursday): US T+1, UK T+2, and crypto T+0 on a Saturday
    ref = golden_reference()
    btc = f.InstrumentFactory(
        symbol="BTC-USD", isin=None, asset_class="crypto", settlement_cycle=0, calendar_code="24/7"
    )
    ref["instruments"]["BTC-USD"] = btc
    christmas_eve = dt.date(2026, 12, 24)
    saturday = dt.date(2026, 12, 26)
    aapl = make_order(ref, account="ACC-001", symbol="AAPL", side="buy", quantity="1")
    vod = make_order(ref, account="ACC-001", symbol="VOD", side="buy", quantity="1")
    coin = make_order(ref, account="ACC-001", symbol="BTC-USD", side="buy", quantity="0.5")
    make_allocation(
        ref,
        order=aapl,
        broker="GS",
        quantity="1",
        price="1",
        gross="1.00",
        trade_date=christmas_eve,
    )
    make_allocation(
        ref,
        order=vod,
        broker="BARC",
        quantity="1",
        price="1",
        gross="1.00",
        trade_date=christmas_eve,
    )
    make_allocation(
        ref, order=coin, broker="GS", quantity="0.5", price="2", gross="1.00", trade_date=saturday
    )
    # when both days are run
    eve = Path(_only_file(settlement_run(trade_date=christmas_eve)).path).read_text().splitlines()
    sat = Path(_only_file(settlement_run(trade_date=saturday)).path).read_text().splitlines()
    # then NYSE (closed 25th, weekend) settles Monday 28th; London (closed 25th, 28th)
    # settles Wednesday 30th; crypto settles the same Saturday
    assert [line.split(",")[2] for line in eve[1:]] == ["2026-12-28", "2026-12-30"]
    assert [line.split(",")[2] for line in sat[1:]] == ["2026-12-26"]
    assert sat[1].split(",")[5:7] == ["", "BTC-USD"]


def test_a_negative_day_is_signed_in_csv_and_a_delivery_in_mt54x():
    # given a buy order allocated on the 24th and partly taken back on the 25th... of a GTC order
    ref = golden_reference(settlement_format="mt54x")
    order = make_order(ref, account="ACC-001", symbol="AAPL", side="buy", quantity="100")
    first = make_allocation(
        ref,
        order=order,
        broker="GS",
        quantity="100",
        price="10",
        gross="1000.00",
        trade_date=dt.date(2026, 11, 24),
    )
    back = make_allocation(
        ref,
        order=order,
        broker="GS",
        quantity="-40",
        price="10",
        gross="-400.00",
        reversal_of=first,
    )
    # when the 25th is run
    record = _only_file(settlement_run(trade_date=TRADE_DATE))
    text = Path(record.path).read_bytes().decode("ascii")
    # then the take-back is a delivery (MT543) of 40 with the day's first row as reference
    assert "{2:I543" in text
    assert ":36B::SETT//UNIT/40,\r\n" in text
    assert f":20C::SEME//OMS{back.pk}\r\n" in text
    assert ":19A::SETT//USD400,\r\n" in text


def test_a_reprice_only_day_is_a_cash_line_in_csv_and_listed_for_mt54x():
    # given an order with only a re-pricing row on the trade date
    ref = golden_reference(settlement_format="mt54x")
    order = make_order(ref, account="ACC-001", symbol="AAPL", side="buy", quantity="100")
    row = make_allocation(ref, order=order, broker="GS", quantity="0", price="10.01", gross="1.00")
    # when run as MT54x / then no message, the line is listed in the summary
    run = settlement_run(trade_date=TRADE_DATE)
    record = _only_file(run)
    assert record.line_count == 0
    assert Path(record.path).read_bytes() == b""
    assert run.summary["custodians"][0]["cash_only_lines"] == [row.pk]


# ----------------------------------------------------------------------------- permissions


def test_only_back_office_and_admin_may_run(
    pm, trader, compliance_officer, backoffice, administrator
):
    for user in (pm, trader, compliance_officer):
        with pytest.raises(NotPermitted):
            settlement_run(trade_date=TRADE_DATE, user=user)
    assert settlement_run(trade_date=TRADE_DATE, user=backoffice).requested_by == backoffice
    assert settlement_run(trade_date=TRADE_DATE, user=administrator).status == "done"


# ---------------------------------------------------------------------------------- the task


def test_firm_today_is_the_date_on_the_firms_clock(settings):
    # given 02:30 UTC on the 26th, which is still the 25th in New York
    settings.FIRM_TIME_ZONE = "America/New_York"
    now = dt.datetime(2026, 11, 26, 2, 30, tzinfo=dt.UTC)
    assert tasks.firm_today(now) == dt.date(2026, 11, 25)
    settings.FIRM_TIME_ZONE = "Asia/Tokyo"
    assert tasks.firm_today(now) == dt.date(2026, 11, 26)


def test_end_of_day_task_is_late_acked_and_idempotent(monkeypatch):
    # given the golden day, and "today" on the firm's clock is its trade date
    ref = golden_reference()
    golden_day(ref)
    monkeypatch.setattr(tasks, "firm_today", lambda now=None: TRADE_DATE)
    # when the beat task runs twice (a redelivery after a lost worker)
    first = tasks.end_of_day_settlement.run()
    second = tasks.end_of_day_settlement.run()
    # then one file; the second run found it unchanged
    assert first["outcomes"]["created"] == 1
    assert second["outcomes"]["unchanged"] == 1
    assert SettlementFile.objects.count() == 1
    assert tasks.end_of_day_settlement.acks_late is True
    assert tasks.end_of_day_settlement.reject_on_worker_lost is True
    assert tasks.end_of_day_settlement.name == "settlement.tasks.end_of_day_settlement"


def test_staging_files_never_survive_a_failure(settlement_dir):
    # given a custodian whose file fails half way
    ref = golden_reference(settlement_format="mt54x")
    golden_day(ref)
    ref["brokers"]["GS"].bic = "BAD"
    ref["brokers"]["GS"].save()
    # when
    run = settlement_run(trade_date=TRADE_DATE)
    # then the run failed and neither a temporary nor a staging file is left behind
    assert run.status == "failed"
    assert os.listdir(settlement_dir / "2026-11-25") == []


def test_mt54x_regeneration_records_changes_by_allocation_id():
    # given the golden day at a SWIFT custodian, run once
    ref = golden_reference(settlement_format="mt54x")
    allocations = golden_day(ref)
    v1 = _only_file(settlement_run(trade_date=TRADE_DATE))
    # when MSFT's order gets a late fill, and the custodian is then switched to CSV
    make_allocation(
        ref,
        order=allocations[1].order,
        broker="MS",
        quantity="10",
        price="412.3456",
        gross="4123.46",
    )
    v2 = _only_file(settlement_run(trade_date=TRADE_DATE))
    ref["custodian"].settlement_format = "csv"
    ref["custodian"].save()
    v3 = _only_file(settlement_run(trade_date=TRADE_DATE))
    # then v2 changed one message; v3, in another format, changed every line
    assert (v2.version, v2.changes["previous_sha256"]) == (2, v1.sha256)
    assert (v2.changes["added"], v2.changes["removed"], v2.changes["changed"]) == ([], [], [1002])
    assert v2.changes["counts"] == {"added": 0, "removed": 0, "changed": 1, "unchanged": 4}
    assert (v3.version, v3.file_format, v3.filename) == (3, "csv", "BNY_20261125_v3.csv")
    assert v3.changes["changed"] == [1001, 1002, 1003, 1004, 1005]
