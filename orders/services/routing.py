"""Routing: orders and blocks to brokers through the outbox, cancel/replace requests, kill switch.

How an order leaves the firm (and why nothing is lost or sent twice): the service changes the
order (→ pending_new), creates the Placement and writes the outbound FIX message as an
`OutboxMessage` row in ONE transaction, and issues `NOTIFY oms_outbox` inside it (PostgreSQL
delivers a notification only when the transaction commits). The FIX gateway process LISTENs on
that channel and also sweeps pending rows every second, so a missed notification only delays a
message. The gateway records the outbound messages (a chunk per durable commit) before QuickFIX
sends them, and writes their MsgSeqNums with the rows marked sent afterwards; on restart a
pending row whose message was recorded and numbered (in the database or in QuickFIX's store)
below the session's next sequence number is not sent again (QuickFIX's resend covers it). See
orders.fix.django_handler.

Lock order everywhere (so cancels, fills and the kill switch never deadlock): placements by pk,
then blocks by pk, then orders by pk, then audit streams (sorted, by the audit kernel).

Best execution (`broker=None`): every active broker with an enabled FIX session is quoted from the
instrument's reference price through that broker's quote model (the simulator's BrokerProfile:
spread and skew; a broker without a model quotes the reference bid/ask); a buy goes to the lowest
ask, a sell to the highest bid, ties to the lower Broker.rank, then the code. The choice and the
quotes behind it are stored in Placement.route_reason and in the audit event.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from allocations.models import Account, Desk
from oms_site import refcache
from oms_site.audit import AuditEntry, audit_record_many
from oms_site.errors import (
    ConflictError,
    DomainError,
    NotFound,
    NotPermitted,
    ValidationError,
    field_error,
)
from oms_site.roles import has_role
from oms_site.rows import rows_update
from orders.enums import (
    BUY_SIDES,
    BlockStatus,
    KillScope,
    OrderStatus,
    OrderType,
    OutboxStatus,
    PlacementStatus,
)
from orders.events import publish_order_updated, publish_orders_updated
from orders.fix.messages import MSG_NEW_ORDER_SINGLE as MSG_NEW
from orders.fix.messages import MSG_ORDER_CANCEL_REPLACE_REQUEST as MSG_REPLACE
from orders.fix.messages import MSG_ORDER_CANCEL_REQUEST as MSG_CANCEL
from orders.fix.messages import CancelRequest, NewOrder, OutboundRequest, ReplaceRequest
from orders.fix.simulator import DEFAULT_BROKERS, BrokerProfile, make_quote
from orders.models import (
    Block,
    Broker,
    FixSession,
    Instrument,
    KillSwitch,
    Order,
    OutboxMessage,
    Placement,
    RouteRequest,
    RouteRequestStatus,
)
from orders.selectors import active_kill_switches, kill_switch_covering, orders_visible_to
from orders.state import AT_BROKER, CANCELABLE_BEFORE_ROUTING, ensure_transition

OUTBOX_CHANNEL = "oms_outbox"
S = OrderStatus
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
# Quote models of the brokers the venue simulator plays (demo and tests); a firm with real
# brokers would load theirs from market data instead.
QUOTE_MODELS: dict[str, BrokerProfile] = {p.comp_id: p for p in DEFAULT_BROKERS}
# Orders a cancel request can be sent for (pending_replace waits for the broker's answer).
CANCELABLE_AT_BROKER = frozenset(AT_BROKER | {S.PENDING_NEW})
KILL_CHUNK = 500


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def new_cl_ord_id(kind: str = "N") -> str:
    """A fresh ClOrdID of 20 characters: a kind letter (N/C/R) and 19 random hex digits."""
    return kind + uuid.uuid4().hex[:19]


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _require_role(user: Any, *roles: str, what: str) -> None:
    if not has_role(user, *roles):
        raise NotPermitted(f"Only {' or '.join(roles)} users may {what}.")


def _as_pk(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotFound(f"No such {what}.") from None


def outbox_notify(session_ids: Iterable[int | None] = ()) -> None:
    """Wake the gateway when the current transaction commits (NOTIFY is transactional).

    The payload is the FixSession pk, so only that session's sender wakes; no ids (or None)
    wakes every sender. PostgreSQL folds identical notifications of one transaction.
    """
    payloads = sorted({str(i) for i in session_ids if i is not None}) or [""]
    with connection.cursor() as cursor:
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", [OUTBOX_CHANNEL, payload])


def _ensure_version(obj: Any, version: Any) -> None:
    if version is None or version == "":
        return
    try:
        expected = int(version)
    except (TypeError, ValueError):
        raise field_error("version", "must be an integer") from None
    if obj.version != expected:
        raise ConflictError(
            f"The order changed meanwhile (version {obj.version}, you sent {expected}).",
            code="stale_version",
            errors={"version": [f"current version is {obj.version}"]},
        )


def _ensure_no_kill_switch(
    accounts: Iterable[Account], values: dict[Hashable, Any] | None = None
) -> None:
    # From the reference-data cache: its version is read now, in the caller's transaction
    # after its order locks, where the live query used to run, and engaging a switch bumps
    # it, so a route sees a switch exactly when that query would have.
    if values is None:
        values = refcache.generation()
    switches = refcache.cached(values, "orders.kill_switches", active_kill_switches)
    hit = kill_switch_covering(accounts, switches)
    if hit is not None:
        from orders.services.orders import kill_switch_conflict

        raise kill_switch_conflict(hit, "routing is stopped")


# ----------------------------------------------------------------------------------------------
# Outbox payloads (JSON-safe) and back
# ----------------------------------------------------------------------------------------------


def _payload(request: OutboundRequest) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in request.__slots__:  # type: ignore[attr-defined]
        value = getattr(request, name)
        if name == "transact_time":
            continue  # stamped when the gateway actually sends it
        if isinstance(value, Decimal):
            value = _plain(value)
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        data[name] = value
    return data


def outbox_request(msg_type: str, payload: dict[str, Any]) -> OutboundRequest:
    """Rebuild the NewOrder / CancelRequest / ReplaceRequest stored in an outbox row."""
    import datetime as dt

    data = dict(payload)
    for name in ("quantity", "limit_price", "stop_price"):
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    if data.get("expire_date"):
        data["expire_date"] = dt.date.fromisoformat(data["expire_date"])
    cls = {MSG_NEW: NewOrder, MSG_CANCEL: CancelRequest, MSG_REPLACE: ReplaceRequest}[msg_type]
    fields = set(cls.__slots__)  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in data.items() if k in fields})


def _outbox_row(
    placement: Placement, session: FixSession, request: OutboundRequest, msg_type: str
) -> OutboxMessage:
    return OutboxMessage(
        fix_session=session,
        placement=placement,
        msg_type=msg_type,
        cl_ord_id=request.cl_ord_id,
        payload=_payload(request),
        status=OutboxStatus.PENDING,
    )


# ----------------------------------------------------------------------------------------------
# Best execution
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The broker chosen for a route, its FIX session and the reason recorded."""

    broker: Broker
    session: FixSession
    reason: str
    quotes: dict[str, dict[str, str]]


