"""Tests of the pure allocation, commission and position engine (no database)."""

from __future__ import annotations

from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocations.engine import (
    AllocationTarget,
    Commission,
    CommissionSchedule,
    PositionState,
    ProRata,
    allocate_cumulative,
    allocate_cumulative_pro_rata,
    allocate_fill,
    apply_trade,
    commission_for,
    commissions_for,
    manual_allocation_validate,
)

PROPS = settings(max_examples=200, deadline=None)


def _targets(*requested: str, weights: tuple[str, ...] | None = None) -> list[AllocationTarget]:
    """Orders keyed 'a', 'b', ... entered in that order."""
    return [
        AllocationTarget(
            key=chr(ord("a") + i),
            requested=D(q),
            weight=None if weights is None else D(weights[i]),
            entry_seq=(i,),
        )
        for i, q in enumerate(requested)
    ]


# ---------------------------------------------------------------------------------------------
# allocate_cumulative: exact examples
# ---------------------------------------------------------------------------------------------


def test_results_carry_the_widest_scale_of_lot_fill_and_requests():
    # given requests written with different scales (pro-rata: the weights are the requests)
    targets = _targets("100", "200.0", "300.000")
    # when 300 (lot 100) or 300.00 (lot 1.0) are allocated
    coarse = allocate_cumulative(targets, D("300"), D("100"))
    fine = allocate_cumulative(targets, D("300.00"), D("1.0"))
    # then the values are 100/100/100 and 50/100/150, written with three decimals (the
    # requests' widest) whatever the scale of the lot and the fill
    assert [str(v) for v in coarse.values()] == ["100.000", "100.000", "100.000"]
    assert [str(v) for v in fine.values()] == ["50.000", "100.000", "150.000"]
    # and fixed ratios with their own scale give the same values at the requests' scale
    ratios = _targets("100", "200.0", "300.000", weights=("1", "2.00", "3"))
    assert [str(v) for v in allocate_cumulative(ratios, D("300.00"), D("1.0")).values()] == [
        "50.000",
        "100.000",
        "150.000",
    ]


def test_tie_on_remainder_goes_to_the_order_entered_first():
    # given orders of 100/200/300 entered in that order, lot 100
    targets = _targets("100", "200", "300")
    # when 300 is filled: shares 50/100/150, floors 0/100/100, remainders 50/0/50 tie
    result = allocate_cumulative(targets, D("300"), D("100"))
    # then the leftover lot goes to 'a', entered before 'c'
    assert result == {"a": D("100"), "b": D("100"), "c": D("100")}


def test_tie_on_remainder_follows_entry_sequence_not_list_position():
    # given the same orders but the 300 order was entered first
    targets = [
        AllocationTarget(key="a", requested=D("100"), entry_seq=(3,)),
        AllocationTarget(key="b", requested=D("200"), entry_seq=(2,)),
        AllocationTarget(key="c", requested=D("300"), entry_seq=(1,)),
    ]
    # when
    result = allocate_cumulative(targets, D("300"), D("100"))
    # then
    assert result == {"a": D("0"), "b": D("100"), "c": D("200")}


def test_largest_remainder_wins_over_entry_sequence():
    # given orders of 100/300/300, lot 100; shares of 300 are 42.9/128.6/128.6
    targets = _targets("100", "300", "300")
    # when 300 is filled the one leftover lot goes to the largest remainder (a: 42.9)
    assert allocate_cumulative(targets, D("300"), D("100")) == {
        "a": D("100"),
        "b": D("100"),
        "c": D("100"),
    }
    # and when 400 is filled the two leftover lots go to b and c (71.4 each, a has 57.1)
    assert allocate_cumulative(targets, D("400"), D("100")) == {
        "a": D("0"),
        "b": D("200"),
        "c": D("200"),
    }


def test_full_fill_gives_every_order_its_quantity_and_zero_fill_gives_nothing():
    targets = _targets("100", "250", "300")
    assert allocate_cumulative(targets, D("650"), D("100")) == {
        "a": D("100"),
        "b": D("250"),
        "c": D("300"),
    }
    assert allocate_cumulative(targets, D("0"), D("100")) == {"a": 0, "b": 0, "c": 0}


def test_exact_pro_rata_needs_no_rounding():
    targets = _targets("1000", "2000", "3000")
    assert allocate_cumulative(targets, D("3000"), D("100")) == {
        "a": D("500"),
        "b": D("1000"),
        "c": D("1500"),
    }


