"""In-process cache of reference data, trusted only while the database's refdata version holds.

Instruments and their prices, accounts and who may trade them, rules, the restricted list and
kill switches change rarely but are read by every order. Each process keeps what it has read in
a cache tied to one value of `oms_refdata_version`, a row that PostgreSQL bumps (by trigger, in
the writer's transaction) whenever any of those tables changes (migration
`oms_site.0003_refdata_version`). Reading that one row costs one cheap query; when its value
differs from the cache's, the whole cache is dropped and refilled on demand.

Why this is exact: the version is read *before* the data it guards, so cached data is never
older than the version it is filed under; a change is visible to a reader exactly when its new
version is; and version numbers come from a sequence, so data read from a transaction that
rolled back is filed under a number that nobody will ever read again. Cash, positions and open
orders are never cached: they are read live, under the account's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from django.db import connection

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_VERSION_SQL = "SELECT version FROM oms_refdata_version WHERE id = 1"


class _Generation:
    """The values cached under one refdata version."""

    __slots__ = ("values", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.values: dict[Hashable, Any] = {}


_current = _Generation(-1)


def refdata_version() -> int:
    """The current reference-data version, as the caller's transaction sees it (one query)."""
    with connection.cursor() as cursor:
        cursor.execute(_VERSION_SQL)
        row = cursor.fetchone()
    return int(row[0])


def last_version() -> int:
    """The version this process cached under last (-1 before any): a guess, not a read.

    For callers that read the version in a statement of their own and check the guess.
    """
    return _current.version


def generation(version: int | None = None) -> dict[Hashable, Any]:
    """The cache of this version (read now if not given): a fresh, empty one when it changed."""
    global _current
    if version is None:
        version = refdata_version()
    gen = _current
    if gen.version != version:
        # Threads racing here may each build a generation; the loser's values are dropped.
        gen = _current = _Generation(version)
    return gen.values


def cached(values: dict[Hashable, Any], name: Hashable, load: Callable[[], V]) -> V:
    """One cached value of a generation, loaded on first use."""
    try:
        return values[name]  # type: ignore[no-any-return]
    except KeyError:
        value = values[name] = load()
        return value


def cached_many(
    values: dict[Hashable, Any],
    name: Hashable,
    keys: Iterable[K],
    load: Callable[[list[K]], Mapping[K, V]],
) -> dict[K, V | None]:
    """{key: value} for these keys; misses are loaded in one call, absent keys cached as None."""
    table: dict[K, V | None] = values.get(name)  # type: ignore[assignment]
    if table is None:
        table = values[name] = {}
    out: dict[K, V | None] = {}
    missing: list[K] = []
    for key in keys:
        try:
            out[key] = table[key]
        except KeyError:
            missing.append(key)
    if missing:
        loaded = load(missing)
        for key in missing:
            out[key] = table[key] = loaded.get(key)
    return out


def clear() -> None:
    """Forget everything (tests that change reference data behind the triggers' back)."""
    global _current
    _current = _Generation(-1)
