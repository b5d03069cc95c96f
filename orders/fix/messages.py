"""FIX 4.2/4.4 application messages as plain dataclasses: build outbound, parse inbound.

Pure Python (no quickfix import) so it is unit-testable and usable by the Django services.
Outbound messages become an `OutboundMessage` (MsgType plus ordered (tag, value) body fields);
the gateway turns that into a quickfix.Message. Inbound raw strings (SOH-separated tag=value)
become `ExecReport`, `CancelReject`, `BusinessReject`, `SessionReject`, `OtherMessage` or
`ParseError`; `parse_message` never raises, because it runs inside QuickFIX callbacks.

Side mapping: buy=1, sell=2, sell_short=5; buy_to_cover is sent as 54=1 (FIX has no "buy to
cover" side; a cover is an ordinary buy on the wire and the OMS keeps the distinction).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

SOH = "\x01"

# --- tags -------------------------------------------------------------------------------------
ACCOUNT = 1
AVG_PX = 6
BEGIN_STRING = 8
BODY_LENGTH = 9
CHECKSUM = 10
CL_ORD_ID = 11
CUM_QTY = 14
EXEC_ID = 17
EXEC_REF_ID = 19
EXEC_TRANS_TYPE = 20
HANDL_INST = 21
LAST_PX = 31
LAST_QTY = 32
MSG_SEQ_NUM = 34
MSG_TYPE = 35
ORDER_ID = 37
ORDER_QTY = 38
ORD_STATUS = 39
ORD_TYPE = 40
ORIG_CL_ORD_ID = 41
POSS_DUP_FLAG = 43
PRICE = 44
REF_SEQ_NUM = 45
SENDER_COMP_ID = 49
SENDING_TIME = 52
SIDE = 54
SYMBOL = 55
TARGET_COMP_ID = 56
TEXT = 58
TIME_IN_FORCE = 59
TRANSACT_TIME = 60
POSS_RESEND = 97
STOP_PX = 99
CXL_REJ_REASON = 102
ORD_REJ_REASON = 103
ORIG_SENDING_TIME = 122
EXEC_TYPE = 150
LEAVES_QTY = 151
REF_TAG_ID = 371
REF_MSG_TYPE = 372
SESSION_REJECT_REASON = 373
BUSINESS_REJECT_REF_ID = 379
BUSINESS_REJECT_REASON = 380
EXPIRE_DATE = 432
CXL_REJ_RESPONSE_TO = 434

# --- message types ----------------------------------------------------------------------------
MSG_HEARTBEAT = "0"
MSG_TEST_REQUEST = "1"
MSG_RESEND_REQUEST = "2"
MSG_REJECT = "3"
MSG_SEQUENCE_RESET = "4"
MSG_LOGOUT = "5"
MSG_EXECUTION_REPORT = "8"
MSG_ORDER_CANCEL_REJECT = "9"
MSG_LOGON = "A"
MSG_NEW_ORDER_SINGLE = "D"
MSG_ORDER_CANCEL_REQUEST = "F"
MSG_ORDER_CANCEL_REPLACE_REQUEST = "G"
MSG_BUSINESS_MESSAGE_REJECT = "j"
ADMIN_MSG_TYPES = frozenset({"0", "1", "2", "3", "4", "5", "A"})

# --- enumerations (OMS word <-> FIX value) ----------------------------------------------------
SIDE_TO_FIX = {"buy": "1", "sell": "2", "sell_short": "5", "buy_to_cover": "1"}
# 6 = sell short exempt; treated as a short sale.
SIDE_FROM_FIX = {"1": "buy", "2": "sell", "5": "sell_short", "6": "sell_short"}
ORD_TYPE_TO_FIX = {"market": "1", "limit": "2", "stop": "3", "stop_limit": "4"}
ORD_TYPE_FROM_FIX = {v: k for k, v in ORD_TYPE_TO_FIX.items()}
TIF_TO_FIX = {"day": "0", "gtc": "1", "ioc": "3", "fok": "4", "gtd": "6"}
TIF_FROM_FIX = {v: k for k, v in TIF_TO_FIX.items()}

EXEC_TYPE_NAMES = {
    "0": "new",
    "1": "partial_fill",  # FIX 4.2 (4.4 uses F=trade)
    "2": "fill",  # FIX 4.2 (4.4 uses F=trade)
    "3": "done_for_day",
    "4": "canceled",
    "5": "replaced",
    "6": "pending_cancel",
    "7": "stopped",
    "8": "rejected",
    "9": "suspended",
    "A": "pending_new",
    "B": "calculated",
    "C": "expired",
    "D": "restated",
    "E": "pending_replace",
    "F": "trade",
    "G": "trade_correct",
    "H": "trade_cancel",
    "I": "order_status",
}
ORD_STATUS_NAMES = {
    "0": "new",
    "1": "partially_filled",
    "2": "filled",
    "3": "done_for_day",
    "4": "canceled",
    "5": "replaced",
    "6": "pending_cancel",
    "7": "stopped",
    "8": "rejected",
    "9": "suspended",
    "A": "pending_new",
    "B": "calculated",
    "C": "expired",
    "D": "accepted_for_bidding",
    "E": "pending_replace",
}
FILL_EXEC_TYPES = frozenset({"1", "2", "F"})


class MessageBuildError(ValueError):
    """An outbound message cannot be built from the given data."""


# --- formatting helpers -----------------------------------------------------------------------
def format_decimal(value: Decimal) -> str:
    """Render a Decimal as a FIX float (plain notation, no exponent, no trailing zeros)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise MessageBuildError(f"not a finite Decimal: {value!r}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_utc_timestamp(value: dt.datetime) -> str:
    """Render an aware datetime as a FIX UTCTimestamp with milliseconds."""
    if value.tzinfo is None:
        raise MessageBuildError("UTCTimestamp needs an aware datetime")
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y%m%d-%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def parse_utc_timestamp(text: str) -> dt.datetime:
    """Parse a FIX UTCTimestamp (seconds, milli-, micro- or nanoseconds) into an aware datetime."""
    date_part, sep, time_part = text.partition("-")
    if not sep or len(date_part) != 8:
        raise ValueError(f"bad UTCTimestamp {text!r}")
    hms, _, frac = time_part.partition(".")
    if (
        len(hms) == 8
        and hms[2] == hms[5] == ":"
        and date_part.isdigit()
        and (digits := hms[:2] + hms[3:5] + hms[6:]).isdigit()
    ):
        # The shape every FIX engine writes, read without strptime (about 10 µs a value; two
        # a report): datetime() checks the ranges as strptime would.
        base = dt.datetime(
            int(date_part[:4]),
            int(date_part[4:6]),
            int(date_part[6:]),
            int(digits[:2]),
            int(digits[2:4]),
            int(digits[4:]),
            tzinfo=dt.UTC,
        )
    else:
        base = dt.datetime.strptime(date_part + hms, "%Y%m%d%H:%M:%S").replace(tzinfo=dt.UTC)
    if frac:
        if not frac.isdigit():
            raise ValueError(f"bad UTCTimestamp {text!r}")
        base += dt.timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    return base


def now_utc() -> dt.datetime:
    """Current aware UTC time."""
    return dt.datetime.now(dt.UTC)


# --- outbound ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """An application message ready for the gateway: MsgType and ordered body fields."""

    msg_type: str
    fields: tuple[tuple[int, str], ...]

    def get(self, tag: int) -> str | None:
        """First value of `tag` in the body, or None."""
        for t, v in self.fields:
            if t == tag:
                return v
        return None


@dataclass(frozen=True, slots=True)
class NewOrder:
    """NewOrderSingle (35=D)."""

    cl_ord_id: str
    symbol: str
    side: str  # buy | sell | sell_short | buy_to_cover
    quantity: Decimal
    order_type: str = "market"  # market | limit | stop | stop_limit
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "day"  # day | gtc | ioc | fok | gtd
    expire_date: dt.date | None = None  # required with gtd
    account: str | None = None
    transact_time: dt.datetime | None = None  # defaults to now


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """OrderCancelRequest (35=F): cancel the order last known as `orig_cl_ord_id`."""

    cl_ord_id: str
    orig_cl_ord_id: str
    symbol: str
    side: str
    quantity: Decimal  # the order's quantity (required in FIX 4.2)
    order_id: str | None = None  # the broker's OrderID, when known
    account: str | None = None
    transact_time: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ReplaceRequest:
    """OrderCancelReplaceRequest (35=G): the complete new order terms under a new ClOrdID."""

    cl_ord_id: str
    orig_cl_ord_id: str
    symbol: str
    side: str
    quantity: Decimal  # new total quantity (including what is already filled)
    order_type: str = "limit"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "day"
    expire_date: dt.date | None = None
    order_id: str | None = None
    account: str | None = None
    transact_time: dt.datetime | None = None


OutboundRequest = NewOrder | CancelRequest | ReplaceRequest


def _lookup(mapping: dict[str, str], key: str, what: str) -> str:
    try:
        return mapping[key]
    except KeyError:
        raise MessageBuildError(f"unknown {what} {key!r}") from None


def _positive(value: Decimal | None, what: str) -> str:
    if value is None or not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise MessageBuildError(f"{what} must be a positive Decimal, got {value!r}")
    return format_decimal(value)


def _order_terms(
    *,
    order_type: str,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: str,
    expire_date: dt.date | None,
) -> list[tuple[int, str]]:
    fields = [(ORD_TYPE, _lookup(ORD_TYPE_TO_FIX, order_type, "order type"))]
    if order_type in ("limit", "stop_limit"):
        fields.append((PRICE, _positive(limit_price, "limit_price")))
    if order_type in ("stop", "stop_limit"):
        fields.append((STOP_PX, _positive(stop_price, "stop_price")))
    fields.append((TIME_IN_FORCE, _lookup(TIF_TO_FIX, time_in_force, "time in force")))
    if time_in_force == "gtd":
        if expire_date is None:
            raise MessageBuildError("gtd needs expire_date")
        fields.append((EXPIRE_DATE, expire_date.strftime("%Y%m%d")))
    return fields


def _require_id(value: str, what: str) -> str:
    if not value or SOH in value or "=" in value:
        raise MessageBuildError(f"bad {what} {value!r}")
    return value


def build_message(request: OutboundRequest) -> OutboundMessage:
    """Turn a NewOrder / CancelRequest / ReplaceRequest into an OutboundMessage (raises on bad data)."""
    transact = format_utc_timestamp(request.transact_time or now_utc())
    fields: list[tuple[int, str]]
    if isinstance(request, NewOrder):
        fields = [(CL_ORD_ID, _require_id(request.cl_ord_id, "cl_ord_id"))]
        if request.account:
            fields.append((ACCOUNT, request.account))
        # HandlInst 1 = automated, no broker intervention; required in 4.2, accepted in 4.4.
        fields += [
            (HANDL_INST, "1"),
            (SYMBOL, _require_id(request.symbol, "symbol")),
            (SIDE, _lookup(SIDE_TO_FIX, request.side, "side")),
            (TRANSACT_TIME, transact),
            (ORDER_QTY, _positive(request.quantity, "quantity")),
        ]
        fields += _order_terms(
            order_type=request.order_type,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            expire_date=request.expire_date,
        )
        return OutboundMessage(MSG_NEW_ORDER_SINGLE, tuple(fields))
    if isinstance(request, CancelRequest):
        fields = [
            (ORIG_CL_ORD_ID, _require_id(request.orig_cl_ord_id, "orig_cl_ord_id")),
            (CL_ORD_ID, _require_id(request.cl_ord_id, "cl_ord_id")),
        ]
        if request.order_id:
            fields.append((ORDER_ID, request.order_id))
        if request.account:
            fields.append((ACCOUNT, request.account))
        fields += [
            (SYMBOL, _require_id(request.symbol, "symbol")),
            (SIDE, _lookup(SIDE_TO_FIX, request.side, "side")),
            (TRANSACT_TIME, transact),
            (ORDER_QTY, _positive(request.quantity, "quantity")),
        ]
        return OutboundMessage(MSG_ORDER_CANCEL_REQUEST, tuple(fields))
    if isinstance(request, ReplaceRequest):
        fields = [
            (ORIG_CL_ORD_ID, _require_id(request.orig_cl_ord_id, "orig_cl_ord_id")),
            (CL_ORD_ID, _require_id(request.cl_ord_id, "cl_ord_id")),
        ]
        if request.order_id:
            fields.append((ORDER_ID, request.order_id))
        if request.account:
            fields.append((ACCOUNT, request.account))
        fields += [
            (HANDL_INST, "1"),
            (SYMBOL, _require_id(request.symbol, "symbol")),
            (SIDE, _lookup(SIDE_TO_FIX, request.side, "side")),
            (TRANSACT_TIME, transact),
            (ORDER_QTY, _positive(request.quantity, "quantity")),
        ]
        fields += _order_terms(
            order_type=request.order_type,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            expire_date=request.expire_date,
        )
        return OutboundMessage(MSG_ORDER_CANCEL_REPLACE_REQUEST, tuple(fields))
    raise MessageBuildError(f"cannot build a FIX message from {type(request).__name__}")


def exec_report_fields(
    *,
    begin_string: str,
    order_id: str,
    exec_id: str,
    exec_type: str,
    ord_status: str,
    symbol: str,
    side: str,
    order_qty: Decimal,
    cum_qty: Decimal,
    avg_px: Decimal,
    leaves_qty: Decimal,
    cl_ord_id: str | None = None,
    orig_cl_ord_id: str | None = None,
    last_qty: Decimal | None = None,
    last_px: Decimal | None = None,
    price: Decimal | None = None,
    ord_type: str | None = None,
    text: str | None = None,
    ord_rej_reason: str | None = None,
    transact_time: dt.datetime | None = None,
) -> OutboundMessage:
    """Body of an ExecutionReport (35=8) as a venue sends it; FIX-version aware (20, 150=1/2 vs F).

    `exec_type` is the FIX 4.4 value; for FIX 4.2 a trade (F) becomes 1 or 2 from `ord_status`.
    `side` is the raw FIX value (1, 2, 5, ...).
    """
    if begin_string == "FIX.4.2" and exec_type == "F":
        exec_type = "2" if ord_status == "2" else "1"
    fields: list[tuple[int, str]] = [(ORDER_ID, order_id)]
    if cl_ord_id:
        fields.append((CL_ORD_ID, cl_ord_id))
    if orig_cl_ord_id:
        fields.append((ORIG_CL_ORD_ID, orig_cl_ord_id))
    fields.append((EXEC_ID, exec_id))
    if begin_string == "FIX.4.2":
        fields.append((EXEC_TRANS_TYPE, "0"))
    fields += [(EXEC_TYPE, exec_type), (ORD_STATUS, ord_status)]
    if ord_rej_reason is not None:
        fields.append((ORD_REJ_REASON, ord_rej_reason))
    fields += [(SYMBOL, symbol), (SIDE, side), (ORDER_QTY, format_decimal(order_qty))]
    if ord_type:
        fields.append((ORD_TYPE, ord_type))
    if price is not None:
        fields.append((PRICE, format_decimal(price)))
    if last_qty is not None:
        fields.append((LAST_QTY, format_decimal(last_qty)))
    if last_px is not None:
        fields.append((LAST_PX, format_decimal(last_px)))
    fields += [
        (LEAVES_QTY, format_decimal(leaves_qty)),
        (CUM_QTY, format_decimal(cum_qty)),
        (AVG_PX, format_decimal(avg_px)),
        (TRANSACT_TIME, format_utc_timestamp(transact_time or now_utc())),
    ]
    if text:
        fields.append((TEXT, text.replace(SOH, " ")))
    return OutboundMessage(MSG_EXECUTION_REPORT, tuple(fields))


def encode_message(
    *,
    begin_string: str,
    msg_type: str,
    sender_comp_id: str,
    target_comp_id: str,
    msg_seq_num: int,
    fields: tuple[tuple[int, str], ...] | list[tuple[int, str]],
    sending_time: dt.datetime | None = None,
    poss_dup: bool = False,
    orig_sending_time: dt.datetime | None = None,
) -> str:
    """Encode a complete tag=value message with BodyLength and CheckSum (for tests and tools)."""
    header = [
        (MSG_TYPE, msg_type),
        (SENDER_COMP_ID, sender_comp_id),
        (TARGET_COMP_ID, target_comp_id),
        (MSG_SEQ_NUM, str(msg_seq_num)),
    ]
    if poss_dup:
        header.append((POSS_DUP_FLAG, "Y"))
    header.append((SENDING_TIME, format_utc_timestamp(sending_time or now_utc())))
    if orig_sending_time is not None:
        header.append((ORIG_SENDING_TIME, format_utc_timestamp(orig_sending_time)))
    body = "".join(f"{t}={v}{SOH}" for t, v in [*header, *fields])
    head = f"8={begin_string}{SOH}9={len(body.encode())}{SOH}"
    checksum = sum((head + body).encode()) % 256
    return f"{head}{body}10={checksum:03d}{SOH}"


# --- inbound ----------------------------------------------------------------------------------
def split_fields(raw: str) -> list[tuple[int, str]]:
    """Split a raw message into (tag, value) pairs in wire order.

    Accepts SOH separators, or '|' when the text holds no SOH (logs, hand-written tests).
    Raises ValueError on a malformed field.
    """
    sep = SOH if SOH in raw else "|"
    pairs: list[tuple[int, str]] = []
    for chunk in raw.split(sep):
        if not chunk:
            continue
        tag, eq, value = chunk.partition("=")
        if not eq or not tag.isdigit():
            raise ValueError(f"malformed field {chunk[:40]!r}")
        pairs.append((int(tag), value))
    return pairs


@dataclass(frozen=True, slots=True)
class FixHeader:
    """Standard header fields of an inbound message."""

    begin_string: str = ""
    msg_type: str = ""
    sender_comp_id: str = ""
    target_comp_id: str = ""
    msg_seq_num: int | None = None
    sending_time: dt.datetime | None = None
    poss_dup: bool = False
    poss_resend: bool = False
    orig_sending_time: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ExecReport:
    """ExecutionReport (35=8). Quantities/prices are Decimals; names in EXEC_TYPE_NAMES etc."""

    header: FixHeader
    exec_id: str
    exec_type: str  # raw FIX 150 value
    ord_status: str  # raw FIX 39 value
    order_id: str
    cl_ord_id: str | None
    orig_cl_ord_id: str | None
    symbol: str | None
    side: str | None  # raw FIX 54 value
    order_qty: Decimal | None
    price: Decimal | None
    last_qty: Decimal | None
    last_px: Decimal | None
    cum_qty: Decimal
    avg_px: Decimal
    leaves_qty: Decimal
    text: str | None
    transact_time: dt.datetime | None
    poss_dup: bool
    exec_trans_type: str | None = None  # FIX 4.2 tag 20 (0 new, 1 cancel, 2 correct, 3 status)
    exec_ref_id: str | None = None
    ord_rej_reason: str | None = None
    account: str | None = None

    @property
    def exec_type_name(self) -> str:
        """OMS word for ExecType (e.g. 'trade', 'partial_fill', 'canceled')."""
        return EXEC_TYPE_NAMES.get(self.exec_type, "unknown")

    @property
    def ord_status_name(self) -> str:
        """OMS word for OrdStatus (e.g. 'partially_filled')."""
        return ORD_STATUS_NAMES.get(self.ord_status, "unknown")

    @property
    def is_fill(self) -> bool:
        """True when this report carries a new execution (LastQty at LastPx) to apply once."""
        return (
            self.exec_type in FILL_EXEC_TYPES
            and self.exec_trans_type in (None, "0")
            and self.last_qty is not None
            and self.last_qty > 0
        )


@dataclass(frozen=True, slots=True)
class CancelReject:
    """OrderCancelReject (35=9). response_to: '1' cancel request, '2' cancel/replace request."""

    header: FixHeader
    order_id: str
    cl_ord_id: str
    orig_cl_ord_id: str
    ord_status: str
    response_to: str
    reason: str | None  # CxlRejReason 102
    text: str | None


@dataclass(frozen=True, slots=True)
class BusinessReject:
    """BusinessMessageReject (35=j)."""

    header: FixHeader
    ref_msg_type: str
    reason: str  # BusinessRejectReason 380
    ref_seq_num: int | None
    ref_id: str | None  # BusinessRejectRefID 379 (e.g. the ClOrdID)
    text: str | None


@dataclass(frozen=True, slots=True)
class SessionReject:
    """Session-level Reject (35=3): the counterparty could not process one of our messages."""

    header: FixHeader
    ref_seq_num: int | None
    ref_tag_id: int | None
    ref_msg_type: str | None
    reason: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """Any other message (admin messages, unsupported application messages)."""

    header: FixHeader
    fields: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParseError:
    """An inbound message that could not be understood; stored and flagged, never raised."""

    header: FixHeader
    reason: str
    missing_tags: tuple[int, ...] = ()


ParsedMessage = (
    ExecReport | CancelReject | BusinessReject | SessionReject | OtherMessage | ParseError
)

_EXEC_REQUIRED = (ORDER_ID, EXEC_ID, EXEC_TYPE, ORD_STATUS, SIDE, LEAVES_QTY, CUM_QTY, AVG_PX)
_CXL_REJ_REQUIRED = (ORDER_ID, CL_ORD_ID, ORIG_CL_ORD_ID, ORD_STATUS, CXL_REJ_RESPONSE_TO)
_BIZ_REJ_REQUIRED = (REF_MSG_TYPE, BUSINESS_REJECT_REASON)


class _Invalid(Exception):
    def __init__(self, reason: str, missing: tuple[int, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def _first_values(pairs: list[tuple[int, str]]) -> dict[int, str]:
    # Repeating groups may repeat a tag; the scalar fields we read come first.
    values: dict[int, str] = {}
    for tag, value in pairs:
        values.setdefault(tag, value)
    return values


def _dec(values: dict[int, str], tag: int) -> Decimal | None:
    text = values.get(tag)
    if text is None or text == "":
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _Invalid(f"tag {tag} is not a number: {text!r}") from None
    if not number.is_finite():
        raise _Invalid(f"tag {tag} is not a finite number: {text!r}")
    return number


def _int(values: dict[int, str], tag: int) -> int | None:
    text = values.get(tag)
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise _Invalid(f"tag {tag} is not an integer: {text!r}")
    return int(text)


def _time(values: dict[int, str], tag: int) -> dt.datetime | None:
    text = values.get(tag)
    if not text:
        return None
    try:
        return parse_utc_timestamp(text)
    except ValueError:
        raise _Invalid(f"tag {tag} is not a UTCTimestamp: {text!r}") from None


def _require(values: dict[int, str], tags: tuple[int, ...]) -> None:
    missing = tuple(t for t in tags if not values.get(t))
    if missing:
        raise _Invalid(f"missing mandatory tags {list(missing)}", missing)


def _header(values: dict[int, str]) -> FixHeader:
    def lenient(parse, tag):  # header oddities must not hide the body
        try:
            return parse(values, tag)
        except _Invalid:
            return None

    return FixHeader(
        begin_string=values.get(BEGIN_STRING, ""),
        msg_type=values.get(MSG_TYPE, ""),
        sender_comp_id=values.get(SENDER_COMP_ID, ""),
        target_comp_id=values.get(TARGET_COMP_ID, ""),
        msg_seq_num=lenient(_int, MSG_SEQ_NUM),
        sending_time=lenient(_time, SENDING_TIME),
        poss_dup=values.get(POSS_DUP_FLAG) == "Y",
        poss_resend=values.get(POSS_RESEND) == "Y",
        orig_sending_time=lenient(_time, ORIG_SENDING_TIME),
    )


def _parse_exec_report(header: FixHeader, v: dict[int, str]) -> ExecReport:
    _require(v, _EXEC_REQUIRED)
    exec_type = v[EXEC_TYPE]
    if exec_type not in EXEC_TYPE_NAMES:
        raise _Invalid(f"unknown ExecType {exec_type!r}")
    if v[ORD_STATUS] not in ORD_STATUS_NAMES:
        raise _Invalid(f"unknown OrdStatus {v[ORD_STATUS]!r}")
    last_qty = _dec(v, LAST_QTY)
    last_px = _dec(v, LAST_PX)
    trans_type = v.get(EXEC_TRANS_TYPE)
    if exec_type in FILL_EXEC_TYPES and trans_type in (None, "0"):
        _require(v, (LAST_QTY, LAST_PX))
        if last_qty is None or last_qty <= 0:
            raise _Invalid(f"execution with LastQty {last_qty}")
        if last_px is None or last_px < 0:
            raise _Invalid(f"execution with LastPx {last_px}")
    cum_qty = _dec(v, CUM_QTY)
    avg_px = _dec(v, AVG_PX)
    leaves_qty = _dec(v, LEAVES_QTY)
    assert cum_qty is not None and avg_px is not None and leaves_qty is not None
    if cum_qty < 0 or leaves_qty < 0:
        raise _Invalid("negative CumQty or LeavesQty")
    return ExecReport(
        header=header,
        exec_id=v[EXEC_ID],
        exec_type=exec_type,
        ord_status=v[ORD_STATUS],
        order_id=v[ORDER_ID],
        cl_ord_id=v.get(CL_ORD_ID) or None,
        orig_cl_ord_id=v.get(ORIG_CL_ORD_ID) or None,
        symbol=v.get(SYMBOL) or None,
        side=v.get(SIDE) or None,
        order_qty=_dec(v, ORDER_QTY),
        price=_dec(v, PRICE),
        last_qty=last_qty,
        last_px=last_px,
        cum_qty=cum_qty,
        avg_px=avg_px,
        leaves_qty=leaves_qty,
        text=v.get(TEXT) or None,
        transact_time=_time(v, TRANSACT_TIME),
        poss_dup=header.poss_dup,
        exec_trans_type=trans_type or None,
        exec_ref_id=v.get(EXEC_REF_ID) or None,
        ord_rej_reason=v.get(ORD_REJ_REASON) or None,
        account=v.get(ACCOUNT) or None,
    )


def _parse_cancel_reject(header: FixHeader, v: dict[int, str]) -> CancelReject:
    _require(v, _CXL_REJ_REQUIRED)
    return CancelReject(
        header=header,
        order_id=v[ORDER_ID],
        cl_ord_id=v[CL_ORD_ID],
        orig_cl_ord_id=v[ORIG_CL_ORD_ID],
        ord_status=v[ORD_STATUS],
        response_to=v[CXL_REJ_RESPONSE_TO],
        reason=v.get(CXL_REJ_REASON) or None,
        text=v.get(TEXT) or None,
    )


def _parse_business_reject(header: FixHeader, v: dict[int, str]) -> BusinessReject:
    _require(v, _BIZ_REJ_REQUIRED)
    return BusinessReject(
        header=header,
        ref_msg_type=v[REF_MSG_TYPE],
        reason=v[BUSINESS_REJECT_REASON],
        ref_seq_num=_int(v, REF_SEQ_NUM),
        ref_id=v.get(BUSINESS_REJECT_REF_ID) or None,
        text=v.get(TEXT) or None,
    )


def _parse_session_reject(header: FixHeader, v: dict[int, str]) -> SessionReject:
    return SessionReject(
        header=header,
        ref_seq_num=_int(v, REF_SEQ_NUM),
        ref_tag_id=_int(v, REF_TAG_ID),
        ref_msg_type=v.get(REF_MSG_TYPE) or None,
        reason=v.get(SESSION_REJECT_REASON) or None,
        text=v.get(TEXT) or None,
    )


def parse_message(raw: str) -> ParsedMessage:
    """Parse an inbound raw message; any problem yields a ParseError, never an exception."""
    try:
        values = _first_values(split_fields(raw))
    except Exception as exc:  # a callback must never see an exception
        return ParseError(header=FixHeader(), reason=f"unparseable message: {exc}")
    try:
        header = _header(values)
    except Exception as exc:
        return ParseError(header=FixHeader(), reason=f"bad header: {exc}")
    try:
        if not header.msg_type:
            raise _Invalid("missing MsgType", (MSG_TYPE,))
        if header.msg_type == MSG_EXECUTION_REPORT:
            return _parse_exec_report(header, values)
        if header.msg_type == MSG_ORDER_CANCEL_REJECT:
            return _parse_cancel_reject(header, values)
        if header.msg_type == MSG_BUSINESS_MESSAGE_REJECT:
            return _parse_business_reject(header, values)
        if header.msg_type == MSG_REJECT:
            return _parse_session_reject(header, values)
        return OtherMessage(header=header, fields=values)
    except _Invalid as exc:
        return ParseError(header=header, reason=exc.reason, missing_tags=exc.missing)
    except Exception as exc:
        return ParseError(header=header, reason=f"unexpected parse failure: {exc!r}")


# --- inbound orders (the venue side) ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InboundOrder:
    """A 35=D/F/G as a venue receives it; `request` is None when `error` explains why."""

    header: FixHeader
    msg_type: str
    request: OutboundRequest | None
    fields: dict[int, str]
    error: str | None = None
    raw_side: str | None = None


def _side_word(code: str | None) -> str:
    if code not in SIDE_FROM_FIX:
        raise _Invalid(f"unsupported Side {code!r}")
    return SIDE_FROM_FIX[code]


def _expire(v: dict[int, str]) -> dt.date | None:
    text = v.get(EXPIRE_DATE)
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise _Invalid(f"bad ExpireDate {text!r}") from None


def parse_order_message(raw: str) -> InboundOrder:
    """Parse a NewOrderSingle / cancel / cancel-replace request (venue side); never raises."""
    try:
        values = _first_values(split_fields(raw))
        header = _header(values)
    except Exception as exc:
        return InboundOrder(FixHeader(), "", None, {}, error=f"unparseable: {exc}")
    msg_type = header.msg_type
    try:
        qty = _dec(values, ORDER_QTY)
        if msg_type == MSG_NEW_ORDER_SINGLE:
            _require(values, (CL_ORD_ID, SYMBOL, SIDE, ORD_TYPE, ORDER_QTY))
            order_type = ORD_TYPE_FROM_FIX.get(values[ORD_TYPE])
            if order_type is None:
                raise _Invalid(f"unsupported OrdType {values[ORD_TYPE]!r}")
            request: OutboundRequest = NewOrder(
                cl_ord_id=values[CL_ORD_ID],
                symbol=values[SYMBOL],
                side=_side_word(values[SIDE]),
                quantity=qty,  # type: ignore[arg-type]
                order_type=order_type,
                limit_price=_dec(values, PRICE),
                stop_price=_dec(values, STOP_PX),
                time_in_force=TIF_FROM_FIX.get(values.get(TIME_IN_FORCE, "0"), "day"),
                expire_date=_expire(values),
                account=values.get(ACCOUNT) or None,
                transact_time=_time(values, TRANSACT_TIME),
            )
        elif msg_type == MSG_ORDER_CANCEL_REQUEST:
            _require(values, (CL_ORD_ID, ORIG_CL_ORD_ID, SIDE))
            request = CancelRequest(
                cl_ord_id=values[CL_ORD_ID],
                orig_cl_ord_id=values[ORIG_CL_ORD_ID],
                symbol=values.get(SYMBOL, ""),
                side=_side_word(values[SIDE]),
                quantity=qty or Decimal(0),
                order_id=values.get(ORDER_ID) or None,
                account=values.get(ACCOUNT) or None,
                transact_time=_time(values, TRANSACT_TIME),
            )
        elif msg_type == MSG_ORDER_CANCEL_REPLACE_REQUEST:
            _require(values, (CL_ORD_ID, ORIG_CL_ORD_ID, SIDE, ORD_TYPE, ORDER_QTY))
            order_type = ORD_TYPE_FROM_FIX.get(values[ORD_TYPE])
            if order_type is None:
                raise _Invalid(f"unsupported OrdType {values[ORD_TYPE]!r}")
            request = ReplaceRequest(
                cl_ord_id=values[CL_ORD_ID],
                orig_cl_ord_id=values[ORIG_CL_ORD_ID],
                symbol=values.get(SYMBOL, ""),
                side=_side_word(values[SIDE]),
                quantity=qty,  # type: ignore[arg-type]
                order_type=order_type,
                limit_price=_dec(values, PRICE),
                stop_price=_dec(values, STOP_PX),
                time_in_force=TIF_FROM_FIX.get(values.get(TIME_IN_FORCE, "0"), "day"),
                expire_date=_expire(values),
                order_id=values.get(ORDER_ID) or None,
                account=values.get(ACCOUNT) or None,
                transact_time=_time(values, TRANSACT_TIME),
            )
        else:
            return InboundOrder(header, msg_type, None, values, error="not an order message")
    except _Invalid as exc:
        return InboundOrder(
            header, msg_type, None, values, error=exc.reason, raw_side=values.get(SIDE)
        )
    return InboundOrder(header, msg_type, request, values, raw_side=values.get(SIDE))
