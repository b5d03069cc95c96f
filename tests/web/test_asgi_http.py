"""HTTP through oms_site.asgi: each request on one reused thread (a lane), Django's steps intact."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator
from django.core.signals import request_finished, request_started
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework.authtoken.models import Token

from oms_site import asgi
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def _post_order(token: str, quantity: str) -> dict[str, Any]:
    body = json.dumps(
        {
            "account": "ACC-A",
            "instrument": "ACME",
            "side": "buy",
            "quantity": quantity,
            "order_type": "limit",
            "limit_price": "100.00",
        }
    ).encode()
    communicator = HttpCommunicator(
        asgi.application,
        "POST",
        "/api/v1/orders/",
        body=body,
        headers=[
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Token {token}".encode()),
        ],
    )
    return async_to_sync(communicator.get_response)(timeout=30)  # type: ignore[no-any-return]


def test_requests_reuse_one_thread_and_run_every_step_on_it(
    pm: Any, account: Any, instrument: Any
) -> None:
    # given a PM's token and a record of the thread of each request's steps
    token = Token.objects.create(user=pm).key
    seen: list[tuple[str, str]] = []

    def started(**kwargs: Any) -> None:
        seen.append(("started", threading.current_thread().name))

    def finished(**kwargs: Any) -> None:
        seen.append(("finished", threading.current_thread().name))

    _post_order(token, "1")  # the first request may start the lane
    lanes_before = asgi.LANES.started

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        # when three orders are entered one after another through the ASGI application
        responses = [_post_order(token, q) for q in ("10", "20", "30")]
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    # then each is created and answered as by Django's own handler
    assert [r["status"] for r in responses] == [201, 201, 201]
    bodies = [json.loads(r["body"]) for r in responses]
    assert [(b["quantity"], b["status"], b["version"]) for b in bodies] == [
        ("10", "approved", 2),
        ("20", "approved", 2),
        ("30", "approved", 2),
    ]
    assert sorted(Order.objects.values_list("quantity", flat=True)) == [
        Decimal("1"),
        Decimal("10"),
        Decimal("20"),
        Decimal("30"),
    ]
    # and every request started and finished (its connection handed back) on one thread,
    # the same thread for all three: no thread is started per request
    assert [step for step, _ in seen] == ["started", "finished"] * 3
    assert len({name for _, name in seen}) == 1
    assert seen[0][1].startswith("oms-http")
    assert asgi.LANES.started == lanes_before


def test_an_error_answer_also_finishes_on_the_requests_thread(db: Any) -> None:
    # given no credentials
    with _finished_threads() as seen:
        # when an order is posted with an unknown token
        response = _post_order("not-a-token", "10")
    # then the API's error answer comes back and the request finished once, on a lane
    assert response["status"] == 401
    assert json.loads(response["body"])["code"] == "authentication_failed"
    assert len(seen) == 1
    assert seen[0].startswith("oms-http")
    assert Order.objects.count() == 0


def test_lanes_are_reused_and_only_keep_idle_ones_survive() -> None:
    # given a pool keeping at most one idle lane
    lanes = asgi.Lanes(keep=1)
    # when two requests run at once, then they get two lanes
    first, second = lanes.take(), lanes.take()
    assert first is not second
    assert lanes.started == 2
    # when both finish, then one lane is kept and the other is shut down
    lanes.give(first)
    lanes.give(second)
    assert list(lanes.idle) == [first]
    with pytest.raises(RuntimeError):
        second.submit(int)
    # and the next request takes the kept lane without starting a thread
    assert lanes.take() is first
    assert lanes.started == 2
    first.shutdown()


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }


async def _exchange(app: Any, scope: dict[str, Any], *, disconnect: bool) -> list[Any]:
    """Send one request (then a disconnect if asked); every message the app sent back."""
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    if disconnect:
        await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=30)
    sent = []
    while not communicator.output_queue.empty():
        sent.append(await communicator.receive_output())
    return sent


@contextmanager
def _finished_threads() -> Iterator[list[str]]:
    """The names of the threads on which requests finish while the block runs."""
    names: list[str] = []

    def finished(**kwargs: Any) -> None:
        names.append(threading.current_thread().name)

    request_finished.connect(finished)
    try:
        yield names
    finally:
        request_finished.disconnect(finished)


# Django warns that it consumes a synchronous iterator whole under ASGI (FileResponse does too).
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_a_streaming_answer_is_sent_whole_and_finished_after_sending() -> None:
    # given a handler whose view streams two chunks and records what it has sent
    handler = asgi.SyncChainASGIHandler()
    handler.get_response = lambda request: StreamingHttpResponse(  # type: ignore[method-assign]
        iter([b"first,", b"second"]), content_type="text/csv"
    )
    with _finished_threads() as names:
        # when it is requested
        messages = async_to_sync(_exchange)(handler, _scope("/report.csv"), disconnect=False)
    # then the whole body arrives and the request finishes once, on its lane
    assert messages[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in messages[1:]) == b"first,second"
    assert messages[-1].get("more_body", False) is False
    assert len(names) == 1
    assert names[0].startswith("oms-http")


def test_a_client_that_leaves_early_still_gets_its_request_finished_once() -> None:
    # given a view that takes a while, and a client that disconnects right after sending
    handler = asgi.SyncChainASGIHandler()

    def slow(request: Any) -> HttpResponse:
        time.sleep(0.3)
        return HttpResponse(b"late")

    handler.get_response = slow  # type: ignore[method-assign]
    with _finished_threads() as names:
        # when the request is served
        sent = async_to_sync(_exchange)(handler, _scope("/slow/"), disconnect=True)
    # then nothing is sent to the departed client, and the request finished exactly once,
    # on its lane, after the view was done
    assert sent == []
    assert len(names) == 1
    assert names[0].startswith("oms-http")


_LIFESPAN_SCRIPT = """
import asyncio, json, sys
import oms_site.asgi as asgi
before = "oms_site.urls" in sys.modules
sent = []

