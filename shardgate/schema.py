"""Service schema: what a registered deployment offers, as both ingress and workers see it.

Pure data. Built from an SDK endpoint manifest (`services_from_manifest`) at registration time,
stored as JSON in Redis by `shardgate.registry`, and read from an in-memory snapshot on the hot
path. Durations are kept in milliseconds (`*_ms`), `None` meaning "not set, use the default".
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
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


# Restate 1.7's defaults for everything a manifest or the admin API may override. The one copy:
# the ingress (retentions), the admin API (what it shows) and the workers (timeouts, retries) use it.
DAY_MS = 24 * 60 * 60 * 1000
DEFAULT_IDEMPOTENCY_RETENTION_MS = DAY_MS
DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS = DAY_MS
DEFAULT_JOURNAL_RETENTION_MS = DAY_MS
DEFAULT_INACTIVITY_TIMEOUT_MS = 60_000
DEFAULT_ABORT_TIMEOUT_MS = 600_000
DEFAULT_RETRY_POLICY = RetryPolicy(
    initial_interval_ms=500, max_interval_ms=60_000, max_attempts=70, exponentiation_factor=2.0,
    on_max_attempts="PAUSE",
)


@dataclass(frozen=True, slots=True)
class EffectiveRetryPolicy:
    """A retry policy with every field resolved (what an attempt actually uses)."""

    initial_interval_ms: int
    max_interval_ms: int
    max_attempts: int  # including the first attempt
    exponentiation_factor: float
    on_max_attempts: str  # "PAUSE" | "KILL"


@dataclass(frozen=True, slots=True)
class SettingDefaults:
    """The bottom of the cascade "handler, else service, else default"; Restate 1.7's values.

    Processes that make a default configurable build their own instance; everything else uses
    `RESTATE_DEFAULTS`.
    """

    idempotency_retention_ms: int = DEFAULT_IDEMPOTENCY_RETENTION_MS
    workflow_completion_retention_ms: int = DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS
    journal_retention_ms: int = DEFAULT_JOURNAL_RETENTION_MS  # 0 = journals not retained
    inactivity_timeout_ms: int = DEFAULT_INACTIVITY_TIMEOUT_MS
    abort_timeout_ms: int = DEFAULT_ABORT_TIMEOUT_MS
    enable_lazy_state: bool = False
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY  # None fields fall back to DEFAULT_RETRY_POLICY's


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
    # registered for h2c, but its endpoint serves HTTP/1.1 too: request-response attempts take the
    # lean HTTP/1.1 client, half the CPU of the h2c one (decision 39)
    http_11_attempts: bool = False
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
    def empty(cls) -> SchemaSnapshot:
        return cls(version=0, services={}, deployments={})


# --- Effective settings: the one cascade "handler, else service, else default" ------------------

RESTATE_DEFAULTS = SettingDefaults()


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """What a handler (or, without one, a service) effectively runs with; every field is set.

    `completion_retention_ms` is how long the result of an idempotent invocation or a workflow
    run is kept: the workflow completion retention for a workflow's run handler, else the
    idempotency retention (Restate `compute_retention`).
    """

    idempotency_retention_ms: int
    workflow_completion_retention_ms: int
    journal_retention_ms: int
    inactivity_timeout_ms: int
    abort_timeout_ms: int
    enable_lazy_state: bool
    retry_policy: EffectiveRetryPolicy
    completion_retention_ms: int

    @property
    def attempt_timeout_ms(self) -> int:
        """Longest one request/response attempt may take: inactivity, then abort timeout."""
        return self.inactivity_timeout_ms + self.abort_timeout_ms


def _pick(name: str, layers: tuple[Any, ...]) -> Any:
    """The first non-None `name` among `layers` (most specific first); None if none sets it."""
    for layer in layers:
        value = getattr(layer, name, None) if layer is not None else None
        if value is not None:
            return value
    return None


def _retry(layers: tuple[RetryPolicy | None, ...]) -> EffectiveRetryPolicy:
    values = {f.name: _pick(f.name, (*layers, DEFAULT_RETRY_POLICY)) for f in fields(EffectiveRetryPolicy)}
    values["exponentiation_factor"] = float(values["exponentiation_factor"])
    return EffectiveRetryPolicy(**values)


_SETTINGS_CACHE_MAX = 4096
# (id(service), id(handler), id(defaults)) -> (service, handler, defaults, their settings). The
# objects are kept with the result, so an id is never reused while its entry lives, and a hit is
# checked by identity. They are frozen, so their settings never change.
_settings_cache: dict[tuple[int, int, int], tuple[Any, Any, Any, HandlerSettings]] = {}


def effective_settings(
    service: ServiceMeta | None, handler: HandlerMeta | None = None, defaults: SettingDefaults = RESTATE_DEFAULTS
) -> HandlerSettings:
    """Resolve every overridable setting: handler value, else service value, else `defaults`.

    Retry policies are resolved field by field. With `handler=None` the result is the service's
    own effective settings (what the admin API shows per service); with `service=None` too, the
    defaults. Pure (each schema object's result is computed once: an attempt asks for it every
    time); raises nothing.
    """
    key = (id(service), id(handler), id(defaults))
    hit = _settings_cache.get(key)
    if hit is not None and hit[0] is service and hit[1] is handler and hit[2] is defaults:
        return hit[3]
    settings = _resolve_settings(service, handler, defaults)
    if len(_settings_cache) >= _SETTINGS_CACHE_MAX:
        _settings_cache.clear()  # schema versions come and go: start again rather than track age
    _settings_cache[key] = (service, handler, defaults, settings)
    return settings


def _resolve_settings(service: ServiceMeta | None, handler: HandlerMeta | None,
                      defaults: SettingDefaults) -> HandlerSettings:
    layers = (handler, service, defaults)

    def ms(name: str) -> int:
        return int(_pick(name, layers))

    workflow_run = handler is not None and handler.ty is HandlerType.WORKFLOW
    idempotency_ms, workflow_ms = ms("idempotency_retention_ms"), ms("workflow_completion_retention_ms")
    return HandlerSettings(
        idempotency_retention_ms=idempotency_ms,
        workflow_completion_retention_ms=workflow_ms,
        journal_retention_ms=ms("journal_retention_ms"),
        inactivity_timeout_ms=ms("inactivity_timeout_ms"),
        abort_timeout_ms=ms("abort_timeout_ms"),
        enable_lazy_state=bool(_pick("enable_lazy_state", layers)),
        retry_policy=_retry(tuple(None if x is None else x.retry_policy for x in layers)),
        completion_retention_ms=workflow_ms if workflow_run else idempotency_ms,
    )


# --- Endpoint manifest -> schema (registration time) -------------------------------------------

SUPPORTED_PROTOCOL_VERSIONS = (5, 7)  # invocation protocol versions we speak; a manifest must overlap
PROTOCOL_MODES = ("REQUEST_RESPONSE", "BIDI_STREAM")
SERVICE_NAME_RE = re.compile(r"^([a-zA-Z]|_[a-zA-Z0-9])[a-zA-Z0-9._-]*$")
HANDLER_NAME_RE = re.compile(r"^([a-zA-Z]|_[a-zA-Z0-9])[a-zA-Z0-9_]*$")
_DEBUG_HANDLER_TYPE = {None: "None", "EXCLUSIVE": "Some(Exclusive)", "SHARED": "Some(Shared)", "WORKFLOW": "Some(Workflow)"}


class ManifestError(Exception):
    """The endpoint manifest cannot be registered.

    `kind` lets the admin API answer with Restate's status and code: "decode" (malformed JSON
    shape: missing, mistyped or badly named fields), "bad_response" (no protocol mode,
    min > max), "unsupported_protocol" (range does not overlap `SUPPORTED_PROTOCOL_VERSIONS`),
    "reserved_name" (`restate*`, `openapi`), "invalid" (well-formed but inconsistent).
    """

    def __init__(self, message: str, kind: str = "decode") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def _get(obj: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, required: bool = False) -> Any:
    """Typed field access; JSON null counts as absent. Booleans never pass as numbers."""
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"missing field `{key}` in {where}")
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ManifestError(f"invalid type for `{key}` in {where}: expected {names}, got {json.dumps(value)}")
    return value


def _ms(obj: dict[str, Any], key: str, where: str) -> int | None:
    value: int | None = _get(obj, key, (int,), where)
    if value is not None and value < 0:
        raise ManifestError(f"invalid value for `{key}` in {where}: must be >= 0")
    return value


def _name(obj: dict[str, Any], pattern: re.Pattern[str], where: str) -> str:
    name: str = _get(obj, "name", (str,), where, required=True)
    if not pattern.match(name):
        raise ManifestError(f"name {name!r} in {where} doesn't match pattern {pattern.pattern!r}")
    return name


def _enum(obj: dict[str, Any], key: str, allowed: Any, where: str, required: bool = False) -> str | None:
    value: str | None = _get(obj, key, (str,), where, required)
    if value is not None and value not in allowed:
        raise ManifestError(f"unknown variant `{value}` for `{key}` in {where}, expected one of {sorted(allowed)}")
    return value


def _string_map(obj: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = _get(obj, key, (dict,), where) or {}
    if not all(isinstance(v, str) for v in value.values()):
        raise ManifestError(f"invalid type for `{key}` in {where}: values must be strings")
    return dict(value)


def _retry_policy(obj: dict[str, Any], where: str) -> RetryPolicy:
    attempts = _get(obj, "retryPolicyMaxAttempts", (int,), where)
    factor = _get(obj, "retryPolicyExponentiationFactor", (int, float), where)
    return RetryPolicy(
        initial_interval_ms=_ms(obj, "retryPolicyInitialInterval", where),
        max_interval_ms=_ms(obj, "retryPolicyMaxInterval", where),
        max_attempts=None if attempts is None else max(1, attempts),  # Restate: 0 means 1
        exponentiation_factor=None if factor is None else float(factor),
        on_max_attempts=_enum(obj, "retryPolicyOnMaxAttempts", ("PAUSE", "KILL"), where),
    )


def check_content_type(content_type: str) -> str | None:
    """Why an `Accept`-style input content type is unusable (Restate's rules), or None if fine."""
    major, slash, minor = content_type.strip().partition("/")
    if not slash:
        return "must contain one /"
    if major == "*" and minor != "*":
        return "the wildcard format */subType is not supported"
    return None


def endpoint_info(manifest: Any) -> tuple[str, int, int]:
    """Validate the manifest's top level; return (protocol mode, min, max protocol version).

    Raises `ManifestError`.
    """
    if not isinstance(manifest, dict):
        raise ManifestError("the manifest is not a JSON object")
    where = "the manifest"
    min_v: int = _get(manifest, "minProtocolVersion", (int,), where, required=True)
    max_v: int = _get(manifest, "maxProtocolVersion", (int,), where, required=True)
    _get(manifest, "services", (list,), where, required=True)
    if min_v < 1 or max_v < 1:
        raise ManifestError("protocol versions must be nonzero positive integers")
    mode = _enum(manifest, "protocolMode", PROTOCOL_MODES, where)
    if mode is None:
        raise ManifestError("missing protocol mode", "bad_response")
    if min_v > max_v:
        raise ManifestError(
            "Expected min protocol version to be <= max protocol version. Received min protocol "
            f"version '{min_v}', max protocol version '{max_v}'",
            "bad_response",
        )
    lo, hi = SUPPORTED_PROTOCOL_VERSIONS
    if max_v < lo or min_v > hi:
        raise ManifestError(
            f"unsupported service protocol versions: [{min_v}, {max_v}]. Supported versions by this "
            f"runtime are [{lo}, {hi}]. Please upgrade the SDK and try registering again.",
            "unsupported_protocol",
        )
    return mode, min_v, max_v


def _handler_type(service: str, svc_ty: ServiceType, raw_ty: str | None) -> HandlerType | None:
    """Restate's (service type, handler type) table; an absent `ty` takes the service's default."""
    if svc_ty is ServiceType.SERVICE and raw_ty in (None, "SHARED"):
        return None
    if svc_ty is ServiceType.VIRTUAL_OBJECT and raw_ty in (None, "EXCLUSIVE", "SHARED"):
        return HandlerType.SHARED if raw_ty == "SHARED" else HandlerType.EXCLUSIVE
    if svc_ty is ServiceType.WORKFLOW and raw_ty in (None, "SHARED", "WORKFLOW"):
        return HandlerType.WORKFLOW if raw_ty == "WORKFLOW" else HandlerType.SHARED
    raise ManifestError(
        f"invalid combination of service type and handler type '({svc_ty.value}, {_DEBUG_HANDLER_TYPE[raw_ty]})'",
        "invalid",
    )


def _handler_io(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """Input/output rules. Restate's InputRules: absent input = empty body or any content type;
    `{}` = empty body only; a jsonSchema counts only beside a contentType; `required` without a
    contentType accepts nothing. Absent output = application/json; output without contentType = none."""
    io: dict[str, Any] = {}
    inp = _get(raw, "input", (dict,), where)
    if inp is None:
        io.update(input_required=False, input_content_type="*/*", input_json_schema=None)
    else:
        ct = _get(inp, "contentType", (str,), f"{where}.input")
        if ct is not None and (why := check_content_type(ct)):
            raise ManifestError(
                f"the handler '{name}' input content-type is not valid: can't parse the content-type '{ct}': {why}",
                "invalid",
            )
        io.update(
            input_required=bool(_get(inp, "required", (bool,), f"{where}.input")),
            input_content_type=None if ct is None else ct.strip(),
            input_json_schema=inp.get("jsonSchema") if ct is not None else None,
        )
    out = _get(raw, "output", (dict,), where)
    if out is None:
        io.update(output_content_type="application/json", output_set_content_type_if_empty=False)
        io["output_json_schema"] = None
    else:
        ct = _get(out, "contentType", (str,), f"{where}.output")
        if ct is not None and not ct.isprintable():
            raise ManifestError(f"the handler '{name}' output content-type is not valid", "invalid")
        io.update(
            output_content_type=ct,
            output_set_content_type_if_empty=bool(_get(out, "setContentTypeIfEmpty", (bool,), f"{where}.output")),
            output_json_schema=out.get("jsonSchema") if ct is not None else None,
        )
    return io


def _handler(raw: Any, service: str, svc_ty: ServiceType, svc_public: bool, where: str) -> HandlerMeta:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} is not a JSON object")
    name = _name(raw, HANDLER_NAME_RE, where)
    ty = _handler_type(service, svc_ty, _enum(raw, "ty", MANIFEST_HANDLER_TYPES, where))
    wf_retention = _ms(raw, "workflowCompletionRetention", where)
    idem_retention = _ms(raw, "idempotencyRetention", where)
    if wf_retention is not None and ty is not HandlerType.WORKFLOW:
        raise ManifestError(f"{name} sets the workflow_completion_retention, but it's not a WORKFLOW handler", "invalid")
    if idem_retention is not None and ty is HandlerType.WORKFLOW:
        raise ManifestError(f"{name} sets the idempotency_retention, but it's a WORKFLOW handler", "invalid")
    private = _get(raw, "ingressPrivate", (bool,), where)
    if not svc_public and private is False:
        raise ManifestError(
            f"The service {service} is private, but the {name} is explicitly set as public. This is not "
            "supported. Please make the service public, and hide the individual handlers",
            "invalid",
        )
    return HandlerMeta(
        name=name,
        ty=ty,
        public=svc_public if private is None else not private,
        documentation=_get(raw, "documentation", (str,), where),
        metadata=_string_map(raw, "metadata", where),
        idempotency_retention_ms=idem_retention,
        journal_retention_ms=_ms(raw, "journalRetention", where),
        workflow_completion_retention_ms=wf_retention,
        inactivity_timeout_ms=_ms(raw, "inactivityTimeout", where),
        abort_timeout_ms=_ms(raw, "abortTimeout", where),
        enable_lazy_state=_get(raw, "enableLazyState", (bool,), where),
        retry_policy=_retry_policy(raw, where),
        **_handler_io(raw, name, where),
    )


def _service(raw: Any, deployment_id: str, revisions: dict[str, int], where: str) -> ServiceMeta:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} is not a JSON object")
    name = _name(raw, SERVICE_NAME_RE, where)
    if name.lower().startswith("restate") or name.lower() == "openapi":
        raise ManifestError(f"cannot insert/modify service '{name}' as it contains a reserved name", "reserved_name")
    ty = MANIFEST_SERVICE_TYPES[_enum(raw, "ty", MANIFEST_SERVICE_TYPES, where, required=True) or ""]
    raw_handlers: list[Any] = _get(raw, "handlers", (list,), where, required=True)
    public = not _get(raw, "ingressPrivate", (bool,), where)
    handlers: dict[str, HandlerMeta] = {}
    for i, h in enumerate(raw_handlers):
        meta = _handler(h, name, ty, public, f"{where}.handlers[{i}]")
        handlers[meta.name] = meta  # a duplicate name replaces the earlier one, as in Restate
    return ServiceMeta(
        name=name,
        ty=ty,
        handlers=handlers,
        deployment_id=deployment_id,
        revision=revisions.get(name, 1),
        public=public,
        documentation=_get(raw, "documentation", (str,), where),
        metadata=_string_map(raw, "metadata", where),
        idempotency_retention_ms=_ms(raw, "idempotencyRetention", where),
        journal_retention_ms=_ms(raw, "journalRetention", where),
        inactivity_timeout_ms=_ms(raw, "inactivityTimeout", where),
        abort_timeout_ms=_ms(raw, "abortTimeout", where),
        enable_lazy_state=_get(raw, "enableLazyState", (bool,), where),
        retry_policy=_retry_policy(raw, where),
    )


