"""A version number of the reference data, bumped by PostgreSQL on every change to it.

Processes cache reference data (instruments, prices, accounts and their entitlements, rules,
restricted list, kill switches) and check this one row before trusting the cache
(`oms_site.refcache`). A statement trigger on each table bumps it in the writer's transaction,
so the new number becomes visible exactly when the change does; the numbers come from a
sequence, which never hands out a number twice, even after a rollback, so a cache filled from
rolled-back data can never look current again.
"""

from django.db import migrations

TABLES = (
    "orders_instrument",
    "orders_referenceprice",
    "orders_issuer",
    "orders_killswitch",
    "compliance_rule",
    "compliance_rule_accounts",
    "compliance_rule_groups",
    "compliance_restrictedentry",
    "allocations_account",
    "allocations_account_managers",
    "allocations_account_groups",
    "allocations_accountgroup",
    "allocations_desk",
    "allocations_desk_traders",
)

FORWARD = """
CREATE SEQUENCE oms_refdata_seq;
CREATE TABLE oms_refdata_version (
    id smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO oms_refdata_version (id, version) VALUES (1, nextval('oms_refdata_seq'));
CREATE OR REPLACE FUNCTION oms_refdata_bump() RETURNS trigger AS $$
BEGIN
    UPDATE oms_refdata_version SET version = nextval('oms_refdata_seq') WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
""" + "".join(
    f"CREATE TRIGGER oms_refdata_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} "
    "FOR EACH STATEMENT EXECUTE FUNCTION oms_refdata_bump();\n"
    for t in TABLES
)

BACKWARD = (
    "".join(f"DROP TRIGGER IF EXISTS oms_refdata_bump ON {t};\n" for t in TABLES)
    + """
DROP FUNCTION IF EXISTS oms_refdata_bump();
DROP TABLE IF EXISTS oms_refdata_version;
DROP SEQUENCE IF EXISTS oms_refdata_seq;
"""
)


class Migration(migrations.Migration):
    dependencies = [
        ("oms_site", "0002_audit_append_only"),
        ("orders", "0001_initial"),
        ("compliance", "0001_initial"),
        ("allocations", "0002_initial"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
