"""Login throttling: too many failures per username or per client address → refused for a while.

Counts live in the cache (Redis), so every web process shares them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache


def _keys(username: str, ip: str) -> list[str]:
    return [f"login-fail:user:{username.strip().lower()}", f"login-fail:ip:{ip}"]


def login_allowed(*, username: str, ip: str) -> bool:
    """Whether a login attempt for this username from this address may be tried now."""
    limit = settings.LOGIN_MAX_FAILURES
    return all((cache.get(k) or 0) < limit for k in _keys(username, ip))


def login_failed(*, username: str, ip: str) -> None:
    """Count one failed attempt for the username and the address."""
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    for key in _keys(username, ip):
        if cache.add(key, 1, timeout=window):
            continue
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, timeout=window)


def login_succeeded(*, username: str) -> None:
    """A successful login clears the username's failures (not the address's)."""
    cache.delete(_keys(username, "")[0])
