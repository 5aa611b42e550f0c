"""OpenAPI 3.1 documents served by a real cluster (`sgtools.dev.DevCluster`: Redis, one partition
worker, one ingress) with the real restate-sdk conformance deployment (`sdk_deployment`) registered.

* admin `GET /services/{name}/openapi` (also under /v2../v4): Restate 1.7.12's document, checked
  against what the reference server answers for the same deployment (paths, operation ids,
  parameters, request and response schemas from the manifest; private handlers left out); JSON 404
  in the admin error shape for an unknown service;
* admin `GET /openapi`: every route the admin API serves, with Restate's operation ids;
* ingress `GET /openapi` (beyond Restate): one document of every public service whose paths the
  ingress really serves, following registry changes.

Every document is validated with `openapi-spec-validator` (OpenAPI 3.1).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from openapi_spec_validator import validate

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import poll

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SERVICE_OPERATIONS = {  # operationId -> (method, path), as Restate 1.7.12 answers for the conformance deployment
    "Greeter": {
        **{h: ("post", f"/restate/call/Greeter/{h}") for h in
           ("greet", "greet_model", "sleepy", "with_run", "fail", "slow", "slow_asyncio", "headers", "noop")},
        **{f"{h}Send": ("post", f"/restate/send/Greeter/{h}") for h in
           ("greet", "greet_model", "sleepy", "with_run", "fail", "slow", "slow_asyncio", "headers", "noop")},
        **{f"{h}{v.capitalize()}": ("get", f"/restate/invocation/Greeter/{h}/{{idempotencyKey}}/{v}")
           for h in ("greet", "greet_model", "sleepy", "with_run", "fail", "slow", "slow_asyncio", "headers", "noop")
           for v in ("attach", "output")},
    },
    "Counter": {
        **{h: ("post", f"/restate/call/Counter/{{key}}/{h}") for h in ("add", "get", "slow_add")},
        **{f"{h}Send": ("post", f"/restate/send/Counter/{{key}}/{h}") for h in ("add", "get", "slow_add")},
        **{f"{h}{v.capitalize()}": ("get", f"/restate/invocation/Counter/{{key}}/{h}/{{idempotencyKey}}/{v}")
           for h in ("add", "get", "slow_add") for v in ("attach", "output")},
    },
    "Signup": {
        **{h: ("post", f"/restate/call/Signup/{{key}}/{h}") for h in ("run", "confirm", "status")},
        **{f"{h}Send": ("post", f"/restate/send/Signup/{{key}}/{h}") for h in ("run", "confirm", "status")},
        "runAttach": ("get", "/restate/workflow/Signup/{key}/attach"),
        "runOutput": ("get", "/restate/workflow/Signup/{key}/output"),
    },
}
GREET_REQUEST = {"properties": {"name": {"description": "who to greet", "minLength": 1, "title": "Name",
                                         "type": "string"},
                                "times": {"default": 1, "maximum": 10, "minimum": 1, "title": "Times",
                                          "type": "integer"}},
                 "required": ["name"], "title": "GreetRequest", "type": "object"}


@dataclass
class Env:
    cluster: DevCluster
    http: aiohttp.ClientSession

    async def get(self, url: str) -> tuple[int, dict[str, str], Any]:
        async with self.http.get(url) as r:
            raw = await r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(raw) if raw else None

    async def admin(self, path: str) -> tuple[int, dict[str, str], Any]:
        return await self.get(self.cluster.admin_url + path)

    async def ingress(self, path: str) -> tuple[int, dict[str, str], Any]:
        return await self.get(self.cluster.ingress_url + path)

    async def document(self, url: str) -> dict[str, Any]:
        """A 200 JSON document, validated as OpenAPI 3.1."""
        status, headers, doc = await self.get(url)
        assert status == 200, doc
        assert headers["content-type"].startswith("application/json"), headers
        validate(doc)
        assert isinstance(doc, dict)
        return doc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[Env]:
    data_dir: Path = tmp_path_factory.mktemp("openapi-cluster") / "data"
    spec = ClusterSpec(workers=1, partitions=4, ingress_port=0, admin_port=0, data_dir=data_dir,
                       start_timeout_s=45.0)
    async with DevCluster(spec) as cluster, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": sdk_deployment}) as r:
            assert r.status == 201, await r.text()
        e = Env(cluster, http)

        async def serving() -> bool | None:
            async with http.post(f"{cluster.ingress_url}/restate/call/Greeter/greet", json="ready") as r:
                return True if r.status == 200 else None

        await poll("the ingress to serve the conformance deployment", 20.0, serving)
        yield e


def _operations(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {op["operationId"]: (method, path) for path, item in doc["paths"].items() for method, op in item.items()}


def _media(op: dict[str, Any], where: str) -> dict[str, Any]:
    """The application/json media object of an operation's request body or 200 response."""
    holder = op["requestBody"] if where == "request" else op["responses"]["200"]
    media: dict[str, Any] = holder["content"]["application/json"]
    return media