def test_odd_lot_fill_remainder_goes_to_largest_remainder_with_room():
    # given 100/200/300, lot 100, fill 350: shares 58.3/116.7/175, floors 0/100/100
    targets = _targets("100", "200", "300")
    # when
    result = allocate_cumulative(targets, D("350"), D("100"))
    # then the whole leftover lot goes to c (75), the odd 50 to a (58.3 > 16.7)
    assert result == {"a": D("50"), "b": D("100"), "c": D("200")}


def test_odd_sized_orders_are_filled_to_their_full_quantity():
    # given two orders of 150 with lot 100 (only one whole lot fits in each)
    targets = _targets("150", "150")
    # when the block fills completely
    result = allocate_cumulative(targets, D("300"), D("100"))
    # then each gets exactly what it asked for
    assert result == {"a": D("150"), "b": D("150")}


def test_odd_sized_orders_leave_at_most_one_partial_piece():
    # given orders 150/150/170, lot 100, fill 400: shares 127.7/127.7/144.7, floors 100 each
    targets = _targets("150", "150", "170")
    # when no order has room for the leftover whole lot
    result = allocate_cumulative(targets, D("400"), D("100"))
    # then c (largest remainder) is topped up to 170, the last 30 to a (ties b, entered first)
    assert result == {"a": D("130"), "b": D("100"), "c": D("170")}
    assert manual_allocation_validate(targets, result, D("400"), D("100")) == []


def test_fixed_ratio_allocates_by_weight():
    # given a fixed 50/30/20 split of orders large enough not to cap
    targets = _targets("1000", "1000", "1000", weights=("0.5", "0.3", "0.2"))
    # when
    result = allocate_cumulative(targets, D("1000"), D("100"))
    # then
    assert result == {"a": D("500"), "b": D("300"), "c": D("200")}


def test_fixed_ratio_caps_at_requested_and_shares_the_excess_by_weight():
    # given a asks for only 200 although its ratio would give it 500
    targets = _targets("200", "1000", "1000", weights=("0.5", "0.25", "0.25"))
    # when
    result = allocate_cumulative(targets, D("1000"), D("100"))
    # then a is capped and its 300 excess is split equally between b and c
    assert result == {"a": D("200"), "b": D("400"), "c": D("400")}


def test_capping_cascades_over_several_rounds():
    # given weights that overshoot a, then (after redistribution) b
    targets = _targets("100", "300", "5000", weights=("10", "5", "1"))
    # when 1600 fill: a's share 1000 > 100; then b's 1500*5/6=1250 > 300; c takes the rest
    result = allocate_cumulative(targets, D("1600"), D("100"))
    # then
    assert result == {"a": D("100"), "b": D("300"), "c": D("1200")}


def test_capping_is_exact_when_ratios_are_equal_as_floats():
    # given a (ratio 1 + 5e-17) and b (ratio exactly 1) that compare equal as floats, listed
    # with a first, and a third order that absorbs the rest
    big = 10**18
    targets = [
        AllocationTarget(key="a", requested=D(big + 50), weight=D(big), entry_seq=(1,)),
        AllocationTarget(key="b", requested=D(big), weight=D(big), entry_seq=(2,)),
        AllocationTarget(key="c", requested=D(10**40), weight=D(1), entry_seq=(3,)),
    ]
    # when b's exact share (19.5 over its request) must be capped but a's must not
    result = allocate_cumulative(targets, D(2 * big + 40), D(1))
    # then b gets exactly its request; a its share floored (big + 38) plus the leftover unit
    assert result == {"a": D(big + 39), "b": D(big), "c": D(1)}


def test_decimal_lot_sizes_work():
    # given fractional quantities (crypto-like), lot 0.01
    targets = _targets("1.00", "2.00")
    # when 1.00 fills: shares 0.333.. / 0.666.., floors 0.33 / 0.66, leftover 0.01 to b
    result = allocate_cumulative(targets, D("1.00"), D("0.01"))
    # then
    assert result == {"a": D("0.33"), "b": D("0.67")}


def test_result_keeps_target_order_and_accepts_int_keys():
    targets = [
        AllocationTarget(key=7, requested=D("100"), entry_seq=(1,)),
        AllocationTarget(key=3, requested=D("100"), entry_seq=(2,)),
    ]
    assert list(allocate_cumulative(targets, D("100"), D("100")).items()) == [
        (7, D("100")),
        (3, D("0")),
    ]


def test_empty_block_allocates_nothing():
    assert allocate_cumulative([], D("0"), D("100")) == {}


@pytest.mark.parametrize(
    ("filled", "lot", "message"),
    [
        (D("601"), D("100"), "exceeds"),
        (D("-1"), D("100"), ">= 0"),
        (D("100"), D("0"), "lot_size"),
    ],
)
def test_allocate_cumulative_rejects_bad_totals(filled, lot, message):
    with pytest.raises(ValueError, match=message):
        allocate_cumulative(_targets("100", "200", "300"), filled, lot)


