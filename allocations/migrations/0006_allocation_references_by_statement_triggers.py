"""Allocation rows reference their six parents through statement-level triggers.

A fill of a 1,000-account block inserts about 1,000 allocation rows, each naming an execution,
a block, an order, an account, an instrument and a broker: as foreign-key constraints that is
about 6,000 row-by-row checks (a locking look-up each) at commit, 20-25 ms of PostgreSQL time.
The triggers (oms_site.references) check each statement's rows once per parent table, lock the
named parents FOR KEY SHARE as the constraints did, and refuse deleting, renumbering or
truncating a referenced parent. reversal_of and created_by stay constraints: they are null on
nearly every row (a null key is not looked up).
"""

import django.db.models.deletion
from django.db import migrations, models

from oms_site.references import Reference, statement_references_sql

FORWARD, BACKWARD = statement_references_sql(
    prefix="allocation",
    child_table="allocations_allocation",
    child_noun="allocation",
    child_plural="allocations",
    references=[
        Reference("execution_id", "orders_execution", "an execution", "executions"),
        Reference("block_id", "orders_block", "a block", "blocks"),
        Reference("order_id", "orders_order", "an order", "orders"),
        Reference("account_id", "allocations_account", "an account", "accounts"),
        Reference("instrument_id", "orders_instrument", "an instrument", "instruments"),
        Reference("broker_id", "orders_broker", "a broker", "brokers"),
    ],
)


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0005_allocation_no_instrument_index"),
        ("orders", "0003_refdata_brokers_sessions"),
    ]

    operations = [
        # The triggers first: going backwards, the constraints come back before they go.
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="allocation",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="allocations.account",
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="block",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="orders.block",
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="broker",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="orders.broker",
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="execution",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="orders.execution",
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="instrument",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="orders.instrument",
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="order",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="orders.order",
            ),
        ),
    ]
