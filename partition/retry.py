"""Retry policy: exponential back-off between failed attempts, and what a failure leads to.

The defaults are Restate 1.7's (`shardgate.schema.DEFAULT_RETRY_POLICY`, resolved by `effective_settings`); the manifest may
override any field per service and per handler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.clock import Clock
from shardgate.schema import HandlerMeta, ServiceMeta, effective_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

UNREACHABLE_RETRY_MIN_S = 0.05
UNREACHABLE_RETRY_MAX_S = 1.0
"""Back-off of a transition retried while Redis cannot be reached (`while_unreachable`)."""


async def while_unreachable(call: Callable[[], Awaitable[T]], clock: Clock, what: str,
                            extra: dict[str, Any]) -> tuple[T, bool]:
    """`call()` (a fenced transition) until Redis answers it, backing off from 50 ms to 1 s while
    Redis cannot be reached or does not answer in time, so what an attempt produced is kept until
    it is stored; `what` and `extra` go into the warning. The reply and whether it was retried (a
    retry may find that an earlier try landed and only its reply was lost)."""
    delay_s, retried = UNREACHABLE_RETRY_MIN_S, False
    while True:
        try:
            return await call(), retried
        except (RedisConnectionError, RedisTimeoutError) as e:
            log.warning("cannot store %s (%s); retrying in %.2f s", what, e, delay_s, extra=extra)
            await clock.sleep(delay_s)
            delay_s, retried = min(delay_s * 2, UNREACHABLE_RETRY_MAX_S), True


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
