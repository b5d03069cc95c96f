"""Results reference their order and rule through statement-level triggers (migration 0003):
the same guarantees as the foreign keys they replace, checked once per statement."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from compliance.models import ComplianceResult, Rule
from orders.models import Order
from tests.compliance.conftest import check, results_of


def _result(order_id: int, rule_id: int | None) -> ComplianceResult:
    return ComplianceResult(
        order_id=order_id,
        rule_id=rule_id,
        rule_name="size",
        rule_type="fat_finger",
        rule_version=1,
        outcome="pass",
        message="ok",
    )


def _missing_id(model: Any) -> int:
    return (model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000


def test_a_result_naming_a_missing_order_is_refused(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given a rule and an order
    rule = make_rule("fat_finger", params={"max_quantity": "10"})
    order = make_order(account, instrument)
    # when one of two results names an order that does not exist
    with (
        pytest.raises(IntegrityError, match="names an order that does not exist"),
        transaction.atomic(),
    ):
        ComplianceResult.objects.bulk_create(
            [_result(order.pk, rule.pk), _result(_missing_id(Order), rule.pk)]
        )
    # then nothing was stored
    assert ComplianceResult.objects.count() == 0


def test_a_result_naming_a_missing_rule_is_refused(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given a rule and an order
    rule = make_rule("fat_finger", params={"max_quantity": "10"})
    order = make_order(account, instrument)
    # when a result names a rule that does not exist
    with (
        pytest.raises(IntegrityError, match="names a rule that does not exist"),
        transaction.atomic(),
    ):
        ComplianceResult.objects.bulk_create(
            [_result(order.pk, rule.pk), _result(order.pk, _missing_id(Rule))]
        )
    # then nothing was stored
    assert ComplianceResult.objects.count() == 0


def test_a_result_without_a_rule_is_accepted(
    account: Any, instrument: Any, make_order: Any
) -> None:
    # given an order; when a result names no rule (its rule was deleted: SET_NULL)
    order = make_order(account, instrument)
    ComplianceResult.objects.bulk_create([_result(order.pk, None)])
    # then it is stored
    assert [(r.order_id, r.rule_id) for r in results_of(order)] == [(order.pk, None)]


def test_moving_a_result_to_a_missing_order_is_refused(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given a checked order
    make_rule("fat_finger", params={"max_quantity": "10"})
    order = make_order(account, instrument)
    check([order])
    # when its result is moved to an order that does not exist
    with (
        pytest.raises(IntegrityError, match="names an order that does not exist"),
        transaction.atomic(),
    ):
        ComplianceResult.objects.filter(order=order).update(order_id=_missing_id(Order))
    # then it still belongs to the order
    assert [r.order_id for r in results_of(order)] == [order.pk]


def test_deleting_a_referenced_order_or_rule_in_sql_is_refused(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given a checked order
    rule = make_rule("fat_finger", params={"max_quantity": "10"})
    order = make_order(account, instrument)
    check([order])
    # when the order, then the rule, are deleted under the results' feet
    for sql, param in (
        ("DELETE FROM orders_order WHERE id = %s", order.pk),
        ("DELETE FROM compliance_rule WHERE id = %s", rule.pk),
        ("UPDATE orders_order SET id = id + 100000 WHERE id = %s", order.pk),
        ("UPDATE compliance_rule SET id = id + 100000 WHERE id = %s", rule.pk),
    ):
        with (
            pytest.raises(IntegrityError, match="referenced by compliance results"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [param])
    # then both are still there, and so is the result
    assert Order.objects.filter(pk=order.pk).exists()
    assert Rule.objects.filter(pk=rule.pk).exists()
    assert [(r.order_id, r.rule_id) for r in results_of(order)] == [(order.pk, rule.pk)]


def test_django_deletes_keep_their_on_delete_behaviour(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given two checked orders under one rule
    rule = make_rule("fat_finger", params={"max_quantity": "10"})
    kept = make_order(account, instrument)
    dropped = make_order(account, instrument)
    check([kept, dropped])
    # when the rule is deleted (SET_NULL), then one order (CASCADE)
    rule.delete()
    Order.objects.filter(pk=dropped.pk).delete()
    # then the kept order's result remains without its rule, the dropped order's is gone
    assert [(r.order_id, r.rule_id) for r in ComplianceResult.objects.all()] == [(kept.pk, None)]


def test_truncating_orders_or_rules_while_results_remain_is_refused(
    account: Any, instrument: Any, make_rule: Any, make_order: Any
) -> None:
    # given a checked order (compliance 0005: TRUNCATE fires no delete trigger)
    rule = make_rule("fat_finger", params={"max_quantity": "10"})
    order = make_order(account, instrument)
    check([order])
    # when the orders' or the rules' table is truncated under the results' feet (the pending
    # deferred checks of the set-up run first: TRUNCATE refuses to run with them pending)
    for table in ("orders_order", "compliance_rule"):
        with (
            pytest.raises(IntegrityError, match="still referenced by compliance results"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(f"SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE {table} CASCADE")
    # then the order, the rule and the result are still there
    assert Order.objects.filter(pk=order.pk).exists()
    assert Rule.objects.filter(pk=rule.pk).exists()
    assert [(r.order_id, r.rule_id) for r in results_of(order)] == [(order.pk, rule.pk)]
