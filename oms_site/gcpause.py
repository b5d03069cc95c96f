"""Pausing Python's cyclic garbage collector around bounded bulk work (a basket).

Why: a 500-order basket allocates tens of thousands of short-lived objects (rows, engine
results, audit texts); while they are alive they trip the collector's thresholds again and
again, and the collections they trigger promote them and then walk the whole long-lived heap
(the reference-data cache, Django, the app): about 50 ms of a basket's 110-140 ms of Python
(measured with gc.callbacks). Reference counting frees almost all of them anyway; the few
cycles wait for the next collection after the pause.

The collector is process-wide, so concurrent pauses (threads of one web process) are counted:
it is re-enabled when the last one ends, and never if it was disabled before the first. Threads
that pause back to back (a gateway's appliers applying fills) may keep it off for long: a pause
that ends while others still hold it collects once more than `BACKLOG` objects are waiting
(`gc.get_count()[0]` counts those allocated and not yet freed), so unreachable cycles stay
bounded.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False
# Container objects allocated and not freed since the last collection (reference counting frees
# almost everything a fill allocates, and freed objects are not counted): past this, a pause
# that ends while another one holds the collector off runs a collection.
BACKLOG = 200_000


@contextmanager
def collection_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector disabled (nesting and threads allowed)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
            backlog = _depth > 0 and _was_enabled and gc.get_count()[0] > BACKLOG
        if backlog:
            gc.collect()
