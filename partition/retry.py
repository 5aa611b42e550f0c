"""Retry policy: exponential back-off between failed attempts, and what a failure leads to.

The defaults are Restate 1.7's (`shardgate.schema.DEFAULT_RETRY_POLICY`, resolved by `effective_settings`); the manifest may
override any field per service and per handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.schema import HandlerMeta, ServiceMeta, effective_settings


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


def policy_for(service: ServiceMeta | None, handler: HandlerMeta | None) -> RetryPolicy:
    """Handler overrides beat service overrides beat the defaults, field by field
    (`shardgate.schema.effective_settings`, the one resolver)."""
    p = effective_settings(service, handler if service is not None else None).retry_policy
    return RetryPolicy(p.initial_interval_ms, p.exponentiation_factor, p.max_interval_ms, p.max_attempts,
                       p.on_max_attempts)


class FailureAction(str, Enum):
    """What a failed attempt leads to."""

    RETRY = "retry"  # back off, then the next attempt
    PAUSE = "pause"  # stop retrying; the invocation waits, paused
    COMPLETE = "complete"  # complete the invocation with the failure (KILL policy, or the SDK's FAIL)


def after_failure(policy: RetryPolicy, failed_attempts: int, behavior: int = pb.ErrorMessage.RETRY) -> FailureAction:
    """The action after `failed_attempts` consecutive failures; `behavior` is what a v7 SDK asked
    for in its ErrorMessage (PAUSE and FAIL override the policy)."""
    if behavior == pb.ErrorMessage.FAIL:
        return FailureAction.COMPLETE
    if behavior == pb.ErrorMessage.PAUSE:
        return FailureAction.PAUSE
    if policy.exhausted(failed_attempts):
        return FailureAction.COMPLETE if policy.on_max_attempts == "KILL" else FailureAction.PAUSE
    return FailureAction.RETRY
