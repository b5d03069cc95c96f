"""The order state machine as data: every allowed transition is listed; everything else is refused.

Pure module (no database): services call `ensure_transition` before changing `Order.status`,
then bump `version` and write an audit event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

from oms_site.errors import ConflictError
from orders.enums import TERMINAL_STATUSES, OrderStatus

S = OrderStatus

ALLOWED_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    # OMS states, before the order leaves the firm.
    S.NEW: frozenset({S.PENDING_COMPLIANCE, S.CANCELED}),
    S.PENDING_COMPLIANCE: frozenset({S.APPROVED, S.AWAITING_OVERRIDE, S.BLOCKED, S.CANCELED}),
    # A blocked order may only be withdrawn (or lapse at its expiry); an amend cannot launder it.
    S.BLOCKED: frozenset({S.CANCELED, S.EXPIRED}),
    # The officer overrides (approved) or declines (blocked); an amend re-runs the check.
    S.AWAITING_OVERRIDE: frozenset(
        {S.APPROVED, S.BLOCKED, S.PENDING_COMPLIANCE, S.CANCELED, S.EXPIRED}
    ),
    # Staged on the desk: routed, amended (re-checked), withdrawn or lapsed.
    S.APPROVED: frozenset({S.PENDING_NEW, S.PENDING_COMPLIANCE, S.CANCELED, S.EXPIRED}),
    # FIX states. Sent, not yet acknowledged: a broker may fill before it acks, or reject; a
    # session that refuses the message hands the order back to the desk (approved).
    S.PENDING_NEW: frozenset(
        {
            S.WORKING,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.REJECTED,
            S.PENDING_CANCEL,
            S.CANCELED,
            S.EXPIRED,
            S.APPROVED,
        }
    ),
    S.WORKING: frozenset(
        {
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.PENDING_REPLACE,
            S.CANCELED,
            S.EXPIRED,
            S.DONE_FOR_DAY,
            S.SUSPENDED,
            S.REJECTED,
        }
    ),
    # Further partial fills keep the order partially filled (a self-transition).
    S.PARTIALLY_FILLED: frozenset(
        {
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.PENDING_REPLACE,
            S.CANCELED,
            S.EXPIRED,
            S.DONE_FOR_DAY,
            S.SUSPENDED,
        }
    ),
    # A fill that arrives while the cancel is in flight still counts; a cancel reject sends the
    # order back to where it was (working or partially filled).
    S.PENDING_CANCEL: frozenset({S.CANCELED, S.PARTIALLY_FILLED, S.FILLED, S.WORKING, S.EXPIRED}),
    S.PENDING_REPLACE: frozenset(
        {
            S.REPLACED,
            S.WORKING,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.CANCELED,
            S.EXPIRED,
        }
    ),
    # Replaced is the broker's acknowledgement of the new terms; the order keeps working.
    S.REPLACED: frozenset(
        {
            S.WORKING,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.PENDING_REPLACE,
            S.CANCELED,
            S.EXPIRED,
            S.DONE_FOR_DAY,
            S.SUSPENDED,
        }
    ),
    # A GTC/GTD order done for the day resumes the next session.
    S.DONE_FOR_DAY: frozenset(
        {S.WORKING, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.SUSPENDED: frozenset(
        {S.WORKING, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    # Terminal.
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}

# Where the firm can still withdraw an order itself, without asking a broker.
CANCELABLE_BEFORE_ROUTING = frozenset(
    {S.NEW, S.PENDING_COMPLIANCE, S.BLOCKED, S.AWAITING_OVERRIDE, S.APPROVED}
)
# Where the order is at a broker, so an amend/cancel must become a FIX request.
AT_BROKER = frozenset({S.WORKING, S.PARTIALLY_FILLED, S.REPLACED, S.DONE_FOR_DAY, S.SUSPENDED})
# Where quantity and prices may be changed by the firm directly (re-checked by compliance).
AMENDABLE_BEFORE_ROUTING = frozenset({S.APPROVED, S.AWAITING_OVERRIDE})

assert set(ALLOWED_TRANSITIONS) == set(OrderStatus), "every status needs a row"
assert all(not ALLOWED_TRANSITIONS[s] for s in TERMINAL_STATUSES), "terminal means terminal"


def can_transition(current: str, target: str) -> bool:
    """Whether an order in `current` may move to `target`."""
    try:
        return OrderStatus(target) in ALLOWED_TRANSITIONS[OrderStatus(current)]
    except ValueError:
        return False


def ensure_transition(current: str, target: str) -> None:
    """Raise ConflictError(code="invalid_transition") unless `current` → `target` is allowed."""
    if not can_transition(current, target):
        raise ConflictError(
            f"An order cannot go from {current} to {target}.",
            code="invalid_transition",
            errors={"status": [f"transition {current} -> {target} is not allowed"]},
        )
