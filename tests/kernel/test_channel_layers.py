"""The pub/sub channel layer: bounded channels, `layer.lost` on failures, pipelined group sends."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from oms_site.channel_layers import LOST, PubSubChannelLayer, _BoundedQueue


def _layer(capacity: int = 2000) -> PubSubChannelLayer:
    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["prefix"] = f"{os.environ.get('CHANNEL_PREFIX', 'oms-ws')}-t-{uuid.uuid4().hex[:8]}"
    config["capacity"] = capacity
    return PubSubChannelLayer(**config)


def test_an_overflowing_channel_keeps_one_lost_marker_and_nothing_else() -> None:
    # given: a channel of capacity 3 holding 3 messages
    queue = _BoundedQueue(3, b"LOST")
    for item in (b"a", b"b", b"c"):
        queue.put_nowait(item)
    # when: a fourth and a fifth arrive
    queue.put_nowait(b"d")
    queue.put_nowait(b"e")
    # then: the backlog is replaced by one marker, and nothing is kept after it
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [b"LOST"]


def test_a_slow_channel_receives_layer_lost_instead_of_its_backlog() -> None:
    # given: a layer with 2 messages per channel and one channel in a group
    layer = _layer(capacity=2)

    async def scenario() -> list[dict[str, Any]]:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        # when: three messages are published before the consumer reads
        await layer.group_send_many([("g", {"type": "m", "n": n}) for n in range(3)])
        queue = layer._get_layer().channels[channel]
        for _ in range(300):  # the subscription delivers them asynchronously
            if queue.overflowed:
                break
            await asyncio.sleep(0.01)
        got = [await asyncio.wait_for(layer.receive(channel), 3)]
        await layer.flush()
        return got

    # then: the consumer is told it lost messages
    assert async_to_sync(scenario)() == [{"type": LOST}]


def test_group_send_many_delivers_in_order_to_every_subscribed_group() -> None:
    # given: one channel in groups g1 and g2, another channel in g2 only
    layer = _layer()

    async def scenario() -> tuple[list[Any], list[Any], bool]:
        a = await layer.new_channel()
        b = await layer.new_channel()
        await layer.group_add("g1", a)
        await layer.group_add("g2", a)
        await layer.group_add("g2", b)
        # when: three messages go to the groups in one call
        await layer.group_send_many(
            [
                ("g1", {"type": "m", "n": 1}),
                ("g2", {"type": "m", "n": 2}),
                ("g1", {"type": "m", "n": 3}),
            ]
        )
        got_a = [(await asyncio.wait_for(layer.receive(a), 3))["n"] for _ in range(3)]
        got_b = [(await asyncio.wait_for(layer.receive(b), 3))["n"]]
        try:
            await asyncio.wait_for(layer.receive(b), 0.3)
            b_more = True
        except TimeoutError:
            b_more = False
        await layer.flush()
        return got_a, got_b, b_more

    # then: each channel gets its groups' messages in the order they were sent, nothing else
    assert async_to_sync(scenario)() == ([1, 2, 3], [2], False)


def test_a_big_group_send_many_goes_by_script_in_chunks_in_order(monkeypatch: Any) -> None:
    from oms_site import channel_layers

    # given: scripts for runs of 2 short messages or more (at most 100 bytes), 2 per call
    monkeypatch.setattr(channel_layers, "PUBLISH_SCRIPT_MIN", 2)
    monkeypatch.setattr(channel_layers, "PUBLISH_SCRIPT_MAX_BYTES", 100)
    monkeypatch.setattr(channel_layers, "PUBLISH_CHUNK", 2)
    layer = _layer()
    calls: list[tuple[str, int]] = []

    async def scenario() -> tuple[list[Any], list[Any]]:
        a = await layer.new_channel()
        b = await layer.new_channel()
        await layer.group_add("g1", a)
        await layer.group_add("g2", b)
        shard = layer._get_layer()._shards[0]
        pipeline = shard._redis.pipeline

        def counted(**kwargs: Any) -> Any:
            pipe = pipeline(**kwargs)
            eval_, publish = pipe.eval, pipe.publish

            def counted_eval(*args: Any) -> Any:
                calls.append(("eval", (len(args) - 2) // 2))
                return eval_(*args)

            def counted_publish(*args: Any) -> Any:
                calls.append(("publish", 1))
                return publish(*args)

            pipe.eval, pipe.publish = counted_eval, counted_publish
            return pipe

        shard._redis.pipeline = counted
        # when: seven messages go to the two groups in one call, the fourth a long one
        await layer.group_send_many(
            [
                (
                    "g1" if n % 2 else "g2",
                    {"type": "m", "n": n, "pad": "x" * (200 if n == 3 else 0)},
                )
                for n in range(7)
            ]
        )
        got_a = [(await asyncio.wait_for(layer.receive(a), 3))["n"] for _ in range(3)]
        got_b = [(await asyncio.wait_for(layer.receive(b), 3))["n"] for _ in range(4)]
        await layer.flush()
        return got_a, got_b

    # then: each group got its messages in order: the short ones by script calls of at most
    # two, the long one by a PUBLISH of its own, in its place
    assert async_to_sync(scenario)() == ([1, 3, 5], [0, 2, 4, 6])
    assert calls == [("eval", 2), ("eval", 1), ("publish", 1), ("eval", 2), ("eval", 1)]


class _FailingPubSub:
    """Stands in for redis-py's PubSub: the first two reads fail, later ones find nothing."""

    subscribed = True

    def __init__(self) -> None:
        self.reads = 0

    async def get_message(self, **kwargs: Any) -> None:
        self.reads += 1
        if self.reads <= 2:
            raise ConnectionError("Connection closed by server.")
        await asyncio.sleep(0.01)


