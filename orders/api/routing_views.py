"""Views of the routing API: thin, one per operation; services do the work and the checks.

Routing is synchronous by default: the service writes the placement and the outbox row in one
transaction and the gateway sends it (woken by NOTIFY), so the trader gets the placement, the
broker chosen and any refusal (kill switch, state) in the response. `{"asynchronous": true}`
answers 202 at once: the route is first a durable RouteRequest row (so a lost Celery message loses
nothing: a beat sweep re-publishes it), then the `route_request` task runs the same service on a
routing worker after commit and records the request done (with its placement) or refused (with
the error's code). While a request of the order or block is pending, asking again answers the
same 202 with the same request id. The outbox makes both paths send nothing twice.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.api.permissions import IsTrader, roles_required
from orders.api.routing_serializers import (
    FixSessionSerializer,
    KillSwitchInputSerializer,
    KillSwitchResultSerializer,
    KillSwitchSerializer,
    RouteInputSerializer,
    RouteQueuedSerializer,
    RouteResultSerializer,
)
from orders.api.serializers import ErrorSerializer
from orders.models import FixSession, KillSwitch, Order
from orders.services.routing import (
    block_route,
    kill_switch_engage,
    kill_switch_lift,
    order_route,
    route_request_create,
)

IsTraderOrAdmin = roles_required("trader", "admin")
CanSeeKillSwitches = roles_required("trader", "admin", "compliance")

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid input"),
    403: OpenApiResponse(ErrorSerializer, description="not allowed"),
    404: OpenApiResponse(ErrorSerializer, description="not found"),
    409: OpenApiResponse(ErrorSerializer, description="not allowed in the current state"),
}


class RouteRequestQueuedSerializer(RouteQueuedSerializer):
    request = serializers.IntegerField(
        help_text="the durable route request (pending until a routing worker runs it)"
    )


def _route_result(placement: Any) -> dict[str, Any]:
    if placement.block_id:
        orders = list(Order.objects.filter(block_id=placement.block_id).order_by("pk"))
    else:
        orders = [placement.order]
    return RouteResultSerializer({"placement": placement, "orders": orders}).data


class OrderRouteView(APIView):
    permission_classes = [IsTrader]

    @extend_schema(
        request=RouteInputSerializer,
        responses={201: RouteResultSerializer, 202: RouteRequestQueuedSerializer, **ERRORS},
        summary="Route an approved order to a broker (or by best execution)",
    )
    def post(self, request: Request, pk: int) -> Response:
        data = RouteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        broker = data.validated_data["broker"] or None
        if data.validated_data["asynchronous"]:
            queued = route_request_create(user=request.user, order_id=pk, broker_code=broker)
            body = {"queued": True, "order": queued.order_id, "request": queued.pk}
            return Response(body, status=status.HTTP_202_ACCEPTED)
        placement = order_route(user=request.user, order_id=pk, broker_code=broker)
        return Response(_route_result(placement), status=status.HTTP_201_CREATED)


class BlockRouteView(APIView):
    permission_classes = [IsTrader]

    @extend_schema(
        request=RouteInputSerializer,
        responses={201: RouteResultSerializer, 202: RouteRequestQueuedSerializer, **ERRORS},
        summary="Route an open block to a broker (or by best execution)",
    )
    def post(self, request: Request, pk: int) -> Response:
        data = RouteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        broker = data.validated_data["broker"] or None
        if data.validated_data["asynchronous"]:
            queued = route_request_create(user=request.user, block_id=pk, broker_code=broker)
            body = {"queued": True, "block": queued.block_id, "request": queued.pk}
            return Response(body, status=status.HTTP_202_ACCEPTED)
        placement = block_route(user=request.user, block_id=pk, broker_code=broker)
        return Response(_route_result(placement), status=status.HTTP_201_CREATED)


class KillSwitchListCreateView(generics.ListAPIView):
    serializer_class = KillSwitchSerializer
    filterset_fields = ["active", "scope"]

    def get_permissions(self) -> list[Any]:
        return [IsTraderOrAdmin() if self.request.method == "POST" else CanSeeKillSwitches()]

    def get_queryset(self) -> Any:
        return KillSwitch.objects.select_related("engaged_by", "lifted_by").order_by("-pk")

    @extend_schema(
        request=KillSwitchInputSerializer,
        responses={201: KillSwitchResultSerializer, **ERRORS},
        summary="Engage a kill switch: stop routing and cancel open orders in scope",
    )
    def post(self, request: Request) -> Response:
        data = KillSwitchInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = kill_switch_engage(
            user=request.user,
            scope=data.validated_data["scope"],
            target=data.validated_data["target"],
            reason=data.validated_data["reason"],
        )
        body = dict(KillSwitchSerializer(result.switch).data)
        body.update(canceled=result.canceled, cancel_requests=result.cancel_requests)
        return Response(body, status=status.HTTP_201_CREATED)


class KillSwitchLiftView(APIView):
    permission_classes = [IsTraderOrAdmin]

    @extend_schema(
        request=None,
        responses={200: KillSwitchSerializer, **ERRORS},
        summary="Lift a kill switch (a second user, not the one who engaged it)",
    )
    def post(self, request: Request, pk: int) -> Response:
        switch = kill_switch_lift(user=request.user, switch_id=pk)
        return Response(KillSwitchSerializer(switch).data)


class FixSessionListView(generics.ListAPIView):
    permission_classes = [IsTraderOrAdmin]
    serializer_class = FixSessionSerializer
    filterset_fields = ["enabled", "logged_on"]

    def get_queryset(self) -> Any:
        return FixSession.objects.select_related("broker").order_by("pk")