async def main():
    inbox = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})

    async def send(message):
        sent.append((message["type"], "oms_site.urls" in sys.modules))

    await asgi.application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)

asyncio.run(main())
print("RESULT" + json.dumps({"before": before, "sent": sent}))
"""


def _fresh_interpreter_result(script: str) -> Any:
    """Run `script` in a fresh interpreter with the project's settings; its RESULT line's JSON."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "DJANGO_SETTINGS_MODULE": "oms_site.settings"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))[6:])


def test_the_servers_start_up_loads_the_urlconf_before_it_serves() -> None:
    # given: a fresh interpreter that imported the application (as a server's worker does)
    # when: the server's lifespan start-up and shut-down run
    result = _fresh_interpreter_result(_LIFESPAN_SCRIPT)
    # then: the URLconf was not loaded by the import, and was loaded when start-up completed
    assert result == {
        "before": False,
        "sent": [["lifespan.startup.complete", True], ["lifespan.shutdown.complete", True]],
    }


_PRELOAD_SCRIPT = """
import asyncio, gc, json, sys
import oms_site.asgi as asgi
gc_before = list(gc.get_threshold())
names = ["redis", "channels_redis.pubsub", "oms_site.cache", "oms_site.channel_layers",
         "django.contrib.messages.storage.fallback", "django.contrib.sessions.serializers"]
before = sorted(n for n in names if n in sys.modules)

async def main():
    inbox = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    done = asyncio.Event()

    async def send(message):
        done.set()

    task = asyncio.create_task(
        asgi.application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    )
    await done.wait()
    task.cancel()

asyncio.run(main())
after = sorted(n for n in names if n in sys.modules)
print("RESULT" + json.dumps({"before": before, "after": after, "all": sorted(names),
    "gc_before": gc_before, "gc_after": list(gc.get_threshold())}))
"""


def test_the_servers_start_up_preloads_and_raises_the_collectors_first_threshold() -> None:
    # given: a fresh interpreter that imported the application (as a server's worker does)
    # when: the server's lifespan start-up completes
    result = _fresh_interpreter_result(_PRELOAD_SCRIPT)
    # then: the cache client, the channel layer and the session and message storages were
    # loaded by the start-up, none of them by the import
    assert result["before"] == []
    assert result["after"] == result["all"]
    # and the collector's first threshold went from Python's default to 7000, the others kept
    assert result["gc_before"] == [700, 10, 10]
    assert result["gc_after"] == [7000, 10, 10]


def test_the_script_prefix_and_context_locals_reach_every_step_of_a_request() -> None:
    # given a handler mounted under /oms whose view reads the script prefix and stores a
    # context-local value that request_finished reads back on the same request
    from asgiref.local import Local
    from django.urls import get_script_prefix

    handler = asgi.SyncChainASGIHandler()
    local = Local()
    seen: list[Any] = []

    def view(request: Any) -> HttpResponse:
        local.value = "from the view"
        return HttpResponse(get_script_prefix().encode())

    def finished(**kwargs: Any) -> None:
        seen.append(getattr(local, "value", None))

    handler.get_response = view  # type: ignore[method-assign]
    scope = {**_scope("/oms/page/"), "root_path": "/oms"}
    request_finished.connect(finished)
    try:
        # when it is requested
        messages = async_to_sync(_exchange)(handler, scope, disconnect=False)
    finally:
        request_finished.disconnect(finished)
    # then the view saw the mount's prefix, and the request's end saw what its view stored
    assert messages[0]["status"] == 200
    assert messages[1]["body"] == b"/oms/"
    assert seen == ["from the view"]


