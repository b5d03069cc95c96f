"""The gateway's inbound pipeline without sockets: store, queue, apply, and recovery at start."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, connections

from oms_site.models import AuditEvent
from orders.enums import OrderStatus
from orders.fix.django_handler import DjangoGatewayHandler, _DbThread, record_message, seq_of
from orders.fix.messages import encode_message, exec_report_fields, parse_message
from orders.models import Execution, FixMessage, Order
from orders.services.executions import execution_apply
from orders.services.routing import order_route

KEY = "FIX.4.4:OMS->BRKA"
_seq = itertools.count(1)


def wire_report(cl_ord_id: str, exec_type: str, ord_status: str, **kw: str) -> str:
    """A raw ExecutionReport from BRKA as it arrives on the wire."""
    last_qty = kw.get("last_qty")
    body = exec_report_fields(
        begin_string="FIX.4.4",
        order_id="BRK-1",
        exec_id=kw.get("exec_id", f"E{next(_seq)}"),
        exec_type=exec_type,
        ord_status=ord_status,
        symbol="ACME",
        side="1",
        order_qty=Decimal(100),
        cum_qty=Decimal(kw.get("cum", "0")),
        avg_px=Decimal(kw.get("avg", "0")),
        leaves_qty=Decimal(100) - Decimal(kw.get("cum", "0")),
        cl_ord_id=cl_ord_id,
        last_qty=Decimal(last_qty) if last_qty else None,
        last_px=Decimal(kw["last_px"]) if kw.get("last_px") else None,
    )
    return encode_message(
        begin_string="FIX.4.4",
        msg_type="8",
        sender_comp_id="BRKA",
        target_comp_id="OMS",
        msg_seq_num=next(_seq),
        fields=body.fields,
    )


def business_reject(ref_id: str) -> str:
    return encode_message(
        begin_string="FIX.4.4",
        msg_type="j",
        sender_comp_id="BRKA",
        target_comp_id="OMS",
        msg_seq_num=next(_seq),
        fields=[(45, "7"), (372, "D"), (379, ref_id), (380, "3"), (58, "not supported")],
    )


@pytest.fixture
def routed(trader, brokers, make_order):
    order = make_order(quantity=Decimal("100"))
    return order, order_route(user=trader, order_id=order.pk, broker_code="BRKA")


@pytest.mark.django_db(transaction=True)
def test_reports_are_stored_then_applied_off_the_callback_in_order(routed):
    order, placement = routed
    handler = DjangoGatewayHandler(appliers=3)
    try:
        # when an ack and two fills arrive (QuickFIX's callback returns after storing each)
        raws = [
            wire_report(placement.cl_ord_id, "0", "0"),
            wire_report(
                placement.cl_ord_id, "F", "1", cum="40", avg="100", last_qty="40", last_px="100"
            ),
            wire_report(
                placement.cl_ord_id, "F", "2", cum="100", avg="100", last_qty="60", last_px="100"
            ),
        ]
        for raw in raws:
            handler.on_inbound(KEY, raw, parse_message(raw))
        assert handler.wait_idle(timeout=30)
    finally:
        handler.close_connections()
    # then each raw message is stored once, and the fills are applied after the ack, in order
    assert FixMessage.objects.filter(direction="in", msg_type="8").count() == 3
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))
    fills = list(Execution.objects.filter(last_qty__gt=0).order_by("pk"))
    assert [(e.last_qty, e.cum_qty) for e in fills] == [
        (Decimal("40"), Decimal("40")),
        (Decimal("100") - Decimal("40"), Decimal("100")),
    ]
    # and the time of each report is measured per stage, the fills from receipt to commit
    assert [len(handler.stage_latencies[s]) for s in ("record", "queue", "apply")] == [3, 3, 3]
    assert (len(handler.fill_latencies), handler.fills_applied) == (2, 2)


@pytest.mark.django_db
def test_recover_applies_what_a_killed_gateway_stored_but_never_applied(routed):
    order, placement = routed
    # given an ack stored and applied, then a fill and a business reject stored only (killed)
    ack = wire_report(placement.cl_ord_id, "0", "0")
    stored_ack = record_message(KEY, "in", ack)
    execution_apply(session_key=KEY, report=parse_message(ack), raw_message_id=stored_ack.pk)
    fill = wire_report(
        placement.cl_ord_id, "F", "2", cum="100", avg="100", last_qty="100", last_px="100"
    )
    record_message(KEY, "in", fill)
    reject = record_message(KEY, "in", business_reject(placement.cl_ord_id))
    record_message(KEY, "in", "8=FIX.4.4\x0135=0\x0134=99\x01")  # a heartbeat: never applied
    handler = DjangoGatewayHandler()
    # when the restarted gateway recovers
    assert handler.recover([KEY, "FIX.4.4:OMS->BRKB"]) == 2
    # then the fill is booked once and the business reject audited once
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))
    assert Execution.objects.count() == 2
    audited = AuditEvent.objects.filter(action="fix.business_reject", object_id=str(reject.pk))
    assert audited.count() == 1
    # and recovering again changes nothing
    events = AuditEvent.objects.count()
    assert handler.recover([KEY]) == 0
    assert (Execution.objects.count(), AuditEvent.objects.count()) == (2, events)
    assert Order.objects.get(pk=order.pk).version == order.version


def _items(handler, raws):
    """Store raw reports as QuickFIX's callback would, returning the queued items in order."""
    items = []
    for raw in raws:
        parsed = parse_message(raw)
        item = handler._store_inbound(KEY, raw, parsed, False, 0.0)
        items.append(item[1])
    return items


