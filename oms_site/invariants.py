"""The book's invariants, checked over the whole database (reads only: selectors, set-based).

Used by `manage.py check_invariants` and by the system benchmark after every injected fault.
Each check returns an `InvariantResult`: a name, passed or not, how many rows it looked at, and
up to a few offending examples. The book baseline (positions and cash before the run) is a
`book_snapshot()` taken earlier; without one, positions and cash are reported as skipped.

What is checked, and why it proves "nothing lost, nothing doubled":

* orders: `leaves = quantity - cum` while the order can still trade (0 once canceled, expired or
  rejected); the status agrees with the quantities (filled ⇔ cum = quantity, partially filled ⇒
  0 < cum < quantity, nothing filled before the broker acknowledged); an order's cum equals the
  sum of its allocation rows, a lone order's cum the sum of its placements' fills, a block's cum
  the sum of its orders' cum and of its fills, and the fills' notional a block or lone order
  keeps (``filled_notional``, which each fill prices from) the exact sum of its fills' last_qty *
  last_px; once quiet, no order is left in a transient state.
* fills: no (session, ExecID) twice; each placement's booked quantity equals the CumQty the
  venue itself last reported for it (a lost fill leaves ours below the venue's, a doubled one
  above); no fill was booked against an unknown order.
* allocations: the rows booked by each fill add up to the fill's quantity.
* positions and cash: the change since the baseline equals the signed sum of the allocation
  rows (quantity for positions, net for settled + pending cash).
* outbox: nothing pending once quiet; every order the API accepted exists; every route the
  API queued on Celery happened; the audit hash chains verify.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Max, Sum

from allocations.models import Allocation, CashBalance, Position
from oms_site.audit import audit_verify
from orders.enums import BUY_SIDES, OrderStatus, OutboxStatus
from orders.models import Block, Execution, Order, OutboxMessage, Placement

S = OrderStatus
ZERO = Decimal(0)
CLOSED = (S.CANCELED, S.EXPIRED, S.REJECTED)
NOT_YET_FILLABLE = (
    S.NEW,
    S.PENDING_COMPLIANCE,
    S.BLOCKED,
    S.AWAITING_OVERRIDE,
    S.APPROVED,
    S.PENDING_NEW,
)
TRANSIENT = (S.NEW, S.PENDING_COMPLIANCE, S.PENDING_NEW, S.PENDING_CANCEL, S.PENDING_REPLACE)
EXAMPLES = 5


@dataclass
class InvariantResult:
    """One invariant: passed, how many rows were looked at, a few offenders."""

    name: str
    passed: bool
    checked: int = 0
    detail: str = ""
    examples: list[Any] = field(default_factory=list)
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(name: str, checked: int, bad: list[Any], what: str) -> InvariantResult:
    return InvariantResult(
        name=name,
        passed=not bad,
        checked=checked,
        detail=f"{len(bad)} {what}" if bad else "",
        examples=[str(b) for b in bad[:EXAMPLES]],
    )


def _sign(side: str) -> int:
    return 1 if side in BUY_SIDES else -1


def book_snapshot() -> dict[str, dict[str, str]]:
    """Positions and cash (settled + pending) now, as the baseline of a later check."""
    positions = {
        f"{a}:{i}": str(q)
        for a, i, q in Position.objects.values_list("account_id", "instrument_id", "quantity")
    }
    cash = {
        f"{a}:{c}": str(s + p)
        for a, c, s, p in CashBalance.objects.values_list(
            "account_id", "currency", "settled", "pending"
        )
    }
    return {"positions": positions, "cash": cash}


def check_orders(*, quiesced: bool) -> InvariantResult:
    """Quantities and status of every order agree with each other and with its fills."""
    orders = list(
        Order.objects.values_list(
            "pk", "status", "quantity", "cum_qty", "leaves_qty", "block_id", "filled_notional"
        ).order_by("pk")
    )
    notional = Sum(F("last_qty") * F("last_px"))
    allocated = dict(
        Allocation.objects.values("order_id")
        .annotate(q=Sum("quantity"))
        .values_list("order_id", "q")
    )
    single_fills: dict[int, Decimal] = {}
    single_notional: dict[int, Decimal] = {}
    for pk, q, n in (
        Execution.objects.filter(block_id__isnull=True, order_id__isnull=False)
        .values("order_id")
        .annotate(q=Sum("last_qty"), n=notional)
        .values_list("order_id", "q", "n")
    ):
        single_fills[pk], single_notional[pk] = q, n
    block_fills: dict[int, Decimal] = {}
    block_notional: dict[int, Decimal] = {}
    for pk, q, n in (
        Execution.objects.filter(block_id__isnull=False)
        .values("block_id")
        .annotate(q=Sum("last_qty"), n=notional)
        .values_list("block_id", "q", "n")
    ):
        block_fills[pk], block_notional[pk] = q, n
    block_order_cum: dict[int, Decimal] = defaultdict(Decimal)
    bad: list[str] = []
    for pk, status, qty, cum, leaves, block_id, filled_notional in orders:
        expected_leaves = ZERO if status in CLOSED else qty - cum
        if leaves != expected_leaves:
            bad.append(f"order {pk} {status}: leaves {leaves} != {expected_leaves}")
        if (status == S.FILLED) != (cum == qty):
            bad.append(f"order {pk} {status}: cum {cum} of {qty}")
        if status == S.PARTIALLY_FILLED and not ZERO < cum < qty:
            bad.append(f"order {pk} partially_filled with cum {cum} of {qty}")
        if status in NOT_YET_FILLABLE and cum != 0:
            bad.append(f"order {pk} {status} with cum {cum}")
        if quiesced and status in TRANSIENT:
            bad.append(f"order {pk} still {status} after quiesce")
        if allocated.get(pk, ZERO) != cum:
            bad.append(f"order {pk}: cum {cum} != allocated {allocated.get(pk, ZERO)}")
        if block_id is None:
            if single_fills.get(pk, ZERO) != cum:
                bad.append(f"order {pk}: cum {cum} != fills {single_fills.get(pk, ZERO)}")
            if single_notional.get(pk, ZERO) != filled_notional:
                bad.append(
                    f"order {pk}: notional {filled_notional} != fills "
                    f"{single_notional.get(pk, ZERO)}"
                )
        else:
            block_order_cum[block_id] += cum
    blocks = Block.objects.values_list("pk", "cum_qty", "quantity", "filled_notional")
    for pk, cum, _qty, filled_notional in blocks:
        if block_fills.get(pk, ZERO) != cum or block_order_cum.get(pk, ZERO) != cum:
            bad.append(
                f"block {pk}: cum {cum}, fills {block_fills.get(pk, ZERO)}, "
                f"orders {block_order_cum.get(pk, ZERO)}"
            )
        if block_notional.get(pk, ZERO) != filled_notional:
            bad.append(
                f"block {pk}: notional {filled_notional} != fills {block_notional.get(pk, ZERO)}"
            )
    return _result("orders consistent", len(orders), bad, "inconsistent orders/blocks")


def check_fills() -> InvariantResult:
    """No (session, ExecID) twice; each placement's booked fills equal the venue's CumQty."""
    bad: list[str] = []
    dups = (
        Execution.objects.values("session_key", "exec_id")
        .annotate(n=Count("pk"))
        .filter(n__gt=1)
        .values_list("session_key", "exec_id", "n")
    )
    bad.extend(f"exec {s} {e} applied {n} times" for s, e, n in dups[:EXAMPLES])
    unknown = Execution.objects.filter(unknown_order=True, last_qty__gt=0).count()
    if unknown:
        bad.append(f"{unknown} fills for unknown orders")
    placements = (
        Placement.objects.annotate(
            booked=Sum("executions__last_qty"), venue=Max("executions__cum_qty")
        )
        .filter(venue__isnull=False)
        .values_list("pk", "cum_qty", "booked", "venue")
    )
    checked = 0
    for pk, cum, booked, venue in placements:
        checked += 1
        if not (cum == (booked or ZERO) == (venue or ZERO)):
            bad.append(f"placement {pk}: cum {cum}, fills booked {booked}, venue CumQty {venue}")
    return _result("fills neither lost nor doubled", checked, bad, "placements/fills wrong")


def check_allocations() -> InvariantResult:
    """The allocation rows of every fill add up to the fill's quantity."""
    fills = dict(
        Execution.objects.filter(last_qty__gt=0, placement__isnull=False).values_list(
            "pk", "last_qty"
        )
    )
    sums = dict(
        Allocation.objects.values("execution_id")
        .annotate(q=Sum("quantity"))
        .values_list("execution_id", "q")
    )
    bad = [
        f"execution {pk}: last_qty {qty} != allocated {sums.get(pk, ZERO)}"
        for pk, qty in fills.items()
        if sums.get(pk, ZERO) != qty
    ]
    bad.extend(f"execution {pk}: allocations but no fill" for pk in set(sums) - set(fills))
    return _result("allocations sum to fills", len(fills), bad, "fills mis-allocated")