def _routable_sessions() -> dict[int, FixSession]:
    """Broker pk -> its first enabled FIX session, for active brokers (broker loaded)."""
    sessions: dict[int, FixSession] = {}
    qs = FixSession.objects.filter(enabled=True, broker__active=True).select_related("broker")
    for session in qs.order_by("pk"):
        sessions.setdefault(session.broker_id, session)
    return sessions


def _sessions_by_broker(
    broker_code: str | None, values: dict[Hashable, Any]
) -> dict[int, FixSession]:
    # Cached instances are shared by every route of the process: read them, never change them
    # (a new placement or outbox row only points at them).
    sessions: dict[int, FixSession] = refcache.cached(
        values, "routing.sessions", _routable_sessions
    )
    if broker_code:
        return {pk: s for pk, s in sessions.items() if s.broker.code == broker_code}
    return dict(sessions)


def _brokers_by_code() -> dict[str, Broker]:
    return {broker.code: broker for broker in Broker.objects.all()}


def broker_quote(broker: Broker, instrument: Any) -> tuple[Decimal, Decimal] | None:
    """(bid, ask) of a broker for an instrument from its quote model, or None without a price."""
    ref = getattr(instrument, "price", None)
    if ref is None:
        return None
    model = QUOTE_MODELS.get(broker.code)
    if model is None:
        return ref.bid, ref.ask
    quote = make_quote(model, ref.last, instrument.tick_size)
    return quote.bid, quote.ask


def route_choose(
    *,
    instrument: Any,
    side: str,
    broker_code: str | None,
    values: dict[Hashable, Any] | None = None,
) -> RouteChoice:
    """The broker (given, or by best quoted price, ties by rank) and its enabled FIX session.

    Brokers and sessions come from the reference-data cache `values` (read now if not given).
    """
    if values is None:
        values = refcache.generation()
    if broker_code:
        broker = refcache.cached(values, "routing.brokers", _brokers_by_code).get(broker_code)
        if broker is None:
            raise field_error("broker", f"unknown broker {broker_code!r}", code="unknown_broker")
        if not broker.active:
            raise ConflictError(f"Broker {broker_code} is not active.", code="broker_inactive")
        session = _sessions_by_broker(broker_code, values).get(broker.pk)
        if session is None:
            raise ConflictError(
                f"Broker {broker_code} has no enabled FIX session.", code="no_fix_session"
            )
        return RouteChoice(broker, session, f"chosen by trader: {broker.code}", {})
    sessions = _sessions_by_broker(None, values)
    if not sessions:
        raise ConflictError("No broker has an enabled FIX session.", code="no_fix_session")
    buy = side in BUY_SIDES
    ranked: list[tuple[tuple[Any, ...], Broker]] = []
    quotes: dict[str, dict[str, str]] = {}
    for session in sessions.values():
        broker = session.broker
        quote = broker_quote(broker, instrument)
        if quote is None:
            ranked.append(((1, Decimal(0), broker.rank, broker.code), broker))
            continue
        bid, ask = quote
        quotes[broker.code] = {"bid": _plain(bid) or "0", "ask": _plain(ask) or "0"}
        key_price = ask if buy else -bid
        ranked.append(((0, key_price, broker.rank, broker.code), broker))
    ranked.sort(key=lambda item: item[0])
    best = ranked[0][1]
    if best.code in quotes:
        what = "ask" if buy else "bid"
        others = ", ".join(
            f"{code} {q[what]}" for code, q in sorted(quotes.items()) if code != best.code
        )
        reason = (
            f"best execution: {'buy' if buy else 'sell'} at {best.code} {what} "
            f"{quotes[best.code][what]}"
            + (f" (vs {others})" if others else "")
            + "; ties by broker rank"
        )
    else:
        reason = f"best execution: no quotes, lowest broker rank {best.code}"
    return RouteChoice(best, sessions[best.pk], reason, quotes)


# ----------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------


def _transition(
    order: Order, target: str, *, action: str, entries: list[AuditEntry], actor: Any, meta: dict
) -> None:
    ensure_transition(order.status, target)
    before = {"status": order.status, "version": order.version}
    order.status = target
    order.version += 1
    order.updated_at = timezone.now()
    entries.append(
        AuditEntry(
            action=action,
            object_type="order",
            object_id=str(order.pk),
            before=before,
            after={"status": order.status, "version": order.version},
            meta=meta,
            actor=actor,
        )
    )


def _placement_audit(placement: Placement, *, action: str, actor: Any, meta: dict) -> AuditEntry:
    return AuditEntry(
        action=action,
        object_type="placement",
        object_id=str(placement.pk),
        after={
            "cl_ord_id": placement.cl_ord_id,
            "broker": placement.broker.code,
            "quantity": _plain(placement.quantity),
            "limit_price": _plain(placement.limit_price),
            "status": placement.status,
            "route_reason": placement.route_reason,
        },
        meta=meta,
        actor=actor,
    )


def _lock_order(pk: int) -> Order:
    return (
        Order.objects.select_for_update(of=("self",))
        .select_related("account__desk", "instrument__price", "created_by")
        .get(pk=pk)
    )


