"""The ingress HTTP API as an aiohttp application (Restate `ingress-http/src/server.rs` + `handler/mod.rs`).

`build_ingress_app(schema, dispatcher, settings)` returns an `web.Application` with one catch-all
route (paths are parsed by `ingress.paths`, never by aiohttp's router, because keys may contain
`%2F`) and one middleware that does what Restate's tower layers do: permissive CORS, the body
size limit (413 before the body is read), load shedding (429), and JSON rendering of every
`IngressError` (unexpected exceptions become a logged JSON 500). Beyond Restate 1.7 (their issue
#3108), `GET /openapi` answers one OpenAPI 3.1 document of every public service
(`ingress.openapi.ingress_document`); other methods on `/openapi` stay Restate's 400 `bad path`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import HttpVersion11, web

from ingress.dispatcher import Dispatcher
from ingress.errors import (
    IngressError,
    InternalError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
)
from ingress.handlers.attach import handle_attach, handle_lookup, handle_target
from ingress.handlers.awakeables import handle_awakeable
from ingress.handlers.health import handle_health
from ingress.handlers.invoke import handle_invoke
from ingress.handlers.responses import drop_default_content_type, error_response, ingress_error_response
from ingress.handlers.status import StatusReader, handle_status
from ingress.handlers.target import Targets
from ingress.openapi import ingress_document
from ingress.paths import (
    AttachRequest,
    Awakeable,
    CallRequest,
    Health,
    Lookup,
    OutputRequest,
    SendRequest,
    StatusRequest,
    TargetAttach,
    TargetOutput,
    parse_path,
    split_target,
)
from shardgate.schema import (
    DEFAULT_IDEMPOTENCY_RETENTION_MS,
    DEFAULT_JOURNAL_RETENTION_MS,
    DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS,
    RESTATE_DEFAULTS,
    SchemaSnapshot,
    SettingDefaults,
)

__all__ = ["ROUTE_KEY", "IngressApiSettings", "MetricsHook", "build_ingress_app"]

log = logging.getLogger(__name__)

MetricsHook = Callable[[str, int, float], None]
"""Called once per request with (route label, HTTP status, duration in seconds)."""

# Route labels (small fixed set, for metrics): set on the request once the path is parsed.
ROUTE_KEY = web.RequestKey("shardgate_route", str)
ROUTE_INVALID = "invalid"  # path did not parse (400/404) or never reached the router
_VARY = "origin, access-control-request-method, access-control-request-headers"


def _no_metrics(route: str, status: int, seconds: float) -> None:
    """Default metrics hook: does nothing."""


@dataclass(frozen=True, slots=True)
class IngressApiSettings:
    """What the ingress API needs beyond the schema and the dispatcher."""

    partitions: int  # fixed at deploy time; ids route to partition_of(pk, partitions)
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies are answered 413
    default_idempotency_retention_ms: int = DEFAULT_IDEMPOTENCY_RETENTION_MS  # result kept for idempotent requests
    default_workflow_retention_ms: int = DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS  # workflow run result kept
    default_journal_retention_ms: int = DEFAULT_JOURNAL_RETENTION_MS  # journal (and plain result) kept
    concurrency_limit: int | None = None  # in-flight requests beyond this get 429; None = unlimited
    metrics: MetricsHook = _no_metrics  # per-request observation hook
    controlled_idempotent_sharding: bool = True  # generate idempotency keys for Service/VirtualObject calls
    advertised_url: str | None = None  # `servers` of GET /openapi; None = the origin the request came to
    scopes_enabled: bool = True  # /restate/scope/...; False answers Restate's 400 for a server without vqueues
    invocation_status: StatusReader | None = None  # GET /restate/invocation/{id}/status; None: not served (404)

    def setting_defaults(self) -> SettingDefaults:
        """The bottom of the settings cascade, with this ingress's retention defaults."""
        return replace(
            RESTATE_DEFAULTS,
            idempotency_retention_ms=self.default_idempotency_retention_ms,
            workflow_completion_retention_ms=self.default_workflow_retention_ms,
            journal_retention_ms=self.default_journal_retention_ms,
        )


