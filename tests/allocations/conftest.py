"""Fixtures of the allocation tests: accounts on one desk, a broker with a commission schedule."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from allocations.models import CommissionSchedule
from tests import factories as f


@pytest.fixture
def broker(db: Any) -> Any:
    """A broker charging 10 bps + 0.01/share, at least 5.00 a ticket, and 0.5 bps of fees."""
    b = f.BrokerFactory(code="BRKA")
    CommissionSchedule.objects.create(
        broker=b,
        bps=Decimal("10"),
        per_share=Decimal("0.01"),
        min_per_ticket=Decimal("5.00"),
        fees_bps=Decimal("0.5"),
    )
    return b


@pytest.fixture
def free_broker(db: Any) -> Any:
    """A broker without a commission schedule (everything free)."""
    return f.BrokerFactory(code="FREE")


@pytest.fixture
def three_accounts(pm: Any, desk: Any) -> list[Any]:
    """pm_a's accounts A1, A2, A3 on trader_a's desk (no cash yet)."""
    accounts = []
    for code in ("A1", "A2", "A3"):
        account = f.AccountFactory(code=code, desk=desk)
        account.managers.add(pm)
        accounts.append(account)
    return accounts
