"""Tests of the pure compliance engine: plain data in, rows out; no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.engine import (
    AccountInfo,
    ComplianceContext,
    ComplianceDataError,
    InstrumentInfo,
    OpenOrder,
    OpenOrderSummary,
    OpenOrderTally,
    OrderIntent,
    RestrictedEntry,
    RuleConfigError,
    RuleResult,
    RuleSpec,
    evaluate,
    order_outcome,
    validate_rule,
)

D = Decimal
AS_OF = datetime(2025, 6, 2, 15, 0, tzinfo=UTC)
TODAY = AS_OF.date()
ONE_DAY = timedelta(days=1)


# --- builders --------------------------------------------------------------------------------


def instrument(
    id: int = 1,
    *,
    symbol: str | None = None,
    issuer_id: int | None = None,
    sector: str | None = "Tech",
    shares_outstanding: str | None = "1000000",
    reference_price: str = "100",
    tradable: bool = True,
) -> InstrumentInfo:
    return InstrumentInfo(
        id=id,
        symbol=symbol or f"SYM{id}",
        issuer_id=issuer_id if issuer_id is not None else 1000 + id,
        sector=sector,
        shares_outstanding=D(shares_outstanding) if shares_outstanding is not None else None,
        reference_price=D(reference_price),
        tradable=tradable,
    )


def account(
    id: int = 1,
    *,
    nav: str = "1000000",
    cash: str = "100000",
    short_allowed: bool = False,
    group_ids: frozenset[int] = frozenset(),
) -> AccountInfo:
    return AccountInfo(
        id=id,
        nav=D(nav),
        available_cash=D(cash),
        short_allowed=short_allowed,
        group_ids=group_ids,
    )


def order(
    key: str | int = "o1",
    *,
    account_id: int = 1,
    instrument_id: int = 1,
    side: str = "buy",
    quantity: str = "100",
    order_type: str = "market",
    limit_price: str | None = None,
    created_at: datetime = AS_OF,
) -> OrderIntent:
    return OrderIntent(
        key=key,
        account_id=account_id,
        instrument_id=instrument_id,
        side=side,
        quantity=D(quantity),
        order_type=order_type,
        limit_price=D(limit_price) if limit_price is not None else None,
        created_at=created_at,
        created_by_id=7,
    )


def open_order(
    *,
    account_id: int = 2,
    instrument_id: int = 1,
    side: str = "buy",
    leaves: str = "100",
    price: str = "100",
    created_at: datetime = AS_OF - timedelta(hours=1),
    quantity: str | None = None,
) -> OpenOrder:
    return OpenOrder(
        account_id=account_id,
        instrument_id=instrument_id,
        side=side,
        leaves_quantity=D(leaves),
        price=D(price),
        created_at=created_at,
        quantity=D(quantity if quantity is not None else leaves),
    )


def rule(rule_type: str, severity: str = "block", id: int = 1, **kwargs: object) -> RuleSpec:
    params = kwargs.pop("params", {})
    return RuleSpec(
        id=id,
        version=3,
        name=f"{rule_type} #{id}",
        rule_type=rule_type,
        severity=severity,
        params=params,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def context(
    instruments: tuple[InstrumentInfo, ...] = (),
    accounts: tuple[AccountInfo, ...] = (),
    **kwargs: object,
) -> ComplianceContext:
    instruments = instruments or (instrument(),)
    accounts = accounts or (account(1), account(2))
    return ComplianceContext(
        instruments={i.id: i for i in instruments},
        accounts={a.id: a for a in accounts},
        as_of=kwargs.pop("as_of", AS_OF),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def only(results: dict[str | int, list[RuleResult]], key: str | int = "o1") -> RuleResult:
    rows = results[key]
    assert len(rows) == 1, rows
    return rows[0]


# --- result shape and outcome ----------------------------------------------------------------


def test_result_row_carries_rule_identity_and_order_key() -> None:
    # given a fat finger rule and a small order
    spec = rule("fat_finger", id=42, params={"max_quantity": "1000"})
    # when
    row = only(evaluate([order(quantity="10")], context(), [spec]))
    # then
    assert row == RuleResult(
        order_key="o1",
        rule_id=42,
        rule_version=3,
        rule_name="fat_finger #42",
        rule_type="fat_finger",
        outcome="pass",
        message="Fat finger: quantity 10 within maximum 1000",
        measured=D("10"),
        limit=D("1000"),
    )


def test_rows_follow_rule_order_and_every_order_gets_a_key() -> None:
    # given two rules, one of which covers only account 1
    rules = [
        rule("buying_power", id=1),
        rule(
            "fat_finger",
            id=2,
            params={"max_quantity": "5"},
            scope="account",
            scope_account_ids=frozenset({1}),
        ),
    ]
    orders = [order("a", account_id=1), order("b", account_id=2)]
    # when
    results = evaluate(orders, context(), rules)
    # then
    assert [r.rule_id for r in results["a"]] == [1, 2]
    assert [r.rule_id for r in results["b"]] == [1]
    assert evaluate([order("c")], context(), []) == {"c": []}


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], "pass"),
        (["pass", "pass"], "pass"),
        (["pass", "warn"], "warn"),
        (["warn", "block", "pass"], "block"),
        (["block"], "block"),
    ],
)
def test_order_outcome_is_the_most_severe_row(outcomes: list[str], expected: str) -> None:
    rows = [
        RuleResult("o", i, 1, "r", "fat_finger", outcome, "m", None, None)
        for i, outcome in enumerate(outcomes)
    ]
    assert order_outcome(rows) == expected


# --- restricted list -------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["buy", "sell", "sell_short", "buy_to_cover"])
def test_restricted_instrument_firm_wide_fails_every_side(side: str) -> None:
    # given ACME restricted firm-wide
    ctx = context(
        instruments=(instrument(1, symbol="ACME", issuer_id=10),),
        restricted=[RestrictedEntry(instrument_id=1, reason="merger talks")],
    )
    # when
    row = only(evaluate([order(side=side)], ctx, [rule("restricted_list")]))
    # then
    assert row.outcome == "block"
    assert row.message == "ACME is restricted: instrument ACME restricted firm-wide: merger talks"
    assert (row.measured, row.limit) == (None, None)


def test_restricted_issuer_catches_the_issuers_other_securities() -> None:
    # given issuer 10 restricted; ACME and ACME.PR are its securities, OTHR is not
    ctx = context(
        instruments=(
            instrument(1, symbol="ACME", issuer_id=10),
            instrument(2, symbol="ACME.PR", issuer_id=10),
            instrument(3, symbol="OTHR", issuer_id=11),
        ),
        restricted=[RestrictedEntry(issuer_id=10, reason="insider list")],
    )
    orders = [order("a", instrument_id=1), order("b", instrument_id=2), order("c", instrument_id=3)]
    # when
    results = evaluate(orders, ctx, [rule("restricted_list")])
    # then
    assert only(results, "a").outcome == "block"
    assert only(results, "b").outcome == "block"
    assert only(results, "b").message == (
        "ACME.PR is restricted: issuer 10 of ACME.PR restricted firm-wide: insider list"
    )
    assert only(results, "c").outcome == "pass"
    assert only(results, "c").message == "OTHR is not on the restricted list"


def test_restricted_entry_for_one_account_does_not_hit_another() -> None:
    # given instrument 1 restricted for account 1 only
    ctx = context(restricted=[RestrictedEntry(instrument_id=1, account_id=1, reason="mandate")])
    # when
    results = evaluate(
        [order("a", account_id=1), order("b", account_id=2)], ctx, [rule("restricted_list")]
    )
    # then
    assert only(results, "a").outcome == "block"
    assert only(results, "a").message == (
        "SYM1 is restricted: instrument SYM1 restricted for account 1: mandate"
    )
    assert only(results, "b").outcome == "pass"


@pytest.mark.parametrize(
    ("effective_from", "effective_to", "expected"),
    [
        (TODAY, None, "block"),  # starts today: in force
        (None, TODAY, "block"),  # ends today: still in force (inclusive)
        (TODAY - ONE_DAY, TODAY + ONE_DAY, "block"),
        (TODAY + ONE_DAY, None, "pass"),  # not yet
        (None, TODAY - ONE_DAY, "pass"),  # lapsed
    ],
)
def test_restricted_entry_effective_dates_are_inclusive(
    effective_from: object, effective_to: object, expected: str
) -> None:
    ctx = context(
        restricted=[
            RestrictedEntry(
                instrument_id=1,
                reason="r",
                effective_from=effective_from,  # type: ignore[arg-type]
                effective_to=effective_to,  # type: ignore[arg-type]
            )
        ]
    )
    assert only(evaluate([order()], ctx, [rule("restricted_list")])).outcome == expected


def test_instrument_flagged_not_tradable_fails_restricted_list_with_its_severity() -> None:
    ctx = context(instruments=(instrument(1, symbol="DLST", tradable=False),))
    row = only(evaluate([order()], ctx, [rule("restricted_list", severity="warn")]))
    assert row.outcome == "warn"
    assert row.message == "DLST is restricted: DLST is flagged not tradable"


def test_restricted_entry_names_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RestrictedEntry(reason="none")
    with pytest.raises(ValueError, match="exactly one"):
        RestrictedEntry(instrument_id=1, issuer_id=2)


# --- concentration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "limit_price", "outcome", "measured"),
    [
        ("499", None, "pass", D("9.99")),  # just under
        ("500", None, "pass", D("10")),  # at the limit
        ("500", "100.01", "block", D("10.0005")),  # just over, by 5.00 of notional
        ("501", None, "block", D("10.01")),
    ],
)
def test_concentration_instrument_at_under_and_over_limit(
    quantity: str, limit_price: str | None, outcome: str, measured: Decimal
) -> None:
    # given NAV 1,000,000, a 50,000 position and a 10% instrument limit
    ctx = context(holdings={(1, 1): D("500")})
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    o = order(
        quantity=quantity,
        order_type="limit" if limit_price else "market",
        limit_price=limit_price,
    )
    # when
    row = only(evaluate([o], ctx, [spec]))
    # then
    assert (row.outcome, row.measured, row.limit) == (outcome, measured, D("10"))


def test_concentration_message_states_every_number() -> None:
    ctx = context(holdings={(1, 1): D("500")}, open_orders=[open_order(account_id=1, leaves="10")])
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    row = only(evaluate([order(quantity="491")], ctx, [spec]))
    assert row.outcome == "block"
    assert row.message == (
        "Projected long exposure to instrument SYM1 100100.00 is 10.01% of NAV 1000000.00, "
        "exceeds the 10% limit (position 50000.00, open buys 1000.00, this order 49100.00)"
    )


def test_concentration_by_issuer_counts_the_issuers_other_securities() -> None:
    # given two securities of issuer 10 held for 80,000 together, 10% issuer limit
    ctx = context(
        instruments=(instrument(1, issuer_id=10), instrument(2, issuer_id=10)),
        holdings={(1, 1): D("400"), (1, 2): D("400")},
    )
    spec = rule("concentration", params={"dimension": "issuer", "max_pct": "10"})
    # when buying 200 more of the second (20,000 → 100,000 = 10%) and then 201
    at = only(evaluate([order(instrument_id=2, quantity="200")], ctx, [spec]))
    over = only(evaluate([order(instrument_id=2, quantity="201")], ctx, [spec]))
    # then
    assert (at.outcome, at.measured) == ("pass", D("10"))
    assert (over.outcome, over.measured) == ("block", D("10.01"))
    assert over.message.startswith("Projected long exposure to issuer 10 100100.00 is 10.01%")


def test_concentration_by_sector_counts_positions_in_the_sector_only() -> None:
    ctx = context(
        instruments=(
            instrument(1, sector="Energy"),
            instrument(2, sector="Energy"),
            instrument(3, sector="Tech"),
        ),
        holdings={(1, 1): D("1000"), (1, 3): D("5000")},
    )
    spec = rule("concentration", params={"dimension": "sector", "max_pct": "25"})
    # 100,000 held in Energy; 1,500 more of instrument 2 makes 250,000 = 25%
    at = only(evaluate([order(instrument_id=2, quantity="1500")], ctx, [spec]))
    over = only(evaluate([order(instrument_id=2, quantity="1501")], ctx, [spec]))
    assert (at.outcome, at.measured) == ("pass", D("25"))
    assert (over.outcome, over.measured) == ("block", D("25.01"))


def test_concentration_counts_open_buys_but_does_not_net_open_sells() -> None:
    # given a 50,000 position, an open buy of 30,000 and an open sell of 40,000 (account 1)
    ctx = context(
        holdings={(1, 1): D("500")},
        open_orders=[
            open_order(account_id=1, side="buy", leaves="300"),
            open_order(account_id=1, side="sell", leaves="400"),
        ],
    )
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    # when buying 200 (50,000 + 30,000 + 20,000 = 100,000) and 201
    at = only(evaluate([order(quantity="200")], ctx, [spec]))
    over = only(evaluate([order(quantity="201")], ctx, [spec]))
    # then
    assert (at.outcome, at.measured) == ("pass", D("10"))
    assert over.outcome == "block"


def test_concentration_sell_that_reduces_an_over_limit_position_passes() -> None:
    # given a 20% position against a 10% limit
    ctx = context(holdings={(1, 1): D("2000")})
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    # when selling part of it
    row = only(evaluate([order(side="sell", quantity="500")], ctx, [spec]))
    # then the short-side exposure is zero
    assert (row.outcome, row.measured) == ("pass", D("0"))


def test_concentration_sell_into_a_short_is_measured_on_the_short_side() -> None:
    # given 100 held; selling 1,100 leaves a 100,000 short (10%), 1,101 leaves 10.01%
    ctx = context(holdings={(1, 1): D("100")})
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    at = only(evaluate([order(side="sell_short", quantity="1100")], ctx, [spec]))
    over = only(evaluate([order(side="sell_short", quantity="1101")], ctx, [spec]))
    assert (at.outcome, at.measured) == ("pass", D("10"))
    assert (over.outcome, over.measured) == ("block", D("10.01"))
    assert over.message.startswith("Projected short exposure to instrument SYM1 100100.00")


def test_concentration_with_non_positive_nav_fails() -> None:
    ctx = context(accounts=(account(1, nav="0"),))
    spec = rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    row = only(evaluate([order()], ctx, [spec]))
    assert row.outcome == "block"
    assert row.message == (
        "Account 1 NAV 0.00 is not positive; concentration in instrument SYM1 cannot be measured"
    )


def test_concentration_missing_instrument_of_a_holding_is_a_data_error() -> None:
    ctx = context(holdings={(1, 99): D("1")})
    spec = rule("concentration", params={"dimension": "sector", "max_pct": "10"})
    with pytest.raises(ComplianceDataError, match=r"\[99\]"):
        evaluate([order()], ctx, [spec])


# --- ownership -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "outcome", "measured"),
    [("4999", "pass", D("4.9999")), ("5000", "pass", D("5")), ("5001", "block", D("5.0001"))],
)
def test_ownership_at_under_and_over_limit(quantity: str, outcome: str, measured: Decimal) -> None:
    # given 1,000,000 shares outstanding, 40,000 held by the firm, 5,000 on open buy elsewhere
    ctx = context(
        instruments=(instrument(1, issuer_id=10), instrument(2, issuer_id=10)),
        firm_issuer_holdings={10: D("40000")},
        open_orders=[open_order(account_id=2, instrument_id=2, leaves="5000")],
    )
    spec = rule("ownership", params={"max_pct": "5"})
    # when
    row = only(evaluate([order(quantity=quantity)], ctx, [spec]))
    # then
    assert (row.outcome, row.measured, row.limit) == (outcome, measured, D("5"))


def test_ownership_message_and_open_sells_not_netted() -> None:
    ctx = context(
        instruments=(instrument(1, issuer_id=10),),
        firm_issuer_holdings={10: D("40000")},
        open_orders=[open_order(side="sell", leaves="9000")],
    )
    row = only(
        evaluate([order(quantity="10001")], ctx, [rule("ownership", params={"max_pct": "5"})])
    )
    assert row.message == (
        "Firm holding of issuer 10 would be 50001 shares (held 40000, open buys 0, this order "
        "10001), 5.0001% of 1000000 shares outstanding, exceeds the 5% limit"
    )


def test_ownership_does_not_apply_to_sells_or_without_shares_outstanding() -> None:
    ctx = context(
        instruments=(instrument(1), instrument(2, symbol="BOND", shares_outstanding=None)),
        firm_issuer_holdings={1001: D("999999999")},
    )
    spec = rule("ownership", params={"max_pct": "5"})
    results = evaluate(
        [order("a", side="sell"), order("b", instrument_id=2, quantity="10")], ctx, [spec]
    )
    assert only(results, "a").outcome == "pass"
    assert only(results, "a").message == "Sell does not increase the firm's ownership of SYM1"
    assert only(results, "b").outcome == "pass"
    assert only(results, "b").message == (
        "Ownership not applicable: BOND has no shares outstanding"
    )


# --- fat finger ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("999", "pass"), ("1000", "pass"), ("1000.0001", "block")]
)
def test_fat_finger_max_quantity(quantity: str, outcome: str) -> None:
    spec = rule("fat_finger", params={"max_quantity": "1000"})
    row = only(evaluate([order(quantity=quantity)], context(), [spec]))
    assert (row.outcome, row.measured, row.limit) == (outcome, D(quantity), D("1000"))


@pytest.mark.parametrize(
    ("quantity", "order_type", "limit_price", "outcome", "measured"),
    [
        ("999", "market", None, "pass", D("99900")),
        ("1000", "market", None, "pass", D("100000")),  # reference price 100
        ("1000", "limit", "100.01", "block", D("100010")),  # limit price used
        ("1000", "limit", "99", "pass", D("99000")),
        ("1001", "market", None, "block", D("100100")),
    ],
)
def test_fat_finger_max_notional_uses_limit_or_reference_price(
    quantity: str, order_type: str, limit_price: str | None, outcome: str, measured: Decimal
) -> None:
    spec = rule("fat_finger", params={"max_notional": "100000"})
    o = order(quantity=quantity, order_type=order_type, limit_price=limit_price)
    row = only(evaluate([o], context(), [spec]))
    assert (row.outcome, row.measured, row.limit) == (outcome, measured, D("100000"))


def test_fat_finger_notional_message() -> None:
    spec = rule("fat_finger", params={"max_notional": "100000"})
    o = order(quantity="1000", order_type="limit", limit_price="100.01")
    row = only(evaluate([o], context(), [spec]))
    assert row.message == (
        "Fat finger: notional 100010.00 at limit price 100.01 exceeds maximum 100000.00"
    )


@pytest.mark.parametrize(
    ("limit_price", "outcome", "measured"),
    [
        ("104.99", "pass", D("4.99")),
        ("105", "pass", D("5")),
        ("105.01", "block", D("5.01")),
        ("95", "pass", D("5")),
        ("94.99", "block", D("5.01")),
    ],
)
def test_fat_finger_price_deviation(limit_price: str, outcome: str, measured: Decimal) -> None:
    spec = rule("fat_finger", params={"max_price_deviation_pct": "5"})
    o = order(order_type="limit", limit_price=limit_price)
    row = only(evaluate([o], context(), [spec]))
    assert (row.outcome, row.measured, row.limit) == (outcome, measured, D("5"))


def test_fat_finger_deviation_is_not_checked_for_market_orders() -> None:
    spec = rule("fat_finger", params={"max_price_deviation_pct": "5"})
    row = only(evaluate([order(order_type="market")], context(), [spec]))
    assert row.outcome == "pass"
    assert row.message == "Fat finger: market order has no limit price to compare"


def test_fat_finger_reports_every_breach_and_the_first_in_measured() -> None:
    spec = rule(
        "fat_finger",
        severity="warn",
        params={"max_quantity": "100", "max_notional": "10000", "max_price_deviation_pct": "1"},
    )
    o = order(quantity="101", order_type="limit", limit_price="110")
    row = only(evaluate([o], context(), [spec]))
    assert row.outcome == "warn"
    assert row.message == (
        "Fat finger: quantity 101 exceeds maximum 100; notional 11110.00 at limit price 110.00 "
        "exceeds maximum 10000.00; limit price 110.00 deviates 10% from reference price 100.00, "
        "exceeds the 1% limit"
    )
    assert (row.measured, row.limit) == (D("101"), D("100"))


def test_market_order_without_reference_price_fails_notional_checks() -> None:
    ctx = context(instruments=(instrument(1, reference_price="0"),))
    rules = [
        rule("fat_finger", id=1, params={"max_notional": "100000"}),
        rule("buying_power", id=2),
    ]
    rows = evaluate([order()], ctx, rules)["o1"]
    assert [r.outcome for r in rows] == ["block", "block"]
    assert rows[1].message == (
        "SYM1 has no positive reference price (0.00); the order's notional cannot be measured"
    )


# --- short selling / holdings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("699", "pass"), ("700", "pass"), ("701", "block")]
)
def test_sell_is_limited_to_holdings_net_of_open_sells(quantity: str, outcome: str) -> None:
    # given 1,000 held and 300 already on open sell (one sell, one sell short)
    ctx = context(
        holdings={(1, 1): D("1000")},
        open_orders=[
            open_order(account_id=1, side="sell", leaves="200"),
            open_order(account_id=1, side="sell_short", leaves="100"),
        ],
    )
    row = only(evaluate([order(side="sell", quantity=quantity)], ctx, [rule("short_selling")]))
    assert (row.outcome, row.measured, row.limit) == (outcome, D(quantity), D("700"))


def test_oversell_message() -> None:
    ctx = context(
        holdings={(1, 1): D("1000")},
        open_orders=[open_order(account_id=1, side="sell", leaves="300")],
    )
    row = only(evaluate([order(side="sell", quantity="701")], ctx, [rule("short_selling")]))
    assert row.message == (
        "Sell 701 SYM1 exceeds holdings available to sell 700 (held 1000 less open sells 300) "
        "and account 1 may not sell short"
    )


def test_oversell_passes_when_the_account_may_sell_short() -> None:
    ctx = context(accounts=(account(1, short_allowed=True),), holdings={(1, 1): D("10")})
    row = only(evaluate([order(side="sell", quantity="11")], ctx, [rule("short_selling")]))
    assert row.outcome == "pass"
    assert row.message.endswith("; allowed because account 1 may sell short")


@pytest.mark.parametrize(("short_allowed", "outcome"), [(False, "block"), (True, "pass")])
def test_sell_short_needs_permission(short_allowed: bool, outcome: str) -> None:
    ctx = context(accounts=(account(1, short_allowed=short_allowed),))
    row = only(evaluate([order(side="sell_short")], ctx, [rule("short_selling")]))
    assert row.outcome == outcome


def test_buys_pass_the_holdings_rule() -> None:
    row = only(evaluate([order(side="buy_to_cover")], context(), [rule("short_selling")]))
    assert (row.outcome, row.message) == ("pass", "Buy to cover does not reduce holdings")


# --- buying power ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "limit_price", "outcome", "message"),
    [
        ("999", None, "pass", "Buy notional 99900.00 within available cash 100000.00"),
        ("1000", None, "pass", "Buy notional 100000.00 within available cash 100000.00"),
        ("1000", "100.01", "block", "Buy notional 100010.00 exceeds available cash 100000.00"),
        (
            "1000.00001",
            None,
            "block",
            "Buy notional 100000.001 exceeds available cash 100000.00",
        ),
    ],
)
def test_buying_power_at_under_and_over_cash(
    quantity: str, limit_price: str | None, outcome: str, message: str
) -> None:
    o = order(
        quantity=quantity, order_type="limit" if limit_price else "market", limit_price=limit_price
    )
    row = only(evaluate([o], context(), [rule("buying_power")]))
    assert (row.outcome, row.message, row.limit) == (outcome, message, D("100000"))


def test_buying_power_counts_open_buys_and_margin() -> None:
    # given cash 100,000, 50% margin → 150,000; 40,000 already on open buy (buy to cover too)
    ctx = context(
        open_orders=[
            open_order(account_id=1, side="buy", leaves="300"),
            open_order(account_id=1, side="buy_to_cover", leaves="100"),
            open_order(account_id=1, side="sell", leaves="10000"),
        ]
    )
    spec = rule("buying_power", params={"margin_pct": "50"})
    at = only(evaluate([order(quantity="1100")], ctx, [spec]))
    over = only(evaluate([order(quantity="1100.0001")], ctx, [spec]))
    assert (at.outcome, at.measured, at.limit) == ("pass", D("150000"), D("150000"))
    assert over.outcome == "block"
    assert over.message == (
        "Buy notional 110000.01 plus open buys 40000.00 (total 150000.01) exceeds buying power "
        "150000.00 (available cash 100000.00 plus 50% margin)"
    )


def test_sells_pass_buying_power_without_crediting_proceeds() -> None:
    results = evaluate(
        [order("s", side="sell", quantity="5000"), order("b", quantity="1001")],
        context(),
        [rule("buying_power")],
    )
    assert only(results, "s").message == "Sell does not use buying power"
    assert only(results, "s").outcome == "pass"
    assert only(results, "b").outcome == "block"


# --- conflicting orders ----------------------------------------------------------------------


def test_buy_conflicts_with_an_open_sell_in_another_account() -> None:
    ctx = context(open_orders=[open_order(account_id=2, side="sell")])
    row = only(evaluate([order()], ctx, [rule("conflicting_orders", severity="warn")]))
    assert (row.outcome, row.measured, row.limit) == ("warn", D("1"), D("0"))
    assert row.message == (
        "Buy of SYM1 conflicts with 1 open sell order in the same instrument (account 2)"
    )


def test_sell_short_conflicts_with_open_buy_to_cover_and_same_side_does_not() -> None:
    ctx = context(
        instruments=(instrument(1), instrument(2)),
        open_orders=[
            open_order(account_id=2, side="buy_to_cover"),
            open_order(account_id=3, side="buy"),
            open_order(account_id=2, side="sell", instrument_id=2),
        ],
    )
    results = evaluate(
        [order("a", side="sell_short"), order("b", instrument_id=2, side="sell")],
        ctx,
        [rule("conflicting_orders")],
    )
    assert only(results, "a").message == (
        "Sell short of SYM1 conflicts with 2 open buy orders in the same instrument (accounts 2, 3)"
    )
    assert only(results, "b").outcome == "pass"
    assert only(results, "b").message == "No open buy orders in SYM2"


def test_conflict_inside_a_basket_flags_the_later_order() -> None:
    results = evaluate(
        [order("a", account_id=1), order("b", account_id=2, side="sell")],
        context(),
        [rule("conflicting_orders")],
    )
    assert only(results, "a").outcome == "pass"
    assert only(results, "b").outcome == "block"


# --- duplicates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gap", "outcome"),
    [
        (timedelta(seconds=61), "pass"),
        (timedelta(seconds=60), "pass"),  # exactly the window: not a duplicate
        (timedelta(seconds=59, microseconds=999999), "block"),
        (-timedelta(seconds=30), "block"),  # a clock-skewed open order "after" this one
    ],
)
def test_duplicate_window(gap: timedelta, outcome: str) -> None:
    ctx = context(
        open_orders=[open_order(account_id=1, leaves="60", quantity="100", created_at=AS_OF - gap)]
    )
    spec = rule("duplicate_orders", params={"window_seconds": "60"})
    row = only(evaluate([order(quantity="100")], ctx, [spec]))
    assert (row.outcome, row.limit) == (outcome, D("60"))
    assert row.measured == D(abs(gap).total_seconds()).quantize(D("0.000001"))


def test_duplicate_message() -> None:
    ctx = context(open_orders=[open_order(account_id=1, created_at=AS_OF - timedelta(seconds=5))])
    spec = rule("duplicate_orders", params={"window_seconds": "60"})
    row = only(evaluate([order()], ctx, [spec]))
    assert row.message == (
        "Possible duplicate: another order for account 1 buy 100 SYM1 was entered 5 s apart, "
        "within the 60 s window"
    )


@pytest.mark.parametrize(
    "other",
    [
        {"quantity": "101", "leaves": "101"},
        {"side": "sell"},
        {"account_id": 2},
        {"leaves": "0", "quantity": "100"},  # no longer open
    ],
)
def test_not_a_duplicate_when_anything_differs(other: dict[str, object]) -> None:
    fields = {"account_id": 1, "created_at": AS_OF} | other
    ctx = context(open_orders=[open_order(**fields)])  # type: ignore[arg-type]
    spec = rule("duplicate_orders", params={"window_seconds": "60"})
    assert only(evaluate([order()], ctx, [spec])).outcome == "pass"


def test_same_order_twice_in_a_basket_is_a_duplicate() -> None:
    spec = rule("duplicate_orders", params={"window_seconds": "60"})
    results = evaluate([order("a"), order("b")], context(), [spec])
    assert only(results, "a").outcome == "pass"
    assert (only(results, "b").outcome, only(results, "b").measured) == ("block", D("0"))


# --- scope, activity and effective dates of rules --------------------------------------------


def test_rule_scopes_select_accounts() -> None:
    ctx = context(
        accounts=(
            account(1, group_ids=frozenset({7})),
            account(2, group_ids=frozenset({8})),
            account(3),
        )
    )
    rules = [
        rule("buying_power", id=1, scope="firm"),
        rule("buying_power", id=2, scope="account", scope_account_ids=frozenset({2})),
        rule("buying_power", id=3, scope="group", scope_group_ids=frozenset({7, 9})),
    ]
    orders = [order(n, account_id=n) for n in (1, 2, 3)]
    results = evaluate(orders, ctx, rules)
    assert {k: [r.rule_id for r in v] for k, v in results.items()} == {
        1: [1, 3],
        2: [1, 2],
        3: [1],
    }


@pytest.mark.parametrize(
    ("kwargs", "applies"),
    [
        ({"active": False}, False),
        ({"effective_from": TODAY + ONE_DAY}, False),
        ({"effective_to": TODAY - ONE_DAY}, False),
        ({"effective_from": TODAY}, True),
        ({"effective_to": TODAY}, True),
        ({"effective_from": TODAY - ONE_DAY, "effective_to": TODAY + ONE_DAY}, True),
    ],
)
def test_inactive_or_out_of_date_rules_produce_no_row(
    kwargs: dict[str, object], applies: bool
) -> None:
    spec = rule("fat_finger", params={"max_quantity": "1"}, **kwargs)
    rows = evaluate([order()], context(), [spec])["o1"]
    assert len(rows) == (1 if applies else 0)


def test_inactive_rule_with_bad_params_is_ignored_but_active_one_raises() -> None:
    bad = {"max_pct": "ten", "dimension": "instrument"}
    evaluate([order()], context(), [rule("concentration", params=bad, active=False)])
    with pytest.raises(RuleConfigError, match="max_pct='ten' is not a decimal number"):
        evaluate([order()], context(), [rule("concentration", params=bad)])


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (rule("no_such_rule"), "unknown rule type 'no_such_rule'"),
        (rule("buying_power", severity="fatal"), "unknown severity 'fatal'"),
        (rule("buying_power", scope="desk"), "unknown scope 'desk'"),
        (rule("ownership"), r"missing parameter\(s\) \['max_pct'\]"),
        (rule("ownership", params={"max_pct": "5", "max_pc": "5"}), "unknown parameter"),
        (rule("ownership", params={"max_pct": "-1"}), "must be a finite number >= 0"),
        (rule("ownership", params={"max_pct": "NaN"}), "must be a finite number >= 0"),
        (
            rule("concentration", params={"dimension": "country", "max_pct": "5"}),
            "dimension must be one of instrument, issuer, sector",
        ),
        (rule("fat_finger"), "needs at least one of"),
    ],
)
def test_invalid_rule_configuration_is_rejected(spec: RuleSpec, error: str) -> None:
    with pytest.raises(RuleConfigError, match=error):
        validate_rule(spec)


def test_a_rule_evaluated_again_uses_its_parameters_as_they_are_now() -> None:
    # given: one rule object evaluated, then its parameter mapping changed in place
    params = {"max_quantity": "1000"}
    spec = rule("fat_finger", params=params)
    first = only(evaluate([order(quantity="1001")], context(), [spec]))
    again = only(evaluate([order(quantity="1001")], context(), [spec]))
    params["max_quantity"] = "2000"
    # when
    changed = only(evaluate([order(quantity="1001")], context(), [spec]))
    # then
    assert (first.outcome, first.limit) == (again.outcome, again.limit) == ("block", D("1000"))
    assert (changed.outcome, changed.limit) == ("pass", D("2000"))


def test_an_equal_rule_with_other_parameters_is_parsed_on_its_own() -> None:
    # given: two rules alike but for their parameters (params take no part in the hash)
    low = rule("fat_finger", params={"max_quantity": "10"})
    high = rule("fat_finger", params={"max_quantity": "5000"})
    assert hash(low) == hash(high) and low != high
    # when
    rows = [only(evaluate([order(quantity="100")], context(), [spec])) for spec in (low, high)]
    # then
    assert [(r.outcome, r.limit) for r in rows] == [("block", D("10")), ("pass", D("5000"))]


def test_a_rule_with_bad_parameters_is_refused_every_time() -> None:
    bad = rule("concentration", params={"max_pct": "ten", "dimension": "instrument"})
    for _ in range(2):
        with pytest.raises(RuleConfigError, match="max_pct='ten' is not a decimal number"):
            evaluate([order()], context(), [bad])


# --- input errors ----------------------------------------------------------------------------


def test_missing_reference_data_and_duplicate_keys_raise() -> None:
    with pytest.raises(ComplianceDataError, match="account 9 missing"):
        evaluate([order(account_id=9)], context(), [])
    with pytest.raises(ComplianceDataError, match="instrument 9 missing"):
        evaluate([order(instrument_id=9)], context(), [])
    with pytest.raises(ComplianceDataError, match=r"Open orders reference .*\[9\]"):
        context(open_orders=[open_order(instrument_id=9)])
    with pytest.raises(ValueError, match="Duplicate order key 'o1'"):
        evaluate([order(), order()], context(), [])


def test_order_intent_validates_side_and_quantity() -> None:
    with pytest.raises(ValueError, match="unknown side 'short'"):
        order(side="short")
    with pytest.raises(ValueError, match="quantity must be positive"):
        order(quantity="0")


# --- baskets ---------------------------------------------------------------------------------


def test_basket_buys_consume_buying_power_cumulatively() -> None:
    # given cash 100,000 and three buys of 40,000
    orders = [order(k, quantity="400") for k in ("a", "b", "c")]
    # when
    results = evaluate(orders, context(), [rule("buying_power")])
    # then the third sees the first two as open
    assert [(only(results, k).outcome, only(results, k).measured) for k in "abc"] == [
        ("pass", D("40000")),
        ("pass", D("80000")),
        ("block", D("120000")),
    ]


def test_blocked_basket_order_still_counts_for_later_orders() -> None:
    orders = [order("a", quantity="2000"), order("b", quantity="1")]
    results = evaluate(orders, context(), [rule("buying_power")])
    assert only(results, "a").outcome == "block"
    assert (only(results, "b").outcome, only(results, "b").measured) == ("block", D("200100"))


def test_basket_sells_consume_holdings_cumulatively() -> None:
    ctx = context(holdings={(1, 1): D("1000")})
    orders = [order(k, side="sell", quantity="400") for k in ("a", "b", "c")]
    results = evaluate(orders, ctx, [rule("short_selling")])
    assert [only(results, k).limit for k in "abc"] == [D("1000"), D("600"), D("200")]
    assert [only(results, k).outcome for k in "abc"] == ["pass", "pass", "block"]


def test_basket_counts_for_concentration_and_ownership_across_accounts() -> None:
    ctx = context(instruments=(instrument(1, issuer_id=10),))
    rules = [
        rule("concentration", id=1, params={"dimension": "issuer", "max_pct": "10"}),
        rule("ownership", id=2, params={"max_pct": "0.1"}),
    ]
    # 600 + 500 = 1,100 shares > 1,000 (0.1%); account 1's 100,000 is 10%, +100 more is over
    orders = [
        order("a", account_id=1, quantity="600"),
        order("b", account_id=2, quantity="300"),
        order("c", account_id=1, quantity="400"),
        order("d", account_id=2, quantity="101"),
    ]
    results = evaluate(orders, ctx, rules)
    outcomes = {k: [r.outcome for r in v] for k, v in results.items()}
    assert outcomes == {
        "a": ["pass", "pass"],
        "b": ["pass", "pass"],
        "c": ["pass", "block"],  # 10% exactly for account 1; 1,300 shares firm-wide
        "d": ["pass", "block"],
    }
    assert results["c"][1].measured == D("0.13")


# --- the institutional example ---------------------------------------------------------------


def test_fund_rebalance_blocks_only_the_two_restricted_sells() -> None:
    # given a fund holding 500 names (issuers 1..500) and a full rule set
    n = 500
    instruments = tuple(
        instrument(i, symbol=f"N{i}", issuer_id=i, sector=f"S{i % 11}", reference_price="50")
        for i in range(1, n + 2)
    )
    fund = account(1, nav="100000000", cash="1000000", group_ids=frozenset({3}))
    ctx = context(
        instruments=instruments,
        accounts=(fund,),
        holdings={(1, i): D("1000") for i in range(1, n + 1)},
        restricted=[
            RestrictedEntry(instrument_id=17, reason="pending merger"),
            RestrictedEntry(issuer_id=342, account_id=1, reason="client exclusion"),
            RestrictedEntry(instrument_id=9, reason="lapsed", effective_to=TODAY - ONE_DAY),
        ],
    )
    rules = [
        rule("restricted_list", id=1),
        rule("short_selling", id=2),
        rule("buying_power", id=3),
        rule("concentration", id=4, params={"dimension": "instrument", "max_pct": "5"}),
        rule("concentration", id=5, params={"dimension": "sector", "max_pct": "30"}),
        rule("ownership", id=6, params={"max_pct": "5"}),
        rule("fat_finger", id=7, params={"max_quantity": "100000", "max_notional": "1000000"}),
        rule("conflicting_orders", id=8, severity="warn"),
        rule(
            "duplicate_orders",
            id=9,
            params={"window_seconds": "60"},
            scope="group",
            scope_group_ids=frozenset({3}),
        ),
    ]
    basket = [
        order(f"sell-{i}", instrument_id=i, side="sell", quantity="1000") for i in range(1, n + 1)
    ]
    basket.append(
        order("buy", instrument_id=n + 1, quantity="10000", order_type="limit", limit_price="50")
    )
    # when
    results = evaluate(basket, ctx, rules)
    # then
    outcomes = {key: order_outcome(rows) for key, rows in results.items()}
    blocked = {k for k, v in outcomes.items() if v == "block"}
    assert blocked == {"sell-17", "sell-342"}
    assert sum(v == "pass" for v in outcomes.values()) == 499
    assert all(len(rows) == len(rules) for rows in results.values())
    assert [r.rule_id for r in results["sell-17"] if r.outcome != "pass"] == [1]
    assert [r.rule_id for r in results["sell-342"] if r.outcome != "pass"] == [1]
    assert results["sell-342"][0].message == (
        "N342 is restricted: issuer 342 of N342 restricted for account 1: client exclusion"
    )


# --- properties ------------------------------------------------------------------------------

_orders = st.lists(
    st.tuples(
        st.integers(1, 2),  # account
        st.integers(1, 3),  # instrument
        st.sampled_from(["buy", "sell", "sell_short", "buy_to_cover"]),
        st.integers(1, 2000),  # quantity
        st.one_of(st.none(), st.integers(90, 110)),  # limit price
        st.integers(0, 120),  # seconds after AS_OF
    ),
    max_size=12,
)

_ALL_RULES = [
    rule("restricted_list", id=1),
    rule("concentration", id=2, params={"dimension": "issuer", "max_pct": "10"}),
    rule("ownership", id=3, params={"max_pct": "0.1"}),
    rule("fat_finger", id=4, params={"max_quantity": "1500", "max_price_deviation_pct": "5"}),
    rule("short_selling", id=5),
    rule("buying_power", id=6, params={"margin_pct": "10"}),
    rule("conflicting_orders", id=7, severity="warn"),
    rule("duplicate_orders", id=8, params={"window_seconds": "60"}),
]


def _property_context() -> ComplianceContext:
    return context(
        instruments=(instrument(1, issuer_id=10), instrument(2, issuer_id=10), instrument(3)),
        accounts=(account(1, short_allowed=True), account(2)),
        holdings={(1, 1): D("500"), (2, 3): D("800")},
        open_orders=[open_order(account_id=2, instrument_id=2, side="sell", leaves="50")],
        firm_issuer_holdings={10: D("300")},
        restricted=[RestrictedEntry(instrument_id=3, account_id=1, reason="r")],
    )


def _build(raw: list[tuple[int, int, str, int, int | None, int]]) -> list[OrderIntent]:
    return [
        order(
            i,
            account_id=a,
            instrument_id=inst,
            side=side,
            quantity=str(q),
            order_type="limit" if px is not None else "market",
            limit_price=str(px) if px is not None else None,
            created_at=AS_OF + timedelta(seconds=s),
        )
        for i, (a, inst, side, q, px, s) in enumerate(raw)
    ]


@settings(max_examples=60, deadline=None)
@given(_orders)
def test_an_orders_result_depends_only_on_the_orders_before_it(raw: list) -> None:
    # given a random basket; when each prefix is evaluated alone
    orders = _build(raw)
    ctx = _property_context()
    full = evaluate(orders, ctx, _ALL_RULES)
    # then the last order of every prefix gets exactly the rows it got in the full basket
    for i, o in enumerate(orders):
        assert evaluate(orders[: i + 1], ctx, _ALL_RULES)[o.key] == full[o.key]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=20), st.integers(0, 100000))
def test_buying_power_passes_exactly_the_orders_within_cumulative_cash(
    quantities: list[int], cash: int
) -> None:
    # given buys at reference price 100 against the given cash
    ctx = context(accounts=(account(1, cash=str(cash)),))
    orders = [order(i, quantity=str(q)) for i, q in enumerate(quantities)]
    # when
    results = evaluate(orders, ctx, [rule("buying_power")])
    # then order i passes iff the running total of notionals up to it is within cash
    running = 0
    for i, q in enumerate(quantities):
        running += q * 100
        assert only(results, i).outcome == ("pass" if running <= cash else "block")


# --- other accounts' open orders as tallies --------------------------------------------------


def _tally_book() -> tuple[list[OpenOrder], list[OpenOrderTally]]:
    """Other accounts' open orders one by one, and the same orders summed per account, side."""
    one_by_one = [
        open_order(account_id=2, instrument_id=1, side="sell", leaves="30"),
        open_order(account_id=2, instrument_id=1, side="sell", leaves="20"),
        open_order(account_id=3, instrument_id=1, side="sell_short", leaves="5"),
        open_order(account_id=2, instrument_id=1, side="buy", leaves="400"),
        open_order(account_id=3, instrument_id=2, side="buy_to_cover", leaves="600"),
    ]
    tallies = [
        OpenOrderTally(
            account_id=2, instrument_id=1, side="sell", count=2, leaves_quantity=D("50")
        ),
        OpenOrderTally(
            account_id=3, instrument_id=1, side="sell_short", count=1, leaves_quantity=D("5")
        ),
        OpenOrderTally(
            account_id=2, instrument_id=1, side="buy", count=1, leaves_quantity=D("400")
        ),
        OpenOrderTally(
            account_id=3, instrument_id=2, side="buy_to_cover", count=1, leaves_quantity=D("600")
        ),
    ]
    return one_by_one, tallies