def build_ingress_app(
    schema: Callable[[], SchemaSnapshot], dispatcher: Dispatcher, config: IngressApiSettings
) -> web.Application:
    """Build the ingress application; `schema()` must return the current snapshot cheaply.
    Raises ValueError for fewer than one partition."""
    if config.partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {config.partitions}")
    routes = _Routes(Targets(schema, config.setting_defaults()), dispatcher, config.partitions,
                     config.controlled_idempotent_sharding, config.scopes_enabled, config.invocation_status)
    app = web.Application(
        middlewares=[_ingress_middleware(config)], client_max_size=max(config.max_body_bytes, 1)
    )
    app.router.add_get("/openapi", _openapi_handler(schema, config.advertised_url))  # matched before the catch-all
    app.router.add_route("*", "/{tail:.*}", routes.dispatch,
                         expect_handler=_expect_handler(config.max_body_bytes))
    app.on_response_prepare.append(drop_default_content_type)
    return app


@dataclass(frozen=True, slots=True)
class _Routes:
    """The catch-all route: parse the path (`ingress.paths`), label the route, call its handler."""

    targets: Targets
    dispatcher: Dispatcher
    partitions: int
    generate_keys: bool  # controlled-idempotent-sharding
    scopes_enabled: bool
    invocation_status: StatusReader | None = None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Serve one request. Raises the IngressError of the path parser or of the handler."""
        path, query = split_target(_request_target(request))
        parsed = parse_path(path, self.targets.service_type)
        match parsed:
            case CallRequest() | SendRequest():
                return await self._invoke(request, parsed, path, query)
            case AttachRequest() | OutputRequest() | TargetAttach() | TargetOutput():
                return await self._attach(request, parsed)
            case Lookup():
                request[ROUTE_KEY] = "lookup"
                return await handle_lookup(request)
            case Health():
                request[ROUTE_KEY] = "health"
                return handle_health(request, self.targets)
            case Awakeable():
                request[ROUTE_KEY] = "awakeable"
                return await handle_awakeable(request, parsed, dispatcher=self.dispatcher,
                                              partitions=self.partitions)
            case StatusRequest() if self.invocation_status is not None:
                request[ROUTE_KEY] = "status"
                return await handle_status(request, parsed.invocation_id, reader=self.invocation_status,
                                           partitions=self.partitions)
        raise NotFound("not found")  # pragma: no cover - every parsed type is matched above

    async def _invoke(
        self, request: web.Request, parsed: CallRequest | SendRequest, path: str, query: str | None
    ) -> web.StreamResponse:
        request[ROUTE_KEY] = "send" if parsed.is_send else "call"
        ingress_path = path if query is None else f"{path}?{query}"
        return await handle_invoke(request, parsed, ingress_path, query, targets=self.targets,
                                   dispatcher=self.dispatcher, partitions=self.partitions,
                                   generate_idempotency_keys=self.generate_keys,
                                   scopes_enabled=self.scopes_enabled)

    async def _attach(
        self, request: web.Request, parsed: AttachRequest | OutputRequest | TargetAttach | TargetOutput
    ) -> web.StreamResponse:
        """Attach / output, by invocation target in the path or by a JSON target body."""
        attach = isinstance(parsed, (AttachRequest, TargetAttach))
        request[ROUTE_KEY] = "attach" if attach else "output"
        if isinstance(parsed, (AttachRequest, OutputRequest)):
            return await handle_attach(request, parsed, targets=self.targets, dispatcher=self.dispatcher,
                                       partitions=self.partitions)
        return await handle_target(request, attach, targets=self.targets, dispatcher=self.dispatcher,
                                   partitions=self.partitions)


def _request_target(request: web.Request) -> str:
    """The raw request target, path and query; an absolute-form target is reduced to them."""
    raw = request.raw_path
    if not raw.startswith("/"):  # absolute-form request target
        raw = request.rel_url.raw_path_qs
    return raw


def _openapi_handler(
    schema: Callable[[], SchemaSnapshot], advertised_url: str | None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """GET /openapi: the merged document of every public service, rebuilt only when the schema
    snapshot (or the server URL) changes."""
    cached: tuple[SchemaSnapshot, str, bytes] | None = None

    async def openapi(request: web.Request) -> web.StreamResponse:
        nonlocal cached
        request[ROUTE_KEY] = "openapi"
        snapshot = schema()
        url = advertised_url or f"{request.scheme}://{request.host}/"
        if cached is None or cached[0] is not snapshot or cached[1] != url:
            doc = ingress_document(snapshot.services.values(), url, snapshot.version)
            cached = (snapshot, url, json.dumps(doc).encode())
        return web.Response(body=cached[2], content_type="application/json")

    return openapi


def _cors(resp: web.StreamResponse, origin: str | None) -> None:
    """Permissive CORS headers on an actual (non-preflight) response."""
    headers = resp.headers
    headers["access-control-allow-credentials"] = "true"
    headers["vary"] = _VARY
    if origin is not None:
        headers["access-control-allow-origin"] = origin


def _too_large(origin: str | None) -> web.Response:
    resp = ingress_error_response(PayloadTooLarge())
    resp.force_close()  # do not drain an oversized body
    _cors(resp, origin)
    return resp


def _expect_handler(max_body_bytes: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """`Expect: 100-continue`: refuse oversized bodies before the client sends them."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _too_large(request.headers.get("Origin"))
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    return expect


