"""Retry policy: exponential back-off between failed attempts.

The defaults are Restate 1.7's (`shardgate.schema.DEFAULT_RETRY_POLICY`); the manifest may
override any field per service and per handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardgate.schema import DEFAULT_RETRY_POLICY, HandlerMeta, ServiceMeta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A fully resolved policy (every field set)."""

    initial_interval_ms: int
    exponentiation_factor: float
    max_interval_ms: int
    max_attempts: int  # including the first
    on_max_attempts: str  # "PAUSE" or "KILL"

    def delay_ms(self, failed_attempts: int) -> int:
        """Delay before the next attempt after `failed_attempts` (>= 1) consecutive failures."""
        d = self.initial_interval_ms * self.exponentiation_factor ** max(0, failed_attempts - 1)
        return int(min(d, self.max_interval_ms))

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts


_FIELDS = ("initial_interval_ms", "exponentiation_factor", "max_interval_ms", "max_attempts", "on_max_attempts")


def policy_for(service: ServiceMeta | None, handler: HandlerMeta | None) -> RetryPolicy:
    """Handler overrides beat service overrides beat the defaults, field by field."""
    layers = [DEFAULT_RETRY_POLICY]
    if service is not None:
        layers.append(service.retry_policy)
        if handler is not None:
            layers.append(handler.retry_policy)
    values = {}
    for name in _FIELDS:
        values[name] = next(getattr(layer, name) for layer in reversed(layers) if getattr(layer, name) is not None)
    return RetryPolicy(**values)
