"""Views of the orders API: thin, one per operation; services do the work and the checks."""

from __future__ import annotations

import csv
import io
from typing import Any, cast

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.selectors import compliance_results_attach
from oms_site.errors import NotFound, ValidationError
from oms_site.gcpause import collection_paused
from oms_site.models import AuditEvent
from oms_site.parsers import FormParser, JSONParser, MultiPartParser
from orders.api.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from orders.api.permissions import IsPM, IsPMOrTrader, IsTrader
from orders.api.serializers import (
    BasketErrorSerializer,
    BasketJsonInputSerializer,
    BasketOrderSerializer,
    BasketResultSerializer,
    BasketUploadInputSerializer,
    BlockCreateInputSerializer,
    BlockSerializer,
    CompiledRepresentation,
    ErrorSerializer,
    InstrumentSerializer,
    OrderAmendInputSerializer,
    OrderCancelInputSerializer,
    OrderDetailSerializer,
    OrderInputSerializer,
    OrderSerializer,
)
from orders.api.throttles import OrderEntryThrottleMixin
from orders.filters import InstrumentFilter, OrderFilter
from orders.models import Block, Instrument, Order
from orders.selectors import orders_visible_to
from orders.services.orders import (
    block_create,
    block_dissolve,
    blocks_visible_to,
    order_amend,
    order_cancel,
    order_create,
    orders_create_bulk,
)

CSV_REQUIRED = (
    "account",
    "instrument",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
)
CSV_OPTIONAL = ("expire_date", "client_order_id")

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid input; nothing changed"),
    403: OpenApiResponse(ErrorSerializer, description="the role may not do this"),
    404: OpenApiResponse(ErrorSerializer, description="no such row, or not visible to you"),
    409: OpenApiResponse(ErrorSerializer, description="not allowed in the current state"),
}


# The answer to a new order, rendered as OrderSerializer renders it from a plan built once
# (building a serializer per request deep-copies its declared fields; rendering through DRF's
# generic lookups cost as much as the order's SQL). The plan keeps no request state, so
# threads share it.
_ORDER_OUTPUT = CompiledRepresentation(OrderSerializer())
# A basket's orders, rendered as BasketResultSerializer renders its "orders" list.
_BASKET_ORDER_OUTPUT = CompiledRepresentation(BasketOrderSerializer())


def _order_queryset(qs: QuerySet[Order]) -> QuerySet[Order]:
    # Their compliance results are attached after loading (compliance_results_attach).
    return qs.select_related("account", "instrument", "created_by")


def _order_data(user: Any, order_id: int) -> dict[str, Any]:
    order = _order_queryset(orders_visible_to(user=user)).get(pk=order_id)
    compliance_results_attach([order])
    return _ORDER_OUTPUT(order)


def _basket_max() -> int:
    return int(getattr(settings, "BASKET_MAX_ORDERS", 5000))


class InstrumentListView(generics.ListAPIView):
    """Instruments with their reference price."""

    serializer_class = InstrumentSerializer
    filterset_class = InstrumentFilter
    ordering_fields = ["symbol", "asset_class", "sector"]
    ordering = ["symbol"]

    def get_queryset(self) -> QuerySet[Instrument]:
        return Instrument.objects.select_related("price").order_by("symbol")

    @extend_schema(operation_id="instruments_list", tags=["instruments"])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class OrderListCreateView(OrderEntryThrottleMixin, generics.ListAPIView):
    """GET: the orders you may see. POST: enter one order (portfolio managers)."""

    serializer_class = OrderSerializer
    filterset_class = OrderFilter
    ordering_fields = ["id", "created_at", "updated_at", "status", "quantity"]
    ordering = ["-id"]

    def get_permissions(self) -> Any:
        if self.request.method == "POST":
            return [IsPM()]
        return super().get_permissions()

    def get_queryset(self) -> QuerySet[Order]:
        return _order_queryset(orders_visible_to(user=self.request.user))

    @extend_schema(operation_id="orders_list", tags=["orders"])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @collection_paused()
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # DRF's list, rendered from the compiled plan with one memo for the page, after the
        # page's results are read in one query (a page of 50 orders: about 28 ms of CPU
        # through DRF's generic rendering and Django's prefetch). The page's rows and results
        # are short-lived, as a basket's are: the collector is paused while they exist.
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        orders = list(queryset if page is None else page)
        compliance_results_attach(orders)
        memo: dict[Any, Any] = {}
        data = [_ORDER_OUTPUT(order, memo) for order in orders]
        if page is None:
            return Response(data)
        return self.get_paginated_response(data)

    @extend_schema(
        operation_id="orders_create",
        tags=["orders"],
        request=OrderInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: OrderSerializer,
            200: OpenApiResponse(OrderSerializer, description="replayed by client_order_id"),
            **ERRORS,
            429: OpenApiResponse(ErrorSerializer, description="order entry throttled"),
        },
    )
    @idempotent
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError(
                "non_field_errors: the body must be a JSON object",
                errors={"non_field_errors": ["the body must be a JSON object"]},
            )
        data = {k: v for k, v in request.data.items()}
        order = order_create(user=request.user, data=data)
        # The service returns the order with its account, instrument and creator loaded, and
        # a new order with its results (a replayed one is read here).
        if "compliance_results" not in getattr(order, "_prefetched_objects_cache", {}):
            compliance_results_attach([order])
        body = _ORDER_OUTPUT(order)
        # The results' prefetch cache (a queryset holding the order, results holding it too) is
        # a reference cycle: dropped once rendered, the order and its results are freed when
        # the request ends instead of by the cyclic collector.
        order.__dict__.pop("_prefetched_objects_cache", None)
        replayed = getattr(order, "replayed", False)
        return Response(body, status=status.HTTP_200_OK if replayed else status.HTTP_201_CREATED)


