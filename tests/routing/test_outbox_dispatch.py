"""The outbox dispatcher's grouped records: one durable commit per chunk, restart via the store."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orders.enums import OutboxStatus
from orders.fix.common import SessionStatus
from orders.fix.django_handler import DjangoGatewayHandler, OutboxDispatcher
from orders.fix.gateway import SessionSpec, stored_order_messages
from orders.fix.messages import encode_message
from orders.models import FixMessage, FixSession, OutboxMessage
from orders.services.routing import orders_route

KEY = "FIX.4.4:OMS->BRKA"
T0 = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)


class NumberingGateway:
    """Stands in for QuickFIX: numbers each sent message and calls the handler's on_outbound."""

    def __init__(self, handler: DjangoGatewayHandler | None, next_sender: int = 10) -> None:
        self.handler = handler
        self.next_sender = next_sender
        self.sent: list[str] = []
        self.store: dict[str, tuple[int, str]] = {}
        self.store_asked: list[tuple[list[str], dt.datetime]] = []

    def session_status(self, key: str) -> SessionStatus:
        return SessionStatus(key, True, True, self.next_sender, 1)

    def send(self, key: str, request: object) -> bool:
        cl_ord_id = request.cl_ord_id  # type: ignore[attr-defined]
        raw = wire(cl_ord_id, self.next_sender)
        self.next_sender += 1
        if self.handler is not None:
            self.handler.on_outbound(key, raw)
        self.sent.append(cl_ord_id)
        return True

    def stored_orders(
        self, key: str, cl_ord_ids: list[str], not_before: dt.datetime
    ) -> dict[str, tuple[int, str]]:
        self.store_asked.append((list(cl_ord_ids), not_before))
        return {c: self.store[c] for c in cl_ord_ids if c in self.store}


def wire(cl_ord_id: str, seq: int, *, sent: dt.datetime = T0, msg_type: str = "D") -> str:
    """An outbound order message as QuickFIX would write it."""
    return encode_message(
        begin_string="FIX.4.4",
        msg_type=msg_type,
        sender_comp_id="OMS",
        target_comp_id="BRKA",
        msg_seq_num=seq,
        sending_time=sent,
        fields=[(11, cl_ord_id), (55, "ACME"), (54, "1"), (38, "100"), (40, "1")],
    )


def _dispatcher(gateway: NumberingGateway, handler: DjangoGatewayHandler | None, **kw):
    session = FixSession.objects.get(target_comp_id="BRKA")
    return OutboxDispatcher(gateway, {session.pk: KEY}, listen=False, recorder=handler, **kw)


@pytest.mark.django_db
def test_a_chunk_is_recorded_before_sending_and_numbered_after(trader, brokers, make_order):
    # given three routed orders
    orders = [make_order() for _ in range(3)]
    placements = orders_route(user=trader, order_ids=[o.pk for o in orders], broker_code="BRKA")
    handler = DjangoGatewayHandler()
    gateway = NumberingGateway(handler, next_sender=10)
    # when the dispatcher sends them
    _dispatcher(gateway, handler).dispatch_once()
    # then each left once, in outbox order, and its one record has the number QuickFIX gave it
    # and the wire text
    cl_ord_ids = [p.cl_ord_id for p in placements]
    assert gateway.sent == cl_ord_ids
    records = list(FixMessage.objects.filter(direction="out").order_by("pk"))
    assert [(r.cl_ord_id, r.msg_type, r.seq_num) for r in records] == [
        (cl_ord_ids[0], "D", 10),
        (cl_ord_ids[1], "D", 11),
        (cl_ord_ids[2], "D", 12),
    ]
    assert records[1].raw == wire(cl_ord_ids[1], 11)
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {OutboxStatus.SENT}
    assert handler.take_outbound(KEY) == {}


