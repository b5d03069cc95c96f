"""A small book in which every API detail path has a row: one per entitlement side.

`world` holds one user per role (plus a user without a role, and anonymous), pm_a's account ACC-A
on trader_a's desk, pm_b's account ACC-B on another desk, and for each of the two accounts an
approved order, a warned order, an open block and a filled block (with its execution and
allocation). The firm also has a kill switch, a rule, a breach report, a settlement file and a
reconciliation break. Rows of ACC-A are the "own" targets of the role matrix, rows of ACC-B the
"foreign" ones (pm_a and trader_a must get 404 on them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings

from compliance.models import BreachReport, Rule
from oms_site import roles
from orders.enums import OrderStatus
from orders.models import Block, Execution, KillSwitch, Order
from settlement.models import ReconBreak, SettlementFile
from settlement.services import settlement_run, statement_upload
from tests import factories as f
from tests.allocations.support import fill, make_block, make_order_placement

# The order in which the matrix lists its expectations.
ROLE_NAMES = ("anonymous", "norole", "pm", "trader", "compliance", "backoffice", "admin")
FILL_DATE = dt.date(2026, 11, 20)
SETTLED_DATE = dt.date(2026, 11, 19)


@dataclass
class World:
    users: dict[str, Any]
    account_a: Any
    account_b: Any
    instrument: Any
    broker: Any
    order_a: Order
    order_b: Order
    warned_a: Order
    warned_b: Order
    block_a: Block
    block_b: Block
    filled_block_a: Block
    filled_block_b: Block
    execution_a: Execution
    execution_b: Execution
    allocation_a: Any
    allocation_b: Any
    kill_switch: KillSwitch
    rule: Rule
    breach_report: BreachReport
    settlement_file: SettlementFile
    recon_break: ReconBreak
    extra: dict[str, Any] = field(default_factory=dict)


def _order(account: Any, instrument: Any, user: Any, **kw: Any) -> Order:
    values: dict[str, Any] = {
        "side": "buy",
        "quantity": Decimal("100"),
        "order_type": "limit",
        "limit_price": Decimal("100.00"),
        "time_in_force": "day",
        "status": OrderStatus.APPROVED,
        "compliance_outcome": "pass",
    }
    values.update(kw)
    values.setdefault("leaves_qty", values["quantity"])
    order = Order.objects.create(account=account, instrument=instrument, created_by=user, **values)
    order.refresh_from_db()
    return order


def _open_block(account: Any, instrument: Any, pm: Any, trader: Any) -> Block:
    orders = [_order(account, instrument, pm, quantity=Decimal(q)) for q in ("30", "70")]
    block = Block.objects.create(
        instrument=instrument,
        side="buy",
        order_type="limit",
        limit_price=Decimal("100.00"),
        time_in_force="day",
        quantity=Decimal("100"),
        status="open",
        created_by=trader,
    )
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(block=block)
    return block


def build_world() -> World:
    """Create the world's rows (users, accounts, orders, blocks, fills, files, breaks)."""
    roles.roles_sync()
    pm = f.UserFactory(username="pm_a", role=roles.PM)
    pm_other = f.UserFactory(username="pm_b", role=roles.PM)
    trader = f.UserFactory(username="trader_a", role=roles.TRADER)
    compliance_officer = f.UserFactory(username="compliance_a", role=roles.COMPLIANCE)
    backoffice = f.UserFactory(username="backoffice_a", role=roles.BACK_OFFICE)
    administrator = f.UserFactory(username="admin_a", role=roles.ADMINISTRATOR)
    desk = f.DeskFactory(code="EQ")
    desk.traders.add(trader)
    account = f.AccountFactory(code="ACC-A", desk=desk)
    account.managers.add(pm)
    f.CashBalanceFactory(account=account, settled=Decimal("1000000.00"))
    other_account = f.AccountFactory(code="ACC-B", desk=f.DeskFactory(code="FX"))
    other_account.managers.add(pm_other)
    f.CashBalanceFactory(account=other_account, settled=Decimal("1000000.00"))
    instrument = f.InstrumentFactory(symbol="ACME")
    norole = f.UserFactory(username="norole_a", is_staff=False)
    trader_b = f.UserFactory(username="trader_b", role=roles.TRADER)
    other_account.desk.traders.add(trader_b)
    broker = f.BrokerFactory(code="GS", rank=1)
    f.FixSessionFactory(broker=broker)

    order_a = _order(account, instrument, pm)
    order_a2 = _order(account, instrument, pm, quantity=Decimal("50"))
    order_b2 = _order(other_account, instrument, pm_other, quantity=Decimal("50"))
    order_b = _order(other_account, instrument, pm_other)
    warned = {"status": OrderStatus.AWAITING_OVERRIDE, "compliance_outcome": "warn"}
    warned_a = _order(account, instrument, pm, **warned)
    warned_b = _order(other_account, instrument, pm_other, **warned)
    block_a = _open_block(account, instrument, pm, trader)
    block_b = _open_block(other_account, instrument, pm_other, trader_b)

    filled: dict[str, Any] = {}
    for key, acct, owner in (("a", account, trader), ("b", other_account, trader_b)):
        block, _orders, placement = make_block(
            instrument=instrument,
            accounts=[acct, acct],
            quantities=[40, 60],
            user=owner,
            broker=broker,
        )
        rows = fill(placement, 50, "100.00", trade_date=FILL_DATE)
        filled[key] = (block, rows[0].execution, rows[0])

    # A third account, at its own custodian, settled on an earlier day: its settlement file and
    # reconciliation break do not stop re-allocation of the blocks above.
    settled_account = f.AccountFactory(code="ACC-S", desk=account.desk)
    settled_account.managers.add(pm)
    settled_order = _order(settled_account, instrument, pm, status=OrderStatus.WORKING)
    fill(
        make_order_placement(order=settled_order, broker=broker),
        10,
        "100.00",
        trade_date=SETTLED_DATE,
    )
    settlement_run(trade_date=SETTLED_DATE, user=backoffice)
    statement = statement_upload(
        user=backoffice,
        filename="stmt.csv",
        content=(
            "account,instrument,trade_date,side,quantity,price\n"
            f"ACC-S,ACME,{SETTLED_DATE.isoformat()},buy,5,100\n"
        ).encode(),
        source=settled_account.custodian.code,
    )

    with transaction.atomic():
        switch = KillSwitch.objects.create(
            scope="account", target=other_account.code, reason="drill", engaged_by=trader_b
        )
        rule = Rule.objects.create(
            name="size check",
            rule_type="fat_finger",
            severity="warn",
            params={"max_quantity": "1000000"},
        )
        report = BreachReport.objects.create(as_of=FILL_DATE, run_by=compliance_officer)
        # A rule scoped to each PM's account: its scope must not tell pm_a about ACC-B.
        scoped = Rule.objects.create(
            name="no shorts in managed accounts",
            rule_type="short_selling",
            severity="block",
            scope="account",
        )
        scoped.accounts.set([account, other_account])
    return World(
        users={
            "anonymous": None,
            "norole": norole,
            "pm": pm,
            "trader": trader,
            "compliance": compliance_officer,
            "backoffice": backoffice,
            "admin": administrator,
        },
        account_a=account,
        account_b=other_account,
        instrument=instrument,
        broker=broker,
        order_a=order_a,
        order_b=order_b,
        warned_a=warned_a,
        warned_b=warned_b,
        block_a=block_a,
        block_b=block_b,
        filled_block_a=filled["a"][0],
        filled_block_b=filled["b"][0],
        execution_a=filled["a"][1],
        execution_b=filled["b"][1],
        allocation_a=filled["a"][2],
        allocation_b=filled["b"][2],
        kill_switch=switch,
        rule=rule,
        breach_report=report,
        settlement_file=SettlementFile.objects.get(),
        recon_break=ReconBreak.objects.filter(statement=statement).order_by("pk").first(),
        extra={
            "order_a2": order_a2,
            "order_b2": order_b2,
            "settled_account": settled_account,
            "pm_other": pm_other,
            "trader_b": trader_b,
        },
    )


@pytest.fixture(scope="module")
def world(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[World]:
    """The world, built once per test module inside a transaction rolled back at its end.

    The same pattern as TestCase.setUpTestData: each test's own transaction is a savepoint in
    this one, so what a test changes is undone before the next test sees the world.
    """
    overrides = override_settings(
        SETTLEMENT_DIR=tmp_path_factory.mktemp("settlement"),
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    with django_db_blocker.unblock(), overrides:
        atomic = transaction.atomic()
        atomic._from_testcase = True  # type: ignore[attr-defined]
        atomic.__enter__()
        try:
            yield build_world()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
