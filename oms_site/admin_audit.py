"""Admin integration of the audit kernel: every admin add, change and delete is audited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.forms import ModelForm
from django.http import HttpRequest

from oms_site.audit import audit_record, model_snapshot


def _object_type(obj: Any) -> str:
    return f"{obj._meta.app_label}.{obj._meta.model_name}"


class AuditedModelAdmin(admin.ModelAdmin):
    """A ModelAdmin whose saves and deletes write audit events in the same transaction."""

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        with transaction.atomic():
            before = None
            if change and obj.pk is not None:
                old = type(obj)._default_manager.select_for_update().filter(pk=obj.pk).first()
                before = model_snapshot(old) if old is not None else None
            super().save_model(request, obj, form, change)
            audit_record(
                action="admin.change" if change else "admin.add",
                object_type=_object_type(obj),
                object_id=obj.pk,
                before=before,
                after=model_snapshot(obj),
                meta={"changed_fields": list(form.changed_data)},
                actor=request.user,
            )

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        m2m = {
            f.name: sorted(v.pk for v in getattr(obj, f.name).all())
            for f in obj._meta.many_to_many
            if f.name in form.changed_data
        }
        if m2m:
            with transaction.atomic():
                audit_record(
                    action="admin.change_relations",
                    object_type=_object_type(obj),
                    object_id=obj.pk,
                    after=m2m,
                    actor=request.user,
                )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            snapshot = model_snapshot(obj)
            pk = obj.pk
            super().delete_model(request, obj)
            audit_record(
                action="admin.delete",
                object_type=_object_type(obj),
                object_id=pk,
                before=snapshot,
                actor=request.user,
            )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            for obj in list(queryset):
                self.delete_model(request, obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Admin for records that are only ever written by services (orders, fills, audit)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
