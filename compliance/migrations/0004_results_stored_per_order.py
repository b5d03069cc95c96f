"""A check's results are stored as one row per order (parallel arrays), read through a view.

Why: a 500-order basket checked against 20 rules wrote 10,000 result rows, whose COPY, index
entries and reference checks cost about 60 ms of PostgreSQL per basket; one row per order
writes 500. `compliance_complianceresult` becomes a view with one row per result, as the table
was, so every read (the API, the admin, reports, overrides, the selectors) is unchanged, and
INSTEAD OF triggers let the ORM still insert, update and delete single results (Django's
CASCADE and SET_NULL included).

- A view row's id is the stored row's id times 2**16 plus the result's position in its arrays,
  so ids keep the order of checks and of rules within a check, and never change: a result
  deleted through the view leaves its position with a NULL outcome (a set with no result left
  is deleted).
- Changing a result's order or check time through the view moves it to a set of its own (both
  belong to the whole set).
- The references to orders and rules keep migration 0003's guarantees, now on the stored rows:
  one set-based check per statement, parents locked FOR KEY SHARE, deleting or renumbering a
  referenced order or rule refused (SQLSTATE 23503).
Existing results are moved into sets (one per order and check time, in id order). Reversible.
"""

import importlib

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models

_0003 = importlib.import_module(
    "compliance.migrations.0003_result_references_by_statement_triggers"
)

SETS = "compliance_complianceresultset"

