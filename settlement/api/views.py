"""Settlement, reconciliation and report endpoints: one view per operation, logic in services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from oms_site.api import Pagination
from oms_site.errors import NotFound, ValidationError
from oms_site.roles import has_role
from orders.api.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from settlement import reports, selectors, services
from settlement.api import serializers as s
from settlement.tasks import firm_today


class _RolePermission(BasePermission):
    roles: tuple[str, ...] = ()
    message = "Your role may not use this endpoint."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and has_role(request.user, *self.roles))


class IsBackOffice(_RolePermission):
    """Back office and administrators."""

    roles = selectors.BACK_OFFICE


class CanReadFiles(_RolePermission):
    """Back office, administrators and compliance (read only)."""

    roles = selectors.FILE_READERS


class CanReadReports(_RolePermission):
    """Back office, administrators and compliance."""

    roles = reports.REPORT_READERS


def _filtered(filterset_class: Any, request: Request, queryset: Any) -> Any:
    filterset = filterset_class(request.query_params, queryset=queryset)
    if not filterset.is_valid():
        errors = {k: [str(m) for m in v] for k, v in filterset.errors.items()}
        first = next(iter(errors.items()))
        raise ValidationError(f"{first[0]}: {first[1][0]}", errors=errors)
    return filterset.qs


def _paginated(request: Request, view: APIView, queryset: Any, serializer: Any) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


# --------------------------------------------------------------------------------- settlement


class SettlementRunsView(APIView):
    """POST: generate the trade date's files now; GET: past runs (newest first)."""

    permission_classes = [IsAuthenticated, IsBackOffice]
    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(
        request=s.RunInput, responses={201: s.RunOutput}, parameters=[IDEMPOTENCY_PARAMETER]
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = s.RunInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.settlement_run(
            trade_date=data.validated_data["trade_date"], user=request.user
        )
        return Response(s.RunOutput(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: s.RunOutput(many=True)})
    def get(self, request: Request) -> Response:
        qs = selectors.settlement_runs_visible_to(user=request.user)
        return _paginated(request, self, qs, s.RunOutput)


class SettlementFileListView(APIView):
    """Settlement files, filtered by ?trade_date=&custodian=&latest=true, newest first."""

    permission_classes = [IsAuthenticated, CanReadFiles]
    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(
        parameters=[
            OpenApiParameter("trade_date", OpenApiTypes.DATE),
            OpenApiParameter("custodian", OpenApiTypes.STR),
            OpenApiParameter("latest", OpenApiTypes.BOOL),
        ],
        responses={200: s.FileOutput(many=True)},
    )
    def get(self, request: Request) -> Response:
        qs = _filtered(
            selectors.SettlementFileFilter,
            request,
            selectors.settlement_files_visible_to(user=request.user),
        )
        return _paginated(request, self, qs, s.FileOutput)


class SettlementFileDetailView(APIView):
    """One settlement file's record, with what changed against its previous version."""

    permission_classes = [IsAuthenticated, CanReadFiles]

    @extend_schema(responses={200: s.FileOutput})
    def get(self, request: Request, pk: int) -> Response:
        record = selectors.settlement_files_visible_to(user=request.user).filter(pk=pk).first()
        if record is None:
            raise NotFound(f"Settlement file {pk} does not exist.")
        return Response(s.FileOutput(record).data)


class _AnyBytesRenderer(BaseRenderer):
    # Lets a client that asks for the file's own type (Accept: text/csv) past negotiation.
    media_type = "*/*"
    format = "bytes"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return data


class SettlementFileDownloadView(APIView):
    """The file's bytes with its content type, served only if its checksum still matches."""

    permission_classes = [IsAuthenticated, CanReadFiles]
    renderer_classes = [JSONRenderer, _AnyBytesRenderer]

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
        }
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        opened = services.settlement_file_open(user=request.user, file_id=pk)
        response = FileResponse(
            opened.handle,
            as_attachment=True,
            filename=opened.filename,
            content_type=opened.media_type,
        )
        response["X-Checksum-SHA256"] = opened.record.sha256
        return response

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return response


# ----------------------------------------------------------------------------- reconciliation


