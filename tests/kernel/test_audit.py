"""The audit kernel: append-only in PostgreSQL, hash-chained per stream, verifiable."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import DatabaseError

from oms_site.audit import (
    GENESIS_HASH,
    AuditEntry,
    CanonicalJson,
    audit_record,
    audit_record_many,
    audit_verify,
    canonical_text,
    event_hash,
)
from oms_site.models import AuditEvent, AuditStream

pytestmark = pytest.mark.django_db


def _write(n: int = 3, stream_id: str = "1") -> list[AuditEvent]:
    with transaction.atomic():
        return [
            audit_record(
                action=f"test.step{i}",
                object_type="test.thing",
                object_id=stream_id,
                after={"i": i},
            )
            for i in range(n)
        ]


def test_events_chain_per_stream_with_consecutive_sequence_numbers() -> None:
    # given / when
    events = _write(3)
    other = _write(1, stream_id="2")
    # then
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert other[0].seq == 1 and other[0].stream == "test.thing:2"
    head = AuditStream.objects.get(stream="test.thing:1")
    assert (head.last_seq, head.last_hash) == (3, events[2].hash)
    assert audit_verify() == []


def test_bulk_append_uses_constant_queries(django_assert_max_num_queries) -> None:
    entries = [
        AuditEntry(action="bulk", object_type="test.bulk", object_id=str(i)) for i in range(200)
    ]
    with transaction.atomic(), django_assert_max_num_queries(6):
        audit_record_many(entries=entries)
    assert AuditEvent.objects.filter(action="bulk").count() == 200
    assert audit_verify() == []


@pytest.mark.django_db(transaction=True)
def test_audit_outside_a_transaction_is_refused() -> None:
    with pytest.raises(RuntimeError):
        audit_record(action="x", object_type="t", object_id="1")
    assert AuditEvent.objects.count() == 0


def test_update_is_refused_by_postgres() -> None:
    event = _write(1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    assert AuditEvent.objects.get(pk=event.pk).action == "test.step0"


def test_delete_is_refused_by_postgres() -> None:
    event = _write(1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def _behind_the_triggers_back(sql: str, params: list) -> None:
    with transaction.atomic(), connection.cursor() as cur:
        # A superuser can switch ordinary triggers off for the session: the tamperer's way in.
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute(sql, params)


def test_verify_detects_a_row_tampered_behind_the_triggers_back() -> None:
    events = _write(3)
    _behind_the_triggers_back(
        "UPDATE oms_site_auditevent SET after = %s::jsonb WHERE id = %s",
        ['{"i": 99}', events[1].pk],
    )
    problems = audit_verify()
    assert [(p.stream, p.seq, p.kind) for p in problems] == [("test.thing:1", 2, "tampered")]
    with pytest.raises(CommandError, match="FAILED: 1 problem"):
        call_command("audit_verify")


def test_verify_detects_a_deleted_row_as_a_gap() -> None:
    events = _write(3)
    _behind_the_triggers_back("DELETE FROM oms_site_auditevent WHERE id = %s", [events[1].pk])
    kinds = [(p.seq, p.kind) for p in audit_verify()]
    assert kinds == [(3, "gap"), (3, "broken_link")]


def test_verify_detects_a_deleted_tail() -> None:
    events = _write(3)
    _behind_the_triggers_back("DELETE FROM oms_site_auditevent WHERE id = %s", [events[2].pk])
    assert [(p.seq, p.kind) for p in audit_verify()] == [(3, "missing_tail")]


def test_audit_verify_command_reports_ok(capsys) -> None:
    _write(2)
    call_command("audit_verify")
    assert "audit trail OK: 2 events in 1 streams verified" in capsys.readouterr().out


def _reference_hash(**kw) -> str:
    """The hash as first specified: json.dumps of the whole payload, sorted keys."""
    import datetime as dt
    import hashlib
    import json

    payload = {
        "stream": kw["stream"],
        "seq": kw["seq"],
        "prev": kw["prev_hash"],
        "at": kw["occurred_at"].astimezone(dt.UTC).isoformat(),
        "actor_id": kw["actor_id"],
        "actor": kw["actor_name"],
        "action": kw["action"],
        "type": kw["object_type"],
        "id": kw["object_id"],
        "before": kw["before"],
        "after": kw["after"],
        "meta": kw["meta"],
    }
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    ("actor_id", "before", "after", "meta"),
    [
        (None, None, None, {}),
        (7, {"status": "new"}, {"b": [1, "2", None], "a": {"z": 1, "y": 'Zürich\t"q"'}}, {}),
        (12345, [], {"emoji": "\u2603 \U0001f600", "ctl": "\x01\n"}, {"reason": "x", "n": 0}),
    ],
)
def test_event_hash_is_the_canonical_json_of_the_whole_payload(actor_id, before, after, meta):
    import datetime as dt

    from oms_site.audit import event_hash

    kw = {
        "stream": "order:1",
        "seq": 3,
        "prev_hash": GENESIS_HASH,
        "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "actor_id": actor_id,
        "actor_name": "pm_ü",
        "action": "order.created",
        "object_type": "order",
        "object_id": "1",
        "before": before,
        "after": after,
        "meta": meta,
    }
    assert event_hash(**kw) == _reference_hash(**kw)


def test_many_events_of_many_streams_written_in_two_statements(
    django_assert_num_queries,
) -> None:
    # given two streams, one with a history already
    earlier = _write(2, stream_id="9")
    entries = [
        AuditEntry(action="a", object_type="test.thing", object_id="9", after={"k": i})
        for i in range(3)
    ] + [AuditEntry(action="b", object_type="test.thing", object_id="10", meta={"m": 1})]
    # when
    with transaction.atomic(), django_assert_num_queries(2):
        events = audit_record_many(entries=entries)
    # then: each chain continues where it was, ids are the stored rows'
    assert [(e.stream, e.seq) for e in events] == [
        ("test.thing:9", 3),
        ("test.thing:9", 4),
        ("test.thing:9", 5),
        ("test.thing:10", 1),
    ]
    stored = {e.pk: e for e in AuditEvent.objects.filter(pk__in=[e.pk for e in events])}
    for e in events:
        row = stored[e.pk]
        assert (row.stream, row.seq, row.hash, row.prev_hash) == (
            e.stream,
            e.seq,
            e.hash,
            e.prev_hash,
        )
        assert (row.after, row.meta, row.before) == (e.after, e.meta, e.before)
    assert events[0].prev_hash == earlier[1].hash and events[3].prev_hash == GENESIS_HASH
    assert AuditStream.objects.get(stream="test.thing:9").last_seq == 5
    assert AuditStream.objects.get(stream="test.thing:10").last_hash == events[3].hash
    assert audit_verify() == []


def test_events_of_new_streams_are_written_with_their_heads_in_one_statement(
    django_assert_num_queries,
) -> None:
    # given two objects created in this transaction (no heads yet)
    entries = [
        AuditEntry(action="a", object_type="test.new", object_id="1", after={"k": 1}),
        AuditEntry(action="b", object_type="test.new", object_id="1", after={"k": 2}),
        AuditEntry(action="c", object_type="test.new", object_id="2", meta={"m": 1}),
    ]
    # when
    with transaction.atomic(), django_assert_num_queries(1):
        events = audit_record_many(entries=entries, new_streams=True)
    # then: chains start at 1 from the genesis hash, heads point at their last events
    assert [(e.stream, e.seq) for e in events] == [
        ("test.new:1", 1),
        ("test.new:1", 2),
        ("test.new:2", 1),
    ]
    assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == GENESIS_HASH
    heads = {h.stream: (h.last_seq, h.last_hash) for h in AuditStream.objects.all()}
    assert heads == {"test.new:1": (2, events[1].hash), "test.new:2": (1, events[2].hash)}
    assert AuditEvent.objects.count() == 3
    assert audit_verify() == []


def test_a_stream_said_to_be_new_that_has_a_head_fails_and_writes_nothing() -> None:
    # given a stream with a history
    earlier = _write(2, stream_id="7")
    # when a batch claims it is new
    with pytest.raises(DatabaseError), transaction.atomic():
        audit_record_many(
            entries=[
                AuditEntry(action="x", object_type="test.other", object_id="1"),
                AuditEntry(action="y", object_type="test.thing", object_id="7"),
            ],
            new_streams=True,
        )
    # then nothing was written and the existing chain is intact
    assert AuditEvent.objects.count() == 2
    assert list(AuditStream.objects.values_list("stream", "last_seq", "last_hash")) == [
        ("test.thing:7", 2, earlier[1].hash)
    ]
    assert audit_verify() == []


@pytest.mark.parametrize("count", [2, 9])
def test_few_and_many_events_are_stored_alike(count: int) -> None:
    # given events with JSON that needs escaping, in a batch sent as text literals (at most 8)
    # or as binary arrays (more)
    entries = [
        AuditEntry(
            action="a",
            object_type="test.lit",
            object_id=str(n),
            before={"q": 'say "hi"', "b": "back\\slash", "n": None},
            after={"k": n, "u": "é", "l": [1, "x,y"]},
            meta={"m": "{}"},
        )
        for n in range(count)
    ]
    # when they are written for new streams
    with transaction.atomic():
        events = audit_record_many(entries=entries, new_streams=True)
    # then the stored documents are the ones given and every chain verifies
    stored = list(AuditEvent.objects.order_by("object_id").values_list("before", "after", "meta"))
    assert stored == [
        (
            {"q": 'say "hi"', "b": "back\\slash", "n": None},
            {"k": n, "u": "é", "l": [1, "x,y"]},
            {"m": "{}"},
        )
        for n in sorted(range(count), key=str)
    ]
    assert len(events) == count
    assert audit_verify() == []


def test_a_payload_given_as_its_canonical_text_is_stored_hashed_and_read_as_the_dict() -> None:
    # given a payload written by its caller as canonical JSON text, and the same payload as a dict
    value = {"b": [{"x": "1.50", "id": 7}], "a": "é", "n": None}
    text = CanonicalJson('{"a":"é","b":[{"id":7,"x":"1.50"}],"n":null}')
    assert text == canonical_text(value)
    # when each is written to its own stream
    with transaction.atomic():
        given = audit_record_many(
            entries=[AuditEntry(action="a", object_type="t.text", object_id="1", after=text)]
        )
        built = audit_record_many(
            entries=[AuditEntry(action="a", object_type="t.dict", object_id="1", after=value)]
        )
    # then both store, hash and hand back the same document, and both chains verify
    assert given[0].after == built[0].after == value
    stored = dict(AuditEvent.objects.values_list("object_type", "after"))
    assert stored == {"t.text": value, "t.dict": value}
    assert given[0].hash == event_hash(
        stream="t.text:1",
        seq=1,
        prev_hash=GENESIS_HASH,
        occurred_at=given[0].occurred_at,
        actor_id=None,
        actor_name="system",
        action="a",
        object_type="t.text",
        object_id="1",
        before=None,
        after=value,
        meta={},
    )
    assert audit_verify() == []


def _stored(events) -> list[tuple]:
    rows = AuditEvent.objects.filter(pk__in=[e.pk for e in events]).order_by("pk")
    return [(r.stream, r.seq, r.prev_hash, r.hash, r.before, r.after, r.meta) for r in rows]


def _expected_hash(event: AuditEvent) -> str:
    return event_hash(
        stream=event.stream,
        seq=event.seq,
        prev_hash=event.prev_hash,
        occurred_at=event.occurred_at,
        actor_id=event.actor_id,
        actor_name=event.actor_name,
        action=event.action,
        object_type=event.object_type,
        object_id=event.object_id,
        before=event.before,
        after=event.after,
        meta=event.meta,
    )


@pytest.mark.parametrize("count", [2, 9])
def test_one_event_per_stream_with_heads_is_hashed_and_written_in_one_statement(
    count: int, django_assert_num_queries
) -> None:
    # given streams that have a history, and one event for each with JSON that needs escaping
    # and non-ASCII text (at most 8 events go as text literals, more as binary arrays)
    earlier = [_write(1, stream_id=f"s{n}")[0] for n in range(count)]
    entries = [
        AuditEntry(
            action="é.step",
            object_type="test.thing",
            object_id=f"s{n}",
            before={"q": 'say "hi"', "b": "back\\slash", "n": None},
            after={"k": n, "u": "é ✓", "l": [1, "x,y"], "t": "tab\there"},
            meta={"m": "{}"},
        )
        for n in range(count)
    ]
    # when
    with transaction.atomic(), django_assert_num_queries(1):
        events = audit_record_many(entries=entries)
    # then each chain continues from its head with the hash Python computes for the event
    assert [(e.stream, e.seq, e.prev_hash) for e in events] == [
        (f"test.thing:s{n}", 2, earlier[n].hash) for n in range(count)
    ]
    assert [e.action for e in events] == ["é.step"] * count
    for event in events:
        assert event.hash == _expected_hash(event)
    assert _stored(events) == [
        (e.stream, e.seq, e.prev_hash, e.hash, e.before, e.after, e.meta) for e in events
    ]
    assert events[0].after == {"k": 0, "u": "é ✓", "l": [1, "x,y"], "t": "tab\there"}
    heads = dict(
        AuditStream.objects.filter(stream__in=[e.stream for e in events]).values_list(
            "stream", "last_hash"
        )
    )
    assert heads == {e.stream: e.hash for e in events}
    assert AuditStream.objects.get(stream="test.thing:s0").last_seq == 2
    assert audit_verify() == []


def test_a_stream_without_head_among_others_takes_two_statements_and_writes_once(
    django_assert_num_queries,
) -> None:
    # given one stream with a history and one without a head
    earlier = _write(2, stream_id="old")
    entries = [
        AuditEntry(action="a", object_type="test.thing", object_id="old", after={"k": 1}),
        AuditEntry(action="b", object_type="test.thing", object_id="new", after={"k": 2}),
    ]
    # when (the one-statement write finds a head missing: it locks and writes nothing)
    with transaction.atomic(), django_assert_num_queries(3):
        events = audit_record_many(entries=entries)
    # then each event is written once, chained as before
    assert [(e.stream, e.seq, e.prev_hash) for e in events] == [
        ("test.thing:old", 3, earlier[1].hash),
        ("test.thing:new", 1, GENESIS_HASH),
    ]
    assert AuditEvent.objects.count() == 4
    assert AuditEvent.objects.filter(stream="test.thing:new").count() == 1
    assert dict(AuditStream.objects.values_list("stream", "last_seq")) == {
        "test.thing:old": 3,
        "test.thing:new": 1,
    }
    assert audit_verify() == []


@pytest.mark.django_db(transaction=True)
def test_one_statement_write_waiting_for_a_head_chains_after_the_writer_it_waited_for() -> None:
    # given a stream with a history, and another transaction that has written to it and holds
    # its head, not committed yet
    _write(1, stream_id="race")
    holding, release = threading.Event(), threading.Event()
    held: list[AuditEvent] = []

    def other() -> None:
        try:
            with transaction.atomic():
                held.append(
                    audit_record(action="other", object_type="test.thing", object_id="race")
                )
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other)
    thread.start()
    assert holding.wait(10)
    # when this transaction's write (whose statement starts before the other commits) waits
    # for the head, and the other commits meanwhile
    timer = threading.Timer(0.3, release.set)
    timer.start()
    with transaction.atomic():
        mine = audit_record(action="mine", object_type="test.thing", object_id="race")
    thread.join(10)
    timer.cancel()
    # then this event follows the other's, and the head is this event
    assert (held[0].seq, mine.seq, mine.prev_hash) == (2, 3, held[0].hash)
    head = AuditStream.objects.get(stream="test.thing:race")
    assert (head.last_seq, head.last_hash) == (3, mine.hash)
    assert list(
        AuditEvent.objects.filter(stream="test.thing:race").values_list("seq", flat=True)
    ) == [1, 2, 3]
    assert audit_verify() == []


def test_a_long_payload_is_sent_once_in_the_one_statement_write(
    django_assert_num_queries,
) -> None:
    # given a stream with a history and a payload of about 9,000 characters given as text,
    # holding a marker once
    earlier = _write(1, stream_id="long")
    value = {"rows": ["x" * 100] * 90, "tag": "needle-7f3"}
    text = CanonicalJson(canonical_text(value))
    # when it is written
    with transaction.atomic(), django_assert_num_queries(1) as captured:
        (event,) = audit_record_many(
            entries=[AuditEntry(action="a", object_type="test.thing", object_id="long", after=text)]
        )
    # then the statement carries the payload once (the hashed text is built from the stored
    # one), and the event is chained, hashed and stored as Python hashes it
    assert captured.captured_queries[0]["sql"].count("needle-7f3") == 1
    assert (event.seq, event.prev_hash, event.after) == (2, earlier[0].hash, value)
    assert event.hash == _expected_hash(event)
    assert AuditEvent.objects.get(pk=event.pk).after == value
    assert audit_verify() == []


def test_few_events_with_short_payloads_go_as_literals_and_a_long_payload_does_not() -> None:
    from oms_site.audit import _LITERAL_PAYLOADS_AT_MOST, _LITERALS_AT_MOST, _as_literals

    def content(size: int) -> tuple:
        return (None, None, None, "null", "x" * (size - 6), "{}")

    # (the three texts of an entry: before, after and meta, counted together)
    at_most = content(_LITERAL_PAYLOADS_AT_MOST)
    assert sum(len(t) for t in at_most[3:]) == _LITERAL_PAYLOADS_AT_MOST
    assert _as_literals([at_most]) is True
    assert _as_literals([content(_LITERAL_PAYLOADS_AT_MOST + 1)]) is False
    assert _as_literals([content(100)] * _LITERALS_AT_MOST) is True
    assert _as_literals([content(100)] * (_LITERALS_AT_MOST + 1)) is False
    half = content(_LITERAL_PAYLOADS_AT_MOST // 2 + 1)
    assert _as_literals([half, half]) is False


@pytest.mark.parametrize("new_stream", [False, True])
def test_a_long_payload_goes_in_binary_arrays_and_is_stored_and_hashed_alike(
    new_stream: bool, monkeypatch, django_assert_num_queries
) -> None:
    from oms_site import audit

    # given a payload of about 40,000 characters with JSON that needs escaping and non-ASCII
    # text, for a stream with a history (one statement) or a new one (the two-statement write)
    earlier = None if new_stream else _write(1, stream_id="big")[0]
    if not new_stream:
        _write(1, stream_id="small")
    value = {
        "rows": [{"q": 'say "hi"', "b": "back\\slash", "u": "é ✓", "n": i} for i in range(600)],
        "t": "tab\there",
    }
    text = CanonicalJson(canonical_text(value))
    assert len(text) > audit._LITERAL_PAYLOADS_AT_MOST
    chosen: list[bool] = []
    original = audit._as_literals

    def spy(contents):
        chosen.append(original(contents))
        return chosen[-1]

    monkeypatch.setattr(audit, "_as_literals", spy)
    # when it is written with a short event of another stream
    entries = [
        AuditEntry(action="a", object_type="test.thing", object_id="big", after=text),
        AuditEntry(action="b", object_type="test.thing", object_id="small", after={"k": 1}),
    ]
    with transaction.atomic(), django_assert_num_queries(1):
        events = audit_record_many(entries=entries, new_streams=new_stream)
    # then the batch went as binary arrays, in one statement, and both events are stored, chained and hashed as
    # Python hashes them
    assert chosen and set(chosen) == {False}
    big = events[0]
    assert big.stream == "test.thing:big"
    if earlier is not None:
        assert (big.seq, big.prev_hash) == (2, earlier.hash)
    else:
        assert (big.seq, big.prev_hash) == (1, GENESIS_HASH)
    for event in events:
        assert event.hash == _expected_hash(event)
    assert AuditEvent.objects.get(pk=big.pk).after == value
    assert _stored(events) == [
        (e.stream, e.seq, e.prev_hash, e.hash, e.before, e.after, e.meta) for e in events
    ]
    assert audit_verify() == []


def test_a_long_payload_is_stored_compressed_with_lz4_and_reads_back_the_same() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = "
            "'oms_site_auditevent'::regclass AND attname IN ('before', 'after', 'meta')"
        )
        methods = dict(cursor.fetchall())
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE lz4_probe (x text COMPRESSION lz4)")
            transaction.set_rollback(True)
    except DatabaseError:
        assert set(methods.values()) == {""}  # the migration left pglz
        pytest.skip("this server has no lz4")
    assert methods == {"before": "l", "after": "l", "meta": "l"}
    # given a payload of about 60 KB, and a short one
    value = {"rows": [{"id": i, "q": f"{i}.25", "kind": "fill"} for i in range(1500)]}
    # when both are written
    with transaction.atomic():
        long, short = audit_record_many(
            entries=[
                AuditEntry(action="a", object_type="test.thing", object_id="lz", after=value),
                AuditEntry(action="a", object_type="test.thing", object_id="sh", after={"k": 1}),
            ]
        )
    # then the long one is stored compressed with lz4 (the short one is not compressed), and
    # both read back as written, their chains verified
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, pg_column_compression(after) FROM oms_site_auditevent WHERE id IN (%s, %s)",
            [long.pk, short.pk],
        )
        assert dict(cursor.fetchall()) == {long.pk: "lz4", short.pk: None}
    assert AuditEvent.objects.get(pk=long.pk).after == value
    assert AuditEvent.objects.get(pk=short.pk).after == {"k": 1}
    assert audit_verify() == []


def _stored_texts(pk: int) -> tuple[str | None, str | None, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT before::text, after::text, meta::text FROM oms_site_auditevent WHERE id = %s",
            [pk],
        )
        return cursor.fetchone()


def test_payloads_are_stored_as_the_exact_canonical_text_that_was_hashed() -> None:
    # given the before and after columns stored as json (their text), meta as jsonb
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute WHERE attrelid = "
            "'oms_site_auditevent'::regclass AND attname IN ('before', 'after', 'meta')"
        )
        assert dict(cursor.fetchall()) == {"before": "json", "after": "json", "meta": "jsonb"}
    # when a dict payload, a canonical text payload and a long one are written, in both paths
    # (one statement with heads, two statements for new streams)
    long_value = {"rows": [{"id": i, "q": f"{i}.25"} for i in range(1200)]}
    with transaction.atomic():
        dict_event, text_event = audit_record_many(
            entries=[
                AuditEntry(
                    action="a",
                    object_type="t.json",
                    object_id="1",
                    before={"z": 1, "a": "é"},
                    after={"b": [2, "x"], "a": None},
                    meta={"m": 1},
                ),
                AuditEntry(
                    action="a",
                    object_type="t.json",
                    object_id="2",
                    after=CanonicalJson('{"a":"1.50","b":[{"id":7}]}'),
                ),
            ],
            new_streams=True,
        )
        (long_event,) = audit_record_many(
            entries=[AuditEntry(action="b", object_type="t.json", object_id="1", after=long_value)]
        )
    # then before and after hold exactly the canonical texts hashed (meta: jsonb's own text)
    assert _stored_texts(dict_event.pk) == ('{"a":"é","z":1}', '{"a":null,"b":[2,"x"]}', '{"m": 1}')
    assert _stored_texts(text_event.pk) == (None, '{"a":"1.50","b":[{"id":7}]}', "{}")
    assert _stored_texts(long_event.pk)[1] == canonical_text(long_value)
    # and they read back as the values, through the model and through a key path
    stored = {e.pk: (e.before, e.after) for e in AuditEvent.objects.all()}
    assert stored == {
        dict_event.pk: ({"a": "é", "z": 1}, {"a": None, "b": [2, "x"]}),
        text_event.pk: (None, {"a": "1.50", "b": [{"id": 7}]}),
        long_event.pk: (None, long_value),
    }
    assert list(
        AuditEvent.objects.filter(pk=text_event.pk).values_list("after__a", "after__b__0__id")
    ) == [("1.50", 7)]
    assert audit_verify() == []


@pytest.mark.parametrize("value", ["1", "null", "", [], 5, "[1]"])
def test_a_payload_of_a_json_scalar_or_a_string_that_looks_like_json_reads_back_as_written(
    value,
) -> None:
    with transaction.atomic():
        (event,) = audit_record_many(
            entries=[AuditEntry(action="a", object_type="t.s", object_id="1", after=value)]
        )
    assert AuditEvent.objects.get(pk=event.pk).after == value
    assert audit_verify() == []


@pytest.mark.parametrize("new_streams", [False, True])
def test_a_payload_text_that_is_not_json_is_refused_and_nothing_is_written(
    new_streams: bool,
) -> None:
    # given a stream with one event
    _write(1)
    # when an event whose canonical text is not JSON is written
    with (
        pytest.raises(DatabaseError, match="invalid input syntax for type json"),
        transaction.atomic(),
    ):
        audit_record_many(
            entries=[
                AuditEntry(
                    action="a",
                    object_type="test.thing" if not new_streams else "t.new",
                    object_id="1",
                    after=CanonicalJson('{"a":1,}'),
                )
            ],
            new_streams=new_streams,
        )
    # then nothing is written: no event, no head moved
    assert list(AuditEvent.objects.values_list("stream", "seq")) == [("test.thing:1", 1)]
    assert list(AuditStream.objects.values_list("stream", "last_seq")) == [("test.thing:1", 1)]


@pytest.mark.django_db(transaction=True)
def test_the_migration_to_json_keeps_every_payload_and_chain_both_ways() -> None:
    # given events written while before and after were jsonb (migration 0004)
    before_state, after_state = "0004_audit_payloads_lz4", "0005_audit_payloads_json"
    executor = MigrationExecutor(connection)
    executor.migrate([("oms_site", before_state)])
    try:
        values = [({"q": 'say "hi"', "n": None}, {"k": 1, "u": "é", "l": ["1.5", 2]}), (None, [])]
        with transaction.atomic():
            audit_record_many(
                entries=[
                    AuditEntry(
                        action="a",
                        object_type="t.m",
                        object_id=str(n),
                        before=before,
                        after=after,
                        meta={"n": n},
                    )
                    for n, (before, after) in enumerate(values)
                ],
                new_streams=True,
            )

        def columns() -> dict[str, tuple[str, str]]:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT attname, atttypid::regtype::text, attcompression::text"
                    " FROM pg_attribute WHERE attrelid = 'oms_site_auditevent'::regclass"
                    " AND attname IN ('before', 'after', 'meta')"
                )
                return {name: (kind, method) for name, kind, method in cursor.fetchall()}

        lz4 = columns()["meta"][1]
        assert columns() == {c: ("jsonb", lz4) for c in ("before", "after", "meta")}
        # when migrated to json
        MigrationExecutor(connection).migrate([("oms_site", after_state)])
        # then the columns are json, compressed as before, and every value and chain is kept
        assert columns() == {
            "before": ("json", lz4),
            "after": ("json", lz4),
            "meta": ("jsonb", lz4),
        }
        stored = list(AuditEvent.objects.order_by("object_id").values_list("before", "after"))
        assert stored == values
        assert audit_verify() == []
        # and back: jsonb again, the same values, the chains still verify
        MigrationExecutor(connection).migrate([("oms_site", before_state)])
        assert columns() == {c: ("jsonb", lz4) for c in ("before", "after", "meta")}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT before::text, after::text FROM oms_site_auditevent ORDER BY object_id"
            )
            assert cursor.fetchall() == [
                ('{"n": null, "q": "say \\"hi\\""}', '{"k": 1, "l": ["1.5", 2], "u": "é"}'),
                (None, "[]"),
            ]
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert audit_verify() == []
