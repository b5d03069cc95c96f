"""oms_site.rows.rows_update: many rows' fields in one statement, relations by their ids."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from allocations.models import CashBalance
from oms_site.rows import array_literal, rows_update
from tests import factories as f


@pytest.mark.django_db
def test_rows_update_writes_the_given_fields_of_exactly_the_given_rows(desk: Any) -> None:
    # given three accounts' USD balances and an account without one
    a, b, c, spare = (f.AccountFactory(code=f"ROWS-{n}", desk=desk) for n in range(4))
    CashBalance.objects.filter(account__in=[a, b, c, spare]).delete()
    ba, bb, bc = (
        f.CashBalanceFactory(account=x, settled=Decimal("10.00"), version=1) for x in (a, b, c)
    )
    # when two of them change settled, version and (one) account in memory and are written
    ba.settled, ba.version = Decimal("11.25"), 2
    bb.settled, bb.version, bb.account = Decimal("-3.50"), 7, spare
    with CaptureQueriesContext(connection) as queries:
        rows_update(CashBalance, [ba, bb], ["settled", "version", "account"])
    # then one statement wrote exactly those fields of exactly those rows
    assert len(queries) == 1
    rows = {
        r.pk: (r.account_id, r.settled, r.pending, r.version) for r in CashBalance.objects.all()
    }
    assert rows[ba.pk] == (a.pk, Decimal("11.25"), Decimal("0.00"), 2)
    assert rows[bb.pk] == (spare.pk, Decimal("-3.50"), Decimal("0.00"), 7)
    assert rows[bc.pk] == (c.pk, Decimal("10.00"), Decimal("0.00"), 1)


@pytest.mark.django_db
def test_rows_update_of_no_rows_sends_nothing() -> None:
    with CaptureQueriesContext(connection) as queries:
        rows_update(CashBalance, [], ["settled"])
    assert len(queries) == 0


@pytest.mark.django_db
def test_fast_datetimes_reads_timestamps_as_djangos_cursor_does() -> None:
    import datetime as dt

    from oms_site.rows import fast_datetimes, raw_cursor

    # given timestamps with and without fractions, given off UTC, and a NULL
    sql = (
        "SELECT '2026-11-20 15:00:00+00'::timestamptz, "
        "'2026-11-20 15:00:00.5-05:00'::timestamptz, '1999-12-31 23:59:59.999999+01'::timestamptz, "
        "NULL::timestamptz"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        expected = cursor.fetchone()
    # when they are read through a raw cursor and a Django cursor with fast_datetimes
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute(sql)
        raw = cursor.fetchone()
    with connection.cursor() as cursor:
        fast_datetimes(cursor)
        cursor.execute(sql)
        wrapped = cursor.fetchone()
    # then the values are the same aware UTC datetimes
    assert raw == wrapped == expected
    assert raw[0] == dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)
    assert raw[1] == dt.datetime(2026, 11, 20, 20, 0, 0, 500000, tzinfo=dt.UTC)
    assert all(v.tzinfo is dt.UTC for v in raw[:3])
    assert [v.isoformat() for v in raw[:3]] == [v.isoformat() for v in expected[:3]]
    assert raw[3] is None


@pytest.mark.django_db
def test_fast_datetimes_leaves_text_it_cannot_read_to_djangos_loader() -> None:
    import psycopg
    from django.db import DataError

    from oms_site.rows import fast_datetimes, raw_cursor

    # given a timestamp fromisoformat cannot read (infinity), which Django's loader refuses
    sql = "SELECT 'infinity'::timestamptz"
    with connection.cursor() as cursor, pytest.raises(DataError) as django_error:
        cursor.execute(sql)
        cursor.fetchone()
    # when it is read with fast_datetimes, then the same refusal comes from the same loader
    with fast_datetimes(raw_cursor()) as cursor, pytest.raises(psycopg.DataError) as fast_error:
        cursor.execute(sql)
        cursor.fetchone()
    assert str(fast_error.value) == str(django_error.value)


@pytest.mark.django_db
def test_array_literals_read_back_as_the_values_given() -> None:
    # given values that need quoting: quotes, backslashes, commas, braces, the word NULL,
    # an empty string, JSON text, non-ASCII, and None
    texts = ['a"b\\c', "", "NULL", None, '{"k": "v\\n"}', " sp ", "é", "a,b", "{x}"]
    numbers = [Decimal("1.50"), None, Decimal("1E+2"), Decimal("-0.00000001")]
    ids = [1, None, 2**40]
    # when each goes to PostgreSQL as one text literal cast to its array type
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s::text[], %s::numeric[], %s::bigint[], %s::bigint[]",
            [array_literal(texts), array_literal(numbers), array_literal(ids), array_literal([])],
        )
        row = cursor.fetchone()
    # then every element comes back as it was, None as NULL and not as the text "NULL"
    assert row == (texts, numbers, ids, [])


@pytest.mark.django_db
def test_fast_datetimes_reads_repeated_text_once_and_keeps_no_text_it_cannot_read(
    monkeypatch,
) -> None:
    import datetime as dt

    from oms_site import rows
    from oms_site.rows import fast_datetimes, raw_cursor

    # given an empty memo of read timestamps, and rows that repeat one timestamp's text
    monkeypatch.setattr(rows, "_TIMESTAMPS", {})
    sql = (
        "SELECT t FROM (VALUES ('2026-11-20 15:00:00.25+00'::timestamptz), "
        "('2026-11-20 15:00:00.25+00'::timestamptz), ('2026-11-20 10:00:00-05'::timestamptz)) "
        "AS v(t)"
    )
    # when they are read with fast_datetimes
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute(sql)
        values = [row[0] for row in cursor.fetchall()]
    # then the repeated text gives the one (immutable) datetime read first, each exact and UTC
    assert values == [
        dt.datetime(2026, 11, 20, 15, 0, 0, 250000, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 20, 15, 0, 0, 250000, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC),
    ]
    assert values[0] is values[1]
    assert all(v.tzinfo is dt.UTC for v in values)
    assert set(rows._TIMESTAMPS) == {b"2026-11-20 15:00:00.25+00", b"2026-11-20 15:00:00+00"}
    # and text it cannot read (left to Django's loader) is not kept
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute("SELECT '-infinity'::timestamptz")
        with pytest.raises(Exception):  # noqa: B017 - whatever Django's loader raises
            cursor.fetchone()
    assert len(rows._TIMESTAMPS) == 2


@pytest.mark.django_db
def test_fast_datetimes_memo_is_emptied_when_full(monkeypatch) -> None:
    import datetime as dt

    from oms_site import rows
    from oms_site.rows import fast_datetimes, raw_cursor

    # given a memo already at its bound
    monkeypatch.setattr(rows, "_TIMESTAMPS", {b"x": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)})
    monkeypatch.setattr(rows, "_TIMESTAMPS_MAX", 1)
    # when a new text is read
    with fast_datetimes(raw_cursor()) as cursor:
        cursor.execute("SELECT '2026-11-20 15:00:00+00'::timestamptz")
        (value,) = cursor.fetchone()
    # then it holds that text alone
    assert value == dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)
    assert {b"2026-11-20 15:00:00+00": value} == rows._TIMESTAMPS


@pytest.mark.django_db
def test_a_fast_datetimes_cursor_leaves_nothing_for_the_cyclic_collector() -> None:
    import gc

    from oms_site.rows import fast_datetimes, raw_cursor

    # given no cyclic garbage, and the collector off (it would free some on its own)
    gc.collect()
    gc.disable()
    try:
        # when a fast_datetimes cursor reads timestamps and text and is closed
        with fast_datetimes(raw_cursor()) as cursor:
            cursor.execute("SELECT now(), 'x'::text, 1")
            cursor.fetchall()
        del cursor
        # then its transformer, loaders and dumpers were freed when it went: none in a cycle
        # (a loader keeping its transformer made about 100 objects of cyclic garbage per
        # small fill)
        assert gc.collect() == 0
    finally:
        gc.enable()
