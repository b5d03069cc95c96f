"""executions_apply: a batch of reports in one transaction gives exactly the one-by-one results."""

from __future__ import annotations

import itertools
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from allocations.models import Allocation, CashBalance, CommissionSchedule, Position
from oms_site.audit import audit_verify
from oms_site.models import AuditEvent
from orders.models import Block, Broker, Execution, FixMessage, Order, OutboxMessage, Placement
from orders.services.executions import execution_apply, executions_apply
from orders.services.routing import block_route, order_replace_request, order_route
from tests import factories as f
from tests.allocations.support import make_block
from tests.routing.conftest import report

pytestmark = pytest.mark.django_db
KEY = "FIX.4.4:OMS->BRKA"
D = Decimal
_worlds = itertools.count(1)


class World:
    """A block of three orders and a lone order, each routed to BRKA, on accounts of its own."""

    def __init__(self, trader: Any, pm: Any, desk: Any) -> None:
        n = next(_worlds)
        self.tag = f"W{n}"
        self.instrument = f.InstrumentFactory(symbol=f"BAT{n}")
        accounts = [f.AccountFactory(code=f"{self.tag}-{i}", desk=desk) for i in range(4)]
        for account in accounts:
            account.managers.add(pm)
        self.accounts = accounts
        self.orders = [
            Order.objects.create(
                account=account,
                instrument=self.instrument,
                side="buy",
                quantity=D(q),
                leaves_qty=D(q),
                order_type="market",
                time_in_force="day",
                status="approved",
                compliance_outcome="pass",
                created_by=pm,
            )
            for account, q in zip(accounts, (60, 30, 10, 100), strict=True)
        ]
        self.block = Block.objects.create(
            instrument=self.instrument,
            side="buy",
            order_type="market",
            quantity=D(100),
            created_by=trader,
        )
        Order.objects.filter(pk__in=[o.pk for o in self.orders[:3]]).update(block=self.block)
        self.block_placement = block_route(user=trader, block_id=self.block.pk, broker_code="BRKA")
        self.lone_placement = order_route(
            user=trader, order_id=self.orders[3].pk, broker_code="BRKA"
        )

        self.cl_ord_ids = {
            "block": self.block_placement.cl_ord_id,
            "lone": self.lone_placement.cl_ord_id,
            "unknown": f"NOSUCH-{self.tag}",
        }
        self.placement_names = {self.block_placement.pk: "block", self.lone_placement.pk: "lone"}

    def split_block(self) -> None:
        """A second placement of the block, at BRKB, for 40 of its 100."""
        second = Placement.objects.create(
            block=self.block,
            broker=Broker.objects.get(code="BRKB"),
            cl_ord_id=f"{self.tag}-SPLIT",
            quantity=D(40),
            status="working",
        )
        self.cl_ord_ids["block2"] = second.cl_ord_id
        self.placement_names[second.pk] = "block2"

    def replace_lone(self, trader: Any) -> None:
        """The lone order acknowledged, then a replace (to 150) requested: ClOrdID 'new'."""
        ack = report(self.cl_ord_ids["lone"], "0", "0", exec_id=f"{self.tag}-ACK")
        execution_apply(session_key=KEY, report=ack)
        order_replace_request(user=trader, order_id=self.orders[3].pk, quantity=D(150))
        self.cl_ord_ids["new"] = OutboxMessage.objects.get(
            msg_type="G", placement_id=self.lone_placement.pk
        ).cl_ord_id

    def reports(self, specs: list[tuple[Any, ...]]) -> list[Any]:
        """Reports from (target, exec_type, ord_status, exec_no, last_qty, last_px[, options])
        specs; options may name the OrigClOrdID's target ("orig") and give OrderQty ("qty")."""
        out = []
        for target, exec_type, ord_status, number, last_qty, last_px, *extra in specs:
            options = extra[0] if extra else {}
            orig = options.get("orig")
            out.append(
                report(
                    self.cl_ord_ids[target],
                    exec_type,
                    ord_status,
                    exec_id=f"{self.tag}-E{number}",
                    last_qty=last_qty,
                    last_px=last_px,
                    cum=last_qty or "0",
                    avg=last_px or "0",
                    orig=self.cl_ord_ids[orig] if orig else None,
                    qty=options.get("qty", "100"),
                )
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the reports changed, keyed by position in this world (not by pk)."""
        order_index = {o.pk: i for i, o in enumerate(self.orders)}
        account_index = {a.pk: i for i, a in enumerate(self.accounts)}
        placement_name = self.placement_names
        orders = [
            Order.objects.values_list(
                "status", "cum_qty", "avg_px", "leaves_qty", "version", "quantity"
            ).get(pk=o.pk)
            for o in self.orders
        ]
        placements = {
            name: Placement.objects.values_list(
                "status", "cum_qty", "avg_px", "version", "broker_order_id", "quantity"
            ).get(pk=pk)
            for pk, name in placement_name.items()
        }
        block = Block.objects.values_list("status", "cum_qty", "avg_px", "version").get(
            pk=self.block.pk
        )
        executions = [
            (
                e.exec_id.split("-", 1)[1],
                placement_name.get(e.placement_id),
                e.exec_type,
                e.last_qty,
                e.last_px,
                e.gross,
                e.unknown_order,
                e.text,
            )
            for e in Execution.objects.filter(exec_id__startswith=f"{self.tag}-").order_by("pk")
        ]
        allocations = [
            (
                order_index[a.order_id],
                account_index[a.account_id],
                a.kind,
                a.quantity,
                a.price,
                a.gross,
                a.commission,
                a.fees,
                a.net,
                a.cum_quantity,
                a.cum_net,
                a.reversal_of_id is not None,
            )
            for a in Allocation.objects.filter(instrument=self.instrument).order_by("pk")
        ]
        positions = sorted(
            (account_index[p.account_id], p.quantity, p.avg_cost, p.realised_pnl, p.version)
            for p in Position.objects.filter(instrument=self.instrument)
        )
        cash = sorted(
            (account_index[c.account_id], c.currency, c.settled, c.pending, c.version)
            for c in CashBalance.objects.filter(account__in=self.accounts)
        )
        labels = {f"order:{o.pk}": f"order{i}" for i, o in enumerate(self.orders)}
        labels.update({f"placement:{pk}": name for pk, name in placement_name.items()})
        labels[f"block:{self.block.pk}"] = "block"
        labels[f"block:{self.block.pk}:allocations"] = "allocations"
        audit = {
            label: list(
                AuditEvent.objects.filter(stream=stream)
                .order_by("seq")
                .values_list("seq", "action", "object_type")
            )
            for stream, label in labels.items()
        }
        return {
            "orders": orders,
            "placements": placements,
            "block": block,
            "executions": executions,
            "allocations": allocations,
            "positions": positions,
            "cash": cash,
            "audit": audit,
        }


@pytest.fixture
def world(trader, pm, desk, brokers):
    CommissionSchedule.objects.get_or_create(
        broker=brokers["BRKA"],
        defaults={
            "bps": D("5"),
            "per_share": D("0.01"),
            "min_per_ticket": D("1.00"),
            "fees_bps": D("0.5"),
        },
    )
    return lambda: World(trader, pm, desk)


# Acks and fills on a block and a lone order, interleaved, with a duplicate ExecID inside the
# batch, a report of an unknown ClOrdID (and its duplicate), a fill that fills the block, and an
# overfill after it (stored and flagged, not booked).
MIX = [
    ("block", "0", "0", 1, None, None),
    ("lone", "0", "0", 2, None, None),
    ("block", "F", "1", 3, "50", "100"),
    ("lone", "F", "1", 4, "40", "99"),
    ("block", "F", "1", 3, "50", "100"),
    ("unknown", "F", "1", 5, "10", "5"),
    ("block", "F", "1", 6, "30", "101.37"),
    ("lone", "F", "2", 7, "60", "99.5"),
    ("unknown", "F", "1", 5, "10", "5"),
    ("block", "F", "2", 8, "20", "102"),
    ("block", "F", "2", 9, "10", "103"),
]


def _result(execution):
    if execution is None:
        return None
    return (execution.exec_id.split("-", 1)[1], execution.last_qty, execution.unknown_order)


def _events(monkeypatch):
    sent = []
    monkeypatch.setattr("oms_site.realtime._send_many", lambda items: sent.extend(items))
    return sent


def _statements(monkeypatch):
    """The text of every statement psycopg sends from here on."""
    import psycopg

    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def _event_summary(sent, w):
    order_index = {o.pk: i for i, o in enumerate(w.orders)}
    account_group = {f"acct-{a.pk}": f"acct-{i}" for i, a in enumerate(w.accounts)}
    out = []
    for group, message in sent:
        events = message["events"] if message["type"] == "blotter.events" else [message["event"]]
        for e in events:
            order = e["data"].get("order", e["data"])
            out.append(
                (
                    account_group.get(group, group),
                    e["type"],
                    order_index[e["order_id"]],
                    e["version"],
                    order.get("status"),
                    order.get("cum_qty"),
                )
            )
    return out


def test_batch_gives_exactly_the_one_by_one_results(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    # given two identical worlds and the same reports for each
    one, batch = world(), world()
    sent = _events(monkeypatch)
    # when one world gets them one by one and the other as one batch
    with django_capture_on_commit_callbacks(execute=True):
        singles = [
            _result(execution_apply(session_key=KEY, report=r, raw_message_id=None))
            for r in one.reports(MIX)
        ]
    single_events = _event_summary(sent, one)
    sent.clear()
    statements = _statements(monkeypatch)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        batched = [
            _result(e)
            for e in executions_apply(
                session_key=KEY, reports=[(r, None) for r in batch.reports(MIX)]
            )
        ]
    # then each report's result, and every row and audit event, are the same
    assert batched == singles
    # and the rows were locked up front in one statement, which also read the lone order's:
    # a report's own locking read ran for the block's placement (once, by its first report)
    # and for each report of the unknown ClOrdID (two), none for the lone order's three
    assert len([q for q in statements if q.startswith("WITH batch_placements AS")]) == 1
    assert len([q for q in statements if q.startswith("WITH p AS MATERIALIZED")]) == 3
    assert singles == [
        ("E1", D(0), False),
        ("E2", D(0), False),
        ("E3", D(50), False),
        ("E4", D(40), False),
        None,
        ("E5", D(10), True),
        ("E6", D(30), False),
        ("E7", D(60), False),
        None,
        ("E8", D(20), False),
        ("E9", D(0), False),
    ]
    expected = one.snapshot()
    assert batch.snapshot() == expected
    assert [row[:4] for row in expected["orders"]] == [
        ("filled", D(60), D("100.811"), D(0)),
        ("filled", D(30), D("100.811"), D(0)),
        ("filled", D(10), D("100.811"), D(0)),
        ("filled", D(100), D("99.3"), D(0)),
    ]
    assert expected["block"][:3] == ("filled", D(100), D("100.811"))
    # and the blotter events are the same, in the same order, after the one commit
    assert _event_summary(sent, batch) == single_events
    assert len(callbacks) >= 1
    assert audit_verify() == []


# A block split over two placements filled in turns (the same rows reached through two
# ClOrdIDs), and a lone order replaced in the middle of the batch: pending replace, a fill
# under the old ClOrdID, the replace confirmed, a fill under the new ClOrdID.
SPLIT_AND_REPLACE = [
    ("block", "0", "0", 1, None, None),
    ("block", "F", "1", 2, "30", "100"),
    ("block2", "F", "1", 3, "20", "101"),
    ("block", "F", "1", 4, "10", "102"),
    ("lone", "F", "1", 5, "20", "99"),
    ("new", "E", "E", 6, None, None, {"orig": "lone"}),
    ("lone", "F", "1", 7, "10", "99.2"),
    ("new", "5", "0", 8, None, None, {"orig": "lone", "qty": "150"}),
    ("new", "F", "1", 9, "30", "99.5", {"qty": "150"}),
    ("block2", "0", "0", 10, None, None),
    ("block", "F", "1", 2, "30", "100"),
    ("new", "F", "2", 11, "90", "99.4", {"qty": "150"}),
    ("block2", "F", "1", 12, "20", "101.5"),
]


def test_batch_with_a_split_block_and_a_replace_gives_the_one_by_one_results(
    world, trader, monkeypatch, django_capture_on_commit_callbacks
):
    # given two identical worlds, each with its block split over two placements and its lone
    # order acknowledged with a replace requested
    one, batch = world(), world()
    for w in (one, batch):
        w.split_block()
        w.replace_lone(trader)
    sent = _events(monkeypatch)
    # when one world gets the reports one by one and the other as one batch
    with django_capture_on_commit_callbacks(execute=True):
        singles = [
            _result(execution_apply(session_key=KEY, report=r))
            for r in one.reports(SPLIT_AND_REPLACE)
        ]
    single_events = _event_summary(sent, one)
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        batched = [
            _result(e)
            for e in executions_apply(
                session_key=KEY, reports=[(r, None) for r in batch.reports(SPLIT_AND_REPLACE)]
            )
        ]
    # then results, rows, audit and events are the same
    assert batched == singles
    assert [r is None for r in singles] == [False] * 10 + [True, False, False]
    expected = one.snapshot()
    assert batch.snapshot() == expected
    assert _event_summary(sent, batch) == single_events
    assert [row[:2] for row in expected["orders"]] == [
        ("partially_filled", D(48)),
        ("partially_filled", D(24)),
        ("partially_filled", D(8)),
        ("filled", D(150)),
    ]
    assert expected["placements"]["block2"][:2] == ("filled", D(40))
    assert audit_verify() == []


def test_duplicates_across_batches_are_applied_once(world):
    # given a batch already applied
    w = world()
    first = w.reports(MIX[:4])
    executions_apply(session_key=KEY, reports=[(r, None) for r in first])
    before = w.snapshot()
    # when the same reports arrive again in a later batch, with one new fill after them
    again = w.reports([*MIX[:4], ("block", "F", "1", 10, "10", "100")])
    results = executions_apply(session_key=KEY, reports=[(r, None) for r in again])
    # then only the new fill is applied
    assert [_result(e) for e in results] == [None, None, None, None, ("E10", D(10), False)]
    after = w.snapshot()
    assert len(after["executions"]) == len(before["executions"]) + 1
    assert after["orders"][3] == before["orders"][3]
    assert [o[1] for o in after["orders"][:3]] == [D(36), D(18), D(6)]


def test_a_failing_batch_changes_nothing(world, monkeypatch):
    # given a world with one fill applied, and a batch whose third report fails in allocation
    w = world()
    executions_apply(session_key=KEY, reports=[(r, None) for r in w.reports(MIX[:3])])
    before = w.snapshot()
    events_before = AuditEvent.objects.count()
    calls = []
    import allocations.services as alloc_services

    original = alloc_services.fill_allocate

    def failing(**kwargs):
        calls.append(kwargs["execution"].exec_id)
        if len(calls) == 2:
            raise RuntimeError("allocation failed")
        return original(**kwargs)

    monkeypatch.setattr(alloc_services, "fill_allocate", failing)
    batch = w.reports(
        [
            ("lone", "F", "1", 4, "40", "99"),
            ("block", "F", "1", 6, "30", "101"),
            ("block", "F", "1", 7, "10", "101"),
        ]
    )
    # when the batch is applied
    with pytest.raises(RuntimeError):
        executions_apply(session_key=KEY, reports=[(r, None) for r in batch])
    # then nothing of it is in the book, not even the reports before the failing one
    assert w.snapshot() == before
    assert AuditEvent.objects.count() == events_before
    assert not Execution.objects.filter(exec_id__in=[f"{w.tag}-E4", f"{w.tag}-E6"]).exists()
    # and the caller's fallback, one by one, applies them
    monkeypatch.setattr(alloc_services, "fill_allocate", original)
    for r in batch:
        assert execution_apply(session_key=KEY, report=r) is not None
    assert [o[1] for o in w.snapshot()["orders"]] == [D(54), D(27), D(9), D(40)]


def test_an_empty_batch_does_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert executions_apply(session_key=KEY, reports=[]) == []


def test_a_batch_of_unknown_orders_is_stored_and_flagged(world):
    # given no placement for these ClOrdIDs
    w = world()
    reports = w.reports([("unknown", "F", "1", 1, "10", "5"), ("unknown", "0", "0", 2, None, None)])
    raw = [
        FixMessage.objects.create(session_key=KEY, direction="in", msg_type="8", raw=str(i))
        for i in range(2)
    ]
    # when they arrive in one batch
    results = executions_apply(
        session_key=KEY, reports=[(r, m.pk) for r, m in zip(reports, raw, strict=True)]
    )
    # then both are stored, flagged, audited, and nothing else moved
    assert [(e.unknown_order, e.placement_id, e.raw_message_id) for e in results] == [
        (True, None, raw[0].pk),
        (True, None, raw[1].pk),
    ]
    assert AuditEvent.objects.filter(action="execution.unknown_order").count() == 2
    assert Allocation.objects.count() == 0
    assert all(o[0] == "pending_new" for o in w.snapshot()["orders"])


@pytest.mark.django_db(transaction=True)
def test_two_appliers_batching_blocks_that_share_accounts_neither_deadlock_nor_lose(role_groups):
    # given four blocks in four instruments: thread 0 fills X (accounts L) then Y (accounts H)
    # in each batch, thread 1 fills Z (accounts H) then W (accounts L): one report at a time
    # they would lock the same cash rows in opposite orders
    trader = f.UserFactory(username="trader_d", role="Trader")
    desk = f.DeskFactory(code="DL")
    broker = f.BrokerFactory(code="DLB")
    low = [f.AccountFactory(code=f"L{i}", desk=desk) for i in range(5)]
    high = [f.AccountFactory(code=f"H{i}", desk=desk) for i in range(5)]
    for account in (*low, *high):
        f.CashBalanceFactory(account=account, settled=D(0))
    quantities = [D(100)] * 5

    def block_of(symbol, accounts):
        instrument = f.InstrumentFactory(symbol=symbol)
        return make_block(
            instrument=instrument,
            accounts=accounts,
            quantities=quantities,
            user=trader,
            broker=broker,
        )

    x, y, z, w = (block_of(s, a) for s, a in (("DX", low), ("DY", high), ("DZ", high), ("DW", low)))
    rounds = 25
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def applier(number, first, second):
        try:
            start.wait()
            for i in range(rounds):
                batch = [
                    report(
                        p.cl_ord_id,
                        "F",
                        "1",
                        exec_id=f"D{number}-{i}-{k}",
                        last_qty="20",
                        last_px=str(D("10.00") + D(i % 7) / 100),
                        cum="20",
                        avg="10",
                    )
                    for k, (_, _, p) in enumerate((first, second))
                ]
                results = executions_apply(session_key=KEY, reports=[(r, None) for r in batch])
                assert all(e is not None and e.last_qty == D(20) for e in results)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # when both appliers run at once
    threads = [
        threading.Thread(target=applier, args=(0, x, y)),
        threading.Thread(target=applier, args=(1, z, w)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # then neither failed (no deadlock broken by PostgreSQL) and every fill counted once
    assert errors == []
    for block, _, _ in (x, y, z, w):
        block.refresh_from_db()
        assert (block.status, block.cum_qty) == ("filled", D(500))
        assert [o.cum_qty for o in Order.objects.filter(block=block).order_by("pk")] == [D(100)] * 5
    for account in (*low, *high):
        net = sum(Allocation.objects.filter(account=account).values_list("net", flat=True))
        assert CashBalance.objects.get(account=account).pending == -net
        assert Position.objects.filter(account=account).count() == 2
    assert audit_verify() == []


def test_a_batch_of_one_placements_reports_locks_as_one_report_does(world, monkeypatch):
    import psycopg

    # given two identical worlds, and an acknowledgement and two fills of one lone order
    one, batch = world(), world()
    plan = [("lone", "0", "0", 1, None, None), ("lone", "F", "1", 2, "40", "99")]
    plan.append(("lone", "F", "2", 3, "60", "99.5"))
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    singles = [
        _result(execution_apply(session_key=KEY, report=r, raw_message_id=None))
        for r in one.reports(plan)
    ]
    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    # when the other world gets them as one batch
    batched = [
        _result(e)
        for e in executions_apply(session_key=KEY, reports=[(r, None) for r in batch.reports(plan)])
    ]
    # then no up-front locking read ran (the first report's lock covers its placement and
    # order), and the results and rows are those of one by one
    assert not [s for s in sent if s.startswith("WITH batch_placements AS")]
    assert len([s for s in sent if "FOR UPDATE OF p)" in s]) == 1
    # and the acknowledgement's writes of the placement and the order went with the first
    # fill's (no statement of their own)
    assert not [s for s in sent if s.startswith("WITH placement AS (UPDATE")]
    assert batched == singles == [("E1", D(0), False), ("E2", D(40), False), ("E3", D(60), False)]
    assert batch.snapshot() == one.snapshot()
    assert audit_verify() == []


@pytest.mark.django_db(transaction=True)
def test_a_batch_over_placements_locks_its_rows_up_front_in_one_statement(world, monkeypatch):
    import psycopg

    from orders.fix.django_handler import _plain_connection_params
    from orders.services.executions import _Contexts, _lock_batch

    # given two worlds whose block and lone order were filled once (positions and cash exist)
    mine, other = world(), world()
    for w in (mine, other):
        first = [("block", "F", "1", 1, "10", "99"), ("lone", "F", "1", 2, "10", "99")]
        for r in w.reports(first):
            execution_apply(session_key=KEY, report=r)

    def rows(w: World) -> dict[str, set[int]]:
        return {
            "orders_placement": {w.block_placement.pk, w.lone_placement.pk},
            "orders_block": {w.block.pk},
            "orders_order": {o.pk for o in w.orders},
            "allocations_position": set(
                Position.objects.filter(account__in=w.accounts).values_list("pk", flat=True)
            ),
            "allocations_cashbalance": set(
                CashBalance.objects.filter(account__in=w.accounts).values_list("pk", flat=True)
            ),
        }

    mine_rows, other_rows = rows(mine), rows(other)
    assert [len(mine_rows[t]) for t in mine_rows] == [2, 1, 4, 4, 4]
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    def unlocked() -> dict[str, set[int]]:
        """Rows of both worlds another connection can lock now (SKIP LOCKED: never waits)."""
        with psycopg.connect(autocommit=False, **_plain_connection_params()) as conn:
            found = {
                table: {
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM {table} WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED",
                        [sorted(mine_rows[table] | other_rows[table])],
                    )
                }
                for table in mine_rows
            }
            conn.rollback()
        return found

    # when a batch of a fill of the block and an acknowledgement of the lone order takes its
    # up-front locks
    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    contexts = _Contexts()
    with transaction.atomic():
        _lock_batch(
            mine.reports([("block", "F", "1", 3, "10", "99"), ("lone", "0", "0", 4, None, None)]),
            contexts,
        )
        statements = list(sent)
        during = unlocked()
    # then one statement locked every placement, block, order, position and cash row of this
    # world and none of the other's
    assert len(statements) == 1 and statements[0].startswith("WITH batch_placements AS")
    assert during == other_rows
    # and it kept the lone order's locked rows for its acknowledgement, as the report's own
    # locking read finds them (the block's placement is read by its report)
    assert list(contexts.kept) == [(mine.cl_ord_ids["lone"],)]
    kept = contexts.kept[(mine.cl_ord_ids["lone"],)]
    assert kept.block is None
    assert kept.placement.__dict__ | {"_state": None} == Placement.objects.get(
        pk=mine.lone_placement.pk
    ).__dict__ | {"_state": None}
    assert kept.placement.broker.code == "BRKA"
    [order] = kept.orders
    assert order.__dict__ | {"_state": None} == Order.objects.get(pk=mine.orders[3].pk).__dict__ | {
        "_state": None
    }
    assert (order.account.code, order.instrument.symbol) == (
        mine.accounts[3].code,
        mine.instrument.symbol,
    )
    assert order.created_by.get_username() == "pm_a"

    # when a batch without a fill takes them
    sent.clear()
    with transaction.atomic():
        _lock_batch(
            mine.reports([("block", "0", "0", 5, None, None), ("lone", "0", "0", 6, None, None)]),
            _Contexts(),
        )
        statements = list(sent)
        during = unlocked()
    # then the placements, the block and the orders are locked, no position and no cash row
    assert len(statements) == 1
    assert during == {
        **other_rows,
        "allocations_position": mine_rows["allocations_position"]
        | other_rows["allocations_position"],
        "allocations_cashbalance": mine_rows["allocations_cashbalance"]
        | other_rows["allocations_cashbalance"],
    }
    # and nothing is held once the transaction ended
    sent.clear()
    assert unlocked() == {t: mine_rows[t] | other_rows[t] for t in mine_rows}


@pytest.mark.parametrize(
    ("after_ack", "expected"),
    [
        # the same ExecID again, as a fill: not applied (already in the book)
        (("lone", "F", "1", 1, "40", "99"), [("E1", D(0), False), None]),
        # an overfill (150 of 100): stored and flagged, not booked
        (
            ("lone", "F", "1", 2, "150", "99", {"qty": "150"}),
            [("E1", D(0), False), ("E2", D(0), False)],
        ),
    ],
)
def test_an_acknowledgement_before_a_fill_that_books_nothing_is_written(world, after_ack, expected):
    # given two identical worlds, and an acknowledgement followed by a fill of the same order
    # that books nothing
    one, batch = world(), world()
    plan = [("lone", "0", "0", 1, None, None), after_ack]
    # when one world gets them one by one and the other as one batch
    singles = [
        _result(execution_apply(session_key=KEY, report=r, raw_message_id=None))
        for r in one.reports(plan)
    ]
    batched = [
        _result(e)
        for e in executions_apply(session_key=KEY, reports=[(r, None) for r in batch.reports(plan)])
    ]
    # then the acknowledgement's writes (left to the fill) are in the book all the same
    assert batched == singles == expected
    snapshot = batch.snapshot()
    assert snapshot == one.snapshot()
    assert snapshot["orders"][3][0] == "working"
    assert snapshot["placements"]["lone"][0] == "working"
    assert audit_verify() == []


def _rows_of(w: World) -> tuple[set[int], set[int]]:
    return (
        {p.account_id for p in Position.objects.filter(account__in=w.accounts)},
        {c.account_id for c in CashBalance.objects.filter(account__in=w.accounts)},
    )


def test_a_batch_leaves_no_row_for_an_account_none_of_its_fills_moved(world, monkeypatch):
    # given two identical worlds without positions or cash rows
    one, batch = world(), world()
    assert _rows_of(one) == _rows_of(batch) == (set(), set())
    plan = [("block", "F", "1", 1, "50", "100"), ("lone", "0", "0", 2, None, None)]
    for r in one.reports(plan):
        execution_apply(session_key=KEY, report=r)
    sent = _statements(monkeypatch)
    # when the other world gets a fill of the block and an acknowledgement of the lone order
    # in one batch (its up-front pass makes the lone order's account's rows too)
    executions_apply(session_key=KEY, reports=[(r, None) for r in batch.reports(plan)])
    # then those were made up front and dropped before the end: the batch leaves the rows
    # and values the reports applied one by one leave
    assert len([s for s in sent if s.startswith("WITH gone AS (DELETE")]) == 1
    lone_account = batch.accounts[3].pk
    assert _rows_of(batch) == ({a.pk for a in batch.accounts[:3]},) * 2
    assert lone_account not in _rows_of(batch)[0]
    assert batch.snapshot() == one.snapshot()
    assert audit_verify() == []


def test_a_batch_whose_rows_exist_makes_and_drops_none(world, monkeypatch):
    # given a world whose accounts hold positions and cash rows
    w = world()
    for r in w.reports([("block", "F", "1", 1, "10", "99"), ("lone", "F", "1", 2, "10", "99")]):
        execution_apply(session_key=KEY, report=r)
    before = {p.pk: p.version for p in Position.objects.filter(account__in=w.accounts)}
    sent = _statements(monkeypatch)
    # when a batch fills the block and acknowledges nothing else
    batch = w.reports([("block", "F", "1", 3, "10", "99"), ("lone", "F", "1", 4, "10", "99")])
    executions_apply(session_key=KEY, reports=[(r, None) for r in batch])
    # then nothing was made up front, so nothing is deleted; every row moved once more
    assert not [s for s in sent if "DELETE" in s]
    after = {p.pk: p.version for p in Position.objects.filter(account__in=w.accounts)}
    assert after == {pk: v + 1 for pk, v in before.items()}


def test_a_refused_batch_leaves_no_row_for_its_fills(world, monkeypatch):
    import allocations.services as alloc_services
    from oms_site.errors import ConflictError

    # given a world without positions or cash rows, and the block's fill refused
    w = world()
    original = alloc_services.fill_allocate
    refused = f"{w.tag}-E2"

    def refusing(**kwargs):
        if kwargs["execution"].exec_id == refused:
            raise ConflictError("refused", code="overfill")
        return original(**kwargs)

    monkeypatch.setattr(alloc_services, "fill_allocate", refusing)
    batch = w.reports([("lone", "F", "1", 1, "40", "99"), ("block", "F", "1", 2, "30", "101")])
    # when the batch is applied, its second report refused
    with pytest.raises(ConflictError):
        executions_apply(session_key=KEY, reports=[(r, None) for r in batch])
    # then it left no row at all (the rows it made up front went with its rollback)
    assert _rows_of(w) == (set(), set())
    assert not Execution.objects.filter(exec_id__startswith=f"{w.tag}-").exists()
    # and one by one, the refused report leaves no row for its accounts either
    assert execution_apply(session_key=KEY, report=batch[0]) is not None
    with pytest.raises(ConflictError):
        execution_apply(session_key=KEY, report=batch[1])
    assert _rows_of(w) == ({w.accounts[3].pk},) * 2
