"""`manage.py roles_sync`: create the role groups with exactly their permissions."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from oms_site.roles import roles_sync


class Command(BaseCommand):
    help = "Create/refresh the role groups and their permissions (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        for role, count in roles_sync().items():
            self.stdout.write(f"{role}: {count} permissions")
