"""Admin of settlement files and reconciliation (read-only; the back office works in pages)."""

from django.contrib import admin

from oms_site.admin_audit import ReadOnlyAdmin
from settlement.models import ReconBreak, SettlementFile, SettlementRun, Statement


@admin.register(SettlementRun)
class SettlementRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "trade_date", "status", "started_at", "finished_at")


@admin.register(SettlementFile)
class SettlementFileAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "trade_date",
        "custodian",
        "version",
        "file_format",
        "line_count",
        "sha256",
    )
    list_filter = ("trade_date", "custodian")


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "filename", "uploaded_at", "line_count", "break_count")


@admin.register(ReconBreak)
class ReconBreakAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "status", "account_code", "instrument", "trade_date")
    list_filter = ("kind", "status")
