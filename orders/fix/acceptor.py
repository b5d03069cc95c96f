"""A small FIX 4.2/4.4 acceptor session layer in pure Python (asyncio), bound to one address.

Why not QuickFIX here: QuickFIX 1.16's SocketAcceptor always binds 0.0.0.0 (no accept-address
setting in the C++ engine), and the venue simulator must listen on 127.0.0.1 only. Having the
simulator speak FIX through an independent implementation also proves the QuickFIX gateway
interoperates with a counterparty that is not QuickFIX.

What it implements (enough to be a well-behaved counterparty): Logon (with ResetSeqNumFlag),
heartbeats and TestRequest, Logout, persisted sequence numbers and sent application messages
(a restart resumes numbering), ResendRequest answered with PossDup resends and
SequenceReset-GapFill for admin messages, gap detection on inbound (queue + ResendRequest),
SequenceReset (gap fill and reset), MsgSeqNum-too-low logout, PossDup duplicates ignored.

Threading: everything runs on one asyncio loop in a background thread; public methods marked
thread-safe may be called from any thread, the others only from the loop (application callbacks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from orders.fix.common import SessionStatus, make_session_key
from orders.fix.messages import (
    ADMIN_MSG_TYPES,
    SOH,
    OutboundMessage,
    encode_message,
    format_utc_timestamp,
    now_utc,
    parse_utc_timestamp,
    split_fields,
)

logger = logging.getLogger("orders.fix.acceptor")

_HEADER_TAGS = frozenset({8, 9, 35, 34, 43, 49, 52, 56, 97, 115, 122, 128, 10})


class FramingError(Exception):
    """The byte stream is not FIX (bad BeginString, BodyLength or CheckSum)."""


class FixFramer:
    """Cuts a TCP byte stream into complete FIX messages, checking length and checksum."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete messages now available (raises FramingError)."""
        self._buf += data
        out: list[bytes] = []
        while self._buf:
            # A TCP read can end anywhere, even inside "8=" or "9=": wait for more bytes.
            if not b"8=".startswith(self._buf[:2]):
                raise FramingError("message does not start with 8=")
            first = self._buf.find(b"\x01")
            if first < 0 or len(self._buf) < first + 3:
                break
            if not self._buf.startswith(b"9=", first + 1):
                raise FramingError("BodyLength (9) must be the second field")
            second = self._buf.find(b"\x01", first + 1)
            if second < 0:
                break
            length_text = bytes(self._buf[first + 3 : second])
            if not length_text.isdigit():
                raise FramingError("bad BodyLength")
            body_end = second + 1 + int(length_text)
            total = body_end + 7  # "10=NNN" + SOH
            if len(self._buf) < total:
                break
            if not self._buf.startswith(b"10=", body_end) or self._buf[total - 1] != 1:
                raise FramingError("CheckSum (10) not where BodyLength says")
            expected = sum(self._buf[:body_end]) % 256
            if bytes(self._buf[body_end + 3 : body_end + 6]) != f"{expected:03d}".encode():
                raise FramingError("bad CheckSum")
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
        return out


