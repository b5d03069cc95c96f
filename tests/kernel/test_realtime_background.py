"""oms_site.realtime in a server: hops are sent by the sender loop's thread, in order."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from oms_site import realtime

Items = list[tuple[str, dict[str, Any]]]


def _hop(*order_ids: int) -> Items:
    return [("firm", {"type": "blotter.event", "event": {"order_id": i}}) for i in order_ids]


def _ids(items: Items) -> list[int]:
    return [message["event"]["order_id"] for _, message in items]


def _wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class _Layer:
    """A channel layer stand-in: `_send_all` below records what it was given."""


class _Sender:
    """A fake `_send_all`: records each hop; a hop can be held until released, or fail."""

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self.finished: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.fail_first = False

    async def __call__(self, layer: Any, items: Items) -> None:
        assert isinstance(layer, _Layer)
        ids = _ids(items)
        self.started.append(ids)
        if self.fail_first and len(self.started) == 1:
            raise RuntimeError("redis is down")
        await asyncio.get_running_loop().run_in_executor(None, self.hold.wait)
        self.finished.append(ids)


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> _Sender:
    fake = _Sender()
    monkeypatch.setattr(realtime, "_send_all", fake)
    monkeypatch.setattr(realtime, "get_channel_layer", _Layer)
    monkeypatch.setattr(realtime, "_background", None)
    realtime.send_in_background()
    yield fake
    fake.hold.set()


def test_hops_leave_in_order_and_what_queued_meanwhile_leaves_in_the_next_hop(
    sender: _Sender,
) -> None:
    # given a first hop whose sending is held
    sender.hold.clear()
    realtime._send_many(_hop(1, 2))
    _wait_until(lambda: sender.started == [[1, 2]])
    # when two more hops are queued from this thread while it is held, then it is released
    realtime._send_many(_hop(3))
    realtime._send_many(_hop(4, 5))
    time.sleep(0.05)
    assert sender.started == [[1, 2]]
    sender.hold.set()
    # then the two queued hops leave together, after the first, in the order queued
    _wait_until(lambda: len(sender.finished) == 2)
    assert sender.started == [[1, 2], [3, 4, 5]]
    assert sender.finished == [[1, 2], [3, 4, 5]]
    # and a later hop leaves on its own
    realtime._send_many(_hop(6))
    _wait_until(lambda: len(sender.finished) == 3)
    assert sender.finished == [[1, 2], [3, 4, 5], [6]]


def test_a_hop_that_fails_is_logged_and_the_next_one_still_leaves(
    sender: _Sender, caplog: pytest.LogCaptureFixture
) -> None:
    # given a channel layer whose first send fails
    sender.fail_first = True
    with caplog.at_level(logging.ERROR, logger="oms_site.realtime"):
        # when two hops are queued one after the other
        realtime._send_many(_hop(1, 2))
        _wait_until(lambda: len(sender.started) == 1)
        realtime._send_many(_hop(3))
        _wait_until(lambda: len(sender.finished) == 1)
    # then the failure is logged with its count and the second hop is sent
    assert sender.started == [[1, 2], [3]]
    assert sender.finished == [[3]]
    messages = [r.getMessage() for r in caplog.records]
    assert "2 blotter events not delivered" in messages


def test_a_hop_without_an_answer_is_logged_and_not_cancelled(
    sender: _Sender, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a send timeout of 50 ms and a hop whose sending is held for longer
    monkeypatch.setattr(realtime, "SEND_TIMEOUT_SECONDS", 0.05)
    sender.hold.clear()
    with caplog.at_level(logging.ERROR, logger="oms_site.realtime"):
        realtime._send_many(_hop(1))
        # when the timeout passes
        _wait_until(
            lambda: "1 blotter events not delivered" in [r.getMessage() for r in caplog.records]
        )
    record = next(r for r in caplog.records if r.getMessage() == "1 blotter events not delivered")
    assert record.exc_info is not None and record.exc_info[0] is TimeoutError
    # then the next hop starts, and the first one, released, still finishes
    realtime._send_many(_hop(2))
    _wait_until(lambda: len(sender.started) == 2)
    sender.hold.set()
    _wait_until(lambda: len(sender.finished) == 2)
    assert sorted(sender.finished) == [[1], [2]]


def test_without_a_channel_layer_nothing_is_sent(
    sender: _Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given no channel layer configured
    monkeypatch.setattr(realtime, "get_channel_layer", lambda: None)
    # when a hop is queued, then a later one once a layer exists
    realtime._send_many(_hop(1))
    time.sleep(0.05)
    monkeypatch.setattr(realtime, "get_channel_layer", _Layer)
    realtime._send_many(_hop(2))
    _wait_until(lambda: len(sender.finished) == 1)
    # then only the later hop was sent
    assert sender.started == [[2]]


def test_send_in_background_starts_one_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a process that sends in the background already
    monkeypatch.setattr(realtime, "_background", None)
    realtime.send_in_background()
    first = realtime._background
    # when it is asked again, then the same sender stays
    realtime.send_in_background()
    assert realtime._background is first
    assert isinstance(first, realtime._Background)
