"""Service schema: what a registered deployment offers, as both ingress and workers see it.

Pure data. Built from an SDK endpoint manifest (`from_manifest`) at registration time, stored
as JSON in Redis by `shardgate.registry`, and read from an in-memory snapshot on the hot path.
Durations are kept in milliseconds (`*_ms`), `None` meaning "not set, use the default".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ServiceType(str, Enum):
    SERVICE = "Service"  # plain, unkeyed service
    VIRTUAL_OBJECT = "VirtualObject"  # keyed, exclusive handlers serialised per key
    WORKFLOW = "Workflow"  # keyed, `run` once per key, shared handlers beside it

    @property
    def keyed(self) -> bool:
        return self is not ServiceType.SERVICE


class HandlerType(str, Enum):
    EXCLUSIVE = "Exclusive"  # takes the per-key lock
    SHARED = "Shared"  # never waits for the lock; read-only state
    WORKFLOW = "Workflow"  # the workflow's main handler (runs once per key)


MANIFEST_SERVICE_TYPES = {
    "SERVICE": ServiceType.SERVICE,
    "VIRTUAL_OBJECT": ServiceType.VIRTUAL_OBJECT,
    "WORKFLOW": ServiceType.WORKFLOW,
}
MANIFEST_HANDLER_TYPES = {
    "EXCLUSIVE": HandlerType.EXCLUSIVE,
    "SHARED": HandlerType.SHARED,
    "WORKFLOW": HandlerType.WORKFLOW,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-service/handler retry policy override (manifest v4); None fields use the defaults."""

    initial_interval_ms: int | None = None
    max_interval_ms: int | None = None
    max_attempts: int | None = None
    exponentiation_factor: float | None = None
    on_max_attempts: str | None = None  # "PAUSE" | "KILL"


@dataclass(frozen=True, slots=True)
class HandlerMeta:
    """One handler of a service, with the input/output rules the ingress enforces."""

    name: str
    ty: HandlerType | None  # None for plain services
    # Input rules: input_content_type None means "no body and no content-type allowed".
    input_required: bool = False
    input_content_type: str | None = "*/*"
    input_json_schema: Any = None
    output_content_type: str | None = "application/json"
    output_set_content_type_if_empty: bool = False
    output_json_schema: Any = None
    public: bool = True
    documentation: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_retention_ms: int | None = None
    journal_retention_ms: int | None = None
    workflow_completion_retention_ms: int | None = None
    inactivity_timeout_ms: int | None = None
    abort_timeout_ms: int | None = None
    enable_lazy_state: bool | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class ServiceMeta:
    """One registered service, pinned to the deployment that registered it last."""

    name: str
    ty: ServiceType
    handlers: dict[str, HandlerMeta]
    deployment_id: str
    revision: int = 1
    public: bool = True
    documentation: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_retention_ms: int | None = None
    journal_retention_ms: int | None = None
    workflow_completion_retention_ms: int | None = None
    inactivity_timeout_ms: int | None = None
    abort_timeout_ms: int | None = None
    enable_lazy_state: bool | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A registered SDK endpoint."""

    id: str  # "dp_..."
    uri: str  # base URL, e.g. http://127.0.0.1:9080
    protocol_mode: str  # "REQUEST_RESPONSE" | "BIDI_STREAM"
    min_protocol_version: int
    max_protocol_version: int
    additional_headers: dict[str, str] = field(default_factory=dict)
    use_http_11: bool = True
    sdk_version: str | None = None
    created_at_ms: int = 0
    services: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SchemaSnapshot:
    """An immutable view of the whole registry at one version."""

    version: int
    services: dict[str, ServiceMeta]
    deployments: dict[str, Deployment]

    @classmethod
    def empty(cls) -> "SchemaSnapshot":
        return cls(version=0, services={}, deployments={})
