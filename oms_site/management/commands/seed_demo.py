"""`manage.py seed_demo`: create the deterministic demo data set (safe to re-run)."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from oms_site.demo import DEMO_USERS, demo_password, seed_demo


class Command(BaseCommand):
    help = (
        "Create or refresh demo users, instruments, accounts, brokers, prices, cash and positions."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--fix-port", type=int, default=int(os.environ.get("FIX_SIM_PORT", "9878"))
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = seed_demo(fix_port=options["fix_port"])
        self.stdout.write("demo data: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        users = ", ".join(u for u, _, _ in DEMO_USERS)
        self.stdout.write(f"demo logins (password: {demo_password()}): {users}")
