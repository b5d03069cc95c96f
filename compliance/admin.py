"""Admin of compliance rules and restricted lists (audited, versioned)."""

from django.contrib import admin

from compliance.models import BreachReport, ComplianceResult, RestrictedEntry, Rule
from oms_site.admin_audit import AuditedModelAdmin, ReadOnlyAdmin


@admin.register(Rule)
class RuleAdmin(AuditedModelAdmin):
    list_display = (
        "name",
        "rule_type",
        "severity",
        "scope",
        "active",
        "effective_from",
        "effective_to",
        "version",
    )
    list_filter = ("rule_type", "severity", "scope", "active")
    search_fields = ("name",)
    filter_horizontal = ("accounts", "groups")
    readonly_fields = ("version",)


@admin.register(RestrictedEntry)
class RestrictedEntryAdmin(AuditedModelAdmin):
    list_display = (
        "id",
        "instrument",
        "issuer",
        "account",
        "reason",
        "effective_from",
        "effective_to",
        "active",
    )
    list_filter = ("active",)
    search_fields = ("instrument__symbol", "issuer__name", "reason", "source")
    autocomplete_fields = ("instrument", "issuer", "account")
    readonly_fields = ("version",)


@admin.register(ComplianceResult)
class ComplianceResultAdmin(ReadOnlyAdmin):
    list_display = ("order", "rule_name", "rule_version", "outcome", "message")
    list_filter = ("outcome", "rule_type")


@admin.register(BreachReport)
class BreachReportAdmin(ReadOnlyAdmin):
    list_display = ("as_of", "run_at", "breach_count")
