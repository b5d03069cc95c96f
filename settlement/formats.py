"""Settlement file formats: a documented CSV and SWIFT ISO 15022 MT541/MT543, written as streams.

Both writers take an iterable of ``SettlementLine`` and write bytes to a binary file object as
they go (memory stays flat however many lines there are). They write lines in the order given:
the caller sorts (for example by allocation id) so that re-running a day produces the same bytes.
Nothing in the output depends on the clock, the locale or the machine.

Files are written with ``atomic_write``: to a temporary file in the target directory, fsynced,
then linked into place only if the target does not exist yet (a file is never overwritten).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, cast

SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
RECEIVE_SIDES = frozenset({"buy", "buy_to_cover"})  # MT541, receive against payment
DELIVER_SIDES = frozenset({"sell", "sell_short"})  # MT543, deliver against payment


@dataclasses.dataclass(frozen=True, slots=True)
class SettlementLine:
    """One allocation as it goes to a custodian; amounts in ``currency``."""

    allocation_id: int
    trade_date: dt.date
    settlement_date: dt.date
    account_code: str
    custodian_account: str
    isin: str  # may be empty (crypto); the symbol then identifies the instrument
    symbol: str
    side: str  # one of SIDES
    quantity: Decimal
    price: Decimal
    gross: Decimal  # quantity x price
    commission: Decimal
    fees: Decimal
    net: Decimal  # the cash that moves: gross + costs for buys, gross - costs for sells
    currency: str
    broker_code: str
    custodian_bic: str
    broker_bic: str
    our_bic: str
    # Place of settlement (the CSD, e.g. DTCYUS33). Empty means "the custodian's own books".
    pset_bic: str = ""

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"allocation {self.allocation_id}: unknown side {self.side!r}")
        for name in ("quantity", "price", "gross", "commission", "fees", "net"):
            if not isinstance(getattr(self, name), Decimal):
                raise TypeError(f"allocation {self.allocation_id}: {name} must be a Decimal")
        if self.settlement_date < self.trade_date:
            raise ValueError(f"allocation {self.allocation_id}: settlement before trade date")


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

#: The CSV columns, in file order (header row first, UTF-8, "\n" line ends, RFC 4180 quoting):
#:
#: allocation_id      OMS allocation id (unique per line)
#: trade_date         YYYY-MM-DD
#: settlement_date    YYYY-MM-DD, from the instrument's settlement cycle and market calendar
#: account            OMS account code
#: custodian_account  the account's number at the custodian (safekeeping account)
#: isin               ISIN, empty when the instrument has none (crypto)
#: symbol             ticker / symbol
#: side               buy | sell | sell_short | buy_to_cover
#: quantity           8 decimal places
#: price              8 decimal places, in currency
#: gross_amount       quantity x price, 2 decimal places
#: commission         2 decimal places
#: fees               2 decimal places
#: net_amount         cash to settle, 2 decimal places
#: currency           ISO 4217 code
#: broker             OMS broker code
CSV_COLUMNS = (
    "allocation_id",
    "trade_date",
    "settlement_date",
    "account",
    "custodian_account",
    "isin",
    "symbol",
    "side",
    "quantity",
    "price",
    "gross_amount",
    "commission",
    "fees",
    "net_amount",
    "currency",
    "broker",
)
QUANTITY_PLACES = 8
PRICE_PLACES = 8
AMOUNT_PLACES = 2

_QUANT = {places: Decimal(1).scaleb(-places) for places in (QUANTITY_PLACES, PRICE_PLACES, 2)}
# Lines buffered between writes: enough to amortise the write calls, few enough to stay flat.
_FLUSH_EVERY = 2048


def _fixed(value: Decimal, places: int, field: str, allocation_id: int) -> str:
    # A settlement file must never round silently: a value needing more places is an error.
    quantized = value.quantize(_QUANT[places])
    if quantized != value:
        raise ValueError(
            f"allocation {allocation_id}: {field} {value} has more than {places} decimal places"
        )
    if not quantized:
        quantized = quantized.copy_abs()  # no "-0.00"
    return f"{quantized:f}"


def _csv_row(line: SettlementLine) -> tuple[str, ...]:
    aid = line.allocation_id
    return (
        str(aid),
        line.trade_date.isoformat(),
        line.settlement_date.isoformat(),
        line.account_code,
        line.custodian_account,
        line.isin,
        line.symbol,
        line.side,
        _fixed(line.quantity, QUANTITY_PLACES, "quantity", aid),
        _fixed(line.price, PRICE_PLACES, "price", aid),
        _fixed(line.gross, AMOUNT_PLACES, "gross", aid),
        _fixed(line.commission, AMOUNT_PLACES, "commission", aid),
        _fixed(line.fees, AMOUNT_PLACES, "fees", aid),
        _fixed(line.net, AMOUNT_PLACES, "net", aid),
        line.currency,
        line.broker_code,
    )


def write_csv(lines: Iterable[SettlementLine], out: BinaryIO) -> None:
    """Stream lines as the documented CSV (CSV_COLUMNS) to a binary file object."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    pending = 0
    for line in lines:
        writer.writerow(_csv_row(line))
        pending += 1
        if pending == _FLUSH_EVERY:
            out.write(buffer.getvalue().encode("utf-8"))
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    out.write(buffer.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------------------------
# SWIFT ISO 15022 MT541 / MT543
# --------------------------------------------------------------------------------------------

# FIN separates fields with CR LF; each message in the file is followed by CR LF.
MT_EOL = "\r\n"
_BIC_RE = re.compile(r"^[A-Z]{6}[A-Z0-9]{2}(?:[A-Z0-9]{3})?$")
# SWIFT "x" character set (no CR/LF inside a field value).
_X_RE = re.compile(r"^[A-Za-z0-9/\-?:().,'+ ]*$")
_CCY_RE = re.compile(r"^[A-Z]{3}$")
_ISIN_RE = re.compile(r"^[A-Z]{2}[A-Z0-9]{9}[0-9]$")


def _bic(value: str, what: str) -> str:
    if not _BIC_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a BIC (8 or 11 characters)")
    return value


def _x(value: str, what: str, max_len: int) -> str:
    if not value or len(value) > max_len or not _X_RE.match(value):
        raise ValueError(f"{what} {value!r} is not 1-{max_len} SWIFT x characters")
    return value


def swift_decimal(value: Decimal) -> str:
    """Format a non-negative Decimal with SWIFT's decimal comma: "1234,56", "100,"."""
    if not value.is_finite() or value < 0:
        raise ValueError(f"{value} cannot be written as a SWIFT decimal")
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0")
        text = text.replace(".", ",")
    else:
        text += ","
    if len(text) > 15:
        raise ValueError(f"{value} is longer than the 15 characters SWIFT allows")
    return text


def _amount(currency: str, value: Decimal) -> str:
    sign = "N" if value < 0 else ""  # SWIFT writes negative amounts as N + absolute value
    return f"{sign}{currency}{swift_decimal(abs(value))}"


def _logical_terminal(bic: str) -> str:
    # A block-1 LT address is BIC8 + terminal code + branch ("XXX" for the head office).
    return f"{bic[:8]}A{bic[8:] or 'XXX'}"


def _receiver_address(bic: str) -> str:
    return f"{bic[:8]}X{bic[8:] or 'XXX'}"


def message_type(side: str) -> str:
    """'541' (receive against payment) for buys, '543' (deliver against payment) for sells."""
    if side in RECEIVE_SIDES:
        return "541"
    if side in DELIVER_SIDES:
        return "543"
    raise ValueError(f"unknown side {side!r}")


# Everything below that depends only on reference data (BICs, instrument, account, dates) is
# validated and rendered once and cached: those values repeat across a day's lines, and doing it
# per line was most of the cost of a million-line file.


@lru_cache(maxsize=1024)
def _header(mt: str, sender_bic: str, receiver_bic: str) -> str:
    # Session and sequence numbers are zeros: the SWIFT interface stamps the real ones when it
    # sends, and anything variable here would break byte-identical re-runs.
    return (
        f"{{1:F01{_logical_terminal(sender_bic)}0000000000}}"
        f"{{2:I{mt}{_receiver_address(receiver_bic)}N}}{{4:{MT_EOL}"
    )


@lru_cache(maxsize=65536)
def _instrument(isin: str, symbol: str) -> str:
    _x(symbol, "symbol", 31)  # "/TS/" + 31 characters fill one 35x line
    if not isin:
        return f":35B:/TS/{symbol}{MT_EOL}"
    if not _ISIN_RE.match(isin):
        raise ValueError(f"{isin!r} is not an ISIN")
    return f":35B:ISIN {isin}{MT_EOL}/TS/{symbol}{MT_EOL}"


@lru_cache(maxsize=65536)
def _safekeeping_account(account: str) -> str:
    return f":97A::SAFE//{_x(account, 'custodian account', 35)}{MT_EOL}"


@lru_cache(maxsize=4096)
def _swift_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@lru_cache(maxsize=1024)
def _currency(code: str) -> str:
    if not _CCY_RE.match(code):
        raise ValueError(f"currency {code!r} is not an ISO 4217 code")
    return code


@lru_cache(maxsize=4096)
def _settlement_parties(mt: str, counterparty: str, ours: str, our_agent: str, place: str) -> str:
    # Settlement chain (sequence E1): the counterparty's side is mandatory (DEAG for a receipt,
    # REAG for a delivery, each with the trading party in front of it), then our own side if
    # known, then the place of settlement. Each party appears once (network rule E84).
    _bic(counterparty, "broker BIC")
    _bic(place, "place of settlement")
    if ours:
        _bic(ours, "our BIC")
    if our_agent:
        _bic(our_agent, "custodian BIC")
    if mt == "541":
        parties = [("SELL", counterparty), ("DEAG", counterparty)]
        parties += [("BUYR", ours)] if ours else []
        parties += [("REAG", our_agent)] if our_agent else []
    else:
        parties = [("BUYR", counterparty), ("REAG", counterparty)]
        parties += [("SELL", ours)] if ours else []
        parties += [("DEAG", our_agent)] if our_agent else []
    parties.append(("PSET", place))
    return "".join(
        f":16R:SETPRTY{MT_EOL}:95P::{qualifier}//{bic}{MT_EOL}:16S:SETPRTY{MT_EOL}"
        for qualifier, bic in parties
    )


def _amount_block(qualifier: str, amount: str) -> str:
    return f":16R:AMT{MT_EOL}:19A::{qualifier}//{amount}{MT_EOL}:16S:AMT{MT_EOL}"


def mt54x_message(
    line: SettlementLine, *, sender_bic: str, receiver_bic: str, file_reference_prefix: str
) -> str:
    """One MT541 (buys) or MT543 (sells) settlement instruction for one allocation, as text."""
    try:
        return _mt54x_message(line, sender_bic, receiver_bic, file_reference_prefix)
    except ValueError as exc:
        raise ValueError(f"allocation {line.allocation_id}: {exc}") from None


def _mt54x_message(
    line: SettlementLine, sender_bic: str, receiver_bic: str, file_reference_prefix: str
) -> str:
    mt = message_type(line.side)
    reference = f"{file_reference_prefix}{line.allocation_id}"
    if (
        len(reference) > 16
        or not _X_RE.match(reference)
        or reference.startswith("/")
        or reference.endswith("/")
        or "//" in reference
    ):
        raise ValueError(
            f"sender's reference (:20C::SEME) {reference!r} is not 1-16 SWIFT x characters "
            "without a leading/trailing '/' or '//'"
        )
    currency = _currency(line.currency)
    eol = MT_EOL
    amounts = [
        _amount_block("SETT", _amount(currency, line.net)),
        _amount_block("DEAL", _amount(currency, line.gross)),
    ]
    if line.commission:
        amounts.append(_amount_block("EXEC", _amount(currency, line.commission)))
    if line.fees:
        amounts.append(_amount_block("CHAR", _amount(currency, line.fees)))
    parties = _settlement_parties(
        mt,
        line.broker_bic,
        line.our_bic,
        line.custodian_bic,
        line.pset_bic or line.custodian_bic,
    )
    return (
        f"{_header(mt, sender_bic, receiver_bic)}"
        # A: general information
        f":16R:GENL{eol}:20C::SEME//{reference}{eol}:23G:NEWM{eol}:16S:GENL{eol}"
        # B: trade details
        f":16R:TRADDET{eol}"
        f":98A::SETT//{_swift_date(line.settlement_date)}{eol}"
        f":98A::TRAD//{_swift_date(line.trade_date)}{eol}"
        f":90B::DEAL//ACTU/{currency}{swift_decimal(line.price)}{eol}"
        f"{_instrument(line.isin, line.symbol)}"
        f":16S:TRADDET{eol}"
        # C: financial instrument / account
        f":16R:FIAC{eol}"
        f":36B::SETT//UNIT/{swift_decimal(line.quantity)}{eol}"
        f"{_safekeeping_account(line.custodian_account)}"
        f":16S:FIAC{eol}"
        # E: settlement details
        f":16R:SETDET{eol}:22F::SETR//TRAD{eol}"
        f"{parties}"
        f"{''.join(amounts)}"
        f":16S:SETDET{eol}"
        f"-}}{eol}"
    )


def write_mt54x(
    lines: Iterable[SettlementLine],
    out: BinaryIO,
    *,
    sender_bic: str,
    receiver_bic: str,
    file_reference_prefix: str,
) -> None:
    """Stream one MT541/MT543 per line; :20C::SEME is file_reference_prefix + allocation id."""
    _bic(sender_bic, "sender BIC")
    _bic(receiver_bic, "receiver BIC")
    chunk: list[str] = []
    for line in lines:
        chunk.append(
            mt54x_message(
                line,
                sender_bic=sender_bic,
                receiver_bic=receiver_bic,
                file_reference_prefix=file_reference_prefix,
            )
        )
        if len(chunk) == _FLUSH_EVERY:
            out.write("".join(chunk).encode("ascii"))
            chunk.clear()
    out.write("".join(chunk).encode("ascii"))


# --------------------------------------------------------------------------------------------
# Registry, checksums, atomic files
# --------------------------------------------------------------------------------------------

Writer = Callable[..., None]
_WRITERS: dict[str, Writer] = {"csv": write_csv, "mt54x": write_mt54x}
FORMAT_EXTENSIONS = {"csv": "csv", "mt54x": "fin"}
FORMAT_MEDIA_TYPES = {"csv": "text/csv", "mt54x": "application/octet-stream"}


def format_for(code: str) -> Writer:
    """The writer for a format code: "csv" -> write_csv, "mt54x" -> write_mt54x."""
    try:
        return _WRITERS[code]
    except KeyError:
        raise ValueError(f"unknown settlement file format {code!r}") from None


def file_checksum(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    """What atomic_write produced."""

    path: str
    sha256: str
    size: int


class _HashingWriter:
    """Write-through to a file while computing sha256 and size on the way."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self._raw.write(data)
        return len(data)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp_name: str, target: Path) -> None:
    # os.link fails if the target exists, even if another process created it a moment ago,
    # whereas os.replace would silently overwrite it; os.replace is only the fallback for
    # filesystems without hard links.
    try:
        os.link(tmp_name, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            raise FileExistsError(
                errno.EEXIST, "settlement file already exists", str(target)
            ) from exc
        os.replace(tmp_name, target)


def atomic_write(
    path: str | os.PathLike[str], writer_fn: Callable[[BinaryIO], None]
) -> WrittenFile:
    """Write a new file via writer_fn(out) atomically; FileExistsError if path already exists."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(errno.EEXIST, "settlement file already exists", str(target))
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the target's directory so that the final link is a rename
    # within one filesystem (atomic) and never a copy.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as raw:
            hashing = _HashingWriter(raw)
            writer_fn(cast(BinaryIO, hashing))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o640)  # client data: readable by the app's group, not the world
        _publish(tmp_name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    _fsync_dir(str(directory))
    return WrittenFile(path=str(target), sha256=hashing.digest.hexdigest(), size=hashing.size)
