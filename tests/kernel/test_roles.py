"""Roles: exact permissions per role × model × action, entitlement scoping, admin access."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group

from allocations.selectors import account_ids_visible_to
from oms_site import roles
from tests import factories as f

pytestmark = pytest.mark.django_db

ACTIONS = ("view", "add", "change", "delete")
PROJECT_APPS = ("orders", "allocations", "compliance", "settlement", "oms_site")

# The expected matrix, written out independently of roles.PERMISSION_TABLE for the key models.
EXPECTED = {
    ("orders", "instrument"): {
        "pm": "v",
        "trader": "v",
        "compliance": "v",
        "backoffice": "v",
        "admin": "vacd",
    },
    ("orders", "order"): {
        "pm": "v",
        "trader": "v",
        "compliance": "v",
        "backoffice": "v",
        "admin": "v",
    },
    ("compliance", "complianceresultset"): {
        "pm": "v",
        "trader": "v",
        "compliance": "v",
        "backoffice": "v",
        "admin": "v",
    },
    ("orders", "fixsession"): {
        "pm": "",
        "trader": "v",
        "compliance": "v",
        "backoffice": "v",
        "admin": "vacd",
    },
    ("allocations", "account"): {
        "pm": "v",
        "trader": "v",
        "compliance": "v",
        "backoffice": "v",
        "admin": "vacd",
    },
    ("allocations", "cashbalance"): {
        "pm": "v",
        "trader": "",
        "compliance": "v",
        "backoffice": "v",
        "admin": "vc",
    },
    ("compliance", "rule"): {
        "pm": "v",
        "trader": "v",
        "compliance": "vacd",
        "backoffice": "v",
        "admin": "v",
    },
    ("compliance", "restrictedentry"): {
        "pm": "",
        "trader": "",
        "compliance": "vacd",
        "backoffice": "v",
        "admin": "v",
    },
    ("settlement", "settlementfile"): {
        "pm": "",
        "trader": "",
        "compliance": "v",
        "backoffice": "v",
        "admin": "v",
    },
    ("settlement", "reconbreak"): {
        "pm": "",
        "trader": "",
        "compliance": "v",
        "backoffice": "vc",
        "admin": "v",
    },
    ("oms_site", "auditevent"): {
        "pm": "",
        "trader": "",
        "compliance": "v",
        "backoffice": "v",
        "admin": "v",
    },
    ("auth", "user"): {"pm": "", "trader": "", "compliance": "", "backoffice": "", "admin": "vacd"},
}
ROLE_BY_KEY = {v: k for k, v in roles.ROLE_KEYS.items()}


@pytest.fixture
def users_by_role(role_groups: None) -> dict[str, Any]:
    return {
        key: f.UserFactory(username=f"u_{key}", role=name) for name, key in roles.ROLE_KEYS.items()
    }


@pytest.mark.parametrize(
    ("model", "role_key"), [(m, r) for m in EXPECTED for r in roles.ROLE_KEYS.values()]
)
def test_role_permission_matrix(
    users_by_role: dict[str, Any], model: tuple[str, str], role_key: str
) -> None:
    user = users_by_role[role_key]
    app_label, model_name = model
    granted = "".join(a[0] for a in ACTIONS if user.has_perm(f"{app_label}.{a}_{model_name}"))
    assert granted == EXPECTED[model][role_key]


def test_every_project_model_is_in_the_table() -> None:
    # A new model without a decision in PERMISSION_TABLE would be invisible to every role.
    missing = [
        (m._meta.app_label, m._meta.model_name)
        for m in apps.get_models()
        if m._meta.app_label in PROJECT_APPS
        and (m._meta.app_label, m._meta.model_name) not in roles.PERMISSION_TABLE
        and m._meta.model_name not in {"auditstream", "override", "basket", "idempotencyrecord"}
    ]
    assert missing == []


def test_roles_sync_is_idempotent(role_groups: None) -> None:
    before = {
        g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()
    }
    roles.roles_sync()
    after = {
        g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()
    }
    assert before == after
    assert sorted(after) == sorted(roles.ALL_ROLES)


def test_entitlements_pm_sees_own_accounts_only(pm, pm_other, account, other_account) -> None:
    assert account_ids_visible_to(user=pm) == {account.pk}
    assert account_ids_visible_to(user=pm_other) == {other_account.pk}


def test_entitlements_trader_sees_desk_accounts(trader, account, other_account) -> None:
    assert account_ids_visible_to(user=trader) == {account.pk}


def test_entitlements_oversight_roles_see_everything(
    compliance_officer, backoffice, administrator, account, other_account
) -> None:
    for user in (compliance_officer, backoffice, administrator):
        assert account_ids_visible_to(user=user) == {account.pk, other_account.pk}


def test_user_without_role_sees_nothing(role_groups, account) -> None:
    nobody = f.UserFactory(username="nobody")
    assert account_ids_visible_to(user=nobody) == set()


@pytest.mark.parametrize(
    ("role_key", "url", "status"),
    [
        ("pm", "/admin/orders/instrument/", 200),
        ("pm", "/admin/compliance/restrictedentry/", 403),
        ("compliance", "/admin/compliance/restrictedentry/add/", 200),
        ("trader", "/admin/compliance/restrictedentry/add/", 403),
        ("backoffice", "/admin/settlement/settlementfile/", 200),
        ("backoffice", "/admin/orders/instrument/add/", 403),
        ("admin", "/admin/orders/instrument/add/", 200),
        ("admin", "/admin/auth/user/", 200),
        ("compliance", "/admin/auth/user/", 403),
    ],
)
def test_admin_pages_follow_role_permissions(
    client, users_by_role, role_key: str, url: str, status: int
) -> None:
    client.force_login(users_by_role[role_key])
    assert client.get(url).status_code == status
