"""OpenAPI 3.1 documents of the ingress API, built from the registered schema. Pure: dicts in, dicts out.

* `service_document(svc, ingress_url)`: Restate 1.7's per-service document (served by the admin API
  at `GET /services/{name}/openapi`, `rest_api/services.rs` + `schema/metadata/openapi.rs`): for
  every public handler `POST /restate/call/{svc}[/{key}]/{h}` and `POST /restate/send/...`, and the
  deprecated attach/output paths (`/restate/invocation/...` per handler of a Service or Virtual
  Object, `/restate/workflow/{svc}/{key}/attach|output` for a workflow's run handler). Components
  `<handler>Request` / `<handler>Response` hold the manifest's JSON schemas, their local `$ref`s
  re-rooted under the component, beside Restate's shared parameters, responses and `RestateError`.
  Operation ids are Restate's (`greet`, `greetSend`, `greetAttach`, `greetOutput`).
* `ingress_document(services, ingress_url, version)`: beyond Restate (their issue #3108), one
  document for every public service, as the ingress serves it at `GET /openapi`. Operation ids are
  prefixed with the service (`Greeter_greet`), operations are tagged by service, identical schemas
  become one component (named after their `title` where they have one), nested `$defs` become
  components of their own, and untitled scalar schemas stay inline: what code generators and
  Swagger UI take as they are.

Deviations from Restate 1.7.12: tags carry no `externalDocs.description: null` (which no OpenAPI
3.1 validator accepts); operation ids that would collide (a handler `greetSend` beside `greet`)
get a numeric suffix; descriptions are our own words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shardgate.schema import HandlerMeta, HandlerType, ServiceMeta, ServiceType

OPENAPI_VERSION = "3.1.0"
DOCS_URL = "https://docs.restate.dev/invoke/http"

# Names of the shared components (Restate's).
DELAY, KEY, IDEMPOTENCY_HEADER, IDEMPOTENCY_PATH = "delay", "key", "idempotencyKeyHeader", "idempotencyKeyPath"
GENERIC_ERROR, NOT_FOUND, NOT_READY, SEND = "GenericError", "InvocationNotFoundError", "InvocationNotReadyError", "Send"
RESTATE_ERROR = "RestateError"
SEND_TAG, ATTACH_TAG, OUTPUT_TAG, CALL_TAG = "Send", "Attach", "Get Output", "Request Response"

_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean", "null"})
_COMPOSITE_KEYS = frozenset({"properties", "items", "prefixItems", "additionalProperties", "patternProperties",
                             "anyOf", "oneOf", "allOf", "not", "if", "$ref", "$dynamicRef"})
_LITERAL_KEYS = frozenset({"const", "default", "enum", "examples", "example"})  # values, not schemas
_COMPONENT_NAME = re.compile(r"[^A-Za-z0-9._-]")
_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


# ---- shared components --------------------------------------------------------------------------


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _string_param(name: str, where: str, required: bool, description: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": where, "required": required, "schema": {"type": "string"}}
    if description is not None:
        p["description"] = description
    return p


def _parameters() -> dict[str, Any]:
    delay = _string_param("delay", "query", False, "Run the invocation after this delay (`10s`, `1h 30m`, "
                          "ISO 8601 `PT10S`); see " + DOCS_URL)
    delay["example"] = "10s"
    return {
        DELAY: delay,
        KEY: _string_param("key", "path", True),
        IDEMPOTENCY_HEADER: _string_param("idempotency-key", "header", False,
                                          "Invoke the handler at most once per key; see " + DOCS_URL),
        IDEMPOTENCY_PATH: _string_param("idempotencyKey", "path", True,
                                        "The idempotency key the invocation was started with; see " + DOCS_URL),
    }


def _error_response(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("schemas", RESTATE_ERROR), "example": example}}}


def _send_schema() -> dict[str, Any]:
    return {
        "type": "object", "title": "RestateSendResponse", "additionalProperties": False,
        "required": ["invocationId", "status"],
        "properties": {
            "invocationId": {"type": "string"},
            "status": {"type": "string", "enum": ["Accepted", "PreviouslyAccepted"]},
            "executionTime": {"type": "string", "format": "date-time",
                              "description": "When a delayed invocation will run (sends with `delay` only)"},
        },
    }


def _responses() -> dict[str, Any]:
    send_example = {"invocationId": "inv_1gdJBtdVEcM942bjcDmb1c1khoaJe11Hbz", "status": "Accepted"}
    return {
        GENERIC_ERROR: _error_response("Error response", {"code": 500, "message": "Internal server error",
                                                          "source": "invocation"}),
        NOT_FOUND: _error_response("No such invocation", {"message": "invocation not found", "source": "ingress"}),
        NOT_READY: _error_response("The invocation has not completed yet",
                                   {"message": "the invocation exists but has not completed yet",
                                    "source": "ingress"}),
        SEND: {"description": "The invocation was accepted",
               "content": {"application/json": {"schema": _send_schema(), "example": send_example}}},
    }


def restate_error_schema() -> dict[str, Any]:
    """The `RestateError` schema: what every ingress error and terminal handler failure answers."""
    return {
        "type": "object", "title": RESTATE_ERROR, "additionalProperties": False,
        "description": "An ingress error, or the terminal error an invocation failed with",
        "required": ["message", "source"],
        "properties": {
            "code": {"type": "number", "title": "HTTP status code"},
            "message": {"type": "string", "title": "Error message"},
            "source": {"type": "string", "enum": ["ingress", "invocation"], "title": "Who produced the error",
                       "description": "`ingress`: the ingress refused or failed the request (HTTP semantics); "
                                      "`invocation`: the handler failed with this code. Also in the "
                                      "`x-restate-error-source` header."},
            "stacktrace": {"type": "string", "title": "Stack trace"},
            "metadata": {"type": "object", "title": "Error metadata", "additionalProperties": {"type": "string"}},
        },
    }


def _restate_tags() -> list[dict[str, Any]]:
    tags = [(CALL_TAG, "Call a handler and wait for its response"), (SEND_TAG, "Send a request to a handler"),
            (ATTACH_TAG, "Wait for an invocation to finish"), (OUTPUT_TAG, "Get the output of an invocation")]
    return [{"name": name, "description": text, "externalDocs": {"url": DOCS_URL}} for name, text in tags]


def _servers(ingress_url: str) -> list[dict[str, str]]:
    return [{"url": ingress_url.rstrip("/") + "/", "description": "Restate ingress"}]


# ---- schemas ------------------------------------------------------------------------------------


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _map_refs(node: Any, rewrite: Callable[[str], str]) -> Any:
    """A copy of `node` with every local `$ref` ("#...") passed through `rewrite`; literal values
    (`const`, `default`, `enum`, `examples`) are copied untouched."""
    if isinstance(node, list):
        return [_map_refs(x, rewrite) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str) and v.startswith("#"):
            out[k] = rewrite(v)
        elif k in _LITERAL_KEYS:
            out[k] = v
        else:
            out[k] = _map_refs(v, rewrite)
    return out


def _local_refs(node: Any) -> list[str]:
    """Every local `$ref` inside `node` (literal values skipped)."""
    found: list[str] = []

    def record(ref: str) -> str:
        found.append(ref)
        return ref

    _map_refs(node, record)
    return found


def rebase_refs(schema: Any, component: str) -> Any:
    """Restate's re-rooting of a handler schema stored as `component`: `#/x` becomes
    `#/components/schemas/<component>/x`, so `$defs` inside the component still resolve."""
    prefix = f"#/components/schemas/{component}"
    return _map_refs(schema, lambda ref: prefix + ref[1:])


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _is_scalar(schema: dict[str, Any]) -> bool:
    """An untitled schema of scalars only (`{"type": "string"}`, `{}`), best left inline."""
    if "title" in schema or _COMPOSITE_KEYS & schema.keys():
        return False
    ty = schema.get("type")
    types = ty if isinstance(ty, list) else [] if ty is None else [ty]
    return all(t in _SCALAR_TYPES for t in types)


class ServiceSchemas:
    """Restate's components of one service: a schema per handler and direction, refs re-rooted."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def add(self, name: str, schema: Any) -> dict[str, Any]:
        """Store `schema` as component `name`; the `$ref` object that points at it."""
        self.components[name] = rebase_refs(schema, name)
        return _ref("schemas", name)


