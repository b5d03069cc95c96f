"""Small shared types of the FIX layer that need no quickfix import."""

from __future__ import annotations

from dataclasses import dataclass

from orders.fix.messages import SOH

_SEQ_MARK = SOH + "34="


def make_session_key(fix_version: str, sender_comp_id: str, target_comp_id: str) -> str:
    """Session key 'FIX.4.4:SENDER->TARGET' (the format of quickfix.SessionID.toString())."""
    return f"{fix_version}:{sender_comp_id}->{target_comp_id}"


def seq_num_of(raw: str) -> int | None:
    """MsgSeqNum (34) of a raw message without a full parse."""
    start = raw.find(_SEQ_MARK)
    if start < 0:
        return None
    start += len(_SEQ_MARK)
    end = raw.find(SOH, start)
    text = raw[start:end] if end >= 0 else raw[start:]
    return int(text) if text.isdigit() else None


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """Live state of one FIX session."""

    session_key: str
    exists: bool
    logged_on: bool
    next_sender_seq_num: int | None
    next_target_seq_num: int | None
