"""Truncating orders or rules while compliance results still name them is refused.

TRUNCATE fires no delete trigger, so the statement-level references of 0004 would let
`TRUNCATE orders_order` (or `compliance_rule`) leave result sets naming rows that are gone; a
foreign key refuses it, and so do these triggers (after a TRUNCATE of both tables in one
statement the result sets are empty by then and it goes through).
"""

from django.db import migrations

SETS = "compliance_complianceresultset"

FORWARD = f"""
CREATE FUNCTION compliance_resultset_orders_truncated() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {SETS}) THEN
        RAISE EXCEPTION 'orders still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_resultset_orders_truncate
    AFTER TRUNCATE ON orders_order
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_orders_truncated();

CREATE FUNCTION compliance_resultset_rules_truncated() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM {SETS}
        WHERE cardinality(array_remove(rule_ids, NULL)) > 0
    ) THEN
        RAISE EXCEPTION 'rules still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_resultset_rules_truncate
    AFTER TRUNCATE ON compliance_rule
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_rules_truncated();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS compliance_resultset_rules_truncate ON compliance_rule;
DROP FUNCTION IF EXISTS compliance_resultset_rules_truncated();
DROP TRIGGER IF EXISTS compliance_resultset_orders_truncate ON orders_order;
DROP FUNCTION IF EXISTS compliance_resultset_orders_truncated();
"""


class Migration(migrations.Migration):
    dependencies = [("compliance", "0004_results_stored_per_order")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
