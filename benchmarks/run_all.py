"""One command for every figure: `.venv/bin/python -m benchmarks.run_all [--quick] [--all] [names...]`.

Each `benchmarks/bench_*.py` module exposes `run(...) -> dict`; this runs them one after another
(each in its own process, so one benchmark's memory or threads never skew the next) and prints
their figures, after the machine's description (`benchmarks/machine.py`: CPU model, load and a
fixed Python probe, because the machine's speed differs between sessions).
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing as mp
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Benchmarks run only when named (or with --all): the whole-system run takes ~10 minutes
# (its short version, with --quick, about 3).
OPT_IN = frozenset({"bench_system"})


def _names(include_opt_in: bool = False) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    return [n for n in names if include_opt_in or n not in OPT_IN]


def _run_one(name: str, quick: bool, queue: Any) -> None:
    import importlib

    try:
        module = importlib.import_module(f"benchmarks.{name}")
        kwargs: dict[str, Any] = {}
        if quick and "quick" in inspect.signature(module.run).parameters:
            kwargs["quick"] = True
        result = module.run(**kwargs)
        queue.put({"ok": True, "result": result})
    except BaseException as exc:  # report and go on with the next benchmark
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes where supported")
    parser.add_argument("--all", action="store_true", help=f"also {', '.join(sorted(OPT_IN))}")
    args = parser.parse_args(argv)
    names = args.names or _names(include_opt_in=args.all)
    failures = 0
    from benchmarks.machine import describe

    print("=== machine ===")
    print(json.dumps(describe(), indent=2))
    ctx = mp.get_context("spawn")
    for name in names:
        queue = ctx.Queue()
        started = time.perf_counter()
        proc = ctx.Process(target=_run_one, args=(name, args.quick, queue))
        proc.start()
        proc.join()
        elapsed = time.perf_counter() - started
        outcome = (
            queue.get() if not queue.empty() else {"ok": False, "error": f"exit {proc.exitcode}"}
        )
        print(f"\n=== {name} ({elapsed:.1f} s) ===")
        if outcome["ok"]:
            print(json.dumps(outcome["result"], indent=2, default=str))
        else:
            failures += 1
            print(f"FAILED: {outcome['error']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
