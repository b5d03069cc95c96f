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


def test_clearing_between_tests_deletes_only_this_process_keys() -> None:
    # Another pytest-xdist worker's keys (another prefix, and one whose prefix merely starts
    # with ours) share the Redis database and must survive this worker's clearing.
    from tests.conftest import cache_keys_clear

    client = cache._cache.get_client(write=True)
    others = [f"{cache.key_prefix}-gw9:1:throttle", f"{cache.key_prefix}x:1:throttle"]
    for key in others:
        client.set(key, b"7", ex=30)
    try:
        cache.set("kernel-a", 1, 30)
        cache.set("kernel-b", 2, 30, version=3)
        assert cache_keys_clear() == 2
        assert cache.get("kernel-a") is None
        assert cache.get("kernel-b", version=3) is None
        assert [client.get(key) for key in others] == [b"7", b"7"]
        assert cache_keys_clear() == 0
    finally:
        client.delete(*others)


def test_glob_characters_in_a_prefix_match_only_themselves() -> None:
    from tests.conftest import glob_escape

    assert glob_escape("oms") == "oms"
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
