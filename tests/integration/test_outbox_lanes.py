"""The outbox delivers per target lane: a failing target holds only its own messages.

A real Redis holds the outbox (`sg:{p0}:outbox`) and the lease; `deliver` is the outbox's injected
callable (in the worker it is the local leader or a gRPC call to the target's owner), here a
recorder that fails on purpose for one target. On a manual clock.

* messages to other targets go out while one target fails, each target's messages in order;
* the failed target is retried after its back-off, and its messages then go out in order;
* the acknowledgement removes exactly the delivered messages (held ones stay, in order);
* a held head larger than one batch does not hide the messages behind it;
* a message over the gRPC message limit is replaced by a failure for whoever waits on it (or
  dropped when nothing does), so it holds no lane.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from partition import keys
from partition.outbox import BATCH, LANE_BACKOFF_MIN_S, PartitionOutbox, target_partition
from partition.outbox_codec import decode_outbox, encode_outbox_invoke, encode_outbox_notify
from partition.scripts import Scripts
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate import protocol
from shardgate.clock import ManualClock
from shardgate.protocol import MessageType as T
from shardgate.tasks import cancel_and_wait
from tests.clusters import poll

P = 0
DOWN = 3


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[tuple[int, str]] = []
        self.down = {DOWN}

    async def deliver(self, msg: pb.OutboxMessage) -> None:
        target = target_partition(msg)
        if target in self.down:
            raise ConnectionError(f"partition {target} has no owner")
        self.delivered.append((target, msg.notify.key))


def entry(target: int, key: str) -> bytes:
    return encode_outbox_notify(target, f"inv_{target}", key, b"frame")


async def owned_outbox(redis: Redis, entries: list[bytes], deliver, **kw) -> tuple[PartitionOutbox, ManualClock]:
    """The outbox of partition P, its lease held, with `entries` queued."""
    scripts = Scripts(redis)
    tok = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                      args=["w1", 60_000, "127.0.0.1:1"])
    assert tok is not None
    await redis.rpush(keys.outbox(P), *entries)
    clock = ManualClock()
    return PartitionOutbox(redis, scripts, P, tok.decode(), deliver, clock, **kw), clock


async def setup(redis: Redis, entries: list[bytes]) -> tuple[PartitionOutbox, Recorder, ManualClock]:
    rec = Recorder()
    outbox, clock = await owned_outbox(redis, entries, rec.deliver)
    return outbox, rec, clock


async def remaining(redis: Redis) -> list[tuple[int, str]]:
    return [(target_partition(m := decode_outbox(raw)), m.notify.key)
            for raw in await redis.lrange(keys.outbox(P), 0, -1)]


@pytest.mark.timeout(30)
async def test_a_failing_target_holds_only_its_own_messages(redis: Redis) -> None:
    outbox, rec, clock = await setup(redis, [entry(DOWN, "a1"), entry(5, "b1"), entry(DOWN, "a2"),
                                             entry(5, "b2"), entry(7, "c1")])
    delivered, held, _ = await outbox._drain()
    assert (delivered, held) == (3, 2)
    assert rec.delivered == [(5, "b1"), (5, "b2"), (7, "c1")]
    assert await remaining(redis) == [(DOWN, "a1"), (DOWN, "a2")]

    await redis.rpush(keys.outbox(P), entry(5, "b3"))
    assert (await outbox._drain())[:2] == (1, 2)  # the held lane is not retried before its back-off
    assert rec.delivered[-1] == (5, "b3")

    rec.down.clear()
    clock.advance(int(LANE_BACKOFF_MIN_S * 1000))
    assert (await outbox._drain())[:2] == (2, 0)
    assert rec.delivered[-2:] == [(DOWN, "a1"), (DOWN, "a2")]
    assert await remaining(redis) == []


@pytest.mark.timeout(30)
async def test_the_run_loop_retries_a_held_lane_after_its_back_off(redis: Redis) -> None:
    outbox, rec, clock = await setup(redis, [entry(DOWN, "a1"), entry(5, "b1")])
    loop = asyncio.create_task(outbox.run())
    try:
        await poll("b1 to go out", 5.0, _until(lambda: rec.delivered == [(5, "b1")]), interval_s=0.01)
        rec.down.clear()
        await poll("the loop to wait for the back-off", 5.0, _until(lambda: clock.sleepers > 0), interval_s=0.01)
        clock.advance(int(LANE_BACKOFF_MIN_S * 1000))
        await poll("a1 to go out", 5.0, _until(lambda: (DOWN, "a1") in rec.delivered), interval_s=0.01)
        assert await remaining(redis) == []
    finally:
        await asyncio.wait_for(cancel_and_wait([loop]), 10)  # redis-py can swallow a cancellation


@pytest.mark.timeout(30)
async def test_a_held_head_longer_than_a_batch_does_not_hide_what_is_behind_it(redis: Redis) -> None:
    outbox, rec, _clock = await setup(redis, [entry(DOWN, f"a{i}") for i in range(BATCH + 10)] + [entry(5, "b1")])
    assert (await outbox._drain())[0] == 0  # the first look: DOWN fails and is held
    assert (await outbox._drain())[0] == 1  # the next one looks past the held head
    assert rec.delivered == [(5, "b1")]
    assert len(await remaining(redis)) == BATCH + 10


def _until(condition):  # type: ignore[no-untyped-def]
    async def probe() -> bool | None:
        return True if condition() else None

    return probe


# ---- messages over the gRPC message limit ---------------------------------------------------------

LIMIT = 1024  # the outbox's entry limit in these tests (64 MiB less a margin in the worker)


class Capture:
    def __init__(self) -> None:
        self.messages: list[pb.OutboxMessage] = []
        self.down: set[int] = set()

    async def deliver(self, msg: pb.OutboxMessage) -> None:
        if target_partition(msg) in self.down:
            raise ConnectionError("no owner")
        self.messages.append(msg)


def _too_large(outcome: str) -> float:
    return REGISTRY.get_sample_value("shardgate_partition_outbox_too_large_total", {"outcome": outcome}) or 0.0


@pytest.mark.timeout(30)
async def test_a_message_over_the_limit_fails_its_waiter_and_holds_no_lane(redis: Redis) -> None:
    """Finding: one message over the 64 MiB gRPC limit blocked its target's lane forever."""
    big = b"x" * (2 * LIMIT)
    call = spb.InvokeRequest(partition=5, invocation_id="inv_1callee", service="Big", handler="take", body=big,
                             parent=spb.Parent(invocation_id="inv_1caller", partition=2, result_completion_id=4))
    send = spb.InvokeRequest(partition=5, invocation_id="inv_1sent", service="Big", handler="take", body=big)
    result = protocol.notification(T.CALL_COMPLETION, completion_id=7, value=big)
    awakeable = protocol.notification(T.SIGNAL_NOTIFICATION, signal_id=17, value=big)
    entries = [encode_outbox_invoke(call), encode_outbox_invoke(send), entry(5, "small"),
               encode_outbox_notify(6, "inv_1parent", "c7", result), encode_outbox_notify(6, "inv_1waiter", "s17", awakeable)]
    cap = Capture()
    cap.down = {2}  # the caller's partition has no owner yet: its failure waits in its lane
    outbox, clock = await owned_outbox(redis, entries, cap.deliver, max_entry_bytes=LIMIT)
    failed, dropped = _too_large("failed"), _too_large("dropped")

    assert (await outbox._drain())[:2] == (4, 1)  # the one-way send counts as delivered: dropped
    assert [(m.notify.invocation_id, m.notify.key) for m in cap.messages] == [
        ("inv_5", "small"), ("inv_1parent", "c7"), ("inv_1waiter", "s17")]
    assert cap.messages[0].notify.frame == b"frame"
    # The same ids, the same notification types, a failure instead of the value.
    assert cap.messages[1].notify.frame == protocol.notification(T.CALL_COMPLETION, completion_id=7, failure=(
        413, f"message too large: {len(entries[3])} bytes, over the {LIMIT}-byte limit for messages between partitions"))
    waiter = cap.messages[2].notify
    assert (waiter.partition, waiter.frame[:2]) == (6, int(T.SIGNAL_NOTIFICATION).to_bytes(2, "big"))
    assert b"message too large" in waiter.frame and big not in waiter.frame
    assert await redis.lrange(keys.outbox(P), 0, -1) == [entries[0]]  # only the call, held for its caller's lane
    assert (_too_large("failed") - failed, _too_large("dropped") - dropped) == (2, 1)

    cap.down.clear()
    clock.advance(int(LANE_BACKOFF_MIN_S * 1000))
    assert (await outbox._drain())[:2] == (1, 0)
    caller = cap.messages[-1].notify
    assert (caller.partition, caller.invocation_id, caller.key) == (2, "inv_1caller", "c4")
    assert caller.frame == protocol.notification(T.CALL_COMPLETION, completion_id=4, failure=(
        413, (f"call to Big/take: message too large: {len(entries[0])} bytes, over the {LIMIT}-byte limit for "
             "messages between partitions")))
    assert await redis.lrange(keys.outbox(P), 0, -1) == []
