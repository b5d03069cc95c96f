"""Roles as Django groups, with the exact model permissions of each.

The permission table below is the single source of truth; `roles_sync()` applies it and the test
suite asserts it role × model × action.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

PM = "Portfolio manager"
TRADER = "Trader"
COMPLIANCE = "Compliance officer"
BACK_OFFICE = "Back office"
ADMINISTRATOR = "Administrator"
ALL_ROLES = (PM, TRADER, COMPLIANCE, BACK_OFFICE, ADMINISTRATOR)

# Short machine names used by the API and templates.
ROLE_KEYS = {
    PM: "pm",
    TRADER: "trader",
    COMPLIANCE: "compliance",
    BACK_OFFICE: "backoffice",
    ADMINISTRATOR: "admin",
}

V, A, C, D = "view", "add", "change", "delete"
ALL = (V, A, C, D)

# (app_label, model) → {role: actions}. Models not listed give no role any permission.
PERMISSION_TABLE: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("orders", "issuer"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("orders", "instrument"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("orders", "referenceprice"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("orders", "broker"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("orders", "fixsession"): {
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("orders", "order"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("orders", "block"): {TRADER: (V,), COMPLIANCE: (V,), BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("orders", "placement"): {
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("orders", "execution"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("orders", "fixmessage"): {
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("orders", "outboxmessage"): {TRADER: (V,), ADMINISTRATOR: (V,)},
    ("orders", "routerequest"): {TRADER: (V,), ADMINISTRATOR: (V,)},
    ("orders", "killswitch"): {TRADER: (V,), COMPLIANCE: (V,), ADMINISTRATOR: (V,)},
    ("allocations", "custodian"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("allocations", "desk"): {
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("allocations", "accountgroup"): {COMPLIANCE: ALL, BACK_OFFICE: (V,), ADMINISTRATOR: ALL},
    ("allocations", "account"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: ALL,
    },
    ("allocations", "cashbalance"): {
        PM: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V, C),
    },
    ("allocations", "position"): {
        PM: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V, C),
    },
    ("allocations", "allocation"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("allocations", "blockallocationpolicy"): {
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("allocations", "commissionschedule"): {
        TRADER: (V,),
        BACK_OFFICE: (V, A, C),
        ADMINISTRATOR: ALL,
    },
    ("compliance", "rule"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: ALL,
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("compliance", "restrictedentry"): {COMPLIANCE: ALL, BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("compliance", "complianceresult"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    # The stored form of the same results (one row of arrays per checked order): the same
    # readers, and nobody writes it but the check.
    ("compliance", "complianceresultset"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("compliance", "override"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("orders", "basket"): {
        PM: (V,),
        TRADER: (V,),
        COMPLIANCE: (V,),
        BACK_OFFICE: (V,),
        ADMINISTRATOR: (V,),
    },
    ("compliance", "breachreport"): {COMPLIANCE: (V,), BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("settlement", "settlementrun"): {COMPLIANCE: (V,), BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("settlement", "settlementfile"): {COMPLIANCE: (V,), BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("settlement", "statement"): {BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("settlement", "reconbreak"): {COMPLIANCE: (V,), BACK_OFFICE: (V, C), ADMINISTRATOR: (V,)},
    ("oms_site", "auditevent"): {COMPLIANCE: (V,), BACK_OFFICE: (V,), ADMINISTRATOR: (V,)},
    ("auth", "user"): {ADMINISTRATOR: ALL},
    ("auth", "group"): {ADMINISTRATOR: (V,)},
}


def roles_sync() -> dict[str, int]:
    """Create the role groups and set exactly the permissions of PERMISSION_TABLE; idempotent."""
    wanted: dict[str, set[tuple[str, str]]] = {role: set() for role in ALL_ROLES}
    for (app_label, model), grants in PERMISSION_TABLE.items():
        for role, actions in grants.items():
            for action in actions:
                wanted[role].add((app_label, f"{action}_{model}"))
    counts: dict[str, int] = {}
    with transaction.atomic():
        ContentType.objects.clear_cache()
        perms = {
            (p.content_type.app_label, p.codename): p
            for p in Permission.objects.select_related("content_type")
        }
        for role in ALL_ROLES:
            group, _ = Group.objects.get_or_create(name=role)
            missing = sorted(k for k in wanted[role] if k not in perms)
            if missing:
                raise RuntimeError(f"unknown permissions for {role}: {missing}")
            group.permissions.set([perms[k] for k in sorted(wanted[role])])
            counts[role] = len(wanted[role])
    return counts


def role_keys(user: Any) -> set[str]:
    """The short role names of a user ("pm", "trader", ...); a superuser is "admin"."""
    if user is None or not getattr(user, "is_authenticated", False):
        return set()
    cached = getattr(user, "_oms_role_keys", None)
    if cached is not None:
        return cached
    return remember_roles(user, user.groups.values_list("name", flat=True))


def remember_roles(user: Any, group_names: Any) -> set[str]:
    """Cache on the user object the roles of these group names (read with the user, by auth)."""
    keys = {ROLE_KEYS[g] for g in group_names if g in ROLE_KEYS}
    if user.is_superuser:
        keys.add("admin")
    user._oms_role_keys = keys
    return keys


def has_role(user: Any, *keys: str) -> bool:
    """Whether the user holds any of the given roles."""
    return bool(role_keys(user) & set(keys))


def sees_everything(user: Any) -> bool:
    """Compliance, back office and administrators see every account's data."""
    return has_role(user, "compliance", "backoffice", "admin")