def test_allocate_cumulative_rejects_duplicate_keys_and_floats():
    dup = [
        AllocationTarget(key="a", requested=D("100")),
        AllocationTarget(key="a", requested=D("100")),
    ]
    with pytest.raises(ValueError, match="duplicate"):
        allocate_cumulative(dup, D("100"), D("100"))
    with pytest.raises(TypeError, match="Decimal"):
        allocate_cumulative(_targets("100"), 100.0, D("100"))  # type: ignore[arg-type]


def test_target_validation():
    with pytest.raises(TypeError):
        AllocationTarget(key="a", requested=100.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requested"):
        AllocationTarget(key="a", requested=D("-1"))
    with pytest.raises(ValueError, match="weight"):
        AllocationTarget(key="a", requested=D("1"), weight=D("0"))
    assert AllocationTarget(key="a", requested=D("300")).weight == D("300")


# ---------------------------------------------------------------------------------------------
# allocate_fill
# ---------------------------------------------------------------------------------------------


def test_fills_allocate_incrementally_to_the_cumulative_target():
    # given 100/200/300 and a first fill of 300 already allocated
    targets = _targets("100", "200", "300")
    already = allocate_cumulative(targets, D("300"), D("100"))
    # when a second fill brings the block to 600
    deltas = allocate_fill(targets, already, D("600"), D("100"))
    # then the deltas complete every order and omit nothing but zeros
    assert deltas == {"b": D("100"), "c": D("200")}


def test_alabama_paradox_gives_reversal():
    # given 100/300/300, lot 100, after a 300 fill a holds one lot (100/100/100)
    targets = _targets("100", "300", "300")
    already = allocate_cumulative(targets, D("300"), D("100"))
    # when the next fill takes the block to 400
    deltas = allocate_fill(targets, already, D("400"), D("100"))
    # then a's lot is reversed (a negative delta) and the deltas still sum to the fill
    assert deltas == {"a": D("-100"), "b": D("100"), "c": D("100")}
    assert sum(deltas.values()) == D("100")


def test_trade_bust_lowering_the_total_reverses_allocations():
    targets = _targets("100", "200", "300")
    already = allocate_cumulative(targets, D("600"), D("100"))
    assert allocate_fill(targets, already, D("300"), D("100")) == {
        "b": D("-100"),
        "c": D("-200"),
    }


def test_allocate_fill_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        allocate_fill(_targets("100"), {"zz": D("100")}, D("100"), D("100"))


# ---------------------------------------------------------------------------------------------
# manual_allocation_validate
# ---------------------------------------------------------------------------------------------


def test_manual_allocation_accepts_a_valid_split():
    targets = _targets("100", "200", "300")
    quantities = {"a": D("0"), "b": D("200"), "c": D("100")}
    assert manual_allocation_validate(targets, quantities, D("300"), D("100")) == []


def test_manual_allocation_missing_keys_count_as_zero():
    targets = _targets("100", "200", "300")
    assert manual_allocation_validate(targets, {"c": D("300")}, D("300"), D("100")) == []


def test_manual_allocation_reports_every_error():
    # given an unknown order, an over-allocation, a negative, two odd lots and a wrong sum
    targets = _targets("100", "200", "300", "400")
    quantities = {
        "a": D("200"),
        "b": D("-100"),
        "c": D("150"),
        "d": D("50"),
        "x": D("100"),
    }
    # when
    errors = manual_allocation_validate(targets, quantities, D("500"), D("100"))
    # then
    assert errors == [
        "'x': not an order of this block",
        "'a': quantity 200 exceeds the order's quantity 100",
        "'b': quantity -100 is negative",
        "quantities must be whole lots of 100 (or the order's full quantity); "
        "only one may carry an odd remainder, got ['c', 'd']",
        "allocated total 400 does not equal the filled quantity 500",
    ]


def test_manual_allocation_allows_one_odd_piece_and_full_odd_orders():
    targets = _targets("150", "200", "300")
    quantities = {"a": D("150"), "b": D("100"), "c": D("120")}
    assert manual_allocation_validate(targets, quantities, D("370"), D("100")) == []


def test_manual_allocation_rejects_floats():
    errors = manual_allocation_validate(_targets("100"), {"a": 100.0}, D("100"), D("100"))
    assert errors == [
        "'a': quantity for 'a' must be a Decimal, got float",
        "allocated total 0 does not equal the filled quantity 100",
    ]


# ---------------------------------------------------------------------------------------------
# Commissions
# ---------------------------------------------------------------------------------------------


def test_commission_bps_per_share_and_fees_buy_and_sell():
    # given 5 bps + 1 cent a share, minimum 1.00, fees 0.278 bps
    schedule = CommissionSchedule(
        bps=D("5"), per_share=D("0.01"), min_per_ticket=D("1.00"), fees_bps=D("0.278")
    )
    # when 1,000 shares at 50.125: gross 50,125; commission 25.0625 + 10 = 35.0625;
    # fees 1.393475
    buy = commission_for(schedule, D("1000"), D("50.125"), 1)
    sell = commission_for(schedule, D("1000"), D("50.125"), -1)
    # then
    assert buy == Commission(
        gross=D("50125.00"), commission=D("35.06"), fees=D("1.39"), net=D("50161.45")
    )
    assert sell == Commission(
        gross=D("50125.00"), commission=D("35.06"), fees=D("1.39"), net=D("50088.55")
    )


def test_commission_minimum_per_ticket_applies():
    schedule = CommissionSchedule(bps=D("5"), per_share=D("0.01"), min_per_ticket=D("1.00"))
    # 10 at 20: 0.10 + 0.10 = 0.20 < 1.00
    assert commission_for(schedule, D("10"), D("20"), 1) == Commission(
        gross=D("200.00"), commission=D("1.00"), fees=D("0.00"), net=D("201.00")
    )


def test_commission_rounds_half_up():
    # 1 at 5 with 10 bps is exactly 0.005: half-up gives 0.01 (half-even would give 0.00)
    schedule = CommissionSchedule(bps=D("10"))
    assert commission_for(schedule, D("1"), D("5"), 1).commission == D("0.01")
    # gross 0.125 rounds half-up to 0.13
    assert commission_for(schedule, D("1"), D("0.125"), 1).gross == D("0.13")


def test_commission_zero_quantity_is_no_ticket():
    schedule = CommissionSchedule(min_per_ticket=D("5"))
    assert commission_for(schedule, D("0"), D("10"), -1) == Commission(
        gross=D("0.00"), commission=D("0.00"), fees=D("0.00"), net=D("0.00")
    )


def test_commission_other_currency_quantum():
    schedule = CommissionSchedule(bps=D("3"))
    result = commission_for(schedule, D("100"), D("1234.5"), 1, quantum=D("1"))
    assert result == Commission(gross=D("123450"), commission=D("37"), fees=D("0"), net=D("123487"))


def test_commission_validation():
    with pytest.raises(ValueError, match="bps"):
        CommissionSchedule(bps=D("-1"))
    with pytest.raises(ValueError, match="side_sign"):
        commission_for(CommissionSchedule(), D("1"), D("1"), 0)
    with pytest.raises(ValueError, match="quantity"):
        commission_for(CommissionSchedule(), D("-1"), D("1"), 1)


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------


def test_position_long_short_and_flips():
    # given a flat position
    state = PositionState()
    # when buying 100 at 10 then 100 at 12: average 11
    state = apply_trade(state, 1, D("100"), D("10"))
    state = apply_trade(state, 1, D("100"), D("12"))
    assert state == PositionState(D("200"), D("11"), D("0"))
    # when selling 50 at 15: realised 50 * 4
    state = apply_trade(state, -1, D("50"), D("15"))
    assert state == PositionState(D("150"), D("11"), D("200"))
    # when selling 200 at 9: closes 150 (-300) and opens a short of 50 at 9
    state = apply_trade(state, -1, D("200"), D("9"))
    assert state == PositionState(D("-50"), D("9"), D("-100"))
    # when buying 20 at 8 to cover: a short gains 20 * 1
    state = apply_trade(state, 1, D("20"), D("8"))
    assert state == PositionState(D("-30"), D("9"), D("-80"))
    # when shorting 30 more at 10: the short's average becomes 9.5
    state = apply_trade(state, -1, D("30"), D("10"))
    assert state == PositionState(D("-60"), D("9.5"), D("-80"))
    # when buying 60 at 9.5 to close: flat, nothing realised, average reset
    state = apply_trade(state, 1, D("60"), D("9.5"))
    assert state == PositionState(D("0"), D("0"), D("-80"))


def test_position_average_cost_is_quantized_to_8_decimals():
    state = apply_trade(PositionState(), 1, D("1"), D("1"))
    state = apply_trade(state, 1, D("2"), D("2"))
    assert state.avg_cost == D("1.66666667")
    assert str(state.avg_cost) == "1.66666667"


def test_position_short_from_flat_and_flip_to_long():
    state = apply_trade(PositionState(), -1, D("100"), D("50"))
    assert state == PositionState(D("-100"), D("50"), D("0"))
    state = apply_trade(state, 1, D("150"), D("40"))
    assert state == PositionState(D("50"), D("40"), D("1000"))


def test_apply_trade_validation():
    with pytest.raises(ValueError, match="side_sign"):
        apply_trade(PositionState(), 2, D("1"), D("1"))
    with pytest.raises(ValueError, match="quantity"):
        apply_trade(PositionState(), 1, D("0"), D("1"))


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

LOTS = [D("1"), D("100"), D("0.5"), D("0.001")]


@st.composite
def blocks(draw):
    """A block: lot size, targets (maybe odd-sized, maybe fixed-ratio), and a unit quantity."""
    lot = draw(st.sampled_from(LOTS))
    unit = lot / 4  # quantities on a quarter-lot grid let odd lots happen
    odd_orders = draw(st.booleans())
    fixed_ratio = draw(st.booleans())
    n = draw(st.integers(min_value=1, max_value=8))
    lots = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    odds = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)) if odd_orders else [0] * n
    seqs = draw(st.permutations(range(n)))
    targets = []
    for i in range(n):
        weight = D(draw(st.integers(1, 1000))).scaleb(-2) if fixed_ratio else None
        targets.append(
            AllocationTarget(
                key=i,
                requested=lots[i] * lot + odds[i] * unit,
                weight=weight,
                entry_seq=(seqs[i], f"order-{i}"),
            )
        )
    return lot, unit, targets


