"""Audit kernel: append events to per-object hash chains inside the caller's transaction.

Why per-object streams: a single global chain would make every writer in the firm queue on one
row lock; a chain per audited object only serialises writers of the same object, which already
serialise on that object's own row lock.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import DEFERRED
from django.utils import timezone

from oms_site.models import AuditEvent, AuditStream
from oms_site.rows import array_literal

GENESIS_HASH = "0" * 64

# The user on whose behalf the current request runs (set by AuditActorMiddleware).
current_actor: contextvars.ContextVar[Any] = contextvars.ContextVar("current_actor", default=None)


def json_safe(value: Any) -> Any:
    """Convert Decimals, UUIDs, dates and model instances to JSON-safe, canonical values."""
    # Exact-type fast paths for what events are made of; subclasses take the general path.
    kind = type(value)
    if kind is str or kind is int or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): json_safe(v) for k, v in value.items()}
    if kind is Decimal:
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if timezone.is_aware(value):
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if hasattr(value, "pk"):
        return value.pk
    return str(value)


class CanonicalJson(str):
    """An event payload given as its canonical JSON text, written by the caller.

    For a big payload whose shape the caller knows (a fill's 1,000 allocation rows, every value
    an int or a number's text): writing the text from strings it already holds costs a tenth of
    `json_safe` plus the sorting encoder. The text must be exactly what `_canonical(json_safe(
    value))` gives (keys sorted, no spaces, non-ASCII as is): it is hashed and stored as is, and
    `audit_verify` recomputes it from the stored document. The value, when an event instance is
    built, is read back from the text.
    """

    __slots__ = ()


def canonical_text(value: Any) -> str:
    """The canonical JSON text of a payload, as it is hashed and stored."""
    return _canonical(json_safe(value))


def _content(value: Any) -> tuple[Any, str]:
    """A payload's JSON-safe value and its canonical text (a CanonicalJson is its own text)."""
    if type(value) is CanonicalJson:
        return value, str(value)
    safe = json_safe(value)
    return safe, _canonical(safe)


def _value(payload: Any) -> Any:
    """The value of a stored payload (a CanonicalJson read back from its text)."""
    return json.loads(payload) if type(payload) is CanonicalJson else payload


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event to append: the stream defaults to `<object_type>:<object_id>`."""

    action: str
    object_type: str
    object_id: str
    before: Any = None
    after: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    actor: Any = None
    stream: str | None = None

    def stream_name(self) -> str:
        return self.stream or f"{self.object_type}:{self.object_id}"


def event_hash(
    *,
    stream: str,
    seq: int,
    prev_hash: str,
    occurred_at: dt.datetime,
    actor_id: int | None,
    actor_name: str,
    action: str,
    object_type: str,
    object_id: str,
    before: Any,
    after: Any,
    meta: Any,
) -> str:
    """SHA-256 over the canonical JSON of an event's content and its predecessor's hash.

    The canonical JSON is `json.dumps(payload, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` of {stream, seq, prev, at, actor_id, actor, action, type, id, before,
    after, meta}; `_digest` writes exactly that text from parts encoded once.
    """
    return _digest(
        _digest_parts(
            stream=stream,
            at=occurred_at.astimezone(dt.UTC).isoformat(),
            actor_id=actor_id,
            actor_name=actor_name,
            action=action,
            object_type=object_type,
            object_id=object_id,
        ),
        seq=seq,
        prev_hash=prev_hash,
        before_json=_canonical(before),
        after_json=_canonical(after),
        meta_json=_canonical(meta),
    )


# One encoder for every value: json.dumps with options builds a new encoder on each call.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _digest(
    parts: tuple[str, str, str, str],
    *,
    seq: int,
    prev_hash: str,
    before_json: str,
    after_json: str,
    meta_json: str,
) -> str:
    """The event's hash, from its `_digest_parts` and the texts they leave out."""
    p1, p2, p3, tail = parts
    # The previous hash as its JSON string's inside (hex: the same text).
    raw = (
        f"{p1}{after_json}{p2}{before_json}{p3}{meta_json}{_PREV_KEY}"
        f"{_canonical(prev_hash)[1:-1]}{_SEQ_KEY}{int(seq)}{tail}"
    )
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _entry_parts(
    entry: AuditEntry, at: str, actor_id: int | None, actor_name: str
) -> tuple[str, str, str, str]:
    """`_digest_parts` of an entry written at `at` by the actor it names."""
    return _digest_parts(
        stream=entry.stream_name(),
        at=at,
        actor_id=actor_id,
        actor_name=actor_name,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
    )


# What stands before an event's previous hash, and between it and its sequence number, in the
# hashed text.
_PREV_KEY = ',"prev":"'
_SEQ_KEY = '","seq":'


def _digest_parts(
    *,
    stream: str,
    at: str,
    actor_id: int | None,
    actor_name: str,
    action: str,
    object_type: str,
    object_id: str,
) -> tuple[str, str, str, str]:
    """The hashed text of an event but for its payload's three JSON texts, its previous hash
    and its sequence number, as the four texts around them: the whole is `p1 + after + p2 +
    before + p3 + meta + ',"prev":"' + prev_hash + '","seq":' + str(seq) + tail`, hashed by
    `_digest` (or by PostgreSQL's sha256 in _WRITE_SQL, from the stored texts and the heads)."""
    # The payload's keys in sorted order, each value encoded as json.dumps would nest it; the
    # JSON texts of before/after/meta are the ones stored, so each is encoded only once.
    enc = _canonical
    p1 = (
        f'{{"action":{enc(action)},"actor":{enc(actor_name)},'
        f'"actor_id":{"null" if actor_id is None else int(actor_id)},"after":'
    )
    p2 = f',"at":{enc(at)},"before":'
    p3 = f',"id":{enc(object_id)},"meta":'
    tail = f',"stream":{enc(stream)},"type":{enc(object_type)}}}'
    return p1, p2, p3, tail


_LOCK_HEADS_SQL = (
    "INSERT INTO oms_site_auditstream AS s (stream, last_seq, last_hash) "
    "SELECT n, 0, '' FROM unnest(%b::text[]) AS n ORDER BY n "
    "ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq "
    "RETURNING s.stream, s.last_seq, s.last_hash"
)
# The events and the new heads in one statement (one round trip, one parse). Arrays go in
# PostgreSQL's binary format (%b): in text format psycopg escapes every quote of every JSON
# document in Python, which cost ~45 ms per 1,000 events.
_INSERT_EVENTS = (
    "WITH ev AS ("
    " INSERT INTO oms_site_auditevent (stream, seq, occurred_at, actor_id, actor_name, action,"
    " object_type, object_id, before, after, meta, prev_hash, hash)"
    " SELECT v.stream, v.seq, %s, v.actor_id, v.actor_name, v.action, v.object_type,"
    " v.object_id, v.before::json, v.after::json, v.meta::jsonb, v.prev, v.hash"
    " FROM unnest(%b::text[], %b::bigint[], %b::integer[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
    " AS v(stream, seq, actor_id, actor_name, action, object_type, object_id, before, after,"
    " meta, prev, hash)"
    " RETURNING id, stream, seq"
    "), heads AS ("
)
_INSERT_SQL = (
    _INSERT_EVENTS + " UPDATE oms_site_auditstream AS s SET last_seq = h.seq, last_hash = h.hash"
    " FROM unnest(%b::text[], %b::bigint[], %b::text[]) AS h(stream, seq, hash)"
    " WHERE s.stream = h.stream"
    ") SELECT id, stream, seq FROM ev"
)
# Streams of objects created in this very transaction have no head yet: the heads are inserted
# with the events (a head that exists after all violates its primary key, and nothing is
# written), so such a batch costs one statement instead of two.
_INSERT_NEW_SQL = (
    _INSERT_EVENTS + " INSERT INTO oms_site_auditstream (stream, last_seq, last_hash)"
    " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[])"
    ") SELECT id, stream, seq FROM ev"
)
# A few events (a single order's two, a fill's): the same statements with the arrays as text
# literals (oms_site.rows.array_literal), one escaping pass per value in C string methods,
# instead of psycopg's binary list dumper at ~15 us per array whatever its length (15 arrays:
# about 0.2 ms of a single order). Past a few events the binary arrays are cheaper.
_LITERALS_AT_MOST = 8
# ... and only while their payloads are short: a long one (a 1,000-account fill's allocations,
# about 200 KB of JSON) would be escaped quote by quote into its literal and unescaped again by
# PostgreSQL's array parser, where a binary array carries its text as it is (196 KB, in
# process: 1.0 ms of Python and 1.0 ms of PostgreSQL as a literal, 0.2 and 0.4 ms binary).
_LITERAL_PAYLOADS_AT_MOST = 16_384


def _as_literals(contents: Sequence[tuple[Any, Any, Any, str, str, str]]) -> bool:
    """Whether a batch's arrays go as text literals: a few events with short payloads."""
    if len(contents) > _LITERALS_AT_MOST:
        return False
    size = 0
    for content in contents:
        size += len(content[3]) + len(content[4]) + len(content[5])
    return size <= _LITERAL_PAYLOADS_AT_MOST


_INSERT_SQL_LITERALS = _INSERT_SQL.replace("%b", "%s")
_INSERT_NEW_SQL_LITERALS = _INSERT_NEW_SQL.replace("%b", "%s")

# Events of streams that all have a head, one event per stream (a fill's, a single order's
# change): the heads are locked and read, the events hashed (sha256 in PostgreSQL over the text
# _digest_parts gives, with each head's hash and next sequence number put in), inserted and the
# heads moved, all in one statement instead of two. The heads are locked only when every one of
# them exists (counted in the statement's snapshot; heads are never deleted), in stream order as
# _LOCK_HEADS_SQL locks them; otherwise nothing is locked or written, no row comes back, and the
# caller takes the two statements, which create the missing heads. So a transaction holds either
# every head of its batch, taken in the same order as before, or none: the lock order is the
# one of _LOCK_HEADS_SQL. A head updated by a writer that committed after this statement's
# snapshot is read at its new version once locked (FOR UPDATE), and the UPDATE below writes that
# version (READ COMMITTED re-checks the row it finds changed).
_WRITE_SQL = (
    "WITH h AS MATERIALIZED ("
    " SELECT s.stream, s.last_seq + 1 AS seq,"
    f" COALESCE(NULLIF(s.last_hash, ''), '{GENESIS_HASH}') AS prev"
    " FROM oms_site_auditstream AS s WHERE s.stream = ANY(%b::text[])"
    " AND (SELECT count(*) FROM oms_site_auditstream AS c WHERE c.stream = ANY(%b::text[])) = %s"
    " ORDER BY s.stream FOR UPDATE OF s"
    "), v AS MATERIALIZED ("
    " SELECT x.*, h.seq, h.prev, encode(sha256(convert_to("
    " x.p1 || COALESCE(x.after, 'null') || x.p2 || COALESCE(x.before, 'null') || x.p3"
    f" || COALESCE(x.meta, 'null') || '{_PREV_KEY}' || h.prev || '{_SEQ_KEY}' || h.seq::text"
    " || x.tail, 'UTF8')), 'hex') AS hash"
    " FROM unnest(%b::text[], %b::integer[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
    " WITH ORDINALITY AS x(stream, actor_id, actor_name, action, object_type, object_id,"
    " before, after, meta, p1, p2, p3, tail, ord) JOIN h ON h.stream = x.stream"
    "), ev AS ("
    " INSERT INTO oms_site_auditevent (stream, seq, occurred_at, actor_id, actor_name, action,"
    " object_type, object_id, before, after, meta, prev_hash, hash)"
    " SELECT v.stream, v.seq, %s, v.actor_id, v.actor_name, v.action, v.object_type,"
    " v.object_id, v.before::json, v.after::json, v.meta::jsonb, v.prev, v.hash"
    " FROM v ORDER BY v.ord"
    " RETURNING id, stream, seq, prev_hash, hash"
    "), heads AS ("
    " UPDATE oms_site_auditstream AS s SET last_seq = v.seq, last_hash = v.hash"
    " FROM v WHERE s.stream = v.stream"
    ") SELECT id, stream, seq, prev_hash, hash FROM ev"
)
_WRITE_SQL_LITERALS = _WRITE_SQL.replace("%b", "%s")


class _Rows:
    """The columns of a batch of events, as arrays for unnest()."""

    def __init__(self) -> None:
        self.stream: list[str] = []
        self.seq: list[int] = []
        self.actor_id: list[int | None] = []
        self.actor_name: list[str] = []
        self.action: list[str] = []
        self.object_type: list[str] = []
        self.object_id: list[str] = []
        self.before: list[str | None] = []
        self.after: list[str | None] = []
        self.meta: list[str | None] = []
        self.prev: list[str] = []
        self.hash: list[str] = []
        self.values: list[tuple[Any, Any, Any]] = []

    def add(
        self,
        stream: str,
        seq: int,
        actor_id: int | None,
        actor_name: str,
        entry: AuditEntry,
        content: tuple[Any, Any, Any, str, str, str],
        prev: str,
        digest: str,
    ) -> None:
        """One event; `content` is its before, after and meta values and their canonical
        texts, as `_contents` gives them."""
        before, after, meta, before_json, after_json, meta_json = content
        self.stream.append(stream)
        self.seq.append(seq)
        self.actor_id.append(actor_id)
        self.actor_name.append(actor_name)
        self.action.append(entry.action)
        self.object_type.append(entry.object_type)
        self.object_id.append(entry.object_id)
        # None is stored as SQL NULL, as Django's JSONField stores it.
        self.before.append(None if before is None else before_json)
        self.after.append(None if after is None else after_json)
        self.meta.append(None if meta is None else meta_json)
        self.prev.append(prev)
        self.hash.append(digest)
        self.values.append((before, after, meta))

    def events(self, ids: dict[tuple[str, int], int], now: dt.datetime) -> list[AuditEvent]:
        # Built as the ORM builds rows it has read (positional values): keyword construction
        # of a thousand events cost more than writing them.
        db = connection.alias
        out = []
        for i, (before, after, meta) in enumerate(self.values):
            stream, seq = self.stream[i], self.seq[i]
            row = {
                "id": ids[(stream, seq)],
                "stream": stream,
                "seq": seq,
                "occurred_at": now,
                "actor_id": self.actor_id[i],
                "actor_name": self.actor_name[i],
                "action": self.action[i],
                "object_type": self.object_type[i],
                "object_id": self.object_id[i],
                "before": _value(before),
                "after": _value(after),
                "meta": _value(meta),
                "prev_hash": self.prev[i],
                "hash": self.hash[i],
            }
            values = [row.get(f, DEFERRED) for f in _EVENT_FIELDS]
            out.append(AuditEvent.from_db(db, _EVENT_FIELDS, values))
        return out


_EVENT_FIELDS = [f.attname for f in AuditEvent._meta.concrete_fields]


class _Events(Sequence[AuditEvent]):
    """The written events, built as model instances only when a caller looks at them.

    Most services discard them: building 1,001 instances cost a basket about 10 ms.
    """

    __slots__ = ("_built", "_ids", "_now", "_rows")

    def __init__(self, rows: _Rows, ids: dict[tuple[str, int], int], now: dt.datetime) -> None:
        self._rows = rows
        self._ids = ids
        self._now = now
        self._built: list[AuditEvent] | None = None

    def _events(self) -> list[AuditEvent]:
        if self._built is None:
            self._built = self._rows.events(self._ids, self._now)
        return self._built

    def __len__(self) -> int:
        return len(self._rows.values)

    def __getitem__(self, index: Any) -> Any:
        return self._events()[index]

    def __iter__(self) -> Any:
        return iter(self._events())


def _actor_fields(actor: Any) -> tuple[int | None, str]:
    actor = actor if actor is not None else current_actor.get()
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None, "system" if actor is None else "anonymous"
    return actor.pk, actor.get_username()


def audit_record(
    *,
    action: str,
    object_type: str,
    object_id: Any,
    before: Any = None,
    after: Any = None,
    meta: dict[str, Any] | None = None,
    actor: Any = None,
    stream: str | None = None,
) -> AuditEvent:
    """Append one audit event in the caller's transaction (which must be open)."""
    entry = AuditEntry(
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        before=before,
        after=after,
        meta=meta or {},
        actor=actor,
        stream=stream,
    )
    return audit_record_many(entries=[entry])[0]


def audit_record_many(
    *, entries: Sequence[AuditEntry], new_streams: bool = False
) -> Sequence[AuditEvent]:
    """Append many events with two statements, whatever their number (baskets, bulk fills);
    with one when each event has a stream of its own and every stream has a head (a fill's,
    a single order's change: _WRITE_SQL).

    `new_streams=True` says every stream belongs to an object created in this transaction (a
    new order, a new basket): their heads are created with the events, in one statement; a
    stream that has a head after all makes the statement fail, so no chain is ever forked.
    """
    if not entries:
        return ()
    if not connection.in_atomic_block:
        raise RuntimeError("audit events must be written inside the transaction of the change")
    now = timezone.now()
    at = now.astimezone(dt.UTC).isoformat()
    streams = sorted({e.stream_name() for e in entries})
    with connection.cursor() as cursor:
        if not new_streams and len(streams) == len(entries):
            events = _write_one_statement(cursor, entries, streams, now, at)
            if events is not None:
                return events
        heads: dict[str, tuple[int, str]]
        if not new_streams:
            # Creates missing heads and locks every head in one statement. The rows go in
            # sorted order, so two writers of overlapping streams lock them in the same order
            # and cannot deadlock; DO UPDATE (not DO NOTHING) also waits for and returns a head
            # that a concurrent transaction has just inserted. Read after the events' JSON is
            # written: in pipeline mode (execution_apply) that work overlaps the statements.
            cursor.execute(_LOCK_HEADS_SQL, [streams])
        contents = [_contents(entry) for entry in entries]
        if new_streams:
            heads = dict.fromkeys(streams, (0, GENESIS_HASH))
        else:
            heads = {
                name: (seq, last_hash or GENESIS_HASH) for name, seq, last_hash in cursor.fetchall()
            }
        rows = _Rows()
        actors = _Actors()
        for entry, content in zip(entries, contents, strict=True):
            stream = entry.stream_name()
            last_seq, prev = heads[stream]
            actor_id, actor_name = actors.of(entry)
            _, _, _, before_json, after_json, meta_json = content
            seq = last_seq + 1
            digest = _digest(
                _entry_parts(entry, at, actor_id, actor_name),
                seq=seq,
                prev_hash=prev,
                before_json=before_json,
                after_json=after_json,
                meta_json=meta_json,
            )
            rows.add(stream, seq, actor_id, actor_name, entry, content, prev, digest)
            heads[stream] = (seq, digest)
        names = list(heads)
        columns: list[Any] = [
            rows.stream,
            rows.seq,
            rows.actor_id,
            rows.actor_name,
            rows.action,
            rows.object_type,
            rows.object_id,
            rows.before,
            rows.after,
            rows.meta,
            rows.prev,
            rows.hash,
            names,
            [heads[n][0] for n in names],
            [heads[n][1] for n in names],
        ]
        if _as_literals(contents):
            sql = _INSERT_NEW_SQL_LITERALS if new_streams else _INSERT_SQL_LITERALS
            columns = [array_literal(column) for column in columns]
        else:
            sql = _INSERT_NEW_SQL if new_streams else _INSERT_SQL
        cursor.execute(sql, [now, *columns])
        ids = {(stream, seq): pk for pk, stream, seq in cursor.fetchall()}
    return _Events(rows, ids, now)


# The first events of one object inserted by the same statement, chained from the genesis hash
# (see new_object_events_sql): one row of an event's texts, its hash computed over them as
# _digest computes it, with the new id put into its "id" and "stream". What the events share
# (the id, time, actor, type) comes once from _ae0: psycopg caches the conversion of a
# statement of at most 50 parameters only, and the order's insert with its results takes 31.
_NEW_OBJECT_EVENT = (
    "SELECT x.*, encode(sha256(convert_to(x.p1 || COALESCE(x.after, 'null') || x.p2"
    " || COALESCE(x.before, 'null') || ',\"id\":\"' || x.oid || '\",\"meta\":'"
    f" || COALESCE(x.meta, 'null') || '{_PREV_KEY}' || x.prev || '{_SEQ_KEY}' || x.seq::text"
    " || x.t1 || x.oid || x.t2, 'UTF8')), 'hex') AS hash FROM (SELECT p.oid, p.at, p.p2,"
    " p.actor_id, p.actor_name, p.otype, p.t1, p.t2, {seq}::bigint AS seq, {prev} AS prev,"
    " %s::text AS p1, %s::text AS before, %s::text AS after, %s::text AS meta,"
    " %s::text AS action FROM {source} AS p) AS x"
)
_new_object_sql: dict[tuple[str, int], str] = {}


def new_object_events_sql(id_from: str, count: int) -> str:
    """CTEs appending the first `count` events of an object that the same statement inserts.

    To follow `WITH <id_from> AS (INSERT ... RETURNING id)`, with `new_object_events_params`
    as their parameters: the events are hashed by PostgreSQL over the text `_digest` hashes,
    with the new id as their object id and in their stream's name, and the stream's head is
    inserted with them (as audit_record_many(new_streams=True) writes them, one statement
    less: the object's id is not needed back in Python first).
    """
    key = (id_from, count)
    sql = _new_object_sql.get(key)
    if sql is None:
        ctes = [
            "_ae0 AS MATERIALIZED (SELECT n.id::text AS oid, %s::timestamptz AS at,"
            " %s::text AS p2, %s::integer AS actor_id, %s::text AS actor_name,"
            f" %s::text AS otype, %s::text AS t1, %s::text AS t2 FROM {id_from} AS n)"
        ]
        for k in range(1, count + 1):
            prev = f"'{GENESIS_HASH}'::text" if k == 1 else "p.hash"
            body = _NEW_OBJECT_EVENT.format(source=f"_ae{k - 1}", seq=k, prev=prev)
            ctes.append(f"_ae{k} AS MATERIALIZED ({body})")
        events = " UNION ALL ".join(f"SELECT * FROM _ae{k}" for k in range(1, count + 1))
        ctes.append(
            "_aev AS (INSERT INTO oms_site_auditevent (stream, seq, occurred_at, actor_id,"
            " actor_name, action, object_type, object_id, before, after, meta, prev_hash, hash)"
            " SELECT e.otype || ':' || e.oid, e.seq, e.at, e.actor_id, e.actor_name, e.action,"
            " e.otype, e.oid, e.before::json, e.after::json, e.meta::jsonb, e.prev, e.hash"
            f" FROM ({events}) AS e ORDER BY e.seq)"
        )
        ctes.append(
            "_aeh AS (INSERT INTO oms_site_auditstream (stream, last_seq, last_hash)"
            f" SELECT e.otype || ':' || e.oid, e.seq, e.hash FROM _ae{count} AS e)"
        )
        sql = _new_object_sql[key] = ", ".join(ctes)
    return sql


def new_object_events_params(entries: Sequence[AuditEntry], now: dt.datetime) -> list[Any]:
    """The parameters of `new_object_events_sql(..., len(entries))` for these entries: the
    first events of one new object by one actor, in order, each of the object's default
    stream (their `object_id` is not used: the statement puts the new id in)."""
    at = now.astimezone(dt.UTC).isoformat()
    object_type = entries[0].object_type
    actor_id, actor_name = _actor_fields(entries[0].actor)
    _, p2, _, _ = _digest_parts(
        stream="",
        at=at,
        actor_id=actor_id,
        actor_name=actor_name,
        action="",
        object_type=object_type,
        object_id="",
    )
    # The new id is digits, which JSON writes as they are: the stream's JSON string is the
    # text of "<type>:" without its closing quote, the id, and the quote.
    params: list[Any] = [
        now,
        p2,
        actor_id,
        actor_name,
        object_type,
        f',"stream":{_canonical(object_type + ":")[:-1]}',
        '","type":' + _canonical(object_type) + "}",
    ]
    for entry in entries:
        if (
            entry.stream is not None
            or entry.object_type != object_type
            or entry.actor is not entries[0].actor
        ):
            raise ValueError("new object events share their object's default stream and actor")
        before, after, meta, before_json, after_json, meta_json = _contents(entry)
        p1, _, _, _ = _digest_parts(
            stream="",
            at=at,
            actor_id=actor_id,
            actor_name=actor_name,
            action=entry.action,
            object_type=object_type,
            object_id="",
        )
        params += [
            p1,
            None if before is None else before_json,
            None if after is None else after_json,
            None if meta is None else meta_json,
            entry.action,
        ]
    return params


def _contents(entry: AuditEntry) -> tuple[Any, Any, Any, str, str, str]:
    """An entry's before, after and meta values and their canonical texts."""
    before, before_json = _content(entry.before)
    after, after_json = _content(entry.after)
    meta, meta_json = _content(entry.meta)
    return before, after, meta, before_json, after_json, meta_json


class _Actors:
    """Each entry's (actor_id, actor_name), looked up once per actor of a batch."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int | None, str]] = {}

    def of(self, entry: AuditEntry) -> tuple[int | None, str]:
        key = id(entry.actor)
        actor = self._known.get(key)
        if actor is None:
            actor = self._known[key] = _actor_fields(entry.actor)
        return actor


def _write_one_statement(
    cursor: Any, entries: Sequence[AuditEntry], streams: list[str], now: dt.datetime, at: str
) -> _Events | None:
    """Write events of distinct streams with _WRITE_SQL; None (nothing locked or written) when
    a stream has no head yet."""
    contents = [_contents(entry) for entry in entries]
    actors = _Actors()
    named = [actors.of(entry) for entry in entries]
    parts = [
        _entry_parts(entry, at, actor_id, actor_name)
        for entry, (actor_id, actor_name) in zip(entries, named, strict=True)
    ]
    # None is stored as SQL NULL, as Django's JSONField stores it.
    columns: list[Any] = [
        [entry.stream_name() for entry in entries],
        [actor_id for actor_id, _ in named],
        [actor_name for _, actor_name in named],
        [entry.action for entry in entries],
        [entry.object_type for entry in entries],
        [entry.object_id for entry in entries],
        [None if c[0] is None else c[3] for c in contents],
        [None if c[1] is None else c[4] for c in contents],
        [None if c[2] is None else c[5] for c in contents],
        *(list(column) for column in zip(*parts, strict=True)),
    ]
    if _as_literals(contents):
        sql = _WRITE_SQL_LITERALS
        names: Any = array_literal(streams)
        columns = [array_literal(column) for column in columns]
    else:
        sql, names = _WRITE_SQL, streams
    cursor.execute(sql, [names, names, len(streams), *columns, now])
    written = {
        stream: (pk, seq, prev, digest) for pk, stream, seq, prev, digest in cursor.fetchall()
    }
    if not written:
        return None
    if len(written) != len(entries):  # heads are never deleted: not expected
        raise RuntimeError("audit stream heads vanished while their events were written")
    rows = _Rows()
    ids: dict[tuple[str, int], int] = {}
    for entry, content, (actor_id, actor_name) in zip(entries, contents, named, strict=True):
        stream = entry.stream_name()
        pk, seq, prev, digest = written[stream]
        ids[(stream, seq)] = pk
        rows.add(stream, seq, actor_id, actor_name, entry, content, prev, digest)
    return _Events(rows, ids, now)


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One finding of audit_verify."""

    stream: str
    seq: int | None
    kind: str
    detail: str


def audit_verify(
    *, streams: Iterable[str] | None = None, chunk_size: int = 5000
) -> list[AuditProblem]:
    """Recompute every chain: report gaps, broken links, tampered rows and head mismatches."""
    problems: list[AuditProblem] = []
    heads = {h.stream: h for h in AuditStream.objects.all()}
    qs = AuditEvent.objects.order_by("stream", "seq")
    if streams is not None:
        wanted = list(streams)
        qs = qs.filter(stream__in=wanted)
        heads = {k: v for k, v in heads.items() if k in wanted}
    seen: dict[str, tuple[int, str]] = {}
    for ev in qs.iterator(chunk_size=chunk_size):
        last_seq, last_hash = seen.get(ev.stream, (0, GENESIS_HASH))
        if ev.seq != last_seq + 1:
            problems.append(
                AuditProblem(
                    ev.stream, ev.seq, "gap", f"expected seq {last_seq + 1}, found {ev.seq}"
                )
            )
        if ev.prev_hash != last_hash:
            problems.append(
                AuditProblem(
                    ev.stream, ev.seq, "broken_link", "prev_hash does not match predecessor"
                )
            )
        expected = event_hash(
            stream=ev.stream,
            seq=ev.seq,
            prev_hash=ev.prev_hash,
            occurred_at=ev.occurred_at,
            actor_id=ev.actor_id,
            actor_name=ev.actor_name,
            action=ev.action,
            object_type=ev.object_type,
            object_id=ev.object_id,
            before=ev.before,
            after=ev.after,
            meta=ev.meta,
        )
        if expected != ev.hash:
            problems.append(
                AuditProblem(ev.stream, ev.seq, "tampered", "content does not match hash")
            )
        seen[ev.stream] = (ev.seq, ev.hash)
    for name, head in heads.items():
        last_seq, last_hash = seen.get(name, (0, GENESIS_HASH))
        if head.last_seq != last_seq or (head.last_seq and head.last_hash != last_hash):
            problems.append(
                AuditProblem(
                    name,
                    head.last_seq,
                    "missing_tail",
                    f"stream head says seq {head.last_seq}, events end at {last_seq}",
                )
            )
    for name in seen.keys() - heads.keys():
        problems.append(AuditProblem(name, None, "no_head", "events without a stream head"))
    return problems


def model_snapshot(instance: Any, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-safe dict of a model instance's concrete fields (FKs as ids)."""
    data: dict[str, Any] = {}
    for f in instance._meta.concrete_fields:
        if fields is not None and f.name not in fields:
            continue
        data[f.attname] = json_safe(getattr(instance, f.attname))
    return data


def atomic_durable():
    """The top-level transaction of a command service."""
    return transaction.atomic(durable=True)
