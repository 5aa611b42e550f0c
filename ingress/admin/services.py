"""Service and handler routes (Restate `rest_api/services.rs`, `handlers.rs`): list, describe, modify.

PATCH /services/{name} changes `public` and the durations (friendly or ISO 8601 strings); a body
without changes answers the service as it is. GET /services/{name}/openapi answers the service's
OpenAPI 3.1 document (`ingress.openapi.service_document`).

POST /services/{name}/state (what `restate state edit|patch|clear` sends) replaces the whole state
of one key of a virtual object or workflow: `{"object_key", "version"?, "scope"?, "new_state": {key:
[byte, ...]}}`. It answers 202 once the key's partition has taken the edit, as Restate does; the
partition applies it when no invocation holds the key's lock, else queues it behind the key's
inbox, and drops it when `version` is not the state's version by then (the CLI's hash). It
reaches the partition as a `StateEdit` in the frame of a Notification keyed `edit-state`, over the
lifecycle routes' dispatcher. Unknown and unkeyed services answer 404.
"""

from __future__ import annotations

import json

from aiohttp import web

from ingress.admin.context import ADMIN
from ingress.admin.invocations import INVOCATIONS
from ingress.admin.parsing import DESERIALIZE, duration_ms, json_body
from ingress.admin.render import render_handler, render_service, request_response
from ingress.errors import BadRequest, NotFound, PartitionUnavailable, UnprocessableEntity
from ingress.openapi import service_document
from ingress.paths import restricted_value_error
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.schema import Deployment, ServiceMeta
from shardgate.sharding import partition_key_for_key, partition_of

DURATION_FIELDS = ("idempotency_retention", "workflow_completion_retention", "journal_retention",
                   "inactivity_timeout", "abort_timeout")
STATE_EDIT_NOTE_KEY = "edit-state"  # partition.scripts.STATE_EDIT_NOTE_KEY: the partition takes it as a state edit
STATE_EDIT_REQUEST = "struct ModifyServiceStateRequest"


async def _service(request: web.Request) -> tuple[ServiceMeta, Deployment | None]:
    """The service named in the path and its deployment. Raises 404 `NotFound`."""
    name = request.match_info["service"]
    snapshot = (await request.app[ADMIN].state()).snapshot
    svc = snapshot.services.get(name)
    if svc is None:
        raise NotFound(f"The requested service '{name}' does not exist")
    return svc, snapshot.deployments.get(svc.deployment_id)


async def list_services(request: web.Request) -> web.Response:
    """GET /services: every registered service in full."""
    ctx = request.app[ADMIN]
    snapshot = (await ctx.state()).snapshot
    services = [render_service(x, snapshot.deployments.get(x.deployment_id), ctx.settings)
                for x in snapshot.services.values()]
    return web.json_response({"services": services})


async def get_service(request: web.Request) -> web.Response:
    """GET /services/{name}."""
    svc, dep = await _service(request)
    return web.json_response(render_service(svc, dep, request.app[ADMIN].settings))


async def list_handlers(request: web.Request) -> web.Response:
    """GET /services/{name}/handlers."""
    svc, dep = await _service(request)
    return web.json_response({"handlers": [render_handler(h, request_response(dep)) for h in svc.handlers.values()]})


async def get_handler(request: web.Request) -> web.Response:
    """GET /services/{name}/handlers/{handler}. Raises 404 for an unknown service or handler."""
    svc, dep = await _service(request)
    name = request.match_info["handler"]
    handler = svc.handlers.get(name)
    if handler is None:
        raise NotFound(f"The requested handler '{name}' on service '{svc.name}' does not exist")
    return web.json_response(render_handler(handler, request_response(dep)))


async def get_service_openapi(request: web.Request) -> web.Response:
    """GET /services/{name}/openapi: the service's public handlers as OpenAPI 3.1. Raises 404."""
    svc, _ = await _service(request)
    return web.json_response(service_document(svc, request.app[ADMIN].settings.advertised_ingress_url))


