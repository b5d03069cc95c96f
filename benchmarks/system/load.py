"""The trading day's clients: PMs, a trader, a compliance officer (HTTP) and blotters (websocket).

Each kind runs in a process of its own (asyncio inside), started by bench_system with
`multiprocessing` (spawn), so the clients never hold the orchestrator's GIL and the blotters'
receive stamps are not delayed by the HTTP clients' work.

* PMs post single orders (market, or a marketable limit) and baskets (one instrument and side
  across several accounts: a rebalance the trader can block), paced at a fixed rate per client,
  each with an Idempotency-Key and retried on 5xx / connection errors.
* The trader polls approved orders, blocks orders of the same terms and routes blocks and lone
  orders with best execution, half synchronously, half queued on Celery (`asynchronous`).
* The compliance officer releases orders a warning rule held (awaiting_override).
* Blotters stay connected (reconnecting after a drop) and stamp every `execution.created` frame.

Every request is recorded as (phase, kind, latency ms, status); the ids of orders the API
accepted and of routes it queued are appended to files that the invariant check reads, and
flushed before the request counts as finished, so a paused client set has complete files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RETRIES = 3
TIMEOUT = 20.0


@dataclass
class Control:
    """Shared with the orchestrator: current phase, pause, stop, requests in flight."""

    phase: Any  # mp.Value("i")
    pause: Any  # mp.Event
    stop: Any  # mp.Event
    inflight: Any  # mp.Value("i")


class _Recorder:
    def __init__(self, control: Control, out_dir: Path) -> None:
        self.control = control
        self.samples: list[tuple[int, str, float, int]] = []
        self.created: dict[int, int] = defaultdict(int)  # phase -> orders accepted
        self.files = {
            name: open(out_dir / f"{name}.txt", "a")  # noqa: SIM115 - open for the whole run
            for name in ("accepted", "queued_orders", "queued_blocks")
        }

    def sample(self, kind: str, ms: float, status: int) -> None:
        self.samples.append((self.control.phase.value, kind, ms, status))

    def ids(self, name: str, ids: list[int]) -> None:
        if ids:
            fh = self.files[name]
            fh.write("".join(f"{i}\n" for i in ids))
            fh.flush()
        if name == "accepted":
            self.created[self.control.phase.value] += len(ids)


class _Http:
    def __init__(self, bases: list[str], token: str, rec: _Recorder) -> None:
        import httpx

        self.bases = bases
        self.headers = {"Authorization": f"Token {token}"}
        self.rec = rec
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(TIMEOUT),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )
        self.turn = random.randrange(len(bases))

    async def call(
        self, kind: str, method: str, path: str, body: Any = None, *, idempotent: bool = False
    ) -> tuple[int, Any]:
        """One request (retried on 5xx/connection errors when idempotent); records each try."""
        import httpx

        headers = dict(self.headers)
        if idempotent:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        status, data = 0, None
        for attempt in range(RETRIES if idempotent else 1):
            self.turn = (self.turn + 1) % len(self.bases)  # spread over the web processes
            url = self.bases[self.turn] + path
            t0 = time.perf_counter()
            try:
                r = await self.client.request(method, url, json=body, headers=headers)
                status = r.status_code
                data = r.json() if r.content else None
            except (httpx.HTTPError, ValueError):
                status, data = 0, None
            self.rec.sample(kind, (time.perf_counter() - t0) * 1000, status)
            if (status and status < 500 and status != 409) or not idempotent:
                break
            # 409 on a retry: the first try is still running under this key; wait for it.
            await asyncio.sleep(0.5 * (attempt + 1))
        return status, data


async def _paced(control: Control, interval: float, step: Any) -> None:
    """Call `step()` every `interval` seconds (closed loop: a slow answer delays the next)."""
    while not control.stop.is_set():
        if control.pause.is_set():
            await asyncio.sleep(0.05)
            continue
        t0 = time.perf_counter()
        with control.inflight.get_lock():
            control.inflight.value += 1
        try:
            await step()
        finally:
            with control.inflight.get_lock():
                control.inflight.value -= 1
        await asyncio.sleep(
            max(0.0, interval - (time.perf_counter() - t0)) * random.uniform(0.8, 1.2)
        )


def _order(account: str, inst: dict[str, Any], side: str, qty: int, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "account": account,
        "instrument": inst["symbol"],
        "side": side,
        "quantity": str(qty),
        "order_type": "market",
        "time_in_force": "day",
    }
    if kind == "limit":
        # Marketable: 3% through the reference price, inside the fat-finger band.
        factor = 1.03 if side == "buy" else 0.97
        body["order_type"] = "limit"
        body["limit_price"] = f"{float(inst['price']) * factor:.2f}"
    return body


async def _pm(http: _Http, control: Control, seed: dict[str, Any], pm: str, cfg: dict) -> None:
    accounts = seed["accounts"][pm]
    holdings = seed["holdings"].get(pm, [])
    rng = random.Random(hash((pm, id(http))))

    async def step() -> None:
        if rng.random() < cfg["basket_share"]:
            inst = rng.choice(seed["instruments"])
            size = min(len(accounts), rng.randint(3, 8))
            qty = rng.randint(1, 5) * 100
            kind = rng.choice(("market", "limit"))
            rows = [_order(a, inst, "buy", qty, kind) for a in rng.sample(accounts, size)]
            status, data = await http.call(
                "basket", "POST", "/api/v1/baskets/", {"orders": rows}, idempotent=True
            )
            if status in (200, 201) and data:
                http.rec.ids("accepted", [o["id"] for o in data["orders"]])
            return
        if holdings and rng.random() < 0.15:
            account, symbol, price = rng.choice(holdings)
            body = _order(account, {"symbol": symbol, "price": price}, "sell", 100, "market")
        else:
            inst = rng.choice(seed["instruments"])
            kind = "limit" if rng.random() < 0.3 else "market"
            body = _order(rng.choice(accounts), inst, "buy", rng.randint(1, 5) * 100, kind)
        status, data = await http.call("order", "POST", "/api/v1/orders/", body, idempotent=True)
        if status in (200, 201) and data:
            http.rec.ids("accepted", [data["id"]])

    await _paced(control, cfg["pm_interval"], step)


async def _trader(http: _Http, control: Control, part: int, parts: int, cfg: dict) -> None:
    rng = random.Random(part)
    handled: set[int] = set()  # routed or queued once: a lost queued route must stay lost

    async def step() -> None:
        status, data = await http.call(
            "list", "GET", "/api/v1/orders/?status=approved&page_size=200&ordering=id"
        )
        if status != 200 or not data:
            return
        groups: dict[tuple, list[int]] = defaultdict(list)
        for o in data["results"]:
            if o["block"] is not None or o["id"] in handled:
                continue
            key = (
                o["instrument"],
                o["side"],
                o["order_type"],
                o["limit_price"],
                o["time_in_force"],
            )
            if hash(o["instrument"]) % parts == part:
                groups[key].append(o["id"])
        for ids in groups.values():
            handled.update(ids)
            asynchronous = rng.random() < cfg["async_share"]
            body = {"broker": None, "asynchronous": asynchronous}
            if len(ids) >= 2:
                status, block = await http.call("block", "POST", "/api/v1/blocks/", {"orders": ids})
                if status != 201 or not block:
                    continue
                status, _ = await http.call(
                    "route", "POST", f"/api/v1/blocks/{block['id']}/route/", body
                )
                if status == 202:
                    http.rec.ids("queued_blocks", [block["id"]])
            else:
                status, _ = await http.call(
                    "route", "POST", f"/api/v1/orders/{ids[0]}/route/", body
                )
                if status == 202:
                    http.rec.ids("queued_orders", ids)

    await _paced(control, cfg["trader_interval"], step)


async def _compliance(http: _Http, control: Control, cfg: dict) -> None:
    async def step() -> None:
        status, data = await http.call(
            "list", "GET", "/api/v1/orders/?status=awaiting_override&page_size=100&ordering=id"
        )
        if status != 200 or not data:
            return
        for o in data["results"]:
            await http.call(
                "override", "POST", f"/api/v1/orders/{o['id']}/override/", {"reason": "load run"}
            )

    await _paced(control, cfg["compliance_interval"], step)


async def _http_main(
    bases: list[str], seed: dict[str, Any], control: Control, out_dir: Path, cfg: dict
) -> dict[str, Any]:
    rec = _Recorder(control, out_dir)
    tokens = seed["tokens"]
    clients: list[_Http] = []

    def client(user: str) -> _Http:
        clients.append(_Http(bases, tokens[user], rec))
        return clients[-1]

    tasks = []
    for n in range(cfg["pm_clients"]):
        pm = ("pm1", "pm2")[n % 2]
        tasks.append(_pm(client(pm), control, seed, pm, cfg))
    parts = cfg["trader_clients"]
    tasks += [_trader(client("trader1"), control, p, parts, cfg) for p in range(parts)]
    tasks.append(_compliance(client("compliance1"), control, cfg))
    await asyncio.gather(*tasks)
    for c in clients:
        await c.client.aclose()
    for fh in rec.files.values():
        fh.close()
    return {"samples": rec.samples, "created": dict(rec.created)}


def http_process(
    bases: list[str], seed: dict[str, Any], control: Control, out_dir: str, cfg: dict, out: Any
) -> None:
    """Entry point of the HTTP clients' process; puts its records on `out` when stopped."""
    result = asyncio.run(_http_main(bases, seed, control, Path(out_dir), cfg))
    out.put(result)


