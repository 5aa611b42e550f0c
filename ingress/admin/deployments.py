"""Deployment routes (Restate `rest_api/deployments.rs`): register, list, describe, remove.

Registration discovers the endpoint (`shardgate.discovery`), validates its manifest
(`shardgate.schema`) and writes the registry in one step; re-registering the same URI without
`force` answers the existing deployment unchanged (a 409 in admin API v2).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ingress.admin.context import ADMIN, API_VERSIONS, AdminContext
from ingress.admin.parsing import UNTAGGED, flag, json_body, normalize_uri, string_map
from ingress.admin.render import render_deployment, render_registration
from ingress.errors import BadRequest, Conflict, DeploymentError, IngressError, NotFound, UnprocessableEntity
from shardgate.discovery import Discovered, DiscoveryError, discover_endpoint
from shardgate.registry import DeploymentRecord, deployment_id_error, new_deployment_id
from shardgate.schema import Deployment, ManifestError, ServiceMeta, endpoint_info, services_from_manifest

# ManifestError.kind -> (error class, Restate code, message prefix)
_MANIFEST_ERRORS: dict[str, tuple[type[IngressError], str | None, str]] = {
    "decode": (DeploymentError, None, "received a bad response from the SDK that cannot be decoded: "),
    "bad_response": (DeploymentError, "META0013", "[META0013] [META0013] received a bad response from the SDK: "),
    "unsupported_protocol": (DeploymentError, "META0012", "[META0012] [META0012] "),
    "reserved_name": (BadRequest, "META0005", "[META0005] "),
    "invalid": (BadRequest, None, ""),
}


async def _discover(ctx: AdminContext, uri: str, headers: dict[str, str], use_http_11: bool) -> Discovered:
    """The endpoint's manifest, SDK version and transport. Raises 500 `DeploymentError` (META0003 ...)."""
    try:
        found = await discover_endpoint(ctx.http, uri, headers, ctx.settings.discovery_timeout_s,
                                        ctx.settings.signer, use_http_11)
    except DiscoveryError as exc:
        code = exc.restate_code
        message = f"[{code}] [{code}] {exc.message}" if code else exc.message
        raise DeploymentError(message, restate_code=code) from None
    return found


def _manifest_services(manifest: Any, dep_id: str) -> tuple[tuple[str, int, int], list[ServiceMeta]]:
    """((protocol mode, min, max version), services) of a manifest; raises its `IngressError`."""
    try:
        return endpoint_info(manifest), services_from_manifest(manifest, dep_id, {})
    except ManifestError as exc:
        cls, code, prefix = _MANIFEST_ERRORS.get(exc.kind, (DeploymentError, None, ""))
        raise cls(prefix + exc.message, restate_code=code) from None


def _registered(ctx: AdminContext, api_version: int, outcome: str, dep: Deployment,
                services: list[ServiceMeta]) -> web.Response:
    """201 for a new deployment (and an overwrite in v2), else 200; `location` names it."""
    if outcome == "unchanged" and api_version == 2:
        raise Conflict(f"Conflict: deployment {dep.id} already exists")
    status = 201 if outcome == "created" or (outcome == "overwritten" and api_version == 2) else 200
    return web.json_response(render_registration(dep, services, ctx.settings), status=status,
                             headers={"location": f"deployments/{dep.id}"})


async def register_deployment(request: web.Request, api_version: int) -> web.Response:
    """POST /deployments: discover, then create (201) or re-register (200) a deployment."""
    ctx = request.app[ADMIN]
    body = await json_body(request)
    if not isinstance(body, dict) or not ("uri" in body or "arn" in body):
        raise UnprocessableEntity(UNTAGGED)
    if "uri" not in body:
        raise BadRequest("The request field 'arn' is invalid. Reason: Lambda deployments are not supported")
    uri = normalize_uri(body["uri"])
    headers, metadata = string_map(body.get("additional_headers"), True), string_map(body.get("metadata"))
    force, breaking, dry_run = flag(body, "force"), flag(body, "breaking"), flag(body, "dry_run")
    use_http_11 = bool(flag(body, "use_http_11"))  # Restate's default: h2c for http://
    force = (api_version == 2) if force is None else force  # Restate: force defaults on only in v2
    if not force and (existing := (await ctx.state()).find_by_uri(uri)) is not None:
        return _registered(ctx, api_version, "unchanged", existing.deployment, list(existing.services.values()))
    found = await _discover(ctx, uri, headers, use_http_11)
    dep_id = new_deployment_id()
    (mode, min_v, max_v), services = _manifest_services(found.manifest, dep_id)
    deployment = Deployment(id=dep_id, uri=uri, protocol_mode=mode, min_protocol_version=min_v,
                            max_protocol_version=max_v, additional_headers=headers, use_http_11=found.http_11,
                            http_11_attempts=found.also_http_11, sdk_version=found.sdk_version, metadata=metadata)
    reg = await ctx.store.register(deployment, services, force, breaking=bool(breaking),
                                   dry_run=bool(dry_run), manifest=found.manifest)
    if not dry_run:
        ctx.install(reg.state)
    return _registered(ctx, api_version, reg.outcome, reg.deployment, reg.services)


def versioned_register(api_version: int) -> Handler:
    """The POST /deployments handler of one admin API version."""

    async def register(request: web.Request) -> web.StreamResponse:
        return await register_deployment(request, api_version)

    return register


async def _record(request: web.Request) -> DeploymentRecord:
    """The deployment named in the path. Raises 400 for a malformed id, 404 for an unknown one."""
    dep_id = request.match_info["deployment"]
    if (why := deployment_id_error(dep_id)) is not None:
        raise BadRequest(f"Invalid URL: Cannot parse `deployment` with value `{dep_id}`: {why}")
    record = (await request.app[ADMIN].state()).records.get(dep_id)
    if record is None:
        raise NotFound(f"The requested deployment '{dep_id}' does not exist")
    return record


async def list_deployments(request: web.Request) -> web.Response:
    """GET /deployments: every deployment with its services' names and revisions."""
    ctx = request.app[ADMIN]
    records = (await ctx.state()).records.values()
    return web.json_response({"deployments": [render_deployment(r, ctx.settings, False) for r in records]})


async def get_deployment(request: web.Request) -> web.Response:
    """GET /deployments/{id}: one deployment with its services in full."""
    return web.json_response(render_deployment(await _record(request), request.app[ADMIN].settings, True))


async def delete_deployment(request: web.Request) -> web.Response:
    """DELETE /deployments/{id}?force=true → 202; without force 501 (empty body), as in Restate."""
    ctx = request.app[ADMIN]
    record = await _record(request)
    if request.query.get("force", "").lower() != "true":
        return web.Response(status=501)
    state = await ctx.store.remove_deployment(record.deployment.id)
    if state is not None:
        ctx.install(state)
    return web.Response(status=202)


def routes(prefix: str, api_version: int) -> list[web.RouteDef]:
    """The deployment routes under `prefix` ("" or "/v2" ...)."""
    assert api_version in API_VERSIONS
    return [
        web.post(f"{prefix}/deployments", versioned_register(api_version)),
        web.get(f"{prefix}/deployments", list_deployments),
        web.get(f"{prefix}/deployments/{{deployment}}", get_deployment),
        web.delete(f"{prefix}/deployments/{{deployment}}", delete_deployment),
    ]
