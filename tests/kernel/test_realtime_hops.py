"""oms_site.realtime: the blotter events a transaction queues back to back leave in one hop."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from oms_site import realtime


def _event(order_id: int, groups: list[str]) -> dict[str, Any]:
    return {
        "event_type": "order.updated",
        "order_id": order_id,
        "version": 1,
        "data": {"id": order_id},
        "groups": groups,
    }


def _sent(hops: list[list[tuple[str, dict[str, Any]]]]) -> list[list[tuple[str, int]]]:
    return [[(group, message["event"]["order_id"]) for group, message in hop] for hop in hops]


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, dict[str, Any]]]]:
    sent: list[list[tuple[str, dict[str, Any]]]] = []
    monkeypatch.setattr(realtime, "_send_many", lambda items: sent.append(list(items)))
    return sent


@pytest.mark.django_db
def test_events_queued_back_to_back_leave_in_one_hop_in_order(
    hops: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # given a transaction that queues a fill's events, one order's event, then another fill's
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        realtime.publish_many_on_commit(events=[_event(1, ["a", "firm"]), _event(2, ["b"])])
        realtime.publish_on_commit(
            event_type="order.updated", order_id=3, version=1, data={}, groups=["c", "c"]
        )
        realtime.publish_many_on_commit(events=[_event(4, ["a"])])
        # nothing leaves before the commit
        assert hops == []
    # then one commit hook sent all of them in one hop, in the order they were queued
    assert len(callbacks) == 1
    assert _sent(hops) == [[("a", 1), ("firm", 1), ("b", 2), ("c", 3), ("a", 4)]]


@pytest.mark.django_db
def test_events_of_a_savepoint_rolled_back_are_dropped_and_the_others_sent(
    hops: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # given events queued before, inside and after a savepoint that is rolled back
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        realtime.publish_many_on_commit(events=[_event(1, ["a"])])
        with pytest.raises(RuntimeError), transaction.atomic():
            realtime.publish_many_on_commit(events=[_event(2, ["a"])])
            realtime.publish_many_on_commit(events=[_event(3, ["a"])])
            raise RuntimeError("rolled back")
        realtime.publish_many_on_commit(events=[_event(4, ["a"])])
    # then exactly the events outside the savepoint leave, in order
    assert _sent(hops) == [[("a", 1), ("a", 4)]]


@pytest.mark.django_db
def test_a_savepoint_kept_sends_its_events_in_their_place(
    hops: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # given events queued before, inside and after a savepoint that is released
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        realtime.publish_many_on_commit(events=[_event(1, ["a"])])
        with transaction.atomic():
            realtime.publish_many_on_commit(events=[_event(2, ["a"])])
        realtime.publish_many_on_commit(events=[_event(3, ["a"])])
    # then all leave in the order queued, the savepoint's in a hop of its own (a hook keeps
    # the savepoints it was queued under)
    assert _sent(hops) == [[("a", 1)], [("a", 2)], [("a", 3)]]


@pytest.mark.django_db
def test_another_commit_hook_in_between_keeps_its_place(
    hops: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # given a hook of another kind queued between two events
    order: list[str] = []
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        realtime.publish_many_on_commit(events=[_event(1, ["a"])])
        transaction.on_commit(lambda: order.append(f"other after {len(hops)} hop(s)"))
        realtime.publish_many_on_commit(events=[_event(2, ["a"])])
    # then the three hooks run in the order queued: the events are not joined across it
    assert len(callbacks) == 3
    assert order == ["other after 1 hop(s)"]
    assert _sent(hops) == [[("a", 1)], [("a", 2)]]


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_events_leave_at_once(hops: list[Any]) -> None:
    realtime.publish_many_on_commit(events=[_event(1, ["a"])])
    realtime.publish_many_on_commit(events=[_event(2, ["a"])])
    assert _sent(hops) == [[("a", 1)], [("a", 2)]]
