"""One order's check loads sums of the book (build_pretrade_one): same results as the full load.

The single-order path hands the engine the open orders of the account already summed by
PostgreSQL (`compliance.context._ONE_SQL`); the basket path hands over every open order of
the accounts (`build_pretrade`). On random books, every rule's result must be identical.
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from compliance import engine
from compliance.context import build_pretrade, build_pretrade_one, firm_now
from compliance.models import RestrictedEntry, Rule
from oms_site import refcache
from orders.enums import OrderStatus
from orders.models import Instrument, Order, ReferencePrice
from tests import factories as f

D = Decimal
SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
TYPES = ("market", "limit", "stop", "stop_limit")
QUANTITIES = ("10", "25", "100", "100.5", "250")


def _rules() -> None:
    """One rule of every kind that reads the book, plus the per-order ones."""
    specs: list[tuple[str, str, dict[str, str]]] = [
        ("restricted_list", "block", {}),
        ("concentration", "warn", {"dimension": "instrument", "max_pct": "3"}),
        ("concentration", "block", {"dimension": "issuer", "max_pct": "5"}),
        ("concentration", "warn", {"dimension": "sector", "max_pct": "4"}),
        ("ownership", "warn", {"max_pct": "0.001"}),
        ("fat_finger", "warn", {"max_quantity": "200", "max_price_deviation_pct": "5"}),
        ("short_selling", "block", {}),
        ("buying_power", "block", {"margin_pct": "10"}),
        ("conflicting_orders", "warn", {}),
        ("duplicate_orders", "warn", {"window_seconds": "120"}),
    ]
    for n, (rule_type, severity, params) in enumerate(specs):
        Rule.objects.create(
            name=f"{rule_type} {n}", rule_type=rule_type, severity=severity, params=params
        )


def _book(rng: random.Random, pm: Any) -> tuple[list[Any], list[Any]]:
    """Accounts, instruments (shared issuers and sectors, one without sector, one without a
    price, one without shares outstanding), positions, restrictions and open and closed orders."""
    issuers = [f.IssuerFactory() for _ in range(3)]
    sectors = ["Technology", "Energy", ""]
    instruments = []
    for n in range(7):
        inst = f.InstrumentFactory(
            issuer=issuers[n % 3],
            sector=sectors[n % 3] if n != 6 else "Technology",
            shares_outstanding=None if n == 4 else D(rng.choice(["1000000", "50000"])),
        )
        ReferencePrice.objects.filter(instrument=inst).update(last=D(rng.randint(500, 20000)) / 100)
        instruments.append(inst)
    ReferencePrice.objects.filter(instrument=instruments[5]).delete()
    accounts = []
    for n in range(3):
        account = f.AccountFactory(short_selling_allowed=n == 2)
        account.managers.add(pm)
        f.CashBalanceFactory(
            account=account,
            settled=D(rng.randint(10_000, 400_000)),
            pending=D(rng.randint(-50_000, 50_000)),
        )
        accounts.append(account)
        for inst in rng.sample(instruments, 4):
            f.PositionFactory(
                account=account, instrument=inst, quantity=D(rng.choice(["0", "-50", "300", "80"]))
            )
    RestrictedEntry.objects.create(instrument=instruments[1], reason="deal")
    RestrictedEntry.objects.create(issuer=issuers[2], account=accounts[0], reason="insider")
    statuses = [s.value for s in OrderStatus]
    now = timezone.now()
    for _ in range(rng.randint(20, 60)):
        order_type = rng.choice(TYPES)
        quantity = D(rng.choice(QUANTITIES))
        cum = rng.choice([D(0), D(0), quantity / 2, quantity])
        inst = rng.choice(instruments)
        order = Order.objects.create(
            account=rng.choice(accounts),
            instrument=inst,
            side=rng.choice(SIDES),
            quantity=quantity,
            order_type=order_type,
            limit_price=(
                D(rng.randint(500, 20000)) / 100 if order_type in ("limit", "stop_limit") else None
            ),
            stop_price=D("1") if order_type in ("stop", "stop_limit") else None,
            status=rng.choice(statuses),
            cum_qty=cum,
            leaves_qty=quantity - cum,
            created_by=pm,
        )
        Order.objects.filter(pk=order.pk).update(
            created_at=now - timedelta(seconds=rng.choice([1, 30, 119, 120, 121, 600]))
        )
    return accounts, instruments


def _limit_buy(account: Any, instrument: Any, pm: Any) -> Order:
    """A new (unsaved) limit order to buy 10 at 100."""
    return Order(
        account=account,
        instrument=instrument,
        side="buy",
        quantity=D("10"),
        order_type="limit",
        limit_price=D("100"),
        created_by=pm,
        created_at=timezone.now(),
    )


def _new_order(rng: random.Random, accounts: list[Any], instruments: list[Any], pm: Any) -> Order:
    order_type = rng.choice(TYPES)
    return Order(
        account=rng.choice(accounts),
        instrument=rng.choice(instruments),
        side=rng.choice(SIDES),
        quantity=D(rng.choice(QUANTITIES)),
        order_type=order_type,
        limit_price=(
            D(rng.randint(500, 20000)) / 100 if order_type in ("limit", "stop_limit") else None
        ),
        stop_price=D("1") if order_type in ("stop", "stop_limit") else None,
        created_by=pm,
        created_at=timezone.now(),
    )


def _both(order: Order) -> tuple[Any, Any]:
    """The engine's results from the full load and from the one-order load, same instant."""
    as_of = firm_now()
    with transaction.atomic():
        full = build_pretrade(orders=[order], as_of=as_of, keys=[0])
        one = build_pretrade_one(order=order, key=0, as_of=as_of)
    return (
        engine.evaluate(full.intents, full.context, full.rules),
        engine.evaluate(one.intents, one.context, one.rules),
    )


