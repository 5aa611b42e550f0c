"""The admin API's own OpenAPI 3.1 document (`GET /openapi`, Restate `rest_api/mod.rs`). Pure.

`admin_document(routes, version)` describes exactly the routes given (the unprefixed ones the
admin app serves, read from its router), so the document never lists a route that is not served
and never misses one: routes in `OPERATIONS` get Restate's operation id, tag, parameters and body
schemas (`ingress.admin.apischemas`); any other route gets a generic operation. Every error
answers the admin error shape `ErrorDescriptionResponse`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ingress.admin.apischemas import SCHEMAS

OPENAPI_VERSION = "3.1.0"
_METHOD_ORDER = ("get", "post", "put", "patch", "delete")
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]+")

# status -> (response component, description); each is the admin error shape
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad request"),
    404: ("NotFound", "Not found"),
    405: ("MethodNotAllowed", "Method not allowed"),
    409: ("Conflict", "Conflict"),
    410: ("Gone", "The invocation's input is no longer available"),
    415: ("UnsupportedMediaType", "The body must be JSON (`content-type: application/json`)"),
    422: ("UnprocessableEntity", "The JSON body does not have the expected shape"),
    425: ("TooEarly", "The invocation has not started yet"),
    500: ("InternalServerError", "Internal server error"),
    503: ("ServiceUnavailable", "The registry or the invocation's partition is unreachable; retry"),
}

TAGS: dict[str, str] = {
    "deployment": "Service deployments: register, list, describe, remove",
    "service": "Registered services and their settings",
    "service_handler": "The handlers of a service",
    "invocation": "Invocation lifecycle: cancel, kill, purge, pause, resume, restart",
    "introspection": "SQL over the system tables",
    "health": "Admin API health",
    "version": "Server and admin API versions",
    "openapi": "OpenAPI documents",
    "metrics": "Prometheus metrics of this process",
    "schedule": "Schedules: cron and repeating invocations",
    "limits": "Flow control: the rule book of concurrency and rate limits per scope and limit key",
}

PATH_PARAMETERS: dict[str, str] = {
    "deployment": "Deployment id (`dp_...`)",
    "service": "Service name",
    "handler": "Handler name",
    "invocation_id": "Invocation id (`inv_...`)",
    "schedule_id": "Schedule id (letters, digits, `.`, `_`, `-`)",
    "pattern": "Rule pattern: `*`, `scope`, `scope/l1`, `scope/*`, `*/l1`, `scope/l1/l2` ...",
}


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    """A JSON response whose body is component `schema` (or the schema given inline)."""
    body = _schema_ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": body}}}


def _empty(description: str) -> dict[str, Any]:
    return {"description": description}


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


@dataclass(frozen=True, slots=True)
class AdminOperation:
    """What the document says about one admin route besides its path parameters."""

    operation_id: str
    tag: str
    summary: str
    responses: dict[str, Any]  # the success responses by status
    errors: tuple[int, ...] = ()  # statuses answered with the admin error shape
    query: tuple[dict[str, Any], ...] = ()
    body: str | None = None  # component of the JSON request body
    deprecated: bool = False
    headers: dict[str, Any] = field(default_factory=dict)


_REGISTRY = (503,)  # every route reads the registry in Redis
_LOCATION = {"location": {"description": "Path of the deployment (`deployments/dp_...`)", "schema": {"type": "string"}}}
_INVOCATION = (400, 404, 409, 503)
_DEPLOYMENT_CHOICE = {"type": "string", "description": "`latest`, `keep`, or a deployment id (`dp_...`)"}


def _with_location(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": _LOCATION}


OPERATIONS: dict[tuple[str, str], AdminOperation] = {
    ("get", "/deployments"): AdminOperation(
        "list_deployments", "deployment", "List deployments",
        {"200": _json("Every registered deployment", "ListDeploymentsResponse")}, _REGISTRY),
    ("post", "/deployments"): AdminOperation(
        "create_deployment", "deployment", "Register a deployment (discovers its services)",
        {"200": _with_location(_json("Already registered: unchanged, or replaced with `force`",
                                     "RegisterDeploymentResponse")),
         "201": _with_location(_json("Registered", "RegisterDeploymentResponse"))},
        (400, 409, 415, 422, 500, 503), body="RegisterDeploymentRequest"),
    ("get", "/deployments/{deployment}"): AdminOperation(
        "get_deployment", "deployment", "Describe a deployment",
        {"200": _json("The deployment with its services", "DetailedDeploymentResponse")}, (400, 404, 503)),
    ("delete", "/deployments/{deployment}"): AdminOperation(
        "delete_deployment", "deployment", "Remove a deployment",
        {"202": _empty("Removed"), "501": _empty("Only a forced removal (`force=true`) is supported")},
        (400, 404, 503), query=(_query("force", "Remove even if invocations may still need it",
                                       {"type": ["boolean", "null"]}),)),
    ("get", "/services"): AdminOperation(
        "list_services", "service", "List services",
        {"200": _json("Every registered service", "ListServicesResponse")}, _REGISTRY),
    ("get", "/services/{service}"): AdminOperation(
        "get_service", "service", "Describe a service",
        {"200": _json("The service with its effective settings", "ServiceMetadata")}, (404, 503)),
    ("patch", "/services/{service}"): AdminOperation(
        "modify_service", "service", "Change a service's settings (`public`, retentions, timeouts)",
        {"200": _json("The service as changed", "ServiceMetadata")}, (400, 404, 415, 422, 503),
        body="ModifyServiceRequest"),
    ("get", "/services/{service}/handlers"): AdminOperation(
        "list_service_handlers", "service_handler", "List a service's handlers",
        {"200": _json("The service's handlers", "ListServiceHandlersResponse")}, (404, 503)),
    ("get", "/services/{service}/handlers/{handler}"): AdminOperation(
        "get_service_handler", "service_handler", "Describe a handler",
        {"200": _json("The handler", "HandlerMetadata")}, (404, 503)),
    ("get", "/services/{service}/openapi"): AdminOperation(
        "get_service_openapi", "service", "OpenAPI 3.1 document of a service's public handlers",
        {"200": _json("The service's OpenAPI document", {})}, (404, 503)),
    ("post", "/services/{service}/state"): AdminOperation(
        "modify_service_state", "service", "Replace the state of a Virtual Object or Workflow key",
        {"202": _empty("Accepted")}, (400, 404, 415, 422, 503), body="ModifyServiceStateRequest"),
    ("patch", "/invocations/{invocation_id}/cancel"): AdminOperation(
        "cancel_invocation", "invocation", "Cancel an invocation (compensations run)",
        {"200": _empty("Cancelled"), "202": _empty("The cancel signal was delivered")}, _INVOCATION),
    ("patch", "/invocations/{invocation_id}/kill"): AdminOperation(
        "kill_invocation", "invocation", "Kill an invocation at once", {"200": _empty("Killed")}, _INVOCATION),
    ("patch", "/invocations/{invocation_id}/purge"): AdminOperation(
        "purge_invocation", "invocation", "Forget a completed invocation", {"200": _empty("Purged")}, _INVOCATION),
    ("patch", "/invocations/{invocation_id}/purge-journal"): AdminOperation(
        "purge_journal", "invocation", "Drop a completed invocation's journal",
        {"200": _empty("Journal purged")}, _INVOCATION),
    ("patch", "/invocations/{invocation_id}/pause"): AdminOperation(
        "pause_invocation", "invocation", "Pause a running invocation",
        {"200": _empty("Already paused"), "202": _empty("Pausing")}, _INVOCATION),
    ("patch", "/invocations/{invocation_id}/resume"): AdminOperation(
        "resume_invocation", "invocation", "Resume a paused or suspended invocation",
        {"200": _empty("Resumed")}, (*_INVOCATION, 425),
        query=(_query("deployment", "Deployment to resume on", _DEPLOYMENT_CHOICE),)),
    ("patch", "/invocations/{invocation_id}/restart-as-new"): AdminOperation(
        "restart_as_new_invocation", "invocation", "Run a completed invocation's input again under a new id",
        {"200": _json("Restarted", "RestartAsNewInvocationResponse")}, (400, 404, 409, 410, 422, 425, 503),
        query=(_query("from", "Journal index to restart from (0: only the input)", {"type": "integer", "minimum": 0}),
               _query("deployment", "Deployment for the new invocation (with `from` only)", _DEPLOYMENT_CHOICE))),
    ("delete", "/invocations/{invocation_id}"): AdminOperation(
        "delete_invocation", "invocation", "Cancel, kill or purge an invocation (use the PATCH routes)",
        {"202": _empty("Accepted")}, _INVOCATION, deprecated=True,
        query=(_query("mode", "What to do (default: cancel)", {"type": "string", "enum": ["cancel", "kill", "purge"]}),)),
    ("post", "/query"): AdminOperation(
        "query", "introspection", "Run a SQL query over the system tables",
        {"200": {"description": "The rows: an Arrow IPC stream, or JSON with `accept: application/json`",
                 "content": {"application/vnd.apache.arrow.stream": {"schema": {"type": "string",
                                                                                 "contentMediaType": "application/vnd.apache.arrow.stream"}},
                             "application/json": {"schema": {"type": "object", "required": ["rows"],
                                                             "properties": {"rows": {"type": "array",
                                                                                     "items": {"type": "object"}}}}}}}},
        (400, 415, 422, 500, 503), body="QueryRequest"),
    ("get", "/health"): AdminOperation("health", "health", "Health check", {"200": _empty("Serving")}),
    ("get", "/version"): AdminOperation(
        "version", "version", "Server version, admin API versions and the ingress URL",
        {"200": _json("Version information", "VersionInformation")}),
    ("get", "/openapi"): AdminOperation(
        "openapi", "openapi", "This document", {"200": _json("The admin API's OpenAPI 3.1 document", {})}),
    ("get", "/metrics"): AdminOperation(
        "metrics", "metrics", "Prometheus metrics (shardgate)",
        {"200": {"description": "Prometheus text format",
                 "content": {"text/plain": {"schema": {"type": "string"}}}}}),
    # schedules (ingress/admin/schedules.py)
    ("get", "/schedules"): AdminOperation(
        "list_schedules", "schedule", "List schedules",
        {"200": _json("Every schedule", {"type": "object"})}, _REGISTRY),
    ("put", "/schedules/{schedule_id}"): AdminOperation(
        "put_schedule", "schedule", "Create or replace a schedule (cron or every, target, catch-up, overlap)",
        {"200": _json("Replaced", {"type": "object"}), "201": _json("Created", {"type": "object"})},
        (400, 415, 503)),
    ("get", "/schedules/{schedule_id}"): AdminOperation(
        "get_schedule", "schedule", "Describe a schedule: next fire times, last ticks and their outcomes",
        {"200": _json("The schedule", {"type": "object"})}, (400, 404, 503)),
    ("patch", "/schedules/{schedule_id}"): AdminOperation(
        "modify_schedule", "schedule", "Pause or resume a schedule (`{\"paused\": true|false}`)",
        {"200": _json("The schedule as changed", {"type": "object"})}, (400, 404, 415, 503)),
    ("delete", "/schedules/{schedule_id}"): AdminOperation(
        "delete_schedule", "schedule", "Remove a schedule", {"204": _empty("Removed")}, (400, 404, 503)),
    # flow-control rules (ingress/admin/limits.py)
    ("get", "/limits/rules"): AdminOperation(
        "list_rules", "limits", "List the rule book",
        {"200": _json("Every rule", {"type": "array", "items": {"type": "object"}})}, _REGISTRY),
    ("put", "/limits/rules"): AdminOperation(
        "put_rules", "limits", "Create or replace rules (`[{pattern, limits, description?, disabled?, precondition?}]`)",
        {"200": _json("The rules as stored", {"type": "array", "items": {"type": "object"}})},
        (400, 409, 415, 503)),
    ("post", "/limits/rules/bulk-delete"): AdminOperation(
        "delete_rules", "limits", "Delete rules (`[{pattern, expected_version?}]`)",
        {"200": _json("The patterns deleted", {"type": "array", "items": {"type": "string"}})},
        (400, 409, 415, 503)),
    ("get", "/limits/status"): AdminOperation(
        "limits_status", "limits", "Running and queued invocations of a scope, per concurrency bucket and limit key",
        {"200": _json("The scope's buckets", {"type": "object"})}, (400, 503),
        query=(_query("scope", "The scope", {"type": "string"}, required=True),)),
    ("get", "/limits/rules/{pattern}"): AdminOperation(
        "get_rule", "limits", "Describe one rule", {"200": _json("The rule", {"type": "object"})}, (404, 503)),
}


def served_routes(routes: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(lower-case method, path template) of every route worth describing: no HEAD (aiohttp adds it
    beside each GET), no `/vN/` copies (the unprefixed path stands for the newest version)."""
    found = {(m.lower(), p) for m, p in routes
             if m.upper() != "HEAD" and m != "*" and not re.match(r"^/v\d+(/|$)", p)}
    order = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return sorted(found, key=lambda mp: (mp[1], order.get(mp[0], len(order)), mp[0]))


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             "description": PATH_PARAMETERS.get(name, name)} for name in _PATH_PARAM.findall(path)]