def services_from_manifest(manifest: Any, deployment_id: str, revisions: dict[str, int]) -> list[ServiceMeta]:
    """Validate an endpoint manifest (v1-v4) and build its services.

    `revisions` gives the revision to stamp on each service by name (absent: 1). Unknown fields
    are ignored (Restate 1.7 rejects them; the protocol spec asks runtimes to tolerate them).
    Raises `ManifestError`.
    """
    endpoint_info(manifest)
    services: dict[str, ServiceMeta] = {}
    for i, raw in enumerate(manifest["services"]):
        svc = _service(raw, deployment_id, revisions, f"services[{i}]")
        services[svc.name] = svc
    return list(services.values())


# --- JSON (de)serialisation for storage ----------------------------------------------------------

_RETRY_FIELDS = frozenset(f.name for f in fields(RetryPolicy))
_HANDLER_FIELDS = frozenset(f.name for f in fields(HandlerMeta))
_SERVICE_FIELDS = frozenset(f.name for f in fields(ServiceMeta))
_DEPLOYMENT_FIELDS = frozenset(f.name for f in fields(Deployment))


def _retry_from_dict(d: dict[str, Any] | None) -> RetryPolicy:
    return RetryPolicy(**{k: v for k, v in (d or {}).items() if k in _RETRY_FIELDS})


