"""Browser pages of the back office."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from oms_site.roles import has_role


@login_required
def backoffice(request: HttpRequest) -> HttpResponse:
    """Settlement files and reconciliation breaks."""
    if not has_role(request.user, "backoffice", "admin"):
        return render(request, "403.html", status=403)
    return render(request, "settlement/backoffice.html", {})
