"""Admin API (port 9070): register deployments, inspect and tune services.

Mirrors Restate 1.7's admin REST API (`crates/admin/src/rest_api/{deployments,services}.rs`):
same paths (also under `/v2`..`/v4`), JSON field names, duration strings ("1d", "1s 500ms"),
statuses and error texts, errors as `{"message", "restate_code"}`. Deviations: request-shape
errors (which Restate answers in text/plain) use the same JSON error shape; unknown manifest
fields are tolerated; HTTP/1.1 only. Reads go to Redis (one HGETALL) so they see every write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ingress.delay import DelayError, parse_delay_ms
from shardgate.discovery import DiscoveryError, discover_endpoint
from shardgate.registry import (
    DeploymentRecord,
    InvalidServiceChange,
    RegistryBusy,
    RegistryCache,
    RegistryState,
    RegistryStore,
    RegistryUnavailable,
    ServiceNotFound,
    ServiceTypeChanged,
    deployment_id_error,
    new_deployment_id,
)
from shardgate.schema import (
    DEFAULT_ABORT_TIMEOUT_MS,
    DEFAULT_IDEMPOTENCY_RETENTION_MS,
    DEFAULT_INACTIVITY_TIMEOUT_MS,
    DEFAULT_JOURNAL_RETENTION_MS,
    DEFAULT_RETRY_POLICY,
    DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS,
    Deployment,
    HandlerMeta,
    ManifestError,
    RetryPolicy,
    ServiceMeta,
    ServiceType,
    endpoint_info,
    services_from_manifest,
)

logger = logging.getLogger(__name__)

API_VERSIONS = (2, 3, 4)  # served under /v2 .. /v4; unprefixed paths behave as the newest
DESERIALIZE = "Failed to deserialize the JSON body into the target type: "
UNTAGGED = DESERIALIZE + "data did not match any variant of untagged enum RegisterDeploymentRequest"
FEATURES = {"vqueues": False, "protocol_v7": False}
DURATION_FIELDS = ("idempotency_retention", "workflow_completion_retention", "journal_retention",
                   "inactivity_timeout", "abort_timeout")
_MANIFEST_ERRORS = {  # ManifestError.kind -> (status, restate code, message prefix)
    "decode": (500, None, "received a bad response from the SDK that cannot be decoded: "),
    "bad_response": (500, "META0013", "[META0013] [META0013] received a bad response from the SDK: "),
    "unsupported_protocol": (500, "META0012", "[META0012] [META0012] "),
    "reserved_name": (400, "META0005", "[META0005] "),
    "invalid": (400, None, ""),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """What the admin API needs besides the registry; defaults are Restate 1.7's."""

    advertised_ingress_url: str  # shown by GET /version (and later in OpenAPI documents)
    discovery_timeout_s: float = 10.0  # whole discovery, retries included, then 500 META0003
    server_version: str = "1.7.12"  # `version` of GET /version (the Restate release we mirror)
    default_idempotency_retention_ms: int = DEFAULT_IDEMPOTENCY_RETENTION_MS
    default_journal_retention_ms: int = DEFAULT_JOURNAL_RETENTION_MS  # 0 = journals not retained (field omitted)
    default_workflow_completion_retention_ms: int = DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS
    default_inactivity_timeout_ms: int = DEFAULT_INACTIVITY_TIMEOUT_MS
    default_abort_timeout_ms: int = DEFAULT_ABORT_TIMEOUT_MS
    default_retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY
    signer: Any = None  # request identity (partition.identity.RequestSigner) for discovery; None = unsigned


