"""ASGI entry point: Django views and the API over HTTP, the blotter over websockets."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import SyncToAsync, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.urls import get_resolver, set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
django.setup(set_prefix=False)

from django.conf.urls.i18n import is_language_prefix_patterns_used  # noqa: E402

# Paths whose match SyncChainASGIHandler.resolve_request remembers, at most (per URLconf).
RESOLVED_PATHS_MAX = 256


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler running middleware and view in one worker-thread hop.

    Why: every view here is synchronous, and so is a middleware (AuditActorMiddleware); in
    Django's async chain each request then went back and forth between the event loop and its
    thread (middleware, URL resolution, view), and those hops cost more CPU than the view's
    own Python. With the chain loaded in sync mode, a request runs exactly as under WSGI, in
    the thread that Django's per-request ThreadSensitiveContext gives it; the event loop still
    reads the body, watches for disconnects and sends the response.
    """

    def __init__(self) -> None:
        self.load_middleware(is_async=False)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Django's own __call__ gives every request a new single-thread executor and joins its
        # thread afterwards (two threads started per request, ~7 % of a worker's CPU under
        # load). A lane is the same kind of executor, kept for the next request: a request's
        # synchronous steps (request_started, middleware and view, request_finished) still
        # all run on one thread, and requests never share a thread while they run.
        lane = LANES.take()
        try:
            await self.handle(scope, receive, send, lane)
        finally:
            LANES.give(lane)

    async def handle(
        self, scope: Any, receive: Any, send: Any, lane: ThreadPoolExecutor | None = None
    ) -> None:
        """Django's ASGIHandler.handle, with a request's synchronous steps in one lane hop.

        Django hops to the request's thread three times: request_started, then middleware and
        view, then response.close() (request_finished, which hands the database connection
        back). Here the three run in one hop, closing an ordinary response before its bytes
        are sent (the bytes are already rendered; only streaming responses are closed after
        sending, as Django does). Disconnects are watched as in Django's handler.

        The hop is the event loop's own `run_in_executor` on the lane, with the request's
        steps run in one copy of the request's context (`_LaneCall`), instead of asgiref's
        `sync_to_async` inside a `ThreadSensitiveContext`: the same thread, context and
        cancellation, without asgiref's per-call executor lookup, shield and context copying
        back (about 3 % of a worker's samples under load).
        """
        if lane is None:
            lane = LANES.take()
            try:
                return await self.handle(scope, receive, send, lane)
            finally:
                LANES.give(lane)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        state: dict[str, Any] = {}
        prefix = get_script_prefix(scope)

        def serve() -> Any:
            set_script_prefix(prefix)
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                state["request"] = request
                response = self.get_response(request)
                response._handler_class = self.__class__
                if isinstance(response, FileResponse):
                    response.block_size = self.chunk_size
            state["response"] = response
            if not response.streaming:
                response.close()
                state["closed"] = True
            return response

        in_lane = _LaneCall(asyncio.get_running_loop(), lane)

        async def process_request() -> Any:
            response = await in_lane(serve)
            # A client that disconnects while the response is being sent is no error.
            with contextlib.suppress(asyncio.CancelledError):
                await self.send_response(response, send)
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        try:
            await self._settle(tasks, body_file, in_lane, state)
        finally:
            # A finished task keeps its exception (the listener's RequestAborted once the
            # answer is complete, on nearly every request; a cancellation), and that
            # exception's traceback runs through this frame and _settle's, whose locals hold
            # the tasks again: a reference cycle that kept the whole request (about 250
            # objects: request, view, response, the order and its results) alive until the
            # cyclic collector found it. Dropped here, they are freed when the request ends.
            tasks.clear()
        body_file.close()
        _release(state)

    async def _settle(
        self,
        tasks: list[asyncio.Task[Any]],
        body_file: Any,
        in_lane: _LaneCall,
        state: dict[str, Any],
    ) -> None:
        """Wait for the answer or the client's disconnect, then finish the request (Django's
        steps after its two tasks, as before)."""
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    continue  # the client left: nothing more is owed to it
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            tasks[1].result()
        except asyncio.CancelledError:
            # The client left before the answer: finish the request on its lane once the
            # view is done (the lane runs one thing at a time), unless serve() already did.
            await in_lane(lambda: self._finish(state))
        else:
            if not state.get("closed"):
                await in_lane(state["response"].close)

    def _finish(self, state: dict[str, Any]) -> None:
        if state.get("closed"):
            return
        response = state.get("response")
        if response is not None:
            response.close()
        else:
            signals.request_finished.send(sender=self.__class__)

    def resolve_request(self, request: Any) -> Any:
        """Django's resolve_request, with a path's match remembered when it captured nothing.

        Why: resolving /api/v1/orders/ walks three levels of includes and copies the list of
        patterns tried at each: 2-3 % of a worker's samples under load; in process, 500
        alternated pairs of whole orders, -119 us of CPU per order (median pair difference,
        58 % of pairs lower, on a slow phase of 7.5 ms per order). A match
        without arguments depends on the path and the URLconf only, and nothing writes to a
        ResolverMatch, so requests share it. The memo lives on the resolver, which Django
        replaces when the URLconf changes; a path that does not resolve is not remembered,
        and at most RESOLVED_PATHS_MAX paths are. Language-prefixed routes are not memoized.
        """
        resolver = get_resolver()
        if (
            hasattr(request, "urlconf")
            or is_language_prefix_patterns_used(resolver.urlconf_name)[0]
        ):
            # A request's own URLconf, or language-prefixed routes (the match depends on the
            # active language): Django's resolution every time.
            return super().resolve_request(request)
        memo: dict[str, Any] | None = resolver.__dict__.get("_oms_matches")
        if memo is None:
            memo = resolver.__dict__.setdefault("_oms_matches", {})
        path = request.path_info
        match = memo.get(path)
        if match is None:
            match = resolver.resolve(path)
            if not match.args and not match.kwargs and len(memo) < RESOLVED_PATHS_MAX:
                memo[path] = match
        request.resolver_match = match
        return match

    async def get_response_async(self, request: Any) -> Any:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def _release(state: dict[str, Any]) -> None:
    """Drops what a request's objects hold, once its response is sent and closed.

    Why: Django and DRF tie a request's objects into reference cycles (the request's lazy user
    and `auser` refer back to it, as do the message storages; DRF's view, request and response
    refer to one another through `parser_context` and `renderer_context`). About 70 container
    objects per order were left for the cyclic collector, and collecting them, with the young
    objects of the requests then in flight, cost 126 us of collector CPU per order in process
    (16 orders at once, 4,800 orders; 54 us young, 30 us middle, 42 us full collections),
    against none once the cycles are broken here. Nothing uses these objects after this
    point: the response's bytes are sent, `request_finished` has run, and the view has
    returned (a client that left early waited for it in _settle). A request that failed in
    _settle keeps its objects for the collector.
    """
    response = state.pop("response", None)
    context = getattr(response, "renderer_context", None)
    if context:
        # A DRF response: its view and DRF request, then the context itself.
        for key in ("view", "request"):
            obj = context.get(key)
            if obj is not None and hasattr(obj, "__dict__"):
                obj.__dict__.clear()
        response.renderer_context = None
    request = state.pop("request", None)
    if request is not None:
        request.__dict__.clear()


