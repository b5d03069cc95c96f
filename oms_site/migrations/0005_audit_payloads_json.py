"""Audit events' before and after payloads stored as json instead of jsonb (see JsonTextField).

A 1,000-account fill's allocations payload is about 190 KB of JSON: jsonb parsed it into its
binary form on every write, about 2.9 ms of PostgreSQL CPU, where json only checks its syntax
(about 0.1 ms) and keeps the canonical text the event's hash was computed over. `meta` stays
jsonb: it is small and filtered by key (`meta__execution=`).

Rows already stored are converted in place (one rewrite of the table for both columns): each
keeps its value (jsonb's text of it), so `audit_verify` recomputes the same hashes; backwards,
the json texts are parsed into jsonb again. Both directions keep the columns' lz4 compression.
"""

from django.db import migrations

import oms_site.models

COLUMNS = ("before", "after")


def _alter(kind: str) -> str:
    """The columns' type change, keeping their compression (a new type resets it to the
    server's default): lz4 where 0004 set it, as `meta` still shows; both in one rewrite."""
    types = ", ".join(f'ALTER COLUMN "{c}" TYPE {kind} USING "{c}"::{kind}' for c in COLUMNS)
    lz4 = "".join(f', ALTER COLUMN "{c}" SET COMPRESSION lz4' for c in COLUMNS)
    return f"""
DO $$
BEGIN
    IF (SELECT attcompression FROM pg_attribute
        WHERE attrelid = 'oms_site_auditevent'::regclass AND attname = 'meta') = 'l' THEN
        ALTER TABLE oms_site_auditevent {types}{lz4};
    ELSE
        ALTER TABLE oms_site_auditevent {types};
    END IF;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("oms_site", "0004_audit_payloads_lz4")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(_alter("json"), _alter("jsonb"))],
            state_operations=[
                migrations.AlterField(
                    model_name="auditevent",
                    name=name,
                    field=oms_site.models.JsonTextField(blank=True, null=True),
                )
                for name in COLUMNS
            ],
        )
    ]
