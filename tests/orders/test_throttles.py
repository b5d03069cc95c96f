"""The order-entry throttle: DRF's sliding window, kept in Redis and checked atomically."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from orders.api.throttles import OrderEntryThrottle


def _request(pk: int) -> Any:
    return SimpleNamespace(user=SimpleNamespace(pk=pk, is_authenticated=True), META={})


def _check(throttle_rate: str, settings: Any, user: int, at: float) -> tuple[bool, Any]:
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], order_entry=throttle_rate)
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    throttle = OrderEntryThrottle()
    throttle.timer = lambda: at  # type: ignore[method-assign]
    allowed = throttle.allow_request(_request(user), SimpleNamespace(throttle_scope="order_entry"))
    return allowed, None if allowed else throttle.wait()


def test_at_most_n_requests_in_any_window_and_the_wait_until_the_oldest_leaves(
    settings: Any,
) -> None:
    # given two requests at t=1000 and t=1010 with a rate of 2 per minute
    assert _check("2/min", settings, 1, 1000.0) == (True, None)
    assert _check("2/min", settings, 1, 1010.0) == (True, None)
    # when / then: refused until the first one is a full minute old
    assert _check("2/min", settings, 1, 1020.0) == (False, pytest.approx(40.0))
    assert _check("2/min", settings, 1, 1059.5) == (False, pytest.approx(0.5))
    assert _check("2/min", settings, 1, 1060.0) == (True, None)
    # the refusals took no slot: the next free one is when the second request is a minute old
    assert _check("2/min", settings, 1, 1065.0) == (False, pytest.approx(5.0))
    # another user has their own window
    assert _check("2/min", settings, 2, 1065.0) == (True, None)


def test_concurrent_requests_never_exceed_the_rate(settings: Any) -> None:
    # given 40 requests racing for 25 slots (DRF's read-modify-write list lets them all through)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(5):
            results.append(_check("25/min", settings, 3, 2000.0 + i * 0.01 + j * 0.001)[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then
    assert results.count(True) == 25 and results.count(False) == 15


def test_a_drf_request_log_under_the_plain_key_does_not_clash(settings: Any) -> None:
    # given the pickled list DRF's own throttle keeps (a process still on the old code)
    from django.core.cache import cache

    cache.set("throttle_order_entry_4", [1000.0, 999.0])
    # when / then
    assert _check("2/min", settings, 4, 1001.0) == (True, None)
    assert cache.get("throttle_order_entry_4") == [1000.0, 999.0]
