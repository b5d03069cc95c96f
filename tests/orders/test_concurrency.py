"""Races on PostgreSQL with real threads: exactly one writer wins, nothing is half-applied."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from oms_site.errors import ConflictError
from oms_site.models import AuditEvent
from orders.models import Order
from orders.services.orders import order_amend, order_cancel, order_create
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db(transaction=True)


def _race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same instant in threads; return each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = call()
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


@pytest.mark.parametrize("attempt", range(5))
def test_concurrent_amend_and_cancel_exactly_one_wins(
    book: Any, pm: Any, trader: Any, attempt: int
) -> None:
    # given: an approved order at version 2
    order = order_create(user=pm, data=order_data())
    assert order.version == 2
    # when: a PM amends and a trader cancels, both from version 2, at the same time
    amended, canceled = _race(
        lambda: order_amend(user=pm, order_id=order.pk, version=2, quantity="150"),
        lambda: order_cancel(user=trader, order_id=order.pk, version=2),
    )
    # then: one wins, the other gets a 409, and the row holds exactly the winner's change
    errors = [r for r in (amended, canceled) if isinstance(r, Exception)]
    assert len(errors) == 1, (amended, canceled)
    assert isinstance(errors[0], ConflictError)
    assert errors[0].status_code == 409
    assert errors[0].code == "stale_version"
    final = Order.objects.get(pk=order.pk)
    actions = list(
        AuditEvent.objects.filter(stream=f"order:{order.pk}")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    if isinstance(canceled, ConflictError):
        assert (final.status, final.quantity, final.version) == ("approved", Decimal("150"), 4)
        assert actions[2:] == ["order.amended", "order.compliance_checked"]
    else:
        assert (final.status, final.quantity, final.version) == ("canceled", Decimal("100"), 3)
        assert actions[2:] == ["order.canceled"]


def test_concurrent_creates_with_one_client_order_id_make_one_order(book: Any, pm: Any) -> None:
    # when: the same order is submitted twice at once (a client retrying too eagerly)
    results = _race(
        *[
            (lambda: order_create(user=pm, data=order_data(client_order_id="dup-1")))
            for _ in range(4)
        ]
    )
    # then
    assert all(isinstance(r, Order) for r in results), results
    assert len({r.pk for r in results}) == 1
    assert Order.objects.count() == 1
    assert AuditEvent.objects.filter(action="order.created").count() == 1


def test_concurrent_cancels_cancel_once(book: Any, pm: Any, trader: Any) -> None:
    order = order_create(user=pm, data=order_data())
    results = _race(
        lambda: order_cancel(user=pm, order_id=order.pk),
        lambda: order_cancel(user=trader, order_id=order.pk),
    )
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], ConflictError)
    assert AuditEvent.objects.filter(action="order.canceled").count() == 1
    assert Order.objects.get(pk=order.pk).version == 3
