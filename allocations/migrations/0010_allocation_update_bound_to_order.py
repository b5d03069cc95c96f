"""An allocation update ties a changed account or instrument to the row's order, as inserts do.

Since migration 0008 the insert trigger requires each row's account and instrument to be its
order's (23514 otherwise); the update trigger still only locked a changed account FOR KEY SHARE,
so an UPDATE could move a row to another account than its order's. Its function now looks up the
(new) order when the order, account or instrument changes, locks it FOR SHARE and compares (see
oms_site.references.order_bound_row_check_sql). The trigger (which columns, WHEN) is unchanged:
an update of other columns (settling cash) still fires nothing. Going backwards restores
migration 0006's function.
"""

from django.db import migrations

from oms_site.references import Reference, order_bound_row_check_sql

FORWARD, BACKWARD = order_bound_row_check_sql(
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
    order="order_id",
    bound=["account_id", "instrument_id"],
)


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0009_allocation_trade_date_index"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
