"""Writes of the settlement app: settlement runs and files, downloads, statements and breaks.

Settlement files
----------------
``settlement_run`` produces, for one trade date, one file per custodian that has allocations that
day (or already has a file for it, so that a day whose last line was reversed gets an empty new
version). Lines are the day's allocations netted with their reversals (``settlement.selectors``),
in allocation id order, in the custodian's format (CSV or MT541/MT543), with the settlement date
from the instrument's cycle on its market calendar.

Each custodian's file is streamed from the database into a staging file (``atomic_write``), then:

* same sha256 as the latest version: the staging file is deleted, nothing is recorded
  (outcome ``unchanged``), so re-running a day is idempotent and byte-identical;
* otherwise it is hard-linked into place as the next version
  (``<SETTLEMENT_DIR>/<trade date>/<custodian>_<yyyymmdd>_v<n>.<ext>``, never overwritten) and a
  ``SettlementFile`` row records its checksum, size, line count and, from version 2 on, what
  changed against the previous version (allocation ids added/removed/changed, by merging the two
  files, which are both in allocation id order).

Custodians are done one at a time, each in its own transaction holding a PostgreSQL advisory lock
on (custodian, trade date), so two runs of the same day (beat and a back-office click) serialise
instead of racing for the same version number. A custodian whose file cannot be produced (say a
broker without a BIC in an MT54x file) fails alone; the run reports it and the others proceed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from allocations.models import Custodian
from oms_site.audit import audit_record
from oms_site.errors import ConflictError, NotFound, NotPermitted, ValidationError, field_error
from oms_site.roles import has_role
from orders.models import Broker
from settlement import recon
from settlement.formats import (
    FORMAT_EXTENSIONS,
    FORMAT_MEDIA_TYPES,
    _fsync_dir,
    atomic_write,
    file_checksum,
    format_for,
)
from settlement.models import (
    BreakStatus,
    FileOutcome,
    ReconBreak,
    RunStatus,
    SettlementFile,
    SettlementRun,
    Statement,
)
from settlement.selectors import (
    BACK_OFFICE,
    DEFAULT_CHUNK_SIZE,
    FILE_READERS,
    NetAllocation,
    allocation_rows,
    custodians_for_trade_date,
    net_allocations,
    oms_trades,
    settlement_lines,
)

# Places of settlement (CSDs) by market calendar; a market not listed settles on the
# custodian's own books (PSET = the custodian). settings.SETTLEMENT_PSET_BICS overrides.
DEFAULT_PSET_BICS = {
    "XNYS": "DTCYUS33",
    "XNAS": "DTCYUS33",
    "NYSE": "DTCYUS33",
    "XLON": "CRSTGB22",
    "XETR": "DAKVDEFF",
    "XPAR": "SICVFRPP",
    "XAMS": "NECIND2A",
    "XTKS": "JJSDJPJT",
}
DEFAULT_FIRM_BIC = "OPENUS33"
# SWIFT :20C::SEME is this prefix + allocation id (16 characters at most).
FILE_REFERENCE_PREFIX = "OMS"
DEFAULT_PRICE_TOLERANCE = Decimal("0.0001")
# Lists of allocation ids in SettlementFile.changes stop here (counts stay exact).
MAX_CHANGE_IDS = 10_000
MAX_STATEMENT_BYTES = 20 * 1024 * 1024
MAX_COMMENT_LENGTH = 2000
_LOCK_NAMESPACE = 0x5E771E  # advisory-lock key space of settlement files

logger = logging.getLogger(__name__)


def _firm_bic() -> str:
    return getattr(settings, "SETTLEMENT_FIRM_BIC", DEFAULT_FIRM_BIC)


def _pset_bics() -> dict[str, str]:
    configured = getattr(settings, "SETTLEMENT_PSET_BICS", None)
    table = DEFAULT_PSET_BICS if configured is None else configured
    return {code.upper(): bic for code, bic in table.items()}


def _settlement_dir() -> Path:
    return Path(settings.SETTLEMENT_DIR)


def _chunk_size() -> int:
    return int(getattr(settings, "SETTLEMENT_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))


def default_price_tolerance() -> Decimal:
    """The reconciliation price tolerance (settings.RECON_PRICE_TOLERANCE, default 0.0001)."""
    return Decimal(str(getattr(settings, "RECON_PRICE_TOLERANCE", DEFAULT_PRICE_TOLERANCE)))


def _require(user: Any, roles: tuple[str, ...], what: str) -> None:
    if not has_role(user, *roles):
        raise NotPermitted(f"Only {', '.join(roles)} may {what}.")


# --------------------------------------------------------------------------------------------
# Settlement runs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Counter:
    lines: int = 0

    def __call__(self, _line: object) -> None:
        self.lines += 1


@dataclasses.dataclass
class _Skipped:
    allocation_ids: list[int] = dataclasses.field(default_factory=list)

    def __call__(self, line: NetAllocation) -> None:
        self.allocation_ids.append(line.allocation_id)


def settlement_run(
    *, trade_date: dt.date, user: Any = None, chunk_size: int | None = None
) -> SettlementRun:
    """Produce (or confirm unchanged) every custodian's settlement file for the trade date."""
    if user is not None:
        _require(user, BACK_OFFICE, "run settlement")
    if isinstance(trade_date, dt.datetime) or not isinstance(trade_date, dt.date):
        raise field_error("trade_date", "must be a date")
    with transaction.atomic(durable=True):
        run = SettlementRun.objects.create(trade_date=trade_date, requested_by=user)
        audit_record(
            action="settlement_run.started",
            object_type="settlement_run",
            object_id=run.pk,
            after={"trade_date": trade_date, "trigger": "user" if user else "schedule"},
            actor=user,
        )
    results = [
        _custodian_file(
            run=run, custodian=custodian, user=user, chunk_size=chunk_size or _chunk_size()
        )
        for custodian in custodians_for_trade_date(trade_date=trade_date)
    ]
    failed = any(r["outcome"] == FileOutcome.FAILED for r in results)
    counts = {outcome.value: 0 for outcome in FileOutcome}
    for r in results:
        counts[r["outcome"]] += 1
    summary = {"trade_date": trade_date.isoformat(), "outcomes": counts, "custodians": results}
    with transaction.atomic(durable=True):
        SettlementRun.objects.filter(pk=run.pk).update(
            status=RunStatus.FAILED if failed else RunStatus.DONE,
            summary=summary,
            finished_at=timezone.now(),
        )
        audit_record(
            action="settlement_run.finished",
            object_type="settlement_run",
            object_id=run.pk,
            after={"status": "failed" if failed else "done", "outcomes": counts},
            actor=user,
        )
    run.refresh_from_db()
    return run


