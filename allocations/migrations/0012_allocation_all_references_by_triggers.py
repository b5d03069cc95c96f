"""Allocation rows reference the allocation they reverse and their author through triggers too.

reversal_of and created_by stayed foreign-key constraints in migration 0006 because they are
null on nearly every row, and a null key is not looked up. But PostgreSQL still queues one
after-trigger event per inserted row and constraint, null or not, and runs them all at commit:
a 1,000-account fill queued 2,000 of them. The insert check (one query per statement) now covers
all eight references (oms_site.references.order_bound_check_sql, as migration 0011 wrote it for
six); a changed reversal_of or created_by is checked row by row (added_references_sql), and
deleting, renumbering or truncating a referenced allocation or user is refused (23503).
Going backwards restores the constraints first, then migration 0011's insert function.

Measured on a 1,000-account fill (fill_allocate), two databases with the same rows and ids (one
at 0011, one at 0012) alternated in one process, 150 pairs: PostgreSQL CPU of the commit 3.73 ->
1.03 ms median (lower in 148 pairs), of the whole fill 84.96 -> 82.48 ms (paired difference
2.97 ms; a slow, shared phase of the machine).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from oms_site.references import Reference, added_references_sql, order_bound_check_sql

SIX = [
    Reference("execution_id", "orders_execution", "an execution", "executions"),
    Reference("block_id", "orders_block", "a block", "blocks"),
    Reference("order_id", "orders_order", "an order", "orders"),
    Reference("account_id", "allocations_account", "an account", "accounts"),
    Reference("instrument_id", "orders_instrument", "an instrument", "instruments"),
    Reference("broker_id", "orders_broker", "a broker", "brokers"),
]
ADDED = [
    Reference("reversal_of_id", "allocations_allocation", "an allocation", "allocations"),
    Reference("created_by_id", "auth_user", "a user", "users"),
]


def _insert_check(references: list[Reference]) -> str:
    return order_bound_check_sql(
        prefix="allocation",
        child_noun="allocation",
        references=references,
        order="order_id",
        bound=["account_id", "instrument_id"],
        orders_joined=True,
    )[0]


ADDED_FORWARD, ADDED_BACKWARD = added_references_sql(
    prefix="allocation",
    name="allocation_added_refs",
    child_table="allocations_allocation",
    child_noun="allocation",
    child_plural="allocations",
    references=ADDED,
    first_index=len(SIX),
)
FORWARD = _insert_check(SIX + ADDED) + ADDED_FORWARD
BACKWARD = ADDED_BACKWARD + _insert_check(SIX)


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0011_allocation_orders_joined_check"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The triggers first: going backwards, the constraints come back before they go.
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="allocation",
            name="created_by",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="reversal_of",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="reversals",
                to="allocations.allocation",
            ),
        ),
    ]