class AdminError(Exception):
    """An answer in the admin error shape."""

    def __init__(self, status: int, message: str, restate_code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.restate_code = status, message, restate_code


# --- rendering (Restate's ServiceMetadata / HandlerMetadata / DeploymentResponse) ----------------

def friendly_ms(ms: int) -> str:
    """jiff's compact friendly duration, largest unit days: 90061001 -> "1d 1h 1m 1s 1ms"."""
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
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


def _rt0021(ms: int, what: str) -> dict[str, str]:
    return {"code": "RT0021", "message": f"The configured inactivity_timeout {friendly_ms(ms)} will not be "
            f"applied because the {what} is exposed in Request/Response mode."}


def render_handler(h: HandlerMeta, request_response: bool) -> dict[str, Any]:
    """A handler as Restate's HandlerMetadata (unset overrides omitted)."""
    d: dict[str, Any] = {"name": h.name}
    if h.ty is not None:
        d["ty"] = h.ty.value
    if h.documentation is not None:
        d["documentation"] = h.documentation
    if h.metadata:
        d["metadata"] = h.metadata
    for key, ms in (("idempotency_retention", h.idempotency_retention_ms), ("journal_retention", h.journal_retention_ms),
                    ("inactivity_timeout", None if request_response else h.inactivity_timeout_ms),
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
    r = h.retry_policy
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
    d["retry_policy"] = retry
    if request_response and h.inactivity_timeout_ms is not None:
        d["info"] = [_rt0021(h.inactivity_timeout_ms, "handler")]
    return d


def render_service(svc: ServiceMeta, deployment: Deployment | None, s: AdminSettings) -> dict[str, Any]:
    """A service as Restate's ServiceMetadata, defaults filled in from `s`."""
    rr = deployment is None or deployment.protocol_mode == "REQUEST_RESPONSE"
    d: dict[str, Any] = {"name": svc.name, "ty": svc.ty.value,
                         "handlers": [render_handler(h, rr) for h in svc.handlers.values()]}
    if svc.documentation is not None:
        d["documentation"] = svc.documentation
    if svc.metadata:
        d["metadata"] = svc.metadata
    d.update(deployment_id=svc.deployment_id, revision=svc.revision, public=svc.public)
    d["idempotency_retention"] = friendly_ms(_or(svc.idempotency_retention_ms, s.default_idempotency_retention_ms))
    if svc.ty is ServiceType.WORKFLOW:
        own = next((h.workflow_completion_retention_ms for h in svc.handlers.values()
                    if h.workflow_completion_retention_ms is not None), svc.workflow_completion_retention_ms)
        d["workflow_completion_retention"] = friendly_ms(_or(own, s.default_workflow_completion_retention_ms))
    journal_ms = _or(svc.journal_retention_ms, s.default_journal_retention_ms)
    if journal_ms:
        d["journal_retention"] = friendly_ms(journal_ms)
    d["inactivity_timeout"] = friendly_ms(0 if rr else _or(svc.inactivity_timeout_ms, s.default_inactivity_timeout_ms))
    d["abort_timeout"] = friendly_ms(_or(svc.abort_timeout_ms, s.default_abort_timeout_ms))
    d["enable_lazy_state"] = bool(svc.enable_lazy_state)
    r, dr = svc.retry_policy, s.default_retry_policy
    d["retry_policy"] = {
        "initial_interval": friendly_ms(_or(r.initial_interval_ms, dr.initial_interval_ms or 0)),
        "exponentiation_factor": float(_or(r.exponentiation_factor, dr.exponentiation_factor or 2.0)),
        "max_attempts": _or(r.max_attempts, dr.max_attempts),
        "max_interval": friendly_ms(_or(r.max_interval_ms, dr.max_interval_ms or 0)),
        "on_max_attempts": (r.on_max_attempts or dr.on_max_attempts or "PAUSE").capitalize(),
    }
    if rr and svc.inactivity_timeout_ms is not None:
        d["info"] = [_rt0021(svc.inactivity_timeout_ms, "service")]
    return d


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


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
    created = datetime.fromtimestamp(dep.created_at_ms // 1000, tz=UTC)
    d["created_at"] = created.strftime("%Y-%m-%dT%H:%M:%S") + f".{dep.created_at_ms % 1000:03d}000000Z"
    d.update(min_protocol_version=dep.min_protocol_version, max_protocol_version=dep.max_protocol_version)
    if dep.sdk_version is not None:
        d["sdk_version"] = dep.sdk_version
    svcs = record.services.values()
    d["services"] = ([render_service(x, dep, s) for x in svcs] if detailed
                     else [{"name": x.name, "revision": x.revision} for x in svcs])
    return d


# --- request parsing ------------------------------------------------------------------------------

async def _json_body(request: web.Request) -> Any:
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        raise AdminError(415, "Expected request with `Content-Type: application/json`")
    try:
        return json.loads(await request.read())
    except ValueError as exc:
        raise AdminError(400, f"Failed to parse the request body as JSON: {exc}") from None


def _string_map(value: Any, headers: bool = False) -> dict[str, str]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if ok and headers:
        ok = all(k and k.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in k)
                 and "\r" not in v and "\n" not in v for k, v in value.items())
    if not ok:
        raise AdminError(422, UNTAGGED)
    return {k.lower(): v for k, v in value.items()} if headers else dict(value)


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise AdminError(422, UNTAGGED)
    return value


def _normalize_uri(raw: Any) -> str:
    if not isinstance(raw, str):
        raise AdminError(422, UNTAGGED)
    if "://" not in raw:
        raise AdminError(400, f"The request field 'uri' is invalid. Reason: The provided uri {raw} is not "
                         "absolute, only absolute URIs can be used.")
    try:
        url = URL(raw)
    except ValueError:
        raise AdminError(422, UNTAGGED) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise AdminError(400, f"The request field 'uri' is invalid. Reason: shardgate supports only absolute "
                         f"http:// and https:// deployment URIs, got {raw}")
    return str(URL.build(scheme=url.scheme, authority=url.raw_authority, path=url.raw_path or "/",
                         query_string=url.raw_query_string, encoded=True))


def _duration_ms(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AdminError(422, f"{DESERIALIZE}{key}: invalid type: {json.dumps(value)}, expected a "
                         "human-friendly duration string")
    try:
        return parse_delay_ms(value)
    except DelayError as exc:
        raise AdminError(422, f"{DESERIALIZE}{key}: {exc}") from None


# --- handlers -------------------------------------------------------------------------------------

class AdminApi:
    """Route handlers; every registry read is fresh from Redis, every write is installed in the cache."""

    def __init__(self, store: RegistryStore, cache: RegistryCache, http: aiohttp.ClientSession,
                 settings: AdminSettings) -> None:
        self.store, self.cache, self.http, self.settings = store, cache, http, settings

    async def _state(self) -> RegistryState:
        state = await self.store.load_state()
        self.cache.install(state)
        return state

    def _register_response(self, dep: Deployment, services: list[ServiceMeta]) -> dict[str, Any]:
        d: dict[str, Any] = {"id": dep.id, "services": [render_service(x, dep, self.settings) for x in services],
                             "min_protocol_version": dep.min_protocol_version,
                             "max_protocol_version": dep.max_protocol_version}
        if dep.sdk_version is not None:
            d["sdk_version"] = dep.sdk_version
        return d

    async def _discover(self, uri: str, headers: dict[str, str]) -> tuple[Any, str | None]:
        try:
            found = await discover_endpoint(self.http, uri, headers, self.settings.discovery_timeout_s,
                                            self.settings.signer)
        except DiscoveryError as exc:
            code = exc.restate_code
            raise AdminError(500, f"[{code}] [{code}] {exc.message}" if code else exc.message, code) from None
        return found.manifest, found.sdk_version

    async def register_deployment(self, request: web.Request, api_version: int) -> web.Response:
        """POST /deployments: discover, then create (201) or re-register (200) a deployment."""
        body = await _json_body(request)
        if not isinstance(body, dict) or not ("uri" in body or "arn" in body):
            raise AdminError(422, UNTAGGED)
        if "uri" not in body:
            raise AdminError(400, "The request field 'arn' is invalid. Reason: Lambda deployments are not supported")
        uri = _normalize_uri(body["uri"])
        headers, metadata = _string_map(body.get("additional_headers"), True), _string_map(body.get("metadata"))
        force, breaking, dry_run = _flag(body, "force"), _flag(body, "breaking"), _flag(body, "dry_run")
        _flag(body, "use_http_11")  # validated only: discovery and invocations always use HTTP/1.1
        force = (api_version == 2) if force is None else force  # Restate: force defaults on only in v2
        if not force and (existing := (await self._state()).find_by_uri(uri)) is not None:
            return self._registered(api_version, "unchanged", existing.deployment, list(existing.services.values()))
        manifest, sdk_version = await self._discover(uri, headers)
        dep_id = new_deployment_id()
        try:
            mode, min_v, max_v = endpoint_info(manifest)
            services = services_from_manifest(manifest, dep_id, {})
        except ManifestError as exc:
            status, code, prefix = _MANIFEST_ERRORS.get(exc.kind, (500, None, ""))
            raise AdminError(status, prefix + exc.message, code) from None
        deployment = Deployment(id=dep_id, uri=uri, protocol_mode=mode, min_protocol_version=min_v,
                                max_protocol_version=max_v, additional_headers=headers, use_http_11=True,
                                sdk_version=sdk_version, metadata=metadata)
        reg = await self.store.register(deployment, services, force, breaking=bool(breaking),
                                        dry_run=bool(dry_run), manifest=manifest)
        if not dry_run:
            self.cache.install(reg.state)
        return self._registered(api_version, reg.outcome, reg.deployment, reg.services)

    def _registered(self, api_version: int, outcome: str, dep: Deployment, services: list[ServiceMeta]) -> web.Response:
        if outcome == "unchanged" and api_version == 2:
            raise AdminError(409, f"Conflict: deployment {dep.id} already exists")
        status = 201 if outcome == "created" or (outcome == "overwritten" and api_version == 2) else 200
        return web.json_response(self._register_response(dep, services), status=status,
                                 headers={"location": f"deployments/{dep.id}"})

    async def _record(self, request: web.Request) -> DeploymentRecord:
        dep_id = request.match_info["deployment"]
        if (why := deployment_id_error(dep_id)) is not None:
            raise AdminError(400, f"Invalid URL: Cannot parse `deployment` with value `{dep_id}`: {why}")
        record = (await self._state()).records.get(dep_id)
        if record is None:
            raise AdminError(404, f"The requested deployment '{dep_id}' does not exist")
        return record

    async def list_deployments(self, request: web.Request) -> web.Response:
        records = (await self._state()).records.values()
        return web.json_response({"deployments": [render_deployment(r, self.settings, False) for r in records]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(render_deployment(await self._record(request), self.settings, True))

    async def delete_deployment(self, request: web.Request) -> web.Response:
        """DELETE /deployments/{id}?force=true → 202; without force 501, as in Restate."""
        record = await self._record(request)
        if request.query.get("force", "").lower() != "true":
            return web.Response(status=501)
        state = await self.store.remove_deployment(record.deployment.id)
        if state is not None:
            self.cache.install(state)
        return web.Response(status=202)

    async def _service(self, name: str) -> tuple[ServiceMeta, Deployment | None]:
        snapshot = (await self._state()).snapshot
        svc = snapshot.services.get(name)
        if svc is None:
            raise AdminError(404, f"The requested service '{name}' does not exist")
        return svc, snapshot.deployments.get(svc.deployment_id)

    async def list_services(self, request: web.Request) -> web.Response:
        snapshot = (await self._state()).snapshot
        services = [render_service(x, snapshot.deployments.get(x.deployment_id), self.settings)
                    for x in snapshot.services.values()]
        return web.json_response({"services": services})

    async def get_service(self, request: web.Request) -> web.Response:
        svc, dep = await self._service(request.match_info["service"])
        return web.json_response(render_service(svc, dep, self.settings))

    async def list_handlers(self, request: web.Request) -> web.Response:
        svc, dep = await self._service(request.match_info["service"])
        return web.json_response({"handlers": render_service(svc, dep, self.settings)["handlers"]})

    async def get_handler(self, request: web.Request) -> web.Response:
        svc, dep = await self._service(request.match_info["service"])
        name = request.match_info["handler"]
        handler = svc.handlers.get(name)
        if handler is None:
            raise AdminError(404, f"The requested handler '{name}' on service '{svc.name}' does not exist")
        return web.json_response(render_handler(handler, dep is None or dep.protocol_mode == "REQUEST_RESPONSE"))

    async def patch_service(self, request: web.Request) -> web.Response:
        """PATCH /services/{name}: public and durations (friendly or ISO 8601 strings)."""
        name = request.match_info["service"]
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise AdminError(422, f"{DESERIALIZE}invalid type: expected struct ModifyServiceRequest")
        public = body.get("public")
        if public is not None and not isinstance(public, bool):
            raise AdminError(422, f"{DESERIALIZE}public: invalid type: {json.dumps(public)}, expected a boolean")
        changes = {f"{key}_ms": _duration_ms(body, key) for key in DURATION_FIELDS}
        if public is None and all(v is None for v in changes.values()):
            return await self.get_service(request)
        svc, state = await self.store.patch_service(name, public=public, **changes)
        self.cache.install(state)
        return web.json_response(render_service(svc, state.snapshot.deployments.get(svc.deployment_id), self.settings))

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": self.settings.server_version, "min_admin_api_version": API_VERSIONS[0],
            "max_admin_api_version": API_VERSIONS[-1],
            "ingress_endpoint": self.settings.advertised_ingress_url.rstrip("/") + "/", "features": FEATURES,
        })


_ERROR_STATUS: dict[type[Exception], tuple[int, str | None, str]] = {
    ServiceNotFound: (404, None, ""), InvalidServiceChange: (400, None, ""),
    ServiceTypeChanged: (409, "META0006", "[META0006] "), RegistryBusy: (503, None, ""),
    RegistryUnavailable: (503, None, ""),
}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place admin failures become `{"message", "restate_code"}` responses."""
    try:
        return await handler(request)
    except AdminError as exc:
        status, code, message = exc.status, exc.restate_code, exc.message
    except (ServiceNotFound, InvalidServiceChange, ServiceTypeChanged, RegistryBusy, RegistryUnavailable) as exc:
        status, code, prefix = _ERROR_STATUS[type(exc)]
        message = prefix + exc.message
    if status >= 500:
        logger.warning("admin %s %s -> %d: %s", request.method, request.path, status, message)
    return web.json_response({"message": message, "restate_code": code}, status=status)


def build_admin_app(store: RegistryStore, cache: RegistryCache, http: aiohttp.ClientSession,
                    settings: AdminSettings) -> web.Application:
    """The admin API application; `http` is used for discovery, `cache` receives our own writes."""
    api = AdminApi(store, cache, http, settings)
    app = web.Application(middlewares=[_errors])
    for prefix, version in [("", API_VERSIONS[-1])] + [(f"/v{v}", v) for v in API_VERSIONS]:
        async def register(request: web.Request, _v: int = version) -> web.Response:
            return await api.register_deployment(request, _v)

        app.router.add_post(f"{prefix}/deployments", register)
        app.router.add_get(f"{prefix}/deployments", api.list_deployments)
        app.router.add_get(f"{prefix}/deployments/{{deployment}}", api.get_deployment)
        app.router.add_delete(f"{prefix}/deployments/{{deployment}}", api.delete_deployment)
        app.router.add_get(f"{prefix}/services", api.list_services)
        app.router.add_get(f"{prefix}/services/{{service}}", api.get_service)
        app.router.add_patch(f"{prefix}/services/{{service}}", api.patch_service)
        app.router.add_get(f"{prefix}/services/{{service}}/handlers", api.list_handlers)
        app.router.add_get(f"{prefix}/services/{{service}}/handlers/{{handler}}", api.get_handler)
        app.router.add_get(f"{prefix}/health", api.health)
        app.router.add_get(f"{prefix}/version", api.version)
    return app