def test_tallies_of_other_accounts_give_the_same_rows_as_their_orders_one_by_one() -> None:
    # given two instruments of one issuer, and other accounts' open orders in both
    instruments = (instrument(1, issuer_id=9), instrument(2, issuer_id=9))
    accounts = (account(1), account(2), account(3))
    rules = [
        rule("conflicting_orders", id=1),
        rule("ownership", id=2, params={"max_pct": "0.2"}),
        rule("buying_power", id=3),
    ]
    orders = [order("b", quantity="1000"), order("s", side="sell", quantity="10")]
    one_by_one, tallies = _tally_book()
    # when
    expected = evaluate(orders, context(instruments, accounts, open_orders=one_by_one), rules)
    got = evaluate(orders, context(instruments, accounts, open_tallies=tallies), rules)
    # then: the same rows, and they did see the tallied orders
    assert got == expected
    assert [(r.outcome, r.measured) for r in got["b"]] == [
        ("block", D("3")),
        # exactly at the limit: 400 + 600 tallied buys in the issuer + 1,000 of 1,000,000
        ("pass", D("0.2")),
        ("pass", D("100000")),
    ]
    assert got["b"][0].message == (
        "Buy of SYM1 conflicts with 3 open sell orders in the same instrument (accounts 2, 3)"
    )
    assert got["s"][0].message == (
        "Sell of SYM1 conflicts with 2 open buy orders in the same instrument (accounts 1, 2)"
    )