def _safe_name(code: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", code)


def _advisory_lock(custodian_id: int, trade_date: dt.date) -> None:
    key = zlib.crc32(f"{custodian_id}:{trade_date.isoformat()}".encode()) & 0x7FFFFFFF
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, key])
        # The day's rows are sorted twice (per order, then by first allocation id); with the
        # default 4 MB that spills to disk from about 100,000 allocations.
        cursor.execute("SET LOCAL work_mem = '64MB'")


def _custodian_file(
    *, run: SettlementRun, custodian: Custodian, user: Any, chunk_size: int
) -> dict[str, Any]:
    trade_date = run.trade_date
    fmt = custodian.settlement_format
    result: dict[str, Any] = {"custodian": custodian.code, "format": fmt}
    directory = _settlement_dir() / trade_date.isoformat()
    staging: Path | None = None
    try:
        writer = format_for(fmt)
        extension = FORMAT_EXTENSIONS[fmt]
        staging = directory / f".staging-{run.pk}-{custodian.pk}-{uuid.uuid4().hex}.{extension}"
        with transaction.atomic(durable=True):
            _advisory_lock(custodian.pk, trade_date)
            latest = (
                SettlementFile.objects.filter(custodian=custodian, trade_date=trade_date)
                .order_by("-version")
                .first()
            )
            counter = _Counter()
            skipped = _Skipped()
            lines = settlement_lines(
                net_allocations(
                    allocation_rows(
                        trade_dates=[trade_date], custodian_id=custodian.pk, chunk_size=chunk_size
                    )
                ),
                file_format=fmt,
                custodian_bic=custodian.bic,
                our_bic=_firm_bic(),
                pset_bics=_pset_bics(),
                on_line=counter,
                on_skip=skipped,
            )
            options: dict[str, str] = {}
            if fmt == "mt54x":
                options = {
                    "sender_bic": _firm_bic(),
                    "receiver_bic": custodian.bic,
                    "file_reference_prefix": FILE_REFERENCE_PREFIX,
                }
            written = atomic_write(staging, lambda out: writer(lines, out, **options))
            if skipped.allocation_ids:
                result["cash_only_lines"] = skipped.allocation_ids[:MAX_CHANGE_IDS]
            if latest is not None and latest.sha256 == written.sha256:
                result.update(
                    outcome=FileOutcome.UNCHANGED.value,
                    file_id=latest.pk,
                    version=latest.version,
                    sha256=latest.sha256,
                    line_count=latest.line_count,
                )
                return result
            version = latest.version + 1 if latest is not None else 1
            filename = f"{_safe_name(custodian.code)}_{trade_date:%Y%m%d}_v{version}.{extension}"
            changes = _changes(latest, staging, fmt) if latest is not None else {}
            final = directory / filename
            _publish(staging, final, written.sha256)
            record = SettlementFile.objects.create(
                run=run,
                custodian=custodian,
                trade_date=trade_date,
                version=version,
                file_format=fmt,
                filename=filename,
                path=str(final),
                sha256=written.sha256,
                size_bytes=written.size,
                line_count=counter.lines,
                changes=changes,
            )
            audit_record(
                action="settlement_file.created",
                object_type="settlement_file",
                object_id=record.pk,
                after={
                    "custodian": custodian.code,
                    "trade_date": trade_date,
                    "version": version,
                    "sha256": written.sha256,
                    "line_count": counter.lines,
                    "changes": {k: changes[k] for k in ("counts",) if k in changes},
                },
                meta={"run": run.pk},
                actor=user,
            )
        result.update(
            outcome=(FileOutcome.CREATED if version == 1 else FileOutcome.NEW_VERSION).value,
            file_id=record.pk,
            version=version,
            sha256=written.sha256,
            line_count=counter.lines,
        )
        if changes:
            result["changes"] = changes["counts"]
        return result
    except (ValueError, OSError, DatabaseError) as exc:
        logger.exception("settlement file for %s on %s failed", custodian.code, trade_date)
        result.update(outcome=FileOutcome.FAILED.value, error=str(exc))
        return result
    finally:
        if staging is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)


