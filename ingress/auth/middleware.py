"""The two aiohttp middlewares that guard the ingress API and the admin API (installed only when on).

Ingress (inside the ingress middleware, so CORS preflights, the body limit and load shedding come
first and every error is rendered the usual way): `/restate/health` is open; every other request
needs a credential (401 with `WWW-Authenticate: Bearer` otherwise). A grant for everything goes
straight on; any other grant is checked against the request's target (`targets.TargetResolver`)
and answered 403 when it is not allowed; `GET /openapi` needs a credential only. The
`Authorization` header is removed before the handler runs, so it is neither forwarded to the
deployment nor stored with the invocation.

Admin: `/health` (also under `/v2`..`/v4`) and `/metrics` are open; everything else needs a
credential whose grant has `admin` access (`read`: GET / HEAD and `POST /query`). Admin errors
carry the admin shape plus the status: `{"code": 401, "message": ..., "restate_code": null}`.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

from ingress.admin.context import API_VERSIONS
from ingress.api import ROUTE_KEY
from ingress.auth.grant import AdminAccess, Grant, Target
from ingress.auth.store import CredentialStore
from ingress.auth.targets import TargetResolver
from ingress.auth.verifier import AuthenticationFailed
from ingress.errors import Forbidden
from ingress.handlers.responses import ingress_error_response
from ingress.paths import Health, parse_path, split_target
from shardgate.schema import ServiceType

log = logging.getLogger(__name__)

INGRESS_OPEN_PATHS = frozenset({"/restate/health"})
ADMIN_OPEN_PATHS = frozenset({"/health", "/metrics", *(f"/v{v}/health" for v in API_VERSIONS)})
OPENAPI_PATH = "/openapi"
AUTHORIZATION = "Authorization"
ADMIN_FORBIDDEN = "this credential is not allowed to use the admin API"
ADMIN_READ_ONLY = "this credential may only read the admin API (GET, HEAD, POST /query)"


def ingress_auth_middleware(store: CredentialStore, resolver: TargetResolver) -> Middleware:
    """The ingress API's guard (see the module docstring)."""

    @web.middleware
    async def ingress_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path, _ = split_target(_raw_target(request))  # BadRequest for a target that is not UTF-8
        if path in INGRESS_OPEN_PATHS:
            return await handler(request)
        try:
            grant = store.verifier.authenticate(request.headers.get(AUTHORIZATION))
        except AuthenticationFailed as e:
            return _ingress_unauthorized(e)
        inner = request.clone(headers=_without_credentials(request))
        try:
            if not grant.everything and path != OPENAPI_PATH:
                await _authorise(inner, path, grant, resolver)
            return await handler(inner)
        finally:
            route = inner.get(ROUTE_KEY)
            if route is not None:  # the handler labelled the clone; the metrics read the original
                request[ROUTE_KEY] = route

    return ingress_auth


async def _authorise(request: web.Request, path: str, grant: Grant, resolver: TargetResolver) -> None:
    """Raise Forbidden unless `grant` covers the request's target; the path parser's own errors
    (400, 404) propagate."""
    def service_type(name: str) -> ServiceType | None:
        meta = resolver.schema().services.get(name)
        return None if meta is None else meta.ty

    parsed = parse_path(path, service_type)
    if isinstance(parsed, Health):
        return
    target = await resolver.target(request, parsed)
    if not grant.allows(target):
        log.info("ingress request denied", extra={"subject": grant.subject, "method": request.method,
                                                  "service": None if target is None else target.service})
        raise Forbidden(_denied(target))


def _denied(target: Target | None) -> str:
    if target is None:
        return "this credential is not allowed to reach the invocation this request names"
    what = target.service if target.handler is None else f"{target.service}/{target.handler}"
    scope = "" if target.scope is None else f" in scope '{target.scope}'"
    return f"this credential is not allowed to reach {what}{scope}"


def admin_auth_middleware(store: CredentialStore) -> Middleware:
    """The admin API's guard (see the module docstring)."""

    @web.middleware
    async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ADMIN_OPEN_PATHS:
            return await handler(request)
        try:
            grant = store.verifier.authenticate(request.headers.get(AUTHORIZATION))
        except AuthenticationFailed as e:
            return _admin_error(401, e.message, {"WWW-Authenticate": e.challenge()})
        if not grant.allows_admin(request.method, request.path):
            log.info("admin request denied", extra={"subject": grant.subject, "method": request.method})
            return _admin_error(403, ADMIN_READ_ONLY if grant.admin is AdminAccess.READ else ADMIN_FORBIDDEN)
        return await handler(request)

    return admin_auth


def _raw_target(request: web.Request) -> str:
    """Path and query as sent (an absolute-form target reduced to them), as `ingress.api` reads it."""
    raw = request.raw_path
    return raw if raw.startswith("/") else request.rel_url.raw_path_qs


def _without_credentials(request: web.Request) -> CIMultiDict[str]:
    headers = CIMultiDict(request.headers)
    headers.popall(AUTHORIZATION, None)
    return headers


def _ingress_unauthorized(error: AuthenticationFailed) -> web.Response:
    response = ingress_error_response(error)
    response.headers["WWW-Authenticate"] = error.challenge()
    return response


def _admin_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "message": message, "restate_code": None},
                             status=status, headers=headers)
