"""PostgreSQL refuses UPDATE and DELETE on the audit event table.

TRUNCATE is left to privileges (the application's role should not own the table in production):
Django's test flush truncates every table between transactional tests.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION oms_audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER oms_audit_no_update_delete
    BEFORE UPDATE OR DELETE ON oms_site_auditevent
    FOR EACH ROW EXECUTE FUNCTION oms_audit_refuse_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS oms_audit_no_update_delete ON oms_site_auditevent;
DROP FUNCTION IF EXISTS oms_audit_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("oms_site", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
