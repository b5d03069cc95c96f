"""executions_apply's merged booking: a batch's small fills' writes sent as one statement per
flush give exactly the results of one statement per fill, and of the reports one by one."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

import allocations.services as alloc_services
from allocations.models import Allocation, CashBalance, CommissionSchedule, Position
from oms_site.audit import audit_verify
from oms_site.errors import ConflictError
from oms_site.models import AuditEvent, AuditStream
from orders.models import Block, Execution, Order, Placement
from orders.services import executions as executions_module
from orders.services.executions import execution_apply, executions_apply
from tests import factories as f
from tests.allocations.support import make_block
from tests.routing.conftest import report

pytestmark = pytest.mark.django_db
KEY = "FIX.4.4:OMS->BRKA"
D = Decimal
_scenes = itertools.count(1)
MERGED = "WITH fl AS MATERIALIZED"  # _BOOK_MERGED_SQL
ONE_FILL = f'WITH ins AS (INSERT INTO "{Allocation._meta.db_table}"'  # _BOOK_WRITE_SQL
BASE = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)


class Scene:
    """Three blocks and a lone order, at BRKA: X1 and X2 in instrument I1 share account A;
    X3, in I2 (the same currency), shares A too; the lone order L (I2) is account E's; S1 sells
    I1 for A and B (X1's accounts)."""

    def __init__(self, user: Any, broker: Any, desk: Any) -> None:
        n = next(_scenes)
        self.tag = f"M{n}"
        self.instruments = [f.InstrumentFactory(symbol=f"MRG{n}{i}") for i in (1, 2)]
        self.accounts = [f.AccountFactory(code=f"{self.tag}-{c}", desk=desk) for c in "ABCDE"]
        a, b, c, d, e = self.accounts
        i1, i2 = self.instruments
        self.cl_ord_ids: dict[str, str] = {}
        for name, instrument, accounts, quantities, side in (
            ("X1", i1, [a, b], [30, 20], "buy"),
            ("X2", i1, [a, c], [20, 20], "buy"),
            ("X3", i2, [a, d], [20, 20], "buy"),
            ("S1", i1, [a, b], [15, 10], "sell"),
        ):
            _, _, placement = make_block(
                instrument=instrument,
                accounts=accounts,
                quantities=quantities,
                user=user,
                broker=broker,
                side=side,
            )
            self.cl_ord_ids[name] = placement.cl_ord_id
        lone = Order.objects.create(
            account=e,
            instrument=i2,
            side="buy",
            quantity=D(20),
            leaves_qty=D(20),
            order_type="market",
            status="working",
            created_by=user,
        )
        self.cl_ord_ids["L"] = Placement.objects.create(
            order=lone, broker=broker, cl_ord_id=f"{self.tag}-L", quantity=D(20), status="working"
        ).cl_ord_id

    def reports(self, plan: list[tuple[str, str, int, str | None, str | None]]) -> list[Any]:
        """Reports of (placement, exec_type, exec_no, last_qty, last_px) specs."""
        return [
            report(
                self.cl_ord_ids[name],
                exec_type,
                "1" if last_qty else "0",
                exec_id=f"{self.tag}-E{number}",
                last_qty=last_qty,
                last_px=last_px,
                cum=last_qty or "0",
                avg=last_px or "0",
            )
            for name, exec_type, number, last_qty, last_px in plan
        ]

    def batch(self, plan: list[tuple[str, str, int, str | None, str | None]]) -> list[Any]:
        return [(r, None) for r in self.reports(plan)]

    def dump(self, *, times: bool) -> dict[str, Any]:
        """Every row the reports can write, ids replaced by their rank in this scene (so two
        scenes compare); with `times`, the timestamps the reports wrote too (a `Clock`'s: not
        those of rows they left at version 1, written when the scene was made)."""

        def when(value: Any, version: int = 2) -> Any:
            return value if times and version > 1 else None

        accounts = {a.pk: i for i, a in enumerate(self.accounts)}
        instruments = {i.pk: n for n, i in enumerate(self.instruments)}
        orders = list(Order.objects.filter(instrument__in=self.instruments).order_by("pk"))
        order_rank = {o.pk: n for n, o in enumerate(orders)}
        blocks = list(Block.objects.filter(instrument__in=self.instruments).order_by("pk"))
        block_rank = {b.pk: n for n, b in enumerate(blocks)}
        placements = list(
            Placement.objects.filter(cl_ord_id__in=self.cl_ord_ids.values()).order_by("pk")
        )
        executions = list(
            Execution.objects.filter(exec_id__startswith=f"{self.tag}-").order_by("pk")
        )
        exec_ids = {e.pk: e.exec_id.split("-", 1)[1] for e in executions}
        allocations = list(
            Allocation.objects.filter(instrument__in=self.instruments).order_by("pk")
        )
        allocation_rank = {a.pk: n for n, a in enumerate(allocations)}
        streams = {f"order:{pk}": f"order{n}" for pk, n in order_rank.items()}
        streams.update({f"block:{pk}": f"block{n}" for pk, n in block_rank.items()})
        streams.update({f"block:{pk}:allocations": f"alloc{n}" for pk, n in block_rank.items()})
        streams.update({f"order:{pk}:allocations": f"alloc-o{n}" for pk, n in order_rank.items()})
        streams.update({f"placement:{p.pk}": f"placement{n}" for n, p in enumerate(placements)})
        return {
            "orders": [
                (
                    accounts[o.account_id],
                    block_rank.get(o.block_id),
                    o.status,
                    o.cum_qty,
                    o.leaves_qty,
                    o.avg_px,
                    o.version,
                    when(o.updated_at, o.version),
                )
                for o in orders
            ],
            "blocks": [
                (b.status, b.cum_qty, b.avg_px, b.version, when(b.updated_at, b.version))
                for b in blocks
            ],
            "placements": [
                (
                    p.status,
                    p.cum_qty,
                    p.avg_px,
                    p.version,
                    p.broker_order_id,
                    when(p.updated_at, p.version),
                )
                for p in placements
            ],
            "executions": [
                (exec_ids[e.pk], e.last_qty, e.last_px, e.gross, e.text, when(e.received_at))
                for e in executions
            ],
            "allocations": [
                (
                    exec_ids[a.execution_id],
                    block_rank.get(a.block_id),
                    order_rank[a.order_id],
                    accounts[a.account_id],
                    instruments[a.instrument_id],
                    a.broker_id,
                    a.side,
                    a.kind,
                    a.quantity,
                    a.price,
                    a.gross,
                    a.commission,
                    a.fees,
                    a.net,
                    a.cum_quantity,
                    a.cum_gross,
                    a.cum_commission,
                    a.cum_fees,
                    a.cum_net,
                    a.currency,
                    a.trade_date,
                    a.settlement_date,
                    a.method,
                    allocation_rank.get(a.reversal_of_id),
                    a.created_by_id,
                    when(a.created_at),
                )
                for a in allocations
            ],
            "positions": sorted(
                (
                    accounts[p.account_id],
                    instruments[p.instrument_id],
                    p.quantity,
                    p.avg_cost,
                    p.realised_pnl,
                    p.version,
                    when(p.updated_at),
                )
                for p in Position.objects.filter(account__in=self.accounts)
            ),
            "cash": sorted(
                (
                    accounts[c.account_id],
                    c.currency,
                    c.settled,
                    c.pending,
                    c.version,
                    when(c.updated_at),
                )
                for c in CashBalance.objects.filter(account__in=self.accounts)
            ),
            "audit": sorted(
                (streams[stream], seq, action, object_type)
                for stream, seq, action, object_type in AuditEvent.objects.filter(
                    stream__in=streams
                ).values_list("stream", "seq", "action", "object_type")
            ),
        }

    def events(self, sent: list[Any], *, times: bool) -> list[Any]:
        """The blotter messages sent, ids replaced by their rank in this scene."""
        accounts = {f"acct-{a.pk}": f"acct{i}" for i, a in enumerate(self.accounts)}
        orders = {
            o.pk: n
            for n, o in enumerate(
                Order.objects.filter(instrument__in=self.instruments).order_by("pk")
            )
        }
        out = []
        for group, message in sent:
            events = (
                message["events"] if message["type"] == "blotter.events" else [message["event"]]
            )
            for e in events:
                order = e["data"].get("order", e["data"])
                out.append(
                    (
                        accounts.get(group, group),
                        e["type"],
                        orders[e["order_id"]],
                        e["version"],
                        order.get("status"),
                        order.get("cum_qty"),
                        order.get("updated_at") if times else None,
                    )
                )
        return out


class Clock:
    """timezone.now, one microsecond later on each call from BASE: two runs that ask for the
    time as often, in the same order, write the same timestamps."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dt.datetime:
        self.calls += 1
        return BASE + dt.timedelta(microseconds=self.calls)


@pytest.fixture
def scene(trader, desk, brokers):
    CommissionSchedule.objects.get_or_create(
        broker=brokers["BRKA"],
        defaults={
            "bps": D("5"),
            "per_share": D("0.01"),
            "min_per_ticket": D("1.00"),
            "fees_bps": D("0.5"),
        },
    )
    return lambda: Scene(trader, brokers["BRKA"], desk)


def _statements(monkeypatch) -> list[str]:
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def _unmerged(monkeypatch) -> None:
    """executions_apply with one booking statement per fill (no BookBuffer)."""
    monkeypatch.setattr(
        executions_module, "_book_merged", lambda enabled: alloc_services.book_merged(False)
    )


def _result(execution: Execution | None) -> Any:
    if execution is None:
        return None
    return (execution.exec_id.split("-", 1)[1], execution.last_qty, execution.unknown_order)


# First fills (rows made by the batch), two fills whose cash rows are the same (A's USD, X1 in I1
# and X3 in I2: held together, summed), a fill of X2 whose position (A, I1) X1's held fill
# moves (its read completed from the held values), an acknowledgement between fills (flushed
# first), a repeated fill of X1 (its orders' latest rows held), a duplicate ExecID of X1: two
# merged statements for eight booking fills.
PLAN = [
    ("X1", "F", 1, "10", "100"),
    ("X3", "F", 2, "10", "101"),
    ("X2", "F", 3, "10", "100.5"),
    ("L", "F", 4, "5", "99"),
    ("L", "0", 5, None, None),
    ("X1", "F", 6, "20", "102"),
    ("X1", "F", 7, "10", "103"),
    ("X3", "F", 8, "10", "100"),
    ("X1", "F", 7, "10", "103"),
    ("L", "F", 9, "5", "98"),
]


def _three_ways(scene, plan, monkeypatch, callbacks) -> tuple[list[str], list[str], list[Any]]:
    """Apply `plan` to three identical scenes: one by one, as one merged batch and as one batch
    with a booking statement per fill (the last two from the same moment of a `Clock`); assert
    that every result, row, timestamp, version, audit event and blotter message is the same.
    The merged and the unmerged batches' statements, and the results."""
    one, merged, unmerged = scene(), scene(), scene()
    sent: list[Any] = []
    monkeypatch.setattr("oms_site.realtime._send_many", lambda items: sent.extend(items))
    with callbacks(execute=True):
        singles = [_result(execution_apply(session_key=KEY, report=r)) for r in one.reports(plan)]
    one_events, sent[:] = one.events(sent, times=False), []
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    statements = _statements(monkeypatch)
    with callbacks(execute=True):
        batched = [
            _result(e) for e in executions_apply(session_key=KEY, reports=merged.batch(plan))
        ]
    merged_statements = list(statements)
    merged_events, sent[:] = merged.events(sent, times=True), []
    merged_calls, clock.calls = clock.calls, 0
    _unmerged(monkeypatch)
    statements[:] = []
    with callbacks(execute=True):
        plain = [
            _result(e) for e in executions_apply(session_key=KEY, reports=unmerged.batch(plan))
        ]
    unmerged_statements = list(statements)
    assert batched == plain == singles
    assert clock.calls == merged_calls
    assert merged.dump(times=True) == unmerged.dump(times=True)
    assert merged.dump(times=False) == one.dump(times=False)
    assert unmerged.events(sent, times=True) == merged_events
    assert [e[:-1] for e in merged_events] == [e[:-1] for e in one_events]
    assert audit_verify() == []
    return merged_statements, unmerged_statements, singles


def test_a_merged_batch_gives_exactly_the_unmerged_and_the_one_by_one_results(
    scene, monkeypatch, django_capture_on_commit_callbacks
):
    # given three identical scenes
    # when the first gets the reports one by one, the second as one batch (merged), the third
    # as one batch with a booking statement per fill
    merged, unmerged, results = _three_ways(
        scene, PLAN, monkeypatch, django_capture_on_commit_callbacks
    )
    # then every result, row, timestamp, version, audit event and blotter message is the same
    # (_three_ways)
    assert results[8] is None and results[0] == ("E1", D(10), False)
    # and the eight booking fills were written by two statements instead of eight
    assert [s.startswith(MERGED) for s in merged].count(True) == 2
    assert not [s for s in merged if s.startswith(ONE_FILL)]
    assert len([s for s in unmerged if s.startswith(ONE_FILL)]) == 8
    assert not [s for s in unmerged if s.startswith(MERGED)]
    assert len(merged) == len(unmerged) - 6


def test_a_second_placement_of_a_block_with_held_writes_is_read_after_them(
    scene, monkeypatch, django_capture_on_commit_callbacks
):
    # given scenes whose block X1 has a second placement (X1b, 20 of its 50)
    def split_scene() -> Scene:
        s = scene()
        first = Placement.objects.get(cl_ord_id=s.cl_ord_ids["X1"])
        s.cl_ord_ids["X1b"] = Placement.objects.create(
            block_id=first.block_id,
            broker=first.broker,
            cl_ord_id=f"{s.tag}-X1b",
            quantity=D(20),
            status="working",
        ).cl_ord_id
        return s

    plan = [
        ("X1", "F", 1, "10", "100"),
        ("X3", "F", 2, "10", "100"),
        ("X1b", "F", 3, "10", "101"),
        ("X1", "F", 4, "10", "102"),
    ]
    # when the reports are applied one by one, merged and unmerged
    merged, unmerged, results = _three_ways(
        split_scene, plan, monkeypatch, django_capture_on_commit_callbacks
    )
    # then the results are the same (_three_ways). X1b's placement, block and orders, read
    # while X1's fill was held, were read again once it was sent; so were X1's by its second
    # fill (X1b's read dropped the rows kept for X1: _Contexts.forget), read while X1b's was
    # held
    assert results == [(f"E{n}", D(10), False) for n in (1, 2, 3, 4)]
    reads = [q.split(" ", 2)[1] for q in merged if q.startswith(("WITH p ", "WITH k ", MERGED))]
    assert reads == [
        *("p", "k"),  # X1
        *("p", "k"),  # X3
        *("p", "k", "fl", "p", "k"),  # X1b, read again
        *("p", "k", "fl", "p", "k"),  # X1, read again
        "fl",  # the end
    ]
    reads = [q.split(" ", 2)[1] for q in unmerged if q.startswith(("WITH p ", "WITH k "))]
    assert reads == ["p", "k"] * 4


def test_a_merged_batch_sums_the_cash_of_fills_held_together(scene, monkeypatch):
    # given a scene whose account A holds cash from a first batch
    s = scene()
    executions_apply(session_key=KEY, reports=s.batch([*PLAN[:1], ("L", "F", 4, "5", "99")]))
    a = s.accounts[0]
    before = CashBalance.objects.get(account=a, currency="USD")
    statements = _statements(monkeypatch)
    # when one batch fills X1 and X3 (both A's, in two instruments of one currency): one
    # statement writes both fills' cash
    executions_apply(
        session_key=KEY,
        reports=s.batch([("X1", "F", 11, "10", "100"), ("X3", "F", 12, "10", "100")]),
    )
    assert [q.startswith(MERGED) for q in statements].count(True) == 1
    # then A's balance moved by both fills' nets, one version per fill
    after = CashBalance.objects.get(account=a, currency="USD")
    nets = Allocation.objects.filter(
        account=a, execution__exec_id__in=[f"{s.tag}-E11", f"{s.tag}-E12"]
    ).values_list("net", flat=True)
    assert len(nets) == 2
    assert after.pending == before.pending - sum(nets)
    assert after.version == before.version + 2


def test_the_statements_of_a_batch_of_small_fills(scene, monkeypatch):
    # given a scene whose blocks were all filled once (every position and cash row exists)
    s = scene()
    executions_apply(
        session_key=KEY,
        reports=s.batch(
            [("X1", "F", 1, "5", "100"), ("X2", "F", 2, "5", "100"), ("X3", "F", 3, "5", "100")]
        ),
    )
    statements = _statements(monkeypatch)
    # when a batch fills X1 and X3 twice each, in turns (two rounds)
    executions_apply(
        session_key=KEY,
        reports=s.batch(
            [
                ("X1", "F", 4, "5", "101"),
                ("X3", "F", 5, "5", "101"),
                ("X1", "F", 6, "5", "102"),
                ("X3", "F", 7, "5", "102"),
            ]
        ),
    )
    # then: the up-front lock; X1's and X3's two locking reads (placement, block and orders) by
    # their first fill; one read with the Execution insert per fill (the second round's reads
    # go out before the first round's rows are written, and are completed from them); one
    # merged booking statement at the end; the audit's two statements
    kinds = [q.split(" ", 2)[1] for q in statements if "SAVEPOINT" not in q]
    assert kinds == [
        "batch_placements",  # _lock_batch
        "p",  # X1's placement
        "k",  # X1's block and orders
        "ins",  # E4's insert and read
        "p",
        "k",
        "ins",  # E5
        "ins",  # E6
        "ins",  # E7
        "fl",  # E4 to E7 booked
        "INTO",  # the audit streams
        "ev",  # the audit events
    ]


def test_a_failing_report_after_held_fills_rolls_the_batch_back_and_one_by_one_applies_it(
    scene, monkeypatch
):
    # given two identical scenes, and the fill E8 refused by allocation in the second
    one, s = scene(), scene()
    for r in one.reports(PLAN):
        try:
            execution_apply(session_key=KEY, report=r)
        except ConflictError:
            pytest.fail("the first scene refuses nothing")
    before = s.dump(times=False)
    events_before = AuditEvent.objects.count()
    original = alloc_services.fill_allocate
    refused = f"{s.tag}-E8"

    def refusing(**kwargs):
        if kwargs["execution"].exec_id == refused:
            raise ConflictError("refused", code="overfill")
        return original(**kwargs)

    monkeypatch.setattr(alloc_services, "fill_allocate", refusing)
    statements = _statements(monkeypatch)
    # when the batch is applied (held fills before the refused one)
    with pytest.raises(ConflictError):
        executions_apply(session_key=KEY, reports=s.batch(PLAN))
    # then the fills before the acknowledgement were sent merged, the two after it held, and
    # nothing of the batch is in the book
    assert [q.startswith(MERGED) for q in statements].count(True) == 1
    assert s.dump(times=False) == before
    assert AuditEvent.objects.count() == events_before
    assert not Execution.objects.filter(exec_id__startswith=f"{s.tag}-").exists()
    # and the caller's fallback, one by one, applies every report but the refused one
    results = []
    for r in s.reports(PLAN):
        try:
            results.append(_result(execution_apply(session_key=KEY, report=r)))
        except ConflictError:
            results.append("refused")
    assert results[7] == "refused"
    monkeypatch.setattr(alloc_services, "fill_allocate", original)
    assert execution_apply(session_key=KEY, report=s.reports(PLAN)[7]) is not None
    assert s.dump(times=False)["positions"] == one.dump(times=False)["positions"]
    assert audit_verify() == []


def test_a_reference_violation_in_a_merged_statement_raises_23503_and_changes_nothing(
    scene, monkeypatch
):
    # given a scene, and the second held fill's rows naming a broker that does not exist
    s = scene()
    before = s.dump(times=False)
    events_before = AuditEvent.objects.count()
    original = alloc_services.BookBuffer.add
    held: list[int] = []

    def add(self, common, *args, **kwargs):
        held.append(common["execution"])
        if len(held) == 2:
            common = {**common, "broker": 2_000_000_000}
        return original(self, common, *args, **kwargs)

    monkeypatch.setattr(alloc_services.BookBuffer, "add", add)
    statements = _statements(monkeypatch)
    # when a batch holds it with another fill and sends them merged
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        executions_apply(session_key=KEY, reports=s.batch(PLAN[:2]))
    # then the statement-level reference check refused the merged statement as a whole
    assert raised.value.sqlstate == "23503"
    assert "broker" in str(raised.value)
    assert len(held) == 2
    assert [q.startswith(MERGED) for q in statements].count(True) == 1
    # and nothing of the batch is in the book
    assert s.dump(times=False) == before
    assert AuditEvent.objects.count() == events_before
    assert not Execution.objects.filter(exec_id__startswith=f"{s.tag}-").exists()


_RAW_TABLES = (
    Allocation._meta.db_table,
    Execution._meta.db_table,
    Order._meta.db_table,
    Block._meta.db_table,
    Placement._meta.db_table,
    Position._meta.db_table,
    CashBalance._meta.db_table,
    AuditEvent._meta.db_table,
    AuditStream._meta.db_table,
)


def _raw() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a batch writes, every column as stored (ids, hashes)."""
    with connection.cursor() as cursor:
        out = {}
        for table in _RAW_TABLES:
            cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')
            out[table] = cursor.fetchall()
        return out


def _sequences() -> list[tuple[str, Any, bool]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT schemaname || '.' || sequencename FROM pg_sequences")
        names = [row[0] for row in cursor.fetchall()]
        found = []
        for name in names:
            cursor.execute(f"SELECT last_value, is_called FROM {name}")
            found.append((name, *cursor.fetchone()))
        return found


# Three rounds over the four placements at moving prices (repriced rows), each fill's read
# sent before the previous rounds' rows are written: one merged statement.
ROUNDS = [
    (name, "F", 10 * r + n, qty, f"{100 + r * 0.37 + n * 0.11:.2f}")
    for r in range(3)
    for n, (name, qty) in enumerate((("X1", "10"), ("X2", "10"), ("X3", "10"), ("L", "5")))
]


# Buys and then sells of A's and B's I1 positions at prices that realise fractions of a cent
# (the column keeps cents: the next fill's read must find the rounded value), all held.
SELLS = [
    ("X1", "F", 1, "10", "100.37"),
    ("X1", "F", 2, "20", "101.13"),
    ("S1", "F", 3, "7", "102.71"),
    ("X1", "F", 4, "10", "99.93"),
    ("S1", "F", 5, "9", "103.19"),
    ("S1", "F", 6, "6", "98.77"),
]


@pytest.mark.parametrize("plan", [PLAN, ROUNDS, SELLS], ids=["plan", "rounds", "sells"])
def test_a_merged_batch_writes_byte_for_byte_what_the_unmerged_batch_writes(
    scene, monkeypatch, plan
):
    # given a scene, its reports, a clock that ticks per call and the sequences as they are
    s = scene()
    batch = s.batch(plan)
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    sequences = _sequences()
    # when the batch is applied merged, and then (rolled back, the sequences set back and the
    # clock restarted) with a booking statement per fill
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT merged_probe")
    merged = [_result(e) for e in executions_apply(session_key=KEY, reports=batch)]
    merged_rows = _raw()
    with connection.cursor() as cursor:
        cursor.execute("ROLLBACK TO SAVEPOINT merged_probe")
        for name, value, called in sequences:
            cursor.execute("SELECT setval(%s, %s, %s)", [name, value, called])
    clock.calls = 0
    _unmerged(monkeypatch)
    unmerged = [_result(e) for e in executions_apply(session_key=KEY, reports=batch)]
    # then both wrote the same rows, column for column: ids, values, versions, timestamps,
    # audit payloads and their hash chains
    assert merged == unmerged
    assert _raw() == merged_rows
    assert len(merged_rows[Allocation._meta.db_table]) >= 8
    assert audit_verify() == []


def test_a_later_read_finds_the_held_rows_as_their_columns_will_hold_them():
    # given a buffer holding a fill's row (cumulative money to more decimals than the columns
    # keep) and a position (avg_cost and realised P&L to eight decimals; P&L is kept in cents)
    buffer = alloc_services.BookBuffer()
    position = alloc_services._PositionRow(7, 3, D("14"), D("100.876666667"), D("7.33533332"), 4)
    row = (11, 3, "fill", D("4"), D("1"), D("0"), D("0"), D("1"))
    row += (D("14"), D("1412.275"), D("7.005"), D("0.004"), D("1419.284"), None)
    common = dict.fromkeys(["execution", "block", "instrument", "broker", "user"], 1)
    common.update(side="buy", price=D(100), currency="USD", method="pro_rata")
    common.update(trade_date=BASE.date(), settles=BASE.date(), now=BASE)
    buffer.add(common, [90], [row], ["90"], [], [position], 5, {}, [], [11], None, None)
    # when a later fill's read of that order's rows and of that position is laid over
    booked = buffer.booked_over(
        {11: alloc_services._Booked(), 12: alloc_services._Booked()}, [11, 12]
    )
    positions = buffer.positions_over(
        {3: alloc_services._PositionRow(7, 3, D(0), D(0), D(0), 1)}, 5
    )
    # then they hold what the columns will: rounded half away from zero to their scale
    assert booked[11] == (D("14.00000000"), D("1412.28"), D("7.01"), D("0.00"), D("1419.28"), 90)
    assert str(booked[11].gross) == "1412.28" and booked[12] == alloc_services._Booked()
    assert positions[3] == alloc_services._PositionRow(
        7, 3, D("14.00000000"), D("100.87666667"), D("7.34"), 4
    )
    assert str(positions[3].quantity) == "14.00000000"
    # and a read of other rows is left as it is
    assert buffer.positions_over({4: position}, 5) == {4: position}
    assert buffer.positions_over({3: position}, 6) == {3: position}
