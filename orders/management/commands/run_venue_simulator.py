"""`manage.py run_venue_simulator --port N`: the demo brokers BRKA/BRKB/BRKC on 127.0.0.1."""

from __future__ import annotations

import logging
import signal
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection

from orders.fix.simulator import SimulatorConfig, VenueSimulator
from orders.models import ReferencePrice

logger = logging.getLogger("orders.simulator")


class DbPrices:
    """Reference prices (last) from the database, refreshed by a thread every few seconds."""

    def __init__(self, refresh_seconds: float) -> None:
        self.refresh_seconds = refresh_seconds
        self.prices: dict[str, Decimal] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> int:
        """Read every reference price once; returns how many."""
        self.prices = dict(ReferencePrice.objects.values_list("instrument__symbol", "last"))
        return len(self.prices)

    def get(self, symbol: str) -> Decimal | None:
        """The latest known price of a symbol (thread-safe: the dict is replaced whole)."""
        return self.prices.get(symbol)

    def start(self) -> None:
        """Start refreshing in the background."""
        self._thread = threading.Thread(target=self._run, name="sim-prices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.load()
                except Exception:
                    logger.exception("reference prices not refreshed")
                    connection.close()
        finally:
            connection.close()


class Command(BaseCommand):
    help = "Run the FIX venue simulator (brokers BRKA, BRKB, BRKC) with database prices."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=9878)
        parser.add_argument("--store-dir", default=None, help="default: FIX_STORE_DIR/simulator")
        parser.add_argument("--log-dir", default=None)
        parser.add_argument("--clients", default="OMS", help="comma-separated client CompIDs")
        parser.add_argument("--latency-ms", type=float, default=0.0)
        parser.add_argument("--slice-qty", default=None, help="fill large orders in slices")
        parser.add_argument("--slice-interval-ms", type=float, default=500.0)
        parser.add_argument("--refresh-seconds", type=float, default=2.0)

    def handle(self, *args: Any, **options: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        prices = DbPrices(options["refresh_seconds"])
        count = prices.load()
        config = SimulatorConfig(
            store_dir=options["store_dir"] or str(Path(settings.FIX_STORE_DIR) / "simulator"),
            port=options["port"],
            log_dir=options["log_dir"],
            client_comp_ids=tuple(c.strip() for c in options["clients"].split(",") if c.strip()),
            latency_ms=options["latency_ms"],
            slice_qty=Decimal(options["slice_qty"]) if options["slice_qty"] else None,
            slice_interval_ms=options["slice_interval_ms"],
        )
        simulator = VenueSimulator(config, prices.get)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        simulator.start()
        prices.start()
        self.stdout.write(
            f"venue simulator on {config.host}:{simulator.port} "
            f"({', '.join(simulator.brokers)}; {count} prices)"
        )
        self.stdout.flush()
        try:
            # Short waits keep the SIGTERM/SIGINT handlers responsive.
            while not stop.is_set():
                stop.wait(0.5)
        finally:
            prices.stop()
            simulator.stop()
            self.stdout.write("venue simulator stopped")
