"""The allocation insert trigger checks each row's account and instrument through its order.

Every allocation names its order's account and instrument. Locked FOR KEY SHARE, the 1,000
accounts of a 1,000-account fill each took a row lock (a WAL record and a dirtied page each),
although the fill holds their orders FOR UPDATE and each order's own foreign keys already keep
its account and instrument from being deleted. The trigger now requires each row's account and
instrument to be its order's (23514 otherwise) and locks the orders FOR SHARE (nothing new for a
writer holding them FOR UPDATE): see oms_site.references.order_bound_check_sql. Going backwards
restores migration 0007's function.
"""

from django.db import migrations

from oms_site.references import Reference, order_bound_check_sql

FORWARD, BACKWARD = order_bound_check_sql(
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
        ("allocations", "0007_allocation_references_one_query"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
