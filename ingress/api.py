"""The ingress HTTP API as an aiohttp application (Restate `ingress-http/src/server.rs` + `handler/mod.rs`).

`build_ingress_app(schema, dispatcher, settings)` returns an `web.Application` with one catch-all
route (paths are parsed by `ingress.paths`, never by aiohttp's router, because keys may contain
`%2F`) and one middleware that does what Restate's tower layers do: permissive CORS, the body
size limit (413 before the body is read), load shedding (429), and JSON rendering of every
`IngressError` (unexpected exceptions become a logged JSON 500).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
from ingress.handlers.responses import error_response, ingress_error_response
from ingress.handlers.target import Targets
from ingress.paths import (
    AttachRequest,
    Awakeable,
    CallRequest,
    Health,
    Lookup,
    OutputRequest,
    SendRequest,
    TargetAttach,
    TargetOutput,
    parse_path,
    split_target,
)
from shardgate.schema import (
    DEFAULT_IDEMPOTENCY_RETENTION_MS,
    DEFAULT_JOURNAL_RETENTION_MS,
    DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS,
    SchemaSnapshot,
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


def build_ingress_app(
    schema: Callable[[], SchemaSnapshot], dispatcher: Dispatcher, config: IngressApiSettings
) -> web.Application:
    """Build the ingress application; `schema()` must return the current snapshot cheaply."""
    if config.partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {config.partitions}")
    targets = Targets(
        schema,
        idempotency_retention_ms=config.default_idempotency_retention_ms,
        workflow_retention_ms=config.default_workflow_retention_ms,
        journal_retention_ms=config.default_journal_retention_ms,
    )
    partitions = config.partitions
    generate_keys = config.controlled_idempotent_sharding
    service_type = targets.service_type

    async def dispatch(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        if not raw.startswith("/"):  # absolute-form request target
            raw = request.rel_url.raw_path_qs
        path, query = split_target(raw)
        parsed = parse_path(path, service_type)
        match parsed:
            case CallRequest() | SendRequest():
                request[ROUTE_KEY] = "send" if parsed.is_send else "call"
                ingress_path = path if query is None else f"{path}?{query}"
                return await handle_invoke(
                    request,
                    parsed,
                    ingress_path,
                    query,
                    targets=targets,
                    dispatcher=dispatcher,
                    partitions=partitions,
                    generate_idempotency_keys=generate_keys,
                )
            case AttachRequest() | OutputRequest():
                request[ROUTE_KEY] = "attach" if isinstance(parsed, AttachRequest) else "output"
                return await handle_attach(
                    request, parsed, targets=targets, dispatcher=dispatcher, partitions=partitions
                )
            case TargetAttach() | TargetOutput():
                attach = isinstance(parsed, TargetAttach)
                request[ROUTE_KEY] = "attach" if attach else "output"
                return await handle_target(
                    request, attach, targets=targets, dispatcher=dispatcher, partitions=partitions
                )
            case Lookup():
                request[ROUTE_KEY] = "lookup"
                return await handle_lookup(request)
            case Health():
                request[ROUTE_KEY] = "health"
                return handle_health(request, targets)
            case Awakeable():
                request[ROUTE_KEY] = "awakeable"
                return await handle_awakeable(request, parsed, dispatcher=dispatcher, partitions=partitions)
        raise NotFound("not found")  # pragma: no cover - every parsed type is matched above

    app = web.Application(
        middlewares=[_ingress_middleware(config)], client_max_size=max(config.max_body_bytes, 1)
    )
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=_expect_handler(config.max_body_bytes))
    return app


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
    limit = config.concurrency_limit
    max_body = config.max_body_bytes
    metrics = config.metrics
    inflight = 0

    @web.middleware
    async def ingress_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal inflight
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            resp: web.StreamResponse = _preflight(request, origin)
            _observe(metrics, "preflight", 200, started)
            return resp
        try:
            length = request.content_length
            if length is not None and length > max_body:
                resp = _too_large(origin)
            elif limit is not None and inflight >= limit:
                log.warning("ingress overloaded: %d requests in flight", inflight)
                raise Overloaded()
            else:
                inflight += 1
                try:
                    resp = await handler(request)
                finally:
                    inflight -= 1
        except IngressError as e:
            resp = ingress_error_response(e)
        except web.HTTPRequestEntityTooLarge:
            resp = _too_large(origin)
        except web.HTTPException as e:  # raised by aiohttp internals only
            resp = error_response(e.status, e.reason)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.raw_path)
            resp = ingress_error_response(InternalError("internal error"))
        _cors(resp, origin)
        _observe(metrics, request.get(ROUTE_KEY, ROUTE_INVALID), resp.status, started)
        return resp

    return ingress_middleware


def _observe(metrics: MetricsHook, route: str, status: int, started: float) -> None:
    try:
        metrics(route, status, time.perf_counter() - started)
    except Exception:  # a broken hook must not break requests
        log.exception("metrics hook failed")
