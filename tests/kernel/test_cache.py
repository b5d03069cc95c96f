"""The Redis cache backend shares one client and its connection pool per process."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import cache, caches


def _in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_backends_of_different_threads_share_one_client_and_pool() -> None:
    here = caches["default"]
    there = _in_thread(lambda: caches["default"])
    # Django keeps a backend object per thread (each ASGI request has its own thread) ...
    assert there is not here
    # ... but they talk to Redis through the same client, pool and connections.
    assert there._cache is here._cache
    assert there._cache.get_client(write=True) is here._cache.get_client(write=True)
    assert here._cache.get_client(write=True) is here._cache.get_client(write=False)


def test_values_written_in_one_thread_are_read_in_another() -> None:
    cache.set("kernel-test-cache-key", {"n": 1}, 30)
    try:
        assert _in_thread(lambda: caches["default"].get("kernel-test-cache-key")) == {"n": 1}
        _in_thread(lambda: caches["default"].delete("kernel-test-cache-key"))
        assert cache.get("kernel-test-cache-key") is None
    finally:
        cache.delete("kernel-test-cache-key")
