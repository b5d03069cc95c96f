"""The blotter websocket per role: who may connect, what each receives, and what nobody can ask for.

Over the real ASGI application (origin check, session/token auth, URL router) and the real Redis
channel layer; events leave only on commit, hence transaction=True.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.db import transaction
from django.db.models import F
from rest_framework.authtoken.models import Token

from oms_site import roles
from oms_site.asgi import application
from orders import events
from orders.consumers import CLOSE_NO_ROLE, CLOSE_UNAUTHENTICATED
from orders.models import Order
from tests import factories as f
from tests.web.conftest import make_order, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
QUIET = 0.3  # seconds a connection must stay silent to count as "received nothing"


async def _connect(headers: list[tuple[bytes, bytes]], path: str = "/ws/blotter/") -> Any:
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, detail = await comm.connect(timeout=3)
    return comm, connected, detail


def _touch(order_id: int) -> None:
    with transaction.atomic():
        Order.objects.filter(pk=order_id).update(version=F("version") + 1, status="working")
        events.publish_order_updated(
            Order.objects.select_related("account", "created_by").get(pk=order_id)
        )


def test_connections_and_deliveries_per_role(
    pm: Any,
    trader: Any,
    compliance_officer: Any,
    backoffice: Any,
    administrator: Any,
    account: Any,
    other_account: Any,
    pm_other: Any,
    instrument: Any,
) -> None:
    # given: one order on pm_a's account (trader_a's desk), one on pm_b's (another desk)
    order_a = make_order(account=account, instrument=instrument, created_by=pm)
    order_b = make_order(account=other_account, instrument=instrument, created_by=pm_other)
    norole = f.UserFactory(username="norole_ws")
    users = {
        "norole": norole,
        "pm": pm,
        "trader": trader,
        "compliance": compliance_officer,
        "backoffice": backoffice,
        "admin": administrator,
    }
    cookies = {name: session_cookie(user) for name, user in users.items()}

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        comms = {}
        _c, connected, detail = await _connect([ORIGIN])
        out["anonymous"] = (connected, detail)
        for name, cookie in cookies.items():
            comm, connected, detail = await _connect(
                [ORIGIN, (b"cookie", f"sessionid={cookie}".encode())]
            )
            if not connected:
                out[name] = (connected, detail)
                continue
            hello = await comm.receive_json_from(timeout=3)
            # a client cannot widen what it receives: subscribe-like messages are ignored
            for attempt in (
                {"type": "subscribe", "group": "firm"},
                {"type": "group_add", "group": f"acct-{other_account.pk}"},
                {"type": "blotter.event", "event": {"type": "order.updated", "version": 99}},
            ):
                await comm.send_json_to(attempt)
            comms[name] = comm
            out[name] = (connected, hello["roles"], hello["groups"])
        await database_sync_to_async(_touch)(order_a.pk)
        await database_sync_to_async(_touch)(order_b.pk)
        for name, comm in comms.items():
            got = []
            while not await comm.receive_nothing(timeout=QUIET):
                event = await comm.receive_json_from(timeout=3)
                got.append((event["type"], event["order_id"], event["seq"]))
            out[name] = (*out[name], sorted(got))
            await comm.disconnect()
        return out

    a, b = order_a.pk, order_b.pk
    assert async_to_sync(scenario)() == {
        "anonymous": (False, CLOSE_UNAUTHENTICATED),
        "norole": (False, CLOSE_NO_ROLE),
        "pm": (True, ["pm"], 1, [("order.updated", a, 1)]),
        "trader": (True, ["trader"], 1, [("order.updated", a, 1)]),
        "compliance": (
            True,
            ["compliance"],
            1,
            [("order.updated", a, 1), ("order.updated", b, 2)],
        ),
        "backoffice": (
            True,
            ["backoffice"],
            1,
            [("order.updated", a, 1), ("order.updated", b, 2)],
        ),
        "admin": (True, ["admin"], 1, [("order.updated", a, 1), ("order.updated", b, 2)]),
    }


def test_foreign_origins_bad_tokens_and_unknown_paths_are_refused(
    pm: Any, role_groups: None
) -> None:
    cookie = session_cookie(pm)
    inactive = f.UserFactory(username="gone", role=roles.PM, is_active=False)
    inactive_token = Token.objects.create(user=inactive).key
    pm_token = Token.objects.create(user=pm).key
    session = (b"cookie", f"sessionid={cookie}".encode())

    async def scenario() -> list[Any]:
        results = []
        for headers, path in (
            # cross-site websocket hijacking: a logged-in browser on another site's page
            ([(b"origin", b"https://evil.example"), session], "/ws/blotter/"),
            ([session], "/ws/blotter/"),  # no Origin at all
            ([ORIGIN], f"/ws/blotter/?token={inactive_token}"),
            ([ORIGIN, session], "/ws/blotter/?token=not-a-token"),  # a bad token is no one
            ([ORIGIN, (b"authorization", f"Token {pm_token}x".encode())], "/ws/blotter/"),
            ([ORIGIN, (b"authorization", f"Token {pm_token}".encode())], "/ws/blotter/"),
        ):
            comm, connected, detail = await _connect(headers, path)
            results.append((connected, detail if not connected else "accepted"))
            if connected:
                await comm.disconnect()
        try:
            await _connect([ORIGIN, session], "/ws/other/")
        except ValueError as exc:
            results.append(str(exc))
        return results

    assert async_to_sync(scenario)() == [
        (False, 1000),
        (False, 1000),
        (False, CLOSE_UNAUTHENTICATED),
        (False, CLOSE_UNAUTHENTICATED),
        (False, CLOSE_UNAUTHENTICATED),
        (True, "accepted"),
        "No route found for path 'ws/other/'.",
    ]


def test_a_pm_with_no_account_receives_nothing(
    role_groups: None, account: Any, pm: Any, instrument: Any
) -> None:
    lonely = f.UserFactory(username="pm_lonely", role=roles.PM)
    cookie = session_cookie(lonely)
    order = make_order(account=account, instrument=instrument, created_by=pm, quantity=Decimal("5"))

    async def scenario() -> tuple[Any, bool]:
        comm, connected, _ = await _connect([ORIGIN, (b"cookie", f"sessionid={cookie}".encode())])
        assert connected
        hello = await comm.receive_json_from(timeout=3)
        await database_sync_to_async(_touch)(order.pk)
        silent = await comm.receive_nothing(timeout=QUIET)
        await comm.disconnect()
        return hello, silent

    hello, silent = async_to_sync(scenario)()
    assert hello == {"type": "hello", "seq": 0, "roles": ["pm"], "groups": 0}
    assert silent
