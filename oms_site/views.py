"""Kernel views: home, throttled login/logout, token endpoint, health check."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from oms_site.audit import audit_record
from oms_site.login_throttle import login_allowed, login_failed, login_succeeded
from oms_site.roles import role_keys


def client_ip(request: HttpRequest) -> str:
    """The caller's address (REMOTE_ADDR; a proxy must be configured to set it)."""
    return request.META.get("REMOTE_ADDR", "") or "unknown"


class ThrottledAuthenticationForm(AuthenticationForm):
    """The login form, refusing attempts once a username or address has failed too often."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": "Too many failed login attempts. Try again in a few minutes.",
    }

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request else ""
        if not login_allowed(username=username, ip=ip):
            raise self.get_throttled_error()
        try:
            cleaned = super().clean()
        except Exception:
            login_failed(username=username, ip=ip)
            raise
        login_succeeded(username=username)
        return cleaned

    def get_throttled_error(self) -> Exception:
        from django.core.exceptions import ValidationError

        return ValidationError(self.error_messages["throttled"], code="throttled")


class ThrottledLoginView(LoginView):
    """The login page (also the admin's), with failure throttling."""

    template_name = "registration/login.html"
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    """Log out (POST only, CSRF-protected) and return to the login page."""
    logout(request)
    return redirect("login")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Landing page: sends each role to its main screen."""
    keys = role_keys(request.user)
    if "trader" in keys:
        return redirect("blotter")
    if "pm" in keys:
        return redirect("pm-orders")
    if "compliance" in keys:
        return redirect("compliance-queue")
    if "backoffice" in keys:
        return redirect("backoffice")
    return render(request, "home.html", {})


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class ObtainTokenView(APIView):
    """POST {"username", "password"} → {"token"}; throttled like the login page."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_scope = "auth_token"

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: inline_serializer("TokenResponse", {"token": serializers.CharField()})},
    )
    def post(self, request: Request) -> Response:
        ser = TokenRequestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        username = ser.validated_data["username"]
        ip = client_ip(request._request)
        if not login_allowed(username=username, ip=ip):
            return Response(
                {"code": "throttled", "detail": "Too many failed login attempts.", "errors": {}},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
            )
        user = authenticate(
            request._request, username=username, password=ser.validated_data["password"]
        )
        if user is None or not user.is_active:
            login_failed(username=username, ip=ip)
            return Response(
                {
                    "code": "authentication_failed",
                    "detail": "Wrong username or password.",
                    "errors": {},
                },
                status=status.HTTP_401_UNAUTHORIZED,
            )
        login_succeeded(username=username)
        token, created = Token.objects.get_or_create(user=user)
        if created:
            from django.db import transaction

            with transaction.atomic():
                audit_record(
                    action="auth.token_created",
                    object_type="auth.user",
                    object_id=user.pk,
                    actor=user,
                )
        return Response({"token": token.key})
