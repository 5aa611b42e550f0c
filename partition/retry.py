"""Retry policy: exponential back-off between failed attempts (Restate 1.7 defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from shardgate.schema import HandlerMeta, ServiceMeta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_interval_ms: int = 500
    exponentiation_factor: float = 2.0
    max_interval_ms: int = 60_000
    max_attempts: int = 70  # including the first
    on_max_attempts: str = "PAUSE"  # or "KILL"

    def delay_ms(self, failed_attempts: int) -> int:
        """Delay before the next attempt after `failed_attempts` (>= 1) consecutive failures."""
        d = self.initial_interval_ms * self.exponentiation_factor ** max(0, failed_attempts - 1)
        return int(min(d, self.max_interval_ms))

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.max_attempts


DEFAULT_POLICY = RetryPolicy()


def policy_for(service: ServiceMeta | None, handler: HandlerMeta | None) -> RetryPolicy:
    """Handler overrides beat service overrides beat the defaults, field by field."""
    base = DEFAULT_POLICY
    if service is None:
        return base
    layers = [service.retry_policy] + ([handler.retry_policy] if handler is not None else [])
    values = {
        "initial_interval_ms": base.initial_interval_ms,
        "exponentiation_factor": base.exponentiation_factor,
        "max_interval_ms": base.max_interval_ms,
        "max_attempts": base.max_attempts,
        "on_max_attempts": base.on_max_attempts,
    }
    for layer in layers:
        for name in values:
            v = getattr(layer, name)
            if v is not None:
                values[name] = v
    return RetryPolicy(**values)  # type: ignore[arg-type]