def test_an_answered_order_leaves_no_reference_cycle_through_the_handler(
    pm: Any, account: Any, instrument: Any
) -> None:
    # given: a PM's token, and the cyclic collector keeping what it finds instead of freeing it
    import asyncio
    import gc

    token = Token.objects.create(user=pm).key
    _post_order(token, "1")  # the lane, caches and connections exist before the measured order
    body = json.dumps(
        {
            "account": "ACC-A",
            "instrument": "ACME",
            "side": "buy",
            "quantity": "5",
            "order_type": "limit",
            "limit_price": "100.00",
        }
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/orders/",
        "raw_path": b"/api/v1/orders/",
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Token {token}".encode()),
        ],
    }
    statuses: list[int] = []

    async def serve_one() -> None:
        # As uvicorn does: the body first, then `http.disconnect` once the answer is complete
        # (the handler's disconnect listener then ends with RequestAborted).
        complete = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif not message.get("more_body"):
                complete.set()

        await asgi.application(scope, receive, send)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # when: one order is entered and answered
        async_to_sync(serve_one)()
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # then: it was created, and neither the handler's frames nor the order and its results
    # were left for the cyclic collector (reference counting freed them)
    assert statuses == [201]
    assert Order.objects.filter(quantity=Decimal("5")).count() == 1
    handler_frames = [
        o for o in found if type(o).__name__ == "frame" and o.f_code.co_filename == asgi.__file__
    ]
    assert handler_frames == []
    assert [
        type(o).__name__ for o in found if type(o).__name__ in ("Order", "ComplianceResult")
    ] == []
    # and nor were the request's own objects (Django's request with its lazy user and message
    # storages, DRF's view, request and response): _release broke their cycles
    # (what a first Redis connection of the test's loop leaves is not the request's)
    assert [
        type(o).__qualname__
        for o in found
        if type(o).__module__.split(".")[0] in ("django", "rest_framework", "oms_site", "orders")
    ] == []


class _Request:
    """What resolve_request reads of a request (no `urlconf` attribute: the default URLconf)."""

    def __init__(self, path_info: str) -> None:
        self.path_info = path_info
        self.resolver_match: Any = None


@pytest.fixture
def resolve_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths the URLconf's resolver walks, with a memo that starts empty."""
    from django.urls import get_resolver
    from django.urls.resolvers import URLResolver

    resolver = get_resolver()
    resolver.__dict__.pop("_oms_matches", None)
    calls: list[str] = []
    walk = URLResolver.resolve

    def counted(self: Any, path: str) -> Any:
        if self is resolver:
            calls.append(path)
        return walk(self, path)

    monkeypatch.setattr(URLResolver, "resolve", counted)
    yield calls
    resolver.__dict__.pop("_oms_matches", None)


def test_a_path_that_captures_nothing_is_resolved_once_and_its_match_shared(
    resolve_calls: list[str],
) -> None:
    # given the server's handler
    handler = asgi.SyncChainASGIHandler()
    first, second = _Request("/api/v1/orders/"), _Request("/api/v1/orders/")
    # when two requests for the order list are resolved
    match = handler.resolve_request(first)
    again = handler.resolve_request(second)
    # then the URLconf was walked once, and both requests carry the same match
    assert resolve_calls == ["/api/v1/orders/"]
    assert again is match
    assert first.resolver_match is match
    assert second.resolver_match is match
    assert (match.url_name, match.route, match.args, match.kwargs) == (
        "api-orders",
        "api/v1/orders/",
        (),
        {},
    )
    assert match.func.view_class.__name__ == "OrderListCreateView"


def test_a_path_with_arguments_or_without_a_route_is_resolved_every_time(
    resolve_calls: list[str],
) -> None:
    # given the server's handler
    from django.urls import Resolver404

    handler = asgi.SyncChainASGIHandler()
    # when an order's detail path is resolved twice
    one = handler.resolve_request(_Request("/api/v1/orders/7/"))
    two = handler.resolve_request(_Request("/api/v1/orders/7/"))
    # then each time walks the URLconf, and each match has its own arguments
    assert resolve_calls == ["/api/v1/orders/7/", "/api/v1/orders/7/"]
    assert one is not two
    assert (one.url_name, one.kwargs, two.kwargs) == ("api-order-detail", {"pk": 7}, {"pk": 7})
    # and a path no route matches raises Resolver404 every time, nothing remembered
    for _ in range(2):
        with pytest.raises(Resolver404):
            handler.resolve_request(_Request("/no/such/page/"))
    assert resolve_calls[2:] == ["/no/such/page/", "/no/such/page/"]
    from django.urls import get_resolver

    assert get_resolver().__dict__.get("_oms_matches", {}) == {}


