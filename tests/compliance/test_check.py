"""Pre-trade compliance wired to the database: every rule type, scopes, dates, look-through."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from compliance.context import firm_now
from compliance.models import ComplianceResult, RestrictedEntry
from compliance.services import compliance_check
from oms_site import refcache
from orders.enums import OrderStatus
from orders.models import Order
from tests import factories as f
from tests.compliance.conftest import check, results_of

D = Decimal
pytestmark = pytest.mark.django_db


# --- every rule type at, under and over its limit ---------------------------------------------
# The account fixture: NAV = cash 1,000,000 (no positions); ACME at 100; 100,000,000 shares.


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("999", "pass"), ("1000", "pass"), ("1001", "block")]
)
def test_concentration_instrument_under_at_over(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, quantity: str, outcome: str
) -> None:
    # given a 10% single-instrument limit: 1,000 ACME at 100 is exactly 10% of NAV 1,000,000
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    order = make_order(account, instrument, quantity=quantity)
    # when
    outcomes = check([order])
    # then
    assert outcomes == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.outcome, row.limit) == (outcome, D("10"))
    assert row.measured == D(quantity) * 100 * 100 / D("1000000")


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("999", "pass"), ("1000", "pass"), ("1001", "warn")]
)
def test_ownership_under_at_over(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, quantity: str, outcome: str
) -> None:
    # given a 0.001% ownership limit of 100,000,000 shares outstanding = 1,000 shares
    make_rule("ownership", params={"max_pct": "0.001"}, severity="warn")
    order = make_order(account, instrument, quantity=quantity)
    # when / then
    assert check([order]) == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.outcome, row.rule_type, row.limit) == (outcome, "ownership", D("0.001"))


def test_ownership_counts_other_accounts_holdings_and_open_buys(
    account: Any, other_account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given the firm already holds 600 (other account) and another account has 300 open to buy
    make_rule("ownership", params={"max_pct": "0.001"})
    f.PositionFactory(account=other_account, instrument=instrument, quantity=D("600"))
    make_order(other_account, instrument, quantity="300", status=OrderStatus.APPROVED)
    # when 100 more (total 1,000, at the limit) and then 101 (over) are checked
    at_limit = make_order(account, instrument, quantity="100")
    assert check([at_limit]) == {at_limit.pk: "pass"}
    at_limit.delete()
    over = make_order(account, instrument, quantity="101")
    # then
    assert check([over]) == {over.pk: "block"}


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("499", "pass"), ("500", "pass"), ("501", "block")]
)
def test_fat_finger_quantity_under_at_over(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, quantity: str, outcome: str
) -> None:
    make_rule("fat_finger", params={"max_quantity": "500"})
    order = make_order(account, instrument, quantity=quantity)
    assert check([order]) == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.measured, row.limit) == (D(quantity), D("500"))


@pytest.mark.parametrize(
    ("limit_price", "outcome"), [("104.99", "pass"), ("105.00", "pass"), ("105.01", "warn")]
)
def test_fat_finger_price_deviation_under_at_over(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, limit_price: str, outcome: str
) -> None:
    # given a 5% band around the reference price 100.00
    make_rule("fat_finger", params={"max_price_deviation_pct": "5"}, severity="warn")
    order = make_order(
        account, instrument, quantity="1", order_type="limit", limit_price=limit_price
    )
    assert check([order]) == {order.pk: outcome}


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("999", "pass"), ("1000", "pass"), ("1001", "block")]
)
def test_short_selling_under_at_over_holdings(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, quantity: str, outcome: str
) -> None:
    # given 1,000 ACME held and no short selling allowed
    make_rule("short_selling")
    f.PositionFactory(account=account, instrument=instrument, quantity=D("1000"))
    order = make_order(account, instrument, side="sell", quantity=quantity)
    assert check([order]) == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.measured, row.limit) == (D(quantity), D("1000"))


def test_short_selling_counts_open_sells_and_allows_short_accounts(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    make_rule("short_selling")
    f.PositionFactory(account=account, instrument=instrument, quantity=D("1000"))
    make_order(account, instrument, side="sell", quantity="600", status=OrderStatus.APPROVED)
    # a sell of 401 exceeds the 400 still available
    over = make_order(account, instrument, side="sell", quantity="401")
    assert check([over]) == {over.pk: "block"}
    over.delete()
    # sell_short is refused for an account that may not sell short, allowed once it may
    short = make_order(account, instrument, side="sell_short", quantity="10")
    assert check([short]) == {short.pk: "block"}
    account.short_selling_allowed = True
    account.save()
    short2 = make_order(account, instrument, side="sell_short", quantity="10")
    assert check([short2]) == {short2.pk: "pass"}


@pytest.mark.parametrize(
    ("quantity", "outcome"), [("9999", "pass"), ("10000", "pass"), ("10001", "block")]
)
def test_buying_power_under_at_over(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, quantity: str, outcome: str
) -> None:
    # given 1,000,000 settled cash: 10,000 ACME at 100 spends exactly all of it
    make_rule("buying_power")
    order = make_order(account, instrument, quantity=quantity)
    assert check([order]) == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.measured, row.limit) == (D(quantity) * 100, D("1000000.00"))


def test_buying_power_counts_open_buys_pending_cash_and_margin(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given 100,000 of unsettled purchases (pending -100,000) and an open buy of 400,000
    cash = account.cash_balances.get()
    cash.pending = D("-100000.00")
    cash.save()
    make_order(account, instrument, quantity="4000", status=OrderStatus.APPROVED)
    # a blocked or canceled order does not hold buying power
    make_order(account, instrument, quantity="9000", status=OrderStatus.BLOCKED)
    make_order(account, instrument, quantity="9000", status=OrderStatus.CANCELED)
    make_rule("buying_power", params={"margin_pct": "10"})
    # when: available 900,000 x 1.10 = 990,000; 400,000 open leaves 590,000 = 5,900 ACME
    at = make_order(account, instrument, quantity="5900")
    assert check([at]) == {at.pk: "pass"}
    at.delete()
    over = make_order(account, instrument, quantity="5901")
    assert check([over]) == {over.pk: "block"}
    [row] = results_of(over)
    assert (row.measured, row.limit) == (D("990100"), D("990000"))


def test_positive_pending_cash_is_not_buying_power(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # unsettled sale proceeds are not cash yet
    cash = account.cash_balances.get()
    cash.pending = D("500000.00")
    cash.save()
    make_rule("buying_power")
    order = make_order(account, instrument, quantity="10001")
    assert check([order]) == {order.pk: "block"}


@pytest.mark.parametrize(("seconds", "outcome"), [(59, "warn"), (60, "pass"), (61, "pass")])
def test_duplicate_orders_within_at_outside_window(
    account: Any, instrument: Any, make_rule: Any, make_order: Any, seconds: int, outcome: str
) -> None:
    # given the same order entered `seconds` before (a gap of exactly the window passes)
    make_rule("duplicate_orders", params={"window_seconds": "60"}, severity="warn")
    make_order(
        account,
        instrument,
        quantity="100",
        status=OrderStatus.APPROVED,
        age=timedelta(seconds=seconds),
    )
    order = make_order(account, instrument, quantity="100")
    # created_at of both rows comes from the database clock: pin the new one's gap exactly
    from orders.models import Order

    first = Order.objects.exclude(pk=order.pk).get()
    Order.objects.filter(pk=order.pk).update(
        created_at=first.created_at + timedelta(seconds=seconds)
    )
    order.refresh_from_db()
    assert check([order]) == {order.pk: outcome}


@pytest.mark.parametrize(("opposite", "outcome"), [(0, "pass"), (1, "warn")])
def test_conflicting_orders_none_or_one(
    account: Any,
    other_account: Any,
    instrument: Any,
    make_rule: Any,
    make_order: Any,
    opposite: int,
    outcome: str,
) -> None:
    make_rule("conflicting_orders", severity="warn")
    for _ in range(opposite):
        make_order(other_account, instrument, side="sell", quantity="5", status=OrderStatus.WORKING)
    # a same-side order elsewhere never conflicts
    make_order(other_account, instrument, side="buy", quantity="5", status=OrderStatus.WORKING)
    order = make_order(account, instrument, quantity="100")
    assert check([order]) == {order.pk: outcome}
    [row] = results_of(order)
    assert (row.measured, row.limit) == (D(opposite), D(0))


def test_restricted_instrument_blocks_and_lapsed_entry_does_not(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    make_rule("restricted_list")
    today = firm_now().date()
    RestrictedEntry.objects.create(
        instrument=instrument, reason="old deal", effective_to=today - timedelta(days=1)
    )
    lapsed = make_order(account, instrument)
    assert check([lapsed]) == {lapsed.pk: "pass"}
    RestrictedEntry.objects.create(
        instrument=instrument, reason="M&A advisory", effective_from=today
    )
    order = make_order(account, instrument)
    assert check([order]) == {order.pk: "block"}
    assert "M&A advisory" in results_of(order)[0].message


def test_restricted_issuer_catches_the_issuers_other_securities(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given the issuer of ACME is restricted, and ACME-B is another security of that issuer
    make_rule("restricted_list")
    bond = f.InstrumentFactory(symbol="ACME-B", issuer=instrument.issuer, asset_class="bond")
    other = f.InstrumentFactory(symbol="OTHER")
    RestrictedEntry.objects.create(issuer=instrument.issuer, reason="insider list")
    orders = [
        make_order(account, bond),
        make_order(account, instrument),
        make_order(account, other),
    ]
    # when / then
    assert check(orders) == {orders[0].pk: "block", orders[1].pk: "block", orders[2].pk: "pass"}


def test_account_restriction_only_hits_that_account(
    account: Any, other_account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    make_rule("restricted_list")
    RestrictedEntry.objects.create(instrument=instrument, account=account, reason="client ban")
    mine = make_order(account, instrument)
    theirs = make_order(other_account, instrument)
    assert check([mine, theirs]) == {mine.pk: "block", theirs.pk: "pass"}


def test_inactive_restricted_entry_is_ignored(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    make_rule("restricted_list")
    RestrictedEntry.objects.create(instrument=instrument, reason="lifted", active=False)
    order = make_order(account, instrument)
    assert check([order]) == {order.pk: "pass"}


# --- scopes and effective dates of rules ------------------------------------------------------


def test_rule_scopes_firm_account_group(
    account: Any, other_account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given one rule per scope, each failing any order of 2+ shares
    group = f_group("PENSIONS")
    other_account.groups.add(group)
    firm = make_rule("fat_finger", params={"max_quantity": "1"}, name="firm", severity="warn")
    acct = make_rule(
        "fat_finger", params={"max_quantity": "1"}, name="acct", scope="account", accounts=[account]
    )
    grp = make_rule(
        "fat_finger", params={"max_quantity": "1"}, name="grp", scope="group", groups=[group]
    )
    mine = make_order(account, instrument, quantity="2")
    theirs = make_order(other_account, instrument, quantity="2")
    # when
    outcomes = check([mine, theirs])
    # then each order gets the firm rule and only the rule scoped to it
    assert outcomes == {mine.pk: "block", theirs.pk: "block"}
    assert [r.rule_id for r in results_of(mine)] == [firm.pk, acct.pk]
    assert [r.rule_id for r in results_of(theirs)] == [firm.pk, grp.pk]


def f_group(code: str) -> Any:
    from allocations.models import AccountGroup

    return AccountGroup.objects.create(code=code, name=code)


def test_rule_effective_dates_and_active_flag(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    today = firm_now().date()
    day = timedelta(days=1)
    ff = {"max_quantity": "1"}
    make_rule("fat_finger", params=ff, name="future", effective_from=today + day)
    make_rule("fat_finger", params=ff, name="expired", effective_to=today - day)
    make_rule("fat_finger", params=ff, name="inactive", active=False)
    starts = make_rule(
        "fat_finger", params=ff, name="starts today", effective_from=today, severity="warn"
    )
    ends = make_rule(
        "fat_finger", params=ff, name="ends today", effective_to=today, severity="warn"
    )
    order = make_order(account, instrument, quantity="2")
    assert check([order]) == {order.pk: "warn"}
    assert [r.rule_id for r in results_of(order)] == [starts.pk, ends.pk]


# --- storage, outcome folding, versions, constant queries ---------------------------------------


def test_results_store_rule_version_and_outcome_folds_block_over_warn(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    warn = make_rule("fat_finger", params={"max_quantity": "10"}, severity="warn")
    warn.version = 4
    warn.save()
    make_rule("fat_finger", params={"max_quantity": "1000"}, severity="block")
    small, big = (
        make_order(account, instrument, quantity="5"),
        make_order(account, instrument, quantity="50"),
    )
    assert check([small, big]) == {small.pk: "pass", big.pk: "warn"}
    rows = results_of(big)
    assert [(r.rule_name, r.rule_version, r.outcome) for r in rows] == [
        (warn.name, 4, "warn"),
        (rows[1].rule_name, 1, "pass"),
    ]
    make_rule("fat_finger", params={"max_quantity": "20"}, severity="block")
    again = make_order(account, instrument, quantity="50")
    assert check([again]) == {again.pk: "block"}


def test_no_rules_means_pass_and_no_rows(account: Any, instrument: Any, make_order: Any) -> None:
    order = make_order(account, instrument)
    assert check([order]) == {order.pk: "pass"}
    assert ComplianceResult.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_check_refuses_to_run_outside_a_transaction(
    account: Any, instrument: Any, make_order: Any
) -> None:
    order = make_order(account, instrument)
    with pytest.raises(RuntimeError):
        compliance_check(orders=[order])


def test_basket_orders_count_as_open_for_later_orders(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # 6 orders of 2,000 ACME (200,000 each) against 1,000,000 cash: the first 5 fit
    make_rule("buying_power")
    orders = [make_order(account, instrument, quantity="2000") for _ in range(6)]
    outcomes = check(orders)
    assert [outcomes[o.pk] for o in orders] == ["pass"] * 5 + ["block"]


def _all_rule_types(make_rule: Any) -> None:
    make_rule("restricted_list")
    make_rule("concentration", params={"dimension": "issuer", "max_pct": "50"})
    make_rule("ownership", params={"max_pct": "5"})
    make_rule("fat_finger", params={"max_quantity": "100000"})
    make_rule("short_selling")
    make_rule("buying_power")
    make_rule("conflicting_orders", severity="warn")
    make_rule("duplicate_orders", params={"window_seconds": "5"}, severity="warn")


def test_query_count_does_not_grow_with_basket_size(
    account: Any, other_account: Any, make_rule: Any, make_order: Any
) -> None:
    # given every rule type, holdings, open orders and restrictions in play
    _all_rule_types(make_rule)
    instruments = [f.InstrumentFactory() for _ in range(60)]
    for inst in instruments[:30] + [f.InstrumentFactory() for _ in range(5)]:
        f.PositionFactory(account=account, instrument=inst, quantity=D("50"))
    make_order(other_account, instruments[0], side="sell", status=OrderStatus.WORKING)
    RestrictedEntry.objects.create(instrument=instruments[5], reason="r")
    small = [make_order(account, instruments[i], quantity="1") for i in range(3)]
    large = [make_order(account, inst, quantity="1") for inst in instruments]

    def count(orders: list[Any], *, cold: bool) -> int:
        if cold:
            refcache.clear()
        with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
            compliance_check(orders=orders)
        return len(ctx.captured_queries)

    # when / then: with the reference-data cache empty, and with it filled
    assert count(small, cold=True) == count(large, cold=True) <= 14
    assert count(small, cold=False) == count(large, cold=False)
    # only the cash lock, the refdata version, and one statement for holdings, open orders and
    # issuer holdings
    assert count(large, cold=False) == 3


def test_result_text_survives_copy_escaping(
    account: Any,
    instrument: Any,
    make_rule: Any,
    make_order: Any,
    insert_mode: int,
) -> None:
    # Few rows go in one INSERT, more by COPY: both ways must store the text exactly.
    # given a restriction reason with a tab, a newline, a backslash and non-ASCII text
    reason = "Deal\tteam\nC:\\lists\\Q3 — Zürich"
    make_rule("restricted_list", name="Restricted\tlist \\ v2")
    RestrictedEntry.objects.create(instrument=instrument, reason=reason)
    order = make_order(account, instrument)
    # when
    assert check([order]) == {order.pk: "block"}
    # then
    [row] = results_of(order)
    assert row.rule_name == "Restricted\tlist \\ v2"
    assert reason in row.message
    assert (row.measured, row.limit) == (None, None)


def test_summaries_show_each_orders_latest_check(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    from compliance.selectors import compliance_summaries

    # given an order checked under a tight limit, then re-checked (an amend) after it was relaxed
    rule = make_rule("fat_finger", params={"max_quantity": "10"}, name="size")
    order = make_order(account, instrument, quantity="50")
    unchecked = make_order(account, instrument, quantity="5")
    assert check([order]) == {order.pk: "block"}
    rule.params = {"max_quantity": "100"}
    rule.version = 2
    rule.save()
    ComplianceResult.objects.filter(order=order).update(
        checked_at=firm_now() - timedelta(minutes=1)
    )
    assert check([order]) == {order.pk: "pass"}
    # when
    summaries = compliance_summaries(order_ids=[order.pk, unchecked.pk])
    # then
    assert summaries[unchecked.pk] == {"outcome": None, "results": []}
    assert summaries[order.pk]["outcome"] == "pass"
    assert [
        (r["rule"], r["rule_version"], r["outcome"]) for r in summaries[order.pk]["results"]
    ] == [("size", 2, "pass")]
    assert ComplianceResult.objects.filter(order=order).count() == 2


def test_conflicts_count_other_accounts_orders_with_leaves_only(
    account: Any, other_account: Any, make_rule: Any, make_order: Any
) -> None:
    # given another account selling three times, once already done
    loner = f.InstrumentFactory(symbol="LONE")
    make_rule("conflicting_orders", severity="warn")
    make_order(other_account, loner, side="sell", quantity="5", status=OrderStatus.WORKING)
    make_order(
        other_account,
        loner,
        side="sell",
        quantity="5",
        cum_qty="2",
        status=OrderStatus.PARTIALLY_FILLED,
    )
    make_order(
        other_account, loner, side="sell", quantity="5", cum_qty="5", status=OrderStatus.WORKING
    )
    order = make_order(account, loner, quantity="100")
    # when
    assert check([order]) == {order.pk: "warn"}
    # then: the two orders with leaves count
    [row] = results_of(order)
    assert (row.measured, row.limit) == (D(2), D(0))
    assert row.message == (
        "Buy of LONE conflicts with 2 open sell orders in the same instrument "
        f"(account {other_account.pk})"
    )


def test_other_accounts_orders_summed_in_sql_give_the_rows_of_every_order_loaded(
    account: Any, other_account: Any, make_rule: Any, make_order: Any
) -> None:
    from compliance import engine
    from compliance.context import build_pretrade, load_instruments
    from orders.enums import OPEN_STATUSES

    # given two issuers of two instruments each, and every kind of open order around them
    _all_rule_types(make_rule)
    make_rule("ownership", params={"max_pct": "0.0002"}, severity="warn", name="tight")
    third = f.AccountFactory(code="ACC-C")
    issuers = [f.IssuerFactory(), f.IssuerFactory()]
    a1, a2, b1, b2 = (f.InstrumentFactory(issuer=issuers[i // 2]) for i in range(4))
    unrelated = f.InstrumentFactory()
    f.PositionFactory(account=account, instrument=a1, quantity=D("300"))
    working = OrderStatus.WORKING
    for acct in (other_account, third):
        make_order(acct, a1, side="sell", quantity="40", status=working)
        make_order(acct, a2, side="buy", quantity="70", cum_qty="20", status=working)
        make_order(acct, a2, side="sell", quantity="15", status=working)
        make_order(acct, b2, side="buy_to_cover", quantity="90", status=working)
        make_order(acct, unrelated, side="buy", quantity="10", status=working)
    make_order(third, a1, side="sell_short", quantity="8", status=working)
    make_order(third, b1, side="buy", quantity="55", cum_qty="55", status=working)
    make_order(third, b1, side="sell", quantity="11", status=OrderStatus.FILLED)
    make_order(account, a2, side="buy", quantity="25", order_type="limit", limit_price="99.5")
    make_order(account, b2, side="sell", quantity="5", status=working)
    # a twin of the first checked order: its creation time must survive loading to the microsecond
    twin_order = make_order(
        account, a1, quantity="100", status=working, age=timedelta(microseconds=1500)
    )
    checked = [
        make_order(account, a1, quantity="100"),
        make_order(account, b1, quantity="60"),
        make_order(other_account, b2, side="sell", quantity="30"),
    ]
    # when: the loader's context, and one with every other open order listed one by one
    with transaction.atomic():
        loaded = build_pretrade(orders=checked)
        raw_rows = list(
            Order.objects.filter(status__in=OPEN_STATUSES)
            .exclude(pk__in=[o.pk for o in checked])
            .order_by("pk")
        )
        instruments = load_instruments({o.instrument_id for o in raw_rows} | {a1.pk, b1.pk})
        raw = engine.ComplianceContext(
            instruments=instruments,
            accounts=loaded.context.accounts,
            as_of=loaded.context.as_of,
            holdings=loaded.context.holdings,
            open_orders=[
                engine.OpenOrder(
                    account_id=o.account_id,
                    instrument_id=o.instrument_id,
                    side=o.side,
                    leaves_quantity=o.quantity - o.cum_qty,
                    price=o.limit_price
                    if o.order_type == "limit"
                    else instruments[o.instrument_id].reference_price,
                    created_at=o.created_at,
                    quantity=o.quantity,
                )
                for o in raw_rows
            ],
            restricted=loaded.context.restricted,
            firm_issuer_holdings=loaded.context.firm_issuer_holdings,
        )
        got = engine.evaluate(loaded.intents, loaded.context, loaded.rules)
        expected = engine.evaluate(loaded.intents, raw, loaded.rules)
    # then
    assert loaded.context.open_tallies
    assert got == expected
    outcomes = {k: engine.order_outcome(v) for k, v in got.items()}
    assert outcomes == {checked[0].pk: "warn", checked[1].pk: "warn", checked[2].pk: "block"}
    rows = {(r.order_key, r.rule_name): r for v in got.values() for r in v}
    conflicts = rows[(checked[0].pk, "conflicting_orders 7")]
    assert conflicts.message == (
        f"Buy of {a1.symbol} conflicts with 3 open sell orders in the same instrument "
        f"(accounts {other_account.pk}, {third.pk})"
    )
    # buys in issuer 2: two buy-to-cover of 90 (one from the tallied account) and this 60
    assert rows[(checked[1].pk, "tight")].measured == D("0.00024")
    twin = rows[(checked[0].pk, "duplicate_orders 8")]
    gap = checked[0].created_at - twin_order.created_at
    assert (twin.outcome, twin.measured) == ("warn", D(gap.seconds) + D(gap.microseconds) / 10**6)


def test_a_check_before_insert_stores_nothing_until_told_the_order_ids(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    from compliance.services import compliance_check_new, compliance_results_store

    # given a size rule and two orders, the first one already stored as its template
    make_rule("fat_finger", params={"max_quantity": "10"}, name="size")
    small, large = (
        make_order(account, instrument, quantity="5"),
        make_order(account, instrument, quantity="50"),
    )
    with transaction.atomic():
        # when both are checked as not yet inserted (keys are their positions)
        check = compliance_check_new(orders=[small, large])
        # then nothing is stored yet and the outcomes are keyed 0 and 1
        assert check.outcomes == {0: "pass", 1: "block"}
        assert ComplianceResult.objects.count() == 0
        # and a store with the wrong number of ids is refused
        with pytest.raises(ValueError, match="one order id per checked order"):
            compliance_results_store(check=check, order_ids=[small.pk])
        # when the results are stored under the orders' ids
        stored = compliance_results_store(check=check, order_ids=[small.pk, large.pk])
    # then they are keyed and stored by order id
    assert stored.outcomes == {small.pk: "pass", large.pk: "block"}
    assert [(r.rule_name, r.outcome) for r in results_of(small)] == [("size", "pass")]
    assert [(r.rule_name, r.outcome) for r in results_of(large)] == [("size", "block")]
    assert [r.checked_at for r in results_of(large)] == [stored.checked_at]
