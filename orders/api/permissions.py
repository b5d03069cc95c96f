"""Role checks of the orders API (403 when the role is missing; row visibility gives 404)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from oms_site.roles import has_role


def roles_required(*keys: str) -> type[BasePermission]:
    """A permission class admitting users holding any of the given roles."""

    class HasRole(BasePermission):
        message = f"This needs the role {' or '.join(keys)}."

        def has_permission(self, request: Any, view: Any) -> bool:
            return bool(request.user and request.user.is_authenticated) and has_role(
                request.user, *keys
            )

    HasRole.__name__ = f"HasRole_{'_'.join(keys)}"
    return HasRole


IsPM = roles_required("pm")
IsTrader = roles_required("trader")
IsPMOrTrader = roles_required("pm", "trader")
