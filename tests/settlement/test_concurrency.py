"""Two settlement runs of the same day at once (beat and a back-office click)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from settlement.models import SettlementFile
from settlement.services import settlement_run
from tests.settlement.helpers import TRADE_DATE, golden_day, golden_reference


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_of_one_day_write_one_version():
    # given a day with allocations
    ref = golden_reference()
    golden_day(ref)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait()
            result = settlement_run(trade_date=TRADE_DATE)
            outcomes.append(result.summary["custodians"][0]["outcome"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    # when two runs start together
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # then the advisory lock serialised them: one wrote v1, the other found it unchanged
    assert errors == []
    assert sorted(outcomes) == ["created", "unchanged"]
    assert list(SettlementFile.objects.values_list("version", flat=True)) == [1]
