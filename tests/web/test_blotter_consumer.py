"""The blotter websocket over the real ASGI stack and the real Redis channel layer.

Each test connects real users (session cookie or token) through oms_site.asgi.application and
publishes with orders.events, i.e. oms_site.realtime.publish_on_commit: the events leave only when
the transaction commits, so these tests use transaction=True.
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


async def _connect(
    *, cookie: str | None = None, token: str | None = None
) -> tuple[WebsocketCommunicator, bool, Any]:
    headers = [ORIGIN]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    path = f"/ws/blotter/?token={token}" if token else "/ws/blotter/"
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, detail = await comm.connect(timeout=3)
    return comm, connected, detail


async def _open(cookie: str) -> WebsocketCommunicator:
    comm, connected, _ = await _connect(cookie=cookie)
    assert connected
    hello = await comm.receive_json_from(timeout=3)
    assert hello["type"] == "hello"
    assert hello["seq"] == 0
    return comm


def _fill(order_id: int, qty: str, px: str) -> None:
    """Commit a fill on the order (cum qty, avg px, version) and publish it, as services do."""
    with transaction.atomic():
        order = Order.objects.select_for_update().select_related("account", "created_by")
        order = order.get(pk=order_id)
        Order.objects.filter(pk=order_id).update(
            cum_qty=F("cum_qty") + Decimal(qty),
            leaves_qty=F("leaves_qty") - Decimal(qty),
            avg_px=Decimal(px),
            status="partially_filled",
            version=F("version") + 1,
        )
        order.refresh_from_db()
        events.publish_order_updated(order)
        events.publish_execution_created(
            order, {"exec_id": f"E-{order_id}-{order.version}", "last_qty": qty, "last_px": px}
        )


def _touch(order_id: int, *, rollback: bool = False) -> None:
    """Bump the order's version and publish order.updated; optionally roll the change back."""
    with transaction.atomic():
        Order.objects.filter(pk=order_id).update(version=F("version") + 1, status="working")
        order = Order.objects.select_related("account", "created_by").get(pk=order_id)
        events.publish_order_updated(order)
        if rollback:
            transaction.set_rollback(True)


def test_events_reach_exactly_the_entitled_users_of_every_role(
    pm: Any,
    pm_other: Any,
    trader: Any,
    trader_other: Any,
    compliance_officer: Any,
    backoffice: Any,
    administrator: Any,
    account: Any,
    other_account: Any,
    instrument: Any,
) -> None:
    # given: one order on pm_a's account (trader_a's desk), one on pm_b's (trader_b's desk),
    # and one blotter connection per user
    order_a = make_order(account=account, instrument=instrument, created_by=pm)
    order_b = make_order(account=other_account, instrument=instrument, created_by=pm_other)
    users = {
        "pm_a": pm,
        "pm_b": pm_other,
        "trader_a": trader,
        "trader_b": trader_other,
        "compliance": compliance_officer,
        "backoffice": backoffice,
        "admin": administrator,
    }
    cookies = {name: session_cookie(user) for name, user in users.items()}

    async def scenario() -> dict[str, list[tuple[str, int, int, str]]]:
        comms = {name: await _open(cookie) for name, cookie in cookies.items()}
        # when: each order is updated once (committed)
        await database_sync_to_async(_touch)(order_a.pk)
        await database_sync_to_async(_touch)(order_b.pk)
        got: dict[str, list[tuple[str, int, int, str]]] = {}
        for name, comm in comms.items():
            got[name] = []
            while not await comm.receive_nothing(timeout=QUIET):
                msg = await comm.receive_json_from()
                got[name].append((msg["type"], msg["seq"], msg["order_id"], msg["data"]["account"]))
            await comm.disconnect()
        return got

    got = async_to_sync(scenario)()

    # then: PMs and traders get their own account's/desk's order only; oversight gets both
    a = ("order.updated", 1, order_a.pk, "ACC-A")
    b_first = ("order.updated", 1, order_b.pk, "ACC-B")
    b_second = ("order.updated", 2, order_b.pk, "ACC-B")
    assert got == {
        "pm_a": [a],
        "pm_b": [b_first],
        "trader_a": [a],
        "trader_b": [b_first],
        "compliance": [a, b_second],
        "backoffice": [a, b_second],
        "admin": [a, b_second],
    }


