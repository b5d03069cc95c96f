"""A check's results are stored as one row of arrays per order (compliance migration 0004) and
read through the `compliance_complianceresult` view, one row per rule, as before."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from compliance.models import (
    RESULT_ID_SHIFT,
    ComplianceResult,
    ComplianceResultSet,
    RestrictedEntry,
)
from orders.models import Order
from tests.compliance.conftest import check, results_of

D = Decimal


def _checked_against_two_rules(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> tuple[Order, ComplianceResult, ComplianceResult]:
    """An order of 5 checked against "a size" (max 10: pass) and "b size" (max 1: block); the
    order and its two results."""
    make_rule("fat_finger", params={"max_quantity": "10"}, name="a size")
    make_rule("fat_finger", params={"max_quantity": "1"}, name="b size")
    order = make_order(account, instrument, quantity="5")
    check([order])
    first, second = results_of(order)
    return order, first, second


def _sets() -> list[tuple[Any, ...]]:
    return list(
        ComplianceResultSet.objects.order_by("pk").values_list(
            "order_id", "rule_ids", "rule_names", "outcomes", "measured", "limits"
        )
    )


def test_each_checked_order_is_one_stored_row_listed_per_rule_by_the_view(
    account: Any,
    instrument: Any,
    make_rule: Any,
    make_order: Any,
    insert_mode: int,
) -> None:
    # given a size rule and a restricted list, and three orders, one of them too large
    size = make_rule("fat_finger", params={"max_quantity": "100"}, name="size")
    listed = make_rule("restricted_list", name="listed")
    orders = [
        make_order(account, instrument, quantity="5"),
        make_order(account, instrument, quantity="500"),
        make_order(account, instrument, quantity="100"),
    ]
    # when
    outcomes = check(orders)
    # then one row per order, its results as arrays in rule order
    assert outcomes == {orders[0].pk: "pass", orders[1].pk: "block", orders[2].pk: "pass"}
    rule_ids = sorted([size.pk, listed.pk])
    names = ["size" if pk == size.pk else "listed" for pk in rule_ids]
    sets = _sets()
    assert [(s[0], s[1], s[2]) for s in sets] == [(o.pk, rule_ids, names) for o in orders]
    by_order = {s[0]: s for s in sets}
    at = names.index("size")
    assert [by_order[o.pk][3][at] for o in orders] == ["pass", "block", "pass"]
    assert [by_order[o.pk][4][at] for o in orders] == [D("5"), D("500"), D("100")]
    assert [by_order[o.pk][5][at] for o in orders] == [D("100")] * 3
    # and the view lists them one per rule, ids in check order, then rule order
    stored = ComplianceResultSet.objects.order_by("pk")
    expected_ids = [(s.pk << RESULT_ID_SHIFT) | n for s in stored for n in (1, 2)]
    assert list(ComplianceResult.objects.order_by("pk").values_list("pk", flat=True)) == (
        expected_ids
    )
    big = results_of(orders[1])
    assert [(r.rule_id, r.rule_name, r.outcome) for r in big] == [
        (pk, name, "block" if name == "size" else "pass")
        for pk, name in zip(rule_ids, names, strict=True)
    ]
    assert {r.checked_at for r in big} == {stored[1].checked_at}


def test_text_with_array_syntax_survives_both_ways(
    account: Any,
    instrument: Any,
    make_rule: Any,
    make_order: Any,
    insert_mode: int,
) -> None:
    # given a rule name and a restriction reason full of array-literal and COPY syntax
    name = 'List "A", {b} NULL \\ c'
    reason = 'He said "no", {x}\\y\tz\nNULL, "" — Zürich'
    make_rule("restricted_list", name=name)
    make_rule("fat_finger", params={"max_quantity": "10"}, name="size")
    RestrictedEntry.objects.create(instrument=instrument, reason=reason)
    order = make_order(account, instrument, quantity="5")
    # when
    assert check([order]) == {order.pk: "block"}
    # then both texts come back exactly
    rows = {r.rule_name: r for r in results_of(order)}
    assert set(rows) == {name, "size"}
    assert reason in rows[name].message
    assert rows[name].outcome == "block"
    assert (rows["size"].outcome, rows["size"].measured) == ("pass", D("5"))


def test_deleting_one_result_through_the_view_keeps_the_others_and_their_ids(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given an order checked against two rules
    order, first, second = _checked_against_two_rules(account, instrument, make_rule, make_order)
    # when the first result is deleted
    assert ComplianceResult.objects.filter(pk=first.pk).delete()[0] == 1
    # then the second is unchanged, id included, and the set keeps the first's place empty
    [left] = results_of(order)
    assert (left.pk, left.rule_name, left.outcome) == (second.pk, "b size", "block")
    [(_, rule_ids, _, outcomes, _, _)] = _sets()
    assert (rule_ids, outcomes) == ([None, second.rule_id], [None, "block"])
    # when the last one goes too, then so does the set
    ComplianceResult.objects.filter(pk=second.pk).delete()
    assert results_of(order) == []
    assert ComplianceResultSet.objects.count() == 0


def test_updating_a_result_through_the_view_changes_that_result_only(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given an order checked against two rules
    order, first, second = _checked_against_two_rules(account, instrument, make_rule, make_order)
    # when the second's message and outcome change
    ComplianceResult.objects.filter(pk=second.pk).update(message="reviewed", outcome="warn")
    # then only it changed, in place
    after = results_of(order)
    assert [(r.pk, r.rule_name, r.outcome, r.message) for r in after] == [
        (first.pk, "a size", "pass", first.message),
        (second.pk, "b size", "warn", "reviewed"),
    ]
    assert ComplianceResultSet.objects.count() == 1


def test_moving_one_result_to_another_check_time_splits_it_off(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given an order checked against two rules
    order, first, second = _checked_against_two_rules(account, instrument, make_rule, make_order)
    earlier = first.checked_at - timedelta(minutes=1)
    # when only the first's check time changes
    ComplianceResult.objects.filter(pk=first.pk).update(checked_at=earlier)
    # then it sits in a set of its own with that time; the second keeps its id and time
    after = {r.rule_name: r for r in results_of(order)}
    assert after["a size"].checked_at == earlier
    assert after["a size"].pk != first.pk
    assert (after["b size"].pk, after["b size"].checked_at) == (second.pk, second.checked_at)
    assert sorted(s.checked_at for s in ComplianceResultSet.objects.all()) == [
        earlier,
        second.checked_at,
    ]


def test_a_result_without_outcome_is_refused_through_the_view(
    account: Any, instrument: Any, make_order: Any
) -> None:
    # given an order
    order = make_order(account, instrument)
    # when a result without an outcome is inserted
    with pytest.raises(IntegrityError, match="NOT NULL"), transaction.atomic():
        ComplianceResult.objects.create(
            order=order,
            rule_name="size",
            rule_type="fat_finger",
            rule_version=1,
            outcome=None,
            message="m",
        )
    # then nothing is stored
    assert ComplianceResultSet.objects.count() == 0


@pytest.mark.parametrize(
    "column, value",
    [("outcomes", "ARRAY['pass', 'pass']"), ("rule_names", "ARRAY[NULL]::text[]")],
    ids=["lengths differ", "null name"],
)
def test_a_malformed_set_is_refused(
    account: Any, instrument: Any, make_order: Any, column: str, value: str
) -> None:
    # given an order
    order = make_order(account, instrument)
    values = {
        "rule_ids": "ARRAY[NULL]::bigint[]",
        "rule_names": "ARRAY['size']",
        "rule_types": "ARRAY['fat_finger']",
        "rule_versions": "ARRAY[1]",
        "outcomes": "ARRAY['pass']",
        "messages": "ARRAY['m']",
        "measured": "ARRAY[NULL]::numeric[]",
        "limits": "ARRAY[NULL]::numeric[]",
        column: value,
    }
    # when a set whose arrays break the shape is written in SQL
    with (
        pytest.raises(IntegrityError, match="compliance_resultset_shape"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            f"INSERT INTO {ComplianceResultSet._meta.db_table}"
            f" (order_id, checked_at, {', '.join(values)}) VALUES (%s, now(), "
            + ", ".join(values.values())
            + ")",
            [order.pk],
        )
    # then nothing is stored
    assert ComplianceResultSet.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_results_into_sets_and_back(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given one row per result, as before migration 0004: two checks of one order, one of another
    rule = make_rule("fat_finger", params={"max_quantity": "10"}, name="size")
    one, two = make_order(account, instrument), make_order(account, instrument)
    before, after = "0003_result_references_by_statement_triggers", "0004_results_stored_per_order"
    executor = MigrationExecutor(connection)
    executor.migrate([("compliance", before)])
    t1 = timezone.now() - timedelta(minutes=5)
    t2 = timezone.now()
    old_rows = [
        (one.pk, rule.pk, "size", 1, "block", "too big", D("100"), D("10"), t1),
        (one.pk, None, "gone", 3, "pass", "ok", None, None, t1),
        (two.pk, rule.pk, "size", 1, "pass", "ok", D("5"), D("10"), t1),
        (one.pk, rule.pk, "size", 2, "pass", "fine", D("100"), D("1000"), t2),
    ]
    try:
        with connection.cursor() as cursor:
            for row in old_rows:
                cursor.execute(
                    "INSERT INTO compliance_complianceresult (order_id, rule_id, rule_name,"
                    ' rule_type, rule_version, outcome, message, measured, "limit", checked_at)'
                    " VALUES (%s, %s, %s, 'fat_finger', %s, %s, %s, %s, %s, %s)",
                    row,
                )
        # when
        executor = MigrationExecutor(connection)
        executor.migrate([("compliance", after)])
        # then one set per order and check time, in the order of the rows
        assert _sets() == [
            (
                one.pk,
                [rule.pk, None],
                ["size", "gone"],
                ["block", "pass"],
                [D("100"), None],
                [D("10"), None],
            ),
            (two.pk, [rule.pk], ["size"], ["pass"], [D("5")], [D("10")]),
            (one.pk, [rule.pk], ["size"], ["pass"], [D("100")], [D("1000")]),
        ]
        listed = ComplianceResult.objects.order_by("pk").values_list(
            "order_id",
            "rule_id",
            "rule_name",
            "rule_version",
            "outcome",
            "message",
            "measured",
            "limit",
            "checked_at",
        )
        expected = [old_rows[0], old_rows[1], old_rows[2], old_rows[3]]
        assert list(listed) == expected
        # when migrated back
        executor = MigrationExecutor(connection)
        executor.migrate([("compliance", before)])
        # then one row per result again, in the same order
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT order_id, rule_id, rule_name, rule_version, outcome, message, measured,"
                ' "limit", checked_at FROM compliance_complianceresult ORDER BY id'
            )
            assert cursor.fetchall() == expected
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    # and the references are enforced again after the round trip
    with pytest.raises(IntegrityError, match="referenced by compliance results"):
        Order.objects.filter(pk=one.pk)._raw_delete(connection.alias)


def test_results_read_from_the_sets_equal_the_views_rows_field_by_field(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    from compliance.selectors import compliance_results_of

    # given an order checked twice (its first check's first result deleted), one checked once
    # with a measured and a limit value, and one never checked
    make_rule("fat_finger", params={"max_quantity": "10"}, name="a size")
    make_rule("restricted_list", name="listed")
    twice = make_order(account, instrument, quantity="5")
    once = make_order(account, instrument, quantity="50")
    never = make_order(account, instrument, quantity="1")
    check([twice, once])
    check([twice])
    first = ComplianceResult.objects.filter(order=twice).order_by("pk")[0]
    ComplianceResult.objects.filter(pk=first.pk).delete()
    fields = [f.attname for f in ComplianceResult._meta.concrete_fields]
    # when
    got = compliance_results_of(order_ids=[twice.pk, once.pk, never.pk])
    # then each order's rows are the view's rows, in id order, every field equal
    for order in (twice, once, never):
        expected = [
            tuple(getattr(r, name) for name in fields)
            for r in ComplianceResult.objects.filter(order=order).order_by("pk")
        ]
        assert [tuple(getattr(r, name) for name in fields) for r in got[order.pk]] == expected
    assert [len(got[o.pk]) for o in (twice, once, never)] == [3, 2, 0]
    assert [(r.rule_name, r.outcome, r.measured, r.limit) for r in got[once.pk]] == [
        ("a size", "block", D("50"), D("10")),
        ("listed", "pass", None, None),
    ]
