"""Retry policy: Restate's defaults, overridden field by field by service then handler."""

from __future__ import annotations

from partition.retry import policy_for
from shardgate.schema import (
    DEFAULT_RETRY_POLICY,
    HandlerMeta,
    HandlerType,
    RetryPolicy,
    ServiceMeta,
    ServiceType,
)


def _service(policy: RetryPolicy) -> ServiceMeta:
    return ServiceMeta(name="S", ty=ServiceType.SERVICE, handlers={}, deployment_id="dp", retry_policy=policy)


def test_defaults_are_restates() -> None:
    p = policy_for(None, None)
    assert (p.initial_interval_ms, p.exponentiation_factor, p.max_interval_ms, p.max_attempts, p.on_max_attempts) == (
        DEFAULT_RETRY_POLICY.initial_interval_ms, 2.0, 60_000, 70, "PAUSE")
    assert [p.delay_ms(n) for n in (1, 2, 3, 10)] == [500, 1000, 2000, 60_000]
    assert not p.exhausted(69) and p.exhausted(70)


def test_handler_beats_service_beats_default_per_field() -> None:
    svc = _service(RetryPolicy(initial_interval_ms=100, max_attempts=5))
    handler = HandlerMeta(name="h", ty=HandlerType.SHARED, retry_policy=RetryPolicy(max_attempts=3,
                                                                                      on_max_attempts="KILL"))
    p = policy_for(svc, handler)
    assert (p.initial_interval_ms, p.max_attempts, p.on_max_attempts, p.max_interval_ms) == (100, 3, "KILL", 60_000)
    assert policy_for(svc, None).max_attempts == 5
