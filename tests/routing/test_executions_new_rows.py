"""Gateway batches whose fills are the first in their accounts: the position and cash rows they
create are taken in the batch's fixed lock order, so two batches cannot deadlock over them."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connection

from allocations.models import Allocation, CashBalance, Position
from oms_site.audit import audit_verify
from orders.fix.django_handler import _plain_connection_params
from orders.models import Execution, Order
from orders.services import executions as executions_module
from orders.services.executions import execution_apply, executions_apply
from tests import factories as f
from tests.allocations.support import make_block
from tests.routing.conftest import report

KEY = "FIX.4.4:OMS->BRKA"
D = Decimal


def _blocked_on_a_lock(pid: int) -> bool:
    """Whether backend `pid` waits on a heavyweight lock now (asked on a connection of its own)."""
    with psycopg.connect(autocommit=True, **_plain_connection_params()) as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    return row is not None and row[0] == "Lock"


def _fill(placement: Any, exec_id: str) -> Any:
    return report(
        placement.cl_ord_id,
        "F",
        "2",
        exec_id=exec_id,
        last_qty="100",
        last_px="10",
        cum="100",
        avg="10",
    )


def _pipelined_from_two_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block of two orders filled as a big block is (pipeline mode, the read split), by the
    gateway's service and by the allocation it calls."""
    import allocations.services as alloc_services

    monkeypatch.setattr(executions_module, "PIPELINE_MIN_ORDERS", 2)
    monkeypatch.setattr(alloc_services, "PIPELINE_MIN_ORDERS", 2)