def _book_moves(
    name: str, baseline: dict[str, str] | None, key: str, amount: str, now: dict[str, Decimal]
) -> InvariantResult:
    """Compare each book row with its baseline plus its allocations' signed `amount` sums.

    `key` is the allocation field that, with the account, names the row (instrument for
    positions, currency for cash); a buy adds quantity and pays its net, a sell the opposite.
    """
    if baseline is None:
        return InvariantResult(name=name, passed=True, skipped=True, detail="no baseline")
    moved: dict[str, Decimal] = defaultdict(Decimal)
    sign = 1 if amount == "quantity" else -1
    for account, other, side, total in (
        Allocation.objects.values("account_id", key, "side")
        .annotate(total=Sum(amount))
        .values_list("account_id", key, "side", "total")
    ):
        moved[f"{account}:{other}"] += sign * _sign(side) * total
    keys = set(now) | set(moved) | set(baseline)
    bad = []
    for k in sorted(keys):
        expected = Decimal(baseline.get(k, "0")) + moved.get(k, ZERO)
        if now.get(k, ZERO) != expected:
            bad.append(f"{k}: {now.get(k, ZERO)} != expected {expected}")
    return _result(name, len(keys), bad, "rows wrong")


def check_positions(baseline: dict[str, str] | None) -> InvariantResult:
    """Each position moved by exactly the signed sum of its allocation rows."""
    now = {
        f"{a}:{i}": q
        for a, i, q in Position.objects.values_list("account_id", "instrument_id", "quantity")
    }
    return _book_moves(
        "positions = baseline + allocations", baseline, "instrument_id", "quantity", now
    )