def handler_to_dict(h: HandlerMeta) -> dict[str, Any]:
    """JSON-ready dict of a handler (field names as in the dataclass)."""
    d = asdict(h)
    d["ty"] = None if h.ty is None else h.ty.value
    return d


def handler_from_dict(d: dict[str, Any]) -> HandlerMeta:
    """Inverse of `handler_to_dict`; unknown keys are ignored."""
    kw = {k: v for k, v in d.items() if k in _HANDLER_FIELDS}
    kw["ty"] = None if d.get("ty") is None else HandlerType(d["ty"])
    kw["retry_policy"] = _retry_from_dict(d.get("retry_policy"))
    return HandlerMeta(**kw)


def service_to_dict(s: ServiceMeta) -> dict[str, Any]:
    """JSON-ready dict of a service; handlers become a list in declaration order."""
    d = asdict(s)
    d["ty"] = s.ty.value
    d["handlers"] = [handler_to_dict(h) for h in s.handlers.values()]
    return d


def service_from_dict(d: dict[str, Any]) -> ServiceMeta:
    """Inverse of `service_to_dict`; unknown keys are ignored."""
    kw = {k: v for k, v in d.items() if k in _SERVICE_FIELDS}
    kw["ty"] = ServiceType(d["ty"])
    kw["handlers"] = {h["name"]: handler_from_dict(h) for h in d.get("handlers", [])}
    kw["retry_policy"] = _retry_from_dict(d.get("retry_policy"))
    return ServiceMeta(**kw)


