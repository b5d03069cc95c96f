"""Blotter fan-out under the full run's event rates: publish-to-frame latency, queue depth, CPU.

Reproduces, in about a minute, what `bench_system` shows after eight: a web process that serves
the API *and* the blotter websockets, blotter events arriving at the system run's rates from
another process (as the FIX gateway sends them), and the same 10 blotter clients.

What runs: a fresh database (`<DATABASE_URL db>_bench_blotter_load`, dropped afterwards) seeded
with the demo data (benchmarks.system.seed); one uvicorn process exactly as the system run starts
it (lifespan on, so the web sends its own events from its sender thread); the system run's
blotter clients (benchmarks.system.load.blotter_process: 10 connections of trader1, pm1, pm2,
compliance1 and backoffice1) and, unless `--no-http`, its PM and compliance clients posting orders
and baskets through the API (4 PMs every 0.25 s, 15 % baskets: the web process's own load).
A publisher process plays the gateway: `oms_site.realtime.send_in_background()`, then hops of 1
to 6 events (a block fill spans several accounts) at `--rate` events a second, to each event's
account, desk and firm groups, through the configured channel layer. Only `execution.created`
events are stamped; a frame's latency is its receipt (client, wall clock) minus the moment the
publisher handed the hop to realtime (same host, same clock).

Prints: events published, frames expected and received, publish-to-frame p50/p99/max, the
deepest Redis key of the channel layer seen while running (the core layer's per-process receive
queue), and CPU seconds (and % of one core) of the web process, the publisher, the blotter
clients and the HTTP clients over the measured window, with the load average.

    .venv/bin/python -m benchmarks.bench_blotter_load [--seconds 40] [--rate 100] [--no-http]
        [--no-deflate]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from benchmarks.bench_blotter import _free_port, _percentile, _recreate_database
from benchmarks.system import load
from benchmarks.web import stop_process, uvicorn_command, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bench-blotter-load"
BLOTTER_USERS = ("trader1", "pm1", "pm2", "compliance1", "backoffice1")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and its reaped children (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11:15] are utime, stime, cutime, cstime (stat fields 14-17).
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def _publisher(env: dict[str, str], rate: float, control: load.Control, out: Any) -> None:
    """Play the gateway: hops of 1-6 events of random EQ accounts at `rate` events a second."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from allocations.models import Account
    from oms_site import realtime

    accounts = list(Account.objects.filter(desk__code="EQ").values_list("pk", "code", "desk_id"))
    realtime.send_in_background()
    # Stamp when the sender thread's hop actually starts on the channel layer, to split the
    # latency into the publisher's own queue and the layer-to-frame part.
    started_at: dict[int, float] = {}
    original_send_all = realtime._send_all

    async def stamped_send_all(layer: Any, items: list[tuple[str, dict[str, Any]]]) -> None:
        at = time.time()
        for _, message in items:
            execution = message["event"]["data"].get("execution")
            if execution is not None:
                started_at.setdefault(execution["id"], at)
        await original_send_all(layer, items)

    realtime._send_all = stamped_send_all  # type: ignore[assignment]
    rng = random.Random(7)
    sent: dict[int, float] = {}
    n = 0
    version = 0
    started = time.monotonic()
    published = 0
    while not control.stop.is_set():
        if control.pause.is_set():
            time.sleep(0.05)
            started = time.monotonic()
            published = 0
            continue
        k = rng.randint(1, 6)
        items: list[tuple[str, dict[str, Any]]] = []
        stamped: list[int] = []
        for acct_id, code, desk_id in rng.sample(accounts, min(k, len(accounts))):
            n += 1
            version += 1
            fill = rng.random() < 0.6
            order = {
                "id": n,
                "account": code,
                "instrument": "AAPL",
                "side": "buy",
                "quantity": "500",
                "order_type": "market",
                "limit_price": None,
                "stop_price": None,
                "time_in_force": "day",
                "status": "partially_filled",
                "cum_qty": "100",
                "leaves_qty": "400",
                "avg_px": "187.2300",
                "compliance_outcome": "pass",
                "block": 17,
                "version": version,
                "created_by": "pm1",
                "created_at": "2026-11-22T00:00:00.000000+00:00",
                "updated_at": "2026-11-22T00:00:01.000000+00:00",
            }
            data: dict[str, Any]
            if fill:
                data = {
                    "execution": {
                        "id": n,
                        "exec_id": f"LOAD-{n}",
                        "broker": "BRKA",
                        "last_qty": "100",
                        "last_px": "187.2300",
                        "exec_type": "F",
                        "transact_time": "2026-11-22T00:00:01.000000+00:00",
                    },
                    "order": order,
                }
                stamped.append(n)
            else:
                data = order
            message = {
                "type": "blotter.event",
                "event": {
                    "type": "execution.created" if fill else "order.updated",
                    "order_id": n,
                    "version": version,
                    "data": data,
                },
            }
            items += [(g, message) for g in realtime.groups_for_account(acct_id, desk_id)]
        at = time.time()
        for pk in stamped:
            sent[pk] = at
        realtime._send_many(items)
        published += len(items) // 3
        # Open loop at `rate`: the next hop leaves when the events so far are due.
        delay = started + published / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    out.put({"sent": sent, "started": started_at, "events": n})


