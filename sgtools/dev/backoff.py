"""`RestartBackoff`: how long the supervisor waits before restarting a child that died.

Pure policy with an injected clock (no sleeping, no I/O): the first restart waits `initial_s`, each
further one twice as long up to `max_s`; a child that stayed healthy for `reset_after_s` before it
died starts again from `initial_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

INITIAL_DELAY_S = 1.0
MAX_DELAY_S = 30.0
RESET_AFTER_S = 60.0


class RestartBackoff:
    """Back-off of one child's restarts: 1 s, 2 s, 4 s ... capped at 30 s, reset after 60 s healthy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, initial_s: float = INITIAL_DELAY_S,
                 max_s: float = MAX_DELAY_S, reset_after_s: float = RESET_AFTER_S) -> None:
        """Raises ValueError unless 0 < initial_s <= max_s and reset_after_s >= 0."""
        if not 0 < initial_s <= max_s or reset_after_s < 0:
            raise ValueError(f"bad back-off: initial {initial_s}s, max {max_s}s, reset after {reset_after_s}s")
        self._clock = clock
        self._initial_s = initial_s
        self._max_s = max_s
        self._reset_after_s = reset_after_s
        self._next_s = initial_s
        self._healthy_since_s: float | None = None

    @property
    def next_delay_s(self) -> float:
        """The wait before the next restart if the child died now and had not been healthy long."""
        return self._next_s

    def on_healthy(self) -> None:
        """The child (re)started and passed its health check: start the healthy period now."""
        self._healthy_since_s = self._clock()

    def on_exit(self) -> float:
        """The child died (or a restart did not get healthy): return the wait before the next start."""
        if self._healthy_since_s is not None and self._clock() - self._healthy_since_s >= self._reset_after_s:
            self._next_s = self._initial_s
        self._healthy_since_s = None
        delay_s = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay_s
