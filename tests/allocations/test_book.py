"""book.position_move is exactly position_reprice, then apply_trade or position_reverse."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocations.book import position_move, position_reprice, position_reverse
from allocations.engine import PositionState, apply_trade


def _composed(
    quantity: D,
    avg_cost: D,
    realised: D,
    sign: int,
    held: D,
    old: D,
    new: D,
    delta: D,
) -> tuple[D, D, D]:
    state = position_reprice(PositionState(quantity, avg_cost, realised), sign, held, old, new)
    if delta > 0:
        state = apply_trade(state, sign, delta, new)
    elif delta < 0:
        state = position_reverse(state, sign, -delta, new)
    return state.quantity, state.avg_cost, state.realised_pnl


def _exact(value: D) -> tuple[int, tuple[int, ...], int | str]:
    # Same value *and* same digits (what str() and the database text see).
    return tuple(value.as_tuple())  # type: ignore[return-value]


quantities = st.decimals(min_value=-5000, max_value=5000, places=2, allow_nan=False)
prices = st.decimals(min_value=D("0.01"), max_value=500, places=4, allow_nan=False)
costs = st.decimals(min_value=0, max_value=500, places=8, allow_nan=False)
pnls = st.decimals(min_value=-(10**6), max_value=10**6, places=8, allow_nan=False)
held_quantities = st.decimals(min_value=0, max_value=5000, places=2, allow_nan=False)


@settings(max_examples=600, deadline=None)
@given(
    quantity=quantities,
    avg_cost=costs,
    realised=pnls,
    sign=st.sampled_from([1, -1]),
    held=held_quantities,
    old=prices,
    new=prices,
    delta=quantities,
)
@example(D(500), D("10.01"), D(0), 1, D(500), D("10.01"), D("10.0123"), D(100))  # the usual
@example(D(500), D("10.01"), D(0), 1, D(500), D("10.01"), D("10.01"), D(0))  # nothing moves
@example(D(-300), D("9"), D(5), 1, D(100), D("9"), D("9.5"), D(400))  # buy crossing a short
@example(D(50), D("9"), D(0), 1, D(100), D("9"), D("9.5"), D(20))  # held more than the position
@example(D(500), D("10"), D(0), 1, D(500), D("10"), D("11"), D(-100))  # a reversal
@example(D(0), D(0), D(0), -1, D(0), D("1"), D("2"), D(10))  # a short opened from flat
def test_position_move_is_the_composition_to_the_last_digit(
    quantity: D, avg_cost: D, realised: D, sign: int, held: D, old: D, new: D, delta: D
) -> None:
    try:
        expected = _composed(quantity, avg_cost, realised, sign, held, old, new, delta)
    except (ValueError, ArithmeticError) as exc:
        with pytest.raises(type(exc)):
            position_move(quantity, avg_cost, realised, sign, held, old, new, delta)
        return
    got = position_move(quantity, avg_cost, realised, sign, held, old, new, delta)
    assert [_exact(v) for v in got] == [_exact(v) for v in expected]


def test_position_move_of_a_usual_fill_exact() -> None:
    # given 500 held long at 10.01 from this block; when the average moves to 10.0123 and 100
    # more are allocated
    got = position_move(D(500), D("10.01"), D(0), 1, D(500), D("10.01"), D("10.0123"), D(100))
    # then all 600 stand at the new average, no P&L
    assert got == (D(600), D("10.01230000"), D(0))
    assert str(got[1]) == "10.01230000"


def test_position_move_refuses_what_the_composition_refuses() -> None:
    # an int quantity is accepted like apply_trade does; a float price is refused the same way
    assert position_move(D(0), D(0), D(0), 1, D(0), D(1), D(2), 5)[0] == D(5)
    with pytest.raises(TypeError):
        position_move(D(0), D(0), D(0), 1, D(0), D(1), 2.0, D(5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="side_sign"):
        position_move(D(10), D(1), D(0), 2, D(0), D(1), D(1), D(5))