def _generic(method: str, path: str) -> AdminOperation:
    """The operation of a served route `OPERATIONS` does not describe."""
    op_id = method + _IDENTIFIER.sub("_", path).rstrip("_")
    return AdminOperation(op_id, "other", f"{method.upper()} {path}", {"default": _json("Response", {})}, (500,))


def _operation(method: str, path: str, op: AdminOperation) -> dict[str, Any]:
    out: dict[str, Any] = {"tags": [op.tag], "summary": op.summary, "operationId": op.operation_id}
    if op.deprecated:
        out["deprecated"] = True
    params = [*_path_parameters(path), *op.query]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema_ref(op.body)}}}
    responses = dict(op.responses)
    for status in op.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    out["responses"] = dict(sorted(responses.items()))
    return out


def _refs(node: Any, found: set[str]) -> None:
    """Collect every `#/components/...` reference inside `node` into `found`."""
    if isinstance(node, list):
        for x in node:
            _refs(x, found)
    elif isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/"):
                found.add(v)
            else:
                _refs(v, found)


def _components(paths: dict[str, Any]) -> dict[str, Any]:
    """The error responses and schemas the paths reference, transitively."""
    responses = {name: _json(text, "ErrorDescriptionResponse") for name, text in ERRORS.values()}
    wanted: set[str] = set()
    _refs(paths, wanted)
    used_responses = {r.rsplit("/", 1)[1] for r in wanted if r.startswith("#/components/responses/")}
    if used_responses:
        wanted.add("#/components/schemas/ErrorDescriptionResponse")
    schemas: dict[str, Any] = {}
    pending = [r.rsplit("/", 1)[1] for r in wanted if r.startswith("#/components/schemas/")]
    while pending:
        name = pending.pop()
        if name in schemas:
            continue
        schemas[name] = SCHEMAS[name]
        inner: set[str] = set()
        _refs(SCHEMAS[name], inner)
        pending.extend(r.rsplit("/", 1)[1] for r in inner)
    return {"responses": {n: r for n, r in responses.items() if n in used_responses},
            "schemas": dict(sorted(schemas.items()))}


def admin_document(routes: Iterable[tuple[str, str]], version: str) -> dict[str, Any]:
    """The admin API's OpenAPI 3.1 document for `routes` ((method, path template) pairs, e.g. from
    the admin app's router); `version` is the server version. Raises nothing."""
    paths: dict[str, Any] = {}
    for method, path in served_routes(routes):
        op = OPERATIONS.get((method, path)) or _generic(method, path)
        paths.setdefault(path, {})[method] = _operation(method, path, op)
    used_tags = {op["tags"][0] for item in paths.values() for op in item.values()}
    tags = [{"name": name, "description": text} for name, text in TAGS.items() if name in used_tags]
    tags += [{"name": name} for name in sorted(used_tags - TAGS.keys())]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Admin API", "version": version,
                 "description": "Register deployments, inspect and configure services, manage invocations. "
                                "Services themselves are called through the ingress API."},
        "tags": tags,
        "paths": paths,
        "components": _components(paths),
    }
