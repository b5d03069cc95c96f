"""Browser pages: thin views rendering templates; live data comes from the API and websocket.

The pages only render what the user may choose from (their accounts, desks, the active brokers);
every read of orders and every write goes through /api/v1/ with the browser's session, so the
API's validation and entitlements are the only ones.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from allocations.models import Desk
from allocations.selectors import accounts_visible_to
from oms_site.roles import has_role, role_keys
from orders.enums import OrderStatus, OrderType, Side, TimeInForce
from orders.models import Broker

BLOTTER_ROLES = ("trader", "admin", "compliance", "backoffice")


def _page_context(request: HttpRequest) -> dict[str, Any]:
    keys = role_keys(request.user)
    return {
        "roles": sorted(keys),
        "statuses": [{"value": s.value, "label": s.label} for s in OrderStatus],
        "sides": [{"value": s.value, "label": s.label} for s in Side],
    }


@login_required
@ensure_csrf_cookie
def blotter(request: HttpRequest) -> HttpResponse:
    """The trader blotter: live grid of every order the user may see, fills and actions."""
    if not has_role(request.user, *BLOTTER_ROLES):
        return render(request, "403.html", status=403)
    keys = role_keys(request.user)
    desks = Desk.objects.all() if "admin" in keys else Desk.objects.filter(traders=request.user)
    context = _page_context(request)
    context.update(
        {
            "can_trade": bool(keys & {"trader"}),
            "can_kill": bool(keys & {"trader", "admin"}),
            "can_override": "compliance" in keys,
            "brokers": list(Broker.objects.filter(active=True).values("code", "name")),
            "desks": list(desks.order_by("code").values("code", "name")),
            "accounts": list(
                accounts_visible_to(user=request.user).order_by("code").values("code", "name")
            ),
        }
    )
    return render(request, "orders/blotter.html", context)


@login_required
@ensure_csrf_cookie
def pm_orders(request: HttpRequest) -> HttpResponse:
    """A PM's order ticket, basket upload, own orders, positions and cash."""
    if not has_role(request.user, "pm", "admin"):
        return render(request, "403.html", status=403)
    accounts = accounts_visible_to(user=request.user).order_by("code")
    if not has_role(request.user, "admin"):
        accounts = accounts.filter(managers=request.user)
    context = _page_context(request)
    context.update(
        {
            "accounts": list(accounts.values("code", "name", "base_currency")),
            "order_types": [{"value": t.value, "label": t.label} for t in OrderType],
            "tifs": [{"value": t.value, "label": t.label} for t in TimeInForce],
            "basket_header": (
                "account,instrument,side,quantity,order_type,limit_price,stop_price,time_in_force"
            ),
        }
    )
    return render(request, "orders/pm.html", context)