def test_a_failed_subscription_read_tells_every_local_channel_once() -> None:
    # given: two channels of one process, their subscription connection about to fail twice
    layer = _layer()

    async def scenario() -> tuple[list[Any], list[int]]:
        a = await layer.new_channel()
        b = await layer.new_channel()
        loop_layer = layer._get_layer()
        shard = loop_layer._shards[0]
        real_pubsub = shard._pubsub
        shard._receive_task.cancel()
        fake = _FailingPubSub()
        shard._pubsub = fake
        # when: the shard's receive loop reads through both failures and then recovers
        task = asyncio.ensure_future(shard._do_receiving())
        while fake.reads < 4:
            await asyncio.sleep(0.05)
        task.cancel()
        sizes = [loop_layer.channels[a].qsize(), loop_layer.channels[b].qsize()]
        got = [await layer.receive(a), await layer.receive(b)]
        shard._pubsub = real_pubsub
        shard._receive_task = None
        await layer.flush()
        return got, sizes

    # then: each channel holds exactly one `layer.lost`
    assert async_to_sync(scenario)() == ([{"type": LOST}, {"type": LOST}], [1, 1])


def test_group_add_returns_only_once_redis_confirmed_the_subscription() -> None:
    # given: a fresh layer and a channel
    layer = _layer()

    async def scenario() -> tuple[bool, bool, dict[str, Any]]:
        channel = await layer.new_channel()
        shard = layer._get_layer()._shards[0]
        group_channel = layer._get_layer()._get_group_channel_name("g-confirmed")
        # when: the channel joins a group
        await layer.group_add("g-confirmed", channel)
        # then: Redis had already confirmed the subscription when group_add returned, so a
        # message published right away, from another connection, reaches the channel
        confirmed = shard._confirmed[group_channel].done()
        own_confirmed = shard._confirmed[channel].done()
        publisher = layer._get_layer()._shards[0]._redis
        await publisher.publish(group_channel, layer.serialize({"type": "m", "n": 7}))
        got = await asyncio.wait_for(layer.receive(channel), 3)
        await layer.flush()
        return confirmed, own_confirmed, got

    assert async_to_sync(scenario)() == (True, True, {"type": "m", "n": 7})


class _SilentPubSub:
    """A pub/sub connection whose SUBSCRIBE Redis never answers."""

    subscribed = False
    channels: dict[Any, Any] = {}

    async def subscribe(self, channel: str) -> None:
        return None

    async def get_message(self, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)


def test_an_unconfirmed_subscription_fails_and_is_sent_again_next_time(monkeypatch: Any) -> None:
    # given: a layer whose subscription connection never confirms, and a short timeout
    from oms_site import channel_layers

    monkeypatch.setattr(channel_layers, "SUBSCRIBE_TIMEOUT_SECONDS", 0.2)
    layer = _layer()

    async def scenario() -> tuple[bool, bool, dict[str, Any], bool]:
        channel = await layer.new_channel()
        loop_layer = layer._get_layer()
        shard = loop_layer._shards[0]
        real_pubsub = shard._pubsub
        shard._pubsub = _SilentPubSub()
        group_channel = loop_layer._get_group_channel_name("g-silent")
        # when: the channel joins a group
        try:
            await layer.group_add("g-silent", channel)
            raised = False
        except TimeoutError:
            raised = True
        # then: nothing is remembered as subscribed, so the next attempt sends SUBSCRIBE again
        remembered = group_channel in shard._subscribed_to
        waiters = {k: v for k, v in shard._confirmed.items() if k == group_channel}
        shard._pubsub = real_pubsub
        await layer.group_add("g-silent", channel)
        again = shard._confirmed[group_channel].done()
        await layer.flush()
        return raised, remembered, waiters, again

    raised, remembered, waiters, again = async_to_sync(scenario)()
    assert raised is True
    assert remembered is False
    assert waiters == {}
    assert again is True