class SharedSchemas:
    """Components of a merged document: identical schemas share one component, `$defs` are hoisted
    to components of their own, untitled scalar schemas stay inline, names never collide."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.components: dict[str, Any] = {name: None for name in reserved}  # None: taken, not emitted
        self._by_content: dict[str, str] = {}

    def free_name(self, base: str, taken: Iterable[str] = ()) -> str:
        """`base` made a valid component name, with `_2`, `_3`... if it is already used."""
        base = _COMPONENT_NAME.sub("_", base) or "Schema"
        used = set(taken)
        name, n = base, 1
        while name in self.components or name in used:
            n += 1
            name = f"{base}_{n}"
        return name

    def add(self, hint: str, schema: Any) -> Any:
        """The schema object to use in place of `schema` (a `$ref`, or the schema inline)."""
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            return schema
        defs = {**_defs(schema, "definitions"), **_defs(schema, "$defs")}
        root = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
        title = schema.get("title")
        base = title if isinstance(title, str) and title else hint
        self_refs = [r for r in _local_refs(schema) if _def_target(r) is None]
        root_name = self.free_name(base) if self_refs else None
        if root_name is not None:
            self.components[root_name] = None  # reserve it while the defs are placed
        mapping = self._place_defs(defs, root_name)
        body = _map_refs(root, _rewriter(mapping, root_name))
        if root_name is not None:
            self.components[root_name] = body
            return _ref("schemas", root_name)
        if _is_scalar(body):
            return body
        key = _canonical(body)
        if key not in self._by_content:
            name = self.free_name(base)
            self.components[name] = body
            self._by_content[key] = name
        return _ref("schemas", self._by_content[key])

    def _place_defs(self, defs: dict[str, Any], root_name: str | None) -> dict[str, str]:
        """Give every local definition a component name (its own where free or holding the same
        schema, else a suffixed one) and store it; returns local name -> component name."""
        mapping = {local: _COMPONENT_NAME.sub("_", local) or "Schema" for local in defs}
        for _ in range(len(defs) + 1):
            bodies = {local: _map_refs(d, _rewriter(mapping, root_name)) for local, d in defs.items()}
            clashes, seen = [], set()
            for local, name in mapping.items():
                held = self.components.get(name, ...)
                if name in seen or (held is not ... and (held is None or _canonical(held) != _canonical(bodies[local]))):
                    clashes.append(local)
                seen.add(name)
            if not clashes:
                for local, name in mapping.items():
                    self.components[name] = bodies[local]
                return mapping
            for local in clashes:
                mapping[local] = self.free_name(mapping[local], taken=mapping.values())
        raise AssertionError("unreachable: every clash moves to a fresh name")  # pragma: no cover


def _defs(schema: dict[str, Any], key: str) -> dict[str, Any]:
    value = schema.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _def_target(ref: str) -> tuple[str, str] | None:
    """(local definition name, rest of the pointer) of `#/$defs/<name>...`, else None."""
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            name, slash, rest = ref[len(prefix):].partition("/")
            return _unescape(name), slash + rest
    return None


def _rewriter(mapping: dict[str, str], root_name: str | None) -> Callable[[str], str]:
    def rewrite(ref: str) -> str:
        target = _def_target(ref)
        if target is not None and target[0] in mapping:
            return f"#/components/schemas/{_escape(mapping[target[0]])}{target[1]}"
        if root_name is not None:
            return f"#/components/schemas/{_escape(root_name)}{ref[1:]}"
        return ref

    return rewrite


# ---- operations ---------------------------------------------------------------------------------

SchemaSink = Callable[[str, Any], Any]
"""(component name hint, JSON schema) -> the schema object an operation uses."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a document before its id is made unique."""

    path: str
    method: str
    kind: str  # "call" | "send" | "attach" | "output"
    service: str
    handler: str
    body: dict[str, Any]


