"""Reads of orders, always starting from what the user may see."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from allocations.selectors import account_scope_q
from oms_site.roles import role_keys, sees_everything
from orders.models import Order


def orders_visible_to(*, user: Any) -> QuerySet[Order]:
    """Orders of the accounts the user may see (PM: managed; trader: desk; oversight: all)."""
    qs = Order.objects.all()
    if sees_everything(user):
        return qs
    if not role_keys(user) & {"pm", "trader"}:
        return qs.none()
    return qs.filter(account_scope_q(user, prefix="account__")).distinct()