class SessionStore:
    """Sequence numbers and sent application messages of one session, in two files.

    Like QuickFIX's FileStore it does not fsync: a process crash loses nothing (the OS has the
    data), a machine crash may.
    """

    def __init__(self, store_dir: str, key: str) -> None:
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        stem = os.path.join(store_dir, key.replace(":", "-").replace(">", ""))
        self._seq_path = stem + ".seqnums"
        self._body_path = stem + ".body"
        self.next_sender = 1
        self.next_target = 1
        self._messages: dict[int, str] = {}
        if os.path.exists(self._seq_path):
            with open(self._seq_path, encoding="ascii") as f:
                sender, target = f.read().split()
                self.next_sender, self.next_target = int(sender), int(target)
        if os.path.exists(self._body_path):
            with open(self._body_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        seq, raw = json.loads(line)
                        self._messages[int(seq)] = raw
        self._seq_file: IO[str] = open(self._seq_path, "a+", encoding="ascii")  # noqa: SIM115
        self._body_file: IO[str] = open(self._body_path, "a", encoding="utf-8")  # noqa: SIM115
        self.save()

    def save(self) -> None:
        """Persist the sequence numbers."""
        self._seq_file.seek(0)
        self._seq_file.truncate()
        self._seq_file.write(f"{self.next_sender} {self.next_target}\n")
        self._seq_file.flush()

    def store(self, seq: int, raw: str) -> None:
        """Remember a sent application message for resends."""
        self._messages[seq] = raw
        self._body_file.write(json.dumps([seq, raw]) + "\n")
        self._body_file.flush()

    def get(self, seq: int) -> str | None:
        """A stored application message, or None (admin message or unknown)."""
        return self._messages.get(seq)

    def reset(self) -> None:
        """Start both sequences again at 1 and forget stored messages."""
        self.next_sender = self.next_target = 1
        self._messages.clear()
        self._body_file.close()
        self._body_file = open(self._body_path, "w", encoding="utf-8")  # noqa: SIM115
        self.save()

    def close(self) -> None:
        """Close the files."""
        self._seq_file.close()
        self._body_file.close()


class AcceptorApplication(Protocol):
    """Callbacks of the acceptor (run on its loop thread; must not block)."""

    def on_logon(self, session_key: str) -> None:
        """A counterparty logged on."""

    def on_logout(self, session_key: str) -> None:
        """A session ended (logout or disconnect)."""

    def on_message(self, session_key: str, raw: str, fields: dict[int, str]) -> None:
        """An application message arrived in sequence (fields: first value of each tag)."""


@dataclass
class _Pending:
    values: dict[int, str]
    raw: str
    processed: bool  # already acted on (ResendRequest); only the sequence number remains


class _Session:
    def __init__(self, begin_string: str, sender: str, target: str, store: SessionStore) -> None:
        self.begin_string = begin_string
        self.sender = sender  # our CompID (the broker)
        self.target = target  # the client's CompID
        self.key = make_session_key(begin_string, sender, target)
        self.store = store
        self.writer: asyncio.StreamWriter | None = None
        self.logged_on = False
        self.logout_sent = False
        self.heartbeat = 30
        self.last_sent = 0.0
        self.last_received = 0.0
        self.test_request_sent = False
        self.pending: dict[int, _Pending] = {}
        self.resend_requested = False
        self.log: IO[str] | None = None


class FixAcceptor:
    """Accepts FIX sessions (one listening socket) for a fixed list of CompID pairs."""

    def __init__(
        self,
        *,
        application: AcceptorApplication,
        sessions: Iterable[tuple[str, str, str]],  # (BeginString, our CompID, their CompID)
        store_dir: str,
        host: str = "127.0.0.1",
        port: int = 0,
        log_dir: str | None = None,
        reset_on_start: bool = False,
        logon_timeout: float = 10.0,
    ) -> None:
        self.application = application
        self.host = host
        self.port = port
        self.store_dir = store_dir
        self.log_dir = log_dir
        self.reset_on_start = reset_on_start
        self.logon_timeout = logon_timeout
        self._session_defs = list(sessions)
        self.sessions: dict[str, _Session] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._test_req_counter = 0

    # lifecycle (thread-safe) -----------------------------------------------------------------
    def start(self) -> None:
        """Bind, start the loop thread and return once listening (self.port is then known)."""
        if self._thread is not None:
            return
        for begin, ours, theirs in self._session_defs:
            key = make_session_key(begin, ours, theirs)
            store = SessionStore(self.store_dir, key)
            if self.reset_on_start:
                store.reset()
            session = _Session(begin, ours, theirs, store)
            if self.log_dir:
                Path(self.log_dir).mkdir(parents=True, exist_ok=True)
                name = key.replace(":", "-").replace(">", "") + ".messages.log"
                session.log = open(os.path.join(self.log_dir, name), "a", buffering=1)  # noqa: SIM115
            self.sessions[key] = session
        self.loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="fix-acceptor", daemon=True
        )
        self._thread.start()
        started.result(timeout=10)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                asyncio.start_server(self._on_connection, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._ticker = self.loop.call_later(0.5, self._tick)
        except Exception as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        self.loop.run_forever()
        # Let connection handlers see their cancellation before the loop closes (otherwise
        # they are garbage-collected pending: "Event loop is closed" noise at exit).
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def stop(self, logout_wait: float = 2.0) -> None:
        """Log every session out (waiting briefly for the answers), close, join the thread."""
        if self._thread is None or self.loop is None:
            return
        try:
            self.call(self._begin_stop)
            deadline = time.monotonic() + logout_wait
            while time.monotonic() < deadline and self.call(self._any_connected):
                time.sleep(0.02)
            self.call(self._close_all)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
            for session in self.sessions.values():
                session.store.close()
                if session.log is not None:
                    session.log.close()
            self.sessions.clear()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run fn on the loop thread and return its result (thread-safe)."""
        assert self.loop is not None
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def runner() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(runner)
        return future.result(timeout=timeout)

    def _begin_stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for session in self.sessions.values():
            if session.logged_on and not session.logout_sent:
                self._send_logout(session, "simulator shutting down")

    def _any_connected(self) -> bool:
        return any(s.writer is not None for s in self.sessions.values())

    def _close_all(self) -> None:
        for session in self.sessions.values():
            self._drop(session)

    # public helpers -------------------------------------------------------------------------
    def status(self, session_key: str) -> SessionStatus:
        """Logon state and sequence numbers of a session (thread-safe)."""

        def read() -> SessionStatus:
            s = self.sessions.get(session_key)
            if s is None:
                return SessionStatus(session_key, False, False, None, None)
            return SessionStatus(
                session_key, True, s.logged_on, s.store.next_sender, s.store.next_target
            )

        return self.call(read)

    def disconnect(self, session_key: str | None = None) -> None:
        """Drop the TCP connection(s) without a Logout, as a failing venue would (thread-safe)."""

        def drop() -> None:
            for key, session in self.sessions.items():
                if session_key is None or key == session_key:
                    self._drop(session)

        self.call(drop)

    def send(
        self,
        session_key: str,
        message: OutboundMessage,
        *,
        poss_dup: bool = False,
        orig_sending_time: Any = None,
    ) -> bool:
        """Send an application message (loop thread only). Stored for resend even when the
        session is down, so the client gets it through a ResendRequest after reconnecting."""
        session = self.sessions.get(session_key)
        if session is None:
            return False
        self._send(
            session,
            message.msg_type,
            message.fields,
            poss_dup=poss_dup,
            orig_sending_time=orig_sending_time,
        )
        return session.logged_on

    # connections ----------------------------------------------------------------------------
    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        framer = FixFramer()
        session: _Session | None = None
        try:
            while True:
                timeout = self.logon_timeout if session is None else None
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                for chunk in framer.feed(data):
                    raw = chunk.decode("utf-8", errors="replace")
                    if session is None:
                        session = self._on_first_message(raw, writer)
                        if session is None:
                            writer.close()
                            return
                    else:
                        if session.writer is not writer:
                            return  # dropped meanwhile
                        self._on_message(session, raw)
                    if session.writer is not writer:
                        return
        except (TimeoutError, FramingError, ConnectionError, OSError) as exc:
            logger.info("FIX connection closed: %s", exc)
        except Exception:
            logger.exception("FIX acceptor connection failed")
        finally:
            if session is not None and session.writer is writer:
                self._drop(session)
            else:
                writer.close()

    def _on_first_message(self, raw: str, writer: asyncio.StreamWriter) -> _Session | None:
        values = dict(reversed(split_fields(raw)))
        if values.get(35) != "A":
            logger.warning("FIX acceptor: first message is not a Logon; closing")
            return None
        key = make_session_key(values.get(8, ""), values.get(56, ""), values.get(49, ""))
        session = self.sessions.get(key)
        if session is None:
            logger.warning("FIX acceptor: unknown session %s; closing", key)
            return None
        if session.writer is not None:
            logger.warning("FIX acceptor: %s already connected; closing the new connection", key)
            return None
        session.writer = writer
        session.logout_sent = False
        session.pending.clear()
        session.resend_requested = False
        session.test_request_sent = False
        session.last_received = session.last_sent = time.monotonic()
        self._log(session, "IN ", raw)
        self._on_logon(session, values, raw)
        return session if session.writer is writer else None

    def _on_logon(self, session: _Session, values: dict[int, str], raw: str) -> None:
        seq = int(values.get(34, "0") or 0)
        try:
            session.heartbeat = max(1, int(values.get(108, "30")))
        except ValueError:
            session.heartbeat = 30
        reset = values.get(141) == "Y"
        if reset:
            session.store.reset()
        if seq < session.store.next_target:
            text = f"MsgSeqNum too low, expecting {session.store.next_target} but received {seq}"
            self._send_logout(session, text)
            self._drop(session)
            return
        logon_fields = [(98, "0"), (108, str(session.heartbeat))]
        if reset:
            logon_fields.append((141, "Y"))
        self._send(session, "A", logon_fields)
        session.logged_on = True
        if seq > session.store.next_target:
            session.pending[seq] = _Pending(values, raw, processed=True)
            self._request_resend(session)
        else:
            session.store.next_target = seq + 1
            session.store.save()
        self._notify(self.application.on_logon, session.key)

    def _on_message(self, session: _Session, raw: str) -> None:
        self._log(session, "IN ", raw)
        session.last_received = time.monotonic()
        session.test_request_sent = False
        values = dict(reversed(split_fields(raw)))
        if (
            values.get(8) != session.begin_string
            or values.get(49) != session.target
            or values.get(56) != session.sender
        ):
            self._send_logout(session, "incorrect BeginString or CompID")
            self._drop(session)
            return
        msg_type = values.get(35, "")
        try:
            seq = int(values.get(34, ""))
        except ValueError:
            self._send_logout(session, "missing MsgSeqNum")
            self._drop(session)
            return
        if msg_type == "5":
            self._on_logout_message(session)
            return
        expected = session.store.next_target
        if seq > expected:
            processed = False
            if msg_type == "2":
                # Answer at once: both sides may have gaps, and waiting could deadlock.
                self._on_resend_request(session, values)
                processed = True
            session.pending[seq] = _Pending(values, raw, processed)
            self._request_resend(session)
            return
        if seq < expected:
            if values.get(43) == "Y":
                return  # a duplicate we already processed
            if msg_type == "4" and values.get(123) != "Y":
                self._apply_sequence_reset(session, values)
                return
            text = f"MsgSeqNum too low, expecting {expected} but received {seq}"
            self._send_logout(session, text)
            self._drop(session)
            return
        self._accept(session, seq, _Pending(values, raw, False))

    def _accept(self, session: _Session, seq: int, item: _Pending) -> None:
        while True:
            values = item.values
            if values.get(35) == "4":
                self._apply_sequence_reset(session, values, seq)
            else:
                session.store.next_target = seq + 1
                session.store.save()
                if not item.processed:
                    self._dispatch(session, values, item.raw)
            if session.writer is None:
                return
            for stale in [s for s in session.pending if s < session.store.next_target]:
                del session.pending[stale]
            seq = session.store.next_target
            next_item = session.pending.pop(seq, None)
            if next_item is None:
                if not session.pending:
                    session.resend_requested = False
                return
            item = next_item

    def _apply_sequence_reset(
        self, session: _Session, values: dict[int, str], seq: int | None = None
    ) -> None:
        try:
            new_seq = int(values.get(36, ""))
        except ValueError:
            return
        if new_seq > session.store.next_target:
            session.store.next_target = new_seq
        elif seq is not None:
            session.store.next_target = seq + 1
        session.store.save()

    def _dispatch(self, session: _Session, values: dict[int, str], raw: str) -> None:
        msg_type = values.get(35, "")
        if msg_type == "1":
            self._send(session, "0", [(112, values.get(112, ""))])
        elif msg_type == "2":
            self._on_resend_request(session, values)
        elif msg_type in ("0", "A"):
            return  # a heartbeat, or a logon on a live session: nothing to answer
        elif msg_type == "3":
            logger.warning("FIX %s: session Reject received: %s", session.key, raw)
        elif msg_type not in ADMIN_MSG_TYPES:
            self._notify(self.application.on_message, session.key, raw, values)

    def _on_logout_message(self, session: _Session) -> None:
        if not session.logout_sent:
            self._send_logout(session, None)
        self._drop(session)

    def _request_resend(self, session: _Session) -> None:
        if session.resend_requested:
            return
        session.resend_requested = True
        # EndSeqNo 0 means "everything after BeginSeqNo" in FIX 4.2 and later.
        self._send(session, "2", [(7, str(session.store.next_target)), (16, "0")])

    def _on_resend_request(self, session: _Session, values: dict[int, str]) -> None:
        try:
            begin = int(values.get(7, ""))
            end = int(values.get(16, ""))
        except ValueError:
            return
        last = session.store.next_sender - 1
        if end == 0 or end > last:
            end = last
        gap_start: int | None = None
        for seq in range(begin, end + 1):
            stored = session.store.get(seq)
            if stored is None:
                if gap_start is None:
                    gap_start = seq
                continue
            if gap_start is not None:
                self._send_gap_fill(session, gap_start, seq)
                gap_start = None
            self._resend(session, seq, stored)
        if gap_start is not None:
            self._send_gap_fill(session, gap_start, end + 1)

    def _resend(self, session: _Session, seq: int, stored: str) -> None:
        fields = split_fields(stored)
        values = dict(fields)
        body = [(t, v) for t, v in fields if t not in _HEADER_TAGS]
        raw = encode_message(
            begin_string=session.begin_string,
            msg_type=values[35],
            sender_comp_id=session.sender,
            target_comp_id=session.target,
            msg_seq_num=seq,
            fields=body,
            poss_dup=True,
            orig_sending_time=parse_utc_timestamp(values[52]),
        )
        self._write(session, raw)

    def _send_gap_fill(self, session: _Session, seq: int, new_seq: int) -> None:
        raw = encode_message(
            begin_string=session.begin_string,
            msg_type="4",
            sender_comp_id=session.sender,
            target_comp_id=session.target,
            msg_seq_num=seq,
            fields=[(123, "Y"), (36, str(new_seq))],
            poss_dup=True,
            orig_sending_time=now_utc(),
        )
        self._write(session, raw)

    def _send_logout(self, session: _Session, text: str | None) -> None:
        session.logout_sent = True
        self._send(session, "5", [(58, text)] if text else [])

    # sending --------------------------------------------------------------------------------
    def _send(
        self,
        session: _Session,
        msg_type: str,
        fields: Iterable[tuple[int, str]],
        *,
        poss_dup: bool = False,
        orig_sending_time: Any = None,
    ) -> None:
        seq = session.store.next_sender
        raw = encode_message(
            begin_string=session.begin_string,
            msg_type=msg_type,
            sender_comp_id=session.sender,
            target_comp_id=session.target,
            msg_seq_num=seq,
            fields=list(fields),
            poss_dup=poss_dup,
            orig_sending_time=orig_sending_time,
        )
        if msg_type not in ADMIN_MSG_TYPES:
            session.store.store(seq, raw)
        session.store.next_sender = seq + 1
        session.store.save()
        # Application messages wait in the store while logged out; the client's
        # ResendRequest after the next logon delivers them (as PossDup).
        if session.writer is not None and (session.logged_on or msg_type in ("A", "5")):
            self._write(session, raw)

    def _write(self, session: _Session, raw: str) -> None:
        if session.writer is None:
            return
        try:
            session.writer.write(raw.encode("utf-8"))
            session.last_sent = time.monotonic()
            self._log(session, "OUT", raw)
        except Exception:
            logger.exception("FIX %s: write failed", session.key)
            self._drop(session)

    def _drop(self, session: _Session) -> None:
        writer, session.writer = session.writer, None
        was_logged_on, session.logged_on = session.logged_on, False
        session.pending.clear()
        session.resend_requested = False
        if writer is not None:
            try:
                writer.close()
            except Exception:
                logger.debug("close failed", exc_info=True)
        if was_logged_on:
            self._notify(self.application.on_logout, session.key)

    # timers ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            now = time.monotonic()
            for session in self.sessions.values():
                if not session.logged_on or session.writer is None:
                    continue
                hb = session.heartbeat
                silent = now - session.last_received
                if silent > 2.5 * hb:
                    logger.warning("FIX %s: counterparty silent; disconnecting", session.key)
                    self._drop(session)
                    continue
                if silent > 1.2 * hb and not session.test_request_sent:
                    self._test_req_counter += 1
                    session.test_request_sent = True
                    self._send(session, "1", [(112, f"TEST{self._test_req_counter}")])
                elif now - session.last_sent >= hb:
                    self._send(session, "0", [])
        except Exception:
            logger.exception("FIX acceptor tick failed")
        finally:
            if self.loop is not None and self._server is not None and self._server.is_serving():
                self._ticker = self.loop.call_later(0.5, self._tick)

    # misc -----------------------------------------------------------------------------------
    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("FIX acceptor application callback failed")

    def _log(self, session: _Session, direction: str, raw: str) -> None:
        if session.log is not None:
            stamp = format_utc_timestamp(now_utc())
            session.log.write(f"{stamp} {direction} {raw.replace(SOH, '|')}\n")