class _LaneCall:
    """Runs a request's synchronous steps on its lane, each in the same copy of its context.

    What asgiref's `sync_to_async(thread_sensitive=True)` inside the request's
    `ThreadSensitiveContext` did for these calls, kept: the steps run one after another on the
    lane's thread, in a copy of the request's context taken once (so what one step stores in
    context-local state, such as Django's per-request cache connections, the next one sees),
    with asgiref's thread-locals pointing at the server's loop (an `async_to_sync` in a view
    runs its coroutine there, as under `sync_to_async`); a cancelled await leaves a step that
    already started running and drops one that had not.
    """

    __slots__ = ("context", "lane", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, lane: ThreadPoolExecutor) -> None:
        self.loop = loop
        self.lane = lane
        self.context = contextvars.copy_context()

    def __call__(self, step: Callable[[], Any]) -> asyncio.Future[Any]:
        return self.loop.run_in_executor(self.lane, self._run, step)

    def _run(self, step: Callable[[], Any]) -> Any:
        local = SyncToAsync.threadlocal
        local.main_event_loop = self.loop
        local.main_event_loop_pid = os.getpid()
        local.task_context = []
        return self.context.run(step)


class Lanes:
    """Single-thread executors for HTTP requests, reused; at most `keep` wait idle.

    A request takes an idle lane or a new one (as many run at once as Django's own handler
    would allow), and gives it back when its response is sent; a lane beyond `keep` idle ones
    is shut down. Work a cancelled request left running stays queued on its lane, so the
    next request on that lane starts after it.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: deque[ThreadPoolExecutor] = deque()
        self.started = 0

    def take(self) -> ThreadPoolExecutor:
        try:
            return self.idle.pop()
        except IndexError:
            self.started += 1
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="oms-http")

    def give(self, lane: ThreadPoolExecutor) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(lane)
        else:
            lane.shutdown(wait=False)


LANES = Lanes(keep=int(os.environ.get("WEB_IDLE_THREADS", "32")))


django_asgi_app: Any = SyncChainASGIHandler()

from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

if settings.SERVE_STATIC:
    # One-machine deployments serve /static/ from the app; larger ones put a web server or CDN
    # in front and set SERVE_STATIC=0.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from oms_site.realtime import send_in_background  # noqa: E402
from oms_site.ws_auth import TokenOrSessionAuthMiddleware  # noqa: E402
from orders.routing import websocket_urlpatterns  # noqa: E402

# The cyclic garbage collector's first threshold in a server's worker (Python's default: 700).
# Why: an order allocates a few thousand container objects; at 700 the young generation was
# collected a few times per order, each time promoting the objects of the requests then in
# flight, and those promotions triggered a full collection (walking the whole heap, about 190,000
# objects) every few hundred orders. Measured in process (2,000 orders, 16 at once, CPU time
# inside the collections): 476 us per order at 700 (5 full collections), 250 us at 7000 (1).
# Unreachable cycles wait for a collection a little longer; memory stays bounded.
GC_THRESHOLD_0 = 7000


def preload() -> None:
    """Import and build, before the server accepts connections, what the first requests built.

    Why: the first order a worker served imported redis-py (the throttle's cache client), the
    channel layer with channels_redis and cryptography (the first blotter event), the message
    and session storages: the first order in a fresh process took 0.45-0.59 s of CPU (0.03-0.04
    s with this start-up) on this machine, while that order and the requests queued behind it
    waited (and counted in the benchmarks' first measured seconds when their warm-up had not
    reached a worker). Nothing here connects anywhere: Redis and
    PostgreSQL are still first reached by a request, as before.
    """
    from django.core.cache import cache
    from django.utils.module_loading import import_string

    import_string(settings.MESSAGE_STORAGE)
    import_string(settings.SESSION_ENGINE + ".SessionStore")
    import_string(settings.SESSION_SERIALIZER)
    cache._cache  # noqa: B018 - builds the process's shared cache client (imports redis-py)
    get_channel_layer()


async def lifespan(scope: Any, receive: Any, send: Any) -> None:
    """The server's start-up: from then on this process sends blotter events from one thread.

    Why: every commit's events otherwise cost their own channel-layer hop (about 2 ms of CPU
    for an order's three groups); one sender thread coalesces what queued during the previous
    hop, so under load many orders share a hop, in commit order. Only servers send `lifespan`,
    so code that merely imports the application (tests) keeps direct sending.

    The garbage collector's first threshold is raised (GC_THRESHOLD_0 says why). The URLconf
    is loaded here too, before the server accepts connections: Django loads it at
    the first request, and it imports every app's views (settlement's calendars bring pandas),
    about 2.3 s of CPU that each worker's first requests otherwise waited for. So is what the
    first order otherwise loaded (`preload`).
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            send_in_background()
            get_resolver().url_patterns  # noqa: B018 - loads the URLconf and its views
            preload()
            gc.set_threshold(GC_THRESHOLD_0, *gc.get_threshold()[1:])
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
