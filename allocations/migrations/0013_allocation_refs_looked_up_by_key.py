"""The allocation insert check looks its parents up by primary key only, but allocations reversed.

Migration 0012's check (oms_site.references.order_bound_check_sql) has two subqueries per parent
locked FOR KEY SHARE: the ids looked up one by one when there are at most 64 of them, else
joined to the table. PostgreSQL sets up every subquery of the check's plan on each call, run or
not, and a statement names one execution, one block, one broker and at most one author: their
join branches (never taken) cost every fill's booking statement. Only the allocations reversed
(reversal_of: as many as the rows a re-allocation takes back) keep the join. The same parents
are locked FOR KEY SHARE in the same order, with the same refusals (23503, the same messages).
Going backwards restores migration 0012's check.

Measured on small fills (5 orders, 5 rows a statement) through execution_apply, both checks
alternated fill by fill on two identical blocks (each installed, warmed by one fill, then one
measured fill; the trigger's time from auto_explain's log_triggers): the trigger 0.41 -> 0.30 ms
(paired median -0.08 ms, lower in 101 of 120 pairs; an earlier run -0.13 ms, 47/60), the
backend's CPU for the fill -0.14 ms (75/120; 35/60). Where a small fill's check spent its time
(30 fills each): an empty trigger 0.025 ms, the new rows' aggregate alone 0.055 ms, the check's
query running 0.12-0.16 ms, the whole check 0.41-0.47 ms: the rest is setting up the plan's
subqueries, five of them join branches never taken. Locking the broker FOR KEY SHARE (the one
parent shared by concurrent fills, so a MultiXact when two hold it) costs 0.06-0.09 ms of it.
"""

from django.db import migrations

from oms_site.references import Reference, order_bound_check_sql

REFERENCES = [
    Reference("execution_id", "orders_execution", "an execution", "executions"),
    Reference("block_id", "orders_block", "a block", "blocks"),
    Reference("order_id", "orders_order", "an order", "orders"),
    Reference("account_id", "allocations_account", "an account", "accounts"),
    Reference("instrument_id", "orders_instrument", "an instrument", "instruments"),
    Reference("broker_id", "orders_broker", "a broker", "brokers"),
    Reference("reversal_of_id", "allocations_allocation", "an allocation", "allocations"),
    Reference("created_by_id", "auth_user", "a user", "users"),
]


def _insert_check(joined: list[str] | None) -> str:
    return order_bound_check_sql(
        prefix="allocation",
        child_noun="allocation",
        references=REFERENCES,
        order="order_id",
        bound=["account_id", "instrument_id"],
        orders_joined=True,
        joined=joined,
    )[0]


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0012_allocation_all_references_by_triggers"),
    ]

    operations = [
        migrations.RunSQL(_insert_check(["reversal_of_id"]), _insert_check(None)),
    ]
