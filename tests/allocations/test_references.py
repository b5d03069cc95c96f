"""Allocation rows reference their execution, block, order, account, instrument and broker
through statement-level triggers (migration 0006, oms_site.references): the guarantees of the
foreign keys they replace, checked once per statement. Since migration 0008 a row's account and
instrument must be its order's, and are protected through the order (locked FOR SHARE; the
order's own foreign keys keep them) instead of being locked themselves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, cast

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction

from allocations.models import Account, Allocation, CashBalance, Position
from orders.models import Block, Broker, Execution, Instrument, Order
from tests import factories as f
from tests.allocations.support import block_100_200_300, fill, make_block

D = Decimal

_PARENTS = {
    "execution_id": (Execution, "orders_execution", "an execution"),
    "block_id": (Block, "orders_block", "a block"),
    "order_id": (Order, "orders_order", "an order"),
    "account_id": (Account, "allocations_account", "an account"),
    "instrument_id": (Instrument, "orders_instrument", "an instrument"),
    "broker_id": (Broker, "orders_broker", "a broker"),
}


def _missing_id(model: Any) -> int:
    return (model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000


def _filled(three_accounts: Any, instrument: Any, broker: Any, trader: Any) -> list[Allocation]:
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    return fill(placement, 60, "10.00")


def _copy_sql(column: str) -> str:
    """Copies of the given rows with one reference replaced (everything else as stored)."""
    fields = [
        f.column
        for f in Allocation._meta.concrete_fields
        if not f.primary_key and f.column != column
    ]
    names = ", ".join(f'"{c}"' for c in fields)
    return (
        f'INSERT INTO allocations_allocation ("{column}", {names}) '
        f"SELECT %s, {names} FROM allocations_allocation WHERE id = ANY(%s)"
    )


@pytest.mark.parametrize("column", sorted(_PARENTS))
def test_a_row_naming_a_missing_parent_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's three allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, _, noun = _PARENTS[column]
    # when two copies are inserted in one statement, one naming a parent that does not exist
    with (
        pytest.raises(IntegrityError, match=f"allocation names {noun} that does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(_copy_sql(column), [_missing_id(model), [rows[0].pk]])
    # then nothing was stored
    assert Allocation.objects.count() == 3


@pytest.mark.parametrize("column", sorted(_PARENTS))
def test_moving_a_row_to_a_missing_parent_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, _, noun = _PARENTS[column]
    before = getattr(rows[0], column)
    # when one is moved to a parent that does not exist
    with (
        pytest.raises(IntegrityError, match=f"allocation names {noun} that does not exist"),
        transaction.atomic(),
    ):
        Allocation.objects.filter(pk=rows[0].pk).update(**{column: _missing_id(model)})
    # then it still names its parent
    assert getattr(Allocation.objects.get(pk=rows[0].pk), column) == before


def test_rows_naming_existing_parents_are_accepted_and_a_null_block_too(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    # when a copy names another existing order with that order's account, another a second
    # existing broker, and another no block
    other = rows[2]
    spare = Broker.objects.create(code="SPARE", name="Spare")
    with connection.cursor() as cursor:
        cursor.execute(
            _copies_sql(["order_id", "account_id"]),
            [[other.order_id], [other.account_id], rows[0].pk],
        )
        cursor.execute(_copy_sql("broker_id"), [spare.pk, [rows[0].pk]])
        cursor.execute(_copy_sql("block_id"), [None, [rows[1].pk]])
    # then all three are stored
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows]).order_by("pk")
    assert [(c.order_id, c.account_id, c.broker_id, c.block_id) for c in copies] == [
        (other.order_id, other.account_id, rows[0].broker_id, rows[0].block_id),
        (rows[0].order_id, rows[0].account_id, spare.pk, rows[0].block_id),
        (rows[1].order_id, rows[1].account_id, rows[1].broker_id, None),
    ]


def _another_existing(column: str, three_accounts: Any) -> tuple[int, str]:
    """The id of an existing account (the third, not the first row's) or of a new instrument,
    for `column`, and the parent's noun."""
    other = {
        "account_id": lambda: three_accounts[2].pk,
        "instrument_id": lambda: cast(Any, f.InstrumentFactory(symbol="OTHR")).pk,
    }[column]()
    return other, _PARENTS[column][2]


@pytest.mark.parametrize("column", ["account_id", "instrument_id"])
def test_a_row_naming_an_existing_account_or_instrument_other_than_its_orders_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows, and another existing account and instrument
    rows = _filled(three_accounts, instrument, broker, trader)
    other, noun = _another_existing(column, three_accounts)
    # when one statement inserts a copy of its first row as stored and one naming the other
    # account (or instrument) for the same order
    with (
        pytest.raises(
            IntegrityError, match=f"^allocation names {noun} other than its order's"
        ) as raised,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(_copies_sql([column]), [[getattr(rows[0], column), other], rows[0].pk])
    # then it is refused as a check violation, nothing stored
    assert raised.value.__cause__.sqlstate == "23514"  # type: ignore[union-attr]
    assert Allocation.objects.count() == 3


def _copies_sql(columns: list[str]) -> str:
    """Copies of one stored row in one statement, a copy per element of the given references'
    arrays (one array parameter per column, then the row's id), everything else as stored."""
    fields = [
        f.column
        for f in Allocation._meta.concrete_fields
        if not f.primary_key and f.column not in columns
    ]
    names = ", ".join(f'a."{c}"' for c in fields)
    replaced = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join("%s::bigint[]" for _ in columns)
    picked = ", ".join(f"u.{c}" for c in columns)
    return (
        f"INSERT INTO allocations_allocation ({replaced}, {names.replace('a.', '')}) "
        f"SELECT {picked}, {names} FROM allocations_allocation AS a, "
        f"unnest({arrays}) AS u({', '.join(columns)}) WHERE a.id = %s"
    )


@pytest.mark.parametrize("column", sorted(_PARENTS))
def test_a_missing_parent_among_existing_ones_and_nulls_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's three allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, _, noun = _PARENTS[column]
    existing = getattr(rows[0], column)
    missing = _missing_id(model)
    # when one statement inserts copies naming the existing parent twice, the missing one twice
    # and (for the nullable block) no parent
    values = [existing, missing, existing, missing] + ([None] if column == "block_id" else [])
    with (
        pytest.raises(IntegrityError, match=f"allocation names {noun} that does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(_copies_sql([column]), [values, rows[0].pk])
    # then nothing was stored
    assert Allocation.objects.count() == 3


def test_several_missing_parents_name_the_first_in_reference_order(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    # when one statement inserts a copy naming a missing order and one naming a missing broker
    # (the broker's row first), and another a missing account and a missing instrument
    for columns, values, noun in (
        (
            ["order_id", "broker_id"],
            [[rows[0].order_id, _missing_id(Order)], [_missing_id(Broker), broker.pk]],
            "an order",
        ),
        (
            ["instrument_id", "account_id"],
            [[_missing_id(Instrument)], [_missing_id(Account)]],
            "an account",
        ),
    ):
        with (
            pytest.raises(IntegrityError, match=f"allocation names {noun} that does not exist"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(_copies_sql(columns), [*values, rows[0].pk])
    # then nothing was stored
    assert Allocation.objects.count() == 3


@pytest.mark.parametrize("missing", [False, True])
def test_a_statement_naming_more_parents_than_are_looked_up_one_by_one_is_checked_too(
    missing: bool, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and 70 more brokers (more than the 64 ids a check looks up one by
    # one: those of a bigger statement are joined to their table instead)
    rows = _filled(three_accounts, instrument, broker, trader)
    extra = Broker.objects.bulk_create(Broker(code=f"X{n}", name=f"X{n}") for n in range(70))
    brokers = [b.pk for b in extra] + ([_missing_id(Broker)] if missing else [])
    # when one statement inserts a copy naming each of them (and, once, a missing broker)
    with connection.cursor() as cursor:
        if missing:
            with (
                pytest.raises(IntegrityError, match="allocation names a broker that does not"),
                transaction.atomic(),
            ):
                cursor.execute(_copies_sql(["broker_id"]), [brokers, rows[0].pk])
        else:
            cursor.execute(_copies_sql(["broker_id"]), [brokers, rows[0].pk])
    # then it is refused (nothing stored) with the missing one, and stored without it
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows])
    assert sorted(copies.values_list("broker_id", flat=True)) == (
        [] if missing else sorted(brokers)
    )


def _seventy_orders(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> tuple[list[Account], list[Order]]:
    """70 new accounts (more than the ids a check looks up one by one) and a block of an order
    of 10 for each: (the accounts, their orders)."""
    extra = Account.objects.bulk_create(
        Account(
            code=f"X{n}",
            name=f"X{n}",
            client="X",
            custodian_id=three_accounts[0].custodian_id,
            custodian_account=f"X{n}",
            desk_id=three_accounts[0].desk_id,
        )
        for n in range(70)
    )
    _, orders, _ = make_block(
        instrument=instrument, accounts=extra, quantities=[10] * 70, user=trader, broker=broker
    )
    return extra, list(orders)


def test_a_statement_naming_more_orders_than_are_looked_up_one_by_one_is_checked_too(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a block of 70 more orders, one per new account
    rows = _filled(three_accounts, instrument, broker, trader)
    extra, orders = _seventy_orders(three_accounts, instrument, broker, trader)
    order_ids = [o.pk for o in orders]
    accounts = [a.pk for a in extra]
    # when one statement inserts a copy per order naming the next order's account (the last
    # the first's), and then one naming each order's own account
    with (
        pytest.raises(IntegrityError, match="allocation names an account other than its order's"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            _copies_sql(["order_id", "account_id"]),
            [order_ids, accounts[1:] + accounts[:1], rows[0].pk],
        )
    with connection.cursor() as cursor:
        cursor.execute(_copies_sql(["order_id", "account_id"]), [order_ids, accounts, rows[0].pk])
    # then the first is refused (nothing stored) and the second stored
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows])
    assert sorted(copies.values_list("order_id", "account_id")) == sorted(
        zip(order_ids, accounts, strict=True)
    )


def test_a_parent_deleted_earlier_in_the_transaction_is_refused(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a broker nobody names, deleted in this transaction
    rows = _filled(three_accounts, instrument, broker, trader)
    spare = Broker.objects.create(code="SPARE", name="Spare")
    with (
        pytest.raises(IntegrityError, match="allocation names a broker that does not exist"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM orders_broker WHERE id = %s", [spare.pk])
        # when a copy naming it is inserted
        cursor.execute(_copies_sql(["broker_id"]), [[spare.pk], rows[0].pk])
    # then it was refused and the delete rolled back with it
    assert Allocation.objects.count() == 3
    assert Broker.objects.filter(pk=spare.pk).exists()


def test_an_insert_of_no_rows_and_of_null_blocks_among_existing_ones_goes_through(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    with connection.cursor() as cursor:
        # when a statement inserts nothing, and one inserts copies naming no block and the block
        cursor.execute(_copies_sql(["block_id"]), [[None, rows[0].block_id], -1])
        cursor.execute(_copies_sql(["block_id"]), [[None, rows[0].block_id, None], rows[0].pk])
    # then the three copies are stored
    copies = Allocation.objects.exclude(pk__in=[r.pk for r in rows]).order_by("pk")
    assert [c.block_id for c in copies] == [None, rows[0].block_id, None]


@pytest.mark.parametrize("column", sorted(_PARENTS))
def test_deleting_renumbering_or_truncating_a_referenced_parent_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    model, table, _ = _PARENTS[column]
    parent = getattr(rows[0], column)
    # when the parent is deleted, renumbered or its table truncated in SQL
    for sql, params in (
        (f"DELETE FROM {table} WHERE id = %s", [parent]),
        (f"UPDATE {table} SET id = id + 100000 WHERE id = %s", [parent]),
        # (TRUNCATE refuses to run while deferred constraint checks of this test's set-up
        # are pending: run them first)
        (f"SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE {table} CASCADE", []),
    ):
        with (
            pytest.raises(IntegrityError, match="still referenced by allocations"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, params)
    # then the parent and the rows are still there
    assert model.objects.filter(pk=parent).exists()
    assert sorted(Allocation.objects.values_list("pk", flat=True)) == sorted(r.pk for r in rows)


def test_a_delete_of_an_unreferenced_parent_goes_through(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill, and a broker nobody's allocation names
    _filled(three_accounts, instrument, broker, trader)
    spare = Broker.objects.create(code="SPARE", name="Spare")
    # when it is deleted in SQL (and a delete that matches nothing runs)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM orders_broker WHERE id = %s", [spare.pk])
        cursor.execute("DELETE FROM orders_broker WHERE id = %s", [_missing_id(Broker)])
    # then it is gone
    assert not Broker.objects.filter(pk=spare.pk).exists()


def test_django_protects_the_parents_as_before(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's allocation rows
    rows = _filled(three_accounts, instrument, broker, trader)
    # when Django deletes the filled order (on_delete=PROTECT)
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError), transaction.atomic():
        Order.objects.get(pk=rows[0].order_id).delete()
    # then nothing was deleted
    assert Order.objects.filter(pk=rows[0].order_id).exists()
    assert Allocation.objects.count() == 3


def _one_order_block(three_accounts: Any, instrument: Any, trader: Any, broker: Any) -> Any:
    """The placement of a block of one order of 100 for the first account."""
    _, _, placement = make_block(
        instrument=instrument,
        accounts=three_accounts[:1],
        quantities=[100],
        user=trader,
        broker=broker,
    )
    return placement


def _delete_while_filling(
    placement: Any, statements: list[tuple[str, list[Any]]]
) -> tuple[list[str], list[Any], bool]:
    """A second connection runs the delete `statements` in SQL while a fill of 50 of
    `placement` is open: (the delete's outcome, the fill's rows, whether the delete was still
    waiting half a second into the fill)."""
    outcome: list[str] = []
    started = threading.Event()

    def delete() -> None:
        try:
            started.wait(10)
            with transaction.atomic(), connections["default"].cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '20s'")
                for sql, params in statements:
                    cursor.execute(sql, params)
            outcome.append("deleted")
        except IntegrityError as exc:
            outcome.append(str(exc).splitlines()[0])
        finally:
            connections["default"].close()

    worker = threading.Thread(target=delete)
    worker.start()
    with transaction.atomic():
        rows = fill(placement, 50, "10.00")
        started.set()
        worker.join(0.5)
        waiting = worker.is_alive()
    worker.join(20)
    return outcome, list(rows), waiting


@pytest.mark.django_db(transaction=True)
def test_a_parent_named_by_an_uncommitted_fill_waits_for_it_and_is_then_refused(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a broker that an allocation inserted but not yet committed names (the row lock
    # FOR KEY SHARE taken by the statement's check)
    placement = _one_order_block(three_accounts, instrument, trader, broker)
    # when a second connection deletes the broker in SQL while the fill is open
    outcome, rows, waiting = _delete_while_filling(
        placement, [("DELETE FROM orders_broker WHERE id = %s", [broker.pk])]
    )
    # then the delete was blocked on the broker's row lock while the fill was open
    assert waiting
    # and, once the fill committed, it saw its rows and was refused
    assert outcome == ["brokers still referenced by allocations"]
    assert Broker.objects.filter(pk=broker.pk).exists()
    assert [r.quantity for r in rows] == [D(50)]


@pytest.mark.django_db(transaction=True)
def test_an_account_named_by_an_uncommitted_fill_cannot_be_deleted(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given an account whose order an uncommitted fill holds (FOR UPDATE) and allocates to,
    # with its cash and position rows already there (a new one's foreign key would lock the
    # account at commit; the fill's allocations no longer do)
    placement = _one_order_block(three_accounts, instrument, trader, broker)
    account = three_accounts[0]
    CashBalance.objects.create(account=account, currency=instrument.currency)
    Position.objects.create(account=account, instrument=instrument)
    # when a second connection deletes the account in SQL while the fill is open (refused by
    # one of the foreign keys of the order, cash or position rows naming the account, at once
    # or after waiting for this fill's lock on that row)
    outcome, rows, _ = _delete_while_filling(
        placement,
        [
            ("DELETE FROM allocations_account_managers WHERE account_id = %s", [account.pk]),
            ("DELETE FROM allocations_account WHERE id = %s", [account.pk]),
        ],
    )
    # then the delete was refused and the fill committed: the account and its allocation are
    # there
    assert len(outcome) == 1
    assert 'update or delete on table "allocations_account" violates foreign key' in outcome[0]
    assert Account.objects.filter(pk=account.pk).exists()
    assert [(r.account_id, r.quantity) for r in rows] == [(account.pk, D(50))]
    assert Allocation.objects.get().account_id == account.pk


@pytest.mark.django_db(transaction=True)
def test_a_fill_does_not_wait_for_a_lock_held_on_its_accounts(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a block's first fill (its accounts' cash and position rows exist), and another
    # transaction holding the accounts FOR UPDATE (which a FOR KEY SHARE lock would wait for)
    _, _, placement = block_100_200_300(three_accounts, instrument, trader, broker)
    fill(placement, 60, "10.00")
    with _another_connection() as other:
        other.execute(
            "SELECT 1 FROM allocations_account WHERE id = ANY(%s) FOR UPDATE",
            [[a.pk for a in three_accounts]],
        )
        # when the next fill is applied with a short lock timeout
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            rows = fill(placement, 120, "10.00")
    # then it was booked without waiting, each row with its order's account
    assert [(r.account_id, r.quantity) for r in rows] == [
        (three_accounts[0].pk, D(20)),
        (three_accounts[1].pk, D(40)),
        (three_accounts[2].pk, D(60)),
    ]
    assert Allocation.objects.count() == 6


@pytest.mark.django_db(transaction=True)
def test_an_update_that_keeps_the_references_locks_no_parent(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given committed allocation rows, and another transaction holding their order FOR UPDATE
    # (as a fill of that block does while it waits for a cash row)
    rows = _filled(three_accounts, instrument, broker, trader)
    with _another_connection() as other:
        other.execute("SELECT 1 FROM orders_order WHERE id = %s FOR UPDATE", [rows[0].order_id])
        # when the rows' cash is settled (no reference changes)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '3s'")
            settled = Allocation.objects.filter(pk__in=[r.pk for r in rows]).update(
                cash_settled=True
            )
        # then it did not wait for the order's lock
        assert settled == 3
        # while moving a row to that order does wait for it (the reference's check locks it)
        with (
            pytest.raises(OperationalError, match="lock timeout"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SET LOCAL lock_timeout = '500ms'")
            Allocation.objects.filter(pk=rows[1].pk).update(order_id=rows[0].order_id)
    assert Allocation.objects.filter(cash_settled=True).count() == 3
    assert Allocation.objects.get(pk=rows[1].pk).order_id == rows[1].order_id


@contextmanager
def _another_connection() -> Iterator[psycopg.Connection[Any]]:
    """A second connection to the test database (its transaction rolled back, then closed)."""
    other = psycopg.connect(_dsn())
    try:
        yield other
    finally:
        other.rollback()
        other.close()


def _dsn() -> str:
    s = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=s["NAME"],
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
        host=s["HOST"] or None,
        port=s["PORT"] or None,
    )


@pytest.mark.parametrize("column", ["account_id", "instrument_id"])
def test_an_update_to_an_account_or_instrument_other_than_its_orders_is_refused(
    column: str, three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows, and another existing account and instrument
    rows = _filled(three_accounts, instrument, broker, trader)
    other, noun = _another_existing(column, three_accounts)
    before = sorted(Allocation.objects.values_list("pk", "order_id", "account_id", "instrument_id"))
    # when the first row is moved to the other account (or instrument), its order kept
    with (
        pytest.raises(
            IntegrityError, match=f"^allocation names {noun} other than its order's"
        ) as raised,
        transaction.atomic(),
    ):
        Allocation.objects.filter(pk=rows[0].pk).update(**{column: other})
    # then it is refused as a check violation, nothing changed
    assert raised.value.__cause__.sqlstate == "23514"  # type: ignore[union-attr]
    assert (
        sorted(Allocation.objects.values_list("pk", "order_id", "account_id", "instrument_id"))
        == before
    )


def test_an_update_to_another_order_is_refused_unless_account_and_instrument_move_with_it(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows (one per order, each order of its own account)
    rows = _filled(three_accounts, instrument, broker, trader)
    first, other = rows[0], rows[2]
    # when the first row is moved to the third row's order keeping its account
    with (
        pytest.raises(
            IntegrityError, match=r"^allocation names an account other than its order's"
        ) as raised,
        transaction.atomic(),
    ):
        Allocation.objects.filter(pk=first.pk).update(order_id=other.order_id)
    # then it is refused (23514) and still names its order and account
    assert raised.value.__cause__.sqlstate == "23514"  # type: ignore[union-attr]
    assert Allocation.objects.values_list("order_id", "account_id").get(pk=first.pk) == (
        first.order_id,
        first.account_id,
    )
    # and when it is moved to that order with that order's account, it is accepted
    moved = Allocation.objects.filter(pk=first.pk).update(
        order_id=other.order_id, account_id=other.account_id
    )
    assert moved == 1
    assert Allocation.objects.values_list("order_id", "account_id", "instrument_id").get(
        pk=first.pk
    ) == (other.order_id, other.account_id, instrument.pk)


def test_an_update_naming_its_orders_account_and_instrument_again_is_accepted(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows, the first moved in SQL (trigger disabled) to another account
    rows = _filled(three_accounts, instrument, broker, trader)
    with connection.cursor() as cursor:
        # (ALTER TABLE refuses to run while deferred constraint checks are pending)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE allocations_allocation DISABLE TRIGGER allocation_refs_update")
        cursor.execute(
            "UPDATE allocations_allocation SET account_id = %s WHERE id = %s",
            [three_accounts[1].pk, rows[0].pk],
        )
        cursor.execute("ALTER TABLE allocations_allocation ENABLE TRIGGER allocation_refs_update")
    # when it is updated to name its order's account (and instrument) again
    updated = Allocation.objects.filter(pk=rows[0].pk).update(
        account_id=rows[0].account_id, instrument_id=instrument.pk
    )
    # then it is accepted
    assert updated == 1
    assert Allocation.objects.get(pk=rows[0].pk).account_id == three_accounts[0].pk


def test_a_missing_account_in_an_update_is_refused_as_missing_before_the_orders_check(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows
    rows = _filled(three_accounts, instrument, broker, trader)
    # when the first row names a missing account and a missing broker in one update
    with (
        pytest.raises(
            IntegrityError, match=r"^allocation names an account that does not exist"
        ) as raised,
        transaction.atomic(),
    ):
        Allocation.objects.filter(pk=rows[0].pk).update(
            account_id=_missing_id(Account), broker_id=_missing_id(Broker)
        )
    # then the account is named (the references' order), as a foreign-key violation
    assert raised.value.__cause__.sqlstate == "23503"  # type: ignore[union-attr]
    assert Allocation.objects.get(pk=rows[0].pk).account_id == rows[0].account_id


@pytest.mark.django_db(transaction=True)
def test_an_update_tied_to_its_order_waits_for_a_writer_of_that_order(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given committed rows, and another transaction holding the first row's order FOR UPDATE
    # (it could change the order's account)
    rows = _filled(three_accounts, instrument, broker, trader)
    with _another_connection() as other:
        other.execute("SELECT 1 FROM orders_order WHERE id = %s FOR UPDATE", [rows[0].order_id])
        # when the row's account is named again (a tied column changes: the order is locked)
        with (
            pytest.raises(OperationalError, match="lock timeout"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SET LOCAL lock_timeout = '500ms'")
            cursor.execute(
                "UPDATE allocations_allocation SET account_id = %s, instrument_id = %s "
                "WHERE id = %s",
                [three_accounts[1].pk, instrument.pk, rows[0].pk],
            )
    # then it waited for the order's lock, and nothing changed
    assert Allocation.objects.get(pk=rows[0].pk).account_id == rows[0].account_id


@pytest.mark.django_db(transaction=True)
def test_an_insert_holds_its_orders_against_a_change_of_their_account_until_it_ends(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given committed rows, and an open transaction that inserted copies of two of them (their
    # orders not locked by it beforehand: the insert's check locks them FOR SHARE)
    rows = _filled(three_accounts, instrument, broker, trader)
    with _another_connection() as other, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _copies_sql(["order_id", "account_id"]),
            [
                [rows[2].order_id, rows[0].order_id],
                [rows[2].account_id, rows[0].account_id],
                rows[0].pk,
            ],
        )
        # when another connection moves one of those orders to another account
        other.execute("SET lock_timeout = '500ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(
                "UPDATE orders_order SET account_id = %s WHERE id = %s",
                [rows[1].account_id, rows[0].order_id],
            )
        other.rollback()
        # then it waited for the insert's lock (and the order it did not name is free)
        other.execute(
            "SELECT 1 FROM orders_order WHERE id = %s FOR UPDATE NOWAIT", [rows[1].order_id]
        )
        other.rollback()
    assert Order.objects.get(pk=rows[0].order_id).account_id == rows[0].account_id
    assert Allocation.objects.count() == 5


def test_the_insert_check_locks_the_rows_orders_in_one_pass_not_one_per_row(
    three_accounts: Any, instrument: Any, broker: Any, trader: Any
) -> None:
    # given a fill's rows and a block of 70 more orders
    rows = _filled(three_accounts, instrument, broker, trader)
    extra, orders = _seventy_orders(three_accounts, instrument, broker, trader)
    # when one statement inserts a row per order, with the plans (and row counts) of the
    # statements run by its trigger logged (auto_explain)
    notes: list[str] = []
    raw = cast(Any, connection.connection)

    def note(diagnostic: Any) -> None:
        notes.append(diagnostic.message_primary or "")

    raw.add_notice_handler(note)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            cursor.execute("SET LOCAL auto_explain.log_min_duration = 0")
            cursor.execute("SET LOCAL auto_explain.log_nested_statements = on")
            cursor.execute("SET LOCAL auto_explain.log_analyze = on")
            cursor.execute("SET LOCAL auto_explain.log_level = notice")
            cursor.execute("SET LOCAL client_min_messages = notice")
            cursor.execute(
                _copies_sql(["order_id", "account_id"]),
                [[o.pk for o in orders], [a.pk for a in extra], rows[0].pk],
            )
    finally:
        raw.remove_notice_handler(note)
    # then they were stored, and the check locked the 70 orders (FOR SHARE) in one pass of
    # one lock node over the orders read in id order, not in a lock node run once per row
    assert Allocation.objects.count() == 73
    check = next(n for n in notes if "FOR SHARE OF p" in n and "ANY(ids.orders)" in n)
    lines = check.splitlines()
    scan = next(k for k, line in enumerate(lines) if "on orders_order p" in line)
    lock = next(line for line in reversed(lines[:scan]) if "LockRows" in line)
    assert "rows=70 loops=1)" in lock
