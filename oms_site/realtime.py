"""Blotter events: built inside the transaction, sent to narrow Channels groups after commit.

Groups: `acct-<account id>` (PMs of the account), `desk-<desk id>` (the desk's traders) and
`firm` (compliance, back office, administrators). Delivery is at most once, so every event
carries the order's version; clients refetch on a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from oms_site.audit import json_safe

log = logging.getLogger(__name__)

FIRM_GROUP = "firm"


def account_group(account_id: int) -> str:
    """The group of everyone entitled to one account's events."""
    return f"acct-{account_id}"


def desk_group(desk_id: int) -> str:
    """The group of a desk's traders."""
    return f"desk-{desk_id}"


def groups_for_account(account_id: int, desk_id: int | None) -> list[str]:
    """Every group an event about this account's order goes to."""
    groups = [account_group(account_id), FIRM_GROUP]
    if desk_id is not None:
        groups.append(desk_group(desk_id))
    return groups


def _send(groups: Iterable[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = async_to_sync(layer.group_send)
    for group in groups:
        try:
            send(group, message)
        except Exception:  # a full channel or Redis outage must not break the committed write
            log.exception("blotter event to %s not delivered", group)


def publish_on_commit(
    *,
    event_type: str,
    order_id: int | None,
    version: int | None,
    data: dict[str, Any],
    groups: Iterable[str],
) -> None:
    """Queue a blotter event to be sent once the current transaction commits."""
    message = {
        "type": "blotter.event",
        "event": {
            "type": event_type,
            "order_id": order_id,
            "version": version,
            "data": json_safe(data),
        },
    }
    targets = list(dict.fromkeys(groups))
    transaction.on_commit(lambda: _send(targets, message))
