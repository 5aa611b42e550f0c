"""Durable outbox: messages from one partition to others (calls, one-way calls, signals,
call results), delivered in order by the partition's owner and removed only once applied.

Delivery is at-least-once; receivers are idempotent (deterministic child ids, notification
keys), so a message re-delivered after a crash is applied once.

A message over the gRPC message limit can never reach another worker, and retrying it would hold
its lane forever. It is replaced, whoever owns its target: a waiting invocation (the caller of a
call, the receiver of a completion or signal) gets a terminal failure in its place, and a
message nothing waits for (a one-way send) is dropped, logged and counted
(`shardgate_partition_outbox_too_large_total`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from partition import keys
from partition.invocation import completion_key
from partition.metrics import OUTBOX_DEPTH, OUTBOX_TOO_LARGE
from partition.outbox_codec import decode_outbox
from partition.scripts import Scripts
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.protocol.v1 import protocol_pb2 as protocol_pb
from shardgate import protocol
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.routing import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

BATCH = 128
MAX_IDLE_S = 5.0


LANE_BACKOFF_MIN_S = 0.05
LANE_BACKOFF_MAX_S = 0.5
SCAN_LIMIT = 1024
"""How deep a drain looks past messages held for failing targets."""
MAX_ENTRY_BYTES = MAX_MESSAGE_BYTES - 1024
"""The largest entry sent as it is: its Deliver request (the entry, a few bytes of wrapping) must
fit the gRPC message limit."""
TOO_LARGE_CODE = 413


def target_partition(msg: pb.OutboxMessage) -> int:
    """The partition a message goes to (its lane)."""
    return msg.invoke.partition if msg.HasField("invoke") else msg.notify.partition


class Lanes:
    """Per-target retry state: a target whose delivery failed waits (doubling back-off) while the
    messages to every other target go on; messages to one target stay in order."""

    def __init__(self) -> None:
        self._backoff_s: dict[int, float] = {}
        self._retry_at_ms: dict[int, int] = {}

    def ready(self, target: int, now_ms: int) -> bool:
        return self._retry_at_ms.get(target, 0) <= now_ms

    def failed(self, target: int, now_ms: int) -> None:
        backoff = min(self._backoff_s.get(target, LANE_BACKOFF_MIN_S / 2) * 2, LANE_BACKOFF_MAX_S)
        self._backoff_s[target] = backoff
        self._retry_at_ms[target] = now_ms + int(backoff * 1000)

    def succeeded(self, target: int) -> None:
        self._backoff_s.pop(target, None)
        self._retry_at_ms.pop(target, None)

    def next_retry_s(self, now_ms: int) -> float:
        """Seconds until the earliest held target may be tried again (the minimum back-off if none)."""
        if not self._retry_at_ms:
            return LANE_BACKOFF_MIN_S
        return max(0.0, (min(self._retry_at_ms.values()) - now_ms) / 1000)


def too_large_reply(msg: pb.OutboxMessage, size: int, limit: int) -> pb.OutboxMessage | None:
    """What goes instead of a message of `size` bytes over `limit`: a terminal failure for the
    invocation waiting on it, with the same notification key (the caller of a call, the receiver
    of a completion or signal), or None when nothing waits (a one-way send)."""
    text = f"message too large: {size} bytes, over the {limit}-byte limit for messages between partitions"
    if msg.HasField("invoke"):
        req = msg.invoke
        if not req.parent.invocation_id:
            return None
        cid = req.parent.result_completion_id
        frame = protocol.notification(protocol.MessageType.CALL_COMPLETION, completion_id=cid,
                                      failure=(TOO_LARGE_CODE, f"call to {req.service}/{req.handler}: {text}"))
        return pb.OutboxMessage(notify=pb.Notification(partition=req.parent.partition,
                                                       invocation_id=req.parent.invocation_id,
                                                       key=completion_key(cid), frame=frame))
    note = msg.notify
    try:
        (parsed,) = protocol.decode_frames(note.frame)
        template = protocol_pb.NotificationTemplate.FromString(parsed.payload)
    except (protocol.ProtocolError, ValueError):
        return None
    which = template.WhichOneof("id")
    if which is None or not protocol.is_notification(parsed.type):
        return None
    frame = protocol.notification(parsed.type, **{which: getattr(template, which)},
                                  failure=(TOO_LARGE_CODE, text))
    return pb.OutboxMessage(notify=pb.Notification(partition=note.partition, invocation_id=note.invocation_id,
                                                   key=note.key, frame=frame))


class PartitionOutbox:
    def __init__(self, redis: Redis, scripts: Scripts, partition: int, token: str,
                 deliver: Callable[[pb.OutboxMessage], Awaitable[None]], clock: Clock = SYSTEM_CLOCK,
                 max_entry_bytes: int = MAX_ENTRY_BYTES) -> None:
        self._max_entry_bytes = max_entry_bytes
        self._redis = redis
        self._clock = clock
        self._scripts = scripts
        self._partition = partition
        self._token = token
        self._deliver = deliver
        self._key = keys.outbox(partition)
        self._wake = asyncio.Event()
        self.lanes = Lanes()

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delivered, held, more = await self._drain()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("outbox drain: state store unavailable (%s), retrying", type(e).__name__,
                            extra={"partition": self._partition})
                delivered, held, more = 0, 0, False
                await self._clock.sleep(LANE_BACKOFF_MAX_S / 2)
                continue
            except Exception:
                log.exception("outbox drain failed", extra={"partition": self._partition})
                await self._clock.sleep(LANE_BACKOFF_MAX_S / 2)
                continue
            if delivered and more:
                continue  # a full batch went out: there may be more behind it
            if held:
                await self._clock.wait(self._wake, self.lanes.next_retry_s(self._clock.now_ms()))
                continue
            await self._clock.wait(self._wake, MAX_IDLE_S)

    async def _window(self) -> list[bytes]:
        """The head of the outbox: BATCH messages, or up to SCAN_LIMIT when the head is all held."""
        items = cast("list[bytes]", await self._redis.lrange(self._key, 0, BATCH - 1))
        if len(items) == BATCH and self._all_held(items):
            items += cast("list[bytes]", await self._redis.lrange(self._key, BATCH, SCAN_LIMIT - 1))
        return items

    def _all_held(self, items: list[bytes]) -> bool:
        now = self._clock.now_ms()
        return all(not self.lanes.ready(target_partition(decode_outbox(raw)), now) for raw in items)

    async def _drain(self) -> tuple[int, int, bool]:
        """Deliver what the head of the outbox holds, in order per target; a target whose delivery
        fails is held (back-off) and the others go on. Returns (delivered, held, batch was full)."""
        items = await self._window()
        OUTBOX_DEPTH.labels(str(self._partition)).set(len(items))
        delivered: list[bytes] = []
        held: set[int] = set()
        held_count = 0
        for raw in items:
            if len(delivered) >= BATCH:
                break
            msg = decode_outbox(raw)
            too_large = len(raw) > self._max_entry_bytes
            if too_large:
                reply = too_large_reply(msg, len(raw), self._max_entry_bytes)
                if reply is None:
                    self._too_large(msg, len(raw), "dropped")
                    delivered.append(raw)  # acknowledged with the delivered ones
                    continue
                msg = reply
            target = target_partition(msg)
            if target in held or not self.lanes.ready(target, self._clock.now_ms()):
                held.add(target)  # keeps this target's later messages behind this one
                held_count += 1
                continue
            try:
                await self._deliver(msg)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  any failure: keep it queued, hold its lane
                self.lanes.failed(target, self._clock.now_ms())
                held.add(target)
                held_count += 1
                log.warning("outbox delivery to partition %d failed, will retry: %s", target, e,
                            extra={"partition": self._partition})
                continue
            self.lanes.succeeded(target)
            if too_large:
                self._too_large(msg, len(raw), "failed")
            delivered.append(raw)
        if delivered:
            await self._scripts.outbox_ack(self._partition, self._token, delivered)
        return len(delivered), held_count, len(items) >= BATCH

    def _too_large(self, msg: pb.OutboxMessage, size: int, outcome: str) -> None:
        OUTBOX_TOO_LARGE.labels(outcome).inc()
        waiting = "" if outcome == "dropped" else f", {msg.notify.invocation_id} got a failure instead"
        log.error("outbox message of %d bytes is over the %d-byte limit: %s%s", size, self._max_entry_bytes,
                  outcome, waiting, extra={"partition": self._partition})
