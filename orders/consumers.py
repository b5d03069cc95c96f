"""The blotter websocket: entitled events only, with a per-connection sequence number.

Entitlement is decided once, at connect, by the Channels groups the connection joins:
`acct-<id>` for each account a PM manages, `desk-<id>` for each desk a trader sits on, and `firm`
for compliance, back office and administrators (see oms_site.realtime). Publishers only ever send
to those groups, so a connection can receive nothing it was not entitled to when it connected;
a change of entitlements takes effect on the next connect (the browser reconnects and refetches).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from oms_site.realtime import FIRM_GROUP, account_group, desk_group
from oms_site.roles import role_keys, sees_everything

log = logging.getLogger(__name__)

# Close codes in the 4000 range are the application's own (RFC 6455 §7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NO_ROLE = 4403
# The channel layer may have lost events for this connection: reconnect and refetch.
CLOSE_RESYNC = 4409
# Messages whose handlers never touch the database (see BlotterConsumer.dispatch).
NO_DATABASE = frozenset({"blotter.event", "blotter.events", "layer.lost"})
# How many (type, order, version) keys a connection remembers to drop duplicates.
DEDUP_WINDOW = 5000


@database_sync_to_async
def groups_for_user(user: Any) -> list[str]:
    """The Channels groups a user's blotter connection joins (empty: entitled to nothing)."""
    from allocations.models import Account, Desk

    if sees_everything(user):
        return [FIRM_GROUP]
    keys = role_keys(user)
    groups: list[str] = []
    if "trader" in keys:
        desk_ids = Desk.objects.filter(traders=user).order_by("pk").values_list("pk", flat=True)
        groups += [desk_group(d) for d in desk_ids]
    if "pm" in keys:
        account_ids = (
            Account.objects.filter(managers=user).order_by("pk").values_list("pk", flat=True)
        )
        groups += [account_group(a) for a in account_ids]
    return groups


@database_sync_to_async
def _role_keys(user: Any) -> list[str]:
    return sorted(role_keys(user))


class BlotterConsumer(AsyncJsonWebsocketConsumer):
    """Joins the user's narrow groups; forwards events with `seq` increasing per connection."""

    async def connect(self) -> None:
        """Refuse anonymous and role-less users; otherwise join the entitled groups."""
        self.joined: list[str] = []
        self.closing = False
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        roles = await _role_keys(user)
        if not roles:
            await self.close(code=CLOSE_NO_ROLE)
            return
        self.seq = 0
        self.seen: OrderedDict[tuple[Any, Any, Any], None] = OrderedDict()
        self.joined = await groups_for_user(user)
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        # The client treats "hello" as the moment to (re)fetch its snapshot through the API:
        # events published from now on reach this connection, so nothing falls in between.
        await self.send_json(
            {"type": "hello", "seq": 0, "roles": roles, "groups": len(self.joined)}
        )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle a message; blotter events go straight to their handler, without a thread hop.

        Why: Channels' dispatch first closes stale database connections in a worker thread, a
        thread hop per message per connection (11 % of a busy web process's event loop, and
        every connection's events queue behind that one thread). These handlers only forward
        what they were given; the database is used in connect, through database_sync_to_async.
        """
        if message.get("type") in NO_DATABASE:
            await getattr(self, get_handler_name(message))(message)
            return
        await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        """Leave every joined group."""
        for group in self.joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # Redis down: the subscription went with it
                log.warning("could not leave %s", group, exc_info=True)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Answer the client's keep-alive pings; everything else from the browser is ignored."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "seq": self.seq})

    async def blotter_event(self, message: dict[str, Any]) -> None:
        """Forward one group event, numbered by this connection's `seq`."""
        await self._forward(message["event"])

    async def blotter_events(self, message: dict[str, Any]) -> None:
        """Forward a group's coalesced events one frame each, in the order they were sent."""
        for event in message["events"]:
            await self._forward(event)

    async def layer_lost(self, message: dict[str, Any]) -> None:
        """Close, so the client reconnects and refetches: the layer may have dropped events."""
        if not self.closing:
            self.closing = True
            await self.close(code=CLOSE_RESYNC)

    async def _forward(self, event: dict[str, Any]) -> None:
        if self.closing:
            return
        if event.get("version") is not None:
            # A PM who also trades the desk sits in two groups and would get each event twice.
            key = (event.get("type"), event.get("order_id"), event.get("version"))
            if key in self.seen:
                return
            self.seen[key] = None
            if len(self.seen) > DEDUP_WINDOW:
                self.seen.popitem(last=False)
        self.seq += 1
        await self.send_json({**event, "seq": self.seq})
