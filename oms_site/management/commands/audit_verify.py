"""`manage.py audit_verify`: check that the audit trail is complete and untampered."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from oms_site.audit import audit_verify
from oms_site.models import AuditEvent, AuditStream


class Command(BaseCommand):
    help = "Recompute every audit hash chain; exit non-zero on a gap or a tampered row."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--stream", action="append", help="only these streams")

    def handle(self, *args: Any, **options: Any) -> None:
        problems = audit_verify(streams=options.get("stream"))
        events = AuditEvent.objects.count()
        streams = AuditStream.objects.count()
        for p in problems:
            self.stderr.write(f"{p.kind}: stream {p.stream} seq {p.seq}: {p.detail}")
        if problems:
            raise CommandError(f"audit trail FAILED: {len(problems)} problem(s) in {events} events")
        self.stdout.write(f"audit trail OK: {events} events in {streams} streams verified")