def run(seconds: float, rate: float, http: bool, deflate: bool = True) -> dict[str, Any]:
    """Run the reproduction; returns the figures."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/oms")
    parsed = urlparse(base)
    db_name = f"{parsed.path.lstrip('/') or 'oms'}_bench_blotter_load"
    admin_url = urlunparse(parsed._replace(path="/postgres"))
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": urlunparse(parsed._replace(path=f"/{db_name}")),
            "DJANGO_SETTINGS_MODULE": "oms_site.settings",
            "PYTHONPATH": str(ROOT),
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{port}",
            "LOG_LEVEL": "WARNING",
            "ORDER_ENTRY_RATE": "1000000/min",
            "CACHE_PREFIX": PREFIX,
            "CHANNEL_PREFIX": PREFIX + "-ws",
            "PYTHONUNBUFFERED": "1",
        }
    )
    _recreate_database(admin_url, db_name)
    procs: list[Any] = []
    server = None
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.system.seed", "--fix-port", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        seed = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("SEED"))[4:])
        server = subprocess.Popen(
            uvicorn_command(port, *([] if deflate else ["--ws-per-message-deflate", "false"])),
            cwd=ROOT,
            env={**env, "DB_POOL_MAX_SIZE": "8", "DB_CONN_MAX_AGE": "0"},
        )
        wait_healthy(server, port, timeout=90)

        ctx = mp.get_context("spawn")
        control = load.Control(
            phase=ctx.Value("i", 0),
            pause=ctx.Event(),
            stop=ctx.Event(),
            inflight=ctx.Value("i", 0),
        )
        os.environ.update(env)  # the spawned children import Django with the run's settings
        blotter_out, http_out, pub_out, ready = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
        urls = [(f"ws://127.0.0.1:{port}/ws/blotter/", f"http://127.0.0.1:{port}")]
        tokens = [seed["tokens"][BLOTTER_USERS[i % len(BLOTTER_USERS)]] for i in range(10)]
        blotters = ctx.Process(
            target=load.blotter_process, args=(urls, tokens, control, ready, blotter_out)
        )
        blotters.start()
        procs.append(blotters)
        if not ready.wait(90):
            raise RuntimeError("blotters did not connect")
        ids_dir = Path(f"/tmp/{PREFIX}-{os.getpid()}")
        ids_dir.mkdir(exist_ok=True)
        cfg = {
            "pm_clients": 4,
            "pm_interval": 0.25,
            "basket_share": 0.15,
            "trader_clients": 0,
            "trader_interval": 0.5,
            "async_share": 0.5,
            "compliance_interval": 2.0,
        }
        clients = None
        if http:
            clients = ctx.Process(
                target=load.http_process,
                args=([f"http://127.0.0.1:{port}"], seed, control, str(ids_dir), cfg, http_out),
            )
            clients.start()
            procs.append(clients)
        publisher = ctx.Process(target=_publisher, args=(env, rate, control, pub_out))
        publisher.start()
        procs.append(publisher)

        import redis

        r = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        time.sleep(5)  # warm-up: connections, caches, the first queue
        watched = {
            "web": server.pid,
            "publisher": publisher.pid or 0,
            "blotters": blotters.pid or 0,
        }
        if clients is not None:
            watched["http_clients"] = clients.pid or 0
        cpu0 = {name: _cpu_seconds(pid) for name, pid in watched.items()}
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        deepest = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            for key in r.scan_iter(match=f"{PREFIX}-ws*", count=1000):
                if r.type(key) == b"zset":
                    deepest = max(deepest, int(r.zcard(key)))
        wall = time.monotonic() - t0
        cpu = {name: _cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
        load1 = os.getloadavg()[0]
        control.stop.set()
        published = pub_out.get(timeout=60)
        frames = blotter_out.get(timeout=60)
        if clients is not None:
            http_result = http_out.get(timeout=60)
        sent = published["sent"]
        latencies = [(at - sent[pk]) * 1000 for _, pk, at in frames["frames"] if pk in sent]
        started = published["started"]
        queued = [(started[pk] - at) * 1000 for pk, at in sent.items() if pk in started]
        after_start = [(at - started[pk]) * 1000 for _, pk, at in frames["frames"] if pk in started]
        # p50/p99 by when the event was published (10 s windows): a queue that grows shows here.
        windows: dict[int, list[float]] = {}
        first = min(sent.values()) if sent else 0.0
        for _, pk, at in frames["frames"]:
            if pk in sent:
                windows.setdefault(int((sent[pk] - first) // 10), []).append((at - sent[pk]) * 1000)
        # Expected: firm users and the desk's trader get every event, a PM their accounts'.
        result = {
            "seconds": round(wall, 1),
            "rate_per_s": rate,
            "http_load": http,
            "permessage_deflate": deflate,
            "events_published": published["events"],
            "fills_stamped": len(sent),
            "frames_received": len(latencies),
            "p50_ms": round(_percentile(latencies, 50), 1) if latencies else None,
            "p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "publisher_queue_p50_p99_ms": [
                round(_percentile(queued, 50), 1),
                round(_percentile(queued, 99), 1),
            ],
            "hop_start_to_frame_p50_p99_ms": [
                round(_percentile(after_start, 50), 1),
                round(_percentile(after_start, 99), 1),
            ],
            "by_10s_window_p50_p99_ms": " ".join(
                f"{_percentile(v, 50):.0f}/{_percentile(v, 99):.0f}"
                for _, v in sorted(windows.items())
            ),
            "reconnects": frames["drops"],
            "deepest_layer_key": deepest,
            "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
            "cpu_pct_of_core": {k: round(100 * v / wall, 1) for k, v in cpu.items()},
            "load_average_1m": [round(load0, 2), round(load1, 2)],
        }
        if http:
            orders = [s for s in http_result["samples"] if s[1] in ("order", "basket")]
            result["api_requests"] = len(orders)
            result["api_p50_ms"] = round(_percentile([s[2] for s in orders], 50), 1)
        return result
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        stop_process(server)
        _recreate_database(admin_url, db_name, drop_only=True)


def main() -> None:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=100.0, help="events a second")
    parser.add_argument("--no-http", action="store_true", help="no API load on the web process")
    parser.add_argument(
        "--no-deflate", action="store_true", help="uvicorn --ws-per-message-deflate false"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.rate, not args.no_http, not args.no_deflate), indent=2))


if __name__ == "__main__":
    main()
