"""Pure allocation, commission and position arithmetic (no Django, no database).

Everything here works on plain values (``Decimal`` quantities and prices, hashable keys) so the
services can call it inside a transaction and the tests can hammer it with property tests.

Allocation of a block's fills (``allocate_cumulative``)
-------------------------------------------------------
Given the orders a block holds (``AllocationTarget``) and the block's *cumulative* filled quantity
``F``, the target allocation is computed in four steps:

1. **Exact share.** Each order's exact share is ``F * weight / sum(weights)``. ``weight`` is the
   order's quantity for the default pro-rata method, or the configured ratio for a fixed-ratio
   allocation. A share is never more than the order's ``requested`` quantity: orders whose share
   would exceed it are capped at ``requested`` and the excess is shared among the others in
   proportion to their weights, repeated until nobody exceeds (water-filling). All of it is
   integer arithmetic on scaled quantities: no float or ``Decimal`` rounding affects a result.
2. **Floor to lots.** Each order gets its exact share rounded *down* to a whole number of lots.
3. **Leftover whole lots** go one lot at a time to the orders with the largest remainder
   (exact share minus what they hold), ties broken by ``entry_seq`` ascending (the order entered
   first wins), then by position in ``targets``. An order only takes a lot it has room for; when
   caps leave lots over after a pass, further passes go in the same order.
4. **Odd remainder.** If what is left is less than a lot (``F`` is not a multiple of the lot size)
   or nobody has room for a whole lot (orders for odd quantities), the rest goes, in the same
   largest-remainder order, to the orders that still have room, each taking ``min(room, rest)``.
   In the usual case (order quantities in whole lots) this is a single piece to a single order.

Guarantees: the result sums to ``F`` exactly; no order gets more than it requested; every quantity
is a whole number of lots or the order's full requested quantity, except at most one (which
carries the odd remainder); the result depends only on the inputs (not on the order of
``targets`` when ``entry_seq`` values are distinct). When no cap binds (always the case for
pro-rata by quantity with orders in whole lots), each order is within one lot of its exact share:
``floor_to_lot(share) <= allocation <= floor_to_lot(share) + lot``.

Worked example (documented in the tests): orders of 100, 200 and 300 entered in that order, lot
100, fill 300. Exact shares 50/100/150, floors 0/100/100, one lot left over; remainders 50/0/50
tie between the first and third orders, and the first was entered earlier, so the result is
100/100/100. Had the third order been entered first it would be 0/100/200.

Allocation per fill (``allocate_fill``): path independence, and why deltas can be negative
------------------------------------------------------------------------------------------
Each fill is allocated as ``allocate_cumulative(filled_after) - already``, so the state after any
fill is exactly the target allocation of the cumulative filled quantity, whatever way the fills
were split (and a trade bust that lowers the cumulative quantity is handled by the same rule).
The largest-remainder (Hamilton) rule the allocation policy requires is *not* monotone in the
total: it is subject to the "Alabama paradox", where a bigger total can give an order one lot
fewer. With orders of 100, 300 and 300 (lot 100): a fill total of 300 allocates 100/100/100
(remainders 42.9/28.6/28.6), but 400 allocates 0/200/200 (remainders 57.1/71.4/71.4), so the
fill from 300 to 400 takes 100 back from the first account (pinned in the tests).
Since the target itself goes down, no per-fill rule that never takes back (for example "next
lot to the order furthest below its share") can match the largest-remainder target after every
fill, and any fill may turn out to be the last. We keep the policy's rounding rule and path
independence, and accept reversals. In a simulation (orders of 1 to 50 lots, blocks filled in 10
random fills) 0.7% of fills carried a reversal with 3 accounts, 1.2% with 20, 1.6% with 200.

* A **positive delta** allocates that quantity to the account at the block's average price.
* A **negative delta** is a **reversal line**: ``abs(delta)`` previously allocated to that account
  is taken back: on a new fill it goes to other accounts in the same call; on a trade bust that
  lowers the cumulative quantity it simply leaves. The deltas of one call always sum to the
  change in the filled quantity. When no cap binds and the orders are whole lots, a reversal is
  at most one lot.
* Keys whose delta is zero are left out of the result.

Services that store one allocation row per (block, account) with the cumulative quantity simply
set it to the new target; commissions (which have a per-ticket minimum) should be recomputed on
that cumulative quantity and the difference booked, not charged per fill.

Commissions (``commission_for``)
--------------------------------
``gross = quantity * price``; ``commission = max(gross * bps / 10000 + quantity * per_share,
min_per_ticket)``; ``fees = gross * fees_bps / 10000``. Each is computed from the exact values and
then quantized once to the currency quantum (0.01 by default) with ROUND_HALF_UP. A buy pays them
(``net = gross + commission + fees``), a sell receives less (``net = gross - commission - fees``).
A zero quantity is no ticket: everything is zero.

Positions (``apply_trade``)
---------------------------
Signed quantity (long > 0, short < 0), weighted average cost while the position grows on either
side, realised P&L when it shrinks (``closed * (price - avg_cost)`` for a long, the opposite for a
short), and a trade that crosses zero closes the old position and opens the remainder at the trade
price. ``avg_cost`` and ``realised_pnl`` are quantized to 8 decimals (ROUND_HALF_UP); quantities are
kept exact.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

__all__ = [
    "AllocationTarget",
    "Commission",
    "CommissionSchedule",
    "PositionState",
    "ProRata",
    "allocate_cumulative",
    "allocate_cumulative_pro_rata",
    "allocate_fill",
    "apply_trade",
    "commission_for",
    "commissions_for",
    "manual_allocation_validate",
]

AVG_COST_QUANTUM = Decimal("0.00000001")
PNL_QUANTUM = Decimal("0.00000001")
MONEY_QUANTUM = Decimal("0.01")
_BPS = Decimal(10000)
_ZERO = Decimal(0)


def _as_decimal(value: Any, name: str) -> Decimal:
    """Accept Decimal or int (exact); refuse float, str and non-finite values."""
    if type(value) is Decimal and value.is_finite():
        return value  # the common case, a tenth of the general path's cost
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    return result


# --------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocationTarget:
    """One order of a block: how much it asked for, its weight and its place in the queue."""

    key: Hashable
    requested: Decimal
    # None means "pro-rata to requested"; set to the ratio for a fixed-ratio allocation.
    weight: Decimal | None = None
    # Sortable; (created_at, id) of the order. Earlier entry wins a tie on remainder.
    entry_seq: tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        requested = _as_decimal(self.requested, "requested")
        if requested < 0:
            raise ValueError(f"requested must be >= 0, got {requested} for {self.key!r}")
        weight = requested if self.weight is None else _as_decimal(self.weight, "weight")
        if self.weight is None and requested == 0:
            # A zero order gets nothing anyway; a positive weight keeps the arithmetic total > 0.
            weight = Decimal(1)
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight} for {self.key!r}")
        object.__setattr__(self, "requested", requested)
        object.__setattr__(self, "weight", weight)


def _scale_exponent(values: Iterable[Decimal]) -> int:
    """Number of decimal places needed to make every value an integer."""
    # One min() over the exponents rather than a max() call per value: half the time for a
    # 1,000-order block.
    lowest = min((value.as_tuple().exponent for value in values), default=0)
    assert isinstance(lowest, int)  # finite values only (checked on entry)
    return max(0, -lowest)


def _to_int(value: Decimal, places: int) -> int:
    return int(value.scaleb(places))


def _weight_of(target: AllocationTarget) -> Decimal:
    assert target.weight is not None  # filled in by __post_init__
    return target.weight


def _check_targets(targets: Sequence[AllocationTarget]) -> None:
    seen: set[Hashable] = set()
    for target in targets:
        if not isinstance(target, AllocationTarget):
            raise TypeError(f"targets must be AllocationTarget, got {type(target).__name__}")
        if target.key in seen:
            raise ValueError(f"duplicate allocation key {target.key!r}")
        seen.add(target.key)


def _check_lot(lot_size: Decimal) -> Decimal:
    lot = _as_decimal(lot_size, "lot_size")
    if lot <= 0:
        raise ValueError(f"lot_size must be > 0, got {lot}")
    return lot


def allocate_cumulative(
    targets: Sequence[AllocationTarget], filled_total: Decimal, lot_size: Decimal
) -> dict[Hashable, Decimal]:
    """Target allocation of a block's cumulative filled quantity (rules in the module docstring)."""
    _check_targets(targets)
    requested = [t.requested for t in targets]
    # Pro-rata by quantity: each weight is its request (the same object), so its scale and,
    # at the same scale, its integers are the requests' (computed once: a 1,000-order block).
    by_request = all(t.weight is t.requested for t in targets)
    return _allocate(
        [t.key for t in targets],
        requested,
        requested if by_request else [_weight_of(t) for t in targets],
        by_request,
        [t.entry_seq for t in targets],
        filled_total,
        lot_size,
    )


