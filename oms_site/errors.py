"""Domain errors and the API's error envelope: {"code", "detail", "errors"}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class DomainError(Exception):
    """Base of every business-rule error raised by services; carries code and HTTP status."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(
        self, detail: str, *, code: str | None = None, errors: dict[str, Any] | list | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.errors = errors if errors is not None else {}

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return {"code": self.code, "detail": self.detail, "errors": self.errors}


class ValidationError(DomainError):
    """Invalid input (400); `errors` maps field → list of messages."""

    default_code = "invalid"


class ConflictError(DomainError):
    """Not allowed in the current state, or a stale version (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class NotPermitted(DomainError):
    """The user may not do this (403)."""

    status_code = status.HTTP_403_FORBIDDEN
    default_code = "permission_denied"


class NotFound(DomainError):
    """The object does not exist or is not visible to the user (404)."""

    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"


def field_error(field: str, message: str, *, code: str = "invalid") -> ValidationError:
    """A validation error naming one field and the rule it broke."""
    return ValidationError(f"{field}: {message}", code=code, errors={field: [message]})


def _flatten_drf(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {k: _flatten_drf(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten_drf(v) for v in detail]
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render domain and DRF errors in the contract's envelope."""
    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        errors = _flatten_drf(exc.detail)
        if isinstance(errors, list):
            errors = {"non_field_errors": errors}
        first = next(iter(errors.items()), None)
        detail = "Invalid input."
        if first is not None:
            msg = first[1][0] if isinstance(first[1], list) and first[1] else first[1]
            detail = f"{first[0]}: {msg}"
        response.data = {"code": "invalid", "detail": detail, "errors": errors}
        return response
    if isinstance(exc, drf_exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = {"code": code, "detail": str(exc.detail), "errors": {}}
        if isinstance(exc, drf_exceptions.Throttled):
            response.data["code"] = "throttled"
    return response
