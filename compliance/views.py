"""Browser pages of compliance officers."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from oms_site.roles import has_role


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    """Orders awaiting a compliance override."""
    if not has_role(request.user, "compliance"):
        return render(request, "403.html", status=403)
    return render(request, "compliance/queue.html", {})
