"""Browser pages: thin views rendering templates; data comes from the API and websocket."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from oms_site.roles import has_role


@login_required
def blotter(request: HttpRequest) -> HttpResponse:
    """The trader blotter."""
    if not has_role(request.user, "trader", "admin", "compliance", "backoffice"):
        return render(request, "403.html", status=403)
    return render(request, "orders/blotter.html", {})


@login_required
def pm_orders(request: HttpRequest) -> HttpResponse:
    """A PM's orders, ticket and basket upload."""
    if not has_role(request.user, "pm", "admin"):
        return render(request, "403.html", status=403)
    return render(request, "orders/pm.html", {})
