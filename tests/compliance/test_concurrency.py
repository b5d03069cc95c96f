"""Concurrency on PostgreSQL: 50 buys of one account submitted at once, more than its cash.

Each order goes through the orders app's `order_create` in its own thread and transaction; the
compliance check locks the account's cash row before reading open orders, so the checks
serialise and exactly the orders that fit are approved, whatever the interleaving.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from compliance.models import ComplianceResult
from orders.enums import OrderStatus
from orders.models import Order
from orders.services.orders import order_create

THREADS = 50


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_buys_never_exceed_buying_power(
    account: Any, instrument: Any, pm: Any, make_rule: Any
) -> None:
    # given 1,000,000 cash and a blocking buying-power rule; each order buys 300 ACME at 100
    # (30,000), so 33 fit (990,000) and the 50 together (1,500,000) do not
    make_rule("buying_power")
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def submit(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            order_create(
                user=pm,
                data={
                    "account": "ACC-A",
                    "instrument": "ACME",
                    "side": "buy",
                    "quantity": "300",
                    "order_type": "market",
                    "time_in_force": "day",
                    "client_order_id": f"race-{n}",
                },
            )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(THREADS)]
    # when
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # then
    assert errors == []
    statuses = list(Order.objects.values_list("status", flat=True))
    assert len(statuses) == THREADS
    assert statuses.count(OrderStatus.APPROVED) == 33
    assert statuses.count(OrderStatus.BLOCKED) == 17
    approved_notional = sum(
        o.quantity * Decimal("100") for o in Order.objects.filter(status=OrderStatus.APPROVED)
    )
    assert approved_notional == Decimal("990000")
    # every order's stored result saw all earlier approved orders as open buys
    measured = sorted(
        ComplianceResult.objects.filter(outcome="pass").values_list("measured", flat=True)
    )
    assert measured == [Decimal(30000 * k) for k in range(1, 34)]
    assert set(
        ComplianceResult.objects.filter(outcome="block").values_list("measured", flat=True)
    ) == {Decimal("1020000")}


@pytest.mark.django_db(transaction=True)
def test_cash_locks_follow_account_order_not_row_order(desk: Any) -> None:
    # given two accounts whose cash rows were created in the opposite order to the accounts
    # (so the row ids disagree with the account ids), and a transaction that, like a fill,
    # locks cash account by account in account order and holds the first while it works
    from django.db import transaction

    from allocations.models import CashBalance
    from compliance.context import lock_cash
    from tests import factories as f

    first = f.AccountFactory(code="LOCK-1", desk=desk)
    second = f.AccountFactory(code="LOCK-2", desk=desk)
    CashBalance.objects.filter(account__in=[first, second]).delete()
    f.CashBalanceFactory(account=second, settled=Decimal("2"))
    f.CashBalanceFactory(account=first, settled=Decimal("1"))
    assert CashBalance.objects.get(account=second).pk < CashBalance.objects.get(account=first).pk
    holds_first = threading.Event()
    checker_waiting = threading.Event()
    errors: list[BaseException] = []
    seen: list[dict[int, tuple[Decimal, Decimal]]] = []

    def filler() -> None:
        try:
            with transaction.atomic():
                lock_cash(account_ids=[first.pk])
                holds_first.set()
                checker_waiting.wait(timeout=10)
                lock_cash(account_ids=[second.pk])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def checker() -> None:
        try:
            holds_first.wait(timeout=10)
            with transaction.atomic():
                # when a compliance check locks both accounts' cash while the filler holds one
                timer = threading.Timer(0.3, checker_waiting.set)
                timer.start()
                seen.append(lock_cash(account_ids=[second.pk, first.pk]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=filler), threading.Thread(target=checker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # then neither waits on the other crosswise: no deadlock, and the checker got both rows
    assert errors == []
    assert seen == [
        {
            first.pk: (Decimal("1.00"), Decimal("0.00")),
            second.pk: (Decimal("2.00"), Decimal("0.00")),
        }
    ]
