"""Model instances from plain row values, for hot paths that read rows with raw SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from django.db import connection
from django.db.models.base import ModelState
from psycopg.adapt import Loader
from psycopg.pq import Format


def model_from_row(model: Any, values: dict[str, Any]) -> Any:
    """A model instance as if loaded from the database (fields not given are deferred).

    ``Model(**kwargs)`` costs about 40 µs for an Allocation (signals, descriptors, defaults):
    40 ms for a 1,000-account fill.
    """
    obj = model.__new__(model)
    obj.__dict__.update(values)
    state = ModelState()
    state.adding = False
    state.db = "default"
    obj._state = state
    return obj


def set_prefetched(instance: Any, name: str, rows: list[Any]) -> None:
    """Fill a reverse relation's prefetch cache (what prefetch_related would have stored)."""
    qs = getattr(instance, name).all()
    qs._result_cache = rows
    qs._prefetch_done = True
    cache = getattr(instance, "_prefetched_objects_cache", None)
    if cache is None:
        cache = instance._prefetched_objects_cache = {}
    cache[name] = qs


def raw_cursor() -> Any:
    """A psycopg cursor (server-side binding) on Django's connection, in its transaction.

    The hot paths' statements are constant strings with few parameters; going around Django's
    cursor wrapper saves its per-statement work (they are not in `connection.queries`).
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


_TIMESTAMPTZ_OID = 1184


class _TimestamptzLoader(Loader):
    """timestamptz text read by `datetime.fromisoformat` (C), as an aware UTC datetime.

    Django's loader parses the text with a regular expression in Python (about 10 µs a
    value): a 1,000-order lock read two timestamps per order. Text it does not read (BC
    dates, infinity) goes to the connection's own loader.
    """

    def __init__(self, oid: int, context: Any = None) -> None:
        # The context (the cursor's transformer) is not kept: the transformer caches this
        # loader, and the reference cycle made each cursor's transformer, with its loaders and
        # dumpers, garbage only the cyclic collector frees (about 100 objects per small fill,
        # a collection every few fills). The fallback needs only the connection.
        super().__init__(oid, context)
        self._fallback: Loader | None = None

    def load(self, data: Any) -> Any:
        text = bytes(data)
        value = _TIMESTAMPS.get(text)
        if value is not None:
            return value
        try:
            value = dt.datetime.fromisoformat(text.decode())
        except ValueError:
            if self._fallback is None:
                conn: Any = self.connection or connection.connection
                loader = conn.adapters.get_loader(self.oid, Format.TEXT)
                self._fallback = loader(self.oid, conn)  # type: ignore[misc]
            return self._fallback.load(data)
        if value.tzinfo is not dt.UTC:
            value = value.astimezone(dt.UTC)
        if len(_TIMESTAMPS) >= _TIMESTAMPS_MAX:
            _TIMESTAMPS.clear()
        _TIMESTAMPS[text] = value
        return value


# The datetimes `_TimestamptzLoader` read, by their text: a block's 1,000 order rows carry the
# same updated_at (the last fill's) and, read again by its next fill, the same created_at
# values. The text names its UTC offset, so the value is a function of the text alone (only
# text fromisoformat reads is kept; datetimes are immutable). Bounded by emptying it when full.
_TIMESTAMPS: dict[bytes, dt.datetime] = {}
_TIMESTAMPS_MAX = 16_384


def fast_datetimes(cursor: Any) -> Any:
    """`cursor` (psycopg's, or Django's wrapping one) reading timestamptz columns with
    `datetime.fromisoformat`: for hot reads of many rows with timestamps."""
    raw = getattr(cursor, "cursor", cursor)
    raw.adapters.register_loader(_TIMESTAMPTZ_OID, _TimestamptzLoader)
    return cursor


_UPDATE_PLANS: dict[tuple[str, tuple[str, ...]], tuple[str, list[str]]] = {}


def rows_update(model: Any, objs: Sequence[Any], fields: Sequence[str]) -> None:
    """Write `fields` of many (locked) rows of `model` in one `UPDATE ... FROM unnest(arrays)`.

    Why not bulk_update: its CASE WHEN per row and field costs 1-2 ms of Python per row (a
    1,000-order kill switch spent half its time there); this statement is constant for a given
    field list, so it is built once.
    """
    if not objs:
        return
    sql, params = rows_update_statement(model, objs, fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def rows_update_statement(
    model: Any, objs: Sequence[Any], fields: Sequence[str]
) -> tuple[str, list[list[Any]]]:
    """`rows_update`'s statement and parameters, for a caller that sends it with another."""
    key = (model._meta.label, tuple(fields))
    plan = _UPDATE_PLANS.get(key)
    if plan is None:
        meta = model._meta
        columns: list[Any] = [meta.get_field(name) for name in fields]
        types = [
            str((c.target_field if c.is_relation else c).db_type(connection)).split("(")[0]
            for c in columns
        ]
        pk = meta.pk.column
        sets = ", ".join(f'"{c.column}" = v."{c.column}"' for c in columns)
        names = ", ".join(f'"{c.column}"' for c in columns)
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        sql = (
            f'UPDATE "{meta.db_table}" AS t SET {sets} FROM unnest(%s::bigint[], {arrays})'
            f' AS v("{pk}", {names}) WHERE t."{pk}" = v."{pk}"'
        )
        plan = _UPDATE_PLANS[key] = (sql, [c.attname for c in columns])
    sql, attnames = plan
    params: list[list[Any]] = [[o.pk for o in objs]]
    params.extend([getattr(o, name) for o in objs] for name in attnames)
    return sql, params


def array_literal(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of a one-dimensional array: every element quoted, None as NULL.

    For a statement's few-element arrays, sent as one text parameter cast to the column's array
    type (`%s::bigint[]`): psycopg's binary list dumper costs ~15 us per array whatever its
    length (finding the element type, the header, a Python call per element), most of what it
    took to send a single order's results and audit rows. Quoted elements are read by each
    element type's own input function, so "12", "1.50" and "text" are all fine.
    """
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
            continue
        text = value if type(value) is str else str(value)
        if "\\" in text or '"' in text:
            text = text.replace("\\", "\\\\").replace('"', '\\"')
        parts.append('"' + text + '"')
    return "{" + ",".join(parts) + "}"
