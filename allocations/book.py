"""Pure position arithmetic for allocation changes: re-pricing and reversals (no database).

``allocations.engine.apply_trade`` books a new trade. An allocation can also *change* an earlier
one: the block's average price moved (re-price), or quantity was taken back (reversal). Both are
corrections of a trade already in the position, not new trades, so they must not invent P&L:

* **Re-price** ``held`` (the quantity previously allocated from this block) from ``old_price``
  to ``new_price``. If the position is still on the trade's side (long after a buy, short after
  a sell), the trade opened or increased it, so the cost basis moves: ``avg_cost`` changes by
  ``held * (new - old) / |position|``. If the position is on the other side or flat, the trade
  closed it, so the realised P&L moves instead (buying dearer or selling cheaper loses).
  When the position holds less than ``held`` on the trade's side, the part that is no longer
  held goes to realised P&L.
* **Reverse** ``quantity`` allocated at ``price``: if the position is on the trade's side and
  holds at least that much, the quantity leaves at the price it came in at (no P&L; the other
  lots' cost is unchanged). If it is on the other side, the trade had closed part of the
  position and the close is undone (quantity comes back at the unchanged ``avg_cost`` and its
  P&L is taken out). Anything else (the position crossed zero since) falls back to an opposite
  trade at ``price``.

With a position that only this block built, these rules keep ``avg_cost`` equal to the block's
average price and ``realised_pnl`` at zero after every fill, whatever the fills' split.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from allocations.engine import AVG_COST_QUANTUM, PNL_QUANTUM, PositionState, apply_trade

_ZERO = Decimal(0)


def _q_avg(value: Decimal) -> Decimal:
    return value.quantize(AVG_COST_QUANTUM, rounding=ROUND_HALF_UP)


def _q_pnl(value: Decimal) -> Decimal:
    return value.quantize(PNL_QUANTUM, rounding=ROUND_HALF_UP)


def position_reprice(
    state: PositionState, side_sign: int, held: Decimal, old_price: Decimal, new_price: Decimal
) -> PositionState:
    """Move `held` previously traded at `old_price` to `new_price` (cost basis or P&L)."""
    if held <= 0 or old_price == new_price:
        return state
    step = new_price - old_price
    on_side = state.quantity * side_sign > 0
    in_basis = min(held, abs(state.quantity)) if on_side else _ZERO
    avg, realised = state.avg_cost, state.realised_pnl
    if in_basis:
        avg = _q_avg((abs(state.quantity) * avg + in_basis * step) / abs(state.quantity))
    closed = held - in_basis
    if closed:
        # A buy that closed a short loses by paying more; a sell that closed a long gains.
        realised = _q_pnl(realised - side_sign * closed * step)
    return PositionState(quantity=state.quantity, avg_cost=avg, realised_pnl=realised)


def position_reverse(
    state: PositionState, side_sign: int, quantity: Decimal, price: Decimal
) -> PositionState:
    """Take back `quantity` (> 0) of a trade of side `side_sign` booked at `price`."""
    if quantity <= 0:
        raise ValueError(f"quantity must be > 0, got {quantity}")
    held = state.quantity
    if held * side_sign > 0 and abs(held) >= quantity:
        rest = abs(held) - quantity
        avg = _q_avg((abs(held) * state.avg_cost - quantity * price) / rest) if rest else _ZERO
        return PositionState(
            quantity=held - side_sign * quantity,
            avg_cost=_q_avg(avg),
            realised_pnl=state.realised_pnl,
        )
    if held * side_sign < 0:
        direction = 1 if held > 0 else -1
        pnl = _q_pnl(quantity * (price - state.avg_cost) * direction)
        return PositionState(
            quantity=held - side_sign * quantity,
            avg_cost=state.avg_cost,
            realised_pnl=_q_pnl(state.realised_pnl - pnl),
        )
    return apply_trade(state, -side_sign, quantity, price)


def position_move(
    quantity: Decimal,
    avg_cost: Decimal,
    realised_pnl: Decimal,
    side_sign: int,
    held: Decimal,
    old_price: Decimal,
    new_price: Decimal,
    delta: Decimal,
) -> tuple[Decimal, Decimal, Decimal]:
    """(quantity, avg_cost, realised_pnl) after one allocation row of a fill: `held` re-priced
    from `old_price` to `new_price` (`position_reprice`), then `delta` booked at `new_price`
    (`apply_trade` for more, `position_reverse` for less).

    Exactly the composition of those functions (a test checks it on random inputs), without
    building a `PositionState` per step: a 1,000-account fill moves 1,000 positions. The usual
    case (a position on the trade's side that the fill re-prices and tops up) is computed
    here with their expressions; anything else goes through them.
    """
    usual = (
        (side_sign == 1 or side_sign == -1)
        and type(delta) is Decimal
        and type(new_price) is Decimal
        and delta >= 0
        and quantity * side_sign > 0
        and held <= abs(quantity)
        and delta.is_finite()
        and new_price.is_finite()
    )
    if not usual:
        state = position_reprice(
            PositionState(quantity, avg_cost, realised_pnl), side_sign, held, old_price, new_price
        )
        if delta > 0:
            state = apply_trade(state, side_sign, delta, new_price)
        elif delta < 0:
            state = position_reverse(state, side_sign, -delta, new_price)
        return state.quantity, state.avg_cost, state.realised_pnl
    size = abs(quantity)
    # position_reprice with all of `held` in the cost basis (nothing closed).
    if held > 0 and old_price != new_price:
        avg_cost = _q_avg((size * avg_cost + held * (new_price - old_price)) / size)
    if not delta:
        return quantity, avg_cost, realised_pnl
    # apply_trade of a trade that grows the position on its side.
    new_qty = quantity + delta * side_sign
    cost = size * avg_cost + delta * new_price
    return new_qty, _q_avg(cost / abs(new_qty)), realised_pnl