@pytest.fixture
def batches(monkeypatch):
    """Spy on executions_apply: the ExecIDs of each batch it was called with."""
    from orders.services import executions

    calls: list[list[str]] = []
    real = executions.executions_apply

    def spy(*, session_key, reports):
        calls.append([r.exec_id for r, _ in reports])
        return real(session_key=session_key, reports=reports)

    monkeypatch.setattr(executions, "executions_apply", spy)
    return calls


@pytest.mark.django_db
def test_queued_reports_are_applied_as_batches_split_at_other_messages(routed, batches):
    order, placement = routed
    handler = DjangoGatewayHandler()
    cl = placement.cl_ord_id
    # given an ack, a fill, a business reject, a fill and a duplicate of that fill, all queued
    raws = [
        wire_report(cl, "0", "0", exec_id="A1"),
        wire_report(cl, "F", "1", exec_id="F1", cum="40", avg="100", last_qty="40", last_px="100"),
        business_reject(cl),
        wire_report(cl, "F", "2", exec_id="F2", cum="100", avg="100", last_qty="60", last_px="100"),
        wire_report(cl, "F", "2", exec_id="F2", cum="100", avg="100", last_qty="60", last_px="100"),
    ]
    # when an applier takes them at once
    handler._apply_items(_items(handler, raws))
    # then the reports on either side of the reject went as two batches, in order
    assert batches == [["A1", "F1"], ["F2", "F2"]]
    # and the book is exactly as one by one: both fills once, the reject audited once
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))
    assert list(Execution.objects.order_by("pk").values_list("exec_id", "last_qty")) == [
        ("A1", Decimal("0")),
        ("F1", Decimal("40")),
        ("F2", Decimal("60")),
    ]
    assert AuditEvent.objects.filter(action="fix.business_reject").count() == 1
    assert (len(handler.fill_latencies), handler.fills_applied) == (2, 2)
    assert len(handler.stage_latencies["apply"]) == 5


@pytest.mark.django_db(transaction=True)
def test_a_failing_batch_is_applied_one_by_one(routed, monkeypatch):
    from django.db import OperationalError

    from orders.services import executions

    order, placement = routed
    handler = DjangoGatewayHandler()
    cl = placement.cl_ord_id
    raws = [
        wire_report(cl, "0", "0", exec_id="A1"),
        wire_report(
            cl, "F", "2", exec_id="F1", cum="100", avg="100", last_qty="100", last_px="100"
        ),
    ]
    items = _items(handler, raws)

    def broken(**kw):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(executions, "executions_apply", broken)
    # when the batch fails
    handler._apply_items(items)
    # then each report was applied on its own, once
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))
    assert list(Execution.objects.order_by("pk").values_list("exec_id", flat=True)) == ["A1", "F1"]
    assert handler.fills_applied == 1


