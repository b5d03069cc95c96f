"""Reads of orders, always starting from what the user may see."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db.models import QuerySet

from allocations.models import Account
from allocations.selectors import account_scope_q
from oms_site.roles import role_keys, sees_everything
from orders.enums import KillScope
from orders.models import KillSwitch, Order


def orders_visible_to(*, user: Any) -> QuerySet[Order]:
    """Orders of the accounts the user may see (PM: managed; trader: desk; oversight: all)."""
    qs = Order.objects.all()
    if sees_everything(user):
        return qs
    if not role_keys(user) & {"pm", "trader"}:
        return qs.none()
    # The accounts as a subquery, not joined: a join through managers or desk traders can
    # repeat an order, and the DISTINCT that removed the repeats made PostgreSQL sort the
    # user's whole book for a page of 50 (73 ms on a book of 18,000 orders).
    return qs.filter(account__in=Account.objects.filter(account_scope_q(user)).values("pk"))


def active_kill_switches() -> list[tuple[str, str]]:
    """(scope, target) of every engaged kill switch, oldest first."""
    return list(
        KillSwitch.objects.filter(active=True).order_by("pk").values_list("scope", "target")
    )


def kill_switch_covering(
    accounts: Iterable[Any], switches: Sequence[tuple[str, str]]
) -> tuple[str, str] | None:
    """The oldest of these switches covering any of the accounts (firm, their desk or them)."""
    if not switches:
        return None
    accounts = list(accounts)
    codes = {a.code for a in accounts}
    desks = {a.desk.code for a in accounts}
    for scope, target in switches:
        if (
            scope == KillScope.FIRM
            or (scope == KillScope.DESK and target in desks)
            or (scope == KillScope.ACCOUNT and target in codes)
        ):
            return scope, target
    return None