@pytest.mark.django_db
def test_statements_do_not_grow_with_the_rows_of_a_chunk(trader, brokers, make_order):
    handler = DjangoGatewayHandler()
    few = [make_order().pk for _ in range(2)]
    many = [make_order().pk for _ in range(20)]
    orders_route(user=trader, order_ids=few, broker_code="BRKA")
    with CaptureQueriesContext(connection) as two:
        _dispatcher(NumberingGateway(handler), handler).dispatch_once()
    orders_route(user=trader, order_ids=many, broker_code="BRKA")
    with CaptureQueriesContext(connection) as twenty:
        _dispatcher(NumberingGateway(handler, next_sender=20), handler).dispatch_once()
    assert len(twenty.captured_queries) == len(two.captured_queries)
    assert FixMessage.objects.filter(direction="out", seq_num__isnull=True).count() == 0


@pytest.mark.django_db
def test_a_chunk_costs_three_statements_and_marks_its_rows_sent_once(trader, brokers, make_order):
    # given two routed orders
    orders_route(user=trader, order_ids=[make_order().pk, make_order().pk], broker_code="BRKA")
    handler = DjangoGatewayHandler()
    dispatcher = _dispatcher(NumberingGateway(handler, next_sender=5), handler)
    # when the dispatcher sends them
    with CaptureQueriesContext(connection) as queries:
        dispatcher.dispatch_once()
    # then: the pending rows with their records, the records, the rows sent and numbered
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    assert statements == ["SELECT", "INSERT", "WITH"]
    rows = list(OutboxMessage.objects.order_by("pk").values_list("status", "attempts"))
    assert rows == [(OutboxStatus.SENT, 1), (OutboxStatus.SENT, 1)]
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0
    assert list(
        FixMessage.objects.filter(direction="out").order_by("pk").values_list("seq_num", flat=True)
    ) == [5, 6]
    # and a second pass finds nothing pending and writes nothing
    with CaptureQueriesContext(connection) as again:
        assert dispatcher.dispatch_once() == 0
    assert len(again.captured_queries) == 1
    assert FixMessage.objects.filter(direction="out").count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("in_store", [True, False])
def test_a_record_without_a_number_is_decided_by_the_store(trader, brokers, make_order, in_store):
    # given a pending row recorded before sending, the process having died before its number
    # was written (and, in_store: after QuickFIX numbered it, so it left)
    placement = orders_route(user=trader, order_ids=[make_order().pk], broker_code="BRKA")[0]
    record = FixMessage.objects.create(
        session_key=KEY, direction="out", msg_type="D", cl_ord_id=placement.cl_ord_id, raw="35=D"
    )
    handler = DjangoGatewayHandler()
    gateway = NumberingGateway(handler, next_sender=8)
    if in_store:
        gateway.store[placement.cl_ord_id] = (7, wire(placement.cl_ord_id, 7))
    # when the restarted dispatcher runs
    _dispatcher(gateway, handler).dispatch_once()
    # then the store was asked from a minute before the record was written
    assert gateway.store_asked == [
        ([placement.cl_ord_id], record.received_at - dt.timedelta(seconds=60))
    ]
    # and the row left exactly once (before the crash, or now), under the one record
    assert gateway.sent == ([] if in_store else [placement.cl_ord_id])
    record.refresh_from_db()
    seq = 7 if in_store else 8
    assert (record.seq_num, record.raw) == (seq, wire(placement.cl_ord_id, seq))
    assert FixMessage.objects.filter(direction="out").count() == 1
    assert OutboxMessage.objects.get().status == OutboxStatus.SENT


@pytest.mark.django_db
def test_a_refused_send_leaves_the_rest_of_the_chunk_pending(trader, brokers, make_order):
    # given two routed orders and a session that logs out after the first is sent
    placements = orders_route(
        user=trader, order_ids=[make_order().pk, make_order().pk], broker_code="BRKA"
    )
    handler = DjangoGatewayHandler()
    gateway = NumberingGateway(handler)
    send = gateway.send
    gateway.send = lambda key, request: not gateway.sent and send(key, request)  # type: ignore[method-assign]
    # when the dispatcher runs
    _dispatcher(gateway, handler).dispatch_once()
    # then only the first is sent and numbered; the second stays pending, recorded unnumbered
    first, second = (p.cl_ord_id for p in placements)
    assert gateway.sent == [first]
    assert dict(OutboxMessage.objects.values_list("cl_ord_id", "status")) == {
        first: OutboxStatus.SENT,
        second: OutboxStatus.PENDING,
    }
    assert dict(FixMessage.objects.values_list("cl_ord_id", "seq_num")) == {first: 10, second: None}
    # and nothing is left expected: a later message with that ClOrdID is recorded as it goes
    assert handler.take_outbound(KEY) == {}


