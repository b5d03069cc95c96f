"""`manage.py fix_session add|list|enable|disable`: FIX sessions to brokers (audited)."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from oms_site.audit import audit_record, model_snapshot
from orders.enums import FixVersion
from orders.models import Broker, FixSession

COMP_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
HOST = re.compile(r"^[A-Za-z0-9.\-:]{1,255}$")


def validate_session(
    *, host: str, port: int, sender: str, target: str, version: str, heartbeat: int
) -> dict[str, str]:
    """Field -> problem for bad session settings (empty when all is well)."""
    problems: dict[str, str] = {}
    if not HOST.match(host or ""):
        problems["host"] = f"not a host name or address: {host!r}"
    if not 1 <= port <= 65535:
        problems["port"] = f"must be 1..65535, got {port}"
    for name, value in (("sender", sender), ("target", target)):
        if not COMP_ID.match(value or ""):
            problems[name] = f"CompID must be 1-32 of A-Z a-z 0-9 _ . -, got {value!r}"
    if version not in FixVersion.values:
        problems["version"] = f"must be one of {', '.join(FixVersion.values)}"
    if not 1 <= heartbeat <= 3600:
        problems["heartbeat"] = f"must be 1..3600 seconds, got {heartbeat}"
    return problems


class Command(BaseCommand):
    help = "Add, list, enable or disable FIX sessions to brokers."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a session")
        add.add_argument("--broker", required=True, help="broker code")
        add.add_argument("--host", default="127.0.0.1")
        add.add_argument("--port", type=int, required=True)
        add.add_argument("--sender", default="OMS", help="our SenderCompID")
        add.add_argument("--target", default=None, help="TargetCompID (default: broker code)")
        add.add_argument("--version", dest="fix_version", default="FIX.4.4")
        add.add_argument("--heartbeat", type=int, default=30)
        add.add_argument("--disabled", action="store_true")
        sub.add_parser("list", help="list sessions")
        for name in ("enable", "disable"):
            p = sub.add_parser(name, help=f"{name} a session")
            p.add_argument("session", help="id or key, e.g. FIX.4.4:OMS->BRKA")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            return self._list()
        if action == "add":
            return self._add(options)
        return self._toggle(options["session"], enabled=action == "enable")

    def _list(self) -> None:
        self.stdout.write(
            f"{'id':>4}  {'session':<28} {'broker':<8} {'address':<22} {'hb':>4} "
            f"{'enabled':<7} {'logged_on':<9} {'seq out/in':<12} status_at"
        )
        for s in FixSession.objects.select_related("broker").order_by("pk"):
            self.stdout.write(
                f"{s.pk:>4}  {s.session_key:<28} {s.broker.code:<8} {s.host + ':' + str(s.port):<22} "
                f"{s.heartbeat_seconds:>4} {s.enabled!s:<7} {s.logged_on!s:<9} "
                f"{f'{s.next_sender_seq}/{s.next_target_seq}':<12} {s.status_at or '-'}"
            )

    def _add(self, o: dict[str, Any]) -> None:
        target = o["target"] or o["broker"]
        problems = validate_session(
            host=o["host"],
            port=o["port"],
            sender=o["sender"],
            target=target,
            version=o["fix_version"],
            heartbeat=o["heartbeat"],
        )
        broker = Broker.objects.filter(code=o["broker"]).first()
        if broker is None:
            problems["broker"] = f"unknown broker {o['broker']!r}"
        if problems:
            raise CommandError("; ".join(f"{k}: {v}" for k, v in problems.items()))
        with transaction.atomic():
            if FixSession.objects.filter(
                sender_comp_id=o["sender"], target_comp_id=target, fix_version=o["fix_version"]
            ).exists():
                raise CommandError(f"session {o['fix_version']}:{o['sender']}->{target} exists")
            session = FixSession.objects.create(
                broker=broker,
                host=o["host"],
                port=o["port"],
                sender_comp_id=o["sender"],
                target_comp_id=target,
                fix_version=o["fix_version"],
                heartbeat_seconds=o["heartbeat"],
                enabled=not o["disabled"],
            )
            audit_record(
                action="fix_session.added",
                object_type="orders.fixsession",
                object_id=session.pk,
                after=model_snapshot(session),
                meta={"via": "manage.py fix_session"},
            )
        self.stdout.write(f"added {session.session_key} (id {session.pk})")

    def _find(self, ref: str) -> FixSession:
        if ref.isdigit():
            found = FixSession.objects.filter(pk=int(ref)).first()
        else:
            found = next((s for s in FixSession.objects.all() if s.session_key == ref), None)
        if found is None:
            raise CommandError(f"no FIX session {ref!r}")
        return found

    def _toggle(self, ref: str, *, enabled: bool) -> None:
        with transaction.atomic():
            session = self._find(ref)
            session = FixSession.objects.select_for_update().get(pk=session.pk)
            before = session.enabled
            session.enabled = enabled
            session.save(update_fields=["enabled"])
            audit_record(
                action="fix_session.enabled" if enabled else "fix_session.disabled",
                object_type="orders.fixsession",
                object_id=session.pk,
                before={"enabled": before},
                after={"enabled": enabled},
                meta={"via": "manage.py fix_session"},
            )
        state = "enabled" if enabled else "disabled"
        self.stdout.write(f"{session.session_key} {state} (the gateway reads sessions at start)")
