"""Query lookups shared by the apps' selectors."""

from __future__ import annotations

from typing import Any

from django.db.models import Lookup


class AnyOf(Lookup):
    """`column = ANY(%s::bigint[])` with the ids as one array parameter (bigint keys only).

    Why: `__in` writes one placeholder per id, and psycopg's client-side binding re-parses
    the whole statement each time; with a 500-order basket that parsing cost more than the
    query itself. The cast matters too: psycopg sends small ints as smallint[], and PostgreSQL
    only hashes a same-type array, so a 500-id exclusion over 4,500 rows took 30 ms instead
    of 0.5 ms. Use as `filter(AnyOf(F("pk"), ids))`.
    """

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::bigint[])", [*lhs_params, [int(v) for v in self.rhs]]
