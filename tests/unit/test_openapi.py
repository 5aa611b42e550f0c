"""The OpenAPI document builders (`ingress.openapi`, `ingress.admin.apidoc`) on hand-made schemas.

Expected shapes are the ones Restate 1.7.12 serves for the same manifests (compared field by field
against the reference server); every document is also checked by an OpenAPI 3.1 validator.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate
from redis.asyncio import Redis

from ingress.admin import AdminSettings, build_admin_app
from ingress.admin.apidoc import OPERATIONS, admin_document, served_routes
from ingress.openapi import SharedSchemas, ingress_document, rebase_refs, service_document
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.schema import HandlerMeta, HandlerType, ServiceMeta, ServiceType, services_from_manifest

INGRESS = "http://127.0.0.1:8080"
ITEM = {"type": "object", "title": "Item", "required": ["sku"], "properties": {"sku": {"type": "string"}}}
ORDER = {"type": "object", "title": "Order", "$defs": {"Item": ITEM},
         "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}}}


def _json_handler(name: str, schema: Any = None, out: Any = None, **kw: Any) -> HandlerMeta:
    return HandlerMeta(name=name, ty=kw.pop("ty", None), input_content_type="application/json",
                       input_json_schema={"type": "string"} if schema is None else schema,
                       output_json_schema={"type": "string"} if out is None else out, **kw)


def _service(name: str, ty: ServiceType, *handlers: HandlerMeta, **kw: Any) -> ServiceMeta:
    return ServiceMeta(name=name, ty=ty, handlers={h.name: h for h in handlers}, deployment_id="dp_x", **kw)


def _ops(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """operationId -> (method, path) of every operation."""
    return {op["operationId"]: (m, p) for p, item in doc["paths"].items() for m, op in item.items()}


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _all_refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [r for x in node for r in _all_refs(x)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return own + [r for k, v in node.items() if k not in ("default", "const", "examples") for r in _all_refs(v)]


# ---- per-service document (Restate's shape) ----------------------------------------------------


def test_service_paths_operation_ids_and_parameters() -> None:
    svc = _service("Greeter", ServiceType.SERVICE, _json_handler("greet"), _json_handler("hidden", public=False))
    doc = service_document(svc, INGRESS)
    validate(doc)
    assert doc["openapi"].startswith("3.1") and doc["info"] == {"title": "Greeter", "version": "1"}
    assert doc["servers"][0]["url"] == INGRESS + "/"
    assert _ops(doc) == {
        "greet": ("post", "/restate/call/Greeter/greet"),
        "greetSend": ("post", "/restate/send/Greeter/greet"),
        "greetAttach": ("get", "/restate/invocation/Greeter/greet/{idempotencyKey}/attach"),
        "greetOutput": ("get", "/restate/invocation/Greeter/greet/{idempotencyKey}/output"),
    }
    paths = doc["paths"]
    params = {p: [x["$ref"].rsplit("/", 1)[1] for op in item.values() for x in op["parameters"]]
              for p, item in paths.items()}
    assert params["/restate/call/Greeter/greet"] == ["idempotencyKeyHeader"]
    assert params["/restate/send/Greeter/greet"] == ["idempotencyKeyHeader", "delay"]
    assert params["/restate/invocation/Greeter/greet/{idempotencyKey}/attach"] == ["idempotencyKeyPath"]
    send = paths["/restate/send/Greeter/greet"]["post"]
    assert send["tags"] == ["Send"] and set(send["responses"]) == {"200", "202", "default"}
    output = paths["/restate/invocation/Greeter/greet/{idempotencyKey}/output"]["get"]
    assert output["deprecated"] is True and set(output["responses"]) == {"200", "404", "470", "default"}
    assert [t["name"] for t in doc["tags"]] == ["Request Response", "Send", "Attach", "Get Output"]
    assert set(doc["components"]["schemas"]) == {"greetRequest", "greetResponse", "RestateError"}


def test_keyed_and_workflow_services() -> None:
    counter = _service("Counter", ServiceType.VIRTUAL_OBJECT, _json_handler("add", ty=HandlerType.EXCLUSIVE))
    doc = service_document(counter, INGRESS)
    validate(doc)
    call = doc["paths"]["/restate/call/Counter/{key}/add"]["post"]
    assert [p["$ref"] for p in call["parameters"]] == ["#/components/parameters/key",
                                                      "#/components/parameters/idempotencyKeyHeader"]
    assert "/restate/invocation/Counter/{key}/add/{idempotencyKey}/attach" in doc["paths"]

    signup = _service("Signup", ServiceType.WORKFLOW, _json_handler("run", ty=HandlerType.WORKFLOW),
                      _json_handler("status", ty=HandlerType.SHARED))
    doc = service_document(signup, INGRESS)
    validate(doc)
    assert _ops(doc) == {
        "run": ("post", "/restate/call/Signup/{key}/run"), "runSend": ("post", "/restate/send/Signup/{key}/run"),
        "status": ("post", "/restate/call/Signup/{key}/status"),
        "statusSend": ("post", "/restate/send/Signup/{key}/status"),
        "runAttach": ("get", "/restate/workflow/Signup/{key}/attach"),
        "runOutput": ("get", "/restate/workflow/Signup/{key}/output"),
    }
    for item in doc["paths"].values():  # workflows take no idempotency key
        for op in item.values():
            assert all("idempotency" not in p["$ref"] for p in op["parameters"])


def test_request_and_response_rules_follow_the_manifest() -> None:
    manifest = {"protocolMode": "REQUEST_RESPONSE", "minProtocolVersion": 5, "maxProtocolVersion": 5, "services": [
        {"name": "Rules", "ty": "SERVICE", "handlers": [
            {"name": "absent"},  # no input/output given: any body or none; JSON output without schema
            {"name": "empty", "input": {}, "output": {}},  # no body at all; no output
            {"name": "required", "input": {"required": True, "contentType": "application/json",
                                           "jsonSchema": {"type": "integer"}},
             "output": {"contentType": "application/json", "jsonSchema": {"type": "integer"}}},
            {"name": "raw", "input": {"contentType": "application/octet-stream", "jsonSchema": True},
             "output": {"contentType": "application/octet-stream", "jsonSchema": True}},
            {"name": "text", "input": {"contentType": "text/*"}, "output": {"contentType": "text/plain"}},
        ]}]}
    [svc] = services_from_manifest(manifest, "dp_x", {})
    doc = service_document(svc, INGRESS)
    validate(doc)

    def call(name: str) -> dict[str, Any]:
        op: dict[str, Any] = doc["paths"][f"/restate/call/Rules/{name}"]["post"]
        return op

    assert call("absent")["requestBody"] == {"content": {"*/*": {}}, "required": False}
    assert call("absent")["responses"]["200"] == {"description": "", "content": {"application/json": {}}}
    assert "requestBody" not in call("empty")
    assert call("empty")["responses"]["200"] == {"description": "Empty"}
    assert call("required")["requestBody"] == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/requiredRequest"}}},
        "required": True}
    assert call("text")["requestBody"] == {"content": {"text/*": {}}, "required": False}
    assert call("text")["responses"]["200"]["content"] == {"text/plain": {}}
    schemas = doc["components"]["schemas"]
    assert schemas["rawRequest"] == {} and schemas["rawResponse"] is True  # as Restate: `true` input becomes {}
    assert schemas["requiredRequest"] == {"type": "integer"}


def test_documentation_and_metadata() -> None:
    h = _json_handler("greet", documentation="Says hello", metadata={"owner": "ada"})
    svc = _service("Greeter", ServiceType.SERVICE, h, documentation="Greets", metadata={"team": "core"}, revision=3)
    doc = service_document(svc, INGRESS)
    validate(doc)
    assert doc["info"] == {"title": "Greeter", "version": "3", "description": "Greets",
                           "x-restate-extensions": {"team": "core"}}
    call = doc["paths"]["/restate/call/Greeter/greet"]["post"]
    attach = doc["paths"]["/restate/invocation/Greeter/greet/{idempotencyKey}/attach"]["get"]
    assert call["description"] == "Says hello" and call["summary"] == "greet"
    assert attach["description"].endswith("Says hello") and attach["description"].startswith("Deprecated")
    assert call["x-restate-extensions"] == attach["x-restate-extensions"] == {"owner": "ada"}


def test_private_handlers_and_services_are_left_out() -> None:
    svc = _service("Greeter", ServiceType.SERVICE, _json_handler("greet"), _json_handler("private", public=False))
    assert not any("private" in p for p in service_document(svc, INGRESS)["paths"])
    hidden = _service("Hidden", ServiceType.SERVICE, _json_handler("greet"), public=False)
    doc = service_document(hidden, INGRESS)
    validate(doc)
    assert doc["paths"] == {}


def test_local_refs_are_rerooted_under_the_component() -> None:
    svc = _service("Shop", ServiceType.SERVICE, _json_handler("order", ORDER, ORDER))
    doc = service_document(svc, INGRESS)
    validate(doc)
    request = doc["components"]["schemas"]["orderRequest"]
    assert request["properties"]["items"]["items"] == {"$ref": "#/components/schemas/orderRequest/$defs/Item"}
    assert _resolve(doc, request["properties"]["items"]["items"]["$ref"]) == ITEM
    assert rebase_refs({"$ref": "#"}, "x") == {"$ref": "#/components/schemas/x"}
    literal = {"default": {"$ref": "#/a"}, "enum": [{"$ref": "#/b"}], "properties": {"p": {"$ref": "#/c"}}}
    assert rebase_refs(literal, "x") == {"default": {"$ref": "#/a"}, "enum": [{"$ref": "#/b"}],  # values, not refs
                                         "properties": {"p": {"$ref": "#/components/schemas/x/c"}}}


def test_colliding_operation_ids_get_a_suffix() -> None:
    svc = _service("Greeter", ServiceType.SERVICE, _json_handler("greet"), _json_handler("greetSend"))
    doc = service_document(svc, INGRESS)
    validate(doc)  # the validator rejects repeated operation ids
    ops = _ops(doc)
    assert ops["greetSend"] == ("post", "/restate/call/Greeter/greetSend")  # calls are numbered first
    assert ops["greetSend_2"] == ("post", "/restate/send/Greeter/greet")


# ---- merged ingress document -------------------------------------------------------------------


def _merged_services() -> list[ServiceMeta]:
    greet_model = {"type": "object", "title": "GreetRequest", "properties": {"name": {"type": "string"}}}
    other_item = {**ITEM, "required": []}  # same title, other content
    return [
        _service("Greeter", ServiceType.SERVICE, _json_handler("greet", greet_model), _json_handler("get"),
                 _json_handler("private", public=False), documentation="Greets", metadata={"team": "core"}),
        _service("Counter", ServiceType.VIRTUAL_OBJECT, _json_handler("get", ty=HandlerType.SHARED),
                 _json_handler("shop", ORDER, other_item, ty=HandlerType.EXCLUSIVE)),
        _service("my.Svc-1", ServiceType.SERVICE, _json_handler("get", greet_model, ORDER)),
        _service("Hidden", ServiceType.SERVICE, _json_handler("get"), public=False),
        _service("AllPrivate", ServiceType.SERVICE, _json_handler("get", public=False)),
        _service("Signup", ServiceType.WORKFLOW, _json_handler("run", ty=HandlerType.WORKFLOW)),
    ]


def test_merged_document_is_valid_with_unique_operation_ids() -> None:
    doc = ingress_document(_merged_services(), INGRESS, 42)
    validate(doc)
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == "42"
    ops = _ops(doc)
    assert ops["Greeter_get"] == ("post", "/restate/call/Greeter/get")
    assert ops["Counter_get"] == ("post", "/restate/call/Counter/{key}/get")
    assert ops["my_Svc_1_getSend"] == ("post", "/restate/send/my.Svc-1/get")
    assert ops["Signup_runAttach"] == ("get", "/restate/workflow/Signup/{key}/attach")
    assert not any(p.startswith(("/restate/call/Hidden", "/restate/call/AllPrivate")) or "private" in p
                   for p in doc["paths"])
    assert [t["name"] for t in doc["tags"]] == ["Counter", "Greeter", "Signup", "my.Svc-1"]
    greeter_tag = next(t for t in doc["tags"] if t["name"] == "Greeter")
    assert greeter_tag["description"] == "Greets" and greeter_tag["x-restate-extensions"] == {"team": "core"}
    for p, item in doc["paths"].items():
        for op in item.values():
            assert op["tags"] == [p.split("/")[3]]


def test_merged_components_are_deduplicated_and_resolve() -> None:
    doc = ingress_document(_merged_services(), INGRESS, 1)
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"GreetRequest", "Order", "Item", "Item_2", "RestateError"}
    assert schemas["Order"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert "$defs" not in schemas["Order"] and schemas["Item"] == ITEM
    assert schemas["Item_2"]["required"] == []  # the other "Item" keeps its own component
    greet = doc["paths"]["/restate/call/Greeter/greet"]["post"]["requestBody"]["content"]["application/json"]
    other = doc["paths"]["/restate/call/my.Svc-1/get"]["post"]["requestBody"]["content"]["application/json"]
    assert greet["schema"] == other["schema"] == {"$ref": "#/components/schemas/GreetRequest"}
    scalar = doc["paths"]["/restate/call/Greeter/get"]["post"]["requestBody"]["content"]["application/json"]
    assert scalar["schema"] == {"type": "string"}  # untitled scalars stay inline
    for ref in _all_refs(doc):
        _resolve(doc, ref)  # raises KeyError for a dangling reference
    for shared in ("parameters", "responses"):
        assert set(doc["components"][shared]) == set(service_document(_merged_services()[0], INGRESS)["components"][shared])


def test_shared_schemas_hoist_defs_and_self_references() -> None:
    schemas = SharedSchemas(reserved=["RestateError"])
    tree = {"title": "Tree", "type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}
    assert schemas.add("hint", tree) == {"$ref": "#/components/schemas/Tree"}
    assert schemas.components["Tree"]["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Tree"}
    clash = {"title": "RestateError", "type": "object"}
    assert schemas.add("hint", clash) == {"$ref": "#/components/schemas/RestateError_2"}
    untitled = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert schemas.add("Svc_hRequest", untitled) == {"$ref": "#/components/schemas/Svc_hRequest"}
    assert schemas.add("Other_hRequest", dict(untitled)) == {"$ref": "#/components/schemas/Svc_hRequest"}
    assert schemas.add("x", True) == {} and schemas.add("x", {"type": ["string", "null"]}) == {"type": ["string", "null"]}
    # two defs of one schema that clash with existing components move together, refs kept consistent
    nested = {"title": "Outer", "$defs": {"Tree": {"type": "object", "properties": {"o": {"$ref": "#/$defs/Item"}}},
                                          "Item": {"type": "string", "title": "Item"}},
              "properties": {"t": {"$ref": "#/$defs/Tree"}}}
    assert schemas.add("hint", nested) == {"$ref": "#/components/schemas/Outer"}
    moved = schemas.components["Outer"]["properties"]["t"]["$ref"].rsplit("/", 1)[1]
    assert moved == "Tree_2"
    assert schemas.components["Tree_2"]["properties"]["o"] == {"$ref": "#/components/schemas/Item"}


def test_merged_document_of_nothing_is_valid() -> None:
    doc = ingress_document([], INGRESS, 0)
    validate(doc)
    assert doc["paths"] == {} and doc["tags"] == []


# ---- admin API document ------------------------------------------------------------------------


def test_admin_document_describes_exactly_the_routes_given() -> None:
    routes = [("GET", "/services"), ("HEAD", "/services"), ("GET", "/v2/services"), ("GET", "/services/{service}"),
              ("PATCH", "/services/{service}"), ("POST", "/deployments"), ("GET", "/custom/{thing}")]
    doc = admin_document(routes, "1.7.12")
    validate(doc)
    assert doc["info"]["title"] == "Admin API" and doc["info"]["version"] == "1.7.12"
    assert _ops(doc) == {"list_services": ("get", "/services"), "get_service": ("get", "/services/{service}"),
                         "modify_service": ("patch", "/services/{service}"),
                         "create_deployment": ("post", "/deployments"), "get_custom_thing": ("get", "/custom/{thing}")}
    patch = doc["paths"]["/services/{service}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModifyServiceRequest"}
    assert patch["parameters"][0]["name"] == "service" and patch["parameters"][0]["in"] == "path"
    assert patch["responses"]["404"] == {"$ref": "#/components/responses/NotFound"}
    assert set(doc["components"]["schemas"]) >= {"ServiceMetadata", "HandlerMetadata", "ModifyServiceRequest",
                                                 "RegisterDeploymentRequest", "ErrorDescriptionResponse"}
    assert "RestartAsNewInvocationResponse" not in doc["components"]["schemas"]  # no route references it
    assert [t["name"] for t in doc["tags"]] == ["deployment", "service", "other"]


def test_admin_document_of_every_described_route_is_valid() -> None:
    doc = admin_document([(m.upper(), p) for m, p in OPERATIONS], "1.7.12")
    validate(doc)
    assert len(_ops(doc)) == len(OPERATIONS)


def test_served_routes_drop_head_and_versioned_copies() -> None:
    assert served_routes([("HEAD", "/health"), ("GET", "/health"), ("GET", "/v4/health"), ("GET", "/v10"),
                          ("DELETE", "/a"), ("GET", "/a"), ("*", "/x")]) == [("get", "/a"), ("delete", "/a"),
                                                                           ("get", "/health")]


@pytest.mark.asyncio
async def test_admin_app_routes_are_all_in_its_document() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never connected: only the router is read
    store = RegistryStore(redis)
    async with aiohttp.ClientSession() as http:
        app = build_admin_app(store, RegistryCache(store), http, AdminSettings(advertised_ingress_url=INGRESS))
        routes = [(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None]
    await redis.aclose()
    doc = admin_document(routes, "1.7.12")
    validate(doc)
    ops = _ops(doc)
    for method, path in served_routes(routes):
        assert doc["paths"][path][method]
    for key in [("get", "/services/{service}/openapi"), ("get", "/openapi"), ("get", "/deployments"),
                ("post", "/deployments"), ("get", "/version"), ("get", "/health")]:
        assert ops[OPERATIONS[key].operation_id] == key
