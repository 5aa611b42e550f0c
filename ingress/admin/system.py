"""Node routes: GET /health, GET /version (Restate `rest_api/health.rs`, `version.rs`), GET /openapi
(the admin API's own OpenAPI document, `ingress.admin.apidoc`) and /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingress.admin.apidoc import admin_document
from ingress.admin.context import ADMIN, API_VERSIONS

FEATURES = {"vqueues": False, "protocol_v7": False}  # Restate's feature flags, as GET /version shows them


async def health(request: web.Request) -> web.Response:
    """200 with an empty body while the process serves."""
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    """The mirrored Restate version, the admin API versions served and the ingress URL."""
    settings = request.app[ADMIN].settings
    return web.json_response({
        "version": settings.server_version, "min_admin_api_version": API_VERSIONS[0],
        "max_admin_api_version": API_VERSIONS[-1],
        "ingress_endpoint": settings.advertised_ingress_url.rstrip("/") + "/", "features": FEATURES,
    })


async def openapi(request: web.Request) -> web.Response:
    """The admin API's OpenAPI 3.1 document: every route this app serves, read from its router."""
    routes = [(r.method, r.resource.canonical) for r in request.app.router.routes() if r.resource is not None]
    return web.json_response(admin_document(routes, request.app[ADMIN].settings.server_version))


async def metrics(request: web.Request) -> web.Response:
    """Every metric of this process in the Prometheus text format."""
    return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


def routes(prefix: str) -> list[web.RouteDef]:
    """Health, version and the OpenAPI document under `prefix` ("" or "/v2" ...); /metrics only unprefixed."""
    found = [web.get(f"{prefix}/health", health), web.get(f"{prefix}/version", version),
             web.get(f"{prefix}/openapi", openapi)]
    if not prefix:
        found.append(web.get("/metrics", metrics))
    return found
