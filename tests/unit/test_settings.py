"""The one settings cascade (`shardgate.schema.effective_settings`): handler, else service, else default."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardgate.schema import (
    DEFAULT_ABORT_TIMEOUT_MS,
    DEFAULT_IDEMPOTENCY_RETENTION_MS,
    DEFAULT_INACTIVITY_TIMEOUT_MS,
    DEFAULT_JOURNAL_RETENTION_MS,
    DEFAULT_RETRY_POLICY,
    DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS,
    RESTATE_DEFAULTS,
    EffectiveRetryPolicy,
    HandlerMeta,
    HandlerType,
    RetryPolicy,
    ServiceMeta,
    ServiceType,
    effective_settings,
)


def _service(ty: ServiceType = ServiceType.SERVICE, *handlers: HandlerMeta, **kw: Any) -> ServiceMeta:
    return ServiceMeta("S", ty, {h.name: h for h in handlers}, "dp", **kw)


def test_nothing_set_gives_restates_defaults() -> None:
    s = effective_settings(None)
    assert (s.idempotency_retention_ms, s.workflow_completion_retention_ms, s.journal_retention_ms,
            s.inactivity_timeout_ms, s.abort_timeout_ms, s.enable_lazy_state) == (
        DEFAULT_IDEMPOTENCY_RETENTION_MS, DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS, DEFAULT_JOURNAL_RETENTION_MS,
        DEFAULT_INACTIVITY_TIMEOUT_MS, DEFAULT_ABORT_TIMEOUT_MS, False)
    assert s.retry_policy == EffectiveRetryPolicy(500, 60_000, 70, 2.0, "PAUSE")
    assert (s.retry_policy.initial_interval_ms, s.retry_policy.max_attempts) == (
        DEFAULT_RETRY_POLICY.initial_interval_ms, DEFAULT_RETRY_POLICY.max_attempts)
    handler = HandlerMeta("h", None)
    assert effective_settings(_service(ServiceType.SERVICE, handler), handler) == s


def test_handler_beats_service_beats_default_per_setting() -> None:
    handler = HandlerMeta("h", None, idempotency_retention_ms=1_000, abort_timeout_ms=7, enable_lazy_state=False)
    svc = _service(ServiceType.SERVICE, handler, idempotency_retention_ms=2_000, journal_retention_ms=3_000,
                   abort_timeout_ms=8, inactivity_timeout_ms=9, enable_lazy_state=True)
    s = effective_settings(svc, handler)
    assert (s.idempotency_retention_ms, s.journal_retention_ms, s.abort_timeout_ms, s.inactivity_timeout_ms) == (
        1_000, 3_000, 7, 9)
    assert s.enable_lazy_state is False  # an explicit False on the handler beats the service's True
    assert s.attempt_timeout_ms == 7 + 9
    own = effective_settings(svc)  # no handler: the service's own effective values
    assert (own.idempotency_retention_ms, own.abort_timeout_ms, own.enable_lazy_state) == (2_000, 8, True)


def test_zero_is_a_value_not_unset() -> None:
    handler = HandlerMeta("h", None, journal_retention_ms=0)
    svc = _service(ServiceType.SERVICE, handler, journal_retention_ms=5_000, idempotency_retention_ms=0)
    s = effective_settings(svc, handler)
    assert (s.journal_retention_ms, s.idempotency_retention_ms) == (0, 0)


def test_retry_policy_resolves_field_by_field() -> None:
    handler = HandlerMeta("h", HandlerType.SHARED, retry_policy=RetryPolicy(max_attempts=3, on_max_attempts="KILL"))
    svc = _service(ServiceType.VIRTUAL_OBJECT, handler,
                   retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=5, exponentiation_factor=3))
    assert effective_settings(svc, handler).retry_policy == EffectiveRetryPolicy(
        initial_interval_ms=100, max_interval_ms=60_000, max_attempts=3, exponentiation_factor=3.0,
        on_max_attempts="KILL")
    assert effective_settings(svc).retry_policy.max_attempts == 5
    assert isinstance(effective_settings(svc).retry_policy.exponentiation_factor, float)


def test_completion_retention_of_a_workflow_run_is_the_workflow_retention() -> None:
    run = HandlerMeta("run", HandlerType.WORKFLOW, workflow_completion_retention_ms=4_000)
    shared = HandlerMeta("status", HandlerType.SHARED)
    svc = _service(ServiceType.WORKFLOW, run, shared, workflow_completion_retention_ms=5_000,
                   idempotency_retention_ms=6_000)
    assert effective_settings(svc, run).completion_retention_ms == 4_000
    assert effective_settings(svc, shared).completion_retention_ms == 6_000  # idempotent shared call
    assert effective_settings(svc, shared).workflow_completion_retention_ms == 5_000
    assert effective_settings(_service(ServiceType.WORKFLOW), run).completion_retention_ms == 4_000


def test_configured_defaults_are_the_bottom_of_the_cascade() -> None:
    defaults = replace(RESTATE_DEFAULTS, journal_retention_ms=0, idempotency_retention_ms=60_000,
                       enable_lazy_state=True, retry_policy=RetryPolicy(max_attempts=2))
    handler = HandlerMeta("h", None)
    s = effective_settings(_service(ServiceType.SERVICE, handler), handler, defaults)
    assert (s.journal_retention_ms, s.idempotency_retention_ms, s.enable_lazy_state) == (0, 60_000, True)
    # fields the configured default leaves unset fall back to Restate's
    assert (s.retry_policy.max_attempts, s.retry_policy.initial_interval_ms) == (2, 500)


def test_each_schema_objects_settings_are_resolved_once_and_a_new_object_gets_its_own() -> None:
    from shardgate import schema

    handler = HandlerMeta("h", None, journal_retention_ms=1_000)
    svc = _service(ServiceType.SERVICE, handler)
    first = effective_settings(svc, handler)
    assert effective_settings(svc, handler) is first  # the same objects: the result computed once
    changed = replace(handler, journal_retention_ms=2_000)  # a new schema version's handler
    assert effective_settings(svc, changed).journal_retention_ms == 2_000
    assert effective_settings(svc, handler).journal_retention_ms == 1_000
    for n in range(schema._SETTINGS_CACHE_MAX + 10):  # bounded
        effective_settings(_service(ServiceType.SERVICE, idempotency_retention_ms=n))
    assert len(schema._settings_cache) <= schema._SETTINGS_CACHE_MAX
