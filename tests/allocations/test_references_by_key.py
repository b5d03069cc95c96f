"""Migration 0013: the allocation insert check looks its parents up by primary key however many a
statement names, but the allocations reversed (still joined past 64): the same refusals."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from allocations.models import Allocation
from tests.allocations.test_references import _copies_sql, _filled, _missing_id

pytestmark = pytest.mark.django_db


def _check_function() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = 'allocation_refs_check'")
        (text,) = cursor.fetchone()
    return str(text)


@pytest.mark.parametrize("missing", [False, True])
def test_a_statement_naming_more_users_than_64_is_checked_by_key(
    missing: bool, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and 70 more users (once joined to their table, now looked up by key)
    rows = _filled(three_accounts, instrument, broker, trader)
    user = get_user_model()
    users = [user.objects.create(username=f"u{n}").pk for n in range(70)]
    named = users + ([_missing_id(user)] if missing else [])
    # when one statement inserts a copy naming each of them as its author (and a missing one)
    with connection.cursor() as cursor:
        if missing:
            with (
                pytest.raises(IntegrityError, match="allocation names a user that does not exist"),
                transaction.atomic(),
            ):
                cursor.execute(_copies_sql(["created_by_id"]), [named, rows[0].pk])
        else:
            cursor.execute(_copies_sql(["created_by_id"]), [named, rows[0].pk])
    # then it is refused (nothing stored) with the missing one, and stored without it
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows])
    assert sorted(copies.values_list("created_by_id", flat=True)) == ([] if missing else users)


@pytest.mark.parametrize("missing", [False, True])
def test_a_statement_reversing_more_than_64_allocations_is_checked_by_the_join(
    missing: bool, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and 70 copies of its first row
    rows = _filled(three_accounts, instrument, broker, trader)
    with connection.cursor() as cursor:
        cursor.execute(_copies_sql(["broker_id"]), [[broker.pk] * 70, rows[0].pk])
    earlier = sorted(Allocation.objects.exclude(pk__in=[r.pk for r in rows]).values_list("pk"))
    reversed_ids = [pk for (pk,) in earlier]
    named = reversed_ids + ([_missing_id(Allocation)] if missing else [])
    # when one statement inserts a row reversing each of them (and a missing allocation)
    with connection.cursor() as cursor:
        if missing:
            with (
                pytest.raises(IntegrityError, match="allocation names an allocation that does"),
                transaction.atomic(),
            ):
                cursor.execute(_copies_sql(["reversal_of_id"]), [named, rows[0].pk])
        else:
            cursor.execute(_copies_sql(["reversal_of_id"]), [named, rows[0].pk])
    # then it is refused (nothing stored) with the missing one, and stored without it
    reversals = Allocation.objects.filter(reversal_of__isnull=False)
    assert sorted(reversals.values_list("reversal_of_id", flat=True)) == (
        [] if missing else reversed_ids
    )


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_one_join_and_going_back_restores_five(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given the check as migration 0013 leaves it: the allocations reversed alone joined
    assert _check_function().count("> 64") == 1
    assert "JOIN unnest(ids.ids_4)" in _check_function()  # ids_4: reversal_of
    try:
        # when migrated back to 0012, and forward again
        executor = MigrationExecutor(connection)
        executor.migrate([("allocations", "0012_allocation_all_references_by_triggers")])
        back = _check_function()
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    # then 0012's check (five joins) came back, and 0013's again
    assert back.count("> 64") == 5
    assert _check_function().count("> 64") == 1
    # and a fill still books and a missing broker is still refused
    rows = _filled(three_accounts, instrument, broker, trader)
    assert len(rows) == 3
    with (
        pytest.raises(IntegrityError, match="allocation names a broker that does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(_copies_sql(["broker_id"]), [[_missing_id(type(broker))], rows[0].pk])
