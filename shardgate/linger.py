"""When a stream's writer waits a little for more to put into the same message.

Both ends of `InvokeStream` (`ingress/stream.py`, `partition/stream.py`) send everything buffered
as one gRPC message, and a message costs about the same CPU at both ends whatever it carries
(`docs/performance.md` section 1). Under load the requests of a stream arrive a few milliseconds
apart, so without waiting nearly every message carries one request. A `Linger` says when waiting
pays: while the stream is busy — at least `min_in_flight` requests unanswered on it, and its
previous message went out less than `BUSY_WINDOWS` delays ago — the writer waits `delay_s`
before taking the batch. A lone caller, a stream that was quiet, or one holding only a few long
calls sends at once, so the latency of a call at low load is unchanged; at saturation the wait
costs less latency than the messages it saves (section 10).
"""

from __future__ import annotations

DEFAULT_DELAY_S = 0.002
"""The delay both ends use unless configured (SHARDGATE_STREAM_LINGER_MS)."""
BUSY_WINDOWS = 2.0
"""A stream counts as busy while its previous message went out less than this many delays ago."""
MIN_IN_FLIGHT = 8
"""Requests unanswered on a stream before its writer waits for company."""


class Linger:
    """One stream's batching delay: `delay(in_flight, now)` before each message, `wrote(now)`
    after it. `delay_s` = 0 never waits. One instance per stream (it remembers the last write)."""

    __slots__ = ("_last_write", "delay_s", "min_in_flight")

    def __init__(self, delay_s: float, min_in_flight: int = MIN_IN_FLIGHT) -> None:
        if delay_s < 0 or min_in_flight < 1:
            raise ValueError("a linger needs delay_s >= 0 and min_in_flight >= 1")
        self.delay_s = delay_s
        self.min_in_flight = min_in_flight
        self._last_write: float | None = None

    def delay(self, in_flight: int, now: float) -> float:
        """Seconds to wait before taking the next batch (0: send at once)."""
        last = self._last_write
        if (not self.delay_s or in_flight < self.min_in_flight or last is None
                or now - last >= BUSY_WINDOWS * self.delay_s):
            return 0.0
        return self.delay_s

    def wrote(self, now: float) -> None:
        """A message went out at `now` (the loop's clock)."""
        self._last_write = now
