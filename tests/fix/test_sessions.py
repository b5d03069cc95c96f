"""Real FIX sessions over TCP on 127.0.0.1: QuickFIX gateway <-> venue simulator."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orders.fix.messages import (
    BusinessReject,
    CancelReject,
    CancelRequest,
    ExecReport,
    NewOrder,
    OutboundMessage,
    ReplaceRequest,
)

pytestmark = [pytest.mark.fix, pytest.mark.timeout(60)]

KEY44 = "FIX.4.4:OMS->BRKA"
SIM44 = "FIX.4.4:BRKA->OMS"


def kinds(reports: list[ExecReport]) -> list[str]:
    return [r.exec_type_name for r in reports]


@pytest.fixture
def venue(make_simulator, make_gateway):
    """A simulator (BRKA quotes AAPL 99.96 / 100.04) and a logged-on FIX 4.4 gateway."""
    simulator = make_simulator(slice_qty=Decimal(100), slice_interval_ms=150)
    gateway, handler = make_gateway(simulator.port)
    assert gateway.wait_logged_on(KEY44, timeout=10)
    return simulator, gateway, handler


def test_logon_fix42_and_fix44_sessions(make_simulator, make_gateway):
    # given a simulator playing BRKA and BRKB in both FIX versions
    simulator = make_simulator()
    # when a gateway opens a FIX 4.2 session to BRKA and a FIX 4.4 session to BRKB
    gateway, handler = make_gateway(
        simulator.port, sessions=(("FIX.4.2", "BRKA"), ("FIX.4.4", "BRKB"))
    )
    # then both are logged on, each having used sequence number 1 for the Logon
    assert gateway.wait_logged_on(timeout=10)
    assert handler.wait_for(lambda: len(handler.logons) == 2)
    assert sorted(handler.logons) == ["FIX.4.2:OMS->BRKA", "FIX.4.4:OMS->BRKB"]
    for key in ("FIX.4.2:OMS->BRKA", "FIX.4.4:OMS->BRKB"):
        status = gateway.session_status(key)
        assert (status.logged_on, status.next_sender_seq_num, status.next_target_seq_num) == (
            True,
            2,
            2,
        )
    assert simulator.session_status("FIX.4.4:BRKB->OMS").logged_on is True
    # and the Logons were reported in and out
    assert any("\x0135=A\x01" in raw for _, raw in handler.outbound)
    assert any(r.parsed.header.msg_type == "A" for r in handler.inbound)


def test_send_is_refused_for_unknown_or_logged_out_session(make_gateway, tmp_path):
    # given a gateway whose broker does not answer
    from tests.fix.conftest import free_port

    gateway, _ = make_gateway(free_port())
    # when an order is sent, then it is refused rather than queued for a later resend
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(1))) is False
    assert gateway.send("FIX.4.4:OMS->NOPE", NewOrder("C1", "AAPL", "buy", Decimal(1))) is False
    assert gateway.session_status(KEY44).logged_on is False
    assert gateway.session_status("FIX.4.4:OMS->NOPE").exists is False


def test_market_order_acknowledged_then_filled_in_slices(venue, prices):
    _simulator, gateway, handler = venue
    # when a market buy of 250 is sent (slices of 100 every 150 ms)
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(250))) is True
    # and the price moves after the first slice
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) >= 2)
    prices["AAPL"] = Decimal("101.00")
    assert handler.wait_for(lambda: any(r.ord_status == "2" for r in handler.exec_reports("C1")))
    # then: ack, three fills, exact cumulative quantity and average price
    reports = handler.exec_reports("C1")
    assert kinds(reports) == ["new", "trade", "trade", "trade"]
    fills = [(r.last_qty, r.last_px, r.cum_qty, r.leaves_qty, r.ord_status) for r in reports[1:]]
    assert fills == [
        (Decimal(100), Decimal("100.04"), Decimal(100), Decimal(150), "1"),
        (Decimal(100), Decimal("101.05"), Decimal(200), Decimal(50), "1"),
        (Decimal(50), Decimal("101.05"), Decimal(250), Decimal(0), "2"),
    ]
    assert reports[-1].avg_px == Decimal("100.646")
    assert len({r.exec_id for r in reports}) == 4
    assert {r.order_id for r in reports} == {reports[0].order_id}
    assert all(r.is_fill for r in reports[1:]) and not reports[0].is_fill


def test_fix42_fill_uses_exec_type_2(make_simulator, make_gateway):
    simulator = make_simulator()
    gateway, handler = make_gateway(simulator.port, sessions=(("FIX.4.2", "BRKC"),))
    assert gateway.wait_logged_on(timeout=10)
    # when a sell is sent over FIX 4.2 to BRKC (spread 20 bps, skew -4 bps: bid 99.86)
    assert gateway.send("FIX.4.2:OMS->BRKC", NewOrder("C1", "AAPL", "sell", Decimal(10)))
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 2)
    # then the fill is ExecType 2 with ExecTransType 0, at BRKC's bid
    ack, fill = handler.exec_reports("C1")
    assert (ack.exec_type, ack.exec_trans_type) == ("0", "0")
    assert (fill.exec_type, fill.exec_trans_type, fill.ord_status) == ("2", "0", "2")
    assert (fill.last_qty, fill.last_px, fill.avg_px) == (
        Decimal(10),
        Decimal("99.86"),
        Decimal("99.86"),
    )


def test_limit_order_rests_then_cancel(venue):
    simulator, gateway, handler = venue
    # given a buy limit below the ask: it rests
    order = NewOrder(
        "C1",
        "AAPL",
        "buy",
        Decimal(100),
        order_type="limit",
        limit_price=Decimal("90"),
        time_in_force="gtc",
    )
    assert gateway.send(KEY44, order)
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 1)
    # when it is canceled with a new ClOrdID
    assert gateway.send(KEY44, CancelRequest("C2", "C1", "AAPL", "buy", Decimal(100)))
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 3)
    # then pending cancel, then canceled, both naming the chain C2 <- C1
    new, pending, canceled = handler.exec_reports("C1")
    assert (new.exec_type_name, new.ord_status_name, new.leaves_qty) == ("new", "new", 100)
    assert (pending.exec_type_name, pending.cl_ord_id, pending.orig_cl_ord_id) == (
        "pending_cancel",
        "C2",
        "C1",
    )
    assert (canceled.exec_type_name, canceled.ord_status_name) == ("canceled", "canceled")
    assert (canceled.cl_ord_id, canceled.orig_cl_ord_id) == ("C2", "C1")
    assert (canceled.cum_qty, canceled.leaves_qty) == (Decimal(0), Decimal(0))
    assert simulator.order(SIM44, "C1").status == "4"


def test_resting_limit_fills_when_the_price_moves(venue, prices):
    _simulator, gateway, handler = venue
    order = NewOrder(
        "C1", "AAPL", "buy", Decimal(50), order_type="limit", limit_price=Decimal("99")
    )
    assert gateway.send(KEY44, order)
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 1)
    # when the reference drops to 98.90 (BRKA ask 98.94, below the limit)
    prices["AAPL"] = Decimal("98.90")
    # then the resting order fills at the ask, better than the limit
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 2)
    fill = handler.exec_reports("C1")[1]
    assert (fill.last_qty, fill.last_px, fill.ord_status) == (Decimal(50), Decimal("98.94"), "2")


def test_replace_then_replace_to_marketable_price_fills(venue):
    simulator, gateway, handler = venue
    assert gateway.send(
        KEY44,
        NewOrder("C1", "AAPL", "buy", Decimal(100), order_type="limit", limit_price=Decimal("90")),
    )
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 1)
    # when quantity and price are amended (still not marketable)
    assert gateway.send(
        KEY44, ReplaceRequest("C2", "C1", "AAPL", "buy", Decimal(80), limit_price=Decimal("95"))
    )
    assert handler.wait_for(lambda: len(handler.exec_reports("C2")) == 2)
    pending, replaced = handler.exec_reports("C2")
    assert (pending.exec_type_name, pending.cl_ord_id, pending.orig_cl_ord_id) == (
        "pending_replace",
        "C2",
        "C1",
    )
    assert (replaced.exec_type_name, replaced.ord_status_name) == ("replaced", "new")
    assert (replaced.cl_ord_id, replaced.orig_cl_ord_id) == ("C2", "C1")
    assert (replaced.order_qty, replaced.price, replaced.leaves_qty) == (
        Decimal(80),
        Decimal(95),
        Decimal(80),
    )
    # and amended again to a marketable limit: replaced, then filled at the ask
    assert gateway.send(
        KEY44, ReplaceRequest("C3", "C2", "AAPL", "buy", Decimal(80), limit_price=Decimal("101"))
    )
    assert handler.wait_for(lambda: len(handler.exec_reports("C3")) == 3)
    assert kinds(handler.exec_reports("C3")) == ["pending_replace", "replaced", "trade"]
    fill = handler.exec_reports("C3")[-1]
    assert (fill.cl_ord_id, fill.last_qty, fill.last_px, fill.cum_qty) == (
        "C3",
        Decimal(80),
        Decimal("100.04"),
        Decimal(80),
    )
    assert simulator.order(SIM44, "C1").cl_ord_ids == ["C1", "C2", "C3"]


def test_unknown_symbol_and_bad_price_are_rejected(venue):
    _simulator, gateway, handler = venue
    # when an unknown symbol and a limit order priced at zero are sent
    assert gateway.send(KEY44, NewOrder("C1", "NOPE", "buy", Decimal(10)))
    bad_price = OutboundMessage(
        "D",
        (
            (11, "C2"),
            (21, "1"),
            (55, "AAPL"),
            (54, "1"),
            (60, "20250101-00:00:00"),
            (38, "10"),
            (40, "2"),
            (44, "0"),
        ),
    )
    assert gateway.send(KEY44, bad_price)
    assert handler.wait_for(lambda: len(handler.exec_reports()) == 2)
    # then both come back as rejected ExecutionReports with a reason
    unknown, priced = handler.exec_reports()
    assert (unknown.cl_ord_id, unknown.exec_type, unknown.ord_status) == ("C1", "8", "8")
    assert (unknown.ord_rej_reason, unknown.text) == ("1", "unknown symbol")
    assert (priced.cl_ord_id, priced.exec_type, priced.ord_status) == ("C2", "8", "8")
    assert priced.text == "bad price: limit price must be positive"


def test_cancel_of_a_filled_order_gets_cancel_reject(venue):
    _simulator, gateway, handler = venue
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(10)))
    assert handler.wait_for(lambda: any(r.ord_status == "2" for r in handler.exec_reports("C1")))
    # when the filled order is canceled, and an unknown order too
    assert gateway.send(KEY44, CancelRequest("C2", "C1", "AAPL", "buy", Decimal(10)))
    assert gateway.send(KEY44, CancelRequest("C4", "C3", "AAPL", "buy", Decimal(10)))
    assert handler.wait_for(lambda: len(handler.app_messages("9")) == 2)
    # then OrderCancelReject: too late (status filled) and unknown order (status rejected)
    late, unknown = handler.app_messages("9")
    assert isinstance(late, CancelReject) and isinstance(unknown, CancelReject)
    assert (late.cl_ord_id, late.orig_cl_ord_id, late.ord_status, late.response_to) == (
        "C2",
        "C1",
        "2",
        "1",
    )
    assert (late.reason, late.text) == ("0", "too late to cancel")
    assert (unknown.order_id, unknown.ord_status, unknown.reason) == ("NONE", "8", "1")


def test_unsupported_message_gets_business_reject(venue):
    _simulator, gateway, handler = venue
    # when a message type the venue does not support is sent
    assert gateway.send(KEY44, OutboundMessage("AF", ((584, "M1"), (585, "7"))))
    # then a BusinessMessageReject names it
    assert handler.wait_for(lambda: handler.app_messages("j"))
    (reject,) = handler.app_messages("j")
    assert isinstance(reject, BusinessReject)
    assert (reject.ref_msg_type, reject.reason) == ("AF", "3")
    assert reject.ref_seq_num == gateway.session_status(KEY44).next_sender_seq_num - 1


def test_replayed_executions_arrive_as_possdup_with_same_exec_ids(venue):
    simulator, gateway, handler = venue
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(10)))
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 2)
    originals = handler.exec_reports("C1")
    # when the venue resends its last two execution reports
    assert simulator.replay(SIM44, last=2) == 2
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) == 4)
    # then the copies carry PossDupFlag=Y and the same ExecIDs (dedup is by ExecID)
    copies = handler.exec_reports("C1")[2:]
    assert [c.exec_id for c in copies] == [o.exec_id for o in originals]
    assert [c.poss_dup for c in copies] == [True, True]
    assert [o.poss_dup for o in originals] == [False, False]
