"""The Channels layer: channels_redis' pub/sub layer, bounded, and telling consumers what it lost.

Why pub/sub: channels_redis' core layer hands every message of a web process through one sorted
set per process, popped one message at a time under one lock with four Redis round trips each.
A web process that also serves the API (its event loop sharing the GIL with the view threads)
drained it at well under the system run's event rate, so the set sat at capacity and every
frame reached the blotters ~30 s late (benchmarks/bench_blotter_load.py reproduces it). With
pub/sub, Redis pushes one copy of a group's message to each subscribed process, which reads
whatever has arrived in one socket read and fans it out to its connections in memory.

Delivery is at most once either way (the blotter contract: clients resync on a gap). What pub/sub
adds is silent loss: a message published while a process's subscription is down (Redis
restarting) simply never arrives. So this layer puts a `layer.lost` message into every local
channel when its subscription connection fails, and when a channel's in-memory queue overflows
(a client that stopped reading); the blotter consumer closes such a connection, and the client
reconnects and refetches its snapshot, as it did when the core layer's receive failed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, decode_hosts

log = logging.getLogger(__name__)

# Sent to a local channel that may have missed messages (see the module docstring).
LOST = "layer.lost"
# Seconds between attempts to read again after the subscription connection failed.
RETRY_SECONDS = 0.5
# Seconds a subscribe waits for Redis to confirm it before it fails (the websocket then closes).
SUBSCRIBE_TIMEOUT_SECONDS = 5.0


class _BoundedQueue(asyncio.Queue[Any]):
    """A channel's pending messages; on overflow, the backlog is replaced by one `layer.lost`."""

    def __init__(self, maxsize: int, lost: bytes) -> None:
        super().__init__(maxsize=maxsize + 1)
        self._lost = lost
        self.overflowed = False

    def put_nowait(self, item: Any) -> None:
        if self.overflowed:
            return  # the consumer is told once and closes; keep nothing more for it
        if self.qsize() >= self.maxsize - 1:
            while not self.empty():
                self.get_nowait()
            self.overflowed = True
            item = self._lost
        super().put_nowait(item)


class _Shard(RedisSingleShardConnection):
    """One host's pub/sub connection; a failed read tells every local channel once.

    `subscribe` returns only once Redis has confirmed the subscription. Why: the blotter sends
    "hello" (the client's cue to fetch its snapshot) after joining its groups. An event
    published after SUBSCRIBE was sent but before Redis processed it would never reach this
    process, while the snapshot the client fetches may predate it: a gap nothing reports.
    """

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._confirmed: dict[str, asyncio.Future[None]] = {}

    async def subscribe(self, channel: str) -> None:
        waiter = self._confirmed.get(channel)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._confirmed[channel] = waiter
        try:
            await super().subscribe(channel)
            # shield: a caller timing out must not cancel the waiter other callers share
            await asyncio.wait_for(asyncio.shield(waiter), SUBSCRIBE_TIMEOUT_SECONDS)
        except BaseException:
            if self._confirmed.get(channel) is waiter and not waiter.done():
                del self._confirmed[channel]
                self._subscribed_to.discard(channel)  # the next subscribe sends it again
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._confirmed.pop(channel, None)
        await super().unsubscribe(channel)

    async def flush(self) -> None:
        self._confirmed.clear()
        await super().flush()

    def _confirm(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        waiter = self._confirmed.get(name)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _do_receiving(self) -> None:
        failed = False
        while True:
            try:
                if self._pubsub is not None and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=False, timeout=0.1
                    )
                    if message is not None:
                        kind = message.get("type")
                        if kind == "subscribe":
                            self._confirm(message)
                        elif kind == "message":
                            self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
                failed = False
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                # redis-py reconnects (and resubscribes) on the next read; until then every
                # message published to this process is gone.
                if not failed:
                    log.warning("channel layer subscription lost: %r", exc)
                    self.channel_layer.tell_all_lost()
                failed = True
                await asyncio.sleep(RETRY_SECONDS)


# PUBLISH of each (channel, message) pair of its arguments, in order, in one command: redis-py
# packs each pipelined command and reads each answer in Python (about 20-30 µs of the sender's
# CPU per message; a 1,000-account fill publishes about 1,010). EVAL, not EVALSHA: Redis finds
# the compiled script by its text's digest (no NOSCRIPT after a restart).
_PUBLISH_ALL = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end return 0"
# Redis spends about 3 µs more per message in the script than on a PUBLISH of its own, and
# more per byte (the message is copied into Lua and back): only runs of at least
# PUBLISH_SCRIPT_MIN messages of at most PUBLISH_SCRIPT_MAX_BYTES each go by script (a
# 1,000-account fill's one-event messages to each account's group); other messages, and the
# long coalesced ones of the firm and desk groups, go as PUBLISHes, in their place.
PUBLISH_SCRIPT_MIN = 16
PUBLISH_SCRIPT_MAX_BYTES = 2048
# Messages per script call, so one call keeps Redis busy for a bounded time.
PUBLISH_CHUNK = 500


def _publish_all(pipe: Any, messages: list[tuple[str, bytes]]) -> None:
    """Queue the PUBLISH of each (channel, data) on `pipe`, in order: runs of short messages
    as script calls (_PUBLISH_ALL), the rest one by one."""
    run: list[tuple[str, bytes]] = []

    def flush() -> None:
        if len(run) >= PUBLISH_SCRIPT_MIN:
            for start in range(0, len(run), PUBLISH_CHUNK):
                pipe.eval(
                    _PUBLISH_ALL,
                    0,
                    *[x for pair in run[start : start + PUBLISH_CHUNK] for x in pair],
                )
        else:
            for channel, data in run:
                pipe.publish(channel, data)
        run.clear()

    for channel, data in messages:
        if len(data) <= PUBLISH_SCRIPT_MAX_BYTES:
            run.append((channel, data))
        else:
            flush()
            pipe.publish(channel, data)
    flush()


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts: Any = None, *args: Any, capacity: int = 2000, **kwargs: Any) -> None:
        super().__init__(hosts, *args, **kwargs)
        self.capacity = capacity
        self._lost = self.channel_layer.serialize({"type": LOST})
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = _BoundedQueue(self.capacity, self._lost)
        await self._get_shard(channel).subscribe(channel)

    async def group_send_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish many (group, message) pairs, in order, in one round trip per host."""
        by_shard: dict[Any, list[tuple[str, bytes]]] = {}
        for group, message in items:
            channel = self._get_group_channel_name(group)
            by_shard.setdefault(self._get_shard(channel), []).append(
                (channel, self.channel_layer.serialize(message))
            )
        for shard, messages in by_shard.items():
            async with shard._lock:
                shard._ensure_redis()
                pipe = shard._redis.pipeline(transaction=False)
                _publish_all(pipe, messages)
                await pipe.execute()

    def tell_all_lost(self) -> None:
        """Queue `layer.lost` for every channel of this process (its subscriptions failed)."""
        for queue in self.channels.values():
            queue.put_nowait(self._lost)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels_redis' pub/sub layer with bounded channels and `layer.lost` on a failure.

    Config: `hosts` and `prefix` as channels_redis; `capacity` messages per local channel.
    """

    async def group_send_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Like group_send for many (group, message) pairs: in order, one round trip per host."""
        await self._get_layer().group_send_many(items)

    def _get_layer(self) -> Any:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer
