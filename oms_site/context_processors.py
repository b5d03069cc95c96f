"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from oms_site.roles import role_keys


def roles(request: HttpRequest) -> dict[str, Any]:
    """Expose the user's role keys for role-aware navigation."""
    return {"user_roles": role_keys(getattr(request, "user", None))}