def _accounts_by_pk(ids: list[int]) -> dict[int, Account]:
    return {a.pk: a for a in Account.objects.select_related("desk").filter(pk__in=ids)}


def _instruments_by_pk(ids: list[int]) -> dict[int, Instrument]:
    return {i.pk: i for i in Instrument.objects.select_related("price").filter(pk__in=ids)}


def _lock_orders_to_route(pks: list[int]) -> tuple[list[Order], dict[Hashable, Any]]:
    """Lock orders in pk order; their accounts (desk) and instruments (price) from the cache.

    Returns the reference-data cache of the version read after the locks (kill switches,
    brokers and sessions are read from it too). Joining the four reference tables in the
    locking statement cost about half of a small route call's Python (compiling it); cached
    rows are as current as the version, which every change to them bumps. Shared instances:
    read them, never change them.
    """
    orders = list(
        Order.objects.select_for_update(of=("self",))
        .select_related("created_by")
        .filter(pk__in=pks)
        .order_by("pk")
    )
    values = refcache.generation()
    accounts = refcache.cached_many(
        values, "routing.account_by_pk", {o.account_id for o in orders}, _accounts_by_pk
    )
    instruments = refcache.cached_many(
        values, "routing.instrument_by_pk", {o.instrument_id for o in orders}, _instruments_by_pk
    )
    for order in orders:
        order.account = cast(Account, accounts[order.account_id])
        order.instrument = cast(Instrument, instruments[order.instrument_id])
    return orders, values


def _new_order_request(
    parent: Order | Block, placement: Placement, quantity: Decimal, account: str | None
) -> NewOrder:
    return NewOrder(
        cl_ord_id=placement.cl_ord_id,
        symbol=parent.instrument.symbol,
        side=parent.side,
        quantity=quantity,
        order_type=parent.order_type,
        limit_price=parent.limit_price,
        stop_price=parent.stop_price,
        time_in_force=parent.time_in_force,
        expire_date=parent.expire_date if isinstance(parent, Order) else None,
        account=account,
    )


def _new_placement(
    parent: Order | Block, choice: RouteChoice, user: Any, quantity: Decimal
) -> Placement:
    return Placement(
        order=parent if isinstance(parent, Order) else None,
        block=parent if isinstance(parent, Block) else None,
        broker=choice.broker,
        fix_session=choice.session,
        cl_ord_id=new_cl_ord_id("N"),
        quantity=quantity,
        limit_price=parent.limit_price,
        status=PlacementStatus.PENDING_NEW,
        route_reason=choice.reason,
        routed_by=user,
    )


def _route_meta(placement: Placement, choice: RouteChoice) -> dict[str, Any]:
    return {
        "placement": placement.pk,
        "cl_ord_id": placement.cl_ord_id,
        "broker": choice.broker.code,
        "reason": choice.reason,
        "quotes": choice.quotes,
    }


def _place_new(
    *, parent: Order | Block, choice: Any, user: Any, quantity: Decimal, account: str | None = None
) -> tuple[Placement, dict[str, Any]]:
    """Create the placement of an order or block and its NewOrderSingle outbox row."""
    placement = _new_placement(parent, choice, user, quantity)
    placement.save(force_insert=True)
    request = _new_order_request(parent, placement, quantity, account)
    _outbox_row(placement, choice.session, request, MSG_NEW).save()
    return placement, _route_meta(placement, choice)


def order_route(*, user: Any, order_id: Any, broker_code: str | None = None) -> Placement:
    """Send an approved order to a broker (given or best execution) through the outbox."""
    _require_role(user, "trader", what="route orders")
    pk = _as_pk(order_id, "order")
    if not orders_visible_to(user=user).filter(pk=pk).exists():
        raise NotFound("No such order.")
    with transaction.atomic(durable=True):
        locked, values = _lock_orders_to_route([pk])
        if not locked:
            raise NotFound("No such order.")
        order = locked[0]
        if order.block_id is not None:
            raise ConflictError(
                f"The order is in block B{order.block_id}; route the block.",
                code="in_block",
                errors={"block": [f"order is in block {order.block_id}"]},
            )
        if order.status != S.APPROVED:
            raise ConflictError(
                f"Only approved orders can be routed (this one is {order.status}).",
                code="not_routable",
                errors={"status": [f"order is {order.status}"]},
            )
        _ensure_no_kill_switch([order.account], values)
        choice = route_choose(
            instrument=order.instrument, side=order.side, broker_code=broker_code, values=values
        )
        quantity = order.quantity - order.cum_qty
        placement, meta = _place_new(
            parent=order, choice=choice, user=user, quantity=quantity, account=order.account.code
        )
        entries: list[AuditEntry] = []
        _transition(
            order, S.PENDING_NEW, action="order.routed", entries=entries, actor=user, meta=meta
        )
        order.leaves_qty = quantity
        order.save(update_fields=["status", "version", "leaves_qty", "updated_at"])
        entries.append(
            _placement_audit(placement, action="placement.created", actor=user, meta=meta)
        )
        audit_record_many(entries=entries)
        publish_order_updated(order)
        outbox_notify([choice.session.pk])
    return placement


