"""Websocket authentication: the browser's session cookie, or `?token=<DRF token>`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser


@database_sync_to_async
def _user_for_token(key: str) -> Any:
    from rest_framework.authtoken.models import Token

    try:
        token = Token.objects.select_related("user").get(key=key)
    except Token.DoesNotExist:
        return AnonymousUser()
    return token.user if token.user.is_active else AnonymousUser()


class _TokenMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode())
        headers = dict(scope.get("headers") or [])
        key = None
        auth = headers.get(b"authorization", b"").decode()
        if auth.lower().startswith("token "):
            key = auth[6:].strip()
        elif query.get("token"):
            key = query["token"][0]
        if key:
            scope = dict(scope, user=await _user_for_token(key))
        return await self.inner(scope, receive, send)


def TokenOrSessionAuthMiddleware(inner: Any) -> Any:
    """Session auth first; a token, when given, decides the user."""
    return AuthMiddlewareStack(_TokenMiddleware(inner))
