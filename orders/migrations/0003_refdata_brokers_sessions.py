"""Brokers and the configuration of FIX sessions bump the reference-data version too.

Routing reads brokers, their enabled sessions and the kill switches from the per-process
reference-data cache (`oms_site.refcache`), so a change to any of them must bump the version
in the writer's transaction, as the tables of `oms_site.0003_refdata_version` do. A session's
live state (logged_on, sequence numbers, status_at), which the gateway writes every few
seconds, is not configuration: updating only those columns does not bump it, or every
process's cache would be dropped that often.
"""

from django.db import migrations

SESSION_CONFIG_COLUMNS = (
    "broker_id",
    "host",
    "port",
    "sender_comp_id",
    "target_comp_id",
    "fix_version",
    "heartbeat_seconds",
    "enabled",
)

FORWARD = (
    "CREATE TRIGGER oms_refdata_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
    "ON orders_broker FOR EACH STATEMENT EXECUTE FUNCTION oms_refdata_bump();\n"
    "CREATE TRIGGER oms_refdata_bump AFTER INSERT OR DELETE OR TRUNCATE "
    "ON orders_fixsession FOR EACH STATEMENT EXECUTE FUNCTION oms_refdata_bump();\n"
    f"CREATE TRIGGER oms_refdata_bump_config AFTER UPDATE OF {', '.join(SESSION_CONFIG_COLUMNS)} "
    "ON orders_fixsession FOR EACH STATEMENT EXECUTE FUNCTION oms_refdata_bump();\n"
)

BACKWARD = (
    "DROP TRIGGER IF EXISTS oms_refdata_bump ON orders_broker;\n"
    "DROP TRIGGER IF EXISTS oms_refdata_bump ON orders_fixsession;\n"
    "DROP TRIGGER IF EXISTS oms_refdata_bump_config ON orders_fixsession;\n"
)


class Migration(migrations.Migration):
    dependencies = [
        ("oms_site", "0003_refdata_version"),
        ("orders", "0002_routerequest"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