@pytest.mark.django_db(transaction=True)
def test_falling_back_one_by_one_never_books_a_report_twice(routed, monkeypatch):
    from orders.services import executions

    order, placement = routed
    handler = DjangoGatewayHandler()
    cl = placement.cl_ord_id
    items = _items(
        handler,
        [
            wire_report(cl, "0", "0", exec_id="A1"),
            wire_report(
                cl, "F", "1", exec_id="F1", cum="40", avg="100", last_qty="40", last_px="100"
            ),
        ],
    )
    seen: list[int] = []
    real = executions.executions_apply

    def fails_after_applying(*, session_key, reports):
        real(session_key=session_key, reports=reports[:1])  # commits the ack alone
        seen.append(Execution.objects.count())
        raise RuntimeError("boom")

    monkeypatch.setattr(executions, "executions_apply", fails_after_applying)
    handler._apply_items(items)
    # then the ack applied before the failure is not applied again, and the fill is booked once
    assert seen == [1]
    assert list(Execution.objects.order_by("pk").values_list("exec_id", flat=True)) == ["A1", "F1"]
    order.refresh_from_db()
    assert order.cum_qty == Decimal("40")


def _prepared_on_thread(thread: _DbThread, runs: int) -> tuple[int | None, list[str]]:
    """Run one constant statement `runs` times on the thread; its threshold and what is prepared."""

    def work() -> tuple[int | None, list[str]]:
        with connection.cursor() as cursor:
            for _ in range(runs):
                cursor.execute("SELECT count(*) FROM orders_fixmessage WHERE seq_num = %s", [7])
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return connection.connection.prepare_threshold, [r[0] for r in cursor.fetchall()]

    return thread.run(work)


@pytest.mark.django_db(transaction=True)
def test_gateway_threads_prepare_the_statements_they_repeat(settings):
    settings.DB_PREPARE_THRESHOLD = 3
    thread = _DbThread("test-db")
    try:
        # when a gateway thread runs a statement more often than the threshold
        threshold, prepared = _prepared_on_thread(thread, 4)
        # then its connection prepared it
        assert threshold == 3
        assert prepared == ["SELECT count(*) FROM orders_fixmessage WHERE seq_num = $1"]
        # and a connection the thread opens again (after a database failure) does the same
        thread.run(lambda: connection.close())
        threshold, prepared = _prepared_on_thread(thread, 4)
        assert threshold == 3
        assert prepared == ["SELECT count(*) FROM orders_fixmessage WHERE seq_num = $1"]
    finally:
        thread.close()
    # while another thread's connection prepares nothing
    with concurrent.futures.ThreadPoolExecutor(1) as other:

        def elsewhere() -> tuple[int | None, list[str]]:
            try:
                with connection.cursor() as cursor:
                    for _ in range(4):
                        cursor.execute("SELECT count(*) FROM orders_fixmessage WHERE seq_num = 7")
                    cursor.execute("SELECT statement FROM pg_prepared_statements")
                    return connection.connection.prepare_threshold, [
                        r[0] for r in cursor.fetchall()
                    ]
            finally:
                connection.close()

        assert other.submit(elsewhere).result() == (None, [])


def _setting_on_thread(thread: _DbThread, name: str) -> str:
    """A setting of the gateway thread's connection (SHOW `name`)."""

    def work() -> str:
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW {name}")
            return str(cursor.fetchone()[0])

    return thread.run(work)


def _plan_cache_mode_on_thread(thread: _DbThread) -> str:
    return _setting_on_thread(thread, "plan_cache_mode")


def _random_page_cost_on_thread(thread: _DbThread) -> str:
    return _setting_on_thread(thread, "random_page_cost")