def _write_store(directory, messages: list[tuple[int, str]], tail: bytes = b"") -> SessionSpec:
    """A QuickFIX FileStore of session OMS->BRKA holding these (MsgSeqNum, raw) messages."""
    body = b""
    header = b""
    for seq, raw in messages:
        data = raw.encode("latin-1")
        header += f"{seq},{len(body)},{len(data)} ".encode()
        body += data
    (directory / "FIX.4.4-OMS-BRKA.body").write_bytes(body)
    (directory / "FIX.4.4-OMS-BRKA.header").write_bytes(header + tail)
    return SessionSpec("OMS", "BRKA", "127.0.0.1", 1, store_dir=str(directory))


def test_the_store_is_read_back_to_not_before(tmp_path):
    minute = dt.timedelta(minutes=1)
    spec = _write_store(
        tmp_path,
        [
            (1, wire("OLD", 1, sent=T0 - 2 * minute)),
            (2, wire("A", 2, sent=T0 - 2 * minute)),
            (3, wire("B", 3, sent=T0)),
            (4, wire("C", 4, sent=T0 + minute, msg_type="F")),
        ],
        tail=b"5,999",  # an entry QuickFIX is still writing
    )
    # A and OLD were sent before not_before: the search stops there; X was never sent
    found = stored_order_messages(spec, {"A", "B", "C", "X"}, T0 - minute)
    assert found == {
        "B": (3, wire("B", 3, sent=T0)),
        "C": (4, wire("C", 4, sent=T0 + minute, msg_type="F")),
    }
    assert stored_order_messages(spec, {"A"}, T0 - 3 * minute) == {
        "A": (2, wire("A", 2, sent=T0 - 2 * minute))
    }


def test_an_unreadable_store_entry_is_skipped(tmp_path):
    spec = _write_store(
        tmp_path,
        [(1, wire("A", 1)), (2, "garbage without fields"), (3, wire("B", 3))],
        tail=b"4,0,999999 ",  # an entry whose body is not there (a store cut short)
    )
    found = stored_order_messages(spec, {"A", "B"}, T0 - dt.timedelta(minutes=1))
    assert {k: v[0] for k, v in found.items()} == {"A": 1, "B": 3}


def test_the_store_is_read_across_chunks_and_missing_files_find_nothing(tmp_path):
    messages = [(n, wire(f"N{n:05d}", n, sent=T0)) for n in range(1, 400)]
    spec = _write_store(tmp_path, messages)
    found = stored_order_messages(spec, {"N00001", "N00200", "N00399"}, T0 - dt.timedelta(1))
    assert {k: v[0] for k, v in found.items()} == {"N00001": 1, "N00200": 200, "N00399": 399}
    missing = SessionSpec("OMS", "BRKA", "127.0.0.1", 1, store_dir=str(tmp_path / "none"))
    assert stored_order_messages(missing, {"N00001"}, T0) == {}


def test_small_header_chunks_split_entries_correctly(tmp_path):
    from orders.fix.gateway import _store_entries_backwards

    spec = _write_store(tmp_path, [(n, wire(f"N{n}", n)) for n in range(1, 30)])
    path = tmp_path / "FIX.4.4-OMS-BRKA.header"
    entries = list(_store_entries_backwards(path, chunk=7))
    assert [e[0] for e in entries] == list(range(29, 0, -1))
    assert entries == list(_store_entries_backwards(path))
    assert spec.key == KEY
