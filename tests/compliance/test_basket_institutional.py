"""The institutional example through the basket service: a rebalance of 500 sells and 1 buy for
one fund, with two of the sold instruments on the restricted list → exactly those 2 blocked.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations.models import Position
from compliance.models import ComplianceResult, RestrictedEntry
from orders.enums import OrderStatus
from orders.models import Instrument, Issuer, Order, ReferencePrice
from orders.services.orders import orders_create_bulk

D = Decimal
SELLS = 500
pytestmark = pytest.mark.django_db


def _universe(n: int, prefix: str) -> list[Instrument]:
    """n instruments (one issuer each, price 50) created in bulk."""
    issuers = Issuer.objects.bulk_create(
        [
            Issuer(code=f"{prefix}I{i}", name=f"Issuer {i}", country="US", sector="Tech")
            for i in range(n)
        ]
    )
    instruments = Instrument.objects.bulk_create(
        [
            Instrument(
                symbol=f"{prefix}{i:04d}",
                name=f"{prefix} {i}",
                asset_class="equity",
                currency="USD",
                issuer=issuers[i],
                sector=("Tech", "Energy", "Health")[i % 3],
                country="US",
                shares_outstanding=D("50000000"),
            )
            for i in range(n)
        ]
    )
    now = timezone.now()
    ReferencePrice.objects.bulk_create(
        [
            ReferencePrice(instrument=inst, bid=D("49.99"), ask=D("50.01"), last=D("50"), as_of=now)
            for inst in instruments
        ]
    )
    return instruments


def _rules(make_rule: Any) -> None:
    """A realistic rule book: every rule type, block and warn levels."""
    make_rule("restricted_list", name="Restricted list")
    make_rule("concentration", params={"dimension": "instrument", "max_pct": "10"})
    make_rule("concentration", params={"dimension": "issuer", "max_pct": "15"})
    make_rule("concentration", params={"dimension": "sector", "max_pct": "60"}, severity="warn")
    make_rule("ownership", params={"max_pct": "5"})
    make_rule("fat_finger", params={"max_quantity": "1000000", "max_notional": "5000000"})
    make_rule("short_selling")
    make_rule("buying_power")
    make_rule("conflicting_orders", severity="warn")
    make_rule("duplicate_orders", params={"window_seconds": "60"}, severity="warn")


def test_rebalance_basket_blocks_exactly_the_two_restricted_names(
    account: Any, pm: Any, make_rule: Any
) -> None:
    # given a fund holding 500 names (100 shares at 50 each), 1,000,000 cash, and a new name
    held = _universe(SELLS, "H")
    [new_name] = _universe(1, "N")
    Position.objects.bulk_create(
        [Position(account=account, instrument=i, quantity=D("100"), avg_cost=D("45")) for i in held]
    )
    _rules(make_rule)
    restricted = [held[17], held[342]]
    RestrictedEntry.objects.create(instrument=restricted[0], reason="M&A advisory")
    RestrictedEntry.objects.create(issuer=restricted[1].issuer, reason="Insider list")
    rows = [
        {
            "account": "ACC-A",
            "instrument": i.symbol,
            "side": "sell",
            "quantity": "60",
            "order_type": "market",
            "time_in_force": "day",
        }
        for i in held
    ] + [
        {
            "account": "ACC-A",
            "instrument": new_name.symbol,
            "side": "buy",
            "quantity": "2000",
            "order_type": "limit",
            "limit_price": "50.00",
            "time_in_force": "day",
        }
    ]
    # when
    orders, summary = orders_create_bulk(user=pm, rows=rows)
    # then
    assert summary.as_dict() == {"created": 501, "passed": 499, "warned": 0, "blocked": 2}
    blocked = Order.objects.filter(status=OrderStatus.BLOCKED)
    assert sorted(blocked.values_list("instrument__symbol", flat=True)) == sorted(
        i.symbol for i in restricted
    )
    assert Order.objects.filter(status=OrderStatus.APPROVED).count() == 499
    assert ComplianceResult.objects.count() == 501 * 10
    failing = ComplianceResult.objects.exclude(outcome="pass")
    assert sorted((r.order.instrument.symbol, r.rule_name) for r in failing) == sorted(
        (i.symbol, "Restricted list") for i in restricted
    )
    assert [o.status for o in orders].count(OrderStatus.BLOCKED) == 2


def test_basket_queries_do_not_grow_with_basket_size(account: Any, pm: Any, make_rule: Any) -> None:
    # given the same rule book and two baskets of 5 and 120 sells of held names
    held = _universe(125, "Q")
    Position.objects.bulk_create(
        [Position(account=account, instrument=i, quantity=D("100"), avg_cost=D("45")) for i in held]
    )
    _rules(make_rule)
    RestrictedEntry.objects.create(instrument=held[0], reason="watch")

    def queries(instruments: list[Instrument]) -> int:
        rows = [
            {
                "account": "ACC-A",
                "instrument": i.symbol,
                "side": "sell",
                "quantity": "10",
                "order_type": "market",
                "time_in_force": "day",
            }
            for i in instruments
        ]
        with CaptureQueriesContext(connection) as ctx:
            orders_create_bulk(user=pm, rows=rows)
        return len(ctx.captured_queries)

    # when (a first basket warms per-user caches such as the user's roles)
    queries(held[:2])
    small, large = queries(held[2:5]), queries(held[5:])
    # then
    assert small == large