FORWARD = f"""
-- A set of 20 results is about 3 kB, over the 2 kB at which PostgreSQL would compress it
-- (about a third of the COPY's time); kept inline and uncompressed up to a page.
ALTER TABLE {SETS} SET (toast_tuple_target = 8160);

ALTER TABLE {SETS}
    ADD CONSTRAINT compliance_resultset_shape CHECK (
        cardinality(rule_ids) BETWEEN 1 AND 65535
        AND cardinality(rule_names) = cardinality(rule_ids)
        AND cardinality(rule_types) = cardinality(rule_ids)
        AND cardinality(rule_versions) = cardinality(rule_ids)
        AND cardinality(outcomes) = cardinality(rule_ids)
        AND cardinality(messages) = cardinality(rule_ids)
        AND cardinality(measured) = cardinality(rule_ids)
        AND cardinality(limits) = cardinality(rule_ids)
        AND array_ndims(rule_ids) = 1
        AND array_position(rule_names, NULL) IS NULL
        AND array_position(rule_types, NULL) IS NULL
        AND array_position(rule_versions, NULL) IS NULL
        AND array_position(messages, NULL) IS NULL
        AND 0 <= ALL(rule_versions)
    );

-- The old table's triggers and reference functions go with it (0003's BACKWARD).
{_0003.BACKWARD}

INSERT INTO {SETS}
    (order_id, checked_at, rule_ids, rule_names, rule_types, rule_versions, outcomes,
     messages, measured, limits)
SELECT order_id, checked_at, array_agg(rule_id ORDER BY id), array_agg(rule_name ORDER BY id),
       array_agg(rule_type ORDER BY id), array_agg(rule_version ORDER BY id),
       array_agg(outcome ORDER BY id), array_agg(message ORDER BY id),
       array_agg(measured ORDER BY id), array_agg("limit" ORDER BY id)
    FROM compliance_complianceresult
    GROUP BY order_id, checked_at
    ORDER BY min(id);

DROP TABLE compliance_complianceresult;

CREATE VIEW compliance_complianceresult AS
SELECT (s.id << 16) | r.n AS id, s.order_id, r.rule_id, r.rule_name, r.rule_type,
       r.rule_version, r.outcome, r.message, r.measured, r."limit", s.checked_at
    FROM {SETS} s
    CROSS JOIN LATERAL unnest(s.rule_ids, s.rule_names, s.rule_types, s.rule_versions,
                              s.outcomes, s.messages, s.measured, s.limits)
        WITH ORDINALITY AS r(rule_id, rule_name, rule_type, rule_version, outcome, message,
                             measured, "limit", n)
    WHERE r.outcome IS NOT NULL;

-- A position whose result was deleted: NULL outcome (and rule, so it references nothing).
CREATE FUNCTION compliance_resultset_forget(set_id bigint, pos integer) RETURNS void AS $$
BEGIN
    UPDATE {SETS} SET outcomes[pos] = NULL, rule_ids[pos] = NULL WHERE id = set_id;
    DELETE FROM {SETS}
        WHERE id = set_id AND NOT EXISTS (SELECT 1 FROM unnest(outcomes) AS o WHERE o IS NOT NULL);
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION compliance_resultset_add(r compliance_complianceresult) RETURNS bigint AS $$
DECLARE
    set_id bigint;
BEGIN
    IF r.order_id IS NULL OR r.rule_name IS NULL OR r.rule_type IS NULL
       OR r.rule_version IS NULL OR r.outcome IS NULL OR r.message IS NULL
       OR r.checked_at IS NULL THEN
        RAISE EXCEPTION 'null value in a NOT NULL column of compliance_complianceresult'
            USING ERRCODE = 'not_null_violation';
    END IF;
    INSERT INTO {SETS}
        (order_id, checked_at, rule_ids, rule_names, rule_types, rule_versions, outcomes,
         messages, measured, limits)
    VALUES (r.order_id, r.checked_at, ARRAY[r.rule_id], ARRAY[r.rule_name], ARRAY[r.rule_type],
            ARRAY[r.rule_version], ARRAY[r.outcome], ARRAY[r.message], ARRAY[r.measured],
            ARRAY[r."limit"])
    RETURNING id INTO set_id;
    RETURN (set_id << 16) | 1;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION compliance_result_view_write() RETURNS trigger AS $$
DECLARE
    set_id bigint;
    pos integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.id := compliance_resultset_add(NEW);
        RETURN NEW;
    END IF;
    set_id := OLD.id >> 16;
    pos := (OLD.id & 65535)::integer;
    IF TG_OP = 'DELETE' THEN
        PERFORM compliance_resultset_forget(set_id, pos);
        RETURN OLD;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the id of a compliance result cannot change'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NEW.order_id IS DISTINCT FROM OLD.order_id
       OR NEW.checked_at IS DISTINCT FROM OLD.checked_at THEN
        -- Both belong to the whole set: the result moves to a set of its own.
        PERFORM compliance_resultset_forget(set_id, pos);
        NEW.id := compliance_resultset_add(NEW);
        RETURN NEW;
    END IF;
    IF NEW.rule_name IS NULL OR NEW.rule_type IS NULL OR NEW.rule_version IS NULL
       OR NEW.outcome IS NULL OR NEW.message IS NULL THEN
        RAISE EXCEPTION 'null value in a NOT NULL column of compliance_complianceresult'
            USING ERRCODE = 'not_null_violation';
    END IF;
    UPDATE {SETS} SET
        rule_ids[pos] = NEW.rule_id, rule_names[pos] = NEW.rule_name,
        rule_types[pos] = NEW.rule_type, rule_versions[pos] = NEW.rule_version,
        outcomes[pos] = NEW.outcome, messages[pos] = NEW.message,
        measured[pos] = NEW.measured, limits[pos] = NEW."limit"
        WHERE id = set_id;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_result_view_write
    INSTEAD OF INSERT OR UPDATE OR DELETE ON compliance_complianceresult
    FOR EACH ROW EXECUTE FUNCTION compliance_result_view_write();

CREATE FUNCTION compliance_resultset_refs_check() RETURNS trigger AS $$
DECLARE
    order_ids bigint[];
    rule_ids bigint[];
    found bigint;
BEGIN
    SELECT array_agg(DISTINCT order_id) INTO order_ids FROM new_sets;
    IF order_ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- The sets of one check mostly name the same rules: distinct arrays first, then elements.
    SELECT array_agg(DISTINCT r.id) INTO rule_ids
        FROM (SELECT DISTINCT new_sets.rule_ids FROM new_sets) AS s,
             unnest(s.rule_ids) AS r(id)
        WHERE r.id IS NOT NULL;
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

CREATE TRIGGER compliance_resultset_refs_insert
    AFTER INSERT ON {SETS}
    REFERENCING NEW TABLE AS new_sets
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_refs_check();

CREATE TRIGGER compliance_resultset_refs_update
    AFTER UPDATE ON {SETS}
    REFERENCING NEW TABLE AS new_sets
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_refs_check();

CREATE FUNCTION compliance_resultset_order_gone() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM {SETS} WHERE order_id = ANY(ARRAY(SELECT id FROM old_orders))
    ) THEN
        RAISE EXCEPTION 'orders still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_resultset_order_delete
    AFTER DELETE ON orders_order
    REFERENCING OLD TABLE AS old_orders
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_order_gone();

CREATE FUNCTION compliance_resultset_rule_gone() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM {SETS} WHERE rule_ids && ARRAY(SELECT id FROM old_rules)
    ) THEN
        RAISE EXCEPTION 'rules still referenced by compliance results'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_resultset_rule_delete
    AFTER DELETE ON compliance_rule
    REFERENCING OLD TABLE AS old_rules
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_resultset_rule_gone();

-- Ids never change in this application; refuse it for referenced rows as a foreign key would.
CREATE FUNCTION compliance_resultset_parent_id_change() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM {SETS}
        WHERE (TG_TABLE_NAME = 'orders_order' AND order_id = OLD.id)
           OR (TG_TABLE_NAME = 'compliance_rule' AND rule_ids @> ARRAY[OLD.id])
    ) THEN
        RAISE EXCEPTION '% % is still referenced by compliance results', TG_TABLE_NAME, OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER compliance_resultset_order_id_change
    AFTER UPDATE OF id ON orders_order
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION compliance_resultset_parent_id_change();

CREATE TRIGGER compliance_resultset_rule_id_change
    AFTER UPDATE OF id ON compliance_rule
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION compliance_resultset_parent_id_change();
"""

