"""Durable timers: one sorted set per partition (score = due ms), one loop per owned partition.

The loop sleeps until the earliest entry is due (or until `poke()` says an earlier one was
added: only the owner adds timers to its partitions, so an in-process signal is enough), then
fires due entries in bounded batches. Firing is done by the owner's transitions, each of which
removes its own member atomically with its effect, so a crash between firing and removal only
fires the entry again, harmlessly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis

from partition import keys
from partition.loop import run_wakeable
from partition.metrics import TIMER_LAG
from shardgate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

MAX_IDLE_S = 5.0  # re-check Redis at least this often, whatever the in-memory signal says
BATCH = 256
FIRE_CONCURRENCY = 32


class PartitionTimers:
    def __init__(self, redis: Redis, partition: int, fire: Callable[[str], Awaitable[None]],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._clock = clock
        self._key = keys.timers(partition)
        self._partition = partition
        self._fire = fire
        self._wake = asyncio.Event()
        self._concurrency = asyncio.Semaphore(FIRE_CONCURRENCY)

    def poke(self) -> None:
        """An entry was added: re-evaluate the earliest due time."""
        self._wake.set()

    async def run(self) -> None:
        await run_wakeable("timer loop", self._partition, self._tick, self._wake, self._clock)

    async def _fire_one(self, member: str) -> bool:
        async with self._concurrency:
            try:
                await self._fire(member)
                return True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firing timer %s failed", member, extra={"partition": self._partition})
                return False

    async def _tick(self) -> float:
        """Fire what is due; return how long to sleep before the next check."""
        now = self._clock.now_ms()
        due = cast("list[tuple[bytes, float]]",  # bytes: the client does not decode responses
                   await self._redis.zrangebyscore(self._key, "-inf", now, start=0, num=BATCH, withscores=True))
        for _, score in due:
            TIMER_LAG.observe(max(0.0, (now - score) / 1000))
        # Firings are independent transitions: run them side by side, a bounded number at a time.
        results = await asyncio.gather(*(self._fire_one(m.decode()) for m, _ in due))
        if not all(results):
            return 0.5
        if len(due) == BATCH:
            return 0
        nxt = cast("list[tuple[bytes, float]]", await self._redis.zrange(self._key, 0, 0, withscores=True))
        if not nxt:
            return MAX_IDLE_S
        return min(MAX_IDLE_S, max(0.0, (nxt[0][1] - self._clock.now_ms()) / 1000))
