"""Venue simulator: several brokers behind one FIX acceptor on 127.0.0.1, with a quote model.

Each broker (its own SenderCompID) quotes around a reference price given by `price_for(symbol)`:
mid = ref x (1 + skew), bid/ask = mid -/+ half the spread, rounded outwards to the tick.
Matching: market orders fill at the ask (buy) / bid (sell); limit orders fill at that price when
it is at or better than the limit, otherwise they rest and are re-checked every
`rest_check_interval_ms` (so a moving `price_for` fills them later); stop orders trigger when
the quote crosses the stop. Orders larger than `slice_qty` fill in slices every
`slice_interval_ms`. IOC/FOK orders that cannot fill at once are canceled. Cancel (35=F) and
cancel/replace (35=G) are supported; unknown or finished orders get an OrderCancelReject
(35=9). Unknown symbols, bad prices, bad quantities and duplicate ClOrdIDs are rejected with an
ExecutionReport (150=8). Unsupported message types get a BusinessMessageReject (35=j). Every
response waits `latency_ms` (per broker or global).

All order state lives on the acceptor's loop thread; public methods are thread-safe.
`python -m orders.fix.simulator --help` runs it standalone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from orders.fix.acceptor import FixAcceptor
from orders.fix.common import SessionStatus, make_session_key
from orders.fix.messages import (
    CancelRequest,
    NewOrder,
    OutboundMessage,
    ReplaceRequest,
    exec_report_fields,
    now_utc,
    parse_order_message,
)

logger = logging.getLogger("orders.fix.simulator")

PriceSource = Callable[[str], Decimal | None]
_BPS = Decimal(10_000)
_AVG_PX_QUANTUM = Decimal("0.00000001")
_TERMINAL = frozenset({"2", "4", "8", "C"})
_REPLAY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class BrokerProfile:
    """One simulated broker: its CompID and how it quotes."""

    comp_id: str
    spread_bps: Decimal = Decimal("10")  # full bid/ask spread
    skew_bps: Decimal = Decimal("0")  # mid shifted up (+) or down (-) from the reference
    latency_ms: float | None = None  # None = the simulator's latency_ms


DEFAULT_BROKERS = (
    BrokerProfile("BRKA", Decimal("8"), Decimal("0")),
    BrokerProfile("BRKB", Decimal("12"), Decimal("3")),
    BrokerProfile("BRKC", Decimal("20"), Decimal("-4")),
)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything the simulator needs; port 0 picks a free port (see VenueSimulator.port)."""

    store_dir: str
    port: int = 0
    host: str = "127.0.0.1"
    brokers: tuple[BrokerProfile, ...] = DEFAULT_BROKERS
    client_comp_ids: tuple[str, ...] = ("OMS",)
    fix_versions: tuple[str, ...] = ("FIX.4.2", "FIX.4.4")
    log_dir: str | None = None
    latency_ms: float = 0.0
    slice_qty: Decimal | None = None  # orders above this quantity fill in slices of it
    slice_interval_ms: float = 100.0
    rest_check_interval_ms: float | None = 250.0  # None: resting orders never re-checked
    send_pending: bool = True  # send PendingCancel/PendingReplace before Canceled/Replaced
    tick: Decimal = Decimal("0.01")
    exec_id_prefix: str = "SIM"
    reset_on_start: bool = False  # forget persisted sequence numbers


@dataclass(frozen=True, slots=True)
class Quote:
    """A broker's two-sided quote."""

    bid: Decimal
    ask: Decimal


def make_quote(profile: BrokerProfile, reference: Decimal, tick: Decimal) -> Quote:
    """Quote of `profile` around `reference`, rounded outwards to `tick`."""
    mid = reference * (1 + profile.skew_bps / _BPS)
    half = mid * profile.spread_bps / _BPS / 2
    bid = ((mid - half) / tick).to_integral_value(ROUND_FLOOR) * tick
    ask = ((mid + half) / tick).to_integral_value(ROUND_CEILING) * tick
    if ask <= bid:
        ask = bid + tick
    return Quote(bid=bid, ask=ask)