class OrderDetailView(APIView):
    """One order, with its compliance results, executions and audit history."""

    @extend_schema(
        operation_id="orders_retrieve",
        tags=["orders"],
        responses={200: OrderDetailSerializer, 404: ERRORS[404]},
    )
    def get(self, request: Request, pk: int) -> Response:
        order = (
            _order_queryset(orders_visible_to(user=request.user))
            .prefetch_related("executions__broker")
            .filter(pk=pk)
            .first()
        )
        if order is None:
            raise NotFound("No such order.")
        compliance_results_attach([order])
        history = list(AuditEvent.objects.filter(stream=f"order:{order.pk}").order_by("seq"))
        return Response(OrderDetailSerializer(order, context={"history": history}).data)


class OrderAmendView(APIView):
    """Change quantity or prices (before routing directly; at a broker as cancel/replace)."""

    permission_classes = [IsPMOrTrader]

    @extend_schema(
        operation_id="orders_amend",
        tags=["orders"],
        request=OrderAmendInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: OrderSerializer, **ERRORS},
    )
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        order = order_amend(
            user=request.user,
            order_id=pk,
            version=cast(int, data.get("version")),
            quantity=data.get("quantity"),
            limit_price=data.get("limit_price"),
            stop_price=data.get("stop_price"),
        )
        return Response(_order_data(request.user, order.pk))


class OrderCancelView(APIView):
    """Cancel an order (a cancel request if it is at a broker)."""

    permission_classes = [IsPMOrTrader]

    @extend_schema(
        operation_id="orders_cancel",
        tags=["orders"],
        request=OrderCancelInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: OrderSerializer, **ERRORS},
    )
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        order = order_cancel(user=request.user, order_id=pk, version=data.get("version"))
        return Response(_order_data(request.user, order.pk))


def _csv_rows(upload: Any) -> list[dict[str, Any]]:
    """Parse an uploaded basket CSV into order dicts; header problems are row-0 errors."""
    try:
        text = upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _basket_error(0, "file", "must be UTF-8 encoded CSV") from None
    if "\x00" in text:  # PostgreSQL text cannot hold it; row 0 is the header
        raise _basket_error(text.count("\n", 0, text.index("\x00")), "file", "contains NUL (0x00)")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise _basket_error(0, "file", f"missing column(s): {', '.join(missing)}")
    unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if unknown:
        raise _basket_error(0, "file", f"unknown column(s): {', '.join(unknown)}")
    reader.fieldnames = header
    rows: list[dict[str, Any]] = []
    for n, record in enumerate(reader, start=1):
        if None in record:
            raise _basket_error(n, "file", "the row has more cells than the header")
        if not any((v or "").strip() for v in record.values()):
            continue
        rows.append({k: (v.strip() if v and v.strip() else None) for k, v in record.items()})
        if len(rows) > _basket_max():
            break
    return rows


def _basket_error(row: int, field: str, detail: str) -> ValidationError:
    return ValidationError(
        f"Row {row}, {field}: {detail} (nothing was created).",
        errors=[{"row": row, "field": field, "detail": detail}],  # type: ignore[arg-type]
    )