def _publish(staging: Path, final: Path, sha256: str) -> None:
    try:
        os.link(staging, final)
    except FileExistsError:
        # Left by a run that linked the file and then lost its transaction (crash, rollback):
        # the same bytes are adopted; different bytes are never overwritten.
        if file_checksum(final) != sha256:
            raise ValueError(
                f"{final.name} exists on disk with different content and no record; "
                "move it aside after checking it, then re-run"
            ) from None
    _fsync_dir(str(final.parent))


def _csv_records(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            yield int(row[0]), tuple(row)


_SEME_RE = re.compile(r":20C::SEME//\D*(\d+)\r\n")


def _mt_records(path: Path) -> Iterator[tuple[int, object]]:
    # Read in large blocks and split on the end-of-message marker: iterating a 1 GB file line by
    # line costs several times more than the messages themselves.
    end = "-}\r\n"
    with open(path, encoding="ascii", newline="") as handle:
        pending = ""
        while block := handle.read(1 << 20):
            pending += block
            *messages, pending = pending.split(end)
            for text in messages:
                match = _SEME_RE.search(text)
                if match is None:  # pragma: no cover - every message we write has one
                    raise ValueError(f"{path.name}: a message without :20C::SEME")
                yield int(match.group(1)), text
        if pending:  # pragma: no cover - files we write end with a complete message
            raise ValueError(f"{path.name}: ends inside a message")


def _records(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
    return _mt_records(path) if fmt == "mt54x" else _csv_records(path)


def _changes(previous: SettlementFile, new_path: Path, new_format: str) -> dict[str, Any]:
    """Merge the previous version and the new file (both in allocation id order) by id."""
    added: list[int] = []
    removed: list[int] = []
    changed: list[int] = []
    counts = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0}

    def note(kind: str, ids: list[int], allocation_id: int) -> None:
        counts[kind] += 1
        if len(ids) < MAX_CHANGE_IDS:
            ids.append(allocation_id)

    old_iter = _records(Path(previous.path), previous.file_format)
    new_iter = _records(new_path, new_format)
    old = next(old_iter, None)
    new = next(new_iter, None)
    while old is not None or new is not None:
        if new is None or (old is not None and old[0] < new[0]):
            assert old is not None
            note("removed", removed, old[0])
            old = next(old_iter, None)
        elif old is None or new[0] < old[0]:
            note("added", added, new[0])
            new = next(new_iter, None)
        else:
            if old[1] == new[1]:
                counts["unchanged"] += 1
            else:
                note("changed", changed, new[0])
            old = next(old_iter, None)
            new = next(new_iter, None)
    return {
        "previous_version": previous.version,
        "previous_sha256": previous.sha256,
        "added": added,
        "removed": removed,
        "changed": changed,
        "counts": counts,
        "truncated": any(counts[k] > MAX_CHANGE_IDS for k in ("added", "removed", "changed")),
    }


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class OpenedSettlementFile:
    """A verified settlement file, open for reading from the start."""

    record: SettlementFile
    handle: BinaryIO
    media_type: str
    filename: str


def settlement_file_open(*, user: Any, file_id: int) -> OpenedSettlementFile:
    """Open a settlement file for download after verifying its checksum; audited either way."""
    _require(user, FILE_READERS, "download settlement files")
    record = SettlementFile.objects.select_related("custodian").filter(pk=file_id).first()
    if record is None:
        raise NotFound(f"Settlement file {file_id} does not exist.")
    try:
        handle: BinaryIO = open(record.path, "rb")  # noqa: SIM115 - returned to the caller
    except FileNotFoundError:
        _audit_download(user, record, "settlement_file.missing", None)
        raise ConflictError(
            f"Settlement file {file_id} is missing from storage.", code="file_missing"
        ) from None
    digest = hashlib.sha256()
    # Hash the very handle that will be served, so what is verified is what is sent.
    while block := handle.read(1 << 20):
        digest.update(block)
    actual = digest.hexdigest()
    if actual != record.sha256:
        handle.close()
        _audit_download(user, record, "settlement_file.checksum_mismatch", actual)
        raise ConflictError(
            f"Settlement file {file_id} does not match its recorded checksum; not served.",
            code="checksum_mismatch",
        )
    handle.seek(0)
    try:
        _audit_download(user, record, "settlement_file.downloaded", actual)
    except BaseException:
        handle.close()  # no audit record, no download
        raise
    return OpenedSettlementFile(
        record=record,
        handle=handle,
        media_type=FORMAT_MEDIA_TYPES.get(record.file_format, "application/octet-stream"),
        filename=record.filename or Path(record.path).name,
    )


def _audit_download(user: Any, record: SettlementFile, action: str, actual: str | None) -> None:
    with transaction.atomic(durable=True):
        audit_record(
            action=action,
            object_type="settlement_file",
            object_id=record.pk,
            after={"sha256": actual},
            meta={
                "custodian": record.custodian.code,
                "trade_date": record.trade_date,
                "version": record.version,
                "recorded_sha256": record.sha256,
            },
            actor=user,
        )


# --------------------------------------------------------------------------------------------
# Reconciliation
# --------------------------------------------------------------------------------------------


def _statement_error(row: int, field: str, detail: str) -> ValidationError:
    return ValidationError(
        f"row {row}, {field}: {detail}",
        code="invalid_statement",
        errors=[{"row": row, "field": field, "detail": detail}],
    )


def _resolve_source(source: str) -> tuple[str, str, int]:
    text = (source or "").strip()
    if not text:
        raise field_error("source", "required (a custodian or broker code)", code="required")
    kind, _, code = text.partition(":") if ":" in text else ("", "", text)
    kind = kind.strip().lower()
    code = code.strip()
    if kind in ("", "custodian"):
        custodian = Custodian.objects.filter(code=code).first()
        if custodian is not None:
            return "custodian", custodian.code, custodian.pk
    if kind in ("", "broker"):
        broker = Broker.objects.filter(code=code).first()
        if broker is not None:
            return "broker", broker.code, broker.pk
    raise field_error(
        "source",
        f"{text!r} is not a custodian or broker code (use 'custodian:CODE' or 'broker:CODE')",
    )


def _tolerance(value: Any) -> Decimal:
    if value is None or value == "":
        return default_price_tolerance()
    try:
        tolerance = Decimal(str(value))
    except InvalidOperation:
        raise field_error("price_tolerance", "must be a decimal number") from None
    if not tolerance.is_finite() or tolerance < 0:
        raise field_error("price_tolerance", "must be a non-negative decimal number")
    return tolerance


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def statement_upload(
    *,
    user: Any,
    filename: str,
    content: bytes,
    source: str,
    price_tolerance: Any = None,
) -> Statement:
    """Parse a statement CSV, match it against OMS allocations and store its breaks."""
    _require(user, BACK_OFFICE, "upload statements")
    kind, code, source_id = _resolve_source(source)
    tolerance = _tolerance(price_tolerance)
    if len(content) > MAX_STATEMENT_BYTES:
        raise _statement_error(1, "file", f"larger than {MAX_STATEMENT_BYTES} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _statement_error(1, "file", f"not UTF-8 text ({exc.reason})") from None
    if "\x00" in text:  # PostgreSQL text cannot hold it: a clear row error, not a DataError
        raise _statement_error(
            text.count("\n", 0, text.index("\x00")) + 1, "file", "contains NUL (0x00)"
        )
    lines, errors = recon.parse_statement_csv(text)
    if errors:
        first = errors[0]
        raise ValidationError(
            f"{len(errors)} error(s); first: row {first['row']}, {first['field']}: "
            f"{first['detail']}",
            code="invalid_statement",
            errors=errors,
        )
    if not lines:
        raise _statement_error(2, "row", "the statement has no trades")
    trade_dates = sorted({line.trade_date for line in lines})
    scope = {"custodian_id": source_id} if kind == "custodian" else {"broker_id": source_id}
    breaks = recon.match(
        oms_trades(trade_dates=trade_dates, **scope), lines, price_tolerance=tolerance
    )
    with_statement_line = sum(1 for b in breaks if b.statement_row is not None)
    sha256 = hashlib.sha256(content).hexdigest()
    with transaction.atomic(durable=True):
        statement = Statement.objects.create(
            uploaded_by=user,
            source=source.strip(),
            source_kind=kind,
            source_code=code,
            filename=(filename or "statement.csv")[:255],
            sha256=sha256,
            line_count=len(lines),
            trade_dates=[d.isoformat() for d in trade_dates],
            price_tolerance=tolerance,
            matched_count=len(lines) - with_statement_line,
            break_count=len(breaks),
        )
        ReconBreak.objects.bulk_create(
            [
                ReconBreak(
                    statement=statement,
                    kind=b.kind,
                    account_code=b.account[:32],
                    instrument=b.instrument[:64],
                    trade_date=b.trade_date,
                    side=b.side,
                    oms_allocation_id=b.oms_allocation_id,
                    statement_row=b.statement_row,
                    oms_values={
                        "allocation_id": b.oms_allocation_id,
                        "side": b.oms_side,
                        "quantity": _decimal_text(b.oms_quantity),
                        "price": _decimal_text(b.oms_price),
                    },
                    statement_values={
                        "row": b.statement_row,
                        "side": b.statement_side,
                        "quantity": _decimal_text(b.statement_quantity),
                        "price": _decimal_text(b.statement_price),
                    },
                )
                for b in breaks
            ],
            batch_size=1000,
        )
        audit_record(
            action="statement.uploaded",
            object_type="statement",
            object_id=statement.pk,
            after={
                "source": statement.source,
                "filename": statement.filename,
                "sha256": sha256,
                "line_count": len(lines),
                "matched_count": statement.matched_count,
                "break_count": len(breaks),
                "price_tolerance": tolerance,
            },
            actor=user,
        )
    return statement


def break_resolve(*, user: Any, break_id: int, comment: str) -> ReconBreak:
    """Resolve an open break with a required comment; resolving twice is a conflict (409)."""
    _require(user, BACK_OFFICE, "resolve breaks")
    comment = (comment or "").strip()
    if not comment:
        raise field_error("comment", "required: say how the break was explained", code="required")
    if len(comment) > MAX_COMMENT_LENGTH:
        raise field_error("comment", f"at most {MAX_COMMENT_LENGTH} characters")
    with transaction.atomic(durable=True):
        brk = ReconBreak.objects.select_for_update().filter(pk=break_id).first()
        if brk is None:
            raise NotFound(f"Break {break_id} does not exist.")
        if brk.status != BreakStatus.OPEN:
            raise ConflictError(f"Break {break_id} is already resolved.", code="already_resolved")
        brk.status = BreakStatus.RESOLVED
        brk.comment = comment
        brk.resolved_by = user
        brk.resolved_at = timezone.now()
        brk.save(update_fields=["status", "comment", "resolved_by", "resolved_at"])
        audit_record(
            action="recon_break.resolved",
            object_type="recon_break",
            object_id=brk.pk,
            before={"status": BreakStatus.OPEN.value},
            after={"status": brk.status, "comment": comment},
            meta={"statement": brk.statement_id, "kind": brk.kind},
            actor=user,
        )
    return brk