@dataclass
class SimOrder:
    """An order as the simulated broker sees it (mutable, loop thread only)."""

    session_key: str
    begin_string: str
    broker: BrokerProfile
    order_id: str
    cl_ord_id: str  # the latest ClOrdID in the chain
    symbol: str
    side: str  # raw FIX value
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    status: str = "0"  # raw OrdStatus
    cum_qty: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    triggered: bool = False
    slice_pending: bool = False
    cl_ord_ids: list[str] = field(default_factory=list)
    fills: list[tuple[Decimal, Decimal]] = field(default_factory=list)

    @property
    def is_buy(self) -> bool:
        """True for buy sides."""
        return self.side == "1"

    @property
    def live(self) -> bool:
        """True while the order can still trade."""
        return self.status not in _TERMINAL

    @property
    def leaves_qty(self) -> Decimal:
        """Open quantity (0 once finished)."""
        return self.quantity - self.cum_qty if self.live else Decimal(0)

    @property
    def avg_px(self) -> Decimal:
        """Average fill price."""
        if not self.cum_qty:
            return Decimal(0)
        return (self.notional / self.cum_qty).quantize(_AVG_PX_QUANTUM).normalize()


class VenueSimulator:
    """The broker/exchange simulator; start(), stop(), plus hooks for fault tests."""

    def __init__(self, config: SimulatorConfig, price_for: PriceSource) -> None:
        self.config = config
        self.price_for = price_for
        self.brokers = {b.comp_id: b for b in config.brokers}
        sessions = [
            (version, broker.comp_id, client)
            for broker in config.brokers
            for client in config.client_comp_ids
            for version in config.fix_versions
        ]
        self.acceptor = FixAcceptor(
            application=self,
            sessions=sessions,
            store_dir=config.store_dir,
            host=config.host,
            port=config.port,
            log_dir=config.log_dir,
            reset_on_start=config.reset_on_start,
        )
        run = format(int(time.time() * 1000), "x")
        self._exec_ids = (f"{config.exec_id_prefix}-{run}-{n}" for n in itertools.count(1))
        self._order_ids = (f"O-{run}-{n}" for n in itertools.count(1))
        self._by_cl_ord_id: dict[tuple[str, str], SimOrder] = {}
        self._open: dict[str, SimOrder] = {}  # order_id -> live order
        # Recent reports per session, for replay() in fault tests (bounded for long demo runs).
        self._sent: dict[str, deque[tuple[OutboundMessage, Any]]] = {}
        self._rest_timer: Any = None
        self._logged_on: set[str] = set()
        self._logon_cv = threading.Condition()

    # lifecycle --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The listening port (known after start())."""
        return self.acceptor.port

    def start(self) -> None:
        """Listen on host:port and start the simulator thread."""
        self.acceptor.start()
        if self.config.rest_check_interval_ms:
            self.acceptor.call(self._schedule_rest_check)

    def stop(self) -> None:
        """Log every client out and stop."""
        self.acceptor.stop()

    def __enter__(self) -> VenueSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def session_key(self, broker: str, client: str = "OMS", fix_version: str = "FIX.4.4") -> str:
        """Key of a simulator-side session, e.g. 'FIX.4.4:BRKA->OMS'."""
        return make_session_key(fix_version, broker, client)

    def session_status(self, session_key: str) -> SessionStatus:
        """Logged-on flag and sequence numbers of a simulator-side session."""
        return self.acceptor.status(session_key)

    def wait_logged_on(self, session_key: str, timeout: float = 10.0) -> bool:
        """Block until a client is logged on to that session."""
        with self._logon_cv:
            return self._logon_cv.wait_for(lambda: session_key in self._logged_on, timeout)

    def quote(self, broker: str, symbol: str) -> Quote | None:
        """The broker's current quote for a symbol, or None if the symbol is unknown."""
        reference = self._reference(symbol)
        if reference is None:
            return None
        return make_quote(self.brokers[broker], reference, self.config.tick)

    def order(self, session_key: str, cl_ord_id: str) -> SimOrder | None:
        """A copy of the simulator's view of an order (any ClOrdID of its chain)."""

        def read() -> SimOrder | None:
            found = self._by_cl_ord_id.get((session_key, cl_ord_id))
            return replace(found, cl_ord_ids=list(found.cl_ord_ids)) if found else None

        return self.acceptor.call(read)

    # fault-test hooks (thread-safe) ------------------------------------------------------------
    def disconnect(self, session_key: str | None = None) -> None:
        """Drop client connections without Logout; the clients reconnect and resynchronise."""
        self.acceptor.disconnect(session_key)

    def replay(self, session_key: str, last: int | None = None) -> int:
        """Send again (PossDupFlag=Y, new sequence numbers) the last N execution messages."""

        def run() -> int:
            sent = list(self._sent.get(session_key, ()))
            chosen = sent if last is None else sent[-last:]
            for message, sent_at in list(chosen):
                self.acceptor.send(session_key, message, poss_dup=True, orig_sending_time=sent_at)
            return len(chosen)

        return self.acceptor.call(run)

    def send_message(self, session_key: str, message: OutboundMessage) -> bool:
        """Send an arbitrary application message (e.g. an execution for an unknown order)."""
        return self.acceptor.call(lambda: self._send(session_key, message))

    def end_of_day(self) -> int:
        """DAY orders expire (150=C); GTC/GTD orders get DoneForDay (150=3). Returns how many."""

        def run() -> int:
            count = 0
            for order in list(self._open.values()):
                if order.time_in_force == "day":
                    self._finish(order, "C", "C", text="expired at end of day")
                else:
                    order.status = "3"
                    self._report(order, "3", "3")
                count += 1
            return count

        return self.acceptor.call(run)

    def restate(self, session_key: str, cl_ord_id: str, text: str = "restated") -> bool:
        """Send an unsolicited Restated (150=D) report for an open order."""

        def run() -> bool:
            order = self._by_cl_ord_id.get((session_key, cl_ord_id))
            if order is None:
                return False
            self._report(order, "D", order.status, text=text)
            return True

        return self.acceptor.call(run)

    def cancel_unsolicited(self, session_key: str, cl_ord_id: str, text: str = "") -> bool:
        """The venue cancels an open order on its own (150=4)."""

        def run() -> bool:
            order = self._by_cl_ord_id.get((session_key, cl_ord_id))
            if order is None or not order.live:
                return False
            self._finish(order, "4", "4", text=text or "canceled by venue")
            return True

        return self.acceptor.call(run)

    # AcceptorApplication -------------------------------------------------------------------
    def on_logon(self, session_key: str) -> None:
        with self._logon_cv:
            self._logged_on.add(session_key)
            self._logon_cv.notify_all()

    def on_logout(self, session_key: str) -> None:
        with self._logon_cv:
            self._logged_on.discard(session_key)

    def on_message(self, session_key: str, raw: str, fields: dict[int, str]) -> None:
        broker = self.brokers.get(session_key.split(":", 1)[1].split("->", 1)[0])
        if broker is None:
            return
        latency = broker.latency_ms if broker.latency_ms is not None else self.config.latency_ms
        if latency > 0:
            assert self.acceptor.loop is not None
            self.acceptor.loop.call_later(
                latency / 1000, self._guarded, self._handle, session_key, broker, raw, fields
            )
        else:
            self._handle(session_key, broker, raw, fields)

    # engine (loop thread) -----------------------------------------------------------------
    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("simulator step failed")

    def _handle(
        self, session_key: str, broker: BrokerProfile, raw: str, fields: dict[int, str]
    ) -> None:
        msg_type = fields.get(35, "")
        if msg_type not in ("D", "F", "G"):
            self._business_reject(session_key, fields, "3", f"unsupported MsgType {msg_type}")
            return
        inbound = parse_order_message(raw)
        request = inbound.request
        begin = session_key.split(":", 1)[0]
        if request is None:
            if msg_type == "D" and fields.get(11):
                self._reject_new(session_key, begin, broker, fields, "99", inbound.error or "")
            elif msg_type in ("F", "G") and fields.get(11) and fields.get(41):
                self._cancel_reject(
                    session_key, fields, "1" if msg_type == "F" else "2", "99", inbound.error
                )
            else:
                self._business_reject(session_key, fields, "5", inbound.error or "bad message")
            return
        if isinstance(request, NewOrder):
            self._new_order(session_key, begin, broker, request, fields, inbound.header.poss_dup)
        elif isinstance(request, CancelRequest):
            self._cancel(session_key, request, fields, inbound.header.poss_dup)
        elif isinstance(request, ReplaceRequest):
            self._replace(session_key, request, fields, inbound.header.poss_dup)

    def _reference(self, symbol: str) -> Decimal | None:
        try:
            price = self.price_for(symbol)
        except Exception:
            logger.exception("price_for(%r) failed", symbol)
            return None
        if price is None or not isinstance(price, Decimal) or price <= 0:
            return None
        return price

    def _new_order(
        self,
        session_key: str,
        begin: str,
        broker: BrokerProfile,
        request: NewOrder,
        fields: dict[int, str],
        poss_dup: bool,
    ) -> None:
        if (session_key, request.cl_ord_id) in self._by_cl_ord_id:
            if poss_dup:
                return  # a resend of an order we already have: FIX says ignore it
            self._reject_new(session_key, begin, broker, fields, "6", "duplicate ClOrdID")
            return
        if self._reference(request.symbol) is None:
            self._reject_new(session_key, begin, broker, fields, "1", "unknown symbol")
            return
        if request.quantity is None or request.quantity <= 0:
            self._reject_new(session_key, begin, broker, fields, "13", "bad quantity")
            return
        problem = _price_problem(request.order_type, request.limit_price, request.stop_price)
        if problem:
            self._reject_new(session_key, begin, broker, fields, "99", problem)
            return
        order = SimOrder(
            session_key=session_key,
            begin_string=begin,
            broker=broker,
            order_id=next(self._order_ids),
            cl_ord_id=request.cl_ord_id,
            symbol=request.symbol,
            side=fields[54],
            quantity=request.quantity,
            order_type=request.order_type,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            cl_ord_ids=[request.cl_ord_id],
        )
        self._by_cl_ord_id[(session_key, order.cl_ord_id)] = order
        self._open[order.order_id] = order
        self._report(order, "0", "0")
        self._work(order)

    def _work(self, order: SimOrder) -> None:
        if not order.live or order.leaves_qty <= 0:
            return
        reference = self._reference(order.symbol)
        if reference is None:
            return
        quote = make_quote(order.broker, reference, self.config.tick)
        price = quote.ask if order.is_buy else quote.bid
        if order.order_type in ("stop", "stop_limit") and not order.triggered:
            assert order.stop_price is not None
            crossed = price >= order.stop_price if order.is_buy else price <= order.stop_price
            if not crossed:
                return self._unfillable(order)
            order.triggered = True
        if order.order_type in ("limit", "stop_limit"):
            assert order.limit_price is not None
            marketable = price <= order.limit_price if order.is_buy else price >= order.limit_price
            if not marketable:
                return self._unfillable(order)
        qty = order.leaves_qty
        slice_qty = self.config.slice_qty
        sliced = slice_qty is not None and order.time_in_force not in ("ioc", "fok")
        if sliced and slice_qty is not None and qty > slice_qty:
            qty = slice_qty
        self._fill(order, qty, price)
        if order.live and order.leaves_qty > 0 and not order.slice_pending:
            order.slice_pending = True
            assert self.acceptor.loop is not None
            self.acceptor.loop.call_later(
                self.config.slice_interval_ms / 1000, self._guarded, self._next_slice, order
            )

    def _next_slice(self, order: SimOrder) -> None:
        order.slice_pending = False
        self._work(order)

    def _unfillable(self, order: SimOrder) -> None:
        if order.time_in_force in ("ioc", "fok"):
            self._finish(order, "4", "4", text=f"{order.time_in_force.upper()} not marketable")

    def _fill(self, order: SimOrder, qty: Decimal, price: Decimal) -> None:
        order.cum_qty += qty
        order.notional += qty * price
        order.fills.append((qty, price))
        if order.cum_qty >= order.quantity:
            order.status = "2"
            self._open.pop(order.order_id, None)
        else:
            order.status = "1"
        self._report(order, "F", order.status, last_qty=qty, last_px=price)

    def _finish(self, order: SimOrder, exec_type: str, status: str, **kwargs: Any) -> None:
        order.status = status
        self._open.pop(order.order_id, None)
        self._report(order, exec_type, status, **kwargs)

    def _cancel(
        self, session_key: str, request: CancelRequest, fields: dict[int, str], poss_dup: bool
    ) -> None:
        order = self._by_cl_ord_id.get((session_key, request.orig_cl_ord_id))
        if (session_key, request.cl_ord_id) in self._by_cl_ord_id:
            if not poss_dup:
                self._cancel_reject(session_key, fields, "1", "6", "duplicate ClOrdID", order)
            return
        if order is None:
            self._cancel_reject(session_key, fields, "1", "1", "unknown order")
            return
        if not order.live:
            self._cancel_reject(session_key, fields, "1", "0", "too late to cancel", order)
            return
        previous = order.cl_ord_id
        self._link(order, request.cl_ord_id)
        if self.config.send_pending:
            self._report(order, "6", "6", orig_cl_ord_id=previous)
        self._finish(order, "4", "4", orig_cl_ord_id=previous)

    def _replace(
        self, session_key: str, request: ReplaceRequest, fields: dict[int, str], poss_dup: bool
    ) -> None:
        order = self._by_cl_ord_id.get((session_key, request.orig_cl_ord_id))
        if (session_key, request.cl_ord_id) in self._by_cl_ord_id:
            if not poss_dup:
                self._cancel_reject(session_key, fields, "2", "6", "duplicate ClOrdID", order)
            return
        if order is None:
            self._cancel_reject(session_key, fields, "2", "1", "unknown order")
            return
        if not order.live:
            self._cancel_reject(session_key, fields, "2", "0", "too late to replace", order)
            return
        problem = _price_problem(request.order_type, request.limit_price, request.stop_price)
        if request.quantity is None or request.quantity <= 0:
            problem = "bad quantity"
        elif request.quantity < order.cum_qty:
            problem = "quantity below filled quantity"
        elif fields.get(54) != order.side or (request.symbol and request.symbol != order.symbol):
            problem = "symbol and side cannot change"
        if problem:
            self._cancel_reject(session_key, fields, "2", "99", problem, order)
            return
        previous = order.cl_ord_id
        if self.config.send_pending:
            self._report(order, "E", "E", cl_ord_id=request.cl_ord_id, orig_cl_ord_id=previous)
        self._link(order, request.cl_ord_id)
        order.quantity = request.quantity
        order.order_type = request.order_type
        order.limit_price = request.limit_price
        order.stop_price = request.stop_price
        order.time_in_force = request.time_in_force
        order.triggered = False
        if order.cum_qty >= order.quantity:
            order.status = "2"
            self._open.pop(order.order_id, None)
        else:
            order.status = "1" if order.cum_qty > 0 else "0"
        self._report(order, "5", order.status, orig_cl_ord_id=previous)
        self._work(order)

    def _link(self, order: SimOrder, cl_ord_id: str) -> None:
        order.cl_ord_id = cl_ord_id
        order.cl_ord_ids.append(cl_ord_id)
        self._by_cl_ord_id[(order.session_key, cl_ord_id)] = order

    def _schedule_rest_check(self) -> None:
        assert self.acceptor.loop is not None and self.config.rest_check_interval_ms
        self._rest_timer = self.acceptor.loop.call_later(
            self.config.rest_check_interval_ms / 1000, self._rest_check
        )

    def _rest_check(self) -> None:
        try:
            for order in list(self._open.values()):
                if not order.slice_pending:
                    self._work(order)
        except Exception:
            logger.exception("resting-order check failed")
        finally:
            self._schedule_rest_check()

    # outbound messages ----------------------------------------------------------------------
    def _send(self, session_key: str, message: OutboundMessage) -> bool:
        sent = self._sent.get(session_key)
        if sent is None:
            sent = self._sent[session_key] = deque(maxlen=_REPLAY_LIMIT)
        sent.append((message, now_utc()))
        return self.acceptor.send(session_key, message)

    def _report(
        self,
        order: SimOrder,
        exec_type: str,
        status: str,
        *,
        last_qty: Decimal | None = None,
        last_px: Decimal | None = None,
        text: str | None = None,
        cl_ord_id: str | None = None,
        orig_cl_ord_id: str | None = None,
    ) -> None:
        message = exec_report_fields(
            begin_string=order.begin_string,
            order_id=order.order_id,
            exec_id=next(self._exec_ids),
            exec_type=exec_type,
            ord_status=status,
            symbol=order.symbol,
            side=order.side,
            order_qty=order.quantity,
            cum_qty=order.cum_qty,
            avg_px=order.avg_px,
            leaves_qty=order.leaves_qty,
            cl_ord_id=cl_ord_id or order.cl_ord_id,
            orig_cl_ord_id=orig_cl_ord_id,
            last_qty=last_qty,
            last_px=last_px,
            price=order.limit_price,
            text=text,
        )
        self._send(order.session_key, message)

    def _reject_new(
        self,
        session_key: str,
        begin: str,
        broker: BrokerProfile,
        fields: dict[int, str],
        reason: str,
        text: str,
    ) -> None:
        try:
            qty = Decimal(fields.get(38, "0"))
        except ArithmeticError:
            qty = Decimal(0)
        message = exec_report_fields(
            begin_string=begin,
            order_id=next(self._order_ids),
            exec_id=next(self._exec_ids),
            exec_type="8",
            ord_status="8",
            symbol=fields.get(55, "[N/A]") or "[N/A]",
            side=fields.get(54, "1") or "1",
            order_qty=qty if qty.is_finite() else Decimal(0),
            cum_qty=Decimal(0),
            avg_px=Decimal(0),
            leaves_qty=Decimal(0),
            cl_ord_id=fields.get(11),
            ord_rej_reason=reason,
            text=text,
        )
        self._send(session_key, message)

    def _cancel_reject(
        self,
        session_key: str,
        fields: dict[int, str],
        response_to: str,
        reason: str,
        text: str | None,
        order: SimOrder | None = None,
    ) -> None:
        body = [
            (37, order.order_id if order else "NONE"),
            (11, fields.get(11, "")),
            (41, fields.get(41, "")),
            # FIX: OrdStatus of an unknown order is reported as Rejected.
            (39, order.status if order else "8"),
            (434, response_to),
            (102, reason),
        ]
        if text:
            body.append((58, text))
        self._send(session_key, OutboundMessage("9", tuple(body)))

    def _business_reject(
        self, session_key: str, fields: dict[int, str], reason: str, text: str
    ) -> None:
        body = [(45, fields.get(34, "0")), (372, fields.get(35, "")), (380, reason), (58, text)]
        if fields.get(11):
            body.insert(2, (379, fields[11]))
        self._send(session_key, OutboundMessage("j", tuple(body)))