def _component(doc: dict[str, Any], media: dict[str, Any]) -> Any:
    ref = media["schema"]["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


# ---- admin: per-service documents -----------------------------------------------------------------


@pytest.mark.parametrize("service", ["Greeter", "Counter", "Signup"])
async def test_service_document_has_restates_paths_and_operation_ids(env: Env, service: str) -> None:
    doc = await env.document(f"{env.cluster.admin_url}/services/{service}/openapi")
    assert doc["openapi"].startswith("3.1") and doc["info"] == {"title": service, "version": "1"}
    assert doc["servers"][0]["url"] == env.cluster.ingress_url + "/"
    assert _operations(doc) == SERVICE_OPERATIONS[service]
    assert not any("private" in path for path in doc["paths"])
    assert [t["name"] for t in doc["tags"]] == ["Request Response", "Send", "Attach", "Get Output"]
    assert set(doc["components"]["parameters"]) == {"delay", "key", "idempotencyKeyHeader", "idempotencyKeyPath"}
    assert set(doc["components"]["responses"]) == {"GenericError", "InvocationNotFoundError",
                                                   "InvocationNotReadyError", "Send"}


async def test_service_document_schemas_come_from_the_manifest(env: Env) -> None:
    doc = await env.document(f"{env.cluster.admin_url}/services/Greeter/openapi")
    paths = doc["paths"]
    greet_model = paths["/restate/call/Greeter/greet_model"]["post"]
    assert _component(doc, _media(greet_model, "request")) == GREET_REQUEST
    assert _component(doc, _media(greet_model, "response"))["title"] == "GreetResponse"
    assert greet_model["requestBody"]["required"] is False
    assert _component(doc, _media(paths["/restate/call/Greeter/greet"]["post"], "request")) == {"type": "string"}
    noop = paths["/restate/call/Greeter/noop"]["post"]  # no input, no output content type
    assert "requestBody" not in noop and noop["responses"]["200"] == {"description": "Empty"}
    assert _component(doc, _media(paths["/restate/call/Greeter/headers"]["post"], "response")) == {"type": "object"}
    send = paths["/restate/send/Greeter/greet"]["post"]
    assert [p["$ref"].rsplit("/", 1)[1] for p in send["parameters"]] == ["idempotencyKeyHeader", "delay"]
    assert set(send["responses"]) == {"200", "202", "default"}
    assert set(doc["components"]["schemas"]) == {
        "RestateError", "greetRequest", "greetResponse", "greet_modelRequest", "greet_modelResponse",
        "sleepyRequest", "sleepyResponse", "with_runRequest", "with_runResponse", "failRequest", "failResponse",
        "slowRequest", "slowResponse", "slow_asyncioRequest", "slow_asyncioResponse", "headersResponse"}

    counter = await env.document(f"{env.cluster.admin_url}/services/Counter/openapi")
    add = counter["paths"]["/restate/call/Counter/{key}/add"]["post"]
    assert [p["$ref"].rsplit("/", 1)[1] for p in add["parameters"]] == ["key", "idempotencyKeyHeader"]
    assert _component(counter, _media(add, "response")) == {"type": "integer"}
    signup = await env.document(f"{env.cluster.admin_url}/services/Signup/openapi")
    run = signup["paths"]["/restate/call/Signup/{key}/run"]["post"]
    assert [p["$ref"].rsplit("/", 1)[1] for p in run["parameters"]] == ["key"]  # no idempotency key on workflows


@pytest.mark.parametrize("prefix", ["/v2", "/v3", "/v4"])
async def test_service_document_under_versioned_paths(env: Env, prefix: str) -> None:
    plain = await env.document(f"{env.cluster.admin_url}/services/Counter/openapi")
    assert await env.document(f"{env.cluster.admin_url}{prefix}/services/Counter/openapi") == plain


@pytest.mark.parametrize("path", ["/services/NoSuch/openapi", "/v4/services/NoSuch/openapi",
                                  "/services/greeter/openapi"])
async def test_service_document_of_unknown_service_is_admin_404(env: Env, path: str) -> None:
    status, headers, body = await env.admin(path)
    name = path.split("/")[-2]
    assert (status, body) == (404, {"message": f"The requested service '{name}' does not exist", "restate_code": None})
    assert headers["content-type"].startswith("application/json")


# ---- admin: its own document ----------------------------------------------------------------------


async def test_admin_document_lists_the_served_routes(env: Env) -> None:
    doc = await env.document(f"{env.cluster.admin_url}/openapi")
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == "Admin API"
    ops = _operations(doc)
    for op_id, route in {"list_deployments": ("get", "/deployments"), "create_deployment": ("post", "/deployments"),
                         "get_deployment": ("get", "/deployments/{deployment}"),
                         "delete_deployment": ("delete", "/deployments/{deployment}"),
                         "list_services": ("get", "/services"), "get_service": ("get", "/services/{service}"),
                         "modify_service": ("patch", "/services/{service}"),
                         "list_service_handlers": ("get", "/services/{service}/handlers"),
                         "get_service_handler": ("get", "/services/{service}/handlers/{handler}"),
                         "get_service_openapi": ("get", "/services/{service}/openapi"),
                         "health": ("get", "/health"), "version": ("get", "/version"),
                         "openapi": ("get", "/openapi")}.items():
        assert ops.get(op_id) == route, (op_id, ops.get(op_id))
    assert not any(path.startswith(("/v2/", "/v3/", "/v4/")) for path in doc["paths"])
    modify = doc["paths"]["/services/{service}"]["patch"]
    assert modify["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModifyServiceRequest"}
    for method, path in ops.values():  # every documented route is served (no 404 from the router)
        needs_input = any(p.get("required") for p in doc["paths"][path][method].get("parameters", []))
        if method == "get" and "{" not in path and not needs_input:
            async with env.http.get(env.cluster.admin_url + path) as r:
                assert r.status == 200, path
    assert await env.document(f"{env.cluster.admin_url}/v4/openapi") == doc


# ---- ingress: the merged document -----------------------------------------------------------------


async def test_ingress_document_merges_every_public_service(env: Env) -> None:
    doc = await env.document(f"{env.cluster.ingress_url}/openapi")
    assert doc["servers"][0]["url"] == env.cluster.ingress_url + "/"
    ops = _operations(doc)
    expected = {f"{svc}_{op_id}": route for svc, svc_ops in SERVICE_OPERATIONS.items()
                for op_id, route in svc_ops.items()}
    assert ops == expected  # unique ids: validate() refuses repeated ones
    assert [t["name"] for t in doc["tags"]] == ["Counter", "Greeter", "Signup"]
    schemas = doc["components"]["schemas"]
    assert schemas["GreetRequest"] == GREET_REQUEST and "RestateError" in schemas
    greet = doc["paths"]["/restate/call/Greeter/greet"]["post"]
    assert _media(greet, "request")["schema"] == {"type": "string"}  # scalar schemas inline, no duplicates
    assert len(schemas) == len({json.dumps(s, sort_keys=True) for s in schemas.values()})


async def test_ingress_document_paths_are_served(env: Env) -> None:
    doc = await env.document(f"{env.cluster.ingress_url}/openapi")
    model_path = "/restate/call/Greeter/greet_model"
    assert _operations(doc)["Greeter_greet_model"] == ("post", model_path)
    async with env.http.post(env.cluster.ingress_url + model_path, json={"name": "Ada", "times": 2}) as r:
        assert r.status == 200 and await r.json() == {"message": "Hello, Ada! Hello, Ada!", "length": 23}
    add_path = _operations(doc)["Counter_add"][1].replace("{key}", "openapi-e2e")
    async with env.http.post(env.cluster.ingress_url + add_path, json=5) as r:
        assert r.status == 200 and await r.json() == 5


async def test_ingress_openapi_other_methods_keep_restates_answers(env: Env) -> None:
    async with env.http.post(f"{env.cluster.ingress_url}/openapi", json={}) as r:
        assert r.status == 400 and await r.json() == {"code": 400, "message": "bad path: /openapi", "source": "ingress"}
    status, _, body = await env.ingress("/restate/openapi")
    assert (status, body) == (404, {"code": 404, "message": "not found", "source": "ingress"})


async def test_documents_follow_registry_changes(env: Env) -> None:
    async def patch(public: bool) -> None:
        async with env.http.patch(f"{env.cluster.admin_url}/services/Greeter", json={"public": public}) as r:
            assert r.status == 200, await r.text()

    async def greeter_listed(expected: bool) -> bool | None:
        doc = await env.document(f"{env.cluster.ingress_url}/openapi")
        listed = any(t["name"] == "Greeter" for t in doc["tags"])
        return True if listed == expected else None

    await patch(False)
    try:
        private = await env.document(f"{env.cluster.admin_url}/services/Greeter/openapi")
        assert private["paths"] == {}  # every handler is private now
        await poll("the ingress document to drop Greeter", 10.0, lambda: greeter_listed(False))
        merged = await env.document(f"{env.cluster.ingress_url}/openapi")
        assert not any(path.startswith(("/restate/call/Greeter", "/restate/send/Greeter")) for path in merged["paths"])
        assert "GreetRequest" not in merged["components"]["schemas"]
    finally:
        await patch(True)
    await poll("the ingress document to list Greeter again", 10.0, lambda: greeter_listed(True))