def orders_route(
    *, user: Any, order_ids: Sequence[Any], broker_code: str | None = None
) -> list[Placement]:
    """Route many approved orders at once: one transaction, one placement and outbox row each.

    All or nothing, with the same rules as order_route; the queries do not grow with the
    number of orders (best execution asks once per instrument and side).
    """
    _require_role(user, "trader", what="route orders")
    pks = list(dict.fromkeys(_as_pk(i, "order") for i in order_ids))
    if not pks:
        return []
    visible = set(orders_visible_to(user=user).filter(pk__in=pks).values_list("pk", flat=True))
    if len(visible) != len(pks):
        raise NotFound("No such order.", errors={"orders": [p for p in pks if p not in visible]})
    with transaction.atomic(durable=True):
        orders, values = _lock_orders_to_route(pks)
        in_block = [o.pk for o in orders if o.block_id is not None]
        if in_block:
            raise ConflictError(
                "Orders in a block are routed with their block.",
                code="in_block",
                errors={"orders": [f"in a block: {in_block}"]},
            )
        not_ready = [o.pk for o in orders if o.status != S.APPROVED]
        if not_ready:
            raise ConflictError(
                "Only approved orders can be routed.",
                code="not_routable",
                errors={"orders": [f"not approved: {not_ready}"]},
            )
        _ensure_no_kill_switch((o.account for o in orders), values)
        choices: dict[tuple[int, str], RouteChoice] = {}
        picked: list[RouteChoice] = []
        for order in orders:
            key = (0, "") if broker_code else (order.instrument_id, order.side)
            choice = choices.get(key)
            if choice is None:
                choice = choices[key] = route_choose(
                    instrument=order.instrument,
                    side=order.side,
                    broker_code=broker_code,
                    values=values,
                )
            picked.append(choice)
        placements = [
            _new_placement(order, choice, user, order.quantity - order.cum_qty)
            for order, choice in zip(orders, picked, strict=True)
        ]
        Placement.objects.bulk_create(placements)
        rows: list[OutboxMessage] = []
        entries: list[AuditEntry] = []
        for order, placement, choice in zip(orders, placements, picked, strict=True):
            request = _new_order_request(order, placement, placement.quantity, order.account.code)
            rows.append(_outbox_row(placement, choice.session, request, MSG_NEW))
            meta = _route_meta(placement, choice)
            _transition(
                order, S.PENDING_NEW, action="order.routed", entries=entries, actor=user, meta=meta
            )
            order.leaves_qty = placement.quantity
            entries.append(
                _placement_audit(placement, action="placement.created", actor=user, meta=meta)
            )
        OutboxMessage.objects.bulk_create(rows)
        rows_update(Order, orders, ["status", "version", "leaves_qty", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated(orders)
        outbox_notify(p.fix_session_id for p in placements)
    return placements


def block_route(*, user: Any, block_id: Any, broker_code: str | None = None) -> Placement:
    """Send an open block (all its orders approved) to a broker as one order, via the outbox."""
    _require_role(user, "trader", what="route blocks")
    pk = _as_pk(block_id, "block")
    with transaction.atomic(durable=True):
        block = (
            Block.objects.select_for_update(of=("self",))
            .select_related("instrument__price")
            .filter(pk=pk)
            .first()
        )
        if block is None:
            raise NotFound("No such block.")
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .select_related("account__desk", "instrument", "created_by")
            .filter(block_id=block.pk)
            .order_by("pk")
        )
        visible = set(
            orders_visible_to(user=user).filter(block_id=block.pk).values_list("pk", flat=True)
        )
        if not orders or any(o.pk not in visible for o in orders):
            raise NotFound("No such block.")
        if block.status != BlockStatus.OPEN:
            raise ConflictError(
                f"Only open blocks can be routed (this one is {block.status}).",
                code="not_routable",
                errors={"status": [f"block is {block.status}"]},
            )
        not_ready = [o.pk for o in orders if o.status != S.APPROVED]
        if not_ready:
            raise ConflictError(
                "Every order of the block must be approved.",
                code="not_routable",
                errors={"orders": [f"not approved: {not_ready}"]},
            )
        values = refcache.generation()
        _ensure_no_kill_switch((o.account for o in orders), values)
        choice = route_choose(
            instrument=block.instrument, side=block.side, broker_code=broker_code, values=values
        )
        quantity = block.quantity - block.cum_qty
        placement, meta = _place_new(parent=block, choice=choice, user=user, quantity=quantity)
        meta["block"] = block.pk
        entries: list[AuditEntry] = []
        for order in orders:
            _transition(
                order, S.PENDING_NEW, action="order.routed", entries=entries, actor=user, meta=meta
            )
        rows_update(Order, orders, ["status", "version", "updated_at"])
        entries.append(
            AuditEntry(
                action="block.routed",
                object_type="block",
                object_id=str(block.pk),
                before={"status": block.status, "version": block.version},
                after={"status": BlockStatus.ROUTED, "version": block.version + 1},
                meta=meta,
                actor=user,
            )
        )
        block.status = BlockStatus.ROUTED
        block.version += 1
        block.save(update_fields=["status", "version", "updated_at"])
        entries.append(
            _placement_audit(placement, action="placement.created", actor=user, meta=meta)
        )
        audit_record_many(entries=entries)
        publish_orders_updated(orders)
        outbox_notify([choice.session.pk])
    return placement


# ----------------------------------------------------------------------------------------------
# Cancel and cancel/replace requests
# ----------------------------------------------------------------------------------------------


def _active_placement_id(order: Order) -> int | None:
    if order.block_id is None:
        qs = Placement.objects.filter(order_id=order.pk)
    else:
        qs = Placement.objects.filter(block_id=order.block_id)
    return qs.order_by("-pk").values_list("pk", flat=True).first()


def _visible(user: Any, order: Any, order_id: Any) -> Order:
    pk = order.pk if order is not None else _as_pk(order_id, "order")
    found = orders_visible_to(user=user).filter(pk=pk).select_related("block").first()
    if found is None:
        raise NotFound("No such order.")
    return found


def _cancel_request_rows(
    placement: Placement, session: FixSession, symbol: str, side: str, account: str | None
) -> OutboxMessage:
    request = CancelRequest(
        cl_ord_id=new_cl_ord_id("C"),
        orig_cl_ord_id=placement.cl_ord_id,
        symbol=symbol,
        side=side,
        quantity=placement.quantity,
        order_id=placement.broker_order_id or None,
        account=account,
    )
    return _outbox_row(placement, session, request, MSG_CANCEL)


def _request_pending(order: Order) -> None:
    if order.status in (S.PENDING_CANCEL, S.PENDING_REPLACE):
        raise ConflictError(
            f"A {order.status.replace('_', ' ')} request is already in flight.",
            code="request_pending",
            errors={"status": [f"order is {order.status}"]},
        )


def order_cancel_request(
    *, user: Any, order: Any = None, order_id: Any = None, version: Any = None
) -> Order:
    """Ask the broker to cancel an order that is at a broker (35=F); order → pending_cancel."""
    _require_role(user, "pm", "trader", what="cancel orders")
    visible = _visible(user, order, order_id)
    if visible.block is not None and visible.block.status != BlockStatus.OPEN:
        raise ConflictError(
            f"The order is part of block B{visible.block_id} at a broker; cancel the block.",
            code="in_block",
            errors={"block": [f"order is in routed block {visible.block_id}"]},
        )
    placement_id = _active_placement_id(visible)
    if placement_id is None:
        raise ConflictError("The order is not at a broker.", code="not_at_broker")
    with transaction.atomic(durable=True):
        placement = (
            Placement.objects.select_for_update(of=("self",))
            .select_related("broker", "fix_session")
            .get(pk=placement_id)
        )
        locked = _lock_order(visible.pk)
        _ensure_version(locked, version)
        _request_pending(locked)
        if locked.status not in CANCELABLE_AT_BROKER:
            ensure_transition(locked.status, S.PENDING_CANCEL)
            raise ConflictError(f"An order in status {locked.status} cannot be canceled.")
        if placement.fix_session is None:
            raise ConflictError("The placement has no FIX session.", code="no_fix_session")
        row = _cancel_request_rows(
            placement,
            placement.fix_session,
            locked.instrument.symbol,
            locked.side,
            locked.account.code,
        )
        row.save()
        entries: list[AuditEntry] = []
        meta = {
            "placement": placement.pk,
            "cl_ord_id": row.cl_ord_id,
            "orig_cl_ord_id": placement.cl_ord_id,
        }
        _transition(
            locked,
            S.PENDING_CANCEL,
            action="order.cancel_requested",
            entries=entries,
            actor=user,
            meta=meta,
        )
        locked.save(update_fields=["status", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_order_updated(locked)
        outbox_notify([placement.fix_session_id])
    return locked


def order_replace_request(
    *,
    user: Any,
    order: Any = None,
    order_id: Any = None,
    quantity: Decimal | None = None,
    limit_price: Decimal | None = None,
    stop_price: Decimal | None = None,
    version: Any = None,
) -> Order:
    """Ask the broker to change quantity/prices (35=G, new ClOrdID); order → pending_replace."""
    _require_role(user, "pm", "trader", what="amend orders")
    visible = _visible(user, order, order_id)
    if visible.block_id is not None:
        raise ConflictError(
            f"The order is part of block B{visible.block_id}; blocks cannot be amended at a broker.",
            code="in_block",
        )
    if quantity is None and limit_price is None and stop_price is None:
        raise ValidationError(
            "non_field_errors: give at least one of quantity, limit_price, stop_price",
            errors={"non_field_errors": ["give at least one of quantity, limit_price, stop_price"]},
        )
    placement_id = _active_placement_id(visible)
    if placement_id is None:
        raise ConflictError("The order is not at a broker.", code="not_at_broker")
    with transaction.atomic(durable=True):
        placement = (
            Placement.objects.select_for_update(of=("self",))
            .select_related("broker", "fix_session")
            .get(pk=placement_id)
        )
        locked = _lock_order(visible.pk)
        _ensure_version(locked, version)
        _request_pending(locked)
        if locked.status not in AT_BROKER:
            ensure_transition(locked.status, S.PENDING_REPLACE)
        new_qty = quantity if quantity is not None else locked.quantity
        new_limit = limit_price if limit_price is not None else locked.limit_price
        new_stop = stop_price if stop_price is not None else locked.stop_price
        if new_qty <= locked.cum_qty:
            raise field_error(
                "quantity", f"must be above the filled quantity {_plain(locked.cum_qty)}"
            )
        if limit_price is not None and locked.order_type not in LIMIT_TYPES:
            raise field_error("limit_price", f"must not be set for a {locked.order_type} order")
        if stop_price is not None and locked.order_type not in STOP_TYPES:
            raise field_error("stop_price", f"must not be set for a {locked.order_type} order")
        for name, value in (
            ("quantity", new_qty),
            ("limit_price", limit_price),
            ("stop_price", stop_price),
        ):
            if value is not None and value <= 0:
                raise field_error(name, "must be positive")
        if placement.fix_session is None:
            raise ConflictError("The placement has no FIX session.", code="no_fix_session")
        # FIX: OrderQty of a replace is the new total, including what is already filled.
        request = ReplaceRequest(
            cl_ord_id=new_cl_ord_id("R"),
            orig_cl_ord_id=placement.cl_ord_id,
            symbol=locked.instrument.symbol,
            side=locked.side,
            quantity=new_qty,
            order_type=locked.order_type,
            limit_price=new_limit,
            stop_price=new_stop,
            time_in_force=locked.time_in_force,
            expire_date=locked.expire_date,
            order_id=placement.broker_order_id or None,
            account=locked.account.code,
        )
        row = _outbox_row(placement, placement.fix_session, request, MSG_REPLACE)
        row.save()
        entries: list[AuditEntry] = []
        meta = {
            "placement": placement.pk,
            "cl_ord_id": row.cl_ord_id,
            "orig_cl_ord_id": placement.cl_ord_id,
            "quantity": _plain(new_qty),
            "limit_price": _plain(new_limit),
            "stop_price": _plain(new_stop),
        }
        _transition(
            locked,
            S.PENDING_REPLACE,
            action="order.replace_requested",
            entries=entries,
            actor=user,
            meta=meta,
        )
        locked.save(update_fields=["status", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_order_updated(locked)
        outbox_notify([placement.fix_session_id])
    return locked


# ----------------------------------------------------------------------------------------------
# Kill switch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KillResult:
    """What engaging a kill switch did."""

    switch: KillSwitch
    canceled: int  # staged orders canceled directly
    cancel_requests: int  # cancel requests written to the outbox (orders and blocks at brokers)


def _scope_q(scope: str, target: str) -> Q:
    if scope == KillScope.FIRM:
        return Q()
    if scope == KillScope.DESK:
        return Q(account__desk__code=target)
    return Q(account__code=target)


def kill_switch_engage(
    *, user: Any, scope: str, target: str | None, reason: str = ""
) -> KillResult:
    """Stop routing in a scope and cancel its open orders (staged: at once; at brokers: 35=F)."""
    _require_role(user, "trader", "admin", what="engage the kill switch")
    if scope not in KillScope.values:
        raise field_error("scope", f"must be one of {', '.join(KillScope.values)}")
    target = (target or "").strip()
    if scope == KillScope.FIRM:
        target = ""
    elif not target:
        raise field_error("target", f"is required for scope {scope}")
    elif scope == KillScope.DESK and not Desk.objects.filter(code=target).exists():
        raise field_error("target", f"unknown desk {target!r}")
    elif scope == KillScope.ACCOUNT and not Account.objects.filter(code=target).exists():
        raise field_error("target", f"unknown account {target!r}")
    with transaction.atomic(durable=True):
        if KillSwitch.objects.filter(scope=scope, target=target, active=True).exists():
            raise ConflictError(
                "A kill switch is already engaged for this scope.", code="kill_switch_active"
            )
        switch = KillSwitch.objects.create(
            scope=scope, target=target, reason=reason or "", engaged_by=user, active=True
        )
        audit_record_many(
            entries=[
                AuditEntry(
                    action="kill_switch.engaged",
                    object_type="kill_switch",
                    object_id=str(switch.pk),
                    after={"scope": scope, "target": target, "reason": reason or ""},
                    actor=user,
                )
            ]
        )
    # The switch is committed first: from the next request on, new orders and routes in scope
    # are refused, so the sweep below cannot miss an order routed meanwhile.
    canceled = _kill_cancel_staged(scope=scope, target=target, user=user, switch=switch)
    requests = _kill_cancel_at_brokers(scope=scope, target=target, user=user, switch=switch)
    return KillResult(switch=switch, canceled=canceled, cancel_requests=requests)


def _kill_cancel_staged(*, scope: str, target: str, user: Any, switch: KillSwitch) -> int:
    total = 0
    while True:
        ids = list(
            Order.objects.filter(_scope_q(scope, target), status__in=CANCELABLE_BEFORE_ROUTING)
            .order_by("pk")
            .values_list("pk", flat=True)[:KILL_CHUNK]
        )
        if not ids:
            return total
        with transaction.atomic(durable=True):
            block_ids = sorted(
                set(
                    Order.objects.filter(pk__in=ids, block__isnull=False).values_list(
                        "block_id", flat=True
                    )
                )
            )
            blocks = {
                b.pk: b
                for b in Block.objects.select_for_update().filter(pk__in=block_ids).order_by("pk")
            }
            orders = list(
                Order.objects.select_for_update(of=("self",))
                .select_related("account__desk", "instrument", "created_by")
                .filter(pk__in=ids, status__in=CANCELABLE_BEFORE_ROUTING)
                .order_by("pk")
            )
            entries: list[AuditEntry] = []
            meta = {"kill_switch": switch.pk}
            leaving: dict[int, list[Order]] = {}
            for order in orders:
                if order.block_id is not None and order.block_id in blocks:
                    if blocks[order.block_id].status != BlockStatus.OPEN:
                        continue  # routed block: canceled at the broker below
                    leaving.setdefault(order.block_id, []).append(order)
                    order.block = None
                _transition(
                    order,
                    S.CANCELED,
                    action="order.canceled",
                    entries=entries,
                    actor=user,
                    meta=meta,
                )
                order.leaves_qty = Decimal(0)
            changed = [o for o in orders if o.status == S.CANCELED]
            rows_update(Order, changed, ["status", "version", "leaves_qty", "block", "updated_at"])
            for block_id, members in leaving.items():
                block = blocks[block_id]
                remaining = Order.objects.filter(block_id=block_id).count()
                before = {"status": block.status, "quantity": _plain(block.quantity)}
                if remaining == 0:
                    block.status = BlockStatus.DISSOLVED
                else:
                    block.quantity -= sum((o.quantity for o in members), Decimal(0))
                block.version += 1
                block.save(update_fields=["status", "quantity", "version", "updated_at"])
                entries.append(
                    AuditEntry(
                        action="block.order_removed",
                        object_type="block",
                        object_id=str(block_id),
                        before=before,
                        after={
                            "status": block.status,
                            "quantity": _plain(block.quantity),
                            "removed": [o.pk for o in members],
                        },
                        meta=meta,
                        actor=user,
                    )
                )
            audit_record_many(entries=entries)
            publish_orders_updated(changed)
        total += len(changed)
        if len(changed) == 0:
            return total


def _kill_cancel_at_brokers(*, scope: str, target: str, user: Any, switch: KillSwitch) -> int:
    """Cancel requests for every open placement with an order in scope, in chunks."""
    total = 0
    done: set[int] = set()
    while True:
        order_q = Order.objects.filter(_scope_q(scope, target), status__in=CANCELABLE_AT_BROKER)
        placement_ids = list(
            Placement.objects.filter(
                Q(order__in=order_q.values("pk")) | Q(block__orders__in=order_q.values("pk")),
                status__in=[
                    PlacementStatus.PENDING_NEW,
                    PlacementStatus.WORKING,
                    PlacementStatus.PARTIALLY_FILLED,
                    PlacementStatus.DONE_FOR_DAY,
                ],
            )
            .exclude(pk__in=done)
            .order_by("pk")
            .values_list("pk", flat=True)
            .distinct()[:KILL_CHUNK]
        )
        if not placement_ids:
            return total
        done.update(placement_ids)
        total += _cancel_placements(placement_ids, user=user, meta={"kill_switch": switch.pk})


def _cancel_placements(placement_ids: Sequence[int], *, user: Any, meta: dict) -> int:
    """One transaction: 35=F outbox rows for these placements, their orders → pending_cancel."""
    with transaction.atomic(durable=True):
        placements = list(
            Placement.objects.select_for_update(of=("self",))
            .select_related("fix_session", "broker", "block__instrument", "order__instrument")
            .filter(pk__in=placement_ids)
            .order_by("pk")
        )
        block_ids = sorted({p.block_id for p in placements if p.block_id})
        list(Block.objects.select_for_update().filter(pk__in=block_ids).order_by("pk"))
        order_ids = {p.order_id for p in placements if p.order_id}
        order_ids.update(Order.objects.filter(block_id__in=block_ids).values_list("pk", flat=True))
        orders = list(
            Order.objects.select_for_update(of=("self",))
            .select_related("account__desk", "instrument", "created_by")
            .filter(pk__in=order_ids)
            .order_by("pk")
        )
        by_placement: dict[int, list[Order]] = {}
        by_order = {o.pk: o for o in orders}
        for p in placements:
            if p.order_id:
                by_placement[p.pk] = [by_order[p.order_id]] if p.order_id in by_order else []
            else:
                by_placement[p.pk] = [o for o in orders if o.block_id == p.block_id]
        rows: list[OutboxMessage] = []
        entries: list[AuditEntry] = []
        changed: list[Order] = []
        for p in placements:
            members = [o for o in by_placement[p.pk] if o.status in CANCELABLE_AT_BROKER]
            if not members or p.fix_session is None:
                continue
            parent: Block | Order | None = p.block if p.block_id else p.order
            assert parent is not None  # a placement belongs to an order or a block (constraint)
            instrument = parent.instrument
            side = parent.side
            account = None if p.block_id else members[0].account.code
            row = _cancel_request_rows(p, p.fix_session, instrument.symbol, side, account)
            rows.append(row)
            for order in members:
                _transition(
                    order,
                    S.PENDING_CANCEL,
                    action="order.cancel_requested",
                    entries=entries,
                    actor=user,
                    meta={**meta, "placement": p.pk, "cl_ord_id": row.cl_ord_id},
                )
                changed.append(order)
        OutboxMessage.objects.bulk_create(rows)
        rows_update(Order, changed, ["status", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated(changed)
        if rows:
            outbox_notify(r.fix_session_id for r in rows)
    return len(rows)


def kill_switch_lift(*, user: Any, switch_id: Any) -> KillSwitch:
    """Lift an engaged kill switch; needs a second authorised user (four eyes)."""
    _require_role(user, "trader", "admin", what="lift the kill switch")
    pk = _as_pk(switch_id, "kill switch")
    with transaction.atomic(durable=True):
        switch = KillSwitch.objects.select_for_update().filter(pk=pk).first()
        if switch is None:
            raise NotFound("No such kill switch.")
        if not switch.active:
            raise ConflictError("The kill switch is already lifted.", code="already_lifted")
        if switch.engaged_by_id == user.pk:
            raise NotPermitted(
                "A kill switch must be lifted by another user than the one who engaged it.",
                code="four_eyes",
            )
        switch.active = False
        switch.lifted_by = user
        switch.lifted_at = timezone.now()
        switch.save(update_fields=["active", "lifted_by", "lifted_at"])
        audit_record_many(
            entries=[
                AuditEntry(
                    action="kill_switch.lifted",
                    object_type="kill_switch",
                    object_id=str(switch.pk),
                    before={"active": True},
                    after={"active": False},
                    meta={"scope": switch.scope, "target": switch.target},
                    actor=user,
                )
            ]
        )
    return switch


def outbox_mark_failed(*, outbox_id: int, error: str) -> None:
    """An outbox row that can never be sent: mark it failed; a new order goes back to the desk."""
    with transaction.atomic(durable=True):
        row = (
            OutboxMessage.objects.select_for_update(of=("self",))
            .select_related("placement")
            .filter(pk=outbox_id, status=OutboxStatus.PENDING)
            .first()
        )
        if row is None:
            return
        placement = Placement.objects.select_for_update(of=("self",)).get(pk=row.placement_id)
        row.status = OutboxStatus.FAILED
        row.error = error[:2000]
        row.save(update_fields=["status", "error"])
        entries = [
            AuditEntry(
                action="outbox.failed",
                object_type="placement",
                object_id=str(placement.pk),
                after={"cl_ord_id": row.cl_ord_id, "msg_type": row.msg_type, "error": row.error},
            )
        ]
        orders: list[Order] = []
        if placement.block_id:
            Block.objects.select_for_update(of=("self",)).filter(pk=placement.block_id).first()
            qs = Order.objects.filter(block_id=placement.block_id)
        else:
            qs = Order.objects.filter(pk=cast(int, placement.order_id))
        orders = list(
            qs.select_for_update(of=("self",))
            .select_related("account__desk", "instrument", "created_by")
            .order_by("pk")
        )
        meta = {"placement": placement.pk, "cl_ord_id": row.cl_ord_id, "error": row.error}
        changed = []
        for order in orders:
            if row.msg_type == MSG_NEW and order.status == S.PENDING_NEW:
                # The state table's "session refused it": the order returns to the desk.
                _transition(
                    order,
                    S.APPROVED,
                    action="order.route_failed",
                    entries=entries,
                    actor=None,
                    meta=meta,
                )
                changed.append(order)
            elif row.msg_type != MSG_NEW and order.status in (S.PENDING_CANCEL, S.PENDING_REPLACE):
                target = S.PARTIALLY_FILLED if order.cum_qty > 0 else S.WORKING
                _transition(
                    order,
                    target,
                    action="order.request_failed",
                    entries=entries,
                    actor=None,
                    meta=meta,
                )
                changed.append(order)
        if row.msg_type == MSG_NEW:
            placement.status = PlacementStatus.REJECTED
            placement.save(update_fields=["status", "updated_at"])
            if placement.block_id:
                Block.objects.filter(pk=placement.block_id).update(status=BlockStatus.OPEN)
        rows_update(Order, changed, ["status", "version", "updated_at"])
        audit_record_many(entries=entries)
        publish_orders_updated(changed)


# ----------------------------------------------------------------------------------------------
# Asynchronous route requests (202): durable in PostgreSQL first, then published to Celery
# ----------------------------------------------------------------------------------------------
# A Celery message can be lost (Redis restarted without persistence, a worker killed right after
# the transport popped it), so an accepted asynchronous route is first a RouteRequest row written
# in its own transaction; the task is published after commit and a beat sweep re-publishes
# requests still pending after ROUTE_REQUEST_RETRY_SECONDS. Running a request twice routes once:
# order_route/block_route lock the order or block and refuse anything not approved/open, and a
# run that finds the placement an earlier run of the same request already made records that
# placement instead of routing again. The route and the request's completion cannot share one
# transaction because order_route and block_route are durable top-level services; a crash
# between the two leaves the request pending, and the next run records the existing placement.

RR = RouteRequestStatus
logger = logging.getLogger("orders.routing")


def _route_request_publish(request_ids: Sequence[int]) -> None:
    """Publish route requests to the routing queue (after commit); a failure waits for the sweep."""
    from orders.tasks import route_request

    for request_id in request_ids:
        try:
            route_request.delay(request_id)
        except Exception:  # Redis down: the row stays pending and the sweep re-publishes it
            logger.exception("route request %s not published; the sweep will retry", request_id)


def _route_request_audit(
    rr: RouteRequest, *, action: str, actor: Any, before: Any = None, meta: dict | None = None
) -> AuditEntry:
    return AuditEntry(
        action=action,
        object_type="route_request",
        object_id=str(rr.pk),
        before=before,
        after={
            "order": rr.order_id,
            "block": rr.block_id,
            "broker": rr.broker_code or None,
            "status": rr.status,
            "placement": rr.placement_id,
        },
        meta=meta or {},
        actor=actor,
    )


def route_request_create(
    *,
    user: Any,
    order_id: Any = None,
    block_id: Any = None,
    broker_code: str | None = None,
) -> RouteRequest:
    """Accept an asynchronous route of an order or block: a pending request, published on commit.

    One pending request per order or block: accepting the same route again while one is pending
    returns that request (the same 202) and publishes nothing new.
    """
    if (order_id is None) == (block_id is None):
        raise ValueError("route_request_create needs exactly one of order_id and block_id")
    if order_id is not None:
        _require_role(user, "trader", what="route orders")
        pk = _as_pk(order_id, "order")
        if not orders_visible_to(user=user).filter(pk=pk).exists():
            raise NotFound("No such order.")
        target: dict[str, int] = {"order_id": pk}
    else:
        from orders.services.orders import blocks_visible_to

        _require_role(user, "trader", what="route blocks")
        pk = _as_pk(block_id, "block")
        if not blocks_visible_to(user=user).filter(pk=pk).exists():
            raise NotFound("No such block.")
        target = {"block_id": pk}
    code = broker_code or ""
    if len(code) > RouteRequest._meta.get_field("broker_code").max_length:  # type: ignore[operator]
        raise field_error("broker", "no such broker")
    with transaction.atomic(durable=True):
        pending = RouteRequest.objects.filter(status=RR.PENDING, **target)
        existing = pending.first()
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                rr = RouteRequest.objects.create(
                    user=user,
                    broker_code=code,
                    attempts=1,
                    published_at=timezone.now(),
                    **target,
                )
        except IntegrityError:
            # A concurrent accept of the same order or block won the partial unique index and
            # has committed (the insert waited for it): answer with its request.
            return pending.get()
        audit_record_many(
            entries=[_route_request_audit(rr, action="route_request.accepted", actor=user)]
        )
        request_id = rr.pk
        transaction.on_commit(lambda: _route_request_publish([request_id]))
    return rr


def _route_request_placement(rr: RouteRequest) -> Placement | None:
    """The placement an earlier run of this request made, if the run died before recording it."""
    parent = {"order_id": rr.order_id} if rr.order_id else {"block_id": rr.block_id}
    return (
        Placement.objects.filter(**parent, routed_by_id=rr.user_id, created_at__gte=rr.created_at)
        .order_by("pk")
        .first()
    )


def _route_request_finish(
    *, request_id: int, placement: Placement | None, error: DomainError | None
) -> RouteRequest:
    with transaction.atomic(durable=True):
        rr = RouteRequest.objects.select_for_update().select_related("user").get(pk=request_id)
        if rr.status != RR.PENDING:
            return rr
        before = {"status": rr.status}
        rr.finished_at = timezone.now()
        if placement is not None:
            rr.status = RR.DONE
            rr.placement = placement
            rr.last_error = ""
            entry = _route_request_audit(
                rr, action="route_request.done", actor=rr.user, before=before
            )
        else:
            assert error is not None
            rr.status = RR.REFUSED
            rr.last_error = f"{error.code}: {error.detail}"
            entry = _route_request_audit(
                rr,
                action="route_request.refused",
                actor=rr.user,
                before=before,
                meta={"code": error.code, "detail": error.detail},
            )
        rr.save(update_fields=["status", "placement", "last_error", "finished_at"])
        audit_record_many(entries=[entry])
    return rr


def route_request_run(*, request_id: Any) -> RouteRequest | None:
    """Run an accepted route request: route it and record done or refused; safe to run twice."""
    rr = RouteRequest.objects.select_related("user").filter(pk=_as_pk(request_id, "route request"))
    request = rr.first()
    if request is None or request.status != RR.PENDING:
        return request
    placement = _route_request_placement(request)
    error: DomainError | None = None
    if placement is None:
        broker = request.broker_code or None
        try:
            if request.order_id is not None:
                placement = order_route(
                    user=request.user, order_id=request.order_id, broker_code=broker
                )
            else:
                placement = block_route(
                    user=request.user, block_id=request.block_id, broker_code=broker
                )
        except DomainError as exc:
            # A concurrent run of the same request may have routed it a moment ago.
            placement = _route_request_placement(request)
            if placement is None:
                error = exc
    return _route_request_finish(request_id=request.pk, placement=placement, error=error)


def route_requests_resweep(*, older_than: float | None = None, limit: int = 500) -> int:
    """Re-publish pending route requests not run within the retry delay (their message may be lost)."""
    seconds = (
        older_than
        if older_than is not None
        else float(getattr(settings, "ROUTE_REQUEST_RETRY_SECONDS", 30))
    )
    now = timezone.now()
    with transaction.atomic(durable=True):
        # skip_locked: a request being finished right now is not waited for (nor re-published).
        stale = list(
            RouteRequest.objects.select_for_update(skip_locked=True)
            .filter(status=RR.PENDING, published_at__lt=now - dt.timedelta(seconds=seconds))
            .order_by("pk")[:limit]
        )
        for rr in stale:
            rr.attempts += 1
            rr.published_at = now
        RouteRequest.objects.bulk_update(stale, ["attempts", "published_at"])
        ids = [rr.pk for rr in stale]
        if ids:
            logger.warning("re-publishing %d pending route request(s): %s", len(ids), ids)
            transaction.on_commit(lambda: _route_request_publish(ids))
    return len(ids)