def _fill_until_blocked(
    placement: Any, exec_id: str
) -> tuple[threading.Thread, list[int], list[BaseException]]:
    """Apply the block's fill (`execution_apply`) in a thread of its own, and return once its
    backend waits on a lock (or after 20 s): the thread, its backend pid, its errors."""
    pid: list[int] = []
    errors: list[BaseException] = []

    def filler() -> None:
        try:
            connection.ensure_connection()
            pid.append(connection.connection.info.backend_pid)
            execution_apply(session_key=KEY, report=_fill(placement, exec_id))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=filler)
    thread.start()
    deadline = time.monotonic() + 20
    while not (pid and _blocked_on_a_lock(pid[0])) and time.monotonic() < deadline:
        time.sleep(0.02)
    return thread, pid, errors


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("positions_exist", "b_one_by_one"),
    [(False, False), (True, False), (False, True)],
    ids=["new-positions", "new-cash", "new-positions-batch-and-single-reports"],
)
def test_two_batches_creating_the_same_rows_in_opposite_orders_do_not_deadlock(
    role_groups, monkeypatch, positions_exist, b_one_by_one
):
    # given two accounts with no cash row, and four one-order blocks: batch A fills P's then
    # Q's, batch B fills Q's then P's (in the same instrument: no position either; or in two
    # instruments of one currency whose positions exist: only the cash rows are new); or B's
    # reports applied one by one, each in its own transaction
    trader = f.UserFactory(username="trader_n", role="Trader")
    desk = f.DeskFactory(code="NR")
    broker = f.BrokerFactory(code="NRB")
    p, q = (f.AccountFactory(code=c, desk=desk) for c in ("NR-P", "NR-Q"))
    first = f.InstrumentFactory(symbol="NRI")
    second = f.InstrumentFactory(symbol="NRJ") if positions_exist else first
    if positions_exist:
        for account in (p, q):
            for instrument in (first, second):
                f.PositionFactory(
                    account=account, instrument=instrument, quantity=D(0), avg_cost=D(0)
                )

    def block(instrument, account):
        return make_block(
            instrument=instrument, accounts=[account], quantities=[100], user=trader, broker=broker
        )

    a1, a2, b1, b2 = block(first, p), block(first, q), block(second, q), block(second, p)
    batches = {
        "A": [_fill(a1[2], "A-1"), _fill(a2[2], "A-2")],
        "B": [_fill(b1[2], "B-1"), _fill(b2[2], "B-2")],
    }
    # Each batch stops after its first report until the other batch applied its own first
    # report or waits on a lock (then it cannot, and this batch goes on).
    pids: dict[str, int] = {}
    done = {name: threading.Event() for name in batches}
    original = executions_module._execution_apply

    def paced(session_key, report_, *args, **kwargs):
        result = original(session_key, report_, *args, **kwargs)
        name, number = report_.exec_id.split("-")
        if number == "1":
            done[name].set()
            other = "B" if name == "A" else "A"
            deadline = time.monotonic() + 20
            while not done[other].is_set() and time.monotonic() < deadline:
                if other in pids and _blocked_on_a_lock(pids[other]):
                    break
                time.sleep(0.02)
        return result

    monkeypatch.setattr(executions_module, "_execution_apply", paced)
    deadlocks: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def applier(name):
        try:
            connection.ensure_connection()
            pids[name] = connection.connection.info.backend_pid
            start.wait()
            reports = [(r, None) for r in batches[name]]
            try:
                if name == "B" and b_one_by_one:
                    for r, _ in reports:
                        execution_apply(session_key=KEY, report=r)
                else:
                    executions_apply(session_key=KEY, reports=reports)
            except (OperationalError, psycopg.errors.DeadlockDetected) as exc:
                cause = exc if exc.__cause__ is None else exc.__cause__
                if not isinstance(cause, psycopg.errors.DeadlockDetected):
                    raise
                # what the gateway does then: the same reports one by one
                deadlocks.append(name)
                for r, _ in reports:
                    execution_apply(session_key=KEY, report=r)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # when both batches are applied at once
    threads = [threading.Thread(target=applier, args=(name,)) for name in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # then neither met a deadlock, and every fill is counted once
    assert errors == []
    assert deadlocks == []
    assert Execution.objects.filter(exec_id__in=["A-1", "A-2", "B-1", "B-2"]).count() == 4
    assert Allocation.objects.count() == 4
    assert [o.cum_qty for o in Order.objects.order_by("pk")] == [D(100)] * 4
    expected_positions = (
        {(a.pk, i.pk): D(100) for a in (p, q) for i in (first, second)}
        if positions_exist
        else {(p.pk, first.pk): D(200), (q.pk, first.pk): D(200)}
    )
    assert {
        (x.account_id, x.instrument_id): x.quantity for x in Position.objects.all()
    } == expected_positions
    versions = {x.version for x in Position.objects.all()}
    assert versions == ({2} if positions_exist else {3})
    for account in (p, q):
        net = sum(Allocation.objects.filter(account=account).values_list("net", flat=True))
        assert net == D(2000)
        [cash] = CashBalance.objects.filter(account=account)
        assert (cash.currency, cash.settled, cash.pending, cash.version) == (
            "USD",
            D(0),
            D(-2000),
            2,
        )
    assert audit_verify() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("big", [False, True], ids=["small-fill", "big-fill-pipelined"])
def test_a_fill_makes_a_missing_position_in_account_order_before_locking_later_ones(
    role_groups, monkeypatch, big
):
    if big:  # the read split, the positions' lock a statement of its own (pipeline mode)
        _pipelined_from_two_orders(monkeypatch)
    # given a block of two orders never filled, on accounts P (no position in the
    # instrument) and Q (a position, flat), P before Q in account order
    trader = f.UserFactory(username="trader_o", role="Trader")
    desk = f.DeskFactory(code="OR")
    broker = f.BrokerFactory(code="ORB")
    p, q = (f.AccountFactory(code=c, desk=desk) for c in ("OR-P", "OR-Q"))
    instrument = f.InstrumentFactory(symbol="ORI")
    q_position = f.PositionFactory(account=q, instrument=instrument, quantity=D(0), avg_cost=D(0))
    _, _, placement = make_block(
        instrument=instrument, accounts=[p, q], quantities=[100, 100], user=trader, broker=broker
    )
    # and another transaction making P's position (not committed)
    other = psycopg.connect(autocommit=False, **_plain_connection_params())
    other.execute(
        "INSERT INTO allocations_position (account_id, instrument_id, quantity, avg_cost, "
        "realised_pnl, version, updated_at) VALUES (%s, %s, 0, 0, 0, 1, now())",
        [p.pk, instrument.pk],
    )
    # when the block's fill is applied meanwhile
    thread, pid, errors = _fill_until_blocked(placement, "O-1")
    try:
        # then it waits for P's position, and has not locked Q's (a later account) meanwhile
        assert pid and _blocked_on_a_lock(pid[0])
        locked = other.execute(
            "SELECT id FROM allocations_position WHERE id = %s FOR UPDATE NOWAIT",
            [q_position.pk],
        ).fetchall()
        assert locked == [(q_position.pk,)]
    finally:
        other.rollback()  # the other transaction gives up P's position
        other.close()
        thread.join()
    # and once the other transaction ended, the fill made P's position and moved both (50 each)
    assert errors == []
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "version"
        )
    ) == [(p.pk, D(50), 2), (q.pk, D(50), 2)]


