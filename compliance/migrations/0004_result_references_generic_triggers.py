"""Compliance results' reference triggers (0003) replaced by the generic ones of
oms_site.references, which the allocation rows use too (allocations 0006).

Same guarantees and messages, plus: the named orders and rules are joined to the distinct ids
instead of `id = ANY(array)`, which PostgreSQL evaluates by comparing every row it scans with
every id when it picks a sequential scan (a small or freshly-analysed table); a delete that
matched nothing returns at once; and truncating orders or rules while results remain is
refused, as a foreign key would.
"""

from django.db import migrations

from oms_site.references import Reference, statement_references_sql

# The 0003 triggers and functions, dropped before the generic ones take their place.
DROP_0003 = """
DROP TRIGGER IF EXISTS compliance_result_rule_id_change ON compliance_rule;
DROP TRIGGER IF EXISTS compliance_result_order_id_change ON orders_order;
DROP FUNCTION IF EXISTS compliance_result_parent_id_change();
DROP TRIGGER IF EXISTS compliance_result_rule_delete ON compliance_rule;
DROP FUNCTION IF EXISTS compliance_result_rule_gone();
DROP TRIGGER IF EXISTS compliance_result_order_delete ON orders_order;
DROP FUNCTION IF EXISTS compliance_result_order_gone();
DROP TRIGGER IF EXISTS compliance_result_refs_update ON compliance_complianceresult;
DROP TRIGGER IF EXISTS compliance_result_refs_insert ON compliance_complianceresult;
DROP FUNCTION IF EXISTS compliance_result_refs_check();
"""

GENERIC_FORWARD, GENERIC_BACKWARD = statement_references_sql(
    prefix="compliance_result",
    child_table="compliance_complianceresult",
    child_noun="compliance result",
    child_plural="compliance results",
    references=[
        Reference("order_id", "orders_order", "an order", "orders"),
        Reference("rule_id", "compliance_rule", "a rule", "rules"),
    ],
)


def _restore_0003(apps, schema_editor):  # type: ignore[no-untyped-def]
    from importlib import import_module

    old = import_module("compliance.migrations.0003_result_references_by_statement_triggers")
    schema_editor.execute(old.FORWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0003_result_references_by_statement_triggers"),
        ("allocations", "0006_allocation_references_by_statement_triggers"),
    ]

    operations = [
        # Going backwards the generic triggers are dropped first, then 0003's come back.
        migrations.RunPython(migrations.RunPython.noop, _restore_0003),
        migrations.RunSQL(DROP_0003 + GENERIC_FORWARD, GENERIC_BACKWARD),
    ]
