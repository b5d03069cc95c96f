"""An allocation's reversal_of (the allocation it reverses) and created_by (a user) are enforced
by triggers since migration 0012, as its six other references are (oms_site.references): an
insert or a changed reference naming a missing parent is refused, and so is deleting,
renumbering or truncating a referenced allocation or user, each with SQLSTATE 23503."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, connection, transaction

from allocations.models import Allocation
from tests.allocations.test_references import (
    _another_connection,
    _copies_sql,
    _filled,
    _missing_id,
)

User = get_user_model()

_ADDED = {
    "reversal_of_id": (Allocation, "allocations_allocation", "an allocation"),
    "created_by_id": (User, "auth_user", "a user"),
}


def _stored() -> list[tuple[int, int | None, int | None]]:
    return list(
        Allocation.objects.order_by("pk").values_list("pk", "reversal_of_id", "created_by_id")
    )


def _sqlstate(raised: Any) -> str:
    return raised.value.__cause__.sqlstate  # type: ignore[no-any-return]


def test_the_allocation_table_has_no_foreign_key_constraint_left(db: None) -> None:
    # given the migrated schema
    # when the allocation table's constraints are listed
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint"
            " WHERE conrelid = 'allocations_allocation'::regclass AND contype = 'f'"
        )
        (count,) = cursor.fetchone()
    # then none is a foreign key (no per-row after-trigger event queued by an insert)
    assert count == 0


@pytest.mark.parametrize("column", sorted(_ADDED))
def test_a_row_naming_a_missing_reversed_allocation_or_user_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's three allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, _, noun = _ADDED[column]
    before = _stored()
    # when three copies are inserted in one statement, one naming a parent that does not exist
    # among one naming an existing one and one naming none
    existing = rows[0].pk if column == "reversal_of_id" else trader.pk
    with (
        pytest.raises(
            IntegrityError, match=f"allocation names {noun} that does not exist"
        ) as raised,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(_copies_sql([column]), [[existing, None, _missing_id(model)], rows[1].pk])
    # then it was refused as a foreign key refuses, and nothing was stored
    assert _sqlstate(raised) == "23503"
    assert _stored() == before


@pytest.mark.parametrize("column", sorted(_ADDED))
def test_moving_a_row_to_a_missing_reversed_allocation_or_user_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, _, noun = _ADDED[column]
    before = _stored()
    # when one is moved to a parent that does not exist
    with (
        pytest.raises(
            IntegrityError, match=f"allocation names {noun} that does not exist"
        ) as raised,
        transaction.atomic(),
    ):
        Allocation.objects.filter(pk=rows[2].pk).update(**{column: _missing_id(model)})
    # then it was refused and nothing changed
    assert _sqlstate(raised) == "23503"
    assert _stored() == before


def test_rows_naming_existing_allocations_and_users_are_accepted(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any, pm: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    # when copies name an existing allocation and user, another none, and a row is updated to
    # name another allocation and user, then none
    with connection.cursor() as cursor:
        cursor.execute(
            _copies_sql(["reversal_of_id", "created_by_id"]),
            [[rows[0].pk, None], [trader.pk, None], rows[1].pk],
        )
    Allocation.objects.filter(pk=rows[2].pk).update(reversal_of_id=rows[1].pk, created_by_id=pm.pk)
    Allocation.objects.filter(pk=rows[1].pk).update(reversal_of_id=None, created_by_id=None)
    # then all are stored as written
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows]).order_by("pk")
    assert [(c.reversal_of_id, c.created_by_id) for c in copies] == [
        (rows[0].pk, trader.pk),
        (None, None),
    ]
    assert Allocation.objects.get(pk=rows[2].pk).reversal_of_id == rows[1].pk
    assert Allocation.objects.get(pk=rows[2].pk).created_by_id == pm.pk
    assert Allocation.objects.get(pk=rows[1].pk).created_by_id is None


def test_a_row_naming_a_row_inserted_by_the_same_statement_is_accepted(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows, and two ids taken from the table's sequence
    rows = _filled(three_accounts, instrument, broker, trader)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('allocations_allocation', 'id'))"
            " FROM generate_series(1, 2)"
        )
        first, second = (r[0] for r in cursor.fetchall())
        # when one statement inserts two copies, the second naming the first (checked at the
        # end of the statement, as the deferred foreign key checked at commit)
        cursor.execute(
            _copies_sql(["id", "reversal_of_id"]), [[first, second], [None, first], rows[0].pk]
        )
    # then both are stored
    assert list(
        Allocation.objects.filter(pk__in=[first, second])
        .order_by("pk")
        .values_list("pk", "reversal_of_id")
    ) == [(first, None), (second, first)]


def _with_reversal(rows: list[Allocation]) -> Allocation:
    """A copy of the first row naming it as the allocation it reverses (the reversal)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _copies_sql(["reversal_of_id"]) + " RETURNING id", [[rows[0].pk], rows[0].pk]
        )
        (pk,) = cursor.fetchone()
    return Allocation.objects.get(pk=pk)