def test_event_carries_the_order_row_and_its_version(
    pm: Any, account: Any, instrument: Any
) -> None:
    # given: pm_a connected, and an approved order of 100 on their account
    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(pm)

    async def scenario() -> list[dict[str, Any]]:
        comm = await _open(cookie)
        # when: a fill of 40 at 100.25 is committed
        await database_sync_to_async(_fill)(order.pk, "40", "100.25")
        msgs = [await comm.receive_json_from(timeout=3), await comm.receive_json_from(timeout=3)]
        assert await comm.receive_nothing(timeout=QUIET)
        await comm.disconnect()
        return msgs

    updated, execution = async_to_sync(scenario)()

    # then: order.updated then execution.created, both at version 2, numbered 1 and 2
    assert set(updated) == {"type", "seq", "order_id", "version", "data"}
    assert (updated["type"], updated["seq"], updated["order_id"], updated["version"]) == (
        "order.updated",
        1,
        order.pk,
        2,
    )
    assert updated["data"]["status"] == "partially_filled"
    assert Decimal(updated["data"]["cum_qty"]) == Decimal("40")
    assert Decimal(updated["data"]["leaves_qty"]) == Decimal("60")
    assert Decimal(updated["data"]["avg_px"]) == Decimal("100.25")
    assert updated["data"]["instrument"] == "ACME"
    assert updated["data"]["version"] == 2
    assert (execution["type"], execution["seq"], execution["version"]) == (
        "execution.created",
        2,
        2,
    )
    assert execution["data"]["execution"] == {
        "exec_id": f"E-{order.pk}-2",
        "last_qty": "40",
        "last_px": "100.25",
    }
    assert execution["data"]["order"]["cum_qty"] == updated["data"]["cum_qty"]


def test_nothing_is_sent_for_a_rolled_back_change(pm: Any, account: Any, instrument: Any) -> None:
    # given: pm_a connected
    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(pm)

    async def scenario() -> tuple[bool, dict[str, Any]]:
        comm = await _open(cookie)
        # when: one change is rolled back, then another is committed
        await database_sync_to_async(_touch)(order.pk, rollback=True)
        silent = await comm.receive_nothing(timeout=QUIET)
        await database_sync_to_async(_touch)(order.pk)
        msg = await comm.receive_json_from(timeout=3)
        await comm.disconnect()
        return silent, msg

    silent, msg = async_to_sync(scenario)()

    # then: the rolled-back change sent nothing; the committed one arrives as seq 1, version 2
    assert silent is True
    assert (msg["seq"], msg["order_id"], msg["version"]) == (1, order.pk, 2)


def test_a_user_in_two_groups_gets_each_event_once_with_consecutive_seq(
    pm: Any, desk: Any, account: Any, instrument: Any
) -> None:
    # given: pm_a also trades the account's desk, so they sit in its account and desk groups
    pm.groups.add(roles_group(roles.TRADER))
    desk.traders.add(pm)
    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(pm)

    async def scenario() -> list[tuple[int, int]]:
        comm = await _open(cookie)
        # when: the order changes twice
        await database_sync_to_async(_touch)(order.pk)
        await database_sync_to_async(_touch)(order.pk)
        got = []
        while not await comm.receive_nothing(timeout=QUIET):
            msg = await comm.receive_json_from()
            got.append((msg["seq"], msg["version"]))
        await comm.disconnect()
        return got

    # then: two messages, not four, numbered 1 and 2
    assert async_to_sync(scenario)() == [(1, 2), (2, 3)]


def test_anonymous_and_role_less_connections_are_refused(db: Any, role_groups: None) -> None:
    # given: a logged-in user without any role
    nobody = f.UserFactory(username="nobody")
    cookie = session_cookie(nobody)

    async def scenario() -> list[tuple[bool, Any]]:
        results = []
        for kwargs in ({}, {"token": "not-a-token"}, {"cookie": "bogus"}, {"cookie": cookie}):
            _comm, connected, detail = await _connect(**kwargs)
            results.append((connected, detail))
        return results

    # when / then: no session, a bad token and a bad cookie are unauthenticated; no role, forbidden
    assert async_to_sync(scenario)() == [
        (False, CLOSE_UNAUTHENTICATED),
        (False, CLOSE_UNAUTHENTICATED),
        (False, CLOSE_UNAUTHENTICATED),
        (False, CLOSE_NO_ROLE),
    ]


def test_token_authenticates_and_ping_is_answered(
    trader: Any, account: Any, instrument: Any, pm: Any
) -> None:
    # given: the trader connects with a DRF token (a script, not a browser)
    token = Token.objects.create(user=trader).key
    order = make_order(account=account, instrument=instrument, created_by=pm)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        comm, connected, _ = await _connect(token=token)
        assert connected
        hello = await comm.receive_json_from(timeout=3)
        # when: the order on the trader's desk changes, then the client pings
        await database_sync_to_async(_touch)(order.pk)
        event = await comm.receive_json_from(timeout=3)
        await comm.send_json_to({"type": "ping"})
        pong = await comm.receive_json_from(timeout=3)
        await comm.disconnect()
        return hello, event, pong

    hello, event, pong = async_to_sync(scenario)()

    # then
    assert hello == {"type": "hello", "seq": 0, "roles": ["trader"], "groups": 1}
    assert (event["type"], event["seq"], event["order_id"]) == ("order.updated", 1, order.pk)
    assert pong == {"type": "pong", "seq": 1}


def roles_group(name: str) -> Any:
    """The Django group of a role."""
    from django.contrib.auth.models import Group

    return Group.objects.get(name=name)