def _preflight(request: web.Request, origin: str | None) -> web.Response:
    """CORS preflight, mirroring tower-http `CorsLayer::very_permissive` (any OPTIONS)."""
    headers = {"access-control-allow-credentials": "true", "vary": _VARY}
    if origin is not None:
        headers["access-control-allow-origin"] = origin
    method = request.headers.get("access-control-request-method")
    if method is not None:
        headers["access-control-allow-methods"] = method
    allow = request.headers.get("access-control-request-headers")
    if allow is not None:
        headers["access-control-allow-headers"] = allow
    return web.Response(status=200, headers=headers)


def _ingress_middleware(config: IngressApiSettings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The one middleware: CORS preflight and headers, admission (`_Admission`), the JSON
    rendering of every error, and the metrics hook."""
    admission = _Admission(config.concurrency_limit, config.max_body_bytes)
    metrics = config.metrics

    @web.middleware
    async def ingress_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            resp: web.StreamResponse = _preflight(request, origin)
            _observe(metrics, "preflight", 200, started)
            return resp
        resp = await _respond(request, handler, admission, origin)
        _cors(resp, origin)
        _observe(metrics, request.get(ROUTE_KEY, ROUTE_INVALID), resp.status, started)
        return resp

    return ingress_middleware


class _Admission:
    """The body size limit (413 before the body is read) and load shedding (429 past
    `limit` requests in flight; None: unlimited)."""

    def __init__(self, limit: int | None, max_body_bytes: int) -> None:
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self.inflight = 0

    async def serve(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        origin: str | None,
    ) -> web.StreamResponse:
        """The handler's response, or 413 for an announced oversized body. Raises Overloaded."""
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _too_large(origin)
        if self.limit is not None and self.inflight >= self.limit:
            log.warning("ingress overloaded: %d requests in flight", self.inflight)
            raise Overloaded()
        self.inflight += 1
        try:
            return await handler(request)
        finally:
            self.inflight -= 1


async def _respond(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    admission: _Admission, origin: str | None,
) -> web.StreamResponse:
    """The admitted handler's response, or the JSON error response for what it raised
    (unexpected exceptions are logged and become a 500; cancellation propagates)."""
    try:
        return await admission.serve(request, handler, origin)
    except IngressError as e:
        return ingress_error_response(e)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(origin)
    except web.HTTPException as e:  # raised by aiohttp internals only
        return error_response(e.status, e.reason)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.raw_path)
        return ingress_error_response(InternalError("internal error"))


def _observe(metrics: MetricsHook, route: str, status: int, started: float) -> None:
    try:
        metrics(route, status, time.perf_counter() - started)
    except Exception:  # a broken hook must not break requests
        log.exception("metrics hook failed")
