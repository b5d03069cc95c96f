"""The blotter websocket: entitled events only, with a per-connection sequence number."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from oms_site.realtime import FIRM_GROUP, account_group, desk_group
from oms_site.roles import role_keys, sees_everything


@database_sync_to_async
def _groups_for(user: Any) -> list[str]:
    from allocations.models import Account, Desk

    if sees_everything(user):
        return [FIRM_GROUP]
    keys = role_keys(user)
    groups: list[str] = []
    if "trader" in keys:
        groups += [
            desk_group(d) for d in Desk.objects.filter(traders=user).values_list("id", flat=True)
        ]
    if "pm" in keys:
        groups += [
            account_group(a)
            for a in Account.objects.filter(managers=user).values_list("id", flat=True)
        ]
    return groups


class BlotterConsumer(AsyncJsonWebsocketConsumer):
    """Joins the user's narrow groups; forwards events with `seq` increasing per connection."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.seq = 0
        self.joined = await _groups_for(user)
        self.seen: set[tuple[Any, Any, Any]] = set()
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "seq": 0, "groups": len(self.joined)})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "seq": self.seq})

    async def blotter_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        # A user in two groups (e.g. desk and account) would get the same event twice.
        key = (event.get("type"), event.get("order_id"), event.get("version"))
        if event.get("version") is not None:
            if key in self.seen:
                return
            self.seen.add(key)
            if len(self.seen) > 20000:
                self.seen.clear()
        self.seq += 1
        await self.send_json({**event, "seq": self.seq})
