"""The Redis cache backend, with one client and connection pool per process.

Django keeps a cache backend per thread, and under ASGI every request runs in a thread of its
own: each request built a new backend, a new connection pool and a new Redis connection (TCP
connect, HELLO, CLIENT SETINFO, which reads redis-py's package metadata from disk), about
4,000 Python calls before the order-entry throttle's one command. Django's client also built a
new `redis.Redis` on every call. Here every backend instance of a process with the same
servers and options shares one client object, whose pools are thread-safe and reset
themselves after a fork; a `redis.Redis` holds no connection of its own, so one per pool is
enough.
"""

from __future__ import annotations

import threading
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


_shared: dict[tuple[tuple[str, ...], str], ReusingRedisCacheClient] = {}
_shared_lock = threading.Lock()


class RedisCache(DjangoRedisCache):
    """Django's Redis cache whose client (and so its connection pools) is shared per process."""

    @property
    def _cache(self) -> ReusingRedisCacheClient:
        servers: list[str] = self._servers  # type: ignore[attr-defined]
        options: dict[str, Any] = self._options  # type: ignore[attr-defined]
        key = (tuple(servers), repr(sorted(options.items())))
        client = _shared.get(key)
        if client is None:
            with _shared_lock:
                client = _shared.get(key)
                if client is None:
                    client = _shared[key] = ReusingRedisCacheClient(servers, **options)
        return client
