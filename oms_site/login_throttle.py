"""Login throttling: too many failures per username or per client address → refused for a while.

Counts live in the cache (Redis), so every web process shares them.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _keys(username: str, ip: str) -> list[str]:
    """The cache keys counting failures for the username and the address.

    Both come from the client (a login form's field, a forwarded address), so they are hashed:
    a key is then 64 hex characters whatever was typed (spaces, control characters, a megabyte
    of text), and the same username in another case or with surrounding spaces counts together.
    """
    return [
        f"login-fail:user:{_digest(username.strip().lower())}",
        f"login-fail:ip:{_digest(ip)}",
    ]


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