async def patch_service(request: web.Request) -> web.Response:
    """PATCH /services/{name}: public and durations. Raises 422 for a malformed body; the
    registry's 400/404/503 pass through the admin error middleware."""
    ctx = request.app[ADMIN]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise UnprocessableEntity(f"{DESERIALIZE}invalid type: expected struct ModifyServiceRequest")
    public = body.get("public")
    if public is not None and not isinstance(public, bool):
        raise UnprocessableEntity(f"{DESERIALIZE}public: invalid type: {json.dumps(public)}, expected a boolean")
    changes = {f"{key}_ms": duration_ms(body, key) for key in DURATION_FIELDS}
    if public is None and all(v is None for v in changes.values()):
        return await get_service(request)
    svc, state = await ctx.store.patch_service(request.match_info["service"], public=public, **changes)
    ctx.install(state)
    dep = state.snapshot.deployments.get(svc.deployment_id)
    return web.json_response(render_service(svc, dep, ctx.settings))


def _state_bytes(name: str, value: object) -> bytes:
    """One `new_state` value: an array of bytes. Raises 422 `UnprocessableEntity`."""
    if not isinstance(value, list) or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256
                                              for b in value):
        raise UnprocessableEntity(f"{DESERIALIZE}new_state.{name}: invalid type: expected a sequence of bytes")
    return bytes(value)


def state_edit_of(service: str, body: object) -> pb.StateEdit:
    """The edit a `POST /services/{name}/state` body asks for. Raises 422 `UnprocessableEntity`."""
    if not isinstance(body, dict):
        raise UnprocessableEntity(f"{DESERIALIZE}invalid type: expected {STATE_EDIT_REQUEST}")
    key, version, new_state = body.get("object_key"), body.get("version"), body.get("new_state")
    for field, value in (("object_key", key), ("new_state", new_state)):
        if value is None:
            raise UnprocessableEntity(f"{DESERIALIZE}missing field `{field}`")
    if not isinstance(key, str):
        raise UnprocessableEntity(f"{DESERIALIZE}object_key: invalid type: expected a string")
    scope = body.get("scope")
    for field, value in (("version", version), ("scope", scope)):
        if value is not None and not isinstance(value, str):
            raise UnprocessableEntity(f"{DESERIALIZE}{field}: invalid type: expected a string")
    if not isinstance(new_state, dict):
        raise UnprocessableEntity(f"{DESERIALIZE}new_state: invalid type: expected a map")
    edit = pb.StateEdit(service=service, key=key, entries=[
        pb.StateEntry(key=k.encode(), value=_state_bytes(k, v)) for k, v in new_state.items()])
    if version is not None:
        edit.version = version
    if scope:
        err = restricted_value_error(scope)
        if err is not None:
            raise BadRequest(f"bad scope value: {err}")
        edit.scope = scope
    return edit


async def edit_state(request: web.Request) -> web.Response:
    """POST /services/{name}/state: 202 once the key's partition took the edit. Raises 404 for an
    unknown or unkeyed service, 422 for a malformed body, 503 without a way to the partitions."""
    svc, _ = await _service(request)
    if not svc.ty.keyed:
        raise NotFound(f"The requested service '{svc.name}' does not exist")
    edit = state_edit_of(svc.name, await json_body(request))
    control = request.app.get(INVOCATIONS)
    if control is None:
        raise PartitionUnavailable("this admin API has no way to the partitions")
    owner = edit.scope if edit.HasField("scope") else edit.key  # a scoped object lives on its scope's partition
    partition = partition_of(partition_key_for_key(owner), control.partitions)
    await control.dispatcher.signal("", partition, STATE_EDIT_NOTE_KEY, edit.SerializeToString())
    return web.Response(status=202)


def routes(prefix: str) -> list[web.RouteDef]:
    """The service and handler routes under `prefix` ("" or "/v2" ...)."""
    return [
        web.get(f"{prefix}/services", list_services),
        web.get(f"{prefix}/services/{{service}}", get_service),
        web.patch(f"{prefix}/services/{{service}}", patch_service),
        web.get(f"{prefix}/services/{{service}}/handlers", list_handlers),
        web.get(f"{prefix}/services/{{service}}/handlers/{{handler}}", get_handler),
        web.get(f"{prefix}/services/{{service}}/openapi", get_service_openapi),
        web.post(f"{prefix}/services/{{service}}/state", edit_state),
    ]
