"""The short whole-system run (CI): every fault injected once, every invariant PASSes.

Starts its own PostgreSQL cluster and Redis server (benchmarks/system), so it needs Debian's
PostgreSQL server binaries and redis-server (scripts/services.sh installs both) and about three
minutes; it never touches the machine's shared PostgreSQL or Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.bench_system import FAULTS, report, run

pytestmark = [pytest.mark.slow, pytest.mark.fix]


def test_short_system_run_passes_every_fault_and_invariant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed run leaves every process's log here (pytest keeps the last few tmp_paths).
    if not os.environ.get("BENCH_SYSTEM_LOGS"):
        monkeypatch.setenv("BENCH_SYSTEM_LOGS", str(tmp_path / "logs"))
    result = run(short=True)
    print(report(result))
    faults = {f["fault"]: f["passed"] for f in result["faults"]}
    assert faults == dict.fromkeys(FAULTS, True)
    failed = [
        (f["fault"], r["name"], r["detail"], r["examples"])
        for f in [*result["faults"], {"fault": "final", **result["final"]}]
        for r in f["invariants"]
        if not r["passed"]
    ]
    assert failed == []
    assert result["final"]["passed"] and result["passed"]
    figures = result["figures"]
    assert figures["orders_accepted_per_s"] > 0
    assert figures["orders_filled_per_s"] > 0
    assert figures["fill_to_blotter_ms"]["steady"]["n"] > 0
    stages = figures["fill_to_blotter_ms"]["stages_steady"]
    assert set(stages) == {
        "venue_to_stored",
        "stored_to_applied",
        "applied_to_committed",
        "committed_to_frame",
    }
    assert all(stage["n"] > 0 and stage["p50"] is not None for stage in stages.values())
    assert set(result["processes"]) >= {"postgres", "redis", "web1", "worker", "beat", "gateway"}
