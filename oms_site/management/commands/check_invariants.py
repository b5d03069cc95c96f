"""`manage.py check_invariants`: check the book's invariants (see oms_site.invariants)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from oms_site.invariants import book_snapshot, invariants_check


def _ids(path: str | None) -> list[int]:
    if not path:
        return []
    return [int(x) for x in Path(path).read_text().split()]


class Command(BaseCommand):
    help = "Check orders, fills, allocations, positions, cash, outbox and audit; exit 1 on a FAIL."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--snapshot", help="write the book baseline to this JSON file, exit")
        parser.add_argument("--baseline", help="book baseline written earlier by --snapshot")
        parser.add_argument("--accepted-orders", help="file of order ids the API accepted")
        parser.add_argument("--queued-orders", help="file of order ids queued for routing")
        parser.add_argument("--queued-blocks", help="file of block ids queued for routing")
        parser.add_argument(
            "--live", action="store_true", help="the system is not quiet: skip the outbox check"
        )
        parser.add_argument("--no-audit", action="store_true", help="skip the audit chains")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["snapshot"]:
            Path(options["snapshot"]).write_text(json.dumps(book_snapshot()))
            self.stdout.write(f"book baseline written to {options['snapshot']}")
            return
        baseline = (
            json.loads(Path(options["baseline"]).read_text()) if options["baseline"] else None
        )
        results = invariants_check(
            baseline=baseline,
            accepted_order_ids=_ids(options["accepted_orders"]),
            queued_order_ids=_ids(options["queued_orders"]),
            queued_block_ids=_ids(options["queued_blocks"]),
            quiesced=not options["live"],
            audit=not options["no_audit"],
        )
        if options["json"]:
            self.stdout.write(json.dumps([r.as_dict() for r in results]))
        else:
            for r in results:
                verdict = "SKIP" if r.skipped else "PASS" if r.passed else "FAIL"
                line = f"{verdict}  {r.name} ({r.checked} checked)"
                if r.detail:
                    line += f": {r.detail}"
                self.stdout.write(line)
                for example in r.examples:
                    self.stdout.write(f"      {example}")
        if not all(r.passed for r in results):
            raise CommandError("invariants FAILED")