@pytest.mark.django_db
def test_a_duplicate_fill_of_orders_never_filled_makes_no_position(role_groups):
    # given a block of two orders never filled, no position in its instrument, and the
    # (session, ExecID) of its fill stored already
    trader = f.UserFactory(username="trader_u", role="Trader")
    broker = f.BrokerFactory(code="DUB")
    accounts = [f.AccountFactory(code=c) for c in ("DU-P", "DU-Q")]
    instrument = f.InstrumentFactory(symbol="DUI")
    _, _, placement = make_block(
        instrument=instrument, accounts=accounts, quantities=[100, 100], user=trader, broker=broker
    )
    Execution.objects.create(
        session_key=KEY,
        exec_id="DU-1",
        exec_type="trade",
        last_qty=D(0),
        last_px=D(0),
        trade_date="2026-11-20",
    )
    # when the fill arrives (again)
    result = execution_apply(session_key=KEY, report=_fill(placement, "DU-1"))
    # then nothing is booked and no position or cash row was left behind
    assert result is None
    assert not Position.objects.filter(instrument=instrument).exists()
    assert not CashBalance.objects.filter(account__in=accounts).exists()
    assert [o.cum_qty for o in Order.objects.filter(block=placement.block)] == [D(0), D(0)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("big", [False, True], ids=["small-fill", "big-fill-pipelined"])
def test_a_fill_locks_cash_only_once_every_position_is_locked(role_groups, monkeypatch, big):
    if big:  # the orders written first, then the rows with their cash, then the positions
        _pipelined_from_two_orders(monkeypatch)
    # given a block of two orders on accounts P and Q (P first in account order), both with a
    # position in the instrument and a cash balance
    trader = f.UserFactory(username="trader_c", role="Trader")
    desk = f.DeskFactory(code="CL")
    broker = f.BrokerFactory(code="CLB")
    p, q = (f.AccountFactory(code=c, desk=desk) for c in ("CL-P", "CL-Q"))
    instrument = f.InstrumentFactory(symbol="CLI")
    positions = [
        f.PositionFactory(account=a, instrument=instrument, quantity=D(0), avg_cost=D(0))
        for a in (p, q)
    ]
    p_cash, q_cash = (f.CashBalanceFactory(account=a, currency="USD") for a in (p, q))
    _, _, placement = make_block(
        instrument=instrument, accounts=[p, q], quantities=[100, 100], user=trader, broker=broker
    )
    # and another transaction holding P's cash balance
    other = psycopg.connect(autocommit=False, **_plain_connection_params())
    other.execute("SELECT id FROM allocations_cashbalance WHERE id = %s FOR UPDATE", [p_cash.pk])
    # when the block's fill is applied meanwhile
    thread, pid, errors = _fill_until_blocked(placement, "C-1")
    try:
        # then it waits for P's cash holding both positions, and not Q's cash (a later account)
        assert pid and _blocked_on_a_lock(pid[0])
        for position in positions:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SAVEPOINT s")
                try:
                    other.execute(
                        "SELECT id FROM allocations_position WHERE id = %s FOR UPDATE NOWAIT",
                        [position.pk],
                    )
                finally:
                    other.execute("ROLLBACK TO SAVEPOINT s")
        locked = other.execute(
            "SELECT id FROM allocations_cashbalance WHERE id = %s FOR UPDATE NOWAIT",
            [q_cash.pk],
        ).fetchall()
        assert locked == [(q_cash.pk,)]
    finally:
        other.rollback()  # the other transaction gives up the cash balances
        other.close()
        thread.join()
    # and once the other transaction ended, the fill moved both positions and cash balances
    assert errors == []
    assert sorted(
        Position.objects.filter(instrument=instrument).values_list(
            "account_id", "quantity", "version"
        )
    ) == [(p.pk, D(50), 2), (q.pk, D(50), 2)]
    assert sorted(CashBalance.objects.values_list("account_id", "pending", "version")) == [
        (p.pk, D("-500.00"), 2),
        (q.pk, D("-500.00"), 2),
    ]
