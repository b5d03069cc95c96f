"""The garbage-collector pause used around baskets: nested, threaded, and always undone."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from oms_site import gcpause
from oms_site.gcpause import collection_paused


@pytest.fixture(autouse=True)
def _collector_enabled() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_the_collector_is_off_inside_and_on_again_after() -> None:
    # when / then
    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_error_inside_still_turns_the_collector_back_on() -> None:
    # when
    with pytest.raises(ZeroDivisionError), collection_paused():
        1 / 0  # noqa: B018
    # then
    assert gc.isenabled()


def test_nested_pauses_end_with_the_outermost() -> None:
    # when / then
    with collection_paused():
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    # given
    gc.disable()
    # when
    with collection_paused():
        pass
    # then
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads_end_with_the_last() -> None:
    # given a pause held by another thread
    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with collection_paused():
            entered.set()
            release.wait(5)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    # when this thread's own pause ends first
    with collection_paused():
        pass
    # then the collector stays off until the other's ends too
    assert not gc.isenabled()
    release.set()
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_as_a_decorator_each_call_pauses_afresh() -> None:
    # given
    @collection_paused()
    def state() -> bool:
        return gc.isenabled()

    # when / then
    assert [state(), state()] == [False, False]
    assert gc.isenabled()


@contextmanager
def _paused_by_another_thread() -> Iterator[None]:
    """Another thread holds a pause until the block ends (and has ended it on exit)."""
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with collection_paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join(5)


def test_a_pause_ending_under_another_collects_a_large_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a pause held by another thread, and a small backlog bound
    monkeypatch.setattr(gcpause, "BACKLOG", 1_000)
    freed: list[int] = []
    with _paused_by_another_thread():
        # when this thread's pause leaves 2,000 unreachable cycles behind
        with collection_paused():
            for _ in range(2_000):
                cycle: list[object] = []
                cycle.append(cycle)
            del cycle
            weakref.finalize(_Cycle(), freed.append, 1)
            assert gc.get_count()[0] > 1_000
        # then they were collected, and the collector is still off for the other pause
        assert freed == [1]
        assert gc.get_count()[0] < 1_000
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_small_backlog_waits_for_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[int] = []
    # given a pause held by another thread
    with _paused_by_another_thread():
        # when this thread's pause leaves one unreachable cycle behind
        with collection_paused():
            weakref.finalize(_Cycle(), freed.append, 1)
        # then nothing collected it
        assert freed == []
    gc.collect()
    assert freed == [1]


class _Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self
