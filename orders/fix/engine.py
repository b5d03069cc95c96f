"""QuickFIX plumbing: settings built in code, Message conversion, session status.

Why there is no Python Log/LogFactory: in the quickfix 1.16.0 PyPI build, returning a Python
`Log` from a Python `LogFactory.create()` goes through SWIG's ownership mutex, whose `Unlock()`
frees the lock instead of releasing it; the second session's log then deadlocks or corrupts the
heap (seen here as "malloc_consolidate(): unaligned fastbin chunk detected"). Exact wire bytes
are therefore logged by QuickFIX's own FileLog (C++), and callbacks see `Message.toString()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import quickfix as fix

from orders.fix.common import SessionStatus
from orders.fix.messages import OutboundMessage


def session_key_of(session_id: Any) -> str:
    """The string key of a quickfix.SessionID: 'FIX.4.4:SENDER->TARGET'."""
    return session_id.toString()


def to_quickfix(message: OutboundMessage) -> Any:
    """Build a quickfix.Message (header filled in by the session when sent)."""
    qf = fix.Message()
    qf.getHeader().setField(fix.MsgType(message.msg_type))
    for tag, value in message.fields:
        qf.setField(tag, value)
    return qf


def lookup_status(session_key: str, session_id: Any | None) -> SessionStatus:
    """Read logon state and sequence numbers of a session from QuickFIX."""
    session = fix.Session.lookupSession(session_id) if session_id is not None else None
    if session is None:
        return SessionStatus(session_key, False, False, None, None)
    return SessionStatus(
        session_key=session_key,
        exists=True,
        logged_on=bool(session.isLoggedOn()),
        next_sender_seq_num=int(session.getExpectedSenderNum()),
        next_target_seq_num=int(session.getExpectedTargetNum()),
    )


def build_settings(defaults: dict[str, str], sessions: Iterable[tuple[Any, dict[str, str]]]) -> Any:
    """A quickfix.SessionSettings built in memory from plain dictionaries."""
    settings = fix.SessionSettings()
    default_dict = fix.Dictionary()
    for name, value in defaults.items():
        default_dict.setString(name, value)
    settings.set(default_dict)
    for session_id, values in sessions:
        session_dict = fix.Dictionary()
        for name, value in values.items():
            session_dict.setString(name, value)
        settings.set(session_id, session_dict)
    return settings
