"""Pre-trade compliance across currencies: every money comparison in the account's base currency.

Rates come from the FX spot instruments (orders.fx): GBPUSD 1.27, EURUSD 1.0850, USDJPY 151.20
(an inverse pair for JPY -> USD), no EURGBP (EUR -> GBP is a cross through USD) and no CHF pair
(a missing rate). The `account` fixture is USD-based with 1,000,000 USD settled cash.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from compliance.context import build_pretrade_one
from compliance.models import Rule
from compliance.services import compliance_post_trade_sweep
from orders.models import Instrument, Order
from tests import factories as f
from tests.compliance.conftest import check, results_of
from tests.compliance.test_pretrade_one import _book, _both, _new_order, _rules

D = Decimal
pytestmark = pytest.mark.django_db


def _equity(symbol: str, currency: str, last: str) -> Any:
    return f.InstrumentFactory(symbol=symbol, currency=currency, price__last=D(last))


def _row(order: Order, rule_type: str) -> Any:
    [row] = [r for r in results_of(order) if r.rule_type == rule_type]
    return row


def test_a_gbp_buy_uses_usd_buying_power_at_the_gbpusd_rate(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any
) -> None:
    # given a GBP equity at 10.00 and a buying-power rule on 1,000,000 USD of cash
    vod = _equity("VOD", "GBP", "10.00")
    make_rule("buying_power")
    # when the account buys 1,000,000 GBP of it (face value would be within the cash)
    order = make_order(account, vod, quantity="100000", order_type="limit", limit_price="10")
    # then it needs 1,270,000 USD and is blocked
    assert check([order]) == {order.pk: "block"}
    row = _row(order, "buying_power")
    assert (row.measured, row.limit) == (D("1270000"), D("1000000"))
    assert row.message == (
        "Buy notional 1270000.00 USD (1000000.00 GBP at GBP/USD 1.27) exceeds available cash "
        "1000000.00"
    )


def test_concentration_values_a_gbp_position_and_order_in_usd(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any
) -> None:
    # given 10,000 VOD at 10.00 GBP held: 127,000 USD, NAV 1,127,000 USD
    vod = _equity("VOD", "GBP", "10.00")
    f.PositionFactory(account=account, instrument=vod, quantity=D("10000"))
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "12"})
    # when 1,000 more are bought at the reference price (12,700 USD)
    order = make_order(account, vod, quantity="1000")
    # then the exposure is 139,700 USD = 12.395741% of NAV, over 12%
    assert check([order]) == {order.pk: "block"}
    row = _row(order, "concentration")
    assert row.measured == D("12.395741")
    assert row.message == (
        "Projected long exposure to instrument VOD 139700.00 is 12.395741% of NAV 1127000.00, "
        "exceeds the 12% limit (position 127000.00, open buys 0.00, this order 12700.00 USD "
        "(10000.00 GBP at GBP/USD 1.27))"
    )


def test_fat_finger_notional_of_a_jpy_order_through_the_inverse_usdjpy_pair(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any
) -> None:
    # given a JPY equity and a 2,000 USD notional limit
    toyota = _equity("7203", "JPY", "3000")
    make_rule("fat_finger", params={"max_notional": "2000"})
    # when 100 are bought at 3,000 JPY = 300,000 JPY (far over 2,000 at face value)
    order = make_order(account, toyota, quantity="100", order_type="limit", limit_price="3000")
    # then 300,000 x (1 / 151.20 = 0.006613756613756614) = 1,984.1269841269842 USD is within
    assert check([order]) == {order.pk: "pass"}
    row = _row(order, "fat_finger")
    # (the stored result keeps 8 decimals; the message is exact)
    assert (row.measured, row.limit) == (D("1984.12698413"), D("2000"))
    assert row.message == (
        "Fat finger: notional 1984.1269841269842 USD (300000.00 JPY at JPY/USD "
        "0.006613756613756614) at limit price 3000.00 within maximum 2000.00"
    )


def test_a_gbp_account_buys_eur_through_the_usd_cross(
    pm: Any, fx_pairs: None, make_rule: Any, make_order: Any
) -> None:
    # given a GBP-based account with 10,000 GBP and no EURGBP pair
    account = f.AccountFactory(code="ACC-GBP", base_currency="GBP")
    f.CashBalanceFactory(account=account, currency="GBP", settled=D("10000"))
    sap = _equity("SAP", "EUR", "100")
    make_rule("buying_power")
    # when it buys 10,000 EUR of a EUR equity
    order = make_order(account, sap, quantity="100", order_type="limit", limit_price="100")
    # then EUR -> GBP = 1.0850 x (1 / 1.27) = 0.8543307086614173: 8,543.31 GBP, within
    assert check([order]) == {order.pk: "pass"}
    row = _row(order, "buying_power")
    assert (row.measured, row.limit) == (D("8543.30708661"), D("10000"))
    assert row.message == (
        "Buy notional 8543.307086614173 GBP (10000.00 EUR at EUR/GBP 0.8543307086614173) "
        "within available cash 10000.00"
    )


def test_a_missing_rate_fails_every_check_that_needs_the_notional_naming_the_rate(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any
) -> None:
    # given a CHF equity and no CHF pair
    nestle = _equity("NESN", "CHF", "100")
    make_rule("buying_power")
    make_rule("fat_finger", params={"max_notional": "1000000", "max_quantity": "1000"})
    make_rule("concentration", params={"dimension": "sector", "max_pct": "50"})
    make_rule("short_selling")
    order = make_order(account, nestle, quantity="10")
    # when checked
    assert check([order]) == {order.pk: "block"}
    # then the money checks fail naming CHF/USD; the quantity-only ones still pass
    text = f"no FX rate CHF/USD: the order's notional in CHF cannot be measured in account {account.pk}'s base currency USD"
    by_type = {r.rule_type: r for r in results_of(order)}
    assert (by_type["buying_power"].outcome, by_type["buying_power"].message) == ("block", text)
    assert by_type["buying_power"].measured is None
    assert by_type["concentration"].message == text
    assert by_type["fat_finger"].message == (f"Fat finger: notional cannot be measured: {text}")
    assert by_type["short_selling"].outcome == "pass"


def test_a_held_position_or_cash_without_a_rate_leaves_nav_unknown(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any, instrument: Any
) -> None:
    # given a CHF position (no rate) and a USD order
    f.PositionFactory(account=account, instrument=_equity("NESN", "CHF", "100"), quantity=D("5"))
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "50"})
    make_rule("buying_power")
    order = make_order(account, instrument, quantity="10")
    # then concentration cannot be measured, naming the rate; buying power is unaffected
    assert check([order]) == {order.pk: "block"}
    by_type = {r.rule_type: r for r in results_of(order)}
    assert by_type["concentration"].message == (
        f"Account {account.pk} NAV and exposure cannot be measured in USD: no FX rate CHF/USD"
    )
    assert by_type["buying_power"].outcome == "pass"


def test_nav_counts_cash_in_other_currencies_converted(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any, instrument: Any
) -> None:
    # given 100,000 EUR besides the 1,000,000 USD: NAV 1,108,500 USD
    f.CashBalanceFactory(account=account, currency="EUR", settled=D("100000"))
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    # when 1,108.5 ACME at 100 are bought (110,850 = exactly 10% of NAV)
    order = make_order(account, instrument, quantity="1108.5")
    # then it passes at the limit
    assert check([order]) == {order.pk: "pass"}
    assert _row(order, "concentration").measured == D("10")


def test_open_orders_in_other_currencies_are_converted_by_both_loaders(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any, pm: Any
) -> None:
    # given open buys of GBP and JPY equities, limit and market priced
    vod = _equity("VOD", "GBP", "10.00")
    toyota = _equity("7203", "JPY", "3000")
    make_order(
        account, vod, quantity="100", order_type="limit", limit_price="11", status="approved"
    )
    make_order(account, vod, quantity="100", status="approved")
    make_order(account, toyota, quantity="1512", status="approved")
    make_rule("buying_power")
    order = f.unsaved_market_buy(account, vod, pm, "1")
    # when checked by the one-order loader and the full loader
    full, one = _both(order)
    assert one == full
    # then open buys (1,100 + 1,000 GBP at 1.27, 4,536,000 JPY at 1 / 151.20 rounded to
    # 0.006613756613756614) plus this order (10 GBP) are, exactly, in USD
    [row] = one[0]
    assert row.measured == D("1397") + D("1270") + D("30000.000000000001104") + D("12.7")
    assert row.measured == D("32679.700000000001104")


def test_one_order_check_stays_two_statements_with_foreign_open_orders(
    account: Any, fx_pairs: None, make_rule: Any, make_order: Any, pm: Any, instrument: Any
) -> None:
    # given open orders in two other currencies and cash in another, checked once (warm cache)
    make_rule("buying_power")
    make_rule("concentration", params={"dimension": "issuer", "max_pct": "50"})
    vod = _equity("VOD", "GBP", "10.00")
    for _ in range(3):
        make_order(account, vod, order_type="limit", limit_price="10", status="approved")
    f.CashBalanceFactory(account=account, currency="EUR", settled=D("5"))
    order = f.unsaved_market_buy(account, instrument, pm, "10")
    with transaction.atomic():
        build_pretrade_one(order=order)
    # when checked again
    with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
        loaded = build_pretrade_one(order=order)
    # then two statements: the cash lock and the book's sums
    assert len(ctx.captured_queries) == 2
    assert loaded.context._open_buy_notional == {account.pk: D("3810")}
    assert loaded.context.accounts[account.pk].nav == D("1000005.425")


@pytest.mark.parametrize("seed", range(6))
def test_both_loaders_agree_on_random_multi_currency_books(seed: int, pm: Any) -> None:
    # given random books whose instruments are in USD, GBP, JPY and CHF (no rate), accounts
    # based in USD or GBP, and cash in several currencies
    f.fx_pair("GBPUSD", "1.2700")
    f.fx_pair("USDJPY", "151.20")
    rng = random.Random(seed)
    _rules()
    Rule.objects.create(
        name="fat finger notional",
        rule_type="fat_finger",
        severity="warn",
        params={"max_notional": "20000"},
    )
    accounts, instruments = _book(rng, pm)
    for inst in instruments:
        Instrument.objects.filter(pk=inst.pk).update(
            currency=rng.choice(["USD", "USD", "GBP", "JPY", "CHF"])
        )
    for account in accounts:
        base = rng.choice(["USD", "GBP"])
        type(account).objects.filter(pk=account.pk).update(base_currency=base)
        for currency in ("USD", "GBP", "JPY"):
            if currency != base and rng.random() < 0.5:
                f.CashBalanceFactory(
                    account=account, currency=currency, settled=D(rng.randint(1, 90_000))
                )
    seen = set()
    for _ in range(12):
        order = _new_order(rng, accounts, instruments, pm)
        # when checked with both loaders, then every row is the same
        full, one = _both(order)
        assert one == full
        seen.update(
            r.message[:40] for r in full[0] if "no FX rate" in r.message or " at " in r.message
        )
    # and some checks did convert or miss a rate
    assert seen


def test_post_trade_concentration_in_base_currency_and_missing_rates(
    account: Any, fx_pairs: None, make_rule: Any
) -> None:
    # given 10,000 VOD (127,000 USD) in ACC-A, and a CHF position without a rate in ACC-B
    vod = _equity("VOD", "GBP", "10.00")
    f.PositionFactory(account=account, instrument=vod, quantity=D("10000"))
    other = f.AccountFactory(code="ACC-C")
    f.CashBalanceFactory(account=other, settled=D("1000"))
    f.PositionFactory(account=other, instrument=_equity("NESN", "CHF", "100"), quantity=D("1"))
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "11"})
    # when swept
    report = compliance_post_trade_sweep()
    # then ACC-A is at 127,000 / 1,127,000 = 11.268856% and ACC-C cannot be measured
    assert [(b["account"], b["measured"], b["message"]) for b in report.breaches] == [
        (
            "ACC-A",
            "11.268856",
            f"Account {account.pk} long exposure to instrument VOD is 127000, 11.268856% of "
            "NAV 1127000, over the 11% limit",
        ),
        (
            "ACC-C",
            None,
            f"Account {other.pk} concentration cannot be measured in USD: no FX rate CHF/USD",
        ),
    ]


def test_engine_open_orders_without_a_rate_fail_buying_power_naming_it() -> None:
    # given (pure engine) a USD account with an open CHF buy and no CHF rate, and a GBP order
    from datetime import UTC, datetime

    from compliance import engine

    at = datetime(2026, 11, 20, tzinfo=UTC)
    gbp = engine.InstrumentInfo(1, "VOD", None, None, None, D("10"), currency="GBP")
    chf = engine.InstrumentInfo(2, "NESN", None, None, None, D("100"), currency="CHF")
    usd = engine.AccountInfo(7, nav=D("1000"), available_cash=D("1000"), base_currency="USD")
    open_chf = engine.OpenOrder(7, 2, "buy", D("1"), D("100"), at, D("1"))
    rule = engine.RuleSpec(1, 1, "bp", "buying_power", "block")
    order = engine.OrderIntent("k", 7, 1, "buy", D("10"), "market", None, at)

    def run(orders: list[engine.OpenOrder]) -> engine.RuleResult:
        ctx = engine.ComplianceContext(
            instruments={1: gbp, 2: chf},
            accounts={7: usd},
            as_of=at,
            open_orders=orders,
            fx_rates={("GBP", "USD"): D("1.27")},
        )
        [row] = engine.evaluate([order], ctx, [rule])["k"]
        return row

    # when checked with and without the CHF open order
    assert run([]).measured == D("127.0")
    row = run([open_chf])
    # then the open buy cannot be valued, and the check says which rate is missing
    assert (row.outcome, row.measured) == ("block", None)
    assert (
        row.message == "Account 7 open buy notional cannot be measured in USD: no FX rate CHF/USD"
    )


def test_foreign_instruments_are_written_as_runs_of_ids() -> None:
    # given instruments in USD and GBP with interleaved ids
    from compliance.context import _foreign_instruments

    Instrument.objects.all().delete()
    made = [_equity(f"E{n}", "GBP" if n in (0, 1, 2, 4, 6) else "USD", "1") for n in range(7)]
    first = made[0].pk
    # then the GBP ones are the runs [0, 3), [4, 5), [6, 7) (shifted by the first id)
    assert _foreign_instruments("USD") == (
        f"{{[{first},{first + 3}),[{first + 4},{first + 5}),[{first + 6},{first + 7})}}"
    )
    assert _foreign_instruments("CHF") == f"{{[{first},{first + 7})}}"
