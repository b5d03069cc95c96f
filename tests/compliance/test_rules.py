"""Rule and restricted-list changes: validated, versioned and audited, by service and admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from compliance.models import RestrictedEntry, Rule
from compliance.services import restricted_entry_save, restricted_import_csv, rule_save
from oms_site.errors import NotPermitted, ValidationError
from oms_site.models import AuditEvent
from tests import factories as f
from tests.compliance.conftest import check, results_of
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def _browser(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_rule_save_creates_then_bumps_version_and_audits(compliance_officer: Any) -> None:
    # when a rule is created and then changed twice
    rule = rule_save(
        user=compliance_officer,
        data={"name": "Max size", "rule_type": "fat_finger", "params": {"max_quantity": "100"}},
    )
    rule_save(user=compliance_officer, rule_id=rule.pk, data={"params": {"max_quantity": "200"}})
    rule = rule_save(user=compliance_officer, rule_id=rule.pk, data={"severity": "warn"})
    # then
    assert (rule.version, rule.params, rule.severity) == (3, {"max_quantity": "200"}, "warn")
    events = list(AuditEvent.objects.filter(object_type="compliance.rule").order_by("seq"))
    assert [e.action for e in events] == [
        "compliance.rule_created",
        "compliance.rule_changed",
        "compliance.rule_changed",
    ]
    assert [e.actor_id for e in events] == [compliance_officer.pk] * 3
    assert events[1].before["params"] == {"max_quantity": "100"}
    assert events[1].after["params"] == {"max_quantity": "200"}
    assert (events[1].before["version"], events[1].after["version"]) == (1, 2)


def test_rule_save_rejects_bad_params_and_saves_nothing(compliance_officer: Any) -> None:
    rule = rule_save(
        user=compliance_officer,
        data={
            "name": "Conc",
            "rule_type": "concentration",
            "params": {"dimension": "issuer", "max_pct": "10"},
        },
    )
    for bad in (
        {"dimension": "country", "max_pct": "10"},
        {"dimension": "issuer"},
        {"dimension": "issuer", "max_pct": "-1"},
        {"dimension": "issuer", "max_pct": "x", "extra": "1"},
    ):
        with pytest.raises(ValidationError) as exc:
            rule_save(user=compliance_officer, rule_id=rule.pk, data={"params": bad})
        assert list(exc.value.errors) == ["params"]
    rule.refresh_from_db()
    assert (rule.version, rule.params) == (1, {"dimension": "issuer", "max_pct": "10"})
    assert AuditEvent.objects.filter(object_type="compliance.rule").count() == 1


def test_only_compliance_edits_rules(pm: Any, administrator: Any) -> None:
    for user in (pm, administrator):
        with pytest.raises(NotPermitted):
            rule_save(user=user, data={"name": "x", "rule_type": "short_selling"})
    assert not Rule.objects.exists()


def test_results_carry_the_version_in_force(
    compliance_officer: Any, account: Any, instrument: Any, make_order: Any
) -> None:
    rule = rule_save(
        user=compliance_officer,
        data={"name": "Max size", "rule_type": "fat_finger", "params": {"max_quantity": "100"}},
    )
    first = make_order(account, instrument, quantity="150")
    assert check([first]) == {first.pk: "block"}
    rule_save(user=compliance_officer, rule_id=rule.pk, data={"params": {"max_quantity": "200"}})
    second = make_order(account, instrument, quantity="150")
    assert check([second]) == {second.pk: "pass"}
    assert [r.rule_version for r in results_of(first) + results_of(second)] == [1, 2]


def test_rule_scope_change_by_service_is_a_new_version(
    compliance_officer: Any, account: Any
) -> None:
    rule = rule_save(
        user=compliance_officer,
        data={
            "name": "Acct",
            "rule_type": "short_selling",
            "scope": "account",
            "accounts": [account.pk],
        },
    )
    assert list(rule.accounts.all()) == [account]
    rule = rule_save(user=compliance_officer, rule_id=rule.pk, data={"accounts": []})
    assert (rule.version, list(rule.accounts.all())) == (2, [])
    last = AuditEvent.objects.filter(object_type="compliance.rule").order_by("-seq").first()
    assert (last.before["accounts"], last.after["accounts"]) == ([account.pk], [])


# --- admin --------------------------------------------------------------------------------------


def _rule_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "Admin rule",
        "rule_type": "fat_finger",
        "severity": "block",
        "scope": "firm",
        "params": '{"max_quantity": "100"}',
        "active": "on",
        "effective_from": "",
        "effective_to": "",
    }
    data.update(overrides)
    return data


def test_admin_rule_edit_bumps_version_and_is_audited(compliance_officer: Any) -> None:
    c = _browser(compliance_officer)
    # when added, then changed, then saved unchanged
    added = c.post("/admin/compliance/rule/add/", _rule_form())
    assert added.status_code == 302, added.content.decode()[:2000]
    rule = Rule.objects.get()
    assert rule.version == 1
    url = f"/admin/compliance/rule/{rule.pk}/change/"
    assert c.post(url, _rule_form(params='{"max_quantity": "250"}')).status_code == 302
    assert c.post(url, _rule_form(params='{"max_quantity": "250"}')).status_code == 302
    # then
    rule.refresh_from_db()
    assert (rule.version, rule.params) == (2, {"max_quantity": "250"})
    actions = list(
        AuditEvent.objects.filter(object_type="compliance.rule", object_id=str(rule.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == ["admin.add", "admin.change"]
    change = AuditEvent.objects.get(object_type="compliance.rule", action="admin.change")
    assert (change.before["version"], change.after["version"]) == (1, 2)
    assert change.after["params"] == {"max_quantity": "250"}
    assert change.actor_id == compliance_officer.pk


def test_admin_rejects_bad_params_with_a_form_error(compliance_officer: Any) -> None:
    c = _browser(compliance_officer)
    response = c.post("/admin/compliance/rule/add/", _rule_form(params='{"max_qty": "100"}'))
    assert response.status_code == 200
    assert "unknown parameter(s) [&#x27;max_qty&#x27;]" in response.content.decode()
    assert not Rule.objects.exists()
    assert not AuditEvent.objects.filter(object_type="compliance.rule").exists()


def test_admin_scope_change_bumps_version(compliance_officer: Any, account: Any) -> None:
    c = _browser(compliance_officer)
    c.post("/admin/compliance/rule/add/", _rule_form(scope="account", accounts=[account.pk]))
    rule = Rule.objects.get()
    assert list(rule.accounts.all()) == [account]
    c.post(f"/admin/compliance/rule/{rule.pk}/change/", _rule_form(scope="firm"))
    rule.refresh_from_db()
    assert (rule.version, list(rule.accounts.all())) == (2, [])


def test_admin_restricted_edit_bumps_version(compliance_officer: Any, instrument: Any) -> None:
    entry = RestrictedEntry.objects.create(instrument=instrument, reason="watch")
    c = _browser(compliance_officer)
    response = c.post(
        f"/admin/compliance/restrictedentry/{entry.pk}/change/",
        {
            "instrument": instrument.pk,
            "issuer": "",
            "account": "",
            "reason": "deal team",
            "source": "legal",
            "effective_from": "",
            "effective_to": "",
            "active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    entry.refresh_from_db()
    assert (entry.version, entry.reason) == (2, "deal team")
    assert (
        AuditEvent.objects.filter(
            object_type="compliance.restrictedentry", action="admin.change"
        ).count()
        == 1
    )


def test_restricted_entry_save_validates_and_versions(
    compliance_officer: Any, instrument: Any
) -> None:
    with pytest.raises(ValidationError):
        restricted_entry_save(user=compliance_officer, data={"reason": "no target"})
    with pytest.raises(ValidationError):
        restricted_entry_save(
            user=compliance_officer,
            data={"instrument": instrument, "issuer": instrument.issuer, "reason": "both"},
        )
    entry = restricted_entry_save(
        user=compliance_officer, data={"instrument": instrument, "reason": "watch"}
    )
    entry = restricted_entry_save(
        user=compliance_officer, entry_id=entry.pk, data={"active": False}
    )
    assert (entry.version, entry.active) == (2, False)
    assert list(
        AuditEvent.objects.filter(object_type="compliance.restrictedentry")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["compliance.restricted_added", "compliance.restricted_changed"]


# --- CSV import ---------------------------------------------------------------------------------

CSV_OK = (
    "instrument,issuer,account,reason,source,effective_from,effective_to\n"
    "ACME,,,M&A advisory,deal team,2026-01-01,\n"
    ",ISSX,ACC-A,Insider,,,2030-12-31\n"
)


def test_import_csv_creates_every_row_and_audits(
    compliance_officer: Any, instrument: Any, account: Any
) -> None:
    issuer = f.IssuerFactory(code="ISSX")
    created = restricted_import_csv(
        user=compliance_officer, content=CSV_OK.encode(), source="f.csv"
    )
    assert [(e.instrument_id, e.issuer_id, e.account_id, e.reason, e.source) for e in created] == [
        (instrument.pk, None, None, "M&A advisory", "deal team"),
        (None, issuer.pk, account.pk, "Insider", "f.csv"),
    ]
    assert str(created[0].effective_from) == "2026-01-01"
    assert str(created[1].effective_to) == "2030-12-31"
    assert AuditEvent.objects.filter(action="compliance.restricted_added").count() == 2
    assert AuditEvent.objects.get(action="compliance.restricted_imported").after["count"] == 2


def test_import_csv_is_all_or_nothing_and_lists_every_bad_row(
    compliance_officer: Any, instrument: Any
) -> None:
    content = (
        "instrument,issuer,account,reason,source,effective_from,effective_to\n"
        "ACME,,,fine,,,\n"
        "NOPE,,,unknown symbol,,,\n"
        "ACME,,,,,,\n"
        "ACME,,,dates,,2026-02-01,2026-01-01\n"
        ",,,neither,,,\n"
        "ACME,,ZZZ,bad account,,31/12/2026,\n"
    )
    with pytest.raises(ValidationError) as exc:
        restricted_import_csv(user=compliance_officer, content=content)
    assert exc.value.errors == [
        {"row": 3, "field": "instrument", "detail": "unknown instrument 'NOPE'"},
        {"row": 4, "field": "reason", "detail": "a reason is required"},
        {"row": 5, "field": "effective_to", "detail": "must not be before effective_from"},
        {"row": 6, "field": "instrument", "detail": "give exactly one of instrument or issuer"},
        {"row": 7, "field": "account", "detail": "unknown account 'ZZZ'"},
        {"row": 7, "field": "effective_from", "detail": "'31/12/2026' is not a date (YYYY-MM-DD)"},
    ]
    assert not RestrictedEntry.objects.exists()
    assert not AuditEvent.objects.filter(object_type="compliance.restrictedentry").exists()


def test_import_csv_rejects_a_bad_header(compliance_officer: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        restricted_import_csv(user=compliance_officer, content="symbol,reason\nACME,x\n")
    assert exc.value.code == "invalid_header"


def test_admin_import_view(compliance_officer: Any, pm: Any, instrument: Any, account: Any) -> None:
    f.IssuerFactory(code="ISSX")
    url = "/admin/compliance/restrictedentry/import-csv/"
    c = _browser(compliance_officer)
    assert c.get(url).status_code == 200
    bad = c.post(url, {"file": SimpleUploadedFile("r.csv", b"instrument,issuer,reason\nNOPE,,x\n")})
    assert bad.status_code == 200
    assert "unknown instrument" in bad.content.decode()
    assert not RestrictedEntry.objects.exists()
    ok = c.post(url, {"file": SimpleUploadedFile("r.csv", CSV_OK.encode()), "source": ""})
    assert ok.status_code == 302
    assert RestrictedEntry.objects.count() == 2
    assert "Import CSV" in c.get("/admin/compliance/restrictedentry/").content.decode()
    # a PM has no add permission on the restricted list
    assert _browser(pm).get(url).status_code in (302, 403)


def test_rules_api(compliance_officer: Any, pm: Any, account: Any) -> None:
    api = client_for(compliance_officer)
    created = api.post(
        "/api/v1/compliance/rules/",
        {
            "name": "Conc",
            "rule_type": "concentration",
            "scope": "account",
            "accounts": ["ACC-A"],
            "params": {"dimension": "sector", "max_pct": "30"},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    rule_id = created.json()["id"]
    assert created.json()["accounts"] == ["ACC-A"]
    changed = api.patch(
        f"/api/v1/compliance/rules/{rule_id}/",
        {"params": {"dimension": "sector", "max_pct": "25"}},
        format="json",
    )
    assert (changed.status_code, changed.json()["version"]) == (200, 2)
    bad = api.patch(
        f"/api/v1/compliance/rules/{rule_id}/", {"params": {"max_pct": "25"}}, format="json"
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_rule")
    assert client_for(pm).get("/api/v1/compliance/rules/").json()["count"] == 1
    assert (
        client_for(pm)
        .post(
            "/api/v1/compliance/rules/", {"name": "x", "rule_type": "short_selling"}, format="json"
        )
        .status_code
        == 403
    )
