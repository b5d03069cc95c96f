"""Exchange rates (orders.fx): same currency, direct and inverse pairs, a cross through USD, and
missing rates, from the FX spot instruments' reference prices."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orders import fx
from orders.models import ReferencePrice
from tests import factories as f

D = Decimal

QUOTES = {
    ("EUR", "USD"): D("1.0850"),
    ("GBP", "USD"): D("1.2700"),
    ("USD", "JPY"): D("151.20"),
}


def test_same_currency_is_exactly_one() -> None:
    rates = fx.FxRates({})
    assert rates.rate("USD", "USD") == D(1)
    assert rates.convert(D("12.34"), "JPY", "JPY") == D("12.34")


def test_a_direct_pair_is_its_reference_price_exactly() -> None:
    rates = fx.FxRates(QUOTES)
    assert rates.rate("GBP", "USD") == D("1.2700")
    assert rates.convert(D("1000.00"), "GBP", "USD") == D("1270.00000000")


def test_an_inverse_pair_is_one_over_the_price_to_16_significant_digits() -> None:
    rates = fx.FxRates(QUOTES)
    # 1 / 151.20 = 0.0066137566137566137...: 16 significant digits, half-even
    assert rates.rate("JPY", "USD") == D("0.006613756613756614")
    assert rates.rate("USD", "GBP") == D("0.7874015748031496")
    assert rates.convert(D("15120"), "JPY", "USD") == D("100.000000000000003680")


def test_a_cross_goes_through_usd_and_a_direct_pair_wins_over_it() -> None:
    rates = fx.FxRates(QUOTES)
    # EUR -> USD (1.0850) x USD -> GBP (1 / 1.27 = 0.7874015748031496), rounded to 16 digits
    assert rates.rate("EUR", "GBP") == D("0.8543307086614173")
    # JPY -> GBP: both legs inverse
    assert rates.rate("JPY", "GBP") == D("0.005207682373036704")
    with_pair = fx.FxRates({**QUOTES, ("EUR", "GBP"): D("0.8550")})
    assert with_pair.rate("EUR", "GBP") == D("0.8550")
    assert with_pair.rate("GBP", "EUR") == D("1.169590643274854")


def test_a_missing_rate_is_none_or_an_error_naming_it_never_zero_or_one() -> None:
    rates = fx.FxRates({**QUOTES, ("USD", "CHF"): D(0)})
    assert rates.find("CHF", "USD") is None
    assert rates.find("AUD", "GBP") is None
    with pytest.raises(fx.MissingRate, match="no FX rate CHF/USD") as caught:
        rates.convert(D(1), "CHF", "USD")
    assert caught.value.pairs == (("CHF", "USD"),)


def test_table_lists_every_existing_rate_between_quoted_currencies() -> None:
    src, dst, rate = fx.FxRates({("GBP", "USD"): D("1.25")}).table()
    assert list(zip(src, dst, rate, strict=True)) == [
        ("GBP", "USD", D("1.25")),
        ("USD", "GBP", D("0.8")),
    ]


@pytest.mark.django_db
def test_rates_come_from_fx_spot_reference_prices_once_per_refdata_version() -> None:
    # given spot pairs, an equity and an FX instrument whose symbol is not BASEQUOTE
    f.fx_pair("GBPUSD", "1.2700")
    f.fx_pair("USDJPY", "151.20")
    f.InstrumentFactory(symbol="VOD", currency="GBP", price__last=D("0.72"))
    f.InstrumentFactory(
        symbol="EURUSD1M", isin=None, asset_class="fx", currency="USD", price__last=D("2")
    )
    # when the rates are read twice
    first = fx.rates()
    with CaptureQueriesContext(connection) as ctx:
        again = fx.rates()
    # then the second read is only the refdata version, and the rates are the spot pairs'
    assert again is first
    assert len(ctx.captured_queries) == 1
    assert first.currencies() == {"GBP", "USD", "JPY"}
    assert first.rate("JPY", "GBP") == D("0.005207682373036704")
    # and a new price is a new version, hence new rates
    ReferencePrice.objects.filter(instrument__symbol="GBPUSD").update(last=D("1.30"))
    assert fx.rates().rate("GBP", "USD") == D("1.30")
