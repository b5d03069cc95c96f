"""oms_site.rows.rows_update: many rows' fields in one statement, relations by their ids."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from allocations.models import CashBalance
from oms_site.rows import rows_update
from tests import factories as f


@pytest.mark.django_db
def test_rows_update_writes_the_given_fields_of_exactly_the_given_rows(desk: Any) -> None:
    # given three accounts' USD balances and an account without one
    a, b, c, spare = (f.AccountFactory(code=f"ROWS-{n}", desk=desk) for n in range(4))
    CashBalance.objects.filter(account__in=[a, b, c, spare]).delete()
    ba, bb, bc = (
        f.CashBalanceFactory(account=x, settled=Decimal("10.00"), version=1) for x in (a, b, c)
    )
    # when two of them change settled, version and (one) account in memory and are written
    ba.settled, ba.version = Decimal("11.25"), 2
    bb.settled, bb.version, bb.account = Decimal("-3.50"), 7, spare
    with CaptureQueriesContext(connection) as queries:
        rows_update(CashBalance, [ba, bb], ["settled", "version", "account"])
    # then one statement wrote exactly those fields of exactly those rows
    assert len(queries) == 1
    rows = {
        r.pk: (r.account_id, r.settled, r.pending, r.version) for r in CashBalance.objects.all()
    }
    assert rows[ba.pk] == (a.pk, Decimal("11.25"), Decimal("0.00"), 2)
    assert rows[bb.pk] == (spare.pk, Decimal("-3.50"), Decimal("0.00"), 7)
    assert rows[bc.pk] == (c.pk, Decimal("10.00"), Decimal("0.00"), 1)


@pytest.mark.django_db
def test_rows_update_of_no_rows_sends_nothing() -> None:
    with CaptureQueriesContext(connection) as queries:
        rows_update(CashBalance, [], ["settled"])
    assert len(queries) == 0
