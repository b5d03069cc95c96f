"""The back-office browser pages: who may see them, and the forms doing their work."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from settlement.models import ReconBreak, SettlementFile, Statement
from tests.settlement.helpers import golden_day, golden_reference

pytestmark = pytest.mark.django_db

STATEMENT = (
    "account,instrument,trade_date,side,quantity,price\n"
    "ACC-001,AAPL,2026-11-25,buy,100,189.50\n"
    "ACC-002,IBM,2026-11-25,buy,5,100\n"
)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["pm", "trader", "compliance_officer"])
def test_backoffice_page_is_for_back_office_and_admin_only(who, request):
    user = request.getfixturevalue(who)
    client = _client(user)
    assert client.get("/backoffice/").status_code == 403
    assert client.post("/backoffice/runs/", {"trade_date": "2026-11-25"}).status_code == 403
    assert client.post("/backoffice/breaks/1/resolve/", {"comment": "x"}).status_code == 403


def test_anonymous_is_sent_to_login():
    response = Client().get("/backoffice/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_back_office_runs_lists_downloads_uploads_and_resolves(backoffice):
    ref = golden_reference()
    golden_day(ref)
    client = _client(backoffice)
    # when the day is generated from the page
    response = client.post("/backoffice/runs/", {"trade_date": "2026-11-25"}, follow=True)
    # then the file is listed with a download link that serves it
    record = SettlementFile.objects.get()
    page = response.content.decode()
    assert "Settlement run" in page and "BNY: created" in page
    assert f'href="/api/v1/settlement/files/{record.pk}/download/"' in page
    download = client.get(f"/api/v1/settlement/files/{record.pk}/download/")
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv"
    # when a statement is uploaded
    response = client.post(
        "/backoffice/statements/",
        {
            "file": SimpleUploadedFile("s.csv", STATEMENT.encode(), content_type="text/csv"),
            "source": "custodian:BNY",
        },
        follow=True,
    )
    statement = Statement.objects.get()
    assert f"Statement {statement.pk}: 2 lines, 1 matched, 5 breaks." in response.content.decode()
    # then its open breaks are listed with a resolve form
    brk = ReconBreak.objects.order_by("id").first()
    assert f'action="/backoffice/breaks/{brk.pk}/resolve/"' in response.content.decode()
    # when one is resolved without and then with a comment
    response = client.post(f"/backoffice/breaks/{brk.pk}/resolve/", {"comment": ""}, follow=True)
    assert "comment: required" in response.content.decode()
    response = client.post(
        f"/backoffice/breaks/{brk.pk}/resolve/", {"comment": "Booked late"}, follow=True
    )
    assert f"Break {brk.pk} resolved." in response.content.decode()
    brk.refresh_from_db()
    assert (brk.status, brk.comment) == ("resolved", "Booked late")


def test_a_bad_statement_shows_its_row_errors_and_stores_nothing(backoffice):
    golden_reference()
    response = _client(backoffice).post(
        "/backoffice/statements/",
        {
            "file": SimpleUploadedFile(
                "s.csv",
                b"account,instrument,trade_date,side,quantity,price\nA,B,2026-11-25,buy,x,1\n",
            ),
            "source": "BNY",
        },
        follow=True,
    )
    assert "row 2 quantity: &#x27;x&#x27; is not a decimal number" in response.content.decode()
    assert Statement.objects.count() == 0


def test_report_page_for_compliance(compliance_officer, pm):
    response = _client(compliance_officer).get("/reports/positions/?date=2026-11-25")
    assert response.status_code == 200
    assert "Positions by account" in response.content.decode()
    assert _client(pm).get("/reports/positions/").status_code == 403
