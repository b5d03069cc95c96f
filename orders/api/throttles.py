"""Order-entry throttling: a per-user rate (scope "order_entry"), audited when it bites."""

from __future__ import annotations

import itertools
import os
from typing import Any

from django.core.cache import cache
from django.db import transaction
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from oms_site.audit import audit_record

# DRF's own throttle keeps the request log as one pickled list in the cache: each request reads
# and rewrites the whole list (O(requests in the window), tens of kilobytes at a few hundred
# orders a second) and two concurrent requests lose one another's entry. This script keeps the
# same sliding-window log as a sorted set and checks and appends atomically, in one round trip.
_SLIDING_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
    redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[2] * 1000))
    return {1, count + 1, false}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, count, oldest[2] or false}
"""
_members = itertools.count()
_script: Any = None


def _sliding_window() -> tuple[Any, Any] | None:
    """(script, client) on the cache's Redis, or None if the cache is not Redis."""
    global _script
    backend = getattr(cache, "_cache", None)
    get_client = getattr(backend, "get_client", None)
    if get_client is None or not hasattr(cache, "make_and_validate_key"):
        return None
    # The cache backend (oms_site.cache) hands out one client per pool; the script object is
    # independent of the client anyway (it is sent by SHA, then loaded if the server lacks it).
    client = get_client(write=True)
    if _script is None:
        _script = client.register_script(_SLIDING_WINDOW)
    return _script, client


class OrderEntryThrottle(ScopedRateThrottle):
    """Per-user rate of order entry, from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["order_entry"].

    The rate is read on every request (not frozen at import), so a settings override applies.
    Semantics are DRF's: at most N requests in any window of the rate's duration.
    """

    def get_rate(self) -> str | None:
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES
        return rates.get(str(self.scope))

    def allow_request(self, request: Any, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        redis = _sliding_window()
        if redis is None:
            return super(ScopedRateThrottle, self).allow_request(request, view)
        script, client = redis
        self.now = self.timer()
        member = f"{self.now!r}:{os.getpid()}:{next(_members)}"
        allowed, count, oldest = script(
            # Its own key: DRF's throttle keeps a pickled list under the plain one, and a
            # process still running that code must not meet a sorted set there (WRONGTYPE).
            keys=[cache.make_and_validate_key(f"{self.key}:window")],
            args=[repr(self.now), self.duration, self.num_requests, member],
            client=client,
        )
        self._count = int(count)
        self._oldest = float(oldest) if oldest else None
        return bool(allowed)

    def wait(self) -> float | None:
        if not hasattr(self, "_count"):
            return super().wait()
        # DRF's formula, over the sorted set instead of the pickled list.
        if self._oldest is not None:
            remaining = self.duration - (self.now - self._oldest)
        else:
            remaining = self.duration
        available = self.num_requests - self._count + 1
        if available <= 0:
            return None
        return remaining / float(available)


class OrderEntryThrottleMixin:
    """Views that enter orders: throttle POSTs per user and audit every refusal."""

    throttle_scope = "order_entry"

    def get_throttles(self) -> list[Any]:
        if self.request.method == "POST":  # type: ignore[attr-defined]
            return [OrderEntryThrottle()]
        return []

    def throttled(self, request: Any, wait: Any) -> Any:
        with transaction.atomic():
            audit_record(
                action="order_entry.throttled",
                object_type="user",
                object_id=request.user.pk,
                meta={
                    "endpoint": request.path,
                    "wait_seconds": round(wait, 3) if wait is not None else None,
                },
                actor=request.user,
            )
        super().throttled(request, wait)  # type: ignore[misc]
