"""The settlement, reconciliation and report API: contract, permissions, audit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from openpyxl import load_workbook

from oms_site.models import AuditEvent
from settlement.models import ReconBreak, SettlementFile, Statement
from settlement.services import settlement_run
from tests.conftest import client_for
from tests.settlement.helpers import TRADE_DATE, golden_day, golden_reference

GOLDEN = Path(__file__).parent / "golden"
pytestmark = pytest.mark.django_db

STATEMENT = (
    "account,instrument,trade_date,side,quantity,price\n"
    "ACC-001,AAPL,2026-11-25,buy,100,189.50\n"  # agrees
    "ACC-002,MSFT,2026-11-25,sell,250,412.40\n"  # price differs
    "ACC-001,US88160R1014,2026-11-25,sell,40,240.10\n"  # TSLA by ISIN, quantity differs
    "ACC-001,VOD,2026-11-25,buy,10000,0.72505\n"  # within the 0.0001 tolerance
    "ACC-002,IBM,2026-11-25,buy,5,100\n"  # not in the OMS
)  # and NVDA (1004) is not on the statement


@pytest.fixture
def golden(db):
    ref = golden_reference()
    golden_day(ref)
    return ref


def _upload(user, content: str = STATEMENT, source: str = "BNY", **extra):
    headers = {k: extra.pop(k) for k in list(extra) if k.startswith("HTTP_")}
    return client_for(user).post(
        "/api/v1/reconciliation/statements/",
        {
            "file": SimpleUploadedFile("bny.csv", content.encode(), content_type="text/csv"),
            "source": source,
            **extra,
        },
        format="multipart",
        **headers,
    )


# -------------------------------------------------------------------------------- runs, files


def test_back_office_runs_a_day_and_downloads_the_verified_file(golden, backoffice):
    client = client_for(backoffice)
    # when the back office asks for the day's files
    response = client.post("/api/v1/settlement/runs/", {"trade_date": "2026-11-25"})
    # then 201 with the run and its outcome per custodian
    assert response.status_code == 201
    body = response.json()
    assert (body["trade_date"], body["status"], body["requested_by"]) == (
        "2026-11-25",
        "done",
        "backoffice_a",
    )
    assert [(c["custodian"], c["outcome"]) for c in body["summary"]["custodians"]] == [
        ("BNY", "created")
    ]
    # and the file is listed
    listed = client.get("/api/v1/settlement/files/?trade_date=2026-11-25&custodian=BNY").json()
    assert listed["count"] == 1
    item = listed["results"][0]
    record = SettlementFile.objects.get()
    assert item == {
        "id": record.pk,
        "run": body["id"],
        "custodian": "BNY",
        "trade_date": "2026-11-25",
        "version": 1,
        "file_format": "csv",
        "filename": "BNY_20261125_v1.csv",
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "line_count": 5,
        "changes": {},
        "created_at": item["created_at"],
        "download_url": f"/api/v1/settlement/files/{record.pk}/download/",
    }
    # when downloaded / then the golden bytes, as text/csv, as an attachment, audited
    download = client.get(item["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv"
    assert download["Content-Disposition"] == 'attachment; filename="BNY_20261125_v1.csv"'
    assert download["X-Checksum-SHA256"] == record.sha256
    assert (
        b"".join(download.streaming_content) == (GOLDEN / "settlement_2026-11-25.csv").read_bytes()
    )
    event = AuditEvent.objects.get(action="settlement_file.downloaded")
    assert (event.actor_name, event.object_id, event.after) == (
        "backoffice_a",
        str(record.pk),
        {"sha256": record.sha256},
    )


def test_rerun_through_the_api_reports_unchanged(golden, backoffice):
    client = client_for(backoffice)
    client.post("/api/v1/settlement/runs/", {"trade_date": "2026-11-25"})
    again = client.post("/api/v1/settlement/runs/", {"trade_date": "2026-11-25"}).json()
    assert again["summary"]["outcomes"] == {
        "created": 0,
        "new_version": 0,
        "unchanged": 1,
        "failed": 0,
    }
    assert client.get("/api/v1/settlement/files/").json()["count"] == 1
    assert client.get("/api/v1/settlement/runs/").json()["count"] == 2


def test_mt54x_download_is_octet_stream(backoffice):
    ref = golden_reference(settlement_format="mt54x")
    golden_day(ref)
    record = SettlementFile.objects.get(run=settlement_run(trade_date=TRADE_DATE))
    response = client_for(backoffice).get(
        f"/api/v1/settlement/files/{record.pk}/download/", HTTP_ACCEPT="application/octet-stream"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert (
        b"".join(response.streaming_content) == (GOLDEN / "settlement_2026-11-25.fin").read_bytes()
    )


def test_a_tampered_file_is_not_served_and_the_attempt_is_audited(golden, backoffice):
    # given a stored file whose bytes changed on disk
    record = SettlementFile.objects.get(run=settlement_run(trade_date=TRADE_DATE))
    path = Path(record.path)
    path.chmod(0o600)
    path.write_bytes(path.read_bytes().replace(b"18955.12", b"18955.13"))
    # when downloaded / then 409, nothing served, audited
    response = client_for(backoffice).get(f"/api/v1/settlement/files/{record.pk}/download/")
    assert response.status_code == 409
    assert response.json()["code"] == "checksum_mismatch"
    event = AuditEvent.objects.get(action="settlement_file.checksum_mismatch")
    assert event.meta["recorded_sha256"] == record.sha256
    assert event.after["sha256"] != record.sha256
    assert not AuditEvent.objects.filter(action="settlement_file.downloaded").exists()


def test_missing_file_id_is_404(backoffice):
    response = client_for(backoffice).get("/api/v1/settlement/files/999/download/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_bad_trade_date_is_400(backoffice):
    response = client_for(backoffice).post("/api/v1/settlement/runs/", {"trade_date": "25/11"})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["trade_date"]


def test_compliance_reads_files_but_may_not_run(golden, compliance_officer):
    record = SettlementFile.objects.get(run=settlement_run(trade_date=TRADE_DATE))
    client = client_for(compliance_officer)
    assert client.get("/api/v1/settlement/files/").json()["count"] == 1
    assert client.get(f"/api/v1/settlement/files/{record.pk}/download/").status_code == 200
    assert client.post("/api/v1/settlement/runs/", {"trade_date": "2026-11-25"}).status_code == 403
    assert client.get("/api/v1/reconciliation/breaks/").status_code == 403
    assert _upload(compliance_officer).status_code == 403


@pytest.mark.parametrize("who", ["pm", "trader"])
def test_pm_and_trader_get_403_everywhere(golden, who, request):
    user = request.getfixturevalue(who)
    record = SettlementFile.objects.get(run=settlement_run(trade_date=TRADE_DATE))
    client = client_for(user)
    responses = [
        client.post("/api/v1/settlement/runs/", {"trade_date": "2026-11-25"}),
        client.get("/api/v1/settlement/runs/"),
        client.get("/api/v1/settlement/files/"),
        client.get(f"/api/v1/settlement/files/{record.pk}/"),
        client.get(f"/api/v1/settlement/files/{record.pk}/download/"),
        _upload(user),
        client.get("/api/v1/reconciliation/statements/"),
        client.get("/api/v1/reconciliation/breaks/"),
        client.post("/api/v1/reconciliation/breaks/1/resolve/", {"comment": "x"}),
        client.get("/api/v1/reports/executions/"),
        client.get("/api/v1/reports/positions/?format=csv"),
    ]
    assert [r.status_code for r in responses] == [403] * len(responses)
    assert {r.json()["code"] for r in responses} == {"permission_denied"}


def test_anonymous_is_401(api_client):
    assert api_client.get("/api/v1/settlement/files/").status_code == 401


# ----------------------------------------------------------------------------- reconciliation


def test_statement_with_every_kind_of_break(golden, backoffice):
    # when the custodian's statement is uploaded
    response = _upload(backoffice)
    # then 201: two lines agree (one within the tolerance), four breaks
    assert response.status_code == 201
    body = response.json()
    assert {k: body[k] for k in ("source", "source_kind", "source_code", "line_count")} == {
        "source": "BNY",
        "source_kind": "custodian",
        "source_code": "BNY",
        "line_count": 5,
    }
    assert (body["matched_count"], body["break_count"], body["price_tolerance"]) == (
        2,
        4,
        "0.00010000",
    )
    assert body["trade_dates"] == ["2026-11-25"]
    breaks = client_for(backoffice).get("/api/v1/reconciliation/breaks/?status=open").json()
    assert breaks["count"] == 4
    rows = [
        (
            b["kind"],
            b["account"],
            b["instrument"],
            b["side"],
            b["oms_allocation_id"],
            b["statement_row"],
            b["oms_values"]["quantity"],
            b["statement_values"]["quantity"],
            b["oms_values"]["price"],
            b["statement_values"]["price"],
        )
        for b in breaks["results"]
    ]
    assert rows == [
        ("quantity_mismatch", "ACC-001", "TSLA", "sell", 1003, 4, "50.00000000", "40", "240.10000000", "240.10"),
        ("missing_in_oms", "ACC-002", "IBM", "buy", None, 6, None, "5", None, "100"),
        ("price_mismatch", "ACC-002", "MSFT", "sell", 1002, 3, "250.00000000", "250", "412.34560000", "412.40"),
        ("missing_in_statement", "ACC-002", "NVDA", "buy", 1004, None, "10.00000000", None, "140.25000000", None),
    ]  # fmt: skip
    assert {b["status"] for b in breaks["results"]} == {"open"}
    statement = Statement.objects.get()
    event = AuditEvent.objects.get(action="statement.uploaded")
    assert (event.object_id, event.after["break_count"]) == (str(statement.pk), 4)


def test_tolerance_is_configurable(golden, backoffice, settings):
    # given a wider default tolerance, the MSFT price difference (0.0544) is within it
    settings.RECON_PRICE_TOLERANCE = "0.1"
    body = _upload(backoffice).json()
    assert (body["matched_count"], body["break_count"]) == (3, 3)
    # and a tolerance given with the upload wins over the setting
    body = _upload(backoffice, price_tolerance="0").json()
    assert (body["matched_count"], body["break_count"]) == (1, 5)


def test_broker_statement_is_matched_against_that_brokers_allocations(golden, backoffice):
    content = (
        "account,instrument,trade_date,side,quantity,price\n"
        "ACC-002,MSFT,2026-11-25,sell,250,412.3456\n"
    )
    body = _upload(backoffice, content=content, source="broker:MS").json()
    assert (body["source_kind"], body["matched_count"], body["break_count"]) == ("broker", 1, 0)


def test_a_bad_statement_is_refused_whole_with_row_and_field_errors(golden, backoffice):
    content = (
        "account,instrument,trade_date,side,quantity,price\n"
        "ACC-001,AAPL,2026-11-25,buy,100,189.50\n"
        "ACC-001,AAPL,2026-13-01,buy,-5,189.50\n"
        "ACC-001,,2026-11-25,hold,1,1\n"
    )
    response = _upload(backoffice, content=content)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_statement"
    assert body["errors"] == [
        {
            "row": 3,
            "field": "trade_date",
            "detail": "'2026-13-01' is not a date in YYYY-MM-DD form",
        },
        {"row": 3, "field": "quantity", "detail": "must be greater than zero"},
        {"row": 4, "field": "instrument", "detail": "required"},
        {"row": 4, "field": "side", "detail": "must be one of buy, sell, sell_short, buy_to_cover"},
    ]
    assert (Statement.objects.count(), ReconBreak.objects.count()) == (0, 0)
    assert not AuditEvent.objects.filter(action="statement.uploaded").exists()


def test_unknown_source_and_non_utf8_are_400(golden, backoffice):
    response = _upload(backoffice, source="NOPE")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["source"]
    bad = client_for(backoffice).post(
        "/api/v1/reconciliation/statements/",
        {"file": SimpleUploadedFile("x.csv", b"\xff\xfe\x00"), "source": "BNY"},
        format="multipart",
    )
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "file"
    assert Statement.objects.count() == 0


def test_resolving_a_break_needs_a_comment_is_audited_and_only_once(golden, backoffice):
    _upload(backoffice)
    client = client_for(backoffice)
    brk = ReconBreak.objects.order_by("id").first()
    url = f"/api/v1/reconciliation/breaks/{brk.pk}/resolve/"
    # when resolved without a comment / then 400 and still open
    assert client.post(url, {}).status_code == 400
    blank = client.post(url, {"comment": "   "})
    assert blank.status_code == 400
    assert list(blank.json()["errors"]) == ["comment"]
    # when resolved with one / then resolved, by whom, audited
    done = client.post(url, {"comment": "Custodian booked 40; confirmed 50 with GS."})
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["resolved_by"], done.json()["comment"]) == (
        "resolved",
        "backoffice_a",
        "Custodian booked 40; confirmed 50 with GS.",
    )
    event = AuditEvent.objects.get(action="recon_break.resolved")
    assert (event.object_id, event.before, event.after) == (
        str(brk.pk),
        {"status": "open"},
        {"status": "resolved", "comment": "Custodian booked 40; confirmed 50 with GS."},
    )
    # when resolved again / then 409, nothing changes
    again = client.post(url, {"comment": "again"})
    assert again.status_code == 409
    assert again.json()["code"] == "already_resolved"
    brk.refresh_from_db()
    assert brk.comment == "Custodian booked 40; confirmed 50 with GS."
    # and the status filter sees it
    assert client.get("/api/v1/reconciliation/breaks/?status=resolved").json()["count"] == 1
    assert client.get("/api/v1/reconciliation/breaks/?status=open").json()["count"] == 3
    assert (
        client.post("/api/v1/reconciliation/breaks/99999/resolve/", {"comment": "x"}).status_code
        == 404
    )


# ------------------------------------------------------------------------------------ reports


def test_commissions_report_as_json_csv_and_xlsx(golden, compliance_officer):
    client = client_for(compliance_officer)
    # as JSON
    body = client.get("/api/v1/reports/commissions/?date=2026-11-25").json()
    assert body["columns"] == ["broker", "allocations", "gross", "commission", "fees"]
    assert body["rows"] == [
        {"broker": "BARC", "allocations": "1", "gross": "7250.00", "commission": "7.25", "fees": "36.25"},
        {"broker": "GS", "allocations": "3", "gross": "32357.50", "commission": "9.00", "fees": "0.41"},
        {"broker": "MS", "allocations": "1", "gross": "103086.40", "commission": "12.50", "fees": "2.31"},
    ]  # fmt: skip
    # as CSV
    csv_response = client.get("/api/v1/reports/commissions/?date=2026-11-25&format=csv")
    assert csv_response.status_code == 200
    assert csv_response["Content-Type"].startswith("text/csv")
    assert csv_response["Content-Disposition"] == (
        'attachment; filename="commissions_2026-11-25.csv"'
    )
    assert csv_response.content.decode() == (
        "broker,allocations,gross,commission,fees\n"
        "BARC,1,7250.00,7.25,36.25\n"
        "GS,3,32357.50,9.00,0.41\n"
        "MS,1,103086.40,12.50,2.31\n"
    )
    # as XLSX
    xlsx = client.get("/api/v1/reports/commissions/?date=2026-11-25&format=xlsx")
    assert xlsx["Content-Type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values[1] == ["broker", "allocations", "gross", "commission", "fees"]
    assert values[2][0] == "BARC"
    assert str(values[3][2]) == "32357.5"


def test_executions_and_positions_reports(golden, backoffice):
    client = client_for(backoffice)
    executions = client.get("/api/v1/reports/executions/?date=2026-11-25").json()
    assert [(r["instrument"], r["side"], r["quantity"]) for r in executions["rows"]] == [
        ("AAPL", "buy", "100.00000000"),
        ("MSFT", "sell", "250.00000000"),
        ("TSLA", "sell_short", "50.00000000"),
        ("NVDA", "buy_to_cover", "10.00000000"),
        ("VOD", "buy", "10000.00000000"),
    ]
    positions = client.get("/api/v1/reports/positions/?format=csv")
    assert positions.content.decode() == "account,instrument,quantity,avg_cost,realised_pnl\n"
    compliance = client.get("/api/v1/reports/compliance/?date=2026-11-25").json()
    assert compliance["rows"] == []


def test_unknown_report_and_bad_date(backoffice):
    client = client_for(backoffice)
    assert client.get("/api/v1/reports/nope/").status_code == 404
    response = client.get("/api/v1/reports/positions/?date=yesterday&format=csv")
    assert response.status_code == 400
    assert response.json()["errors"] == {"date": ["must be YYYY-MM-DD"]}
    assert [r["name"] for r in client.get("/api/v1/reports/").json()["reports"]] == [
        "commissions",
        "compliance",
        "executions",
        "positions",
    ]


def test_a_retried_upload_with_the_same_idempotency_key_creates_nothing_new(golden, backoffice):
    # given an upload made with an Idempotency-Key
    first = _upload(backoffice, HTTP_IDEMPOTENCY_KEY="stmt-2026-11-25")
    # when the same request is retried with the same key
    again = _upload(backoffice, HTTP_IDEMPOTENCY_KEY="stmt-2026-11-25")
    # then the first response is replayed and no second statement or break exists
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert (Statement.objects.count(), ReconBreak.objects.count()) == (1, 4)
