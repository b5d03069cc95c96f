"""The Redis cache backend, keeping one client per connection pool.

Django's backend builds a new `redis.Redis` on every cache call, and redis-py's constructor reads
its own package metadata from disk (`importlib.metadata.version("redis")`) each time: about a
millisecond of CPU per call, paid by every throttled order. A client holds no connection of its
own (the pool does, and the pool resets itself after a fork), so one per pool is enough.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient


class ReusingRedisCacheClient(RedisCacheClient):
    """Django's client, returning the same `redis.Redis` for a pool every time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            # Threads racing here each build one; the last stored is kept, both work.
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class RedisCache(DjangoRedisCache):
    """Django's Redis cache with `ReusingRedisCacheClient`."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient
