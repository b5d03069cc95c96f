"""Admin of compliance rules and restricted lists (audited, versioned, validated)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse

from compliance.models import BreachReport, ComplianceResult, Override, RestrictedEntry, Rule
from compliance.services import restricted_import_csv, rule_validate
from oms_site.admin_audit import AuditedModelAdmin, ReadOnlyAdmin
from oms_site.errors import DomainError


class VersionedAdmin(AuditedModelAdmin):
    """Bumps `version` on every effective change, under the row lock, before the audit event."""

    def save_model(
        self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            obj.version = 1
            super().save_model(request, obj, form, change)
            return
        if not form.has_changed():
            return
        with transaction.atomic():
            current = (
                type(obj)
                ._default_manager.select_for_update()
                .values_list("version", flat=True)
                .get(pk=obj.pk)
            )
            obj.version = current + 1
            super().save_model(request, obj, form, change)


class RuleAdminForm(forms.ModelForm):
    class Meta:
        model = Rule
        fields = (
            "name",
            "rule_type",
            "severity",
            "scope",
            "accounts",
            "groups",
            "params",
            "active",
            "effective_from",
            "effective_to",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # params has a callable default, so Django would compare it with a hidden "initial-"
        # input; compare with the stored rule instead, so an unchanged save is no new version.
        self.fields["params"].show_hidden_initial = False

    def _post_clean(self) -> None:
        # After construct_instance, so the engine validates the rule as it would be saved.
        super()._post_clean()
        if self.errors:
            return
        accounts = self.cleaned_data.get("accounts")
        groups = self.cleaned_data.get("groups")
        try:
            rule_validate(
                rule=self.instance,
                account_ids=[a.pk for a in accounts] if accounts is not None else [],
                group_ids=[g.pk for g in groups] if groups is not None else [],
            )
        except DomainError as exc:
            errors = exc.errors if isinstance(exc.errors, dict) and exc.errors else {}
            for field, msgs in (errors or {"params": [exc.detail]}).items():
                target = field if field in self.fields else None
                for msg in msgs:
                    self.add_error(target, msg)


@admin.register(Rule)
class RuleAdmin(VersionedAdmin):
    form = RuleAdminForm
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


class RestrictedImportForm(forms.Form):
    file = forms.FileField(
        help_text="CSV with header instrument,issuer,account,reason,source,effective_from,"
        "effective_to (instrument symbol OR issuer code; account code empty = firm-wide; "
        "dates YYYY-MM-DD)"
    )
    source = forms.CharField(max_length=120, required=False, help_text="default source of rows")


@admin.register(RestrictedEntry)
class RestrictedEntryAdmin(VersionedAdmin):
    change_list_template = "compliance/admin_restricted_changelist.html"
    list_display = (
        "id",
        "instrument",
        "issuer",
        "account",
        "reason",
        "source",
        "effective_from",
        "effective_to",
        "active",
        "version",
    )
    list_filter = ("active",)
    search_fields = ("instrument__symbol", "issuer__name", "issuer__code", "reason", "source")
    autocomplete_fields = ("instrument", "issuer", "account")
    readonly_fields = ("version",)

    def get_urls(self) -> list:
        custom = [
            path(
                "import-csv/",
                self.admin_site.admin_view(self.import_csv_view),
                name="compliance_restrictedentry_import_csv",
            )
        ]
        return custom + super().get_urls()

    def import_csv_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a restricted-list CSV: every row validated, all or nothing, audited."""
        if not self.has_add_permission(request):
            return render(request, "403.html", status=403)
        errors: list[dict[str, Any]] = []
        if request.method == "POST":
            form = RestrictedImportForm(request.POST, request.FILES)
            if form.is_valid():
                upload = form.cleaned_data["file"]
                source = form.cleaned_data["source"] or upload.name
                try:
                    created = restricted_import_csv(
                        user=request.user, content=upload.read(), source=source
                    )
                except DomainError as exc:
                    form.add_error(None, exc.detail)
                    errors = exc.errors if isinstance(exc.errors, list) else []
                else:
                    messages.success(request, f"Imported {len(created)} restricted entries.")
                    return HttpResponseRedirect(
                        reverse("admin:compliance_restrictedentry_changelist")
                    )
        else:
            form = RestrictedImportForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import restricted list (CSV)",
            "form": form,
            "row_errors": errors,
        }
        return render(request, "compliance/admin_import_csv.html", context)


@admin.register(ComplianceResult)
class ComplianceResultAdmin(ReadOnlyAdmin):
    list_display = ("order", "rule_name", "rule_version", "outcome", "message")
    list_filter = ("outcome", "rule_type")


@admin.register(Override)
class OverrideAdmin(ReadOnlyAdmin):
    list_display = ("order", "officer", "created_at", "reason")


@admin.register(BreachReport)
class BreachReportAdmin(ReadOnlyAdmin):
    list_display = ("as_of", "run_at", "breach_count")