# Back to one row per result: the table as migrations 0001-0003 left it, the results copied in
# view order (new ids), then 0003's triggers.
BACKWARD = f"""
DROP TRIGGER IF EXISTS compliance_resultset_rule_id_change ON compliance_rule;
DROP TRIGGER IF EXISTS compliance_resultset_order_id_change ON orders_order;
DROP FUNCTION IF EXISTS compliance_resultset_parent_id_change();
DROP TRIGGER IF EXISTS compliance_resultset_rule_delete ON compliance_rule;
DROP FUNCTION IF EXISTS compliance_resultset_rule_gone();
DROP TRIGGER IF EXISTS compliance_resultset_order_delete ON orders_order;
DROP FUNCTION IF EXISTS compliance_resultset_order_gone();
DROP TRIGGER IF EXISTS compliance_resultset_refs_update ON {SETS};
DROP TRIGGER IF EXISTS compliance_resultset_refs_insert ON {SETS};
DROP FUNCTION IF EXISTS compliance_resultset_refs_check();

CREATE TEMPORARY TABLE compliance_result_restored ON COMMIT DROP AS
    SELECT * FROM compliance_complianceresult ORDER BY id;

DROP TRIGGER IF EXISTS compliance_result_view_write ON compliance_complianceresult;
DROP FUNCTION IF EXISTS compliance_result_view_write();
DROP FUNCTION IF EXISTS compliance_resultset_add(compliance_complianceresult);
DROP FUNCTION IF EXISTS compliance_resultset_forget(bigint, integer);
DROP VIEW compliance_complianceresult;

CREATE TABLE compliance_complianceresult (
    id bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY,
    rule_name varchar(120) NOT NULL,
    rule_type varchar(24) NOT NULL,
    rule_version integer NOT NULL,
    outcome varchar(8) NOT NULL,
    message text NOT NULL,
    measured numeric(30, 8) NULL,
    "limit" numeric(30, 8) NULL,
    checked_at timestamp with time zone NOT NULL,
    order_id bigint NOT NULL,
    rule_id bigint NULL,
    CONSTRAINT compliance_complianceresult_rule_version_check CHECK (rule_version >= 0),
    CONSTRAINT compliance_complianceresult_pkey PRIMARY KEY (id)
);
INSERT INTO compliance_complianceresult
    (rule_name, rule_type, rule_version, outcome, message, measured, "limit", checked_at,
     order_id, rule_id)
SELECT rule_name, rule_type, rule_version, outcome, message, measured, "limit", checked_at,
       order_id, rule_id
    FROM compliance_result_restored ORDER BY id;
DROP TABLE compliance_result_restored;
CREATE INDEX compresult_order_outcome_idx ON compliance_complianceresult (order_id, outcome);
CREATE INDEX compliance_complianceresult_rule_id_242b6f2e
    ON compliance_complianceresult (rule_id);

{_0003.FORWARD}
"""


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0003_result_references_by_statement_triggers"),
        ("orders", "0003_refdata_brokers_sessions"),
    ]

    operations = [
        migrations.CreateModel(
            name="ComplianceResultSet",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("checked_at", models.DateTimeField()),
                (
                    "rule_ids",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.BigIntegerField(null=True), size=None
                    ),
                ),
                (
                    "rule_names",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(max_length=120), size=None
                    ),
                ),
                (
                    "rule_types",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(
                            choices=[
                                ("restricted_list", "Restricted list"),
                                ("concentration", "Concentration"),
                                ("ownership", "Ownership"),
                                ("fat_finger", "Fat finger"),
                                ("short_selling", "Holdings and short selling"),
                                ("buying_power", "Buying power"),
                                ("conflicting_orders", "Conflicting orders"),
                                ("duplicate_orders", "Duplicate orders"),
                            ],
                            max_length=24,
                        ),
                        size=None,
                    ),
                ),
                (
                    "rule_versions",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.IntegerField(), size=None
                    ),
                ),
                (
                    "outcomes",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(max_length=8, null=True), size=None
                    ),
                ),
                (
                    "messages",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.TextField(), size=None
                    ),
                ),
                (
                    "measured",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.DecimalField(decimal_places=8, max_digits=30, null=True),
                        size=None,
                    ),
                ),
                (
                    "limits",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.DecimalField(decimal_places=8, max_digits=30, null=True),
                        size=None,
                    ),
                ),
                (
                    "order",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="orders.order",
                    ),
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(
                    model_name="complianceresult", name="compresult_order_outcome_idx"
                ),
                migrations.AlterModelOptions(
                    name="complianceresult",
                    options={"managed": False},
                ),
                migrations.AlterModelTable(
                    name="complianceresult", table="compliance_complianceresult"
                ),
            ],
            database_operations=[migrations.RunSQL(FORWARD, BACKWARD)],
        ),
    ]
