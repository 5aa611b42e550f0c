"""Admin API response bodies: Restate's ServiceMetadata, HandlerMetadata and DeploymentResponse.

Durations are jiff's compact friendly strings ("1d", "1s 500ms"). A service shows its effective
settings (service value, else the default, via `shardgate.schema.effective_settings`); a
handler shows only what it overrides itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ingress.admin.context import AdminSettings
from shardgate.registry import DeploymentRecord
from shardgate.schema import (
    Deployment,
    HandlerMeta,
    RetryPolicy,
    ServiceMeta,
    ServiceType,
    effective_settings,
)

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def friendly_ms(ms: int) -> str:
    """jiff's compact friendly duration, largest unit days: 90061001 -> "1d 1h 1m 1s 1ms"."""
    parts = []
    for unit, size in _UNITS:
        n, ms = divmod(ms, size)
        if n > 0:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or "0s"


def _json_description(schema: Any) -> str | None:
    if isinstance(schema, dict) and isinstance(schema.get("title"), str):
        return f"JSON '{schema['title']}'"
    if isinstance(schema, dict) and isinstance(schema.get("type"), str):
        return f"JSON {schema['type']}"
    return None


def input_description(h: HandlerMeta) -> str:
    """Restate's display of a handler's InputRules ("none", "*/*", "JSON string" ...)."""
    if h.input_content_type is None:
        return "<invalid rules>" if h.input_required else "none"
    return _json_description(h.input_json_schema) or h.input_content_type


def output_description(h: HandlerMeta) -> str:
    """Restate's display of a handler's OutputRules."""
    if h.output_content_type is None:
        return "none"
    optional = "optional " if h.output_set_content_type_if_empty else ""
    return _json_description(h.output_json_schema) or optional + h.output_content_type


def request_response(deployment: Deployment | None) -> bool:
    """Whether invocations of the deployment's services run in request/response mode."""
    return deployment is None or deployment.protocol_mode == "REQUEST_RESPONSE"


def _rt0021(ms: int, what: str) -> list[dict[str, str]]:
    """Restate's info entry: an inactivity timeout does nothing in request/response mode."""
    return [{"code": "RT0021", "message": f"The configured inactivity_timeout {friendly_ms(ms)} will not be "
             f"applied because the {what} is exposed in Request/Response mode."}]


def _handler_retry(r: RetryPolicy) -> dict[str, Any]:
    """A handler's own retry overrides; `max_attempts` is always shown (null when unset)."""
    retry: dict[str, Any] = {}
    if r.initial_interval_ms is not None:
        retry["initial_interval"] = friendly_ms(r.initial_interval_ms)
    if r.exponentiation_factor is not None:
        retry["exponentiation_factor"] = float(r.exponentiation_factor)
    retry["max_attempts"] = r.max_attempts
    if r.max_interval_ms is not None:
        retry["max_interval"] = friendly_ms(r.max_interval_ms)
    if r.on_max_attempts is not None:
        retry["on_max_attempts"] = r.on_max_attempts.capitalize()
    return retry


def render_handler(h: HandlerMeta, rr: bool) -> dict[str, Any]:
    """A handler as Restate's HandlerMetadata (unset overrides omitted); `rr` = request/response."""
    d: dict[str, Any] = {"name": h.name}
    if h.ty is not None:
        d["ty"] = h.ty.value
    if h.documentation is not None:
        d["documentation"] = h.documentation
    if h.metadata:
        d["metadata"] = h.metadata
    for key, ms in (("idempotency_retention", h.idempotency_retention_ms), ("journal_retention", h.journal_retention_ms),
                    ("inactivity_timeout", None if rr else h.inactivity_timeout_ms),
                    ("abort_timeout", h.abort_timeout_ms)):
        if ms is not None:
            d[key] = friendly_ms(ms)
    if h.enable_lazy_state is not None:
        d["enable_lazy_state"] = h.enable_lazy_state
    d.update(public=h.public, input_description=input_description(h), output_description=output_description(h))
    if h.input_content_type is not None and h.input_json_schema is not None:
        d["input_json_schema"] = h.input_json_schema
    if h.output_content_type is not None and h.output_json_schema is not None:
        d["output_json_schema"] = h.output_json_schema
    d["retry_policy"] = _handler_retry(h.retry_policy)
    if rr and h.inactivity_timeout_ms is not None:
        d["info"] = _rt0021(h.inactivity_timeout_ms, "handler")
    return d


