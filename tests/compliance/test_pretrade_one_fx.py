"""The one-order load's open-order sums in another currency than the account's base: exact
values (Decimal representation included) for a multi-currency book, a missing rate and market
orders without a reference price; and the stored result set's rule columns after a rule change.

Rates (tests/conftest.py fx_pairs): GBPUSD 1.2700, EURUSD 1.0850, USDJPY 151.20 (JPY/USD is its
inverse to 16 digits, 0.006613756613756614); no CHF pair.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction

from compliance.context import build_pretrade_one, firm_now
from compliance.models import Rule
from compliance.services import compliance_check_new, compliance_results_one
from orders.models import Order, ReferencePrice
from tests import factories as f

D = Decimal


def _order(account: Any, instrument: Any, pm: Any) -> Order:
    """A new (unsaved) limit order to buy 1 at 100."""
    return Order(
        account=account,
        instrument=instrument,
        side="buy",
        quantity=D("1"),
        order_type="limit",
        limit_price=D("100"),
        created_by=pm,
        created_at=firm_now(),
    )


def test_a_multi_currency_book_sums_to_exact_base_currency_values(
    account: Any, pm: Any, fx_pairs: None, make_order: Any
) -> None:
    # given a USD account whose open orders are in USD, EUR, GBP, JPY and CHF (no CHF rate),
    # two of them market orders in an EUR instrument without a reference price, all in one
    # issuer and one sector
    issuer = f.IssuerFactory()

    def inst(currency: str, price: str | None = "100.00") -> Any:
        made = f.InstrumentFactory(currency=currency, issuer=issuer, sector="Energy")
        if price is None:
            ReferencePrice.objects.filter(instrument=made).delete()
        else:
            ReferencePrice.objects.filter(instrument=made).update(last=D(price))
        return made

    usd, eur = inst("USD"), inst("EUR")
    eur_no_price, gbp, jpy, chf = inst("EUR", None), inst("GBP", "50.25"), inst("JPY"), inst("CHF")

    def open_order(instrument: Any, side: str, quantity: str, limit: str | None = None) -> None:
        make_order(
            account,
            instrument,
            side=side,
            quantity=quantity,
            order_type="limit" if limit else "market",
            limit_price=limit,
            status="approved",
        )

    open_order(usd, "buy", "10", "10.00")  # 100.0000 USD, summed by PostgreSQL
    open_order(eur, "buy", "10", "20.00")  # 200.00 EUR
    open_order(eur, "buy", "30")  # 30 x 100.00 EUR
    open_order(eur_no_price, "buy", "7")  # no price: 0, needs no rate
    open_order(eur_no_price, "sell", "5")
    open_order(gbp, "buy", "4", "12.5")  # 50.0 GBP
    open_order(gbp, "sell", "3")  # 3 x 50.25 GBP
    open_order(jpy, "buy", "3")  # 300.00 JPY
    open_order(chf, "buy", "5", "9")  # no CHF rate
    open_order(chf, "sell", "2")  # no CHF rate
    # when an order in the USD instrument is loaded
    with transaction.atomic():
        loaded = build_pretrade_one(order=_order(account, usd, pm), key=0, as_of=firm_now())
    summary = loaded.context.open_summary
    acct = account.pk
    # then every amount is converted at its currency's exact rate and summed in the 28-digit
    # context: buys 100 + 217 + 3255 + 0 + 63.5 + 1.9841269841269842 (300 x 0.006613756613756614)
    assert {k: str(v) for k, v in summary.buy_notional.items()} == {
        acct: "3637.484126984126984200000000"
    }
    buckets = {(dim, buy): str(v) for (a, dim, _, buy), v in summary.bucket_notional.items()}
    assert buckets == {
        (0, True): "100.0000000000000000",
        (1, True): "3637.484126984126984200000000",
        (2, True): "3637.484126984126984200000000",
        # sells: 0 (EUR, no price) + 3 x 50.25 x 1.2700
        (1, False): "191.452500000000000000000000",
        (2, False): "191.452500000000000000000000",
    }
    # and the CHF orders, both directions, are left out naming the pair they lack
    assert summary.missing_rates == {
        (acct, True): frozenset({("CHF", "USD")}),
        (acct, False): frozenset({("CHF", "USD")}),
    }


def test_a_book_in_the_base_currency_and_unpriced_instruments_needs_no_rate(
    account: Any, pm: Any, make_order: Any
) -> None:
    # given no FX pairs at all, a USD account with market orders in a USD instrument and in a
    # CHF one without a reference price (0: no rate needed)
    usd = f.InstrumentFactory(currency="USD", sector="Energy")
    chf = f.InstrumentFactory(currency="CHF", sector="Energy", issuer=usd.issuer)
    ReferencePrice.objects.filter(instrument=chf).delete()
    ReferencePrice.objects.filter(instrument=usd).update(last=D("12.34"))
    make_order(account, usd, quantity="3", status="approved")
    make_order(account, chf, quantity="8", status="approved")
    # when an order in the USD instrument is loaded
    with transaction.atomic():
        loaded = build_pretrade_one(order=_order(account, usd, pm), key=0, as_of=firm_now())
    summary = loaded.context.open_summary
    # then the USD order is valued at its price, the unpriced one at 0, and no rate is missing
    assert {k: str(v) for k, v in summary.buy_notional.items()} == {
        account.pk: "37.0200000000000000"
    }
    assert {(dim, buy): str(v) for (_, dim, _, buy), v in summary.bucket_notional.items()} == {
        (0, True): "37.0200000000000000",
        (1, True): "37.0200000000000000",
        (2, True): "37.0200000000000000",
    }
    assert summary.missing_rates == {}


def test_the_stored_rule_columns_follow_a_rule_change(
    account: Any, pm: Any, instrument: Any, make_rule: Any
) -> None:
    # given two rules
    first = make_rule("fat_finger", params={"max_quantity": "1000"}, name="Fat finger")
    second = make_rule("restricted_list", name="Restricted")

    def rule_columns() -> list[str]:
        with transaction.atomic():
            check = compliance_check_new(orders=[_order(account, instrument, pm)])
            one = compliance_results_one(check)
            transaction.set_rollback(True)
        assert one is not None
        return one[1][1:5]

    # when two orders are checked, the same rules apply to both
    expected = [
        f'{{"{first.pk}","{second.pk}"}}',
        '{"Fat finger","Restricted"}',
        '{"fat_finger","restricted_list"}',
        '{"1","1"}',
    ]
    assert rule_columns() == expected
    assert rule_columns() == expected
    # and after a rule is renamed, the next order's rows carry the new name and version
    Rule.objects.filter(pk=first.pk).update(name="Fat finger v2", version=2)
    assert rule_columns() == [
        expected[0],
        '{"Fat finger v2","Restricted"}',
        expected[2],
        '{"2","1"}',
    ]
    # and a rule that no longer applies is no longer listed
    Rule.objects.filter(pk=second.pk).update(active=False)
    assert rule_columns() == [
        f'{{"{first.pk}"}}',
        '{"Fat finger v2"}',
        '{"fat_finger"}',
        '{"2"}',
    ]