def _price_problem(
    order_type: str, limit_price: Decimal | None, stop_price: Decimal | None
) -> str | None:
    if order_type in ("limit", "stop_limit") and (limit_price is None or limit_price <= 0):
        return "bad price: limit price must be positive"
    if order_type in ("stop", "stop_limit") and (stop_price is None or stop_price <= 0):
        return "bad price: stop price must be positive"
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the simulator standalone with prices from a JSON file {"SYMBOL": "123.45", ...}."""
    parser = argparse.ArgumentParser(description="FIX venue simulator (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9878)
    parser.add_argument("--store-dir", default="var/fix/simulator")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--prices", required=True, help="JSON file: {symbol: price}")
    parser.add_argument("--clients", default="OMS", help="comma-separated client CompIDs")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--slice-qty", default=None)
    parser.add_argument("--slice-interval-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open(args.prices, encoding="utf-8") as f:
        prices = {k: Decimal(str(v)) for k, v in json.load(f).items()}
    config = SimulatorConfig(
        store_dir=args.store_dir,
        port=args.port,
        log_dir=args.log_dir,
        client_comp_ids=tuple(c.strip() for c in args.clients.split(",") if c.strip()),
        latency_ms=args.latency_ms,
        slice_qty=Decimal(args.slice_qty) if args.slice_qty else None,
        slice_interval_ms=args.slice_interval_ms,
    )
    simulator = VenueSimulator(config, prices.get)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    simulator.start()
    print(f"venue simulator listening on {config.host}:{simulator.port}", flush=True)
    try:
        stop.wait()
    finally:
        simulator.stop()


if __name__ == "__main__":
    main()
