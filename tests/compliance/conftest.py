"""Fixtures of the compliance integration tests: rules, orders inserted directly, a check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from compliance.models import ComplianceResult, Rule
from compliance.services import compliance_check
from orders.enums import OrderStatus
from orders.models import Order

D = Decimal


@pytest.fixture(params=[64, 0], ids=["insert", "copy"])
def insert_mode(request: Any, monkeypatch: Any) -> int:
    """Results stored by one INSERT (up to `_INSERT_AT_MOST` rows) or by COPY: each test that
    takes this runs both ways."""
    monkeypatch.setattr("compliance.services._INSERT_AT_MOST", request.param)
    return int(request.param)


@pytest.fixture
def make_rule(db: Any) -> Callable[..., Rule]:
    """Create a rule: make_rule("fat_finger", params={...}, severity="block", scope="firm")."""
    counter = iter(range(1, 10_000))

    def make(
        rule_type: str,
        *,
        params: dict[str, str] | None = None,
        severity: str = "block",
        scope: str = "firm",
        accounts: Sequence[Any] = (),
        groups: Sequence[Any] = (),
        name: str | None = None,
        **fields: Any,
    ) -> Rule:
        rule = Rule.objects.create(
            name=name or f"{rule_type} {next(counter)}",
            rule_type=rule_type,
            severity=severity,
            scope=scope,
            params=params or {},
            **fields,
        )
        if accounts:
            rule.accounts.set(accounts)
        if groups:
            rule.groups.set(groups)
        return rule

    return make


@pytest.fixture
def make_order(pm: Any) -> Callable[..., Order]:
    """Insert an order row directly (status pending_compliance unless told otherwise)."""

    def make(
        account: Any,
        instrument: Any,
        *,
        side: str = "buy",
        quantity: str | Decimal = "100",
        order_type: str = "market",
        limit_price: str | Decimal | None = None,
        status: str = OrderStatus.PENDING_COMPLIANCE,
        created_by: Any = None,
        age: timedelta | None = None,
        cum_qty: str | Decimal = "0",
    ) -> Order:
        order = Order.objects.create(
            account=account,
            instrument=instrument,
            side=side,
            quantity=D(quantity),
            order_type=order_type,
            limit_price=D(limit_price) if limit_price is not None else None,
            status=status,
            leaves_qty=D(quantity) - D(cum_qty),
            cum_qty=D(cum_qty),
            created_by=created_by or pm,
        )
        if age is not None:
            Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - age)
            order.refresh_from_db()
        return order

    return make


def check(orders: Sequence[Order]) -> dict[int, str]:
    """Run compliance_check in a transaction like the orders service does."""
    with transaction.atomic():
        return compliance_check(orders=list(orders))


def results_of(order: Order) -> list[ComplianceResult]:
    """The stored result rows of an order, in rule order."""
    return list(ComplianceResult.objects.filter(order=order).order_by("pk"))
