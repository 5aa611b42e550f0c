"""Time, injected: every process reads wall-clock milliseconds and waits through a `Clock`.

`SystemClock` is the real one. `ManualClock` stands still until a test advances it, so timer,
retry and lease logic is tested without waiting real time: a wait on a manual clock ends when
the clock is advanced past its deadline (or when its event is set), never by itself.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Where a process gets the time and waits for it."""

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch (what Redis scripts get as `now_ms`)."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Wait `delay_s` seconds of this clock's time."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until `event` is set (True) or `timeout_s` of this clock's time passed (False)."""
        ...


class SystemClock:
    """The machine's clock and asyncio's timers."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        # Not asyncio.wait_for: on Python 3.11 it can return the event's result and drop a
        # cancellation that arrives at the same moment, which leaves a cancelled loop running.
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
        finally:
            waiter.cancel()
        return event.is_set()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when `advance` is called (tests)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now_ms

    def _deadline(self, delay_s: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = self._now_ms + max(0, round(delay_s * 1000))
        if due <= self._now_ms:
            fut.set_result(None)
        else:
            heapq.heappush(self._sleepers, (due, next(self._seq), fut))
        return fut

    async def sleep(self, delay_s: float) -> None:
        await self._deadline(delay_s)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        deadline = self._deadline(timeout_s)
        waiter: asyncio.Future[None] = asyncio.ensure_future(self._set(event))
        try:
            await asyncio.wait({deadline, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            deadline.cancel()
        return event.is_set()

    @staticmethod
    async def _set(event: asyncio.Event) -> None:
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many waits are pending (lets a test see that a loop went to sleep)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, delta_ms: int) -> None:
        """Move time forward and end every wait whose deadline is now reached."""
        self._now_ms += delta_ms
        while self._sleepers and self._sleepers[0][0] <= self._now_ms:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
