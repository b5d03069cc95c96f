"""Faults: the gateway killed and restarted, the venue dropping the line, restart-safe outbox."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from orders.enums import OutboxStatus
from orders.fix.common import SessionStatus
from orders.fix.django_handler import OutboxDispatcher
from orders.models import Execution, FixMessage, FixSession, Order, OutboxMessage, Placement
from orders.services.routing import order_route
from tests.routing.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
SIM_KEY = "FIX.4.4:BRKA->OMS"
KEY = "FIX.4.4:OMS->BRKA"


class FakeGateway:
    """Stands in for the QuickFIX gateway: fixed session status, records what is sent."""

    def __init__(self, next_sender: int) -> None:
        self.next_sender = next_sender
        self.sent: list[str] = []

    def session_status(self, key):
        return SessionStatus(key, True, True, self.next_sender, 1)

    def send(self, key, request):
        self.sent.append(request.cl_ord_id)
        return True


@pytest.mark.django_db
@pytest.mark.parametrize(("recorded_seq", "expect_sent"), [(7, False), (9, True), (None, True)])
def test_restart_never_resends_a_row_that_already_left(
    trader, brokers, make_order, recorded_seq, expect_sent
):
    # given a pending outbox row (the process died before marking it sent)
    order = make_order()
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    if recorded_seq is not None:
        # ...whose NewOrderSingle was recorded outbound with MsgSeqNum recorded_seq
        FixMessage.objects.create(
            session_key=KEY,
            direction="out",
            msg_type="D",
            seq_num=recorded_seq,
            cl_ord_id=placement.cl_ord_id,
            raw="8=FIX.4.4\x01",
        )
    # when the restarted dispatcher runs and QuickFIX's store says the next number is 9
    gateway = FakeGateway(next_sender=9)
    session = FixSession.objects.get(target_comp_id="BRKA")
    OutboxDispatcher(gateway, {session.pk: KEY}, listen=False).dispatch_once()
    # then it is sent only if it never left (seq >= 9 or never recorded), and marked sent
    assert gateway.sent == ([placement.cl_ord_id] if expect_sent else [])
    assert OutboxMessage.objects.get(placement=placement).status == OutboxStatus.SENT


@pytest.mark.django_db
def test_rows_of_a_logged_out_session_wait(trader, brokers, make_order):
    order = make_order()
    order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    gateway = FakeGateway(next_sender=1)
    gateway.session_status = lambda key: SessionStatus(key, True, False, 1, 1)
    session = FixSession.objects.get(target_comp_id="BRKA")
    OutboxDispatcher(gateway, {session.pk: KEY}, listen=False).dispatch_once()
    assert (gateway.sent, OutboxMessage.objects.get().status) == ([], OutboxStatus.PENDING)


def _start_gateway(store: Path) -> subprocess.Popen:
    env = dict(os.environ)
    name = connection.settings_dict["NAME"]
    env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_fix_gateway",
            "--store-dir",
            str(store),
            "--reconnect-interval",
            "1",
            "--sweep-interval",
            "0.2",
            "--status-interval",
            "0.5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.fix
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_gateway_killed_mid_flow_then_restarted(tmp_path, brokers, trader, make_order):
    from orders.fix.simulator import SimulatorConfig, VenueSimulator

    prices = {"ACME": Decimal("100.00")}
    simulator = VenueSimulator(
        SimulatorConfig(
            store_dir=str(tmp_path / "sim"),
            slice_qty=Decimal(10),
            slice_interval_ms=100,
            rest_check_interval_ms=50,
        ),
        prices.get,
    )
    simulator.start()
    FixSession.objects.update(port=simulator.port, heartbeat_seconds=2)
    FixSession.objects.exclude(target_comp_id="BRKA").update(enabled=False)
    store = tmp_path / "gw"
    gateway = _start_gateway(store)
    try:
        wait_until(lambda: FixSession.objects.get(target_comp_id="BRKA").logged_on, timeout=30)
        # given five orders filling in slices of 10 every 100 ms
        orders = [make_order(quantity=Decimal("100")) for _ in range(5)]
        for o in orders:
            order_route(user=trader, order_id=o.pk, broker_code="BRKA")
        wait_until(lambda: Execution.objects.filter(last_qty__gt=0).count() >= 8)
        seq_before = FixSession.objects.get(target_comp_id="BRKA").next_sender_seq
        # when the gateway is killed (SIGKILL: no logout, no cleanup) mid-flow
        gateway.kill()
        gateway.wait(timeout=10)
        # and two more orders are routed while it is down
        late = [make_order(quantity=Decimal("20")) for _ in range(2)]
        for o in late:
            order_route(user=trader, order_id=o.pk, broker_code="BRKA")
        time.sleep(0.5)
        gateway = _start_gateway(store)
        # then everything fills exactly
        everyone = orders + late
        wait_until(
            lambda: all(Order.objects.get(pk=o.pk).status == "filled" for o in everyone),
            timeout=60,
        )
        for o in everyone:
            o.refresh_from_db()
            placement = Placement.objects.get(order=o)
            fills = Execution.objects.filter(placement=placement, last_qty__gt=0)
            assert o.cum_qty == o.quantity == sum(e.last_qty for e in fills)
            # and the venue saw each order exactly once
            assert simulator.order(SIM_KEY, placement.cl_ord_id).cl_ord_ids == [placement.cl_ord_id]
            assert simulator.order(SIM_KEY, placement.cl_ord_id).cum_qty == o.quantity
        assert OutboxMessage.objects.filter(status="sent").count() == 7
        # and sequence numbers resumed (no reset to 1)
        wait_until(
            lambda: FixSession.objects.get(target_comp_id="BRKA").next_sender_seq > seq_before
        )
        # and both sides agree on the numbers once the state is written
        wait_until(
            lambda: (
                FixSession.objects.get(target_comp_id="BRKA").next_target_seq
                == simulator.session_status(SIM_KEY).next_sender_seq_num
            )
        )
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
        simulator.stop()


@pytest.mark.fix
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_venue_disconnect_mid_fill_recovers_every_fill(make_fix_env, trader, make_order):
    env = make_fix_env(slice_qty=Decimal(10), slice_interval_ms=60)
    order = make_order(quantity=Decimal("100"))
    placement = order_route(user=trader, order_id=order.pk, broker_code="BRKA")
    # (received, not applied: reports are applied after QuickFIX took them; three = ack + 2 fills)
    wait_until(lambda: FixMessage.objects.filter(direction="in", msg_type="8").count() >= 3)
    # when the venue drops the connection while slices keep executing
    env.simulator.disconnect()
    # then the session comes back, the missed reports are resent and nothing is doubled
    wait_until(lambda: Order.objects.get(pk=order.pk).status == "filled", timeout=30)
    order.refresh_from_db()
    fills = list(Execution.objects.filter(placement=placement, last_qty__gt=0))
    assert order.cum_qty == sum(e.last_qty for e in fills) == Decimal(100)
    assert len(fills) == 10
    assert FixMessage.objects.filter(direction="in", msg_type="8", poss_dup=True).exists()