def _request_body(h: HandlerMeta, schema: SchemaSink) -> dict[str, Any] | None:
    """Restate's request body: none without an input content type; JSON schema when the manifest
    gives one (`true` as `{}`), else the bare content type; required unless empty input is allowed."""
    if h.input_content_type is None:
        return None
    media: dict[str, Any] = {}
    if h.input_json_schema is not None:
        media["schema"] = schema(f"{h.name}Request", {} if h.input_json_schema is True else h.input_json_schema)
    return {"content": {h.input_content_type: media}, "required": h.input_required}


def _response(h: HandlerMeta, schema: SchemaSink) -> dict[str, Any]:
    """The handler's success response: `Empty` without an output content type."""
    if h.output_content_type is None:
        return {"description": "Empty"}
    media: dict[str, Any] = {}
    if h.output_json_schema is not None:
        media["schema"] = schema(f"{h.name}Response", h.output_json_schema)
    return {"description": "", "content": {h.output_content_type: media}}


def _lookup_hint(verb: str, what: str) -> str:
    return (f"Deprecated: look the invocation id up with POST /restate/lookup ({what}), then use "
            f"GET /restate/{verb}/{{invocationId}}. ")


def _operation(summary: str, description: str, params: list[str], responses: dict[str, Any],
               h: HandlerMeta, tag: str | None = None, deprecated: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": description}
    if tag is not None:
        op["tags"] = [tag]
    if deprecated:
        op["deprecated"] = True
    op["parameters"] = [_ref("parameters", p) for p in params]
    op["responses"] = responses
    if h.metadata:
        op["x-restate-extensions"] = dict(h.metadata)
    return op


def _errors(*statuses: tuple[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {code: _ref("responses", name) for code, name in statuses}
    found["default"] = _ref("responses", GENERIC_ERROR)
    return found


def handler_operations(svc: ServiceMeta, h: HandlerMeta, schema: SchemaSink) -> list[Operation]:
    """Restate's operations of one public handler: call and send, then attach and output (for a
    workflow only of its run handler). Ids are set later; `schema` stores the JSON schemas."""
    keyed, workflow = svc.ty.keyed, svc.ty is ServiceType.WORKFLOW
    target = f"{svc.name}/{{key}}/{h.name}" if keyed else f"{svc.name}/{h.name}"
    call_params = ([KEY] if keyed else []) + ([] if workflow else [IDEMPOTENCY_HEADER])
    by_id_params = ([KEY] if keyed else []) + ([] if workflow else [IDEMPOTENCY_PATH])
    body, ok = _request_body(h, schema), _response(h, schema)
    doc = h.documentation
    call = _operation(h.name, doc or f"Call {svc.name}/{h.name} and wait for its response", call_params,
                      {"200": ok, **_errors()}, h)
    send = _operation(h.name, doc or f"Send a request to {svc.name}/{h.name} without waiting for the response",
                      [*call_params, DELAY], {"200": _ref("responses", SEND), "202": _ref("responses", SEND),
                                              **_errors()}, h, SEND_TAG)
    if body is not None:
        call["requestBody"] = body
        send["requestBody"] = dict(body)
    ops = [Operation(f"/restate/call/{target}", "post", "call", svc.name, h.name, call),
           Operation(f"/restate/send/{target}", "post", "send", svc.name, h.name, send)]
    if workflow and h.ty is not HandlerType.WORKFLOW:
        return ops
    if workflow:
        base, what = f"/restate/workflow/{svc.name}/{{key}}", "with the workflow target"
        attach_text = f"Wait for the run of workflow {svc.name} with this key and return its response"
        output_text = f"Return the response of the run of workflow {svc.name} with this key, if it has finished"
    else:
        base, what = f"/restate/invocation/{target}/{{idempotencyKey}}", "with the idempotency key"
        attach_text = f"Wait for the {svc.name}/{h.name} invocation with this idempotency key and return its response"
        output_text = (f"Return the response of the {svc.name}/{h.name} invocation with this idempotency key, "
                       "if it has finished")
    attach = _operation(h.name, _lookup_hint("attach", what) + (doc or attach_text), by_id_params,
                        {"200": dict(ok), **_errors(("404", NOT_FOUND))}, h, ATTACH_TAG, deprecated=True)
    output = _operation(h.name, _lookup_hint("output", what) + (doc or output_text), by_id_params,
                        {"200": dict(ok), **_errors(("404", NOT_FOUND), ("470", NOT_READY))}, h, OUTPUT_TAG,
                        deprecated=True)
    return [*ops, Operation(f"{base}/attach", "get", "attach", svc.name, h.name, attach),
            Operation(f"{base}/output", "get", "output", svc.name, h.name, output)]


_ID_SUFFIX = {"call": "", "send": "Send", "attach": "Attach", "output": "Output"}


def _paths(operations: Iterable[Operation], operation_id: Callable[[Operation], str]) -> dict[str, Any]:
    """The `paths` object; operation ids made unique with `_2`, `_3`... where they would repeat."""
    paths: dict[str, Any] = {}
    used: set[str] = set()
    for op in operations:
        base = operation_id(op)
        op_id, n = base, 1
        while op_id in used:
            n += 1
            op_id = f"{base}_{n}"
        used.add(op_id)
        body = dict(op.body)
        paths.setdefault(op.path, {})[op.method] = {"operationId": op_id, **body}
    return paths


def _public_handlers(svc: ServiceMeta) -> list[HandlerMeta]:
    """The handlers callable through the ingress (service and handler public)."""
    return [h for h in svc.handlers.values() if svc.public and h.public]


def _components(schemas: dict[str, Any]) -> dict[str, Any]:
    return {"parameters": _parameters(), "responses": _responses(),
            "schemas": {**schemas, RESTATE_ERROR: restate_error_schema()}}


# ---- documents ----------------------------------------------------------------------------------


def service_document(svc: ServiceMeta, ingress_url: str) -> dict[str, Any]:
    """Restate's OpenAPI 3.1 document of one service; `ingress_url` is the advertised ingress."""
    schemas = ServiceSchemas()
    operations = [op for h in _public_handlers(svc) for op in handler_operations(svc, h, schemas.add)]
    order = {"call": 0, "send": 1, "attach": 2, "output": 3}  # Restate lists calls, sends, attaches, outputs
    operations.sort(key=lambda op: order[op.kind])
    info: dict[str, Any] = {"title": svc.name, "version": str(svc.revision)}
    if svc.documentation is not None:
        info["description"] = svc.documentation
    if svc.metadata:
        info["x-restate-extensions"] = dict(svc.metadata)
    return {
        "openapi": OPENAPI_VERSION, "info": info, "servers": _servers(ingress_url), "tags": _restate_tags(),
        "paths": _paths(operations, lambda op: op.handler + _ID_SUFFIX[op.kind]),
        "components": _components(schemas.components),
    }


def _service_tag(svc: ServiceMeta) -> dict[str, Any]:
    tag: dict[str, Any] = {"name": svc.name,
                           "description": svc.documentation or f"{svc.ty.value} {svc.name}, revision {svc.revision}"}
    if svc.metadata:
        tag["x-restate-extensions"] = dict(svc.metadata)
    return tag


def _merged_id(op: Operation) -> str:
    return f"{_IDENTIFIER.sub('_', op.service)}_{op.handler}{_ID_SUFFIX[op.kind]}"


def _prefixed(schemas: SharedSchemas, prefix: str) -> SchemaSink:
    """A sink naming untitled schemas after the service too (`Greeter_greetRequest`)."""
    return lambda hint, schema: schemas.add(f"{prefix}_{hint}", schema)


def ingress_document(services: Iterable[ServiceMeta], ingress_url: str, version: int | str) -> dict[str, Any]:
    """One OpenAPI 3.1 document for every public service (beyond Restate 1.7, which has none).

    `version` becomes `info.version` (the registry version, so it changes with every registration).
    Services without a public handler are left out.
    """
    schemas = SharedSchemas(reserved=[RESTATE_ERROR])
    operations: list[Operation] = []
    tags: list[dict[str, Any]] = []
    for svc in sorted(services, key=lambda s: s.name):
        public = _public_handlers(svc)
        if not public:
            continue
        tags.append(_service_tag(svc))
        sink = _prefixed(schemas, _IDENTIFIER.sub("_", svc.name))
        for h in public:
            for op in handler_operations(svc, h, sink):
                op.body["tags"] = [svc.name]
                operations.append(op)
    emitted = {name: s for name, s in schemas.components.items() if s is not None}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Restate ingress", "version": str(version),
                 "description": "Every public service registered with this cluster, as its ingress serves it."},
        "servers": _servers(ingress_url), "tags": tags,
        "paths": _paths(operations, _merged_id),
        "components": _components(emitted),
    }
