"""The allocation insert trigger checks its six parents in one query instead of seven.

Same refusals, locks (FOR KEY SHARE, in the same parent order) and messages as migration 0006's
function, which going backwards restores.
"""

from django.db import migrations

from oms_site.references import Reference, single_query_check_sql

FORWARD, BACKWARD = single_query_check_sql(
    prefix="allocation",
    child_noun="allocation",
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
        ("allocations", "0006_allocation_references_by_statement_triggers"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