@pytest.mark.parametrize("seed", range(8))
def test_one_order_load_gives_the_full_loads_results_on_random_books(seed: int, pm: Any) -> None:
    # given a random book and a rule of every kind
    rng = random.Random(seed)
    _rules()
    accounts, instruments = _book(rng, pm)
    outcomes = set()
    for _ in range(12):
        order = _new_order(rng, accounts, instruments, pm)
        # when the order is checked with both loaders
        full, one = _both(order)
        # then every result row is the same, message and numbers included
        assert one == full
        outcomes.update(r.outcome for r in full[0])
    # and the books were varied enough to produce every outcome
    assert outcomes == {"pass", "warn", "block"}


def test_an_inserted_order_is_not_counted_as_its_own_open_order(pm: Any) -> None:
    # given a book and an order already in it (as compliance_check_detailed sees orders)
    rng = random.Random(99)
    _rules()
    accounts, instruments = _book(rng, pm)
    order = Order.objects.create(
        account=accounts[0],
        instrument=instruments[0],
        side="buy",
        quantity=D("100"),
        order_type="limit",
        limit_price=D("50"),
        status=OrderStatus.PENDING_COMPLIANCE,
        leaves_qty=D("100"),
        created_by=pm,
    )
    # when both loaders check it, then they agree, and its twin is not itself
    full, one = _both(order)
    assert one == full
    duplicate = next(r for r in one[0] if r.rule_type == "duplicate_orders")
    assert duplicate.measured != D(0)


def test_the_statement_and_its_rows_do_not_grow_with_the_accounts_open_orders(
    pm: Any, make_order: Any
) -> None:
    # given one account with 5 open limit orders, checked once to warm the cache
    _rules()
    account = f.AccountFactory()
    f.CashBalanceFactory(account=account, settled=D("1000000"))
    inst, other = f.InstrumentFactory(), f.InstrumentFactory()
    for _ in range(5):
        make_order(account, other, order_type="limit", limit_price="10", status="approved")
    order = _limit_buy(account, inst, pm)
    with transaction.atomic():
        build_pretrade_one(order=order)

    def statements() -> list[str]:
        with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
            build_pretrade_one(order=order)
        return [q["sql"] for q in ctx.captured_queries]

    small = statements()
    # when the account has 100 more open orders
    for _ in range(100):
        make_order(account, other, order_type="limit", limit_price="10", status="approved")
    large = statements()
    # then the warm check is two statements either way: the cash lock and the book's sums
    assert len(small) == len(large) == 2
    assert "FOR UPDATE" in small[0]
    assert "oms_refdata_version" in small[1]
    with transaction.atomic():
        loaded = build_pretrade_one(order=order)
    # and the 105 orders arrive as one sum (buy notional 105 x 100 x 10)
    assert loaded.context._open_buy_notional == {account.pk: D("105000")}