def test_a_tally_of_an_account_with_an_order_in_the_call_is_refused() -> None:
    # given account 1's own open orders summed, as only other accounts' may be
    tally = OpenOrderTally(
        account_id=1, instrument_id=1, side="sell", count=1, leaves_quantity=D("10")
    )
    ctx = context(open_tallies=[tally])
    # when / then: nothing is evaluated
    with pytest.raises(ValueError, match="account 1 has open orders given as tallies"):
        evaluate([order("o1")], ctx, [rule("conflicting_orders")])
    assert evaluate([order("o2", account_id=2)], ctx, [rule("conflicting_orders")])["o2"][
        0
    ].measured == D("1")


def test_a_tally_of_an_unknown_instrument_is_a_data_error() -> None:
    tally = OpenOrderTally(
        account_id=2, instrument_id=99, side="buy", count=1, leaves_quantity=D("10")
    )
    with pytest.raises(ComplianceDataError, match=r"\[99\]"):
        context(open_tallies=[tally])


# --- open orders summed in advance ---------------------------------------------------------


def test_a_summary_of_open_orders_gives_the_same_rows_as_the_orders_themselves() -> None:
    # given account 1's open orders one by one (two buys in instrument 1, a sell in 1 and a
    # buy in 2 of the same issuer and sector) and another account's sell in instrument 1
    inst1, inst2 = instrument(1, issuer_id=9), instrument(2, issuer_id=9)
    opens = (
        open_order(account_id=1, leaves="10", price="100", quantity="10"),
        open_order(account_id=1, leaves="20", price="50", quantity="30"),
        open_order(account_id=1, side="sell", leaves="5", price="100", quantity="5"),
        open_order(account_id=1, instrument_id=2, leaves="4", price="25", quantity="4"),
        open_order(account_id=2, side="sell", leaves="7", price="100", quantity="7"),
    )
    rules = [
        rule("buying_power", id=1),
        rule("concentration", id=2, params={"dimension": "instrument", "max_pct": "1"}),
        rule("concentration", id=3, params={"dimension": "issuer", "max_pct": "1"}),
        rule("concentration", id=4, params={"dimension": "sector", "max_pct": "1"}),
        rule("short_selling", id=5),
        rule("ownership", id=6, params={"max_pct": "1"}),
        rule("conflicting_orders", id=7),
        rule("duplicate_orders", id=8, params={"window_seconds": "7200"}),
    ]
    orders = [order(side="buy", quantity="10"), order("o2", side="sell", quantity="5")]
    full = context((inst1, inst2), open_orders=opens)
    # when the same book is handed over as sums (plus the other account's order on top)
    summary = OpenOrderSummary(
        buy_notional={1: D("2100")},
        sell_qty={(1, 1): D("5")},
        bucket_notional={
            (1, 0, 1, True): D("2000"),
            (1, 1, 9, True): D("2100"),
            (1, 2, "Tech", True): D("2100"),
            (1, 0, 1, False): D("500"),
            (1, 1, 9, False): D("500"),
            (1, 2, "Tech", False): D("500"),
        },
        issuer_buy_qty={9: D("34")},
        side_accounts={(1, True): {1: 2}, (1, False): {1: 1}, (2, True): {1: 1}},
        times={
            (1, 1, "buy", D("10")): [AS_OF - timedelta(hours=1)],
            (1, 1, "sell", D("5")): [AS_OF - timedelta(hours=1)],
        },
    )
    summed = context((inst1, inst2), open_summary=summary, open_orders=opens[4:])
    # then every row is the same
    expected = evaluate(orders, full, rules)
    assert evaluate(orders, summed, rules) == expected
    assert {r.rule_type: r.measured for r in expected["o1"]}["buying_power"] == D("3100")


def test_keys_a_summary_leaves_out_count_as_no_open_orders() -> None:
    # given an empty summary
    ctx = context(open_summary=OpenOrderSummary())
    # when an order is checked for buying power and conflicts, then nothing else is open
    results = evaluate(
        [order(quantity="10")], ctx, [rule("buying_power", id=1), rule("conflicting_orders", id=2)]
    )
    assert [(r.outcome, r.measured) for r in results["o1"]] == [
        ("pass", D("1000")),
        ("pass", D("0")),
    ]


# --- no reference cycles ---------------------------------------------------------------------


def test_a_run_is_freed_without_the_cyclic_collector() -> None:
    # given: the cyclic collector off, and a run that checked an order against two rules
    import gc
    import weakref

    from compliance.engine import _Run

    specs = [rule("fat_finger", id=1, params={"max_quantity": "1000"}), rule("restricted_list")]
    gc.disable()
    try:
        run = _Run(context(), specs)
        rows = run.run([order(quantity="10")])
        ref = weakref.ref(run)
        # when: its last reference goes
        del run
        # then: it is gone at once (it keeps no bound methods of its own), its rows intact
        assert ref() is None
        assert [r.outcome for r in rows["o1"]] == ["pass", "pass"]
    finally:
        gc.enable()
