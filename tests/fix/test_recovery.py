"""Restarts, disconnects and failing handlers: sessions recover and nothing is lost."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import quickfix as fix

from orders.fix.gateway import GatewayApplication
from orders.fix.messages import (
    ExecReport,
    NewOrder,
    build_message,
    encode_message,
)
from orders.fix.recording import RecordingHandler

pytestmark = [pytest.mark.fix, pytest.mark.timeout(60)]

KEY44 = "FIX.4.4:OMS->BRKA"
SIM44 = "FIX.4.4:BRKA->OMS"


def filled(handler: RecordingHandler, cl_ord_id: str) -> bool:
    return any(r.ord_status == "2" for r in handler.exec_reports(cl_ord_id))


def test_gateway_restart_resumes_sequence_numbers_and_gets_missed_reports(
    make_simulator, make_gateway
):
    simulator = make_simulator()
    gateway, handler = make_gateway(simulator.port)
    assert gateway.wait_logged_on(timeout=10)
    # given a filled order and a resting one
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(10)))
    assert gateway.send(
        KEY44,
        NewOrder("C2", "AAPL", "buy", Decimal(10), order_type="limit", limit_price=Decimal(50)),
    )
    assert handler.wait_for(lambda: filled(handler, "C1") and handler.exec_reports("C2"))
    before = gateway.session_status(KEY44)
    # when the gateway stops, the venue cancels the resting order meanwhile, and it restarts
    gateway.stop()
    assert simulator.cancel_unsolicited(SIM44, "C2", "venue closed the book")
    restarted, handler2 = make_gateway(simulator.port)
    assert restarted.wait_logged_on(timeout=10)
    # then sequence numbers continued from the FileStore (not reset to 1)
    after = restarted.session_status(KEY44)
    assert after.next_sender_seq_num > before.next_sender_seq_num
    assert after.next_target_seq_num > before.next_target_seq_num
    # and the cancel sent while we were away arrives through a resend, flagged PossDup
    assert handler2.wait_for(lambda: handler2.exec_reports("C2"))
    (cancel,) = handler2.exec_reports("C2")
    assert (cancel.exec_type_name, cancel.poss_dup, cancel.text) == (
        "canceled",
        True,
        "venue closed the book",
    )
    # and both sides agree on the numbers, and trading goes on
    assert restarted.send(KEY44, NewOrder("C3", "AAPL", "sell", Decimal(5)))
    assert handler2.wait_for(lambda: filled(handler2, "C3"))
    gw_status = restarted.session_status(KEY44)
    assert handler2.wait_for(
        lambda: simulator.session_status(SIM44).next_target_seq_num == gw_status.next_sender_seq_num
    )
    # and nothing was sent twice: the venue saw each ClOrdID once
    assert [simulator.order(SIM44, c).cl_ord_ids for c in ("C1", "C2", "C3")] == [
        ["C1"],
        ["C2"],
        ["C3"],
    ]


def test_simulator_restart_session_recovers(make_simulator, make_gateway):
    first = make_simulator()
    port = first.port
    gateway, handler = make_gateway(port)
    assert gateway.wait_logged_on(timeout=10)
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(10)))
    assert handler.wait_for(lambda: filled(handler, "C1"))
    # when the venue goes away (logging us out) and comes back on the same port and store
    first.stop()
    assert handler.wait_for(lambda: KEY44 in handler.logouts)
    assert gateway.send(KEY44, NewOrder("CX", "AAPL", "buy", Decimal(1))) is False
    second = make_simulator(port=port)
    # then the gateway reconnects by itself, numbering continues, and orders flow again
    assert handler.wait_for(lambda: handler.logons.count(KEY44) == 2, timeout=10)
    assert gateway.send(KEY44, NewOrder("C2", "AAPL", "buy", Decimal(10)))
    assert handler.wait_for(lambda: filled(handler, "C2"))
    status = second.session_status(SIM44)
    assert status.next_target_seq_num == gateway.session_status(KEY44).next_sender_seq_num
    assert status.next_sender_seq_num > 4


def test_venue_disconnect_mid_fill_loses_no_execution(make_simulator, make_gateway):
    simulator = make_simulator(slice_qty=Decimal(100), slice_interval_ms=150)
    gateway, handler = make_gateway(simulator.port)
    assert gateway.wait_logged_on(timeout=10)
    # given a 500 market order filling in slices of 100
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(500)))
    assert handler.wait_for(lambda: len(handler.exec_reports("C1")) >= 2)
    # when the venue drops the connection while slices keep being executed
    simulator.disconnect()
    # then after reconnecting, the missed reports are resent and the order is complete
    assert handler.wait_for(lambda: filled(handler, "C1"), timeout=15)
    reports = handler.exec_reports("C1")
    fills = [r for r in reports if r.is_fill]
    assert sum(r.last_qty for r in fills) == Decimal(500)
    assert [r.cum_qty for r in fills] == [Decimal(100 * i) for i in range(1, 6)]
    assert len({r.exec_id for r in reports}) == len(reports)
    assert any(r.poss_dup for r in fills)
    assert handler.logons.count(KEY44) == 2


def test_failing_handler_rewinds_and_the_fill_is_redelivered(make_simulator, make_gateway):
    simulator = make_simulator()
    handler = RecordingHandler()
    failures: list[str] = []

    def fail(session_key, parsed):
        if isinstance(parsed, ExecReport) and parsed.is_fill and len(failures) < 2:
            failures.append(parsed.exec_id)
            return True
        return False

    handler.fail_inbound = fail
    gateway, _ = make_gateway(simulator.port, handler=handler, inbound_retries=1, retry_delay=0.01)
    assert gateway.wait_logged_on(timeout=10)
    # when the handler fails twice (one try plus one retry) on the fill
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(10)))
    # then the gateway drops the connection, reconnects, asks for a resend, and the fill
    # is delivered once, as a PossDup copy of the same ExecID
    assert handler.wait_for(lambda: filled(handler, "C1"), timeout=15)
    fills = [r for r in handler.exec_reports("C1") if r.is_fill]
    assert [(r.exec_id, r.poss_dup) for r in fills] == [(failures[0], True)]
    assert failures == [failures[0], failures[0]]
    assert handler.logons.count(KEY44) == 2


class _RaisingHandler(RecordingHandler):
    def on_logon(self, session_key):
        super().on_logon(session_key)
        raise RuntimeError("boom in on_logon")

    def on_outbound(self, session_key, raw):
        super().on_outbound(session_key, raw)
        if "\x0135=D\x01" in raw and "\x0111=BLOCKED\x01" in raw:
            raise RuntimeError("cannot record this order")


def test_handler_exceptions_do_not_end_the_process(make_simulator, make_gateway):
    simulator = make_simulator()
    gateway, handler = make_gateway(simulator.port, handler=_RaisingHandler())
    # given a handler raising in on_logon: the session still logs on
    assert gateway.wait_logged_on(timeout=10)
    # when recording an outbound order fails, then that order is not sent at all
    assert gateway.send(KEY44, NewOrder("BLOCKED", "AAPL", "buy", Decimal(1))) is False
    assert gateway.send(KEY44, NewOrder("C1", "AAPL", "buy", Decimal(1))) is True
    assert handler.wait_for(lambda: filled(handler, "C1"))
    assert simulator.order(SIM44, "BLOCKED") is None
    # and the refused message consumed no sequence number (the venue saw no gap)
    status = gateway.session_status(KEY44)
    assert handler.wait_for(
        lambda: simulator.session_status(SIM44).next_target_seq_num == status.next_sender_seq_num
    )


def _resent_order(orig_age_seconds: float, msg_type_fields=None):
    message = build_message(NewOrder("C1", "AAPL", "buy", Decimal(1)))
    now = dt.datetime.now(dt.UTC)
    raw = encode_message(
        begin_string="FIX.4.4",
        msg_type=message.msg_type,
        sender_comp_id="OMS",
        target_comp_id="BRKA",
        msg_seq_num=5,
        fields=message.fields,
        sending_time=now,
        poss_dup=True,
        orig_sending_time=now - dt.timedelta(seconds=orig_age_seconds),
    )
    return fix.Message(raw, False)


def test_stale_order_resends_are_suppressed_and_reported():
    # given a gateway application that refuses to resend orders older than 60 s
    suppressed: list[str] = []
    handler = RecordingHandler()
    handler.on_resend_suppressed = lambda key, raw: suppressed.append(raw)
    app = GatewayApplication(handler, max_resend_age=60)
    session_id = fix.SessionID("FIX.4.4", "OMS", "BRKA")
    # when QuickFIX asks to resend a 2-minute-old order, then it is not sent (gap-filled)
    with pytest.raises(fix.DoNotSend):
        app.toApp(_resent_order(120), session_id)
    assert len(suppressed) == 1 and "\x0111=C1\x01" in suppressed[0]
    # and a 5-second-old one is resent and recorded
    app.toApp(_resent_order(5), session_id)
    assert len(handler.outbound) == 1


def _spawn_gateway(port: int, store_dir: str, prefix: str, count: int, interval: float):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fix.gateway_process",
            str(port),
            store_dir,
            prefix,
            str(count),
            str(interval),
        ],
        cwd=str(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_gateway_killed_mid_flow_resumes_without_sending_twice(make_simulator, tmp_path):
    import signal

    simulator = make_simulator()
    store_dir = str(tmp_path / "killed-gw-store")
    # given a gateway process streaming orders every 20 ms
    first = _spawn_gateway(simulator.port, store_dir, "K", 1000, 0.02)
    sent_before: list[str] = []
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("SENT "):
            sent_before.append(line.split()[1])
            if len(sent_before) == 20:
                break
    # when it is killed without any chance to log out
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # and a new process starts on the same store and sends more orders
    second = _spawn_gateway(simulator.port, store_dir, "R", 5, 0.02)
    out, _ = second.communicate(timeout=30)
    lines = out.splitlines()
    assert "LOGON" in lines and "DONE" in lines
    # then each order reached the venue exactly once and none was refused as a duplicate
    sim_key = "FIX.4.4:BRKA->OMS"
    for cl_ord_id in sent_before + [f"R{i}" for i in range(5)]:
        order = simulator.order(sim_key, cl_ord_id)
        assert order is not None and order.status == "2", cl_ord_id
    execs = [line.split() for line in lines if line.startswith("EXEC ")]
    assert not any(e[3] == "8" for e in execs)
    # and the new process's orders were filled; numbering continued (no reset to 1)
    assert {e[1] for e in execs if e[3] == "F" and e[1].startswith("R")} == {
        f"R{i}" for i in range(5)
    }
    status = simulator.session_status(sim_key)
    assert status.next_target_seq_num > 20 + 5
    assert simulator.wait_logged_on(sim_key, timeout=1) is False
