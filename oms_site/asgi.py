"""ASGI entry point: Django views and the API over HTTP, the blotter over websockets."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

if settings.SERVE_STATIC:
    # One-machine deployments serve /static/ from the app; larger ones put a web server or CDN
    # in front and set SERVE_STATIC=0.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from oms_site.realtime import send_in_background  # noqa: E402
from oms_site.ws_auth import TokenOrSessionAuthMiddleware  # noqa: E402
from orders.routing import websocket_urlpatterns  # noqa: E402


async def lifespan(scope: Any, receive: Any, send: Any) -> None:
    """The server's start-up: from then on this process sends blotter events from one thread.

    Why: every commit's events otherwise cost their own channel-layer hop (about 2 ms of CPU
    for an order's three groups); one sender thread coalesces what queued during the previous
    hop, so under load many orders share a hop, in commit order. Only servers send `lifespan`,
    so code that merely imports the application (tests) keeps direct sending.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            send_in_background()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            TokenOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns))
        ),
        "lifespan": lifespan,
    }
)
