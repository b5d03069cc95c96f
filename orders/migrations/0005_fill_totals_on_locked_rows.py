"""The fills' exact notional on the row a fill locks: the block, or a lone order.

Before, every fill summed last_qty and last_qty * last_px over all the executions of the block
(or lone order) so far. Now the block (Block.filled_notional, with cum_qty) and the lone order
(Order.filled_notional, with cum_qty) keep them, and each fill adds its own. The backfill is
the sum the fills made until now, exact (numeric arithmetic, no rounding), in one statement per
table; cum_qty needs none (every fill set it to the same sum of last_qty).
"""

from decimal import Decimal

from django.db import migrations, models

# The fills of the block's (or the lone order's) placements, as fill_allocate summed them.
_BACKFILL = (
    'UPDATE "{table}" AS t SET "filled_notional" = s.notional FROM ('
    'SELECT p."{column}" AS id, sum(e."last_qty" * e."last_px") AS notional '
    'FROM "orders_execution" AS e JOIN "orders_placement" AS p ON p."id" = e."placement_id" '
    'WHERE p."{column}" IS NOT NULL AND e."last_qty" > 0 GROUP BY p."{column}") AS s '
    'WHERE t."id" = s.id AND t."filled_notional" <> s.notional'
)


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0004_order_indexes_where_used"),
    ]

    operations = [
        migrations.AddField(
            model_name="block",
            name="filled_notional",
            field=models.DecimalField(
                db_default=Decimal("0"), decimal_places=16, default=Decimal("0"), max_digits=48
            ),
        ),
        migrations.AddField(
            model_name="order",
            name="filled_notional",
            field=models.DecimalField(
                db_default=Decimal("0"), decimal_places=16, default=Decimal("0"), max_digits=48
            ),
        ),
        # Back: nothing to undo (the columns go with the fields).
        migrations.RunSQL(
            [
                _BACKFILL.format(table="orders_block", column="block_id"),
                _BACKFILL.format(table="orders_order", column="order_id"),
            ],
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name="block",
            constraint=models.CheckConstraint(
                condition=models.Q(("cum_qty__gt", 0), ("filled_notional", 0), _connector="OR"),
                name="block_notional_only_filled",
            ),
        ),
        migrations.AddConstraint(
            model_name="order",
            constraint=models.CheckConstraint(
                condition=models.Q(("cum_qty__gt", 0), ("filled_notional", 0), _connector="OR"),
                name="order_notional_only_filled",
            ),
        ),
    ]
