"""Fixtures shared by the whole suite: one user per role, a small book."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from oms_site import roles
from tests import factories as f


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness costs ~0.3 s per user; tests do not need it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def cache_keys_clear() -> int:
    """Delete this process's cache keys (its KEY_PREFIX) and return how many went.

    Not `cache.clear()`: that is a FLUSHDB, which under pytest-xdist emptied the other workers'
    keys (their throttle counters) in the middle of their tests; each worker has a prefix of its
    own (settings._WORKER_SUFFIX).
    """
    client = cache._cache.get_client(write=True)
    pattern = f"{glob_escape(cache.key_prefix)}:*"
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def glob_escape(text: str) -> str:
    """`text` with Redis glob characters escaped, so a prefix matches only itself."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    # Login throttles and idempotency live in Redis; tests must not see each other's counters.
    cache_keys_clear()


@pytest.fixture
def role_groups(db: Any) -> None:
    roles.roles_sync()


@pytest.fixture
def pm(role_groups: None) -> Any:
    return f.UserFactory(username="pm_a", role=roles.PM)


@pytest.fixture
def pm_other(role_groups: None) -> Any:
    return f.UserFactory(username="pm_b", role=roles.PM)


@pytest.fixture
def trader(role_groups: None) -> Any:
    return f.UserFactory(username="trader_a", role=roles.TRADER)


@pytest.fixture
def compliance_officer(role_groups: None) -> Any:
    return f.UserFactory(username="compliance_a", role=roles.COMPLIANCE)


@pytest.fixture
def backoffice(role_groups: None) -> Any:
    return f.UserFactory(username="backoffice_a", role=roles.BACK_OFFICE)


@pytest.fixture
def administrator(role_groups: None) -> Any:
    return f.UserFactory(username="admin_a", role=roles.ADMINISTRATOR)


@pytest.fixture
def desk(trader: Any) -> Any:
    d = f.DeskFactory(code="EQ")
    d.traders.add(trader)
    return d


@pytest.fixture
def other_desk() -> Any:
    return f.DeskFactory(code="FX")


@pytest.fixture
def account(pm: Any, desk: Any) -> Any:
    """pm_a's account on trader_a's desk, with 1,000,000 USD settled cash."""
    a = f.AccountFactory(code="ACC-A", desk=desk)
    a.managers.add(pm)
    f.CashBalanceFactory(account=a, settled=Decimal("1000000.00"))
    return a


@pytest.fixture
def other_account(pm_other: Any, other_desk: Any) -> Any:
    """pm_b's account on another desk (invisible to pm_a and trader_a)."""
    a = f.AccountFactory(code="ACC-B", desk=other_desk)
    a.managers.add(pm_other)
    f.CashBalanceFactory(account=a, settled=Decimal("1000000.00"))
    return a


@pytest.fixture
def fx_pairs(db: Any) -> None:
    """FX spot pairs GBPUSD 1.27, EURUSD 1.0850, USDJPY 151.20 (no EURGBP, no CHF pair)."""
    f.fx_pair("GBPUSD", "1.2700")
    f.fx_pair("EURUSD", "1.0850")
    f.fx_pair("USDJPY", "151.20")


@pytest.fixture
def instrument(db: Any) -> Any:
    """ACME: an equity at 100.00 (bid 99.95, ask 100.05), lot 1, tick 0.01."""
    return f.InstrumentFactory(symbol="ACME")


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def client_for(user: Any) -> APIClient:
    """An API client authenticated as the user (force_authenticate)."""
    c = APIClient()
    c.force_authenticate(user=user)
    return c
