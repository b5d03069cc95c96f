"""Fixtures for real-TCP FIX tests: a venue simulator and QuickFIX gateways on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from orders.fix.simulator import SimulatorConfig, VenueSimulator

PRICES: dict[str, Decimal] = {"AAPL": Decimal("100.00"), "MSFT": Decimal("250.00")}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prices() -> dict[str, Decimal]:
    """Mutable reference prices the simulator quotes around."""
    return dict(PRICES)


@pytest.fixture
def make_simulator(tmp_path, prices) -> Iterator[Callable[..., VenueSimulator]]:
    """Factory starting simulators on a free port; all are stopped at teardown."""
    started: list[VenueSimulator] = []

    def factory(**overrides) -> VenueSimulator:
        options = {
            "store_dir": str(tmp_path / "sim-store"),
            "port": 0,
            "rest_check_interval_ms": 50.0,
        }
        options.update(overrides)
        simulator = VenueSimulator(SimulatorConfig(**options), prices.get)
        simulator.start()
        started.append(simulator)
        return simulator

    yield factory
    for simulator in reversed(started):
        simulator.stop()


@pytest.fixture
def make_gateway(tmp_path) -> Iterator[Callable[..., tuple]]:
    """Factory: a started Gateway (+ its RecordingHandler) to the given simulator port.

    `sessions` is a list of (fix_version, broker CompID); every gateway is stopped at teardown.
    """
    from orders.fix.gateway import Gateway, SessionSpec
    from orders.fix.recording import RecordingHandler

    started: list = []

    def factory(port: int, sessions=(("FIX.4.4", "BRKA"),), handler=None, **options):
        handler = handler or RecordingHandler()
        specs = [
            SessionSpec(
                sender_comp_id="OMS",
                target_comp_id=broker,
                host="127.0.0.1",
                port=port,
                fix_version=version,
                heartbeat=2,
                store_dir=str(tmp_path / "gw-store"),
                log_dir=str(tmp_path / "gw-log"),
                reconnect_interval=1,
            )
            for version, broker in sessions
        ]
        gateway = Gateway(specs, handler, **options)
        gateway.start()
        started.append(gateway)
        return gateway, handler

    yield factory
    for gateway in reversed(started):
        gateway.stop(force=True)
