"""The order state machine: every allowed and every forbidden pair (pure, no database)."""

from __future__ import annotations

import itertools

import pytest

from oms_site.errors import ConflictError
from orders.enums import TERMINAL_STATUSES, OrderStatus
from orders.state import ALLOWED_TRANSITIONS, can_transition, ensure_transition

S = OrderStatus
ALL_PAIRS = list(itertools.product(list(S), list(S)))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in ALLOWED_TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if b not in ALLOWED_TRANSITIONS[a]]

# The table written out independently, so a change to state.py must be made twice on purpose.
EXPECTED = {
    S.NEW: {S.PENDING_COMPLIANCE, S.CANCELED},
    S.PENDING_COMPLIANCE: {S.APPROVED, S.AWAITING_OVERRIDE, S.BLOCKED, S.CANCELED},
    S.BLOCKED: {S.CANCELED, S.EXPIRED},
    S.AWAITING_OVERRIDE: {S.APPROVED, S.BLOCKED, S.PENDING_COMPLIANCE, S.CANCELED, S.EXPIRED},
    S.APPROVED: {S.PENDING_NEW, S.PENDING_COMPLIANCE, S.CANCELED, S.EXPIRED},
    S.PENDING_NEW: {
        S.WORKING,
        S.PARTIALLY_FILLED,
        S.FILLED,
        S.REJECTED,
        S.PENDING_CANCEL,
        S.CANCELED,
        S.EXPIRED,
        S.APPROVED,
    },
    S.WORKING: {
        S.PARTIALLY_FILLED,
        S.FILLED,
        S.PENDING_CANCEL,
        S.PENDING_REPLACE,
        S.CANCELED,
        S.EXPIRED,
        S.DONE_FOR_DAY,
        S.SUSPENDED,
        S.REJECTED,
    },
    S.PARTIALLY_FILLED: {
        S.PARTIALLY_FILLED,
        S.FILLED,
        S.PENDING_CANCEL,
        S.PENDING_REPLACE,
        S.CANCELED,
        S.EXPIRED,
        S.DONE_FOR_DAY,
        S.SUSPENDED,
    },
    S.PENDING_CANCEL: {S.CANCELED, S.PARTIALLY_FILLED, S.FILLED, S.WORKING, S.EXPIRED},
    S.PENDING_REPLACE: {
        S.REPLACED,
        S.WORKING,
        S.PARTIALLY_FILLED,
        S.FILLED,
        S.PENDING_CANCEL,
        S.CANCELED,
        S.EXPIRED,
    },
    S.REPLACED: {
        S.WORKING,
        S.PARTIALLY_FILLED,
        S.FILLED,
        S.PENDING_CANCEL,
        S.PENDING_REPLACE,
        S.CANCELED,
        S.EXPIRED,
        S.DONE_FOR_DAY,
        S.SUSPENDED,
    },
    S.DONE_FOR_DAY: {S.WORKING, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED},
    S.SUSPENDED: {S.WORKING, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED},
    S.FILLED: set(),
    S.CANCELED: set(),
    S.REJECTED: set(),
    S.EXPIRED: set(),
}


def test_table_has_a_row_for_every_status_and_matches_the_spec() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(S)
    assert {k: set(v) for k, v in ALLOWED_TRANSITIONS.items()} == EXPECTED


@pytest.mark.parametrize(("current", "target"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transition_passes(current: S, target: S) -> None:
    # when / then: no exception
    ensure_transition(current, target)
    assert can_transition(current.value, target.value) is True


@pytest.mark.parametrize(("current", "target"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_transition_raises_invalid_transition(current: S, target: S) -> None:
    with pytest.raises(ConflictError) as exc:
        ensure_transition(current, target)
    assert exc.value.code == "invalid_transition"
    assert exc.value.status_code == 409
    assert exc.value.errors == {"status": [f"transition {current} -> {target} is not allowed"]}
    assert can_transition(current, target) is False


def test_pair_counts() -> None:
    assert len(ALLOWED) + len(FORBIDDEN) == 17 * 17
    assert len(ALLOWED) == sum(len(v) for v in EXPECTED.values()) == 73


def test_fills_while_cancel_pending_still_count() -> None:
    assert can_transition(S.PENDING_CANCEL, S.PARTIALLY_FILLED)
    assert can_transition(S.PENDING_CANCEL, S.FILLED)


def test_filled_cannot_be_canceled_and_terminal_states_are_final() -> None:
    assert not can_transition(S.FILLED, S.CANCELED)
    assert not can_transition(S.FILLED, S.PENDING_CANCEL)
    for terminal in TERMINAL_STATUSES:
        assert all(not can_transition(terminal, t) for t in S)


def test_unknown_status_names_are_refused() -> None:
    assert can_transition("bogus", S.NEW) is False
    assert can_transition(S.NEW, "bogus") is False
    with pytest.raises(ConflictError):
        ensure_transition("bogus", "new")
