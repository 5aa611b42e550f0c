"""The clocks' `wait`: an event or a timeout, and never a lost cancellation."""

from __future__ import annotations

import asyncio

import pytest

from shardgate.clock import SYSTEM_CLOCK, Clock, ManualClock


@pytest.mark.timeout(10)
async def test_system_wait_returns_true_when_the_event_is_set_and_false_after_the_timeout() -> None:
    event = asyncio.Event()
    assert await SYSTEM_CLOCK.wait(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await SYSTEM_CLOCK.wait(event, 5.0) is True


@pytest.mark.timeout(10)
@pytest.mark.parametrize("clock", [SYSTEM_CLOCK, ManualClock()], ids=["system", "manual"])
async def test_a_cancellation_that_comes_with_the_event_is_not_lost(clock: Clock) -> None:
    """A loop cancelled at the moment it is woken must stop (asyncio.wait_for on Python 3.11
    returns the wake-up and drops the cancellation, which kept a closed leader's loops running)."""
    for _ in range(200):
        event = asyncio.Event()
        woke = 0

        async def loop(event: asyncio.Event = event) -> None:
            nonlocal woke
            while True:
                await clock.wait(event, 60.0)
                woke += 1
                event.clear()

        task = asyncio.create_task(loop())
        for _ in range(3):
            await asyncio.sleep(0)  # let it reach its wait
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert task in done and task.cancelled(), f"the loop went on after its cancellation (woke {woke} times)"
