"""Admin of the audit trail (read-only)."""

from django.contrib import admin

from oms_site.admin_audit import ReadOnlyAdmin
from oms_site.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "occurred_at", "actor_name", "action", "object_type", "object_id", "seq")
    list_filter = ("action", "object_type")
    search_fields = ("object_id", "actor_name", "stream")
    date_hierarchy = "occurred_at"