def deployment_to_dict(dep: Deployment) -> dict[str, Any]:
    """JSON-ready dict of a deployment."""
    d = asdict(dep)
    d["services"] = list(dep.services)
    return d


def deployment_from_dict(d: dict[str, Any]) -> Deployment:
    """Inverse of `deployment_to_dict`; unknown keys are ignored."""
    kw = {k: v for k, v in d.items() if k in _DEPLOYMENT_FIELDS}
    kw["services"] = tuple(d.get("services", ()))
    return Deployment(**kw)


def snapshot_to_json(snapshot: SchemaSnapshot) -> str:
    """Serialise a whole snapshot (services and deployments) to one JSON document."""
    return json.dumps(
        {
            "version": snapshot.version,
            "services": [service_to_dict(s) for s in snapshot.services.values()],
            "deployments": [deployment_to_dict(d) for d in snapshot.deployments.values()],
        },
        separators=(",", ":"),
    )


def snapshot_from_json(text: str | bytes) -> SchemaSnapshot:
    """Inverse of `snapshot_to_json`."""
    d = json.loads(text)
    services = (service_from_dict(s) for s in d.get("services", []))
    deployments = (deployment_from_dict(x) for x in d.get("deployments", []))
    return SchemaSnapshot(
        version=int(d.get("version", 0)),
        services={s.name: s for s in services},
        deployments={x.id: x for x in deployments},
    )
