"""Post-trade sweep: position-based rules re-run on actual holdings; reports, task and API."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from compliance.models import BreachReport
from compliance.services import compliance_post_trade_sweep
from compliance.tasks import post_trade_sweep
from oms_site.errors import NotPermitted
from oms_site.models import AuditEvent
from tests import factories as f
from tests.conftest import client_for

D = Decimal
AS_OF = date(2026, 11, 20)
pytestmark = pytest.mark.django_db


@pytest.fixture
def book(account: Any, other_account: Any, instrument: Any, make_rule: Any) -> dict[str, Any]:
    """ACC-A: cash 1,000,000 + 1,000 ACME (100,000) → NAV 1,100,000; ACC-B short 10 ACME."""
    f.PositionFactory(account=account, instrument=instrument, quantity=D("1000"))
    f.PositionFactory(account=other_account, instrument=instrument, quantity=D("-10"))
    return {
        # 100,000 / 1,100,000 = 9.090910% (rounded up)
        "conc_over": make_rule(
            "concentration", params={"dimension": "instrument", "max_pct": "9"}, name="conc 9"
        ),
        "conc_ok": make_rule(
            "concentration", params={"dimension": "issuer", "max_pct": "9.1"}, name="conc 9.1"
        ),
        # 1,000 of 100,000,000 = 0.001%: exactly at the limit passes, just over fails
        "own_at": make_rule("ownership", params={"max_pct": "0.001"}, name="own at"),
        "own_over": make_rule("ownership", params={"max_pct": "0.000999"}, name="own over"),
        "short": make_rule("short_selling", name="no shorts"),
        # pre-trade only rule types are not re-run
        "ff": make_rule("fat_finger", params={"max_quantity": "1"}, name="ff"),
    }


def test_sweep_reports_exactly_the_breaches(book: dict[str, Any], compliance_officer: Any) -> None:
    # when
    report = compliance_post_trade_sweep(as_of=AS_OF, user=compliance_officer)
    # then
    assert (report.as_of, report.run_by, report.breach_count) == (AS_OF, compliance_officer, 3)
    assert [
        (b["rule"], b["account"], b["subject"], b["measured"], b["limit"]) for b in report.breaches
    ] == [
        ("conc 9", "ACC-A", "instrument ACME", "9.090910", "9"),
        (
            "own over",
            None,
            f"issuer {f.InstrumentFactory(symbol='ACME').issuer_id}",
            "0.001000",
            "0.000999",
        ),
        ("no shorts", "ACC-B", "instrument ACME", "-10.00000000", "0"),
    ]
    event = AuditEvent.objects.get(action="compliance.post_trade_sweep")
    assert (event.object_id, event.after["breach_count"]) == (str(report.pk), 3)


def test_sweep_respects_scope_and_short_permission(
    account: Any, other_account: Any, instrument: Any, make_rule: Any
) -> None:
    f.PositionFactory(account=other_account, instrument=instrument, quantity=D("-10"))
    other_account.short_selling_allowed = True
    other_account.save()
    make_rule("short_selling")
    make_rule(
        "concentration",
        params={"dimension": "sector", "max_pct": "1"},
        scope="account",
        accounts=[account],
    )
    report = compliance_post_trade_sweep(as_of=AS_OF)
    assert report.breach_count == 0


def test_task_is_idempotent_per_day_unless_forced(book: dict[str, Any]) -> None:
    first = post_trade_sweep(as_of=AS_OF.isoformat())
    again = post_trade_sweep(as_of=AS_OF.isoformat())
    forced = post_trade_sweep(as_of=AS_OF.isoformat(), force=True)
    assert first == again != forced
    assert BreachReport.objects.count() == 2
    assert BreachReport.objects.get(pk=first).run_by is None


def test_only_compliance_or_admin_runs_a_sweep(pm: Any) -> None:
    with pytest.raises(NotPermitted):
        compliance_post_trade_sweep(as_of=AS_OF, user=pm)


def test_reports_api_run_list_download(
    book: dict[str, Any], compliance_officer: Any, backoffice: Any, pm: Any
) -> None:
    api = client_for(compliance_officer)
    run = api.post("/api/v1/compliance/reports/", {"as_of": "2026-11-20"}, format="json")
    assert run.status_code == 201, run.content
    report_id = run.json()["id"]
    assert (run.json()["as_of"], run.json()["breach_count"]) == ("2026-11-20", 3)
    listing = client_for(backoffice).get("/api/v1/compliance/reports/")
    assert [r["id"] for r in listing.json()["results"]] == [report_id]
    detail = client_for(backoffice).get(f"/api/v1/compliance/reports/{report_id}/")
    assert detail.json()["breaches"][0]["rule"] == "conc 9"
    download = client_for(backoffice).get(f"/api/v1/compliance/reports/{report_id}/download/")
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert f"compliance-breaches-2026-11-20-{report_id}.csv" in download["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(download.content.decode())))
    assert rows[0] == [
        "as_of",
        "rule",
        "rule_version",
        "rule_type",
        "severity",
        "account",
        "subject",
        "measured",
        "limit",
        "message",
    ]
    assert rows[1][:9] == [
        "2026-11-20",
        "conc 9",
        "1",
        "concentration",
        "block",
        "ACC-A",
        "instrument ACME",
        "9.090910",
        "9",
    ]
    assert len(rows) == 4
    # PMs neither run nor read reports; back office reads but does not run
    assert client_for(pm).get("/api/v1/compliance/reports/").status_code == 403
    assert (
        client_for(pm).get(f"/api/v1/compliance/reports/{report_id}/download/").status_code == 403
    )
    assert (
        client_for(backoffice).post("/api/v1/compliance/reports/", {}, format="json").status_code
        == 403
    )


def test_browser_run_and_download(book: dict[str, Any], compliance_officer: Any) -> None:
    from django.test import Client

    c = Client()
    c.force_login(compliance_officer)
    page = c.post("/compliance/reports/run/", follow=True)
    report = BreachReport.objects.get()
    assert "3 breach(es)" in page.content.decode()
    assert f"/compliance/reports/{report.pk}/download/" in page.content.decode()
    download = c.get(f"/compliance/reports/{report.pk}/download/")
    assert download.status_code == 200
    assert download.content.decode().count("\n") == 4


def test_reports_api_filters_by_day(book: dict[str, Any], compliance_officer: Any) -> None:
    api = client_for(compliance_officer)
    compliance_post_trade_sweep(as_of=AS_OF)
    compliance_post_trade_sweep(as_of=date(2026, 11, 19))
    assert api.get("/api/v1/compliance/reports/?as_of=2026-11-19").json()["count"] == 1
    bad = api.get("/api/v1/compliance/reports/?as_of=yesterday")
    assert (bad.status_code, bad.json()["errors"]) == (
        400,
        {"as_of": ["must be a date (YYYY-MM-DD)"]},
    )
