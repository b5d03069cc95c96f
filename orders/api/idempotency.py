"""The Idempotency-Key header: a retried write replays its first response and creates nothing.

The key is reserved (a row with status 0) before the write runs, so two concurrent requests
with the same key cannot both execute: the second gets 409 while the first is in flight and
the stored response once it has finished. Only successful (2xx) responses are kept; an error
changed nothing, so a retry simply runs again. A reservation left by a crashed request is taken
over after RESERVATION_TIMEOUT.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.response import Response

from oms_site.audit import json_safe
from oms_site.errors import ConflictError, ValidationError
from orders.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 100
RESERVATION_TIMEOUT = dt.timedelta(seconds=60)
IN_FLIGHT = 0

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    name=HEADER,
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description="Any unique string (≤100 chars): a retry with the same key replays the first "
    "successful response and creates nothing.",
)


def request_fingerprint(request: Any) -> str:
    """SHA-256 of the request's parsed body (JSON fields, form fields and file contents)."""
    h = hashlib.sha256()
    data = request.data
    if hasattr(data, "lists"):
        fields = sorted((k, v) for k, v in data.lists() if k not in request.FILES)
        h.update(json.dumps([(k, [str(x) for x in v]) for k, v in fields]).encode())
        for name in sorted(request.FILES):
            for upload in request.FILES.getlist(name):
                h.update(name.encode())
                for chunk in upload.chunks():
                    h.update(chunk)
                upload.seek(0)
    else:
        h.update(json.dumps(json_safe(data), sort_keys=True).encode())
    return h.hexdigest()


def _reserve(
    *, user: Any, key: str, endpoint: str, fingerprint: str
) -> IdempotencyRecord | Response:
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                user=user,
                key=key,
                endpoint=endpoint,
                status_code=IN_FLIGHT,
                body={},
                request_hash=fingerprint,
            )
    except IntegrityError:
        pass  # another request reserved this key first: its record is read just below
    record = IdempotencyRecord.objects.get(user=user, key=key, endpoint=endpoint)
    if record.request_hash != fingerprint:
        raise ConflictError(
            f"{HEADER} was already used for a different request.",
            code="idempotency_key_reused",
            errors={HEADER: ["was already used with a different body"]},
        )
    if record.status_code != IN_FLIGHT:
        response = Response(record.body, status=record.status_code)
        response["Idempotent-Replayed"] = "true"
        return response
    stale = timezone.now() - RESERVATION_TIMEOUT
    taken = IdempotencyRecord.objects.filter(
        pk=record.pk, status_code=IN_FLIGHT, created_at__lt=stale
    ).update(created_at=timezone.now())
    if not taken:
        raise ConflictError(
            f"A request with this {HEADER} is still being processed.",
            code="idempotency_in_progress",
        )
    record.refresh_from_db()
    return record


def idempotent(handler: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate an APIView's post(): honour the Idempotency-Key header."""

    @functools.wraps(handler)
    def wrapper(view: Any, request: Any, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return handler(view, request, *args, **kwargs)
        key = key.strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValidationError(
                f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} characters",
                errors={HEADER: [f"must be 1 to {MAX_KEY_LENGTH} characters"]},
            )
        reserved = _reserve(
            user=request.user,
            key=key,
            endpoint=request.path,
            fingerprint=request_fingerprint(request),
        )
        if isinstance(reserved, Response):
            return reserved
        try:
            response = handler(view, request, *args, **kwargs)
        except Exception as exc:
            try:
                # DRF renders domain errors here; anything it re-raises frees the key first.
                response = view.handle_exception(exc)
            except BaseException:
                reserved.delete()
                raise
        if 200 <= response.status_code < 300:
            reserved.status_code = response.status_code
            reserved.body = json_safe(response.data)
            reserved.save(update_fields=["status_code", "body"])
        else:
            reserved.delete()
        return response

    return wrapper
