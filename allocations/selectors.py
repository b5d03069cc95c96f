"""Reads of accounts and the book, always starting from what the user may see."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from allocations.models import Account
from oms_site.roles import role_keys, sees_everything


def account_scope_q(user: Any, prefix: str = "") -> Q:
    """A Q that keeps only rows of accounts the user is entitled to (prefix: path to account)."""
    if sees_everything(user):
        return Q()
    keys = role_keys(user)
    q = Q(pk__in=[])
    if "pm" in keys:
        q |= Q(**{f"{prefix}managers": user})
    if "trader" in keys:
        q |= Q(**{f"{prefix}desk__traders": user})
    return q


def accounts_visible_to(*, user: Any) -> QuerySet[Account]:
    """Accounts the user may see: PMs their own, traders their desks', oversight roles all."""
    qs = Account.objects.all()
    if sees_everything(user):
        return qs
    keys = role_keys(user)
    if not keys & {"pm", "trader"}:
        return qs.none()
    ids = Account.objects.filter(account_scope_q(user)).values("pk")
    return qs.filter(pk__in=ids)


def account_ids_visible_to(*, user: Any) -> set[int]:
    """The ids of the accounts the user may see."""
    return set(accounts_visible_to(user=user).values_list("pk", flat=True))
