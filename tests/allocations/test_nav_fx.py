"""The accounts API's NAV in the account's base currency (orders.fx rates); a missing rate
leaves NAV null and names the rate in nav_missing_rates."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from allocations.selectors import account_nav
from orders import fx
from tests import factories as f
from tests.conftest import client_for

D = Decimal
pytestmark = pytest.mark.django_db


def _row(pm: Any) -> dict[str, Any]:
    body = client_for(pm).get("/api/v1/accounts/").json()
    [row] = body["results"]
    return row  # type: ignore[no-any-return]


def test_nav_converts_positions_and_cash_of_every_currency(
    account: Any, pm: Any, fx_pairs: None
) -> None:
    # given 1,000,000 USD, 100 EUR, 15,120 JPY cash and 100 VOD at 10.00 GBP
    f.CashBalanceFactory(account=account, currency="EUR", settled=D("100"))
    f.CashBalanceFactory(account=account, currency="JPY", settled=D("15120"))
    vod = f.InstrumentFactory(symbol="VOD", currency="GBP", price__last=D("10.00"))
    f.PositionFactory(account=account, instrument=vod, quantity=D("100"))
    # when listed, then NAV = 1,000,000 + 108.5 + 15,120 / 151.20 + 1,270 USD (8 decimals)
    row = _row(pm)
    assert row["nav"] == "1001478.50000000"
    assert row["nav_missing_rates"] == []
    assert [c["currency"] for c in row["cash"]] == ["EUR", "JPY", "USD"]
    # and account_nav gives the exact sum (JPY -> USD = 0.006613756613756614)
    assert account_nav(account_id=account.pk) == D("1001478.500000000000003680")


def test_a_gbp_account_values_usd_and_eur_through_the_pairs(pm: Any, fx_pairs: None) -> None:
    # given a GBP account with 1,270 USD and 100 EUR (no EURGBP: a cross through USD)
    account = f.AccountFactory(code="ACC-G", base_currency="GBP")
    account.managers.add(pm)
    f.CashBalanceFactory(account=account, currency="USD", settled=D("1270"))
    f.CashBalanceFactory(account=account, currency="EUR", settled=D("100"))
    # then NAV = 1,270 x 0.7874015748031496 + 100 x 0.8543307086614173 GBP
    assert account_nav(account_id=account.pk) == D("1085.433070866141722")
    assert _row(pm)["nav"] == "1085.43307087"


def test_a_missing_rate_leaves_nav_null_and_names_the_rate(
    account: Any, pm: Any, fx_pairs: None
) -> None:
    # given CHF cash and a NOK position, neither with a rate, and a zero SEK balance
    f.CashBalanceFactory(account=account, currency="CHF", settled=D("5"))
    f.CashBalanceFactory(account=account, currency="SEK", settled=D("0"))
    equinor = f.InstrumentFactory(symbol="EQNR", currency="NOK", price__last=D("300"))
    f.PositionFactory(account=account, instrument=equinor, quantity=D("1"))
    # when listed, then NAV is null (never a partial sum) and both rates are named
    row = _row(pm)
    assert row["nav"] is None
    assert row["nav_missing_rates"] == ["CHF/USD", "NOK/USD"]
    # and account_nav refuses, naming them
    with pytest.raises(fx.MissingRate) as caught:
        account_nav(account_id=account.pk)
    assert caught.value.pairs == (("CHF", "USD"), ("NOK", "USD"))


def test_single_currency_nav_is_unchanged(account: Any, pm: Any) -> None:
    # given only USD cash and a USD position (no FX pairs at all)
    inst = f.InstrumentFactory(symbol="ACME")
    f.PositionFactory(account=account, instrument=inst, quantity=D("10"))
    row = _row(pm)
    assert row["nav"] == "1001000.00000000"
    assert row["nav_missing_rates"] == []