def check_cash(baseline: dict[str, str] | None) -> InvariantResult:
    """Each cash balance (settled + pending) moved by exactly its allocations' net amounts."""
    now = {
        f"{a}:{c}": total
        for a, c, total in CashBalance.objects.annotate(
            total=F("settled") + F("pending")
        ).values_list("account_id", "currency", "total")
    }
    return _book_moves("cash = baseline + allocation nets", baseline, "currency", "net", now)


def check_outbox() -> InvariantResult:
    """Nothing is left pending in the outbox (run once the system is quiet)."""
    counts = dict(
        OutboxMessage.objects.values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    pending = list(
        OutboxMessage.objects.filter(status=OutboxStatus.PENDING).values_list("pk", flat=True)[
            :EXAMPLES
        ]
    )
    result = _result(
        "outbox drained",
        sum(counts.values()),
        [f"outbox {pk} pending" for pk in pending],
        "rows pending",
    )
    result.detail = (result.detail + f" (by status: {counts})").strip()
    return result


def check_accepted(order_ids: Iterable[int]) -> InvariantResult:
    """Every order id the API answered 201 for exists."""
    wanted = set(order_ids)
    found = set(Order.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    missing = sorted(wanted - found)
    return _result("accepted orders exist", len(wanted), missing, "accepted orders missing")


def check_queued_routes(order_ids: Iterable[int], block_ids: Iterable[int]) -> InvariantResult:
    """Every route the API queued (202) ran: the order or block left the desk."""
    orders, blocks = set(order_ids), set(block_ids)
    stuck = [
        f"order {pk}"
        for pk in Order.objects.filter(pk__in=orders, status=S.APPROVED, block__isnull=True)
        .values_list("pk", flat=True)
        .order_by("pk")
    ]
    stuck += [
        f"block {pk}"
        for pk in Block.objects.filter(pk__in=blocks, status="open")
        .values_list("pk", flat=True)
        .order_by("pk")
    ]
    return _result("queued routes executed", len(orders) + len(blocks), stuck, "routes lost")


def check_audit() -> InvariantResult:
    """The audit hash chains verify (no gap, no broken link, no tampered row)."""
    from oms_site.models import AuditEvent

    problems = audit_verify()
    return _result(
        "audit trail verifies",
        AuditEvent.objects.count(),
        [f"{p.kind}: {p.stream} seq {p.seq}" for p in problems],
        "audit problems",
    )


def invariants_check(
    *,
    baseline: dict[str, dict[str, str]] | None = None,
    accepted_order_ids: Iterable[int] = (),
    queued_order_ids: Iterable[int] = (),
    queued_block_ids: Iterable[int] = (),
    quiesced: bool = True,
    audit: bool = True,
) -> list[InvariantResult]:
    """Every invariant, in a fixed order; see the module docstring."""
    results = [
        check_orders(quiesced=quiesced),
        check_fills(),
        check_allocations(),
        check_positions(baseline["positions"] if baseline else None),
        check_cash(baseline["cash"] if baseline else None),
        check_accepted(accepted_order_ids),
        check_queued_routes(queued_order_ids, queued_block_ids),
    ]
    if quiesced:
        results.append(check_outbox())
    if audit:
        results.append(check_audit())
    return results


__all__ = ["InvariantResult", "book_snapshot", "invariants_check"]