def allocate_cumulative_pro_rata(
    keys: Sequence[Hashable],
    requested: Sequence[Decimal],
    entry_seqs: Sequence[tuple[Any, ...]],
    filled_total: Decimal,
    lot_size: Decimal,
) -> dict[Hashable, Decimal]:
    """`allocate_cumulative` of pro-rata targets (``AllocationTarget(key, requested,
    entry_seq=...)``, no weight) given as parallel sequences: the same result and the same
    errors, without making an AllocationTarget per order (a 1,000-order block's fill)."""
    return ProRata(keys, requested, entry_seqs).allocate(filled_total, lot_size)


class ProRata:
    """The orders of `allocate_cumulative_pro_rata`, checked and scaled to integers before the
    filled quantity is known: a caller that waits for that quantity (a fill's read) does this
    part meanwhile. ``ProRata(keys, requested, entry_seqs).allocate(filled_total, lot_size)``
    is `allocate_cumulative_pro_rata` (the orders' errors raised by the constructor)."""

    __slots__ = ("_by_request", "_checked", "_keys", "_places", "_req", "_seqs", "_weights")

    def __init__(
        self,
        keys: Sequence[Hashable],
        requested: Sequence[Decimal],
        entry_seqs: Sequence[tuple[Any, ...]],
    ) -> None:
        if not len(keys) == len(requested) == len(entry_seqs):
            raise ValueError("keys, requested and entry_seqs must have the same length")
        checked = []
        weights = []
        by_request = True
        one = Decimal(1)
        for key, value in zip(keys, requested, strict=True):
            quantity = _as_decimal(value, "requested")
            if quantity < 0:
                raise ValueError(f"requested must be >= 0, got {quantity} for {key!r}")
            checked.append(quantity)
            # AllocationTarget's weight: the request itself, or 1 for a zero request.
            if quantity == 0:
                by_request = False
                weights.append(one)
            else:
                weights.append(quantity)
        if len(set(keys)) != len(keys):
            seen: set[Hashable] = set()
            for key in keys:
                if key in seen:
                    raise ValueError(f"duplicate allocation key {key!r}")
                seen.add(key)
        self._keys = keys
        self._checked = checked
        self._weights = checked if by_request else weights
        self._by_request = by_request
        self._seqs = entry_seqs
        # The requests as integers at their own scale: `_allocate`'s when the lot and the fill
        # need no more places (a block's usual case: every quantity at the column's scale).
        self._places = _scale_exponent(checked)
        self._req = [_to_int(r, self._places) for r in checked]

    def allocate(self, filled_total: Decimal, lot_size: Decimal) -> dict[Hashable, Decimal]:
        return _allocate(
            self._keys,
            self._checked,
            self._weights,
            self._by_request,
            self._seqs,
            filled_total,
            lot_size,
            (self._places, self._req),
        )


