"""No index on allocation.instrument_id: nothing reads allocations by instrument, and each index
costs a 1,000-account fill 1,000 insertions (instrument deletes are PROTECTed anyway)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0004_book_rows_fillfactor"),
        ("orders", "0002_routerequest"),
    ]

    operations = [
        migrations.AlterField(
            model_name="allocation",
            name="instrument",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="orders.instrument",
            ),
        ),
    ]
