"""Admin API (port 9070): register deployments, inspect and tune services.

Mirrors Restate 1.7's admin REST API (`crates/admin/src/rest_api/`): same paths (also under
`/v2`..`/v4`), JSON field names, duration strings ("1d", "1s 500ms"), statuses and error texts.
Every failure is an `ingress.errors.IngressError` (status from its one table), answered as
`{"message", "restate_code"}` by the middleware below; registry errors are translated there.
Paths no route matches answer a JSON 404 and known paths with another method a JSON 405 with
`allow`, in the same error shape as every other admin error (Restate answers both with an empty
body; a JSON body is what clients of every other admin error already parse).
Deviations: request-shape errors (which Restate answers in text/plain) use the same JSON error
shape; unknown manifest fields are tolerated; HTTP/1.1 only.

Modules: `deployments`, `services` and `invocations` (routes per resource; the lifecycle routes
need the ingress's dispatcher, `InvocationControl`), `system` (health, version,
metrics, the admin API's own OpenAPI document), `render` (response bodies), `parsing` (request
bodies), `context` (shared resources), `apidoc` and `apischemas` (that OpenAPI document).
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from ingress.admin import deployments, invocations, limits, query, schedules, services, system
from ingress.admin.context import ADMIN, API_VERSIONS, AdminContext, AdminSettings
from ingress.admin.invocations import INVOCATIONS, InvocationControl
from ingress.admin.render import friendly_ms
from ingress.errors import (
    BadRequest,
    Conflict,
    IngressError,
    NotFound,
    RegistryUnavailable,
    RouteMethodNotAllowed,
    RouteNotFound,
)
from shardgate import registry
from shardgate.registry import RegistryCache, RegistryStore

__all__ = ["AdminSettings", "InvocationControl", "build_admin_app", "friendly_ms"]

logger = logging.getLogger(__name__)

# Registry failure -> (what the client is told, Restate code, message prefix)
_REGISTRY_ERRORS: dict[type[registry.RegistryError], tuple[type[IngressError], str | None, str]] = {
    registry.ServiceNotFound: (NotFound, None, ""),
    registry.InvalidServiceChange: (BadRequest, None, ""),
    registry.ServiceTypeChanged: (Conflict, "META0006", "[META0006] "),
    registry.RegistryBusy: (RegistryUnavailable, None, ""),
    registry.RegistryUnavailable: (RegistryUnavailable, None, ""),
}


def from_registry(exc: registry.RegistryError) -> IngressError:
    """The client-facing error for a registry failure (an unknown kind is a 500)."""
    cls, code, prefix = _REGISTRY_ERRORS.get(type(exc), (IngressError, None, ""))
    return cls(prefix + exc.message, restate_code=code)


def error_response(err: IngressError) -> web.Response:
    """An admin error: `{"message", "restate_code"}` with the error's status (and `allow` for a
    method a path does not take)."""
    headers = {"allow": ",".join(err.allowed)} if isinstance(err, RouteMethodNotAllowed) else None
    return web.json_response({"message": err.message, "restate_code": err.restate_code}, status=err.status,
                             headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place admin failures become responses (router misses included)."""
    try:
        return await handler(request)
    except IngressError as exc:
        err = exc
    except registry.RegistryError as exc:
        err = from_registry(exc)
    except web.HTTPMethodNotAllowed as exc:
        err = RouteMethodNotAllowed(request.method, request.path, exc.allowed_methods)
    except web.HTTPNotFound:  # raised by aiohttp's router only
        err = RouteNotFound(request.method, request.path)
    if err.status >= 500:
        logger.warning("admin %s %s -> %d: %s", request.method, request.path, err.status, err.message)
    return error_response(err)


def build_admin_app(store: RegistryStore, cache: RegistryCache, http: aiohttp.ClientSession,
                    settings: AdminSettings, control: InvocationControl | None = None) -> web.Application:
    """The admin API application; `http` is used for discovery, `cache` receives our own writes.
    With `control` (the ingress's dispatcher) it serves the invocation lifecycle routes too."""
    app = web.Application(middlewares=[_errors])
    app[ADMIN] = AdminContext(store, cache, http, settings)
    if control is not None:
        app[INVOCATIONS] = control
        app.cleanup_ctx.append(invocations.status_counts)  # the per-status invocation gauge
    for prefix, version in [("", API_VERSIONS[-1])] + [(f"/v{v}", v) for v in API_VERSIONS]:
        app.router.add_routes(deployments.routes(prefix, version))
        app.router.add_routes(services.routes(prefix))
        app.router.add_routes(system.routes(prefix))
        app.router.add_routes(query.routes(prefix))
        app.router.add_routes(schedules.routes(prefix))
        app.router.add_routes(limits.routes(prefix))
        if control is not None:
            app.router.add_routes(invocations.routes(prefix))
    return app