def test_deleting_renumbering_or_truncating_a_referenced_user_is_refused(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows, one naming its author
    rows = _filled(three_accounts, instrument, broker, trader)
    Allocation.objects.filter(pk=rows[0].pk).update(created_by_id=trader.pk)
    before = _stored()
    # when the user is deleted, renumbered or its table truncated in SQL (the other tables'
    # deferred foreign keys would only be checked at commit)
    for sql, params, message in (
        ("DELETE FROM auth_user WHERE id = %s", [trader.pk], "users still referenced"),
        (
            "UPDATE auth_user SET id = id + 100000 WHERE id = %s",
            [trader.pk],
            f"auth_user {trader.pk} is still referenced",
        ),
        # (CASCADE empties the tables naming users by foreign key, not the allocations)
        ("SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE auth_user CASCADE", [], "still referenced"),
    ):
        with (
            pytest.raises(IntegrityError, match=f"{message} by allocations") as raised,
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, params)
        # then each was refused as a foreign key refuses
        assert _sqlstate(raised) == "23503"
    # and the user and the rows are still there
    assert User.objects.filter(pk=trader.pk).exists()
    assert _stored() == before


def test_deleting_or_renumbering_only_a_reversed_allocation_is_refused(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a reversal of its first one
    rows = _filled(three_accounts, instrument, broker, trader)
    reversal = _with_reversal(rows)
    before = _stored()
    # when the reversed row is deleted without its reversal, or renumbered
    for sql, message in (
        ("DELETE FROM allocations_allocation WHERE id = %s", "allocations still referenced"),
        (
            "UPDATE allocations_allocation SET id = id + 100000 WHERE id = %s",
            f"allocations_allocation {rows[0].pk} is still referenced",
        ),
    ):
        with (
            pytest.raises(IntegrityError, match=f"{message} by allocations") as raised,
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [rows[0].pk])
        # then each was refused as a foreign key refuses
        assert _sqlstate(raised) == "23503"
    # and nothing changed
    assert _stored() == before
    assert reversal.reversal_of_id == rows[0].pk


def test_deleting_a_reversed_allocation_with_its_reversal_or_truncating_them_goes_through(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a reversal of its first one
    rows = _filled(three_accounts, instrument, broker, trader)
    reversal = _with_reversal(rows)
    with connection.cursor() as cursor:
        # when one statement deletes the reversed row and its reversal
        cursor.execute(
            "DELETE FROM allocations_allocation WHERE id = ANY(%s)", [[rows[0].pk, reversal.pk]]
        )
        # then both are gone and the others remain
        assert sorted(Allocation.objects.values_list("pk", flat=True)) == [rows[1].pk, rows[2].pk]
        # and when another reversal is made and the table is truncated
        _with_reversal(rows[1:])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE allocations_allocation CASCADE")
    # then the table is empty
    assert not Allocation.objects.exists()


def test_a_delete_of_an_unreferenced_user_goes_through(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill (no row names a user) and a user nobody references
    rows = _filled(three_accounts, instrument, broker, trader)
    spare = User.objects.create(username="spare")
    # when it is deleted in SQL
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM auth_user WHERE id = %s", [spare.pk])
    # then it is gone and the fill's rows are there
    assert not User.objects.filter(pk=spare.pk).exists()
    assert Allocation.objects.count() == len(rows) == 3


def test_django_protects_a_reversed_allocation_as_before(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a reversal of its first one
    from django.db.models import ProtectedError

    rows = _filled(three_accounts, instrument, broker, trader)
    _with_reversal(rows)
    before = _stored()
    # when Django deletes the reversed row (on_delete=PROTECT)
    with pytest.raises(ProtectedError), transaction.atomic():
        Allocation.objects.get(pk=rows[0].pk).delete()
    # then nothing was deleted
    assert _stored() == before


@pytest.mark.django_db(transaction=True)
def test_an_uncommitted_insert_locks_the_user_it_names_against_a_delete(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's committed rows, and a copy naming its author inserted but not committed
    rows = _filled(three_accounts, instrument, broker, trader)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_copies_sql(["created_by_id"]), [[trader.pk], rows[0].pk])
        # when a second connection tries to lock the user as a delete would
        with _another_connection() as other, pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT 1 FROM auth_user WHERE id = %s FOR UPDATE NOWAIT", [trader.pk])
        # then it could not (the insert's check holds the user FOR KEY SHARE, as a foreign key
        # check would), while a lock that does not conflict is granted
        with _another_connection() as other:
            assert other.execute(
                "SELECT 1 FROM auth_user WHERE id = %s FOR NO KEY UPDATE NOWAIT", [trader.pk]
            ).fetchall() == [(1,)]
    assert Allocation.objects.filter(created_by_id=trader.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_save_that_keeps_reversal_of_and_author_locks_neither_while_a_change_does(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given committed rows, the second naming its author and reversing the first, and another
    # transaction holding that user and the first row FOR UPDATE
    rows = _filled(three_accounts, instrument, broker, trader)
    Allocation.objects.filter(pk=rows[1].pk).update(
        reversal_of_id=rows[0].pk, created_by_id=trader.pk
    )
    with _another_connection() as other:
        other.execute("SELECT 1 FROM auth_user WHERE id = %s FOR UPDATE", [trader.pk])
        other.execute("SELECT 1 FROM allocations_allocation WHERE id = %s FOR UPDATE", [rows[0].pk])
        # when the second row is saved whole (every column written, the references unchanged)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '3s'")
            row = Allocation.objects.get(pk=rows[1].pk)
            row.cash_settled = True
            row.save()
        # then it did not wait for either lock
        assert Allocation.objects.get(pk=rows[1].pk).cash_settled is True
        # while naming that user or that row in another one does wait (its check locks it)
        for column, parent in (("created_by_id", trader.pk), ("reversal_of_id", rows[0].pk)):
            with (
                pytest.raises(OperationalError, match="lock timeout"),
                transaction.atomic(),
                connection.cursor() as cursor,
            ):
                cursor.execute("SET LOCAL lock_timeout = '500ms'")
                Allocation.objects.filter(pk=rows[2].pk).update(**{column: parent})
    assert _stored() == [
        (rows[0].pk, None, None),
        (rows[1].pk, rows[0].pk, trader.pk),
        (rows[2].pk, None, None),
    ]
