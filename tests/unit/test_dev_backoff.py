"""`RestartBackoff`, the restart policy of `shardgate dev`, against a fake clock (no waiting)."""

from __future__ import annotations

import pytest

from sgtools.dev import RestartBackoff

pytestmark = pytest.mark.timeout(10)


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def crash_loop(backoff: RestartBackoff, clock: FakeClock, deaths: int, healthy_for_s: float) -> list[float]:
    """Each round: the child gets healthy, stays so for `healthy_for_s`, dies; the waits returned."""
    delays = []
    for _ in range(deaths):
        backoff.on_healthy()
        clock.advance(healthy_for_s)
        delay_s = backoff.on_exit()
        delays.append(delay_s)
        clock.advance(delay_s)
    return delays


def test_doubles_from_one_second_up_to_thirty() -> None:
    clock = FakeClock()
    delays = crash_loop(RestartBackoff(clock), clock, 8, healthy_for_s=5.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_restarts_that_never_get_healthy_keep_backing_off() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(clock)
    backoff.on_healthy()
    clock.advance(3600.0)  # healthy for an hour, then it dies: starts at 1 s
    delays = [backoff.on_exit()]
    for _ in range(6):  # every restart fails before its health check: no healthy period at all
        clock.advance(delays[-1] + 120.0)
        delays.append(backoff.on_exit())
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_resets_after_a_minute_healthy() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(clock)
    assert crash_loop(backoff, clock, 6, healthy_for_s=1.0)[-1] == 30.0
    assert crash_loop(backoff, clock, 1, healthy_for_s=60.0) == [1.0]
    assert crash_loop(backoff, clock, 3, healthy_for_s=10.0) == [2.0, 4.0, 8.0]


def test_does_not_reset_just_before_a_minute() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(clock)
    crash_loop(backoff, clock, 3, healthy_for_s=1.0)  # 1, 2, 4
    assert crash_loop(backoff, clock, 1, healthy_for_s=59.9) == [8.0]
    assert backoff.next_delay_s == 16.0


def test_the_healthy_period_counts_from_the_last_health_check() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(clock)
    crash_loop(backoff, clock, 2, healthy_for_s=1.0)  # 1, 2
    clock.advance(300.0)  # down (or starting) for minutes: not healthy time
    backoff.on_healthy()
    clock.advance(30.0)
    assert backoff.on_exit() == 4.0


def test_custom_bounds_and_invalid_ones() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(clock, initial_s=0.5, max_s=3.0, reset_after_s=10.0)
    assert crash_loop(backoff, clock, 5, healthy_for_s=1.0) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert crash_loop(backoff, clock, 1, healthy_for_s=10.0) == [0.5]
    for bad in ({"initial_s": 0.0}, {"initial_s": 40.0}, {"reset_after_s": -1.0}):
        with pytest.raises(ValueError, match="bad back-off"):
            RestartBackoff(clock, **bad)
