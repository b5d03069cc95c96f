"""Compliance API: one view per operation; business logic lives in compliance.services."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations.models import Account, AccountGroup
from allocations.selectors import account_ids_visible_to
from compliance import services
from compliance.api import serializers as s
from compliance.models import BreachReport, Rule
from compliance.selectors import (
    breach_reports_visible_to,
    fold_outcome,
    latest_results,
    override_queue,
    result_dict,
)
from oms_site.api import Pagination
from oms_site.errors import NotPermitted, field_error
from oms_site.roles import has_role, sees_everything


def _require(request: Request, *roles: str) -> None:
    if not has_role(request.user, *roles):
        raise NotPermitted("Your role does not allow this.", code="permission_denied")


class OrderOverrideView(APIView):
    """POST orders/{id}/override/ {"reason"}: release a warned order (compliance officers)."""

    @extend_schema(request=s.OverrideInputSerializer, responses={200: s.OverriddenOrderSerializer})
    def post(self, request: Request, pk: int) -> Response:
        ser = s.OverrideInputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        order = services.order_override(
            user=request.user, order_id=pk, reason=ser.validated_data["reason"]
        )
        override = order.override
        body = {
            "id": order.pk,
            "status": order.status,
            "version": order.version,
            "override": {
                "officer": request.user.get_username(),
                "reason": override.reason,
                "created_at": override.created_at,
            },
        }
        return Response(s.OverriddenOrderSerializer(body).data)


def queue_row(order: Any) -> dict[str, Any]:
    """An order awaiting override with its compliance results (results prefetched)."""
    results = [result_dict(r) for r in latest_results(getattr(order, "results", []))]
    return {
        "id": order.pk,
        "account": order.account.code,
        "instrument": order.instrument.symbol,
        "side": order.side,
        "quantity": order.quantity,
        "order_type": order.order_type,
        "limit_price": order.limit_price,
        "status": order.status,
        "version": order.version,
        "created_by": order.created_by.get_username(),
        "created_at": order.created_at,
        "compliance": {"outcome": fold_outcome(results), "results": results},
    }


class QueueView(APIView):
    """GET compliance/queue/: orders awaiting override, oldest first, with their results."""

    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(responses={200: s.QueueOrderSerializer(many=True)})
    def get(self, request: Request) -> Response:
        _require(request, "compliance")
        paginator = Pagination()
        page = paginator.paginate_queryset(override_queue(user=request.user), request, view=self)
        rows = [queue_row(o) for o in page or []]
        return paginator.get_paginated_response(s.QueueOrderSerializer(rows, many=True).data)


def report_dict(report: BreachReport) -> dict[str, Any]:
    """The API form of a breach report."""
    return {
        "id": report.pk,
        "as_of": report.as_of,
        "run_at": report.run_at,
        "run_by": report.run_by.get_username() if report.run_by_id else None,
        "breach_count": report.breach_count,
        "breaches": report.breaches,
    }


class ReportListView(APIView):
    """GET compliance/reports/ (list); POST {"as_of"} runs a post-trade sweep now."""

    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(responses={200: s.ReportSerializer(many=True)})
    def get(self, request: Request) -> Response:
        _require(request, "compliance", "backoffice", "admin")
        qs = breach_reports_visible_to(user=request.user)
        as_of = request.query_params.get("as_of")
        if as_of:
            try:
                qs = qs.filter(as_of=date.fromisoformat(as_of))
            except ValueError:
                raise field_error("as_of", "must be a date (YYYY-MM-DD)") from None
        paginator = Pagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        rows = [report_dict(r) for r in page or []]
        return paginator.get_paginated_response(s.ReportSerializer(rows, many=True).data)

    @extend_schema(request=s.ReportRunInputSerializer, responses={201: s.ReportSerializer})
    def post(self, request: Request) -> Response:
        _require(request, "compliance", "admin")
        ser = s.ReportRunInputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        report = services.compliance_post_trade_sweep(
            as_of=ser.validated_data.get("as_of"), user=request.user
        )
        return Response(
            s.ReportSerializer(report_dict(report)).data, status=status.HTTP_201_CREATED
        )


class ReportDetailView(APIView):
    """GET compliance/reports/{id}/."""

    @extend_schema(responses={200: s.ReportSerializer})
    def get(self, request: Request, pk: int) -> Response:
        _require(request, "compliance", "backoffice", "admin")
        report = get_object_or_404(breach_reports_visible_to(user=request.user), pk=pk)
        return Response(s.ReportSerializer(report_dict(report)).data)


class ReportDownloadView(APIView):
    """GET compliance/reports/{id}/download/: the breaches as CSV."""

    @extend_schema(responses={(200, "text/csv"): OpenApiResponse(description="CSV file")})
    def get(self, request: Request, pk: int) -> HttpResponse:
        _require(request, "compliance", "backoffice", "admin")
        report = get_object_or_404(breach_reports_visible_to(user=request.user), pk=pk)
        response = HttpResponse(
            services.breach_report_csv(report=report), content_type="text/csv; charset=utf-8"
        )
        name = f"compliance-breaches-{report.as_of.isoformat()}-{report.pk}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


def _visible_account_ids(user: Any) -> set[int] | None:
    """The accounts a reader may see named in rule scopes (None: all, for oversight roles)."""
    return None if sees_everything(user) else account_ids_visible_to(user=user)


def rule_dict(rule: Rule, visible: set[int] | None = None) -> dict[str, Any]:
    """The API form of a rule (scope accounts/groups by code; accounts limited to `visible`)."""
    return {
        "id": rule.pk,
        "name": rule.name,
        "rule_type": rule.rule_type,
        "severity": rule.severity,
        "scope": rule.scope,
        "params": rule.params,
        "active": rule.active,
        "effective_from": rule.effective_from,
        "effective_to": rule.effective_to,
        "accounts": [a.code for a in rule.accounts.all() if visible is None or a.pk in visible],
        "groups": [g.code for g in rule.groups.all()],
        "version": rule.version,
    }


def _rule_data(validated: dict[str, Any]) -> dict[str, Any]:
    data = dict(validated)
    for name, model in (("accounts", Account), ("groups", AccountGroup)):
        if name in data:
            codes = list(dict.fromkeys(data[name]))
            found = dict(model.objects.filter(code__in=codes).values_list("code", "pk"))
            unknown = [c for c in codes if c not in found]
            if unknown:
                raise field_error(name, f"unknown code(s): {', '.join(unknown)}")
            data[name] = [found[c] for c in codes]
    return data


class RuleListView(APIView):
    """GET compliance/rules/; POST creates a rule (compliance officers)."""

    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(responses={200: s.RuleSerializer(many=True)})
    def get(self, request: Request) -> Response:
        _require(request, "compliance", "pm", "trader", "backoffice", "admin")
        qs = Rule.objects.prefetch_related("accounts", "groups").order_by("name")
        paginator = Pagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        visible = _visible_account_ids(request.user)
        rows = [rule_dict(r, visible) for r in page or []]
        return paginator.get_paginated_response(s.RuleSerializer(rows, many=True).data)

    @extend_schema(request=s.RuleInputSerializer, responses={201: s.RuleSerializer})
    def post(self, request: Request) -> Response:
        ser = s.RuleInputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        for required in ("name", "rule_type"):
            if required not in ser.validated_data:
                raise field_error(required, "this field is required")
        rule = services.rule_save(user=request.user, data=_rule_data(ser.validated_data))
        return Response(s.RuleSerializer(rule_dict(rule)).data, status=status.HTTP_201_CREATED)


class RuleDetailView(APIView):
    """GET compliance/rules/{id}/; PATCH changes it (version bumped, audited)."""

    @extend_schema(responses={200: s.RuleSerializer})
    def get(self, request: Request, pk: int) -> Response:
        _require(request, "compliance", "pm", "trader", "backoffice", "admin")
        rule = get_object_or_404(Rule.objects.prefetch_related("accounts", "groups"), pk=pk)
        return Response(s.RuleSerializer(rule_dict(rule, _visible_account_ids(request.user))).data)

    @extend_schema(request=s.RuleInputSerializer, responses={200: s.RuleSerializer})
    def patch(self, request: Request, pk: int) -> Response:
        ser = s.RuleInputSerializer(data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        rule = services.rule_save(
            user=request.user, data=_rule_data(ser.validated_data), rule_id=pk
        )
        return Response(s.RuleSerializer(rule_dict(rule)).data)