@st.composite
def blocks_with_fill(draw):
    lot, unit, targets = draw(blocks())
    total_units = int(sum(t.requested for t in targets) / unit)
    filled = draw(st.integers(0, total_units)) * unit
    return lot, unit, targets, filled


def _check_invariants(targets, result, filled, lot):
    assert list(result) == [t.key for t in targets]
    assert sum(result.values()) == filled
    for t in targets:
        assert D(0) <= result[t.key] <= t.requested
    assert manual_allocation_validate(targets, result, filled, lot) == []


@PROPS
@given(blocks_with_fill())
def test_property_allocation_sums_and_never_over_allocates(case):
    lot, _unit, targets, filled = case
    result = allocate_cumulative(targets, filled, lot)
    _check_invariants(targets, result, filled, lot)


@PROPS
@given(blocks_with_fill(), st.randoms(use_true_random=False))
def test_property_allocation_is_deterministic_and_order_free(case, rnd):
    lot, _unit, targets, filled = case
    first = allocate_cumulative(targets, filled, lot)
    shuffled = list(targets)
    rnd.shuffle(shuffled)
    again = allocate_cumulative(shuffled, filled, lot)
    assert again == first
    assert allocate_cumulative(targets, filled, lot) == first


@PROPS
@given(blocks_with_fill())
def test_property_within_one_lot_of_exact_share_when_no_cap_binds(case):
    lot, _unit, targets, filled = case
    total_weight = sum(t.weight for t in targets)
    shares = {
        t.key: Fraction(filled) * Fraction(t.weight) / Fraction(total_weight) for t in targets
    }
    whole_lot_orders = all(t.requested % lot == 0 for t in targets)
    no_cap = all(shares[t.key] <= t.requested for t in targets)
    if not (whole_lot_orders and no_cap):
        return
    result = allocate_cumulative(targets, filled, lot)
    flot = Fraction(lot)
    for t in targets:
        floor_lot = (shares[t.key] // flot) * flot
        assert floor_lot <= Fraction(result[t.key]) <= floor_lot + flot


@st.composite
def fill_paths(draw):
    """A block, its final filled total and a split of it into consecutive fills."""
    lot, unit, targets, filled = draw(blocks_with_fill())
    filled_units = int(filled / unit)
    cuts = draw(st.lists(st.integers(0, filled_units), max_size=12))
    cumulative = [c * unit for c in sorted(cuts)] + [filled]
    return lot, targets, filled, cumulative


@PROPS
@given(fill_paths())
def test_property_fill_by_fill_equals_cumulative_whatever_the_split(case):
    # given a block and any split of its filled total into fills
    lot, targets, filled, cumulative = case
    state = {t.key: D(0) for t in targets}
    before = D(0)
    for total in cumulative:
        # when each fill is allocated from the state left by the previous ones
        deltas = allocate_fill(targets, state, total, lot)
        for key, delta in deltas.items():
            state[key] += delta
        # then each fill's deltas sum to the fill and the state is the cumulative target
        assert sum(deltas.values(), D(0)) == total - before
        assert all(delta != 0 for delta in deltas.values())
        assert state == allocate_cumulative(targets, total, lot)
        _check_invariants(targets, state, total, lot)
        before = total
    # then the final state depends only on the total
    assert state == allocate_cumulative(targets, filled, lot)


@PROPS
@given(fill_paths())
def test_property_reversals_are_at_most_one_lot_for_pro_rata_whole_lot_orders(case):
    lot, targets, _filled, cumulative = case
    targets = [
        AllocationTarget(
            key=t.key,
            requested=(t.requested // lot) * lot,
            entry_seq=t.entry_seq,
        )
        for t in targets
    ]
    cap = sum(t.requested for t in targets)
    state = {t.key: D(0) for t in targets}
    for total in cumulative:
        total = min((total // lot) * lot, cap)
        deltas = allocate_fill(targets, state, total, lot)
        assert all(delta >= -lot for delta in deltas.values())
        for key, delta in deltas.items():
            state[key] += delta


trades = st.lists(
    st.tuples(
        st.sampled_from([1, -1]),
        st.integers(1, 5000).map(lambda q: D(q).scaleb(-1)),
        st.integers(1, 100_000).map(lambda p: D(p).scaleb(-2)),
    ),
    max_size=30,
)


@PROPS
@given(trades)
def test_property_positions_reconcile_with_trades(trade_list):
    # given any sequence of buys and sells (shorts and flips included)
    state = PositionState()
    traded = D(0)
    cash_in = D(0)
    error_bound = D(0)
    half_ulp = D("0.000000005")
    for side, qty, px in trade_list:
        # when each trade is applied
        state = apply_trade(state, side, qty, px)
        traded += side * qty
        cash_in += side * qty * px
        # avg cost rounding moves the cost basis by <= |qty| half-ulps; pnl rounding by 1
        error_bound += abs(state.quantity) * half_ulp + half_ulp
        # then the quantity is the signed sum, exactly
        assert state.quantity == traded
        # and money reconciles: what was paid = cost basis still held - realised P&L
        assert abs(cash_in - (state.quantity * state.avg_cost - state.realised_pnl)) <= error_bound
        if state.quantity == 0:
            assert state.avg_cost == 0
        else:
            assert state.avg_cost > 0


@PROPS
@given(
    quantities=st.lists(
        st.decimals(min_value=0, max_value=10**7, places=4, allow_nan=False), max_size=30
    ),
    price=st.decimals(min_value=0, max_value=10**5, places=8, allow_nan=False),
    bps=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False),
    per_share=st.decimals(min_value=0, max_value=1, places=4, allow_nan=False),
    minimum=st.decimals(min_value=0, max_value=20, places=2, allow_nan=False),
    fees_bps=st.decimals(min_value=0, max_value=5, places=3, allow_nan=False),
    sign=st.sampled_from([1, -1]),
)
def test_commissions_for_many_equals_commission_for_each(
    quantities, price, bps, per_share, minimum, fees_bps, sign
):
    # given a schedule, a price and many quantities (zeros included)
    schedule = CommissionSchedule(
        bps=bps, per_share=per_share, min_per_ticket=minimum, fees_bps=fees_bps
    )
    # when they are priced in one call
    many = commissions_for(schedule, quantities, price, sign)
    # then each is exactly what commission_for gives it alone, digits and exponent alike
    one_by_one = [commission_for(schedule, q, price, sign) for q in quantities]
    assert many == [(c.gross, c.commission, c.fees, c.net) for c in one_by_one]
    assert [tuple(map(str, m)) for m in many] == [
        (str(c.gross), str(c.commission), str(c.fees), str(c.net)) for c in one_by_one
    ]


@pytest.mark.parametrize("fees_bps", [D("0"), D("0.000"), D("-0"), D("0.5")])
def test_commissions_for_without_fees_gives_commission_for_fees_digit_for_digit(fees_bps):
    # given a schedule whose fees are zero (written three ways) or not
    schedule = CommissionSchedule(
        bps=D(5), per_share=D("0.005"), min_per_ticket=D(1), fees_bps=fees_bps
    )
    quantities = [D("0"), D("100.00000000"), D("333"), D("12345.5")]
    for sign in (1, -1):
        # when many quantities are priced in one call
        many = commissions_for(schedule, quantities, D("10.03"), sign)
        # then each is what commission_for gives alone, sign of zero and exponent included
        one_by_one = [commission_for(schedule, q, D("10.03"), sign) for q in quantities]
        assert [tuple(map(str, m)) for m in many] == [
            (str(c.gross), str(c.commission), str(c.fees), str(c.net)) for c in one_by_one
        ]


def test_commissions_for_refuses_what_commission_for_refuses():
    schedule = CommissionSchedule(bps=D("5"))
    with pytest.raises(ValueError, match="side_sign"):
        commissions_for(schedule, [D("1")], D("10"), 0)
    with pytest.raises(ValueError, match="price must be >= 0"):
        commissions_for(schedule, [D("1")], D("-1"), 1)
    with pytest.raises(ValueError, match="quantity must be >= 0"):
        commissions_for(schedule, [D("1"), D("-1")], D("10"), 1)
    with pytest.raises(TypeError, match="quantity must be a Decimal"):
        commissions_for(schedule, [1.5], D("10"), 1)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="quantity must be finite"):
        commissions_for(schedule, [D("NaN")], D("10"), 1)
    # and no quantities is no money
    assert commissions_for(schedule, [], D("10"), 1) == []


# allocate_cumulative_pro_rata: allocate_cumulative of pro-rata targets, without the targets


def _pro_rata(targets, filled, lot):
    return allocate_cumulative_pro_rata(
        [t.key for t in targets],
        [t.requested for t in targets],
        [t.entry_seq for t in targets],
        filled,
        lot,
    )


@PROPS
@given(blocks_with_fill())
def test_property_pro_rata_entry_gives_what_pro_rata_targets_give(case):
    lot, _unit, targets, filled = case
    # given the block's orders as pro-rata targets (no weight: zero requests included)
    pro_rata = [AllocationTarget(t.key, t.requested, entry_seq=t.entry_seq) for t in targets]
    expected = allocate_cumulative(pro_rata, filled, lot)
    # when the same orders are given as plain sequences
    result = _pro_rata(pro_rata, filled, lot)
    # then the allocation is the same, value for value (scale included) and in the same order
    assert list(result.items()) == list(expected.items())
    assert [str(v) for v in result.values()] == [str(v) for v in expected.values()]


def test_pro_rata_entry_with_zero_requests_and_odd_scales():
    # given orders of 0, 100.5 and 300 (a zero request weighs 1, as AllocationTarget makes it)
    targets = [
        AllocationTarget("a", D("0"), entry_seq=(1,)),
        AllocationTarget("b", D("100.5"), entry_seq=(2,)),
        AllocationTarget("c", D("300"), entry_seq=(3,)),
    ]
    # then both entries allocate 200 the same way
    assert _pro_rata(targets, D("200"), D("1")) == allocate_cumulative(targets, D("200"), D("1"))
    assert _pro_rata(targets, D("200"), D("1")) == {"a": D("0"), "b": D("50"), "c": D("150")}


@pytest.mark.parametrize(
    ("keys", "requested", "error", "message"),
    [
        (["a", "a"], [D(1), D(2)], ValueError, "duplicate allocation key 'a'"),
        (["a"], [D(-1)], ValueError, "requested must be >= 0, got -1 for 'a'"),
        (["a"], [1.5], TypeError, "requested must be a Decimal, got float"),
        (["a"], [D("NaN")], ValueError, "requested must be finite"),
    ],
)
def test_pro_rata_entry_refuses_what_allocation_targets_refuse(keys, requested, error, message):
    with pytest.raises(error, match=message):
        allocate_cumulative_pro_rata(keys, requested, [(0,)] * len(keys), D(0), D(1))
    with pytest.raises(error, match=message):
        allocate_cumulative(
            [AllocationTarget(k, r, entry_seq=(0,)) for k, r in zip(keys, requested, strict=True)],
            D(0),
            D(1),
        )


def test_pro_rata_entry_refuses_sequences_of_different_lengths():
    with pytest.raises(ValueError, match="same length"):
        allocate_cumulative_pro_rata(["a", "b"], [D(1)], [(0,), (1,)], D(0), D(1))


# The pro-rata allocation against a plain statement of its rules (exact fractions, one sort by
# (-remainder, entry_seq, position)): the engine's fast paths (orders already in entry order,
# shares without caps, one Decimal per distinct quantity) must give exactly this.


def _pro_rata_by_the_rules(requested, seqs, filled, lot):
    n = len(requested)
    req, fill, lot = [Fraction(r) for r in requested], Fraction(filled), Fraction(lot)
    share = [fill * r / sum(req) for r in req]
    alloc = [(s // lot) * lot for s in share]
    left = fill - sum(alloc)

    def by_remainder():
        return sorted(range(n), key=lambda i: (-(share[i] - alloc[i]), seqs[i], i))

    order = by_remainder()
    while left >= lot:
        eligible = [i for i in order if req[i] - alloc[i] >= lot]
        if not eligible:
            break
        for i in eligible:
            if left < lot:
                break
            alloc[i] += lot
            left -= lot
    if left:
        for i in by_remainder():
            piece = min(req[i] - alloc[i], left)
            if piece > 0:
                alloc[i] += piece
                left -= piece
    assert left == 0
    return alloc


@st.composite
def entry_ordered_blocks(draw):
    """Positive orders on a quarter-lot grid, entry sequences ascending (ties included) or
    shuffled, and a fill."""
    lot = draw(st.sampled_from(LOTS))
    n = draw(st.integers(min_value=1, max_value=40))
    lots = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    odds = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    requested = [max(k * lot + o * lot / 4, lot / 4) for k, o in zip(lots, odds, strict=True)]
    seqs = sorted(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    if draw(st.booleans()):
        seqs = draw(st.permutations(seqs))
    units = int(sum(requested) / (lot / 4))
    filled = draw(st.integers(0, units)) * (lot / 4)
    return lot, requested, [(s,) for s in seqs], filled


@PROPS
@given(entry_ordered_blocks())
def test_property_pro_rata_is_the_rules_to_the_last_digit(case):
    lot, requested, seqs, filled = case
    # given orders (entry sequences in order, with ties, or not) and a fill
    keys = list(range(len(requested)))
    # when they are allocated pro-rata
    result = allocate_cumulative_pro_rata(keys, requested, seqs, filled, lot)
    # then each order gets what the rules give it, at the widest scale of the inputs
    assert list(result.values()) == _pro_rata_by_the_rules(requested, seqs, filled, lot)
    places = max(-v.as_tuple().exponent for v in [*requested, filled, lot])
    assert all(v.as_tuple().exponent == -max(places, 0) for v in result.values())
    # and the orders prepared first (ProRata) allocate the same, value for value
    prepared = ProRata(keys, requested, seqs)
    assert [str(v) for v in prepared.allocate(filled, lot).values()] == [
        str(v) for v in result.values()
    ]


def test_pro_rata_with_entry_sequences_comparable_only_on_ties():
    # given two orders whose entry sequences cannot be compared, and remainders that differ
    keys, requested, seqs = ["a", "b"], [D(300), D(100)], [(1,), ("x",)]
    # when 200 is allocated in lots of 100 (shares 150 and 50: remainders 50 and 50 tie...)
    with pytest.raises(TypeError):
        allocate_cumulative_pro_rata(keys, requested, seqs, D(200), D(100))
    # ... and 300 (shares 225 and 75: remainders 25 and 75 do not tie): the larger one wins
    assert allocate_cumulative_pro_rata(keys, requested, seqs, D(300), D(100)) == {
        "a": D(200),
        "b": D(100),
    }


def test_pro_rata_keeps_the_widest_scale_on_shared_quantities():
    # given three orders of the same quantity written at two scales, and a fill at another
    requested = [D("100"), D("100.00"), D("100")]
    result = allocate_cumulative_pro_rata(
        ["a", "b", "c"], requested, [(1,), (2,), (3,)], D("150.000"), D(1)
    )
    # then every quantity (one Decimal per distinct value) carries the widest scale
    assert [str(v) for v in result.values()] == ["50.000", "50.000", "50.000"]


@PROPS
@given(
    values=st.lists(
        st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False),
        min_size=1,
        max_size=4,
    ),
    picks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8)), max_size=40),
    price=st.decimals(min_value=0, max_value=10**4, places=8, allow_nan=False),
    bps=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False),
    fees_bps=st.decimals(min_value=0, max_value=5, places=3, allow_nan=False),
    sign=st.sampled_from([1, -1]),
)
def test_commissions_for_prices_repeated_quantities_as_each_alone(
    values, picks, price, bps, fees_bps, sign
):
    # given few distinct quantities, each repeated and written at several scales (100, 100.00)
    quantities = [values[i % len(values)].quantize(D(1).scaleb(-p)) for i, p in picks]
    schedule = CommissionSchedule(
        bps=bps, per_share=D("0.005"), min_per_ticket=D(1), fees_bps=fees_bps
    )
    # when they are priced in one call
    many = commissions_for(schedule, quantities, price, sign)
    # then each is exactly what commission_for gives it alone, digits and exponent alike
    one_by_one = [commission_for(schedule, q, price, sign) for q in quantities]
    assert [tuple(map(str, m)) for m in many] == [
        (str(c.gross), str(c.commission), str(c.fees), str(c.net)) for c in one_by_one
    ]


def test_commissions_for_refuses_a_float_equal_to_a_quantity_priced_before():
    schedule = CommissionSchedule(bps=D("5"))
    # a float equal (and hashing equal) to a Decimal already priced is still refused
    with pytest.raises(TypeError, match="quantity must be a Decimal"):
        commissions_for(schedule, [D("1.5"), 1.5], D("10"), 1)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="quantity must be finite"):
        commissions_for(schedule, [D("1.5"), D("sNaN")], D("10"), 1)
    # and an int is priced as its Decimal
    assert commissions_for(schedule, [D(2), 2], D("10"), 1) == [
        (D("20.00"), D("0.01"), D("0.00"), D("20.01")),
        (D("20.00"), D("0.01"), D("0.00"), D("20.01")),
    ]
