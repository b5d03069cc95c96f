"""Admin of reference data (audited edits) and read-only views of orders and FIX traffic."""

from typing import Any

from django.contrib import admin

from oms_site.admin_audit import AuditedModelAdmin, ReadOnlyAdmin
from orders.models import (
    Block,
    Broker,
    Execution,
    FixMessage,
    FixSession,
    Instrument,
    Issuer,
    KillSwitch,
    Order,
    OutboxMessage,
    Placement,
    ReferencePrice,
    RouteRequest,
)


@admin.register(Issuer)
class IssuerAdmin(AuditedModelAdmin):
    list_display = ("code", "name", "country", "sector")
    list_filter = ("country", "sector")
    search_fields = ("code", "name")


class ReferencePriceInline(admin.StackedInline):
    model = ReferencePrice
    extra = 0


@admin.register(Instrument)
class InstrumentAdmin(AuditedModelAdmin):
    list_display = (
        "symbol",
        "isin",
        "name",
        "asset_class",
        "currency",
        "sector",
        "country",
        "lot_size",
        "tick_size",
        "settlement_cycle",
        "tradable",
    )
    list_filter = ("asset_class", "currency", "sector", "country", "tradable")
    search_fields = ("symbol", "isin", "name", "issuer__name")
    list_select_related = ("issuer",)
    autocomplete_fields = ("issuer",)


@admin.register(ReferencePrice)
class ReferencePriceAdmin(AuditedModelAdmin):
    list_display = ("instrument", "bid", "ask", "last", "as_of")
    search_fields = ("instrument__symbol",)
    list_select_related = ("instrument",)


@admin.register(Broker)
class BrokerAdmin(AuditedModelAdmin):
    list_display = ("code", "name", "bic", "rank", "active")
    list_filter = ("active",)
    search_fields = ("code", "name")


@admin.register(FixSession)
class FixSessionAdmin(AuditedModelAdmin):
    """FIX sessions: settings are edited here; the live columns are written by the gateway."""

    list_display = (
        "__str__",
        "broker",
        "host",
        "port",
        "heartbeat_seconds",
        "enabled",
        "logged_on",
        "next_sender_seq",
        "next_target_seq",
        "status_at",
    )
    list_filter = ("enabled", "logged_on", "fix_version", "broker")
    search_fields = ("sender_comp_id", "target_comp_id", "broker__code", "host")
    list_select_related = ("broker",)
    readonly_fields = ("logged_on", "next_sender_seq", "next_target_seq", "status_at")
    fieldsets = (
        (None, {"fields": ("broker", "fix_version", "sender_comp_id", "target_comp_id")}),
        ("Connection", {"fields": ("host", "port", "heartbeat_seconds", "enabled")}),
        (
            "Live state (written by the gateway every few seconds)",
            {"fields": ("logged_on", "next_sender_seq", "next_target_seq", "status_at")},
        ),
    )
    actions = ("enable_sessions", "disable_sessions")

    def _set_enabled(self, request: Any, queryset: Any, enabled: bool) -> None:
        from django.db import transaction

        from oms_site.audit import audit_record

        with transaction.atomic():
            for session in queryset.select_for_update():
                if session.enabled == enabled:
                    continue
                session.enabled = enabled
                session.save(update_fields=["enabled"])
                audit_record(
                    action="admin.change",
                    object_type="orders.fixsession",
                    object_id=session.pk,
                    before={"enabled": not enabled},
                    after={"enabled": enabled},
                    meta={"admin_action": "enable" if enabled else "disable"},
                    actor=request.user,
                )
        self.message_user(request, "Done; the gateway reads sessions when it starts.")

    @admin.action(description="Enable selected sessions", permissions=["change"])
    def enable_sessions(self, request: Any, queryset: Any) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected sessions", permissions=["change"])
    def disable_sessions(self, request: Any, queryset: Any) -> None:
        self._set_enabled(request, queryset, False)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "account",
        "instrument",
        "side",
        "quantity",
        "order_type",
        "limit_price",
        "status",
        "cum_qty",
        "avg_px",
        "compliance_outcome",
        "created_by",
        "created_at",
    )
    list_filter = ("status", "side", "order_type", "compliance_outcome")
    search_fields = ("id", "account__code", "instrument__symbol", "client_order_id")
    list_select_related = ("account", "instrument", "created_by")
    date_hierarchy = "created_at"


@admin.register(Block)
class BlockAdmin(ReadOnlyAdmin):
    list_display = ("id", "instrument", "side", "quantity", "cum_qty", "avg_px", "status")
    list_filter = ("status", "side")


@admin.register(Placement)
class PlacementAdmin(ReadOnlyAdmin):
    list_display = ("id", "cl_ord_id", "broker", "quantity", "cum_qty", "avg_px", "status")
    list_filter = ("status", "broker")
    search_fields = ("cl_ord_id", "broker_order_id")


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "session_key",
        "exec_id",
        "exec_type",
        "last_qty",
        "last_px",
        "unknown_order",
    )
    list_filter = ("exec_type", "unknown_order")
    search_fields = ("exec_id", "cl_ord_id")


@admin.register(FixMessage)
class FixMessageAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "session_key",
        "direction",
        "msg_type",
        "seq_num",
        "poss_dup",
        "received_at",
    )
    list_filter = ("direction", "msg_type", "poss_dup")
    search_fields = ("cl_ord_id", "raw")


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "fix_session", "msg_type", "cl_ord_id", "status", "attempts", "sent_at")
    list_filter = ("status", "msg_type")


@admin.register(RouteRequest)
class RouteRequestAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "order",
        "block",
        "user",
        "broker_code",
        "status",
        "attempts",
        "created_at",
        "finished_at",
    )
    list_filter = ("status",)
    list_select_related = ("order", "block", "user")


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdmin):
    list_display = ("id", "scope", "target", "active", "engaged_by", "engaged_at", "lifted_by")
    list_filter = ("scope", "active")