def _allocate(
    keys: Sequence[Hashable],
    requested: list[Decimal],
    weights: list[Decimal],
    by_request: bool,
    seqs: Sequence[tuple[Any, ...]],
    filled_total: Decimal,
    lot_size: Decimal,
    scaled: tuple[int, list[int]] | None = None,
) -> dict[Hashable, Decimal]:
    """allocate_cumulative over checked parallel lists (`by_request`: `weights` is
    `requested`, pro-rata by quantity; `scaled`: `_scale_exponent(requested)` and the
    requests as integers at that scale, when the caller made them)."""
    lot_dec = _check_lot(lot_size)
    filled_dec = _as_decimal(filled_total, "filled_total")
    if filled_dec < 0:
        raise ValueError(f"filled_total must be >= 0, got {filled_dec}")
    total_requested = sum(requested, _ZERO)
    if filled_dec > total_requested:
        raise ValueError(
            f"filled_total {filled_dec} exceeds the orders' requested total {total_requested}"
        )
    if not keys:
        return {}

    # Integer arithmetic throughout: exact, and several times faster than Fraction.
    req_places = _scale_exponent(requested) if scaled is None else scaled[0]
    places = max(req_places, _scale_exponent([lot_dec, filled_dec]))
    w_places = req_places if by_request else _scale_exponent(weights)
    lot = _to_int(lot_dec, places)
    filled = _to_int(filled_dec, places)
    if scaled is not None and places == req_places:
        req = scaled[1]
    else:
        req = [_to_int(r, places) for r in requested]
    same = by_request and w_places == places
    wts = req if same else [_to_int(w, w_places) for w in weights]
    n = len(keys)

    # Step 1, water-filling. An order is capped iff its exact share at the current level
    # (rest * w / weight_sum) reaches its request; capping only raises the level for the others,
    # so an order capped once stays capped and the capped set is the same whatever the order of
    # capping. Scanning by request/weight ascending finds it in one pass; the float sort key is
    # only a speed-up (Fraction keys cost 1 ms per 1,000 orders) and the exact re-check loop
    # catches any order a float rounding put out of place.
    rest, weight_sum = filled, sum(wts)
    capped = [False] * n
    # Pro-rata by quantity never caps: an order's share filled * req / sum(req) is at most its
    # request, since filled <= sum(req) (checked above).
    if not same and any(req[i] * weight_sum < rest * wts[i] for i in range(n)):
        try:
            by_ratio = sorted(range(n), key=lambda i: req[i] / wts[i])
        except OverflowError:  # ratios beyond float range: exact keys
            by_ratio = sorted(range(n), key=lambda i: Fraction(req[i], wts[i]))
        while True:
            for i in by_ratio:
                if capped[i]:
                    continue
                if not (weight_sum and req[i] * weight_sum <= rest * wts[i]):
                    break
                capped[i] = True
                rest -= req[i]
                weight_sum -= wts[i]
            if not weight_sum or not any(
                not capped[i] and req[i] * weight_sum < rest * wts[i] for i in range(n)
            ):
                break
            # A float rounding hid an order behind the break point: redo the scan exactly.
            by_ratio = sorted(
                (i for i in range(n) if not capped[i]), key=lambda i: Fraction(req[i], wts[i])
            )
    # Exact shares as numerators over the common denominator `denom`.
    denom = weight_sum if weight_sum else 1
    if any(capped):
        share_num = [req[i] * denom if capped[i] else wts[i] * rest for i in range(n)]
    else:
        share_num = [w * rest for w in wts]

    # Step 2, floor to lots.
    lot_denom = lot * denom
    alloc = [(share // lot_denom) * lot for share in share_num]
    leftover = filled - sum(alloc)

    if leftover:
        # Usually the orders come in entry order (a block's orders by id, entered in turn):
        # then positions are already sorted by (entry_seq, position), the remainder order's
        # tie-break, and a stable sort by remainder alone (reverse keeps the order of equal
        # keys) gives the (-remainder, entry_seq, position) order without a tuple per order.
        try:
            in_entry_order = all(seqs[i] <= seqs[i + 1] for i in range(n - 1))
        except TypeError:  # entry sequences only comparable on ties: the general sort
            in_entry_order = False

        def largest_remainder_order() -> list[int]:
            remainder = [share - a * denom for share, a in zip(share_num, alloc, strict=True)]
            if in_entry_order:
                return sorted(range(n), key=remainder.__getitem__, reverse=True)
            return sorted(range(n), key=lambda i: (-remainder[i], seqs[i], i))

        # Step 3, whole lots. After a complete pass every order that still has room got one lot,
        # so remainders moved together and the same order stays valid for the next pass.
        order = largest_remainder_order()
        while leftover >= lot:
            eligible = [i for i in order if req[i] - alloc[i] >= lot]
            if not eligible:
                break
            for i in eligible:
                if leftover < lot:
                    break
                alloc[i] += lot
                leftover -= lot
        # Step 4, odd remainder (rare: odd-sized fills or orders).
        if leftover:
            for i in largest_remainder_order():
                room = req[i] - alloc[i]
                if room <= 0:
                    continue
                piece = min(room, leftover)
                alloc[i] += piece
                leftover -= piece
                if not leftover:
                    break
        # Sum of rooms >= leftover because filled <= sum(requested); anything else is a bug.
        assert leftover == 0, "allocation left quantity unplaced"

    # Orders share few distinct quantities (whole lots): each Decimal is made once.
    made: dict[int, Decimal] = {}
    result: dict[Hashable, Decimal] = {}
    for key, quantity in zip(keys, alloc, strict=True):
        value = made.get(quantity)
        if value is None:
            value = made[quantity] = Decimal(quantity).scaleb(-places)
        result[key] = value
    return result


def allocate_fill(
    targets: Sequence[AllocationTarget],
    already: Mapping[Hashable, Decimal],
    filled_total_after: Decimal,
    lot_size: Decimal,
) -> dict[Hashable, Decimal]:
    """Per-key deltas from `already` to the target of `filled_total_after` (<0 = reversal)."""
    keys = {t.key for t in targets}
    unknown = [k for k in already if k not in keys]
    if unknown:
        raise ValueError(f"already allocated to unknown keys {unknown!r}")
    target = allocate_cumulative(targets, filled_total_after, lot_size)
    deltas: dict[Hashable, Decimal] = {}
    for key, quantity in target.items():
        delta = quantity - _as_decimal(already.get(key, _ZERO), f"already[{key!r}]")
        if delta:
            deltas[key] = delta
    return deltas


def manual_allocation_validate(
    targets: Sequence[AllocationTarget],
    quantities: Mapping[Hashable, Decimal],
    filled_total: Decimal,
    lot_size: Decimal,
) -> list[str]:
    """Errors in a hand-made allocation (empty list when it is acceptable)."""
    _check_targets(targets)
    lot = _check_lot(lot_size)
    filled = _as_decimal(filled_total, "filled_total")
    by_key = {t.key: t for t in targets}
    errors: list[str] = []
    for key in quantities:
        if key not in by_key:
            errors.append(f"{key!r}: not an order of this block")
    total = _ZERO
    odd_keys = []
    for key, raw in quantities.items():
        try:
            quantity = _as_decimal(raw, f"quantity for {key!r}")
        except (TypeError, ValueError) as exc:
            errors.append(f"{key!r}: {exc}")
            continue
        total += quantity
        if quantity < 0:
            errors.append(f"{key!r}: quantity {quantity} is negative")
            continue
        target = by_key.get(key)
        if target is None:
            continue
        if quantity > target.requested:
            errors.append(
                f"{key!r}: quantity {quantity} exceeds the order's quantity {target.requested}"
            )
        elif quantity % lot and quantity != target.requested:
            odd_keys.append(key)
    if len(odd_keys) > 1:
        # One order may carry the fill's odd remainder; any more is splitting lots needlessly.
        errors.append(
            f"quantities must be whole lots of {lot} (or the order's full quantity); "
            f"only one may carry an odd remainder, got {odd_keys!r}"
        )
    if total != filled:
        errors.append(f"allocated total {total} does not equal the filled quantity {filled}")
    return errors


# --------------------------------------------------------------------------------------------
# Commissions and fees
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommissionSchedule:
    """A broker's charges: basis points of gross, per share, a minimum per ticket, fees in bps."""

    bps: Decimal = _ZERO
    per_share: Decimal = _ZERO
    min_per_ticket: Decimal = _ZERO
    fees_bps: Decimal = _ZERO

    def __post_init__(self) -> None:
        for name in ("bps", "per_share", "min_per_ticket", "fees_bps"):
            value = _as_decimal(getattr(self, name), name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class Commission:
    """Money of one allocation: gross notional, commission, fees and the side-aware net."""

    gross: Decimal
    commission: Decimal
    fees: Decimal
    net: Decimal


def commission_for(
    schedule: CommissionSchedule,
    quantity: Decimal,
    price: Decimal,
    side_sign: int,
    *,
    quantum: Decimal = MONEY_QUANTUM,
) -> Commission:
    """Gross, commission, fees and net of one allocation (buy: +1 pays, sell: -1 receives)."""
    if side_sign not in (1, -1):
        raise ValueError(f"side_sign must be +1 (buy) or -1 (sell), got {side_sign!r}")
    qty = _as_decimal(quantity, "quantity")
    px = _as_decimal(price, "price")
    if qty < 0:
        raise ValueError(f"quantity must be >= 0, got {qty}")
    if px < 0:
        raise ValueError(f"price must be >= 0, got {px}")
    zero = _ZERO.quantize(quantum)
    if qty == 0:
        return Commission(gross=zero, commission=zero, fees=zero, net=zero)
    gross_exact = qty * px
    commission_exact = max(
        gross_exact * schedule.bps / _BPS + qty * schedule.per_share, schedule.min_per_ticket
    )
    fees_exact = gross_exact * schedule.fees_bps / _BPS
    gross = gross_exact.quantize(quantum, rounding=ROUND_HALF_UP)
    commission = commission_exact.quantize(quantum, rounding=ROUND_HALF_UP)
    fees = fees_exact.quantize(quantum, rounding=ROUND_HALF_UP)
    # Net from the rounded parts so a settlement line always adds up to the cent.
    net = gross + commission + fees if side_sign == 1 else gross - commission - fees
    return Commission(gross=gross, commission=commission, fees=fees, net=net)


def commissions_for(
    schedule: CommissionSchedule,
    quantities: Iterable[Decimal],
    price: Decimal,
    side_sign: int,
    *,
    quantum: Decimal = MONEY_QUANTUM,
) -> list[tuple[Decimal, Decimal, Decimal, Decimal]]:
    """`commission_for` of many quantities at one price: (gross, commission, fees, net) each.

    The same arithmetic in the same order (so the same values to the last digit), with the
    price, side and schedule checked once: a 1,000-account fill prices every account.
    """
    if side_sign not in (1, -1):
        raise ValueError(f"side_sign must be +1 (buy) or -1 (sell), got {side_sign!r}")
    px = _as_decimal(price, "price")
    if px < 0:
        raise ValueError(f"price must be >= 0, got {px}")
    zero = _ZERO.quantize(quantum)
    nothing = (zero, zero, zero, zero)
    bps, per_share = schedule.bps, schedule.per_share
    minimum, fees_bps = schedule.min_per_ticket, schedule.fees_bps
    buy = side_sign == 1
    # No fees (most schedules): every order's fees are the zero quantum that gross * 0 / 10000
    # quantizes to (gross >= 0), made once instead of 1,000 times for a big block.
    no_fees = fees_bps.is_zero() and not fees_bps.is_signed()
    # `gross * (bps / 10000)` instead of `gross * bps / 10000`: one operation less per order.
    # The same value: bps / 10000 is exact (bps has its digits, its exponent 4 lower), so the
    # product's coefficient and its rounding to the context's precision are the ones of
    # gross * bps, and dividing that by 10000 (a power of ten) was exact. Equal values give
    # equal sums and equal quantized results, digits and exponent alike.
    rate, fees_rate = bps / _BPS, fees_bps / _BPS
    out: list[tuple[Decimal, Decimal, Decimal, Decimal]] = []
    append = out.append
    # A block's orders share few distinct quantities (whole lots of the same pro-rata shares):
    # each is priced once. Every result is quantized (or the zero quantum), so it depends only
    # on the quantity's value, which is what a Decimal key compares: 100 and 100.00 give the
    # same digits. Only finite Decimals are looked up (a float equal to a Decimal seen before
    # is refused as before).
    priced: dict[Decimal, tuple[Decimal, Decimal, Decimal, Decimal]] = {}
    for qty in quantities:
        if type(qty) is Decimal and qty.is_finite():
            money = priced.get(qty)
            if money is not None:
                append(money)
                continue
        else:
            qty = _as_decimal(qty, "quantity")
        if qty <= 0:
            if qty < 0:
                raise ValueError(f"quantity must be >= 0, got {qty}")
            priced[qty] = nothing
            append(nothing)
            continue
        gross_exact = qty * px
        commission_exact = max(gross_exact * rate + qty * per_share, minimum)
        gross = gross_exact.quantize(quantum, rounding=ROUND_HALF_UP)
        commission = commission_exact.quantize(quantum, rounding=ROUND_HALF_UP)
        if no_fees:
            fees = zero
        else:
            fees = (gross_exact * fees_rate).quantize(quantum, rounding=ROUND_HALF_UP)
        net = gross + commission + fees if buy else gross - commission - fees
        money = priced[qty] = (gross, commission, fees, net)
        append(money)
    return out


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionState:
    """An account's position in one instrument: signed quantity, average cost, realised P&L."""

    quantity: Decimal = _ZERO
    avg_cost: Decimal = _ZERO
    realised_pnl: Decimal = _ZERO


def apply_trade(
    state: PositionState, side_sign: int, quantity: Decimal, price: Decimal
) -> PositionState:
    """Position after buying (+1) or selling (-1) `quantity` at `price` (shorts and flips work)."""
    if side_sign not in (1, -1):
        raise ValueError(f"side_sign must be +1 (buy) or -1 (sell), got {side_sign!r}")
    qty = _as_decimal(quantity, "quantity")
    px = _as_decimal(price, "price")
    if qty <= 0:
        raise ValueError(f"quantity must be > 0, got {qty}")
    held = state.quantity
    signed = qty * side_sign
    new_qty = held + signed

    if held == 0 or (held > 0) == (signed > 0):
        cost = abs(held) * state.avg_cost + qty * px
        avg = (cost / abs(new_qty)).quantize(AVG_COST_QUANTUM, rounding=ROUND_HALF_UP)
        return PositionState(quantity=new_qty, avg_cost=avg, realised_pnl=state.realised_pnl)

    closed = min(qty, abs(held))
    direction = 1 if held > 0 else -1
    pnl = (closed * (px - state.avg_cost) * direction).quantize(PNL_QUANTUM, rounding=ROUND_HALF_UP)
    realised = state.realised_pnl + pnl
    if new_qty == 0:
        avg = _ZERO.quantize(AVG_COST_QUANTUM)
    elif (new_qty > 0) == (held > 0):
        avg = state.avg_cost
    else:
        # Crossed zero: the old position is closed and what remains is a new one at this price.
        avg = px.quantize(AVG_COST_QUANTUM, rounding=ROUND_HALF_UP)
    return PositionState(quantity=new_qty, avg_cost=avg, realised_pnl=realised)