def _service_settings(svc: ServiceMeta, rr: bool, s: AdminSettings) -> dict[str, Any]:
    """The service's effective retentions, timeouts, lazy state and retry policy."""
    eff = effective_settings(svc, None, s.defaults)
    d: dict[str, Any] = {"idempotency_retention": friendly_ms(eff.idempotency_retention_ms)}
    if svc.ty is ServiceType.WORKFLOW:  # the run handler's own value wins over the service's
        run = next((h for h in svc.handlers.values() if h.workflow_completion_retention_ms is not None), None)
        run_ms = effective_settings(svc, run, s.defaults).workflow_completion_retention_ms
        d["workflow_completion_retention"] = friendly_ms(run_ms)
    if eff.journal_retention_ms:  # 0 = journals not retained: field omitted
        d["journal_retention"] = friendly_ms(eff.journal_retention_ms)
    d["inactivity_timeout"] = friendly_ms(0 if rr else eff.inactivity_timeout_ms)
    d["abort_timeout"] = friendly_ms(eff.abort_timeout_ms)
    d["enable_lazy_state"] = eff.enable_lazy_state
    r = eff.retry_policy
    d["retry_policy"] = {
        "initial_interval": friendly_ms(r.initial_interval_ms), "exponentiation_factor": r.exponentiation_factor,
        "max_attempts": r.max_attempts, "max_interval": friendly_ms(r.max_interval_ms),
        "on_max_attempts": r.on_max_attempts.capitalize(),
    }
    return d


def render_service(svc: ServiceMeta, deployment: Deployment | None, s: AdminSettings) -> dict[str, Any]:
    """A service as Restate's ServiceMetadata, defaults filled in from `s.defaults`."""
    rr = request_response(deployment)
    d: dict[str, Any] = {"name": svc.name, "ty": svc.ty.value,
                         "handlers": [render_handler(h, rr) for h in svc.handlers.values()]}
    if svc.documentation is not None:
        d["documentation"] = svc.documentation
    if svc.metadata:
        d["metadata"] = svc.metadata
    d.update(deployment_id=svc.deployment_id, revision=svc.revision, public=svc.public)
    d.update(_service_settings(svc, rr, s))
    if rr and svc.inactivity_timeout_ms is not None:
        d["info"] = _rt0021(svc.inactivity_timeout_ms, "service")
    return d


def _created_at(ms: int) -> str:
    """RFC 3339 UTC with nine fractional digits, as Restate prints `created_at`."""
    created = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return created.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}000000Z"


def render_deployment(record: DeploymentRecord, s: AdminSettings, detailed: bool) -> dict[str, Any]:
    """A deployment as Restate's (Detailed)DeploymentResponse."""
    dep = record.deployment
    d: dict[str, Any] = {
        "id": dep.id, "uri": dep.uri,
        "protocol_type": "BidiStream" if dep.protocol_mode == "BIDI_STREAM" else "RequestResponse",
        "http_version": "HTTP/1.1" if dep.use_http_11 else "HTTP/2.0",
    }
    if dep.additional_headers:
        d["additional_headers"] = dep.additional_headers
    if dep.metadata:
        d["metadata"] = dep.metadata
    d["created_at"] = _created_at(dep.created_at_ms)
    d.update(min_protocol_version=dep.min_protocol_version, max_protocol_version=dep.max_protocol_version)
    if dep.sdk_version is not None:
        d["sdk_version"] = dep.sdk_version
    svcs = record.services.values()
    d["services"] = ([render_service(x, dep, s) for x in svcs] if detailed
                     else [{"name": x.name, "revision": x.revision} for x in svcs])
    return d


def render_registration(dep: Deployment, services: list[ServiceMeta], s: AdminSettings) -> dict[str, Any]:
    """The body of a POST /deployments answer (Restate's RegisterDeploymentResponse)."""
    d: dict[str, Any] = {"id": dep.id, "services": [render_service(x, dep, s) for x in services],
                         "min_protocol_version": dep.min_protocol_version,
                         "max_protocol_version": dep.max_protocol_version}
    if dep.sdk_version is not None:
        d["sdk_version"] = dep.sdk_version
    return d
