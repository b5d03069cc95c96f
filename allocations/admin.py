"""Admin of custodians, desks, accounts (audited) and the book."""

from django.contrib import admin

from allocations.models import (
    Account,
    AccountGroup,
    Allocation,
    BlockAllocationPolicy,
    CashBalance,
    CommissionSchedule,
    Custodian,
    Desk,
    Position,
)
from allocations.selectors import accounts_visible_to
from oms_site.admin_audit import AuditedModelAdmin, ReadOnlyAdmin


class _EntitledMixin:
    """Rows of the accounts the user may see (PM: own, trader: desk, oversight: all)."""

    account_path = "account"

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        qs = super().get_queryset(request)  # type: ignore[misc]
        return qs.filter(**{f"{self.account_path}__in": accounts_visible_to(user=request.user)})


@admin.register(Custodian)
class CustodianAdmin(AuditedModelAdmin):
    list_display = ("code", "name", "bic", "settlement_format", "active")
    list_filter = ("settlement_format", "active")
    search_fields = ("code", "name", "bic")


@admin.register(Desk)
class DeskAdmin(AuditedModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")
    filter_horizontal = ("traders",)


@admin.register(AccountGroup)
class AccountGroupAdmin(AuditedModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


@admin.register(Account)
class AccountAdmin(AuditedModelAdmin):
    list_display = (
        "code",
        "name",
        "client",
        "custodian",
        "desk",
        "base_currency",
        "short_selling_allowed",
        "active",
    )
    list_filter = ("custodian", "desk", "base_currency", "short_selling_allowed", "active")
    search_fields = ("code", "name", "client")
    filter_horizontal = ("managers", "groups")
    list_select_related = ("custodian", "desk")


@admin.register(CashBalance)
class CashBalanceAdmin(_EntitledMixin, AuditedModelAdmin):
    list_display = ("account", "currency", "settled", "pending", "updated_at")
    list_filter = ("currency",)
    search_fields = ("account__code",)
    list_select_related = ("account",)


@admin.register(Position)
class PositionAdmin(_EntitledMixin, AuditedModelAdmin):
    list_display = ("account", "instrument", "quantity", "avg_cost", "realised_pnl", "updated_at")
    search_fields = ("account__code", "instrument__symbol")
    list_select_related = ("account", "instrument")
    list_filter = ("instrument__asset_class",)


@admin.register(CommissionSchedule)
class CommissionScheduleAdmin(AuditedModelAdmin):
    list_display = ("broker", "bps", "per_share", "min_per_ticket", "fees_bps")


@admin.register(Allocation)
class AllocationAdmin(_EntitledMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "trade_date",
        "settlement_date",
        "account",
        "instrument",
        "side",
        "kind",
        "quantity",
        "cum_quantity",
        "price",
        "gross",
        "commission",
        "fees",
        "net",
        "broker",
        "method",
        "cash_settled",
    )
    list_filter = ("trade_date", "side", "kind", "method", "cash_settled")
    search_fields = ("account__code", "instrument__symbol", "=block__id", "=order__id")
    list_select_related = ("account", "instrument", "broker")
    date_hierarchy = "trade_date"


@admin.register(BlockAllocationPolicy)
class BlockAllocationPolicyAdmin(ReadOnlyAdmin):
    """Changed only through allocation_reallocate (audited, with its invariants)."""

    list_display = ("block", "method", "filled_at", "set_by", "version", "updated_at")
    list_filter = ("method",)