def test_at_most_the_limit_of_paths_is_remembered(
    resolve_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a memo limited to one path, which already holds the order list
    monkeypatch.setattr(asgi, "RESOLVED_PATHS_MAX", 1)
    handler = asgi.SyncChainASGIHandler()
    handler.resolve_request(_Request("/api/v1/orders/"))
    # when another path without arguments is resolved twice, and the order list again
    handler.resolve_request(_Request("/api/v1/baskets/"))
    handler.resolve_request(_Request("/api/v1/baskets/"))
    handler.resolve_request(_Request("/api/v1/orders/"))
    # then the second path is walked each time, the first one only once
    assert resolve_calls == ["/api/v1/orders/", "/api/v1/baskets/", "/api/v1/baskets/"]


def test_a_requests_own_urlconf_and_a_changed_urlconf_are_resolved_by_django(
    resolve_calls: list[str], settings: Any
) -> None:
    # given the order list remembered for the default URLconf
    handler = asgi.SyncChainASGIHandler()
    remembered = handler.resolve_request(_Request("/api/v1/orders/"))
    # when a request names its own URLconf (as a middleware may set it)
    from django.urls import set_urlconf

    own = _Request("/blotter/")
    own.urlconf = "orders.urls"  # type: ignore[attr-defined]
    try:
        match = handler.resolve_request(own)
    finally:
        set_urlconf(None)
    # then that URLconf resolves it, and the default URLconf's memo is not used
    assert match is not remembered
    assert match.url_name == "blotter"
    # and when the project's URLconf changes, its new resolver resolves the path afresh
    settings.ROOT_URLCONF = "orders.api.order_urls"
    fresh = handler.resolve_request(_Request("/orders/"))
    assert (fresh.url_name, fresh.route) == ("api-orders", "orders/")
    assert resolve_calls == ["/api/v1/orders/"]


def test_language_prefixed_routes_are_resolved_by_django_every_time(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a URLconf whose routes carry the language prefix
    import sys
    import types

    from django.conf.urls.i18n import i18n_patterns
    from django.urls import path
    from django.utils import translation

    settings.USE_I18N = True
    module = types.ModuleType("oms_test_i18n_urls")
    module.urlpatterns = i18n_patterns(  # type: ignore[attr-defined]
        path("page/", lambda request: HttpResponse(b""), name="i18n-page")
    )
    monkeypatch.setitem(sys.modules, "oms_test_i18n_urls", module)
    settings.ROOT_URLCONF = "oms_test_i18n_urls"
    handler = asgi.SyncChainASGIHandler()
    # when its page is resolved twice under the default language
    with translation.override(settings.LANGUAGE_CODE):
        prefix = f"/{translation.get_language()}/page/"
        one = handler.resolve_request(_Request(prefix))
        two = handler.resolve_request(_Request(prefix))
    # then each request got its own match and nothing was remembered
    from django.urls import get_resolver

    assert (one.url_name, two.url_name) == ("i18n-page", "i18n-page")
    assert one is not two
    assert "_oms_matches" not in get_resolver().__dict__


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_a_requests_objects_are_dropped_only_once_its_answer_is_sent() -> None:
    # given a view whose streamed answer reads its request while it is being sent
    handler = asgi.SyncChainASGIHandler()
    seen: list[Any] = []

    def view(request: Any) -> StreamingHttpResponse:
        request.note = "kept while sending"

        def chunks() -> Iterator[bytes]:
            yield b"first,"
            seen.append((request.path, request.note))
            yield b"second"

        seen.append(request)
        return StreamingHttpResponse(chunks(), content_type="text/plain")

    handler.get_response = view  # type: ignore[method-assign]
    # when it is requested
    messages = async_to_sync(_exchange)(handler, _scope("/report/"), disconnect=False)
    # then the whole answer was sent, the request intact while it was
    assert messages[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in messages[1:]) == b"first,second"
    assert seen[1] == ("/report/", "kept while sending")
    # and once it was sent, the request holds nothing any more (no cycle for the collector)
    assert vars(seen[0]) == {}
