"""A new order's answer is built from what was just stored, without reading it back: it must
equal what the API shows when the order is read afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from compliance.models import Rule
from tests.conftest import client_for
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db

DETAIL_ONLY = {"executions", "history"}


def _rules() -> None:
    # Measured values with more than 8 decimals (rounded by the numeric(30, 8) column), money,
    # percentages, passes and failures.
    Rule.objects.create(name="Buying power", rule_type="buying_power", severity="block")
    Rule.objects.create(
        name="Concentration",
        rule_type="concentration",
        severity="warn",
        params={"dimension": "instrument", "max_pct": "0.003"},
    )
    Rule.objects.create(
        name="Fat finger",
        rule_type="fat_finger",
        severity="warn",
        params={"max_quantity": "1000", "max_notional": "12345.67"},
    )


@pytest.mark.parametrize("quantity", ["1", "7", "333"])
def test_create_answer_equals_the_order_read_back(book: Any, pm: Any, quantity: str) -> None:
    _rules()
    client = client_for(pm)
    created = client.post(
        "/api/v1/orders/", order_data(quantity=quantity, limit_price="33.33"), format="json"
    )
    assert created.status_code == 201
    body = created.json()
    assert len(body["compliance"]["results"]) == 3
    read = client.get(f"/api/v1/orders/{body['id']}/").json()
    assert body == {k: v for k, v in read.items() if k not in DETAIL_ONLY}