def test_a_reference_change_since_the_last_check_is_seen_by_the_next_one(
    pm: Any, make_rule: Any
) -> None:
    # given a warm cache
    account = f.AccountFactory()
    f.CashBalanceFactory(account=account, settled=D("1000000"))
    inst = f.InstrumentFactory()
    order = f.unsaved_market_buy(account, inst, pm, "10")
    with transaction.atomic():
        assert build_pretrade_one(order=order).rules == []
    before = refcache.last_version()
    # when a rule and a new reference price arrive (each bumps the refdata version)
    make_rule("fat_finger", params={"max_notional": "500"})
    ReferencePrice.objects.filter(instrument=inst).update(last=D("70"))
    with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
        loaded = build_pretrade_one(order=order)
    # then the check reran its statement under the new version and used the new data
    assert refcache.last_version() != before
    assert [q["sql"].count("oms_refdata_version") for q in ctx.captured_queries].count(1) == 2
    assert [r.name for r in loaded.rules] == ["fat_finger 1"]
    assert loaded.context.instruments[inst.pk].reference_price == D("70")
    results = engine.evaluate(loaded.intents, loaded.context, loaded.rules)[0]
    assert [(r.outcome, r.measured) for r in results] == [("block", D("700"))]


def test_an_instrument_moved_into_the_orders_sector_counts_there_at_the_next_check(
    pm: Any, make_order: Any
) -> None:
    # given a sector concentration rule, and an open buy of 100 x 10 in another sector
    Rule.objects.create(
        name="sector",
        rule_type="concentration",
        severity="warn",
        params={"dimension": "sector", "max_pct": "4"},
    )
    account = f.AccountFactory()
    f.CashBalanceFactory(account=account, settled=D("1000000"))
    inst = f.InstrumentFactory(sector="Energy")
    other = f.InstrumentFactory(sector="Technology")
    make_order(account, other, order_type="limit", limit_price="10", status="approved")
    order = _limit_buy(account, inst, pm)
    full, one = _both(order)
    assert one == full
    alone = one[0][0].measured
    # when the other instrument moves into the order's sector (the buckets come from the
    # refdata cache, and the move bumps its version)
    Instrument.objects.filter(pk=other.pk).update(sector="Energy")
    full, one = _both(order)
    # then both loaders count its open order in the sector: 1,000 more than the order alone
    assert one == full
    nav = D("1000000")
    assert alone == (D("1000") / nav * 100).quantize(D("0.000001"))
    assert one[0][0].measured == (D("2000") / nav * 100).quantize(D("0.000001"))


def test_the_sector_bucket_counts_exactly_the_sectors_instruments_with_interleaved_ids(
    pm: Any, make_order: Any
) -> None:
    # given seven consecutive instruments: Energy, Energy, Energy, Technology, Energy,
    # Technology, no sector (the sectors' ids interleave), and one open limit buy of 100 in
    # each, at 10, 20, ..., 70
    sectors = ["Energy", "Energy", "Energy", "Technology", "Energy", "Technology", ""]
    made = [f.InstrumentFactory(sector=s) for s in sectors]
    assert [i.pk - made[0].pk for i in made] == list(range(7))
    account = f.AccountFactory()
    f.CashBalanceFactory(account=account, settled=D("1000000"))
    for n, inst in enumerate(made):
        make_order(
            account, inst, order_type="limit", limit_price=str(10 * (n + 1)), status="approved"
        )

    def buy_buckets(inst: Any) -> dict[int, Decimal]:
        order = _limit_buy(account, inst, pm)
        with transaction.atomic():
            loaded = build_pretrade_one(order=order, key=0, as_of=firm_now())
        summary = loaded.context.open_summary
        return {dim: v for (_, dim, _, buy), v in summary.bucket_notional.items() if buy}

    # when an Energy, a Technology and a sectorless instrument's orders are checked
    energy, tech, alone = buy_buckets(made[0]), buy_buckets(made[3]), buy_buckets(made[6])
    # then the sector sums are Energy's (10 + 20 + 30 + 50) x 100, Technology's (40 + 60) x
    # 100, and the sectorless instrument's own 70 x 100
    assert energy[2] == D("11000")
    assert tech[2] == D("10000")
    assert alone[2] == D("7000")
    # and each instrument bucket holds its own order only
    assert (energy[0], tech[0], alone[0]) == (D("1000"), D("4000"), D("7000"))
