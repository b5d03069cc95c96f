"""The FIX gateway: QuickFIX initiator sessions to brokers, delegating to a GatewayHandler.

Threading: QuickFIX calls the application on its own thread(s) (one socket thread for a
SocketInitiator, one per session for a ThreadedSocketInitiator). Handler methods are called
synchronously on those threads, so a handler that commits the inbound message before returning
gets at-least-once delivery: QuickFIX only advances the target sequence number after `fromApp`
returns. `send()` may be called from any thread.

Failure policy (an exception escaping a QuickFIX callback would end the process):
- inbound application message, handler raises: retried a few times; if it still fails, the target
  sequence number is rewound and the connection dropped, so after reconnecting (ReconnectInterval)
  QuickFIX asks the broker to resend it (PossDup) instead of the fill being lost
  (`inbound_failure="rewind"`, the default), or it is logged and skipped (`"skip"`).
- outbound application message, handler's `on_outbound` raises: the message is not sent
  (QuickFIX DoNotSend), `send()` returns False; for a resend (PossDup) it is sent anyway,
  because the original was recorded.
- admin messages and logon/logout notifications: logged and ignored.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import quickfix as fix

from orders.fix.common import SessionStatus, make_session_key, seq_num_of
from orders.fix.engine import build_settings, lookup_status, session_key_of, to_quickfix
from orders.fix.messages import (
    MSG_NEW_ORDER_SINGLE,
    MSG_ORDER_CANCEL_REPLACE_REQUEST,
    MSG_ORDER_CANCEL_REQUEST,
    OutboundMessage,
    OutboundRequest,
    ParsedMessage,
    build_message,
    parse_message,
    parse_utc_timestamp,
    split_fields,
)

logger = logging.getLogger("orders.fix.gateway")

FIX_VERSIONS = ("FIX.4.2", "FIX.4.4")
ORDER_MSG_TYPES = frozenset(
    {MSG_NEW_ORDER_SINGLE, MSG_ORDER_CANCEL_REQUEST, MSG_ORDER_CANCEL_REPLACE_REQUEST}
)


class GatewayHandler(Protocol):
    """What the gateway reports to (the Django side implements it).

    All methods run on QuickFIX threads; they must be thread-safe and should be quick.
    Optional extra method: `on_resend_suppressed(session_key, raw)`, called when a stale order
    message is not resent (see Gateway's `max_resend_age`).
    """

    def on_logon(self, session_key: str) -> None:
        """The session is logged on."""

    def on_logout(self, session_key: str) -> None:
        """The session is logged out or disconnected."""

    def on_inbound(self, session_key: str, raw: str, parsed: ParsedMessage) -> None:
        """A message was received (admin or application).

        `raw` is QuickFIX's serialisation of it: the same fields and values as on the wire, body
        fields in tag order; the byte-exact wire text is in the FileLog when log_dir is set.
        """

    def on_outbound(self, session_key: str, raw: str) -> None:
        """A message is about to be sent (admin or application, including PossDup resends)."""


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """One initiator session to a broker."""

    sender_comp_id: str
    target_comp_id: str
    host: str
    port: int
    fix_version: str = "FIX.4.4"  # "FIX.4.2" or "FIX.4.4"
    heartbeat: int = 30  # seconds
    store_dir: str = "var/fix/store"  # FileStore: sequence numbers and sent messages
    log_dir: str | None = None  # QuickFIX FileLog (exact wire messages + events); None = none
    reconnect_interval: int = 5  # seconds between connection attempts
    reset_on_logon: bool = False  # True resets sequence numbers at every logon (some venues)
    start_time: str | None = None  # "HH:MM:SS" UTC daily session start; None = non-stop
    end_time: str | None = None  # "HH:MM:SS" UTC daily session end

    @property
    def key(self) -> str:
        """Session key, e.g. 'FIX.4.4:OMS->BRKA'."""
        return make_session_key(self.fix_version, self.sender_comp_id, self.target_comp_id)

    def session_id(self) -> Any:
        """The quickfix.SessionID of this spec."""
        return fix.SessionID(self.fix_version, self.sender_comp_id, self.target_comp_id)


def initiator_settings(specs: Iterable[SessionSpec]) -> Any:
    """QuickFIX SessionSettings for initiator sessions (written in code, not a file)."""
    defaults = {
        "ConnectionType": "initiator",
        # Our own validation (messages.parse_message) is more lenient than a data dictionary:
        # a counterparty's extra or custom tags must never make us drop an execution.
        "UseDataDictionary": "N",
        "PersistMessages": "Y",
        "SocketNodelay": "Y",
        "ValidateUserDefinedFields": "N",
        "CheckLatency": "Y",
        "MaxLatency": "120",
        "LogonTimeout": "10",
        "LogoutTimeout": "2",
        "SendRedundantResendRequests": "N",
    }
    specs = list(specs)
    log_dirs = [spec.log_dir for spec in specs if spec.log_dir]
    log_dir_needed = bool(log_dirs)
    if log_dirs:
        defaults["FileLogPath"] = log_dirs[0]  # the engine's global (non-session) log
    sessions = []
    for spec in specs:
        if spec.fix_version not in FIX_VERSIONS:
            raise ValueError(f"unsupported FIX version {spec.fix_version!r}")
        Path(spec.store_dir).mkdir(parents=True, exist_ok=True)
        values = {
            "SocketConnectHost": spec.host,
            "SocketConnectPort": str(spec.port),
            "HeartBtInt": str(spec.heartbeat),
            "ReconnectInterval": str(spec.reconnect_interval),
            "FileStorePath": spec.store_dir,
            "ResetOnLogon": "Y" if spec.reset_on_logon else "N",
        }
        if spec.start_time and spec.end_time:
            # A daily session: QuickFIX logs out at end_time and resets sequence numbers at
            # the start of each new period (agree this with the broker).
            values.update(NonStopSession="N", StartTime=spec.start_time, EndTime=spec.end_time)
        else:
            # Never reset sequence numbers behind the operator's back.
            values["NonStopSession"] = "Y"
        if log_dir_needed:
            # FileLogFactory needs a path for every session once one session logs.
            values["FileLogPath"] = spec.log_dir or str(Path(spec.store_dir) / "log")
        sessions.append((spec.session_id(), values))
    return build_settings(defaults, sessions)


class GatewayApplication(fix.Application):
    """QuickFIX Application whose callbacks never let an exception escape."""

    def __init__(
        self,
        handler: GatewayHandler,
        *,
        inbound_failure: Literal["rewind", "skip"] = "rewind",
        inbound_retries: int = 3,
        retry_delay: float = 0.2,
        max_resend_age: float | None = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.inbound_failure = inbound_failure
        self.inbound_retries = inbound_retries
        self.retry_delay = retry_delay
        self.max_resend_age = max_resend_age
        self.logged_on: dict[str, threading.Event] = {}

    def _event(self, key: str) -> threading.Event:
        event = self.logged_on.get(key)
        if event is None:
            event = self.logged_on.setdefault(key, threading.Event())
        return event

    # session events ---------------------------------------------------------------------------
    def onCreate(self, sessionID: Any) -> None:
        try:
            self._event(session_key_of(sessionID))
        except Exception:
            logger.exception("onCreate failed")

    def onLogon(self, sessionID: Any) -> None:
        try:
            key = session_key_of(sessionID)
            self._event(key).set()
            logger.info("FIX logon %s", key)
            self.handler.on_logon(key)
        except Exception:
            logger.exception("on_logon handler failed")

    def onLogout(self, sessionID: Any) -> None:
        try:
            key = session_key_of(sessionID)
            self._event(key).clear()
            logger.info("FIX logout %s", key)
            self.handler.on_logout(key)
        except Exception:
            logger.exception("on_logout handler failed")

    # outbound --------------------------------------------------------------------------------
    def toAdmin(self, message: Any, sessionID: Any) -> None:
        try:
            self.handler.on_outbound(session_key_of(sessionID), message.toString())
        except Exception:
            logger.exception("on_outbound handler failed for an admin message")

    def toApp(self, message: Any, sessionID: Any) -> None:
        # DoNotSend is the one exception QuickFIX's Python binding accepts from toApp.
        try:
            key = session_key_of(sessionID)
            raw = message.toString()
            header = message.getHeader()
            poss_dup = header.isSetField(43) and header.getField(43) == "Y"
        except Exception:
            logger.exception("toApp could not read the message; not sending it")
            raise fix.DoNotSend() from None
        if poss_dup and self._too_old_to_resend(raw):
            self._resend_suppressed(key, raw)
            raise fix.DoNotSend()
        try:
            self.handler.on_outbound(key, raw)
        except Exception:
            if poss_dup:
                logger.exception("on_outbound failed for a resend of %s; resending anyway", key)
                return
            logger.exception("on_outbound failed on %s; message not sent", key)
            raise fix.DoNotSend() from None

    def _too_old_to_resend(self, raw: str) -> bool:
        if self.max_resend_age is None:
            return False
        try:
            values = dict(split_fields(raw))
            if values.get(35) not in ORDER_MSG_TYPES or not values.get(122):
                return False
            sent = parse_utc_timestamp(values[122])
            age = (dt.datetime.now(dt.UTC) - sent).total_seconds()
            return age > self.max_resend_age
        except Exception:
            logger.exception("could not judge the age of a resend; resending it")
            return False

    def _resend_suppressed(self, key: str, raw: str) -> None:
        logger.warning("FIX %s: stale order message not resent: %s", key, raw.replace("\x01", "|"))
        callback = getattr(self.handler, "on_resend_suppressed", None)
        if callback is None:
            return
        try:
            callback(key, raw)
        except Exception:
            logger.exception("on_resend_suppressed handler failed")

    # inbound ---------------------------------------------------------------------------------
    def fromAdmin(self, message: Any, sessionID: Any) -> None:
        try:
            key = session_key_of(sessionID)
            raw = message.toString()
            self.handler.on_inbound(key, raw, parse_message(raw))
        except Exception:
            logger.exception("on_inbound handler failed for an admin message")

    def fromApp(self, message: Any, sessionID: Any) -> None:
        try:
            key = session_key_of(sessionID)
            raw = message.toString()
            parsed = parse_message(raw)
        except Exception:
            logger.exception("fromApp could not read a message")
            return
        attempts = 1 + max(0, self.inbound_retries)
        for attempt in range(attempts):
            try:
                self.handler.on_inbound(key, raw, parsed)
                return
            except Exception:
                logger.exception(
                    "on_inbound failed on %s (attempt %d/%d)", key, attempt + 1, attempts
                )
                if attempt + 1 < attempts:
                    time.sleep(self.retry_delay * (attempt + 1))
        if self.inbound_failure == "rewind":
            self._rewind(sessionID, key, raw)
        else:
            logger.error("FIX %s: inbound message skipped: %s", key, raw.replace("\x01", "|"))

    def _rewind(self, sessionID: Any, key: str, raw: str) -> None:
        try:
            seq = seq_num_of(raw)
            session = fix.Session.lookupSession(sessionID)
            if seq is None or session is None:
                logger.error("FIX %s: cannot rewind; message skipped", key)
                return
            # QuickFIX increments the expected number after fromApp returns: land on `seq`, so
            # the next logon finds a gap and asks the broker to resend from this message.
            session.setNextTargetMsgSeqNum(seq - 1)
            # disconnect(), not logout(): logout() disables the session and it never reconnects.
            session.disconnect()
            logger.error("FIX %s: handler failing; rewound to %d and disconnected", key, seq)
        except Exception:
            logger.exception("FIX %s: rewind failed", key)


class Gateway:
    """Holds the initiator sessions; start(), send(), session_status(), stop()."""

    def __init__(
        self,
        specs: Iterable[SessionSpec],
        handler: GatewayHandler,
        *,
        threaded: bool = False,
        inbound_failure: Literal["rewind", "skip"] = "rewind",
        inbound_retries: int = 3,
        retry_delay: float = 0.2,
        max_resend_age: float | None = None,
    ) -> None:
        self.specs = {spec.key: spec for spec in specs}
        self.handler = handler
        self.threaded = threaded
        self.application = GatewayApplication(
            handler,
            inbound_failure=inbound_failure,
            inbound_retries=inbound_retries,
            retry_delay=retry_delay,
            max_resend_age=max_resend_age,
        )
        self._session_ids = {key: spec.session_id() for key, spec in self.specs.items()}
        self._initiator: Any = None
        self._settings: Any = None
        self._store_factory: Any = None
        self._log_factory: Any = None
        self._lock = threading.Lock()

    @property
    def session_keys(self) -> list[str]:
        """Keys of the configured sessions."""
        return list(self.specs)

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._initiator is not None

    def start(self) -> None:
        """Create the sessions and start connecting (returns at once; logon is asynchronous)."""
        with self._lock:
            if self._initiator is not None:
                return
            self._settings = initiator_settings(self.specs.values())
            self._store_factory = fix.FileStoreFactory(self._settings)
            cls = fix.ThreadedSocketInitiator if self.threaded else fix.SocketInitiator
            if any(spec.log_dir for spec in self.specs.values()):
                self._log_factory = fix.FileLogFactory(self._settings)
                self._initiator = cls(
                    self.application, self._store_factory, self._settings, self._log_factory
                )
            else:
                self._initiator = cls(self.application, self._store_factory, self._settings)
            self._initiator.start()

    def stop(self, force: bool = False, logout_timeout: float = 5.0) -> None:
        """Log out (unless force), wait for the answers, stop; call before the process exits."""
        with self._lock:
            initiator, self._initiator = self._initiator, None
            if initiator is None:
                return
            try:
                if not force:
                    self._logout_all(logout_timeout)
                # QuickFIX's own graceful stop polls once a second; we already waited.
                initiator.stop(True)
            finally:
                for event in self.application.logged_on.values():
                    event.clear()
                # Keep the SWIG objects alive until the initiator is gone.
                del initiator
                self._settings = self._store_factory = self._log_factory = None

    def _logout_all(self, timeout: float) -> None:
        sessions = []
        for session_id in self._session_ids.values():
            session = fix.Session.lookupSession(session_id)
            if session is not None and session.isLoggedOn():
                session.logout("gateway stopping")
                sessions.append(session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.isLoggedOn() for s in sessions):
            time.sleep(0.01)

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_logged_on(self, session_key: str | None = None, timeout: float = 10.0) -> bool:
        """Block until the session (or every session) is logged on; False on timeout."""
        keys = [session_key] if session_key else list(self.specs)
        deadline = time.monotonic() + timeout
        for key in keys:
            remaining = max(0.0, deadline - time.monotonic())
            if not self.application._event(key).wait(remaining):
                return False
        return True

    def session_status(self, session_key: str) -> SessionStatus:
        """Logged-on flag and next sender/target sequence numbers of one session."""
        return lookup_status(session_key, self._session_ids.get(session_key))

    def stored_orders(
        self, session_key: str, cl_ord_ids: Iterable[str], not_before: dt.datetime
    ) -> dict[str, tuple[int, str]]:
        """ClOrdID -> (MsgSeqNum, raw) of the order messages QuickFIX numbered for these ClOrdIDs.

        QuickFIX writes an application message to its store before it writes it to the socket,
        so a message found here was numbered and left (or goes out in QuickFIX's resend if the
        broker missed it), and one not found never left. Reads the session's FileStore from
        the newest message back, stopping at SendingTime `not_before`.
        """
        spec = self.specs.get(session_key)
        if spec is None:
            return {}
        return stored_order_messages(spec, set(cl_ord_ids), not_before)

    def send(self, session_key: str, message: OutboundRequest | OutboundMessage) -> bool:
        """Send an order message now; False if the session is not logged on or refused it.

        Refusing while logged out matters: QuickFIX would otherwise store the message and
        deliver it later as a resend, possibly long after the trader expected it.
        """
        session_id = self._session_ids.get(session_key)
        if session_id is None or self._initiator is None:
            return False
        session = fix.Session.lookupSession(session_id)
        if session is None or not session.isLoggedOn():
            return False
        outbound = message if isinstance(message, OutboundMessage) else build_message(message)
        return bool(fix.Session.sendToTarget(to_quickfix(outbound), session_id))


def _store_entries_backwards(path: Path, chunk: int = 65_536) -> Iterable[tuple[int, int, int]]:
    """(MsgSeqNum, offset, size) of a FileStore header file, newest first.

    The header file is "seq,offset,size " entries appended in sequence order; QuickFIX flushes
    the body before the header, so every complete entry's body is there. An incomplete last
    entry (being written) is skipped.
    """
    with path.open("rb") as f:
        f.seek(0, 2)
        pos = f.tell()
        carry = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            parts = (f.read(step) + carry).split(b" ")
            carry = parts.pop(0) if pos > 0 else b""
            for entry in reversed(parts):
                numbers = entry.split(b",")
                if len(numbers) == 3 and all(n.isdigit() for n in numbers):
                    yield int(numbers[0]), int(numbers[1]), int(numbers[2])


def stored_order_messages(
    spec: SessionSpec, cl_ord_ids: set[str], not_before: dt.datetime
) -> dict[str, tuple[int, str]]:
    """ClOrdID -> (MsgSeqNum, raw) of the order messages in a session's FileStore (see
    `Gateway.stored_orders`); stops at the first message sent before `not_before`."""
    prefix = (
        Path(spec.store_dir) / f"{spec.fix_version}-{spec.sender_comp_id}-{spec.target_comp_id}"
    )
    header, body = Path(f"{prefix}.header"), Path(f"{prefix}.body")
    found: dict[str, tuple[int, str]] = {}
    if not cl_ord_ids or not header.exists() or not body.exists():
        return found
    with body.open("rb") as messages:
        for seq, offset, size in _store_entries_backwards(header):
            messages.seek(offset)
            raw = messages.read(size).decode("latin-1")
            values: dict[int, str] = {}
            try:
                for tag, value in split_fields(raw):
                    values.setdefault(tag, value)
                sent = parse_utc_timestamp(values[52])
            except (KeyError, ValueError):
                continue  # not a message QuickFIX wrote whole: it cannot be one we look for
            if sent < not_before:
                break
            cl_ord_id = values.get(11)
            if values.get(35) in ORDER_MSG_TYPES and cl_ord_id in cl_ord_ids:
                found.setdefault(cl_ord_id, (seq, raw))
                if len(found) == len(cl_ord_ids):
                    break
    return found
