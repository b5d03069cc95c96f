"""Compliance results reference their order and rule through statement-level triggers.

A foreign-key constraint runs one check (a locking look-up of the parent row) per inserted row at
commit: a 500-order basket writes 10,000 results, so 20,000 checks, about 100 ms of PostgreSQL
time. The triggers below keep the same guarantees with one set-based check per statement:

- inserting or updating results: every order and every (non-null) rule they name must exist, and
  is locked FOR KEY SHARE as a foreign-key check locks it, so a concurrent delete of that order or
  rule waits for this transaction and then sees its results;
- deleting orders or rules (or changing their ids) that results still reference is refused.
Violations raise SQLSTATE 23503 (foreign_key_violation), which Django reports as IntegrityError.
Django's own on_delete handling (CASCADE for orders, SET_NULL for rules) is unchanged.
"""

from django.db import migrations, models

FORWARD = """
CREATE OR REPLACE FUNCTION compliance_result_refs_check() RETURNS trigger AS $$
DECLARE
    order_ids bigint[];
    rule_ids bigint[];
    found bigint;
BEGIN
    -- One pass over the new rows; the distinct ids then go through the primary keys' indexes
    -- (a join against the transition table would have no statistics and may scan the table).
    SELECT array_agg(DISTINCT order_id),
           array_agg(DISTINCT rule_id) FILTER (WHERE rule_id IS NOT NULL)
        INTO order_ids, rule_ids
        FROM new_results;
    IF order_ids IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM orders_order WHERE id = ANY(order_ids) FOR KEY SHARE
    ) AS locked;
    IF found <> cardinality(order_ids) THEN
        RAISE EXCEPTION 'compliance result names an order that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF rule_ids IS NOT NULL THEN
        SELECT count(*) INTO found FROM (
            SELECT 1 FROM compliance_rule WHERE id = ANY(rule_ids) FOR KEY SHARE
        ) AS locked;
        IF found <> cardinality(rule_ids) THEN
            RAISE EXCEPTION 'compliance result names a rule that does not exist'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_result_refs_insert
    AFTER INSERT ON compliance_complianceresult
    REFERENCING NEW TABLE AS new_results
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_result_refs_check();

CREATE TRIGGER compliance_result_refs_update
    AFTER UPDATE ON compliance_complianceresult
    REFERENCING NEW TABLE AS new_results
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_result_refs_check();

CREATE OR REPLACE FUNCTION compliance_result_order_gone() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM compliance_complianceresult
        WHERE order_id = ANY(ARRAY(SELECT id FROM old_orders))
    ) THEN
        RAISE EXCEPTION 'orders still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_result_order_delete
    AFTER DELETE ON orders_order
    REFERENCING OLD TABLE AS old_orders
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_result_order_gone();

CREATE OR REPLACE FUNCTION compliance_result_rule_gone() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM compliance_complianceresult
        WHERE rule_id = ANY(ARRAY(SELECT id FROM old_rules))
    ) THEN
        RAISE EXCEPTION 'rules still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_result_rule_delete
    AFTER DELETE ON compliance_rule
    REFERENCING OLD TABLE AS old_rules
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_result_rule_gone();

-- Ids never change in this application; refuse it for referenced rows as a foreign key would.
-- Row-level and limited to UPDATE OF id, so ordinary order updates never fire it.
CREATE OR REPLACE FUNCTION compliance_result_parent_id_change() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM compliance_complianceresult
        WHERE (TG_TABLE_NAME = 'orders_order' AND order_id = OLD.id)
           OR (TG_TABLE_NAME = 'compliance_rule' AND rule_id = OLD.id)
    ) THEN
        RAISE EXCEPTION '% % is still referenced by compliance results', TG_TABLE_NAME, OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_result_order_id_change
    AFTER UPDATE OF id ON orders_order
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION compliance_result_parent_id_change();

CREATE TRIGGER compliance_result_rule_id_change
    AFTER UPDATE OF id ON compliance_rule
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION compliance_result_parent_id_change();
"""

BACKWARD = """
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


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0002_result_order_index_covered_by_order_outcome"),
        ("orders", "0002_routerequest"),
    ]

    operations = [
        # The triggers first: going backwards, the constraints come back before they go.
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="complianceresult",
            name="order",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.CASCADE,
                related_name="compliance_results",
                to="orders.order",
            ),
        ),
        migrations.AlterField(
            model_name="complianceresult",
            name="rule",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=models.deletion.SET_NULL,
                related_name="+",
                to="compliance.rule",
            ),
        ),
    ]
