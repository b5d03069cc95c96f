"""Order-entry throttling: a per-user rate (scope "order_entry"), audited when it bites."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from oms_site.audit import audit_record


class OrderEntryThrottle(ScopedRateThrottle):
    """Per-user rate of order entry, from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["order_entry"].

    The rate is read on every request (not frozen at import), so a settings override applies.
    """

    def get_rate(self) -> str | None:
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES
        return rates.get(str(self.scope))


class OrderEntryThrottleMixin:
    """Views that enter orders: throttle POSTs per user and audit every refusal."""

    throttle_scope = "order_entry"

    def get_throttles(self) -> list[Any]:
        if self.request.method == "POST":  # type: ignore[attr-defined]
            return [OrderEntryThrottle()]
        return []

    def throttled(self, request: Any, wait: Any) -> Any:
        with transaction.atomic():
            audit_record(
                action="order_entry.throttled",
                object_type="user",
                object_id=request.user.pk,
                meta={
                    "endpoint": request.path,
                    "wait_seconds": round(wait, 3) if wait is not None else None,
                },
                actor=request.user,
            )
        super().throttled(request, wait)  # type: ignore[misc]
