"""Token authentication: DRF's answers, with the user's roles read in the same statement."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient, APIRequestFactory

from oms_site import roles
from oms_site.auth import TokenAuthentication
from orders.models import Order
from tests import factories as f
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db


def _client(key: str) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return c


def test_a_valid_token_gives_the_user_and_its_roles_in_one_query(
    django_assert_num_queries: Any,
) -> None:
    user = f.UserFactory(username="pm_token", role=roles.PM)
    user.groups.add(Group.objects.get(name=roles.TRADER))
    token = Token.objects.create(user=user)
    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {token.key}")
    with django_assert_num_queries(1):
        found, auth = TokenAuthentication().authenticate(request)
        keys = roles.role_keys(found)
    assert (found.pk, found.username, found.is_active, found.is_superuser) == (
        user.pk,
        "pm_token",
        True,
        False,
    )
    assert found.password == user.password
    assert (auth.key, auth.user_id, auth.created) == (token.key, user.pk, token.created)
    assert auth.user is found
    assert keys == {"pm", "trader"}


def test_a_superuser_without_groups_is_admin() -> None:
    user = f.UserFactory(username="root_token", is_superuser=True)
    token = Token.objects.create(user=user)
    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {token.key}")
    found, _ = TokenAuthentication().authenticate(request)
    assert roles.role_keys(found) == {"admin"}


def test_an_unknown_token_is_refused_as_drf_refuses_it() -> None:
    response = _client("0" * 40).get("/api/v1/orders/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."
    assert response["WWW-Authenticate"] == "Token"


def test_an_inactive_users_token_is_refused() -> None:
    user = f.UserFactory(username="gone_token", role=roles.PM, is_active=False)
    token = Token.objects.create(user=user)
    response = _client(token.key).get("/api/v1/orders/")
    assert response.status_code == 401
    assert response.json()["detail"] == "User inactive or deleted."


def test_a_token_user_enters_an_order_as_a_pm(book: Any, pm: Any) -> None:
    token = Token.objects.create(user=pm)
    response = _client(token.key).post("/api/v1/orders/", order_data(), format="json")
    assert response.status_code == 201
    assert response.json()["created_by"] == pm.username


def test_a_token_user_without_the_pm_role_may_not_enter_orders(book: Any, trader: Any) -> None:
    token = Token.objects.create(user=trader)
    response = _client(token.key).post("/api/v1/orders/", order_data(), format="json")
    assert response.status_code == 403
    assert Order.objects.count() == 0