def test_many_events_of_one_commit_travel_coalesced_and_arrive_one_frame_each_in_order(
    pm: Any, account: Any, instrument: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a PM connected, and a record of the group messages the channel layer publishes
    # (realtime hands a batch to group_send_many: one pipelined round trip)
    from channels.layers import get_channel_layer

    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(pm)
    layer = get_channel_layer()
    sent: list[tuple[str, str]] = []
    original = layer.group_send_many

    async def counting(items: list[tuple[str, dict[str, Any]]]) -> None:
        sent.extend((group, message["type"]) for group, message in items)
        await original(items)

    monkeypatch.setattr(layer, "group_send_many", counting)

    def five_changes_in_one_commit() -> None:
        # As services publish a batch (a basket, a block fill): one call, one hop after commit.
        with transaction.atomic():
            versions = []
            for _ in range(5):
                Order.objects.filter(pk=order.pk).update(version=F("version") + 1)
                versions.append(
                    Order.objects.select_related("account", "created_by").get(pk=order.pk)
                )
            events.publish_orders_updated(versions)

    async def scenario() -> list[tuple[int, int]]:
        comm = await _open(cookie)
        # when: five versions of the order are published by one transaction
        await database_sync_to_async(five_changes_in_one_commit)()
        got = []
        while not await comm.receive_nothing(timeout=QUIET):
            msg = await comm.receive_json_from()
            got.append((msg["seq"], msg["version"]))
        await comm.disconnect()
        return got

    # then: five frames numbered 1..5 with versions 2..6, from one message per group
    assert async_to_sync(scenario)() == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert sorted(sent) == sorted(
        (group, "blotter.events")
        for group in [f"acct-{account.pk}", "firm", f"desk-{account.desk_id}"]
    )


def test_coalesce_keeps_order_and_splits_long_runs() -> None:
    from oms_site import realtime

    def ev(n: int) -> dict[str, Any]:
        return {"type": "blotter.event", "event": {"n": n}}

    assert realtime._coalesce([ev(1)]) == [ev(1)]
    assert realtime._coalesce([ev(1), ev(2)]) == [
        {"type": "blotter.events", "events": [{"n": 1}, {"n": 2}]}
    ]
    other = {"type": "something.else"}
    assert realtime._coalesce([ev(1), other, ev(2), ev(3)]) == [
        ev(1),
        other,
        {"type": "blotter.events", "events": [{"n": 2}, {"n": 3}]},
    ]
    long = realtime._coalesce([ev(n) for n in range(realtime.MAX_EVENTS_PER_MESSAGE + 1)])
    assert [m["type"] for m in long] == ["blotter.events", "blotter.event"]
    assert len(long[0]["events"]) == realtime.MAX_EVENTS_PER_MESSAGE
    assert long[1]["event"] == {"n": realtime.MAX_EVENTS_PER_MESSAGE}


def test_a_layer_lost_message_closes_the_connection_for_a_resync(
    compliance_officer: Any, account: Any, instrument: Any, pm: Any
) -> None:
    # given: a compliance officer connected (firm group) and an order to publish about
    from channels.layers import get_channel_layer

    from orders.consumers import CLOSE_RESYNC

    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(compliance_officer)

    async def scenario() -> tuple[dict[str, Any], bool]:
        comm = await _open(cookie)
        # when: the channel layer reports it may have lost this process's messages, then an
        # event is published
        await get_channel_layer().group_send("firm", {"type": "layer.lost"})
        closed = await comm.receive_output(timeout=3)
        await database_sync_to_async(_touch)(order.pk)
        nothing_after = await comm.receive_nothing(timeout=QUIET)
        await comm.disconnect()
        return closed, nothing_after

    closed, nothing_after = async_to_sync(scenario)()

    # then: the connection closes with the resync code and forwards nothing more
    assert closed == {"type": "websocket.close", "code": CLOSE_RESYNC}
    assert nothing_after is True


def test_blotter_events_are_forwarded_without_a_database_thread_hop(
    pm: Any, account: Any, instrument: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a PM connected, and a count of Channels' per-message database clean-ups
    import channels.consumer

    order = make_order(account=account, instrument=instrument, created_by=pm)
    cookie = session_cookie(pm)
    cleanups: list[int] = []
    original = channels.consumer.aclose_old_connections

    async def counting() -> None:
        cleanups.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)

    async def scenario() -> tuple[list[tuple[str, int]], int, dict[str, Any], int]:
        comm = await _open(cookie)
        before = len(cleanups)
        # when: an event is published, then the client pings
        await database_sync_to_async(_touch)(order.pk)
        msg = await comm.receive_json_from(timeout=3)
        for_event = len(cleanups) - before
        await comm.send_json_to({"type": "ping"})
        pong = await comm.receive_json_from(timeout=3)
        for_ping = len(cleanups) - before - for_event
        await comm.disconnect()
        return [(msg["type"], msg["seq"])], for_event, pong, for_ping

    frames, for_event, pong, for_ping = async_to_sync(scenario)()

    # then: the event arrives with no clean-up hop; the ping still gets Channels' dispatch
    assert frames == [("order.updated", 1)]
    assert for_event == 0
    assert pong == {"type": "pong", "seq": 1}
    assert for_ping == 1
