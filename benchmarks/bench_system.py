"""Whole-system run: a trading day in minutes, five injected faults, the book's invariants.

    .venv/bin/python -m benchmarks.bench_system [--short] [--scale-out] [--keep-logs DIR]

What runs (all of it started here, all of it stopped and removed at the end, also on Ctrl-C):
a private PostgreSQL cluster (initdb in a temporary directory, Debian's server binaries, as the
`postgres` user when run as root) and a private redis-server (append-only, fsync always), so
that crashing and restarting them touches nobody else's data; then the OMS processes exactly as
scripts/demo.sh starts them: uvicorn (web), Celery worker(s), Celery beat, the FIX venue
simulator and the FIX gateway, the gateway reaching the simulator through a TCP proxy that can
cut the line. `--scale-out` runs two web processes (clients spread across them) and three
workers on separate queues (routing; executions + settlement; default).

Phases: warm-up, steady load (PMs posting orders and baskets, the trader blocking and routing,
half synchronously and half through Celery, compliance releasing warned orders, blotters on
websockets), then each fault in turn with the load running: the Celery routing worker's pool
processes killed (SIGKILL) while it holds tasks, Redis crashed and restarted,
PostgreSQL crashed (immediate shutdown) and restarted, the FIX gateway killed and restarted,
the simulator's line cut for a few seconds. After each fault the run waits until the system
serves again (web healthy, FIX sessions logged on, new fills booked), pauses the clients, waits
until nothing moves and runs `manage.py check_invariants` (see oms_site/invariants.py). A fault
PASSes when the system recovered and every invariant holds after it.

Figures (steady phase unless said): orders/s accepted by the API, orders/s routed and filled,
API latency p50/p99 per request kind, fill-to-blotter latency p50/p99 (from the gateway writing
the fill's Execution row to each blotter receiving its frame; same host, same wall clock) and its
stages (venue TransactTime → raw report stored by the gateway → Execution stamped by the apply's
transaction → PostgreSQL's commit timestamp of that row → frame), and
CPU seconds, CPU % of one core and memory (PSS at the end and its maximum, sampled every
second) of every process group over the measured period (warm-up and set-up excluded, killed
instances included), from /proc/<pid>/stat, status and smaps_rollup.

Environment: BENCH_SYSTEM_PORT_BASE=N uses ports N, N+1, ... instead of free ones;
BENCH_SYSTEM_FIX_LOGS=1 logs every FIX message of both ends; BENCH_SYSTEM_KEEP_TMP=1 keeps the
run's directory (database included) for a post-mortem; BENCH_SYSTEM_LOGS=DIR copies the
process logs there when the run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.system import load
from benchmarks.system.cluster import Cluster

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "warmup": 20,
        "steady": 90,
        "fault_window": 25,
        # Generous: on a loaded machine a restarted Django process alone takes tens of seconds.
        "recover_timeout": 180,
        "quiesce_timeout": 180,
        "visibility": 20,
        "pm_clients": 4,
        "pm_interval": 0.25,
        "basket_share": 0.15,
        "trader_clients": 2,
        "trader_interval": 0.5,
        "async_share": 0.5,
        "compliance_interval": 2.0,
        "blotters": 10,
        "down_seconds": 3,
    },
    "short": {
        "warmup": 4,
        "steady": 15,
        "fault_window": 4,
        "recover_timeout": 150,
        "quiesce_timeout": 150,
        "visibility": 8,
        "pm_clients": 2,
        "pm_interval": 0.5,
        "basket_share": 0.15,
        "trader_clients": 1,
        "trader_interval": 0.5,
        "async_share": 0.5,
        "compliance_interval": 2.0,
        "blotters": 4,
        "down_seconds": 1,
    },
}
FAULTS = (
    "celery_worker_kill",
    "redis_restart",
    "postgres_restart",
    "gateway_restart",
    "simulator_disconnect",
)
# Not in the default run: SIGKILL of a whole worker node (consumer and pool). The Redis
# transport pops a message (BRPOP) before it records it as unacknowledged, so a message whose
# reply is still unread in the dying consumer's socket is lost: an asynchronous route answered
# 202 then never runs (seen once in four runs on a loaded machine); the order stays approved.
OPTIONAL_FAULTS = ("celery_node_kill",)
BLOTTER_USERS = ("trader1", "pm1", "pm2", "compliance1", "backoffice1")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 1)


class Run:
    """One system run: the cluster, the client processes, the phases and what they measured."""

    def __init__(self, *, short: bool, scale_out: bool, faults: tuple[str, ...] = FAULTS) -> None:
        self.cfg = PROFILES["short" if short else "full"]
        self.fault_names = faults
        self.scale_out = scale_out
        workers = (
            [
                ("worker-routing", "routing", 2),
                ("worker-executions", "executions,settlement", 1),
                ("worker-default", "default", 1),
            ]
            if scale_out
            else [("worker", "default,routing,executions,settlement", 2)]
        )
        self.cluster = Cluster(
            webs=2 if scale_out else 1, workers=workers, visibility=self.cfg["visibility"]
        )
        self.ctx = mp.get_context("spawn")
        self.control = load.Control(
            phase=self.ctx.Value("i", 0),
            pause=self.ctx.Event(),
            stop=self.ctx.Event(),
            inflight=self.ctx.Value("i", 0),
        )
        self.phases: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.http_out = self.ctx.Queue()
        self.blotter_out = self.ctx.Queue()
        self.procs: list[Any] = []

    # ------------------------------------------------------------------ phases

    def phase(self, name: str) -> None:
        now = time.time()
        if self.phases:
            self.phases[-1]["end"] = now
        self.phases.append({"name": name, "start": now, "end": None})
        self.control.phase.value = len(self.phases) - 1
        print(f"[bench_system] {time.strftime('%H:%M:%S')} phase {name}", file=sys.stderr)

    def pause(self) -> None:
        self.control.pause.set()
        deadline = time.monotonic() + 60
        while self.control.inflight.value > 0 and time.monotonic() < deadline:
            time.sleep(0.1)

    def start_clients(self) -> None:
        ports = self.cluster.web_ports
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        urls = [(f"ws://127.0.0.1:{p}/ws/blotter/", f"http://127.0.0.1:{p}") for p in ports]
        tokens = [
            self.cluster.seed["tokens"][BLOTTER_USERS[i % len(BLOTTER_USERS)]]
            for i in range(self.cfg["blotters"])
        ]
        ready = self.ctx.Event()
        blotters = self.ctx.Process(
            target=load.blotter_process,
            args=(urls, tokens, self.control, ready, self.blotter_out),
            name="blotters",
        )
        blotters.start()
        self.procs.append(blotters)
        if not ready.wait(90):
            raise RuntimeError("blotters did not connect")
        http = self.ctx.Process(
            target=load.http_process,
            args=(
                bases,
                self.cluster.seed,
                self.control,
                str(self.cluster.ids_dir),
                self.cfg,
                self.http_out,
            ),
            name="http-clients",
        )
        http.start()
        self.procs.append(http)

    # ------------------------------------------------------------------ faults

    def inject(self, fault: str) -> dict[str, Any]:
        c = self.cluster
        info: dict[str, Any] = {}
        down = self.cfg["down_seconds"]
        if fault in ("celery_worker_kill", "celery_node_kill"):
            name = "worker-routing" if self.scale_out else "worker"
            # Wait for the worker to hold a task, so the kill lands mid-task.
            info["unacked_at_kill"] = c.wait_unacked(30)
            if fault == "celery_worker_kill":
                # The pool processes executing tasks die; the worker replaces them and
                # requeues their tasks (acks_late + task_reject_on_worker_lost).
                info["pool_processes_killed"] = c.by_name[name].kill_children()
            else:
                c.by_name[name].kill()
                time.sleep(down)
                c.by_name[name].restart()
        elif fault == "redis_restart":
            c.redis.crash_restart(down)
        elif fault == "postgres_restart":
            c.pg.crash_restart(down)
        elif fault == "gateway_restart":
            c.by_name["gateway"].kill()
            time.sleep(down)
            c.by_name["gateway"].restart()
        elif fault == "simulator_disconnect":
            info["connections_cut"] = c.proxy.disconnect(max(3.0, 2 * down))
        return info

    def recover(self, since_fill: int) -> tuple[bool, float, str]:
        """Wait until the web answers, the sessions are logged on and a new fill was booked."""
        c = self.cluster
        started = time.monotonic()
        deadline = started + self.cfg["recover_timeout"]
        stage = "web"
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # still down: keep waiting
                if stage == "web" and c.webs_healthy():
                    stage = "fix"
                if stage == "fix" and c.sessions_logged_on():
                    stage = "fills"
                if stage == "fills" and c.last_fill_id() > since_fill:
                    return True, time.monotonic() - started, ""
            time.sleep(0.5)
        return False, time.monotonic() - started, f"not recovered: stuck at {stage}"

    def settle_and_check(
        self, *, audit: bool, final: bool = False
    ) -> tuple[bool, float, list[dict[str, Any]], str]:
        self.pause()
        quiet, took, left = self.cluster.quiesce(self.cfg["quiesce_timeout"])
        results = self.cluster.check(audit=audit, final=final)
        if not final:
            self.cluster.note_lost_routes()
        note = "" if quiet else f"did not quiesce in {took:.0f} s: {left}"
        return quiet, took, results, note

    def run_faults(self) -> None:
        for fault in self.fault_names:
            self.phase(f"fault:{fault}")
            since = self.cluster.last_fill_id()
            t0 = time.monotonic()
            self.cluster.supervised.clear()  # the fault itself kills and restarts processes
            try:
                info = self.inject(fault)
            finally:
                self.cluster.supervised.set()
            injected = time.monotonic() - t0
            ok, recovered_s, why = self.recover(since)
            time.sleep(self.cfg["fault_window"])
            self.phase(f"check:{fault}")
            quiet, quiesce_s, results, note = self.settle_and_check(audit=True)
            dead = self.cluster.dead_services()
            problems = [p for p in (why, note) if p]
            if dead:
                problems.append(f"processes not running: {dead}")
            if self.cluster.supervisor_restarts:
                # Reported, not failed: production runs these processes under a supervisor.
                info["crashed_and_restarted"] = list(self.cluster.supervisor_restarts)
                self.cluster.supervisor_restarts.clear()
            passed = ok and quiet and not dead and all(r["passed"] for r in results)
            self.faults.append(
                {
                    "fault": fault,
                    "passed": passed,
                    "inject_s": round(injected, 1),
                    "recovered_s": round(recovered_s, 1),
                    "quiesce_s": round(quiesce_s, 1),
                    "info": info,
                    "problems": problems,
                    "invariants": results,
                }
            )
            _print_fault(self.faults[-1])
            self.control.pause.clear()

    # ------------------------------------------------------------------ whole run

    def execute(self) -> dict[str, Any]:
        c = self.cluster
        t_setup = time.monotonic()
        c.start_databases()
        self.phase("seed")
        c.seed_data()
        self.phase("start")
        c.start_oms()
        setup_s = time.monotonic() - t_setup
        self.start_clients()
        self.phase("warmup")
        time.sleep(self.cfg["warmup"])
        c.sampler.mark()
        measured_from = time.monotonic()
        self.phase("steady")
        time.sleep(self.cfg["steady"])
        self.run_faults()
        self.phase("final")
        quiet, quiesce_s, final, note = self.settle_and_check(audit=True, final=True)
        self.phase("done")
        c.sampler.sample_all()
        wall = time.monotonic() - measured_from
        processes = {s.name: s.figures(wall) for s in [c.pg.service, c.redis.service, *c.services]}
        self.control.stop.set()
        http = self.http_out.get(timeout=120)
        blotters = self.blotter_out.get(timeout=120)
        for p in self.procs:
            p.join(30)
        figures = self.figures(http, blotters)
        final_ok = quiet and all(r["passed"] for r in final)
        return {
            "profile": "short" if self.cfg is PROFILES["short"] else "full",
            "scale_out": self.scale_out,
            "setup_s": round(setup_s, 1),
            "measured_s": round(wall, 1),
            "figures": figures,
            "processes": processes,
            "faults": self.faults,
            "final": {
                "passed": final_ok,
                "quiesce_s": round(quiesce_s, 1),
                "note": note,
                "invariants": final,
            },
            "passed": final_ok and all(f["passed"] for f in self.faults),
        }

    def figures(self, http: dict[str, Any], blotters: dict[str, Any]) -> dict[str, Any]:
        steady = next(i for i, p in enumerate(self.phases) if p["name"] == "steady")
        ph = self.phases[steady]
        seconds = ph["end"] - ph["start"]
        lat: dict[str, list[float]] = defaultdict(list)
        statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for phase, kind, ms, status in http["samples"]:
            name = "steady" if phase == steady else "faults"
            statuses[name][status] += 1
            if phase == steady and 200 <= status < 300:
                lat[kind].append(ms)
                lat["all"].append(ms)
        # Each fill's stages, from four clocks of one host: the venue's TransactTime (60), the
        # gateway storing the raw report, the apply's transaction stamping the Execution, and
        # PostgreSQL's commit timestamp of the row (track_commit_timestamp is on in this cluster).
        rows = self.cluster.sql(
            "SELECT e.id, extract(epoch FROM e.received_at), extract(epoch FROM e.transact_time),"
            " extract(epoch FROM m.received_at),"
            " extract(epoch FROM pg_xact_commit_timestamp(e.xmin))"
            " FROM orders_execution e LEFT JOIN orders_fixmessage m ON m.id = e.raw_message_id"
            " WHERE e.last_qty > 0"
        )
        fill_at = {int(r[0]): float(r[1]) for r in rows}
        window = [ph["start"], ph["end"]]
        stages: dict[str, list[float]] = defaultdict(list)
        committed_at: dict[int, float] = {}
        for pk, applied, venue, stored, committed in rows:
            if not window[0] <= float(applied) <= window[1]:
                continue
            if venue is not None and stored is not None:
                stages["venue_to_stored"].append((float(stored) - float(venue)) * 1000)
            if stored is not None:
                stages["stored_to_applied"].append((float(applied) - float(stored)) * 1000)
            if committed is not None:
                committed_at[int(pk)] = float(committed)
                stages["applied_to_committed"].append((float(committed) - float(applied)) * 1000)
        to_blotter: dict[str, list[float]] = defaultdict(list)
        for _phase, pk, at in blotters["frames"]:
            if pk in fill_at:
                # A fill belongs to the phase in which it was booked, whenever it arrived.
                in_steady = window[0] <= fill_at[pk] <= window[1]
                to_blotter["steady" if in_steady else "all"].append((at - fill_at[pk]) * 1000)
                if pk in committed_at:
                    stages["committed_to_frame"].append((at - committed_at[pk]) * 1000)
        to_blotter["all"] += to_blotter["steady"]
        routed = self.cluster.sql(
            "SELECT (SELECT count(DISTINCT order_id) FROM orders_placement WHERE order_id IS NOT"
            " NULL AND created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s))"
            " + (SELECT count(*) FROM orders_order WHERE block_id IN (SELECT block_id FROM"
            " orders_placement WHERE block_id IS NOT NULL AND created_at BETWEEN to_timestamp(%s)"
            " AND to_timestamp(%s))),"
            " (SELECT count(*) FROM orders_order WHERE status = 'filled' AND updated_at BETWEEN"
            " to_timestamp(%s) AND to_timestamp(%s)),"
            " (SELECT count(*) FROM orders_execution WHERE last_qty > 0 AND received_at BETWEEN"
            " to_timestamp(%s) AND to_timestamp(%s))",
            window * 4,
        )[0]
        totals = self.cluster.sql(
            "SELECT (SELECT count(*) FROM orders_order), (SELECT count(*) FROM orders_execution"
            " WHERE last_qty > 0), (SELECT count(*) FROM allocations_allocation),"
            " (SELECT count(*) FROM orders_block), (SELECT count(*) FROM oms_site_auditevent)"
        )[0]
        return {
            "steady_seconds": round(seconds, 1),
            "orders_accepted_per_s": round(http["created"].get(steady, 0) / seconds, 1),
            "orders_routed_per_s": round(routed[0] / seconds, 1),
            "orders_filled_per_s": round(routed[1] / seconds, 1),
            "fills_per_s": round(routed[2] / seconds, 1),
            "api_latency_ms": {
                kind: {"n": len(v), "p50": _pct(v, 50), "p99": _pct(v, 99)}
                for kind, v in sorted(lat.items())
            },
            "fill_to_blotter_ms": {
                "steady": {
                    "n": len(to_blotter["steady"]),
                    "p50": _pct(to_blotter["steady"], 50),
                    "p99": _pct(to_blotter["steady"], 99),
                },
                "whole_run": {
                    "n": len(to_blotter["all"]),
                    "p50": _pct(to_blotter["all"], 50),
                    "p99": _pct(to_blotter["all"], 99),
                },
                "blotters": self.cfg["blotters"],
                "reconnects": blotters["drops"],
                "reconnects_steady": sum(1 for p in blotters["drop_phases"] if p == steady),
                "reconnect_errors": blotters["errors"],
                "stages_steady": {
                    name: {"n": len(v), "p50": _pct(v, 50), "p99": _pct(v, 99)}
                    for name, v in stages.items()
                },
            },
            "http_statuses": {k: dict(v) for k, v in statuses.items()},
            "totals": dict(
                zip(
                    ("orders", "fills", "allocations", "blocks", "audit_events"),
                    totals,
                    strict=True,
                )
            ),
        }

    def close(self) -> None:
        self.control.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        self.cluster.close()


# ---------------------------------------------------------------------- printing


def _verdict(ok: bool, skipped: bool = False) -> str:
    return "SKIP" if skipped else "PASS" if ok else "FAIL"


def _print_fault(fault: dict[str, Any]) -> None:
    print(
        f"[bench_system] {_verdict(fault['passed'])} fault {fault['fault']}: recovered in "
        f"{fault['recovered_s']} s, quiet in {fault['quiesce_s']} s {fault['info'] or ''}"
        + (f" problems: {fault['problems']}" if fault["problems"] else ""),
        file=sys.stderr,
    )
    for r in fault["invariants"]:
        if not r["passed"]:
            print(f"    FAIL {r['name']}: {r['detail']} {r['examples']}", file=sys.stderr)


def report(result: dict[str, Any]) -> str:
    """The human-readable table of figures and PASS/FAIL lines."""
    f = result["figures"]
    lines = [
        f"System run ({result['profile']}{', scale-out' if result['scale_out'] else ''}): "
        f"set-up {result['setup_s']} s, measured {result['measured_s']} s",
        "",
        f"  orders/s accepted (API)        {f['orders_accepted_per_s']}",
        f"  orders/s routed                {f['orders_routed_per_s']}",
        f"  orders/s filled                {f['orders_filled_per_s']}",
        f"  fills/s booked                 {f['fills_per_s']}",
    ]
    for kind, v in f["api_latency_ms"].items():
        lines.append(f"  API {kind:<8} p50/p99 ms       {v['p50']} / {v['p99']}  (n={v['n']})")
    b = f["fill_to_blotter_ms"]
    lines.append(
        f"  fill-to-blotter p50/p99 ms     {b['steady']['p50']} / {b['steady']['p99']} steady "
        f"(n={b['steady']['n']}), {b['whole_run']['p50']} / {b['whole_run']['p99']} whole run, "
        f"{b['blotters']} blotters, {b['reconnects']} reconnects ({b['reconnects_steady']} in the "
        f"steady phase; {b['reconnect_errors']})"
    )
    for name, v in b["stages_steady"].items():
        lines.append(f"    {name:<28} {v['p50']} / {v['p99']}  (n={v['n']})")
    lines.append(f"  HTTP statuses                  {f['http_statuses']}")
    lines.append(f"  totals                         {f['totals']}")
    lines += ["", f"  {'process':<18}{'CPU s':>8}{'CPU %':>8}{'PSS MB':>9}{'max MB':>9}  restarts"]
    for name, p in result["processes"].items():
        lines.append(
            f"  {name:<18}{p['cpu_s']:>8}{p['cpu_pct']:>8}{p['mem_mb']:>9}{p['mem_max_mb']:>9}"
            f"  {p['restarts']}"
        )
    lines.append("")
    for fault in result["faults"]:
        crashed = fault["info"].get("crashed_and_restarted")
        if crashed:
            lines.append(
                f"NOTE  during {fault['fault']}: crashed, restarted by the supervisor: {crashed}"
            )
        lines.append(
            f"{_verdict(fault['passed'])}  fault {fault['fault']} (recovered in "
            f"{fault['recovered_s']} s{'; ' + '; '.join(fault['problems']) if fault['problems'] else ''})"
        )
        for r in fault["invariants"]:
            lines.append(f"{_verdict(r['passed'], r['skipped'])}    {r['name']} {r['detail']}")
    final = result["final"]
    lines.append(f"{_verdict(final['passed'])}  final check {final['note']}")
    for r in final["invariants"]:
        lines.append(
            f"{_verdict(r['passed'], r['skipped'])}    {r['name']} ({r['checked']} checked)"
            f" {r['detail']} {r['examples'] if not r['passed'] else ''}".rstrip()
        )
    lines.append(f"{_verdict(result['passed'])}  system run")
    return "\n".join(lines)


def run(
    quick: bool = False,
    short: bool | None = None,
    scale_out: bool = False,
    keep_logs: str | None = None,
    faults: tuple[str, ...] = FAULTS,
) -> dict[str, Any]:
    """Run the whole system (short profile when `quick`/`short`); returns the figures."""
    system_run = Run(short=quick if short is None else short, scale_out=scale_out, faults=faults)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    failed = True
    try:
        result = system_run.execute()
        failed = not result["passed"]
        return result
    finally:
        if keep_logs or (failed and os.environ.get("BENCH_SYSTEM_LOGS")):
            system_run.cluster.keep_logs(Path(keep_logs or os.environ["BENCH_SYSTEM_LOGS"]))
        system_run.close()
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the table and PASS/FAIL lines (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the CI version (~3 minutes)")
    parser.add_argument("--scale-out", action="store_true", help="2 web processes, 3 workers")
    parser.add_argument("--keep-logs", default=None, help="copy every process log here")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated subset, in this order"
    )
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS) - set(OPTIONAL_FAULTS)
    if unknown:
        choices = ", ".join((*FAULTS, *OPTIONAL_FAULTS))
        parser.error(f"unknown faults {sorted(unknown)}; choose from {choices}")
    result = run(
        short=args.short, scale_out=args.scale_out, keep_logs=args.keep_logs, faults=faults
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(report(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