# ------------------------------------------------------------------------------- blotters


async def _blotter(
    index: int, url: str, origin: str, token: str, control: Control, rec: dict[str, Any]
) -> None:
    import websockets

    while not control.stop.is_set():
        try:
            async with websockets.connect(
                f"{url}?token={token}", origin=origin, max_queue=None, open_timeout=10
            ) as ws:
                hello = json.loads(await ws.recv())
                if hello.get("type") != "hello":
                    raise RuntimeError(f"unexpected first frame {hello}")
                rec["connected"].add(index)
                while not control.stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.time()
                    msg = json.loads(raw)
                    if msg.get("type") == "execution.created":
                        pk = msg["data"]["execution"]["id"]
                        key = (index, pk)
                        if key not in rec["seen"]:
                            rec["seen"].add(key)
                            rec["frames"].append((control.phase.value, pk, now))
        except Exception as exc:  # a dropped connection: count it and reconnect
            rec["connected"].discard(index)
            rec["drops"] += 1
            rec["drop_phases"].append(control.phase.value)
            rec["errors"][type(exc).__name__] += 1
            with contextlib.suppress(Exception):
                await asyncio.sleep(1.0)


async def _blotters_main(
    urls: list[tuple[str, str]], tokens: list[str], control: Control, ready: Any
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "connected": set(),
        "seen": set(),
        "frames": [],
        "drops": 0,
        "drop_phases": [],
        "errors": defaultdict(int),
    }
    tasks = [
        asyncio.create_task(_blotter(i, *urls[i % len(urls)], token, control, rec))
        for i, token in enumerate(tokens)
    ]
    deadline = time.monotonic() + 60
    while len(rec["connected"]) < len(tokens) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    ready.set()
    await asyncio.gather(*tasks)
    return {
        "frames": rec["frames"],
        "drops": rec["drops"],
        "drop_phases": rec["drop_phases"],
        "errors": dict(rec["errors"]),
    }


def blotter_process(
    urls: list[tuple[str, str]], tokens: list[str], control: Control, ready: Any, out: Any
) -> None:
    """Entry point of the blotters' process; puts the received frames on `out` when stopped."""
    out.put(asyncio.run(_blotters_main(urls, tokens, control, ready)))