class StatementsView(APIView):
    """POST (multipart: file, source[, price_tolerance]): match a statement; GET: statements."""

    permission_classes = [IsAuthenticated, IsBackOffice]
    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(
        request={"multipart/form-data": s.StatementInput},
        responses={201: s.StatementOutput},
        parameters=[IDEMPOTENCY_PARAMETER],
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = s.StatementInput(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        statement = services.statement_upload(
            user=request.user,
            filename=upload.name,
            content=upload.read(),
            source=data.validated_data["source"],
            price_tolerance=data.validated_data.get("price_tolerance"),
        )
        return Response(s.StatementOutput(statement).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: s.StatementOutput(many=True)})
    def get(self, request: Request) -> Response:
        qs = selectors.statements_visible_to(user=request.user)
        return _paginated(request, self, qs, s.StatementOutput)


class BreakListView(APIView):
    """Breaks, filtered by ?status=open|resolved&kind=&statement=&trade_date=."""

    permission_classes = [IsAuthenticated, IsBackOffice]
    pagination_class = Pagination  # GET answers a page; the schema says so from this

    @extend_schema(
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=["open", "resolved"]),
            OpenApiParameter("kind", OpenApiTypes.STR),
            OpenApiParameter("statement", OpenApiTypes.INT),
            OpenApiParameter("trade_date", OpenApiTypes.DATE),
        ],
        responses={200: s.BreakOutput(many=True)},
    )
    def get(self, request: Request) -> Response:
        qs = _filtered(
            selectors.ReconBreakFilter, request, selectors.breaks_visible_to(user=request.user)
        )
        return _paginated(request, self, qs, s.BreakOutput)


class BreakResolveView(APIView):
    """Resolve an open break with a comment (required); a resolved break answers 409."""

    permission_classes = [IsAuthenticated, IsBackOffice]

    @extend_schema(
        request=s.ResolveInput, responses={200: s.BreakOutput}, parameters=[IDEMPOTENCY_PARAMETER]
    )
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        data = s.ResolveInput(data=request.data)
        data.is_valid(raise_exception=True)
        brk = services.break_resolve(
            user=request.user, break_id=pk, comment=data.validated_data["comment"]
        )
        return Response(s.BreakOutput(brk).data)


# ------------------------------------------------------------------------------------ reports


class _CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return data


class _XLSXRenderer(BaseRenderer):
    media_type = reports.XLSX_MEDIA_TYPE
    format = "xlsx"
    charset = None
    render_style = "binary"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return data


class ReportListView(APIView):
    """The available reports."""

    permission_classes = [IsAuthenticated, CanReadReports]

    @extend_schema(operation_id="reports_list", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response(
            {
                "reports": [
                    {"name": n, "url": f"/api/v1/reports/{n}/"} for n in reports.report_names()
                ]
            }
        )


class ReportView(APIView):
    """A report for ?date= (default today on the firm's clock) as JSON, CSV or XLSX (?format=)."""

    permission_classes = [IsAuthenticated, CanReadReports]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, _CSVRenderer, _XLSXRenderer]

    @extend_schema(
        operation_id="reports_retrieve",
        parameters=[
            OpenApiParameter("date", OpenApiTypes.DATE),
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv", "xlsx"]),
        ],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, reports.XLSX_MEDIA_TYPE): OpenApiTypes.BINARY,
        },
    )
    def get(self, request: Request, name: str) -> Response:
        raw = request.query_params.get("date")
        try:
            day = dt.date.fromisoformat(raw) if raw else firm_today()
        except ValueError:
            raise ValidationError(
                "date: must be YYYY-MM-DD", errors={"date": ["must be YYYY-MM-DD"]}
            ) from None
        report = reports.report_build(user=request.user, name=name, day=day)
        fmt = request.accepted_renderer.format
        filename = f"{report.name}_{report.day.isoformat()}"
        if fmt == "csv":
            return Response(
                reports.report_csv(report),
                headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
            )
        if fmt == "xlsx":
            return Response(
                reports.report_xlsx(report),
                headers={"Content-Disposition": f'attachment; filename="{filename}.xlsx"'},
            )
        return Response(
            {
                "report": report.name,
                "title": report.title,
                "date": report.day.isoformat(),
                "columns": list(report.columns),
                "rows": reports.json_rows(report),
            }
        )

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return response
