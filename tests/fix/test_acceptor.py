"""The pure-Python acceptor's session layer, driven by a raw-socket FIX client."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest

from orders.fix.acceptor import FixFramer, FramingError
from orders.fix.messages import NewOrder, build_message, encode_message, split_fields

pytestmark = [pytest.mark.fix, pytest.mark.timeout(30)]


class RawClient:
    """A minimal FIX 4.4 client: OMS -> BRKA, explicit sequence numbers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.framer = FixFramer()
        self.inbox: list[dict[int, str]] = []

    def send(self, msg_type, fields, seq, poss_dup=False):
        raw = encode_message(
            begin_string="FIX.4.4",
            msg_type=msg_type,
            sender_comp_id="OMS",
            target_comp_id="BRKA",
            msg_seq_num=seq,
            fields=fields,
            poss_dup=poss_dup,
        )
        self.sock.sendall(raw.encode())

    def receive(self, count: int) -> list[dict[int, str]]:
        while len(self.inbox) < count:
            data = self.sock.recv(65536)
            if not data:
                break
            self.inbox += [dict(split_fields(m.decode())) for m in self.framer.feed(data)]
        taken, self.inbox = self.inbox[:count], self.inbox[count:]
        return taken

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client_for(make_simulator):
    clients: list[RawClient] = []

    def factory(**options):
        simulator = make_simulator(**options)
        client = RawClient(simulator.port)
        clients.append(client)
        return simulator, client

    yield factory
    for client in clients:
        client.close()


def test_framer_rejects_a_bad_checksum():
    raw = encode_message(
        begin_string="FIX.4.4",
        msg_type="0",
        sender_comp_id="A",
        target_comp_id="B",
        msg_seq_num=1,
        fields=[],
    ).encode()
    # a message cut anywhere is held until complete
    for cut in range(1, len(raw)):
        framer = FixFramer()
        assert framer.feed(raw[:cut]) == []
        assert framer.feed(raw[cut:]) == [raw]
    assert FixFramer().feed(raw + raw) == [raw, raw]
    with pytest.raises(FramingError):
        FixFramer().feed(raw[:-4] + b"999\x01")


def test_inbound_gap_is_resent_and_queued_message_processed(client_for):
    simulator, client = client_for()
    client.send("A", [(98, "0"), (108, "30")], seq=1)
    (logon,) = client.receive(1)
    assert (logon[35], logon[34], logon[108]) == ("A", "1", "30")
    # when seq 2 is skipped and an order arrives as seq 3
    order = build_message(NewOrder("C1", "AAPL", "buy", Decimal(5))).fields
    client.send("D", order, seq=3)
    # then the venue asks for everything from 2 and holds the order back
    (resend,) = client.receive(1)
    assert (resend[35], resend[7], resend[16]) == ("2", "2", "0")
    assert simulator.order("FIX.4.4:BRKA->OMS", "C1") is None
    # when the gap is filled, then the queued order is processed: ack and fill
    client.send("4", [(123, "Y"), (36, "3")], seq=2, poss_dup=True)
    ack, fill = client.receive(2)
    assert (ack[35], ack[150], ack[11]) == ("8", "0", "C1")
    assert (fill[150], fill[39], fill[14]) == ("F", "2", "5")
    assert simulator.session_status("FIX.4.4:BRKA->OMS").next_target_seq_num == 4


def test_possdup_duplicate_is_ignored_and_too_low_seq_logs_out(client_for):
    _simulator, client = client_for()
    client.send("A", [(98, "0"), (108, "30")], seq=1)
    client.receive(1)
    order = build_message(NewOrder("C1", "AAPL", "buy", Decimal(5))).fields
    client.send("D", order, seq=2)
    assert len(client.receive(2)) == 2
    # when the same order is resent as PossDup with its old number, nothing happens
    client.send("D", order, seq=2, poss_dup=True)
    client.send("1", [(112, "ping")], seq=3)
    (heartbeat,) = client.receive(1)
    assert (heartbeat[35], heartbeat[112]) == ("0", "ping")
    # when a message arrives with a number already used and no PossDup, then Logout
    client.send("0", [], seq=3)
    (logout,) = client.receive(1)
    assert logout[35] == "5"
    assert logout[58] == "MsgSeqNum too low, expecting 4 but received 3"


def test_resend_request_replays_app_messages_and_gap_fills_admin(client_for):
    _simulator, client = client_for()
    client.send("A", [(98, "0"), (108, "30")], seq=1)
    client.receive(1)
    client.send("D", build_message(NewOrder("C1", "AAPL", "buy", Decimal(5))).fields, seq=2)
    originals = client.receive(2)  # seq 2 (ack) and 3 (fill)
    # when the client asks for everything from 1
    client.send("2", [(7, "1"), (16, "0")], seq=3)
    gap_fill, ack, fill = client.receive(3)
    # then the Logon (admin) is gap-filled and the reports come back as PossDup copies
    assert (gap_fill[35], gap_fill[34], gap_fill[123], gap_fill[36], gap_fill[43]) == (
        "4",
        "1",
        "Y",
        "2",
        "Y",
    )
    assert [(m[34], m[17], m[43]) for m in (ack, fill)] == [(o[34], o[17], "Y") for o in originals]
    assert ack[122] == originals[0][52]


def test_unknown_comp_id_is_refused(client_for):
    _simulator, client = client_for()
    raw = encode_message(
        begin_string="FIX.4.4",
        msg_type="A",
        sender_comp_id="STRANGER",
        target_comp_id="BRKA",
        msg_seq_num=1,
        fields=[(98, "0"), (108, "30")],
    )
    client.sock.sendall(raw.encode())
    assert client.sock.recv(100) == b""
