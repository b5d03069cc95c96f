"""Fixtures of the orders tests: API clients per role and an order factory through the service."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from orders.services.orders import order_create
from tests.conftest import client_for


def order_data(**overrides: Any) -> dict[str, Any]:
    """A valid limit buy of 100 ACME at 100.00 for ACC-A, with overrides."""
    data: dict[str, Any] = {
        "account": "ACC-A",
        "instrument": "ACME",
        "side": "buy",
        "quantity": "100",
        "order_type": "limit",
        "limit_price": "100.00",
        "time_in_force": "day",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def book(account: Any, other_account: Any, instrument: Any) -> dict[str, Any]:
    """pm_a's ACC-A (desk EQ, trader_a), pm_b's ACC-B (desk FX), instrument ACME."""
    return {"account": account, "other_account": other_account, "instrument": instrument}


@pytest.fixture
def make_order(book: dict[str, Any], pm: Any) -> Any:
    def make(user: Any = None, **overrides: Any) -> Any:
        return order_create(user=user or pm, data=order_data(**overrides))

    return make


@pytest.fixture
def pm_client(pm: Any) -> APIClient:
    return client_for(pm)


@pytest.fixture
def pm_other_client(pm_other: Any) -> APIClient:
    return client_for(pm_other)


@pytest.fixture
def trader_client(trader: Any) -> APIClient:
    return client_for(trader)


@pytest.fixture
def compliance_client(compliance_officer: Any) -> APIClient:
    return client_for(compliance_officer)


@pytest.fixture
def backoffice_client(backoffice: Any) -> APIClient:
    return client_for(backoffice)


D = Decimal