class BasketCreateView(OrderEntryThrottleMixin, APIView):
    """Upload a basket (CSV file or JSON list): all orders are created, or none."""

    permission_classes = [IsPM]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        operation_id="baskets_create",
        tags=["orders"],
        request={
            "application/json": BasketJsonInputSerializer,
            "multipart/form-data": BasketUploadInputSerializer,
        },
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: BasketResultSerializer,
            400: OpenApiResponse(
                BasketErrorSerializer, description="invalid rows; nothing created"
            ),
            403: ERRORS[403],
            409: ERRORS[409],
            429: OpenApiResponse(ErrorSerializer, description="order entry throttled"),
        },
        examples=[
            OpenApiExample(
                "JSON basket",
                request_only=True,
                media_type="application/json",
                value={
                    "orders": [
                        {
                            "account": "ACC-001",
                            "instrument": "ACME",
                            "side": "buy",
                            "quantity": "100",
                            "order_type": "limit",
                            "limit_price": "10.25",
                            "time_in_force": "day",
                        }
                    ]
                },
            )
        ],
    )
    @idempotent
    @collection_paused()
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("file") if hasattr(request, "FILES") else None
        if upload is not None:
            rows, source = _csv_rows(upload), "csv"
        else:
            data = request.data
            orders = data.get("orders") if isinstance(data, dict) else None
            if not isinstance(orders, list):
                raise _basket_error(0, "orders", "send a CSV file or a JSON list of orders")
            rows, source = orders, "json"
        if len(rows) > _basket_max():
            raise _basket_error(0, "orders", f"a basket holds at most {_basket_max()} orders")
        orders_out, summary = orders_create_bulk(user=request.user, rows=rows, source=source)
        memo: dict[Any, Any] = {}  # one checked_at (and created_at) rendered once per basket
        body = {
            "id": summary.basket_id,
            "orders": [_BASKET_ORDER_OUTPUT(order, memo) for order in orders_out],
            "summary": summary.as_dict(),
        }
        code = status.HTTP_201_CREATED if summary.created else status.HTTP_200_OK
        return Response(body, status=code)


class BlockListCreateView(generics.ListAPIView):
    """GET: blocks you may see. POST: aggregate approved orders into a block (traders)."""

    serializer_class = BlockSerializer
    ordering_fields = ["id", "created_at"]
    ordering = ["-id"]

    def get_permissions(self) -> Any:
        if self.request.method == "POST":
            return [IsTrader()]
        return super().get_permissions()

    def get_queryset(self) -> QuerySet[Block]:
        user = self.request.user
        # A PM sees a block because one of its orders is theirs; the other accounts' orders in
        # it stay invisible, so the block lists only the order ids the user may see.
        return (
            blocks_visible_to(user=user)
            .select_related("instrument", "created_by")
            # With the block key: the prefetch matches each order to its block by it, and
            # loaded it order by order when deferred (1,500 queries for a page of 50 blocks).
            .prefetch_related(
                Prefetch("orders", queryset=orders_visible_to(user=user).only("pk", "block_id"))
            )
        )

    @extend_schema(operation_id="blocks_list", tags=["blocks"])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="blocks_create",
        tags=["blocks"],
        request=BlockCreateInputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: BlockSerializer, **ERRORS},
    )
    @idempotent
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        ids = data.get("orders")
        if not isinstance(ids, list):
            raise ValidationError(
                "orders: must be a list of order ids",
                errors={"orders": ["must be a list of order ids"]},
            )
        block = block_create(user=request.user, order_ids=ids)
        block = self.get_queryset().get(pk=block.pk)
        return Response(BlockSerializer(block).data, status=status.HTTP_201_CREATED)


class BlockDissolveView(APIView):
    """Return an open block's orders to the desk."""

    permission_classes = [IsTrader]

    @extend_schema(
        operation_id="blocks_dissolve",
        tags=["blocks"],
        request=None,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: BlockSerializer, 403: ERRORS[403], 404: ERRORS[404], 409: ERRORS[409]},
    )
    @idempotent
    def post(self, request: Request, pk: int) -> Response:
        block = block_dissolve(user=request.user, block_id=pk)
        block = Block.objects.select_related("instrument", "created_by").get(pk=block.pk)
        return Response(BlockSerializer(block).data)


__all__ = [
    "BasketCreateView",
    "BlockDissolveView",
    "BlockListCreateView",
    "InstrumentListView",
    "OrderAmendView",
    "OrderCancelView",
    "OrderDetailView",
    "OrderListCreateView",
]
