"""The partition timer loop against a real Redis sorted set, on a manual clock: nothing fires
before its due time, everything due fires, and a failed firing is tried again."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from partition import keys
from partition.timers import PartitionTimers
from shardgate.clock import ManualClock
from shardgate.tasks import cancel_and_wait

P = 3
WAIT_S = 5.0


class _Loop:
    """A timer loop whose firing removes the member (as the real transitions do) and records it."""

    def __init__(self, redis: Redis, clock: ManualClock, fail_first: int = 0) -> None:
        self.redis, self.clock = redis, clock
        self.fired: list[str] = []
        self.failures_left = fail_first
        self.changed = asyncio.Event()
        self.timers = PartitionTimers(redis, P, self._fire, clock)

    async def _fire(self, member: str) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("deployment down")
        await self.redis.zrem(keys.timers(P), member)
        self.fired.append(member)
        self.changed.set()

    async def asleep(self) -> None:
        """Wait (bounded) until the loop is parked on the clock."""
        async with asyncio.timeout(WAIT_S):
            while self.clock.sleepers == 0:
                await asyncio.sleep(0.001)

    async def fired_count(self, n: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.fired) < n:
                self.changed.clear()
                await self.changed.wait()


async def test_timers_fire_at_their_due_time_and_not_before(redis: Redis) -> None:
    clock = ManualClock()
    now = clock.now_ms()
    await redis.zadd(keys.timers(P), {"s|a": now + 1000, "s|b": now + 3000})
    loop = _Loop(redis, clock)
    task = asyncio.create_task(loop.timers.run())
    try:
        await loop.asleep()
        assert loop.fired == []
        clock.advance(999)
        await loop.asleep()
        assert loop.fired == []
        clock.advance(1)
        await loop.fired_count(1)
        assert loop.fired == ["s|a"]
        clock.advance(2000)
        await loop.fired_count(2)
        assert loop.fired == ["s|a", "s|b"]
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), WAIT_S)  # re-cancels: redis-py can swallow one


async def test_poke_makes_the_loop_see_an_earlier_timer(redis: Redis) -> None:
    clock = ManualClock()
    loop = _Loop(redis, clock)
    task = asyncio.create_task(loop.timers.run())
    try:
        await loop.asleep()  # idle: nothing in the set
        await redis.zadd(keys.timers(P), {"w|x|1": clock.now_ms() + 10})
        loop.timers.poke()
        await asyncio.sleep(0)
        await loop.asleep()
        clock.advance(10)
        await loop.fired_count(1)
        assert loop.fired == ["w|x|1"]
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), WAIT_S)  # re-cancels: redis-py can swallow one


async def test_a_failed_firing_is_retried(redis: Redis) -> None:
    clock = ManualClock()
    await redis.zadd(keys.timers(P), {"r|y": clock.now_ms()})
    loop = _Loop(redis, clock, fail_first=1)
    task = asyncio.create_task(loop.timers.run())
    try:
        await loop.asleep()
        assert loop.fired == [] and loop.failures_left == 0  # the first try failed, the loop backs off
        clock.advance(500)
        await loop.fired_count(1)
        assert loop.fired == ["r|y"]
        assert await redis.zcard(keys.timers(P)) == 0
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), WAIT_S)  # re-cancels: redis-py can swallow one
