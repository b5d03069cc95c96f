"""`manage.py run_fix_gateway`: the FIX initiator process (enabled FixSession rows)."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orders.fix.django_handler import GatewayRunner, session_rows


class Command(BaseCommand):
    help = "Run the FIX gateway: sessions to brokers, the outbox sender and execution reports."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--session", action="append", default=None, help="only this key")
        parser.add_argument("--store-dir", default=None, help="default: FIX_STORE_DIR/gateway")
        parser.add_argument("--log-dir", default=None, help="QuickFIX FileLog directory")
        parser.add_argument("--sweep-interval", type=float, default=1.0)
        parser.add_argument("--status-interval", type=float, default=2.0)
        parser.add_argument("--reconnect-interval", type=int, default=5)
        parser.add_argument(
            "--appliers",
            type=int,
            default=4,
            help="threads applying execution reports (each placement's reports stay in order)",
        )
        parser.add_argument(
            "--apply-batch",
            type=int,
            default=16,
            help="at most this many queued reports an applier applies in one transaction",
        )
        parser.add_argument(
            "--max-resend-age",
            type=float,
            default=None,
            help="seconds; older order messages are not resent after a gap (default: always)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        # The applier threads are CPU-bound Python; the blotter sender and the outbox listener
        # wait on sockets. With the default 5 ms GIL switch interval every socket wake-up queues
        # behind an applier for up to 5 ms (a convoy: seconds of blotter latency under load).
        sys.setswitchinterval(0.0005)
        rows = session_rows(
            store_dir=options["store_dir"],
            log_dir=options["log_dir"],
            reconnect_interval=options["reconnect_interval"],
            keys=options["session"],
        )
        if not rows:
            raise CommandError("no enabled FIX sessions (manage.py fix_session add ...)")
        runner = GatewayRunner(
            rows,
            sweep_interval=options["sweep_interval"],
            status_interval=options["status_interval"],
            max_resend_age=options["max_resend_age"],
            background_events=True,
            appliers=options["appliers"],
            apply_batch=options["apply_batch"],
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        # Django, the models and the sessions are loaded by now: keep those long-lived objects out
        # of every later collection, which otherwise rescans them while fills allocate (about
        # 15 % of a 1,000-account fill's Python time, measured in process).
        gc.freeze()
        runner.start()
        keys = ", ".join(r.key for r in rows)
        self.stdout.write(f"FIX gateway started: {keys}")
        self.stdout.flush()
        try:
            # Short waits keep the SIGTERM/SIGINT handlers responsive.
            while not stop.is_set():
                stop.wait(0.5)
        finally:
            self.stdout.write("FIX gateway stopping")
            runner.stop()
            self.stdout.write("FIX gateway stopped")
