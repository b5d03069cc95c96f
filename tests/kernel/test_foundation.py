"""Settings, demo data, login throttling, admin forms and their audit."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from allocations.models import Account, CashBalance, Custodian, Position
from oms_site.audit import audit_verify
from oms_site.models import AuditEvent
from orders.models import Broker, FixSession, Instrument, Issuer, ReferencePrice
from tests import factories as f

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_settings_use_postgres_and_redis() -> None:
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == (
        "oms_site.channel_layers.PubSubChannelLayer"
    )
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is True


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "0",
            "HTTPS": "1",
            "SECRET_KEY": "p" * 20 + "x7Kq2Lm9Vb4Nz8Rt5Yw3Hs6Jd1Fg0Ua",
            "ALLOWED_HOSTS": "oms.example.com",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_non_postgres_database_is_refused() -> None:
    result = _manage("check", env={"DATABASE_URL": "sqlite:///tmp/x.db"})
    assert result.returncode != 0
    assert "PostgreSQL is the only supported database" in result.stderr


@pytest.mark.django_db
def test_demo_data_is_deterministic_and_never_duplicates() -> None:
    call_command("seed_demo", verbosity=0)
    counts = (
        get_user_model().objects.count(),
        Instrument.objects.count(),
        Issuer.objects.count(),
        Account.objects.count(),
        Custodian.objects.count(),
        Broker.objects.count(),
        FixSession.objects.count(),
        CashBalance.objects.count(),
        Position.objects.count(),
        ReferencePrice.objects.count(),
    )
    first_symbols = list(Instrument.objects.order_by("symbol").values_list("symbol", "isin")[:5])
    call_command("seed_demo", verbosity=0)
    again = (
        get_user_model().objects.count(),
        Instrument.objects.count(),
        Issuer.objects.count(),
        Account.objects.count(),
        Custodian.objects.count(),
        Broker.objects.count(),
        FixSession.objects.count(),
        CashBalance.objects.count(),
        Position.objects.count(),
        ReferencePrice.objects.count(),
    )
    assert again == counts
    assert counts[0] == 6 and counts[4] == 3 and counts[5] == 3 and counts[3] == 30
    assert counts[1] >= 300
    assert (
        list(Instrument.objects.order_by("symbol").values_list("symbol", "isin")[:5])
        == first_symbols
    )
    assert set(Instrument.objects.values_list("asset_class", flat=True)) == {
        "equity",
        "bond",
        "fx",
        "future",
        "option",
        "crypto",
    }
    assert Account.objects.get(code="ACC001").managers.get().username == "pm1"
    assert CashBalance.objects.get(account__code="ACC001").settled == Decimal("10100000.00")
    assert audit_verify() == []


@pytest.mark.django_db
def test_market_data_tick_moves_prices_within_bounds(instrument) -> None:
    from orders.marketdata import market_data_tick

    assert market_data_tick() == 1
    price = ReferencePrice.objects.get(instrument=instrument)
    assert Decimal("99.89") <= price.last <= Decimal("100.11")
    assert price.bid < price.last < price.ask
    assert price.last % Decimal("0.01") == 0


@pytest.mark.django_db
def test_login_page_logs_in_and_throttles_repeated_failures(client, pm) -> None:
    assert (
        client.post("/accounts/login/", {"username": "pm_a", "password": f.PASSWORD}).status_code
        == 302
    )
    client.logout()
    for _ in range(settings.LOGIN_MAX_FAILURES):
        r = client.post("/accounts/login/", {"username": "pm_a", "password": "wrong"})
        assert r.status_code == 200 and "Please enter a correct username" in r.content.decode()
    # Now even the right password is refused until the window passes.
    r = client.post("/accounts/login/", {"username": "pm_a", "password": f.PASSWORD})
    assert r.status_code == 200
    assert "Too many failed login attempts" in r.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_token_endpoint_issues_token_and_throttles(api_client, pm) -> None:
    r = api_client.post(
        "/api/v1/auth/token/", {"username": "pm_a", "password": f.PASSWORD}, format="json"
    )
    assert r.status_code == 200 and len(r.json()["token"]) == 40
    bad = api_client.post(
        "/api/v1/auth/token/", {"username": "pm_a", "password": "x"}, format="json"
    )
    assert bad.status_code == 401 and bad.json()["code"] == "authentication_failed"
    for _ in range(settings.LOGIN_MAX_FAILURES):
        api_client.post("/api/v1/auth/token/", {"username": "pm_a", "password": "x"}, format="json")
    r = api_client.post(
        "/api/v1/auth/token/", {"username": "pm_a", "password": f.PASSWORD}, format="json"
    )
    assert r.status_code == 429 and r.json()["code"] == "throttled"


@pytest.mark.django_db
def test_logout_requires_post(client, pm) -> None:
    client.force_login(pm)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_admin_edit_of_instrument_is_audited(client, administrator, instrument) -> None:
    client.force_login(administrator)
    url = f"/admin/orders/instrument/{instrument.pk}/change/"
    data = {
        "symbol": "ACME",
        "isin": instrument.isin,
        "name": "Acme Renamed",
        "asset_class": "equity",
        "currency": "USD",
        "lot_size": "1",
        "tick_size": "0.01",
        "issuer": instrument.issuer_id,
        "sector": "Technology",
        "country": "US",
        "shares_outstanding": "100000000",
        "settlement_cycle": "1",
        "calendar_code": "XNYS",
        "tradable": "on",
    }
    r = client.post(url, data)
    assert r.status_code == 302, r.content.decode()[:2000]
    event = AuditEvent.objects.get(action="admin.change", object_type="orders.instrument")
    assert event.before["name"] == "ACME Inc" and event.after["name"] == "Acme Renamed"
    assert event.actor_id == administrator.pk
    assert event.meta == {"changed_fields": ["name"]}


@pytest.mark.django_db
def test_admin_rejects_bad_instrument_input_and_changes_nothing(
    client, administrator, instrument
) -> None:
    client.force_login(administrator)
    data = {
        "symbol": "BAD",
        "isin": "",
        "name": "Bad",
        "asset_class": "equity",
        "currency": "USD",
        "lot_size": "-5",
        "tick_size": "abc",
        "issuer": instrument.issuer_id,
        "sector": "Tech",
        "country": "US",
        "settlement_cycle": "1",
        "calendar_code": "XNYS",
    }
    r = client.post("/admin/orders/instrument/add/", data)
    assert r.status_code == 200
    body = r.content.decode()
    assert "Enter a number." in body
    assert not Instrument.objects.filter(symbol="BAD").exists()
    assert AuditEvent.objects.filter(action="admin.add").count() == 0


@pytest.mark.django_db
def test_admin_rejects_instrument_violating_a_database_constraint(
    client, administrator, instrument
) -> None:
    client.force_login(administrator)
    data = {
        "symbol": "NEG",
        "isin": "",
        "name": "Neg",
        "asset_class": "equity",
        "currency": "USD",
        "lot_size": "-5",
        "tick_size": "0.01",
        "issuer": instrument.issuer_id,
        "sector": "Tech",
        "country": "US",
        "settlement_cycle": "1",
        "calendar_code": "XNYS",
    }
    r = client.post("/admin/orders/instrument/add/", data)
    assert r.status_code == 200
    assert (
        "instrument_lot_size_positive" in r.content.decode() or "Constraint" in r.content.decode()
    )
    assert not Instrument.objects.filter(symbol="NEG").exists()


@pytest.mark.django_db
def test_login_failures_count_under_fixed_length_keys(client, pm) -> None:
    from django.core.cache import cache

    from oms_site.login_throttle import _keys, login_allowed, login_failed

    odd = "  PM_A \x00 must be a number " + "x" * 10_000
    user_key, ip_key = _keys(odd, "127.0.0.1")
    assert len(user_key) == len("login-fail:user:") + 64
    assert len(ip_key) == len("login-fail:ip:") + 64
    assert all(ch in "0123456789abcdef" for ch in user_key.rsplit(":", 1)[1])
    # Case and surrounding spaces do not make a new count.
    assert _keys(" Pm_A ", "")[0] == _keys("pm_a", "")[0]
    assert cache.get(user_key) is None
    for _ in range(settings.LOGIN_MAX_FAILURES):
        assert login_allowed(username=odd, ip="10.0.0.1")
        login_failed(username=odd, ip="10.0.0.1")
    assert cache.get(user_key) == settings.LOGIN_MAX_FAILURES
    assert not login_allowed(username=odd, ip="10.0.0.2")
    assert not login_allowed(username="pm_a", ip="10.0.0.1")
    # Another username from another address is not affected.
    assert login_allowed(username="pm_a", ip="10.0.0.2")
    r = client.post("/accounts/login/", {"username": "pm_a", "password": f.PASSWORD})
    assert r.status_code == 302
