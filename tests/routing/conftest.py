"""Fixtures of the routing tests: brokers with FIX sessions, approved orders, FIX reports."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from orders.enums import OrderStatus
from orders.fix.messages import encode_message, exec_report_fields, parse_message
from orders.models import Broker, FixSession, Order
from tests import factories as f

BROKERS = (("BRKA", 1), ("BRKB", 2), ("BRKC", 3))
_seq = itertools.count(1)


@pytest.fixture
def brokers(db: Any) -> dict[str, Broker]:
    """The three demo brokers, each with an enabled FIX 4.4 session OMS->code on port 9878."""
    made = {}
    for code, rank in BROKERS:
        broker = f.BrokerFactory(code=code, rank=rank)
        FixSession.objects.create(
            broker=broker,
            port=9878,
            sender_comp_id="OMS",
            target_comp_id=code,
            heartbeat_seconds=2,
        )
        made[code] = broker
    return made


@pytest.fixture
def make_order(pm: Any, account: Any, instrument: Any) -> Callable[..., Order]:
    """An approved (staged) order of pm_a's account; kwargs override fields."""

    def factory(**kw: Any) -> Order:
        values: dict[str, Any] = {
            "account": account,
            "instrument": instrument,
            "side": "buy",
            "quantity": Decimal("100"),
            "order_type": "market",
            "time_in_force": "day",
            "status": OrderStatus.APPROVED,
            "compliance_outcome": "pass",
            "created_by": pm,
        }
        values.update(kw)
        values.setdefault("leaves_qty", values["quantity"])
        return Order.objects.create(**values)

    return factory


def acknowledged_block(
    trader: Any, make_order: Callable[..., Order], quantities: list[int], *, session_key: str
) -> tuple[Any, list[Order], Any]:
    """A market buy block of new orders of these quantities, routed to BRKA and acknowledged
    through execution_apply: (block, orders, placement)."""
    orders = [make_order(quantity=Decimal(q)) for q in quantities]
    block, placement = acknowledged_block_of(trader, orders, session_key=session_key)
    return block, orders, placement


def acknowledged_block_of(trader: Any, orders: list[Order], *, session_key: str) -> tuple[Any, Any]:
    """A market buy block of these orders (of one instrument), routed to BRKA and acknowledged
    through execution_apply: (block, placement)."""
    from orders.models import Block
    from orders.services.executions import execution_apply
    from orders.services.routing import block_route

    block = Block.objects.create(
        instrument=orders[0].instrument,
        side="buy",
        order_type="market",
        quantity=sum((o.quantity for o in orders), Decimal(0)),
        created_by=trader,
    )
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(block=block)
    placement = block_route(user=trader, block_id=block.pk, broker_code="BRKA")
    execution_apply(session_key=session_key, report=report(placement.cl_ord_id, "0", "0"))
    return block, placement


def report(
    cl_ord_id: str | None,
    exec_type: str,
    ord_status: str,
    *,
    exec_id: str | None = None,
    qty: str = "100",
    cum: str = "0",
    avg: str = "0",
    leaves: str | None = None,
    last_qty: str | None = None,
    last_px: str | None = None,
    orig: str | None = None,
    poss_dup: bool = False,
    symbol: str = "ACME",
    sender: str = "BRKA",
    text: str | None = None,
) -> Any:
    """An ExecutionReport as parsed from the wire (encode_message + parse_message)."""
    if leaves is None:
        done = ord_status in ("2", "4", "8", "C")
        leaves = "0" if done else str(Decimal(qty) - Decimal(cum))
    body = exec_report_fields(
        begin_string="FIX.4.4",
        order_id="BRK-ORD-1",
        exec_id=exec_id or f"X{next(_seq)}",
        exec_type=exec_type,
        ord_status=ord_status,
        symbol=symbol,
        side="1",
        order_qty=Decimal(qty),
        cum_qty=Decimal(cum),
        avg_px=Decimal(avg),
        leaves_qty=Decimal(leaves),
        cl_ord_id=cl_ord_id,
        orig_cl_ord_id=orig,
        last_qty=Decimal(last_qty) if last_qty else None,
        last_px=Decimal(last_px) if last_px else None,
        text=text,
    )
    raw = encode_message(
        begin_string="FIX.4.4",
        msg_type="8",
        sender_comp_id=sender,
        target_comp_id="OMS",
        msg_seq_num=next(_seq),
        fields=body.fields,
        poss_dup=poss_dup,
    )
    parsed = parse_message(raw)
    assert type(parsed).__name__ == "ExecReport", parsed
    return parsed


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; returns its value (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def second_trader(desk: Any) -> Any:
    """Another trader of desk EQ (for four-eyes lifts)."""
    from oms_site import roles

    user = f.UserFactory(username="trader_b", role=roles.TRADER)
    desk.traders.add(user)
    return user


@pytest.fixture
def make_fix_env(tmp_path: Any, brokers: dict[str, Broker]) -> Iterator[Callable[..., Any]]:
    """Start a venue simulator and a Django gateway runner on 127.0.0.1; stopped at teardown."""
    from orders.fix.django_handler import GatewayRunner, session_rows
    from orders.fix.simulator import SimulatorConfig, VenueSimulator

    started: list[Any] = []

    class Env:
        def __init__(self, simulator: Any, runner: Any) -> None:
            self.simulator = simulator
            self.runner = runner

        def restart_gateway(self) -> None:
            self.runner.stop()
            self.runner = new_runner()
            started.append(self.runner)
            assert self.runner.wait_logged_on(timeout=15)

    prices: dict[str, Decimal] = {"ACME": Decimal("100.00")}

    def new_runner() -> Any:
        rows = session_rows(store_dir=str(tmp_path / "gw-store"), reconnect_interval=1, heartbeat=2)
        runner = GatewayRunner(rows, sweep_interval=0.2, status_interval=0.5)
        runner.start()
        return runner

    def factory(**sim_options: Any) -> Env:
        options: dict[str, Any] = {
            "store_dir": str(tmp_path / "sim-store"),
            "port": 0,
            "rest_check_interval_ms": 50.0,
        }
        options.update(sim_options)
        simulator = VenueSimulator(SimulatorConfig(**options), prices.get)
        simulator.start()
        started.append(simulator)
        FixSession.objects.update(port=simulator.port)
        runner = new_runner()
        started.append(runner)
        assert runner.wait_logged_on(timeout=15)
        env = Env(simulator, runner)
        env.prices = prices  # type: ignore[attr-defined]
        return env

    yield factory
    for thing in reversed(started):
        thing.stop()
