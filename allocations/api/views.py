"""The book's API: accounts, executions, allocations, positions, cash, re-allocation.

Every list starts from what the user may see (allocations.selectors); a row outside it is 404.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations import selectors
from allocations.api import serializers as s
from allocations.services import allocation_reallocate


def _code_param(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, str, description=description)


@extend_schema_view(
    get=extend_schema(summary="Accounts you may see, with cash per currency and NAV", tags=["book"])
)
class AccountListView(generics.ListAPIView):
    serializer_class = s.AccountOutput
    filterset_class = selectors.AccountFilter
    ordering_fields = ["code", "nav"]

    def get_queryset(self):
        return selectors.accounts_with_book(user=self.request.user)


@extend_schema_view(get=extend_schema(summary="One account (by code)", tags=["book"]))
class AccountDetailView(generics.RetrieveAPIView):
    serializer_class = s.AccountOutput
    lookup_field = "code"
    filter_backends: list = []

    def get_queryset(self):
        return selectors.accounts_with_book(user=self.request.user)

    def get_object(self):
        # No code holds a NUL (PostgreSQL text cannot): no such account, rather than a 500.
        if "\x00" in self.kwargs["code"]:
            raise Http404
        return super().get_object()


@extend_schema_view(
    get=extend_schema(
        summary="Fills of orders and blocks you may see",
        tags=["book"],
        parameters=[
            OpenApiParameter("order", int, description="an order id (its fills, or its block's)"),
            OpenApiParameter("block", int, description="a block id"),
        ],
    )
)
class ExecutionListView(generics.ListAPIView):
    serializer_class = s.ExecutionOutput
    filterset_class = selectors.ExecutionFilter
    ordering_fields = ["id", "received_at"]

    def get_queryset(self):
        # An order's, a block's or a day's fills are few: their visibility is checked row by
        # row (see executions_visible_to; the same rows).
        few = any(self.request.query_params.get(k) for k in ("order", "block", "trade_date"))
        return selectors.executions_visible_to(user=self.request.user, few=few)


@extend_schema_view(get=extend_schema(summary="One execution", tags=["book"]))
class ExecutionDetailView(generics.RetrieveAPIView):
    serializer_class = s.ExecutionOutput
    filter_backends: list = []

    def get_queryset(self):
        return selectors.executions_visible_to(user=self.request.user)


@extend_schema_view(
    get=extend_schema(
        summary="Allocation rows (fills, reversals, re-prices) of accounts you may see",
        tags=["book"],
        parameters=[_code_param("account", "account code(s), comma-separated")],
    )
)
class AllocationListView(generics.ListAPIView):
    serializer_class = s.AllocationOutput
    filterset_class = selectors.AllocationFilter
    ordering_fields = ["id", "trade_date"]

    def get_queryset(self):
        return selectors.allocations_visible_to(user=self.request.user)


@extend_schema_view(get=extend_schema(summary="One allocation row", tags=["book"]))
class AllocationDetailView(generics.RetrieveAPIView):
    serializer_class = s.AllocationOutput
    filter_backends: list = []

    def get_queryset(self):
        return selectors.allocations_visible_to(user=self.request.user)


@extend_schema_view(
    get=extend_schema(
        summary="Positions with market value at reference prices",
        tags=["book"],
        parameters=[_code_param("account", "account code(s), comma-separated")],
    )
)
class PositionListView(generics.ListAPIView):
    serializer_class = s.PositionOutput
    filterset_class = selectors.PositionFilter
    ordering_fields = ["quantity", "market_value"]

    def get_queryset(self):
        return selectors.positions_visible_to(user=self.request.user)


@extend_schema_view(
    get=extend_schema(
        summary="Cash per account and currency: settled and pending",
        tags=["book"],
        parameters=[_code_param("account", "account code(s), comma-separated")],
    )
)
class CashListView(generics.ListAPIView):
    serializer_class = s.CashOutput
    filterset_class = selectors.CashFilter
    ordering_fields = ["currency"]

    def get_queryset(self):
        return selectors.cash_visible_to(user=self.request.user)


class ReallocateView(APIView):
    """Re-allocate a block's fills: manual quantities, fixed ratios or back to pro-rata."""

    @extend_schema(
        summary="Re-allocate a block (trader, back office) before its settlement files exist",
        tags=["book"],
        request=s.ReallocateInput,
        responses={200: s.ReallocateOutput},
    )
    def post(self, request: Request) -> Response:
        data = s.ReallocateInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        rows = allocation_reallocate(
            user=request.user,
            method=v["method"],
            block_id=v.get("block"),
            execution_id=v.get("execution"),
            quantities=v.get("quantities"),
            ratios=v.get("ratios"),
        )
        block_id = v.get("block") or (rows[0].block_id if rows else None)
        if block_id is None:
            block_id = (
                selectors.executions_visible_to(user=request.user)
                .filter(pk=v["execution"])
                .values_list("placement__block_id", flat=True)
                .first()
            )
        rows_qs = selectors.allocations_visible_to(user=request.user).filter(
            pk__in=[r.pk for r in rows]
        )
        body = {
            "block": block_id,
            "method": v["method"],
            "allocations": s.AllocationOutput(rows_qs.order_by("pk"), many=True).data,
        }
        return Response(body, status=status.HTTP_200_OK)