def _setting_elsewhere(name: str) -> str:
    """The same setting on a connection of another (not a gateway) thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as other:

        def elsewhere() -> str:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"SHOW {name}")
                    return str(cursor.fetchone()[0])
            finally:
                connection.close()

        return other.submit(elsewhere).result()


def _server_random_page_cost() -> str:
    return _setting_elsewhere("random_page_cost")


@pytest.mark.django_db(transaction=True)
def test_gateway_threads_with_generic_plans_cost_random_pages_as_in_memory(settings):
    settings.DB_PREPARE_THRESHOLD = 3
    server = _server_random_page_cost()  # other connections keep the server's (4 by default)
    # given gateway threads with generic plans on and the page cost set (the default), turned
    # off, and generic plans off
    for generic, cost, expected in ((True, 1.1, "1.1"), (True, None, server), (False, 1.1, server)):
        settings.DB_GENERIC_PLANS = generic
        settings.DB_RANDOM_PAGE_COST = cost
        thread = _DbThread("test-db")
        try:
            # then its connection plans with that page cost (or the server's)
            assert _random_page_cost_on_thread(thread) == expected
            assert _plan_cache_mode_on_thread(thread) == (
                "force_generic_plan" if generic else "auto"
            )
            # and so does one it opens again (after a database failure)
            thread.run(lambda: connection.close())
            assert _random_page_cost_on_thread(thread) == expected
        finally:
            thread.close()
    # while another thread's connection keeps the server's
    settings.DB_GENERIC_PLANS = True
    settings.DB_RANDOM_PAGE_COST = 1.1
    assert _server_random_page_cost() == server


@pytest.mark.django_db(transaction=True)
def test_gateway_threads_keep_generic_plans_unless_turned_off(settings):
    settings.DB_PREPARE_THRESHOLD = 3
    # given gateway threads with generic plans on (the default) and off
    for generic, expected in ((True, "force_generic_plan"), (False, "auto")):
        settings.DB_GENERIC_PLANS = generic
        thread = _DbThread("test-db")
        try:
            # then its connection keeps one generic plan per prepared statement (or not)
            assert _plan_cache_mode_on_thread(thread) == expected
            # and so does one it opens again (after a database failure)
            thread.run(lambda: connection.close())
            assert _plan_cache_mode_on_thread(thread) == expected
        finally:
            thread.close()
    # while another thread's connection keeps PostgreSQL's default
    settings.DB_GENERIC_PLANS = True
    assert _setting_elsewhere("plan_cache_mode") == "auto"


@pytest.mark.django_db(transaction=True)
def test_gateway_threads_prepare_nothing_when_turned_off(settings):
    settings.DB_PREPARE_THRESHOLD = None  # DB_PREPARE_THRESHOLD=off (PgBouncer, transaction mode)
    thread = _DbThread("test-db")
    try:
        assert _prepared_on_thread(thread, 6) == (None, [])
        # nor does it set the session's plan cache mode (a pooler would hand it on)
        assert _plan_cache_mode_on_thread(thread) == "auto"
    finally:
        thread.close()


@pytest.mark.django_db(transaction=True)
def test_an_applier_waits_for_a_report_being_stored_and_applies_both_at_once(routed, batches):
    order, placement = routed
    cl = placement.cl_ord_id
    handler = DjangoGatewayHandler(appliers=1, linger=5.0)
    try:
        # given a fill of the session being stored on QuickFIX's thread (not queued yet)
        with handler._storing_changed:
            handler._storing[KEY] = 1
        # when its acknowledgement, stored before it, reaches the applier
        ack = wire_report(cl, "0", "0", exec_id="A1")
        handler.on_inbound(KEY, ack, parse_message(ack))
        time.sleep(0.3)
        # then nothing is applied while the fill is being stored
        assert batches == []
        assert Execution.objects.count() == 0
        _fill_stored(handler, cl)
    finally:
        handler.close_connections()
    # and once it is queued both go in one transaction, in order
    assert batches == [["A1", "F1"]]
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))


def _fill_stored(handler: DjangoGatewayHandler, cl: str) -> None:
    """The whole fill F1 of 100 @ 100 reaches the applier, its session's store ends, and
    everything queued is applied."""
    fill = wire_report(
        cl, "F", "2", exec_id="F1", cum="100", avg="100", last_qty="100", last_px="100"
    )
    (item,) = _items(handler, [fill])
    handler._applier_list()[0].queue.put(item)
    with handler._storing_changed:
        handler._storing[KEY] = 0
        handler._storing_changed.notify_all()
    assert handler.wait_idle(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_an_applier_does_not_wait_when_nothing_is_being_stored(routed, batches):
    _, placement = routed
    handler = DjangoGatewayHandler(appliers=1, linger=30.0)
    try:
        # when a lone acknowledgement arrives and nothing else is being stored
        ack = wire_report(placement.cl_ord_id, "0", "0", exec_id="A1")
        started = time.monotonic()
        handler.on_inbound(KEY, ack, parse_message(ack))
        assert handler.wait_idle(timeout=10)
        # then it is applied at once (not after the 30 s a waiting applier could wait)
        assert time.monotonic() - started < 10
    finally:
        handler.close_connections()
    assert batches == [] and Execution.objects.get().exec_id == "A1"
    assert handler._storing == {KEY: 0}


@pytest.mark.django_db(transaction=True)
def test_the_callback_stores_a_report_with_the_sessions_own_connection(routed):
    order, placement = routed
    handler = DjangoGatewayHandler(appliers=2)
    ack = wire_report(placement.cl_ord_id, "0", "0", exec_id="A1")
    opened: list[object] = []

    def callback() -> None:
        # as on QuickFIX's thread of the session: a thread of its own
        handler.on_inbound(KEY, ack, parse_message(ack))
        opened.append(connections["default"].connection)

    try:
        # when a report arrives on a thread that never touched Django's connection
        thread = threading.Thread(target=callback)
        thread.start()
        thread.join(timeout=30)
        assert handler.wait_idle(timeout=30)
        store = handler._stores[KEY]
    finally:
        handler.close_connections()
    # then the callback opened no Django connection on its thread
    assert opened == [None]
    # and the raw message is stored once with its header fields, then applied
    stored = FixMessage.objects.get(direction="in")
    assert (stored.session_key, stored.msg_type, stored.cl_ord_id, stored.poss_dup) == (
        KEY,
        "8",
        placement.cl_ord_id,
        False,
    )
    assert stored.seq_num == seq_of(ack)
    assert stored.raw == ack
    assert Execution.objects.get().raw_message_id == stored.pk
    order.refresh_from_db()
    assert order.status == OrderStatus.WORKING
    # and the placement was found through the outbox (the gateway never sent it here)
    assert handler._placements[placement.cl_ord_id] == placement.pk
    # and closing the handler closed the session's connection
    assert store._conn is None


@pytest.mark.django_db(transaction=True)
def test_a_report_the_session_cannot_store_raises_and_nothing_is_queued(routed):
    _, placement = routed
    handler = DjangoGatewayHandler(appliers=1)
    handler._store_params = {
        **connections["default"].get_connection_params(),
        "dbname": "oms_no_such_database",
    }
    for name in ("cursor_factory", "context", "prepare_threshold"):
        handler._store_params.pop(name, None)
    ack = wire_report(placement.cl_ord_id, "0", "0", exec_id="A1")
    try:
        # when the session's connection cannot be made
        with pytest.raises(psycopg.OperationalError):
            handler.on_inbound(KEY, ack, parse_message(ack))
        # then nothing is stored, queued or applied, and nothing counts as being stored
        assert handler.wait_idle(timeout=5)
        assert all(a.queue.unfinished_tasks == 0 for a in handler._appliers)
        assert handler._storing == {KEY: 0}
    finally:
        handler.close_connections()
    assert FixMessage.objects.count() == 0
    assert Execution.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_an_applier_holding_an_acknowledgement_waits_for_a_store_that_starts_just_after(
    routed, batches
):
    order, placement = routed
    cl = placement.cl_ord_id
    handler = DjangoGatewayHandler(appliers=1, linger=5.0, follow_gap=5.0)
    try:
        # given an acknowledgement applied while nothing else is being stored
        ack = wire_report(cl, "0", "0", exec_id="A1")
        handler.on_inbound(KEY, ack, parse_message(ack))
        time.sleep(0.3)
        # when a store of the session starts within the gap (QuickFIX's thread moving on to
        # the fill read with it)
        with handler._storing_changed:
            handler._storing[KEY] = 1
            handler._storing_changed.notify_all()
        time.sleep(0.3)
        # then nothing is applied yet
        assert batches == []
        assert Execution.objects.count() == 0
        _fill_stored(handler, cl)
    finally:
        handler.close_connections()
    # and the acknowledgement and the fill go in one transaction, in order
    assert batches == [["A1", "F1"]]
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))


@pytest.mark.django_db(transaction=True)
def test_an_applier_holding_a_fill_does_not_wait_for_a_store_to_start(routed, batches):
    order, placement = routed
    handler = DjangoGatewayHandler(appliers=1, linger=30.0, follow_gap=30.0)
    try:
        # when a fill arrives alone and nothing else is being stored
        fill = wire_report(
            placement.cl_ord_id,
            "F",
            "2",
            exec_id="F1",
            cum="100",
            avg="100",
            last_qty="100",
            last_px="100",
        )
        started = time.monotonic()
        handler.on_inbound(KEY, fill, parse_message(fill))
        assert handler.wait_idle(timeout=10)
        # then it is applied at once (not after the 30 s an acknowledgement could wait)
        assert time.monotonic() - started < 10
    finally:
        handler.close_connections()
    assert batches == [] and Execution.objects.get().exec_id == "F1"
    order.refresh_from_db()
    assert (order.status, order.cum_qty) == (OrderStatus.FILLED, Decimal("100"))
