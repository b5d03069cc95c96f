"""Request middleware of the shared kernel."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from oms_site.audit import current_actor


class AuditActorMiddleware:
    """Makes the request's user the default actor of audit events written while it runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None:
            # Resolve the lazy user now, in this sync thread: under ASGI, asgiref inspects context
            # variables when it hands back to the event loop, and resolving it there would query
            # the database from async code (SynchronousOnlyOperation on every session request).
            getattr(user, "pk", None)
        token = current_actor.set(user)
        try:
            return self.get_response(request)
        finally:
            current_actor.reset(token)
