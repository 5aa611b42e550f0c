"""Durable outbox: messages from one partition to others (calls, one-way calls, signals,
call results), delivered in order by the partition's owner and removed only once applied.

Delivery is at-least-once; receivers are idempotent (deterministic child ids, notification
keys), so a message re-delivered after a crash is applied once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis

from partition import keys
from partition.effects import decode_outbox
from partition.metrics import OUTBOX_DEPTH
from partition.scripts import Scripts
from sgproto.partition.v1 import partition_service_pb2 as pb

log = logging.getLogger(__name__)

BATCH = 128
MAX_IDLE_S = 5.0


class PartitionOutbox:
    def __init__(self, redis: Redis, scripts: Scripts, partition: int, token: str,
                 deliver: Callable[[pb.OutboxMessage], Awaitable[None]]) -> None:
        self._redis = redis
        self._scripts = scripts
        self._partition = partition
        self._token = token
        self._deliver = deliver
        self._key = keys.outbox(partition)
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            self._wake.clear()
            try:
                delivered, pending = await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox drain failed", extra={"partition": self._partition})
                delivered, pending = 0, 1
            if pending and not delivered:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if pending:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), MAX_IDLE_S)
            except TimeoutError:
                pass

    async def _drain(self) -> tuple[int, int]:
        """Deliver the head of the outbox in order; returns (delivered, still pending)."""
        items = cast("list[bytes]", await self._redis.lrange(self._key, 0, BATCH - 1))
        OUTBOX_DEPTH.labels(str(self._partition)).set(len(items))
        done = 0
        for raw in items:
            try:
                await self._deliver(decode_outbox(raw))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  any failure: keep it queued and retry
                log.warning("outbox delivery failed, will retry: %s", e, extra={"partition": self._partition})
                break
            done += 1
        if done:
            await self._scripts.outbox_ack(self._partition, self._token, done)
        # A full batch may have more behind it: report it pending so the loop drains on at once.
        return done, len(items) - done + (1 if len(items) == BATCH and done == len(items) else 0)
