"""Admin API against a real Redis and a real restate-sdk deployment (shapes as Restate 1.7.12)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ingress.admin import AdminSettings, build_admin_app, friendly_ms
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.tasks import cancel_and_wait

DEPLOYMENT_ID = re.compile(r"^dp_1[0-9A-Za-z]{22}$")
SERVICE_KEYS = {"name", "ty", "handlers", "deployment_id", "revision", "public", "idempotency_retention",
                "journal_retention", "inactivity_timeout", "abort_timeout", "enable_lazy_state", "retry_policy"}
DEFAULT_RETRY = {"initial_interval": "500ms", "exponentiation_factor": 2.0, "max_attempts": 70,
                 "max_interval": "1m", "on_max_attempts": "Pause"}


@dataclass
class Admin:
    client: TestClient
    store: RegistryStore
    cache: RegistryCache

    async def register(self, uri: str, **body: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        resp = await self.client.post("/deployments", json={"uri": uri, **body})
        return resp.status, await resp.json(), resp

    async def get(self, path: str) -> tuple[int, Any]:
        resp = await self.client.get(path)
        return resp.status, await resp.json()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Admin]:
    redis = Redis.from_url(redis_url, socket_timeout=5)
    store = RegistryStore(redis)
    cache = RegistryCache(store)
    settings = AdminSettings(advertised_ingress_url="http://127.0.0.1:18888", discovery_timeout_s=3.0)
    http = aiohttp.ClientSession()
    try:
        async with TestClient(TestServer(build_admin_app(store, cache, http, settings))) as client:
            yield Admin(client, store, cache)
    finally:
        await http.close()
    await redis.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_register_creates_deployment(admin: Admin, sdk_deployment: str) -> None:
    status, body, resp = await admin.register(sdk_deployment, force=True)
    assert status == 201
    assert DEPLOYMENT_ID.match(body["id"])
    assert resp.headers["location"] == f"deployments/{body['id']}"
    assert set(body) == {"id", "services", "min_protocol_version", "max_protocol_version", "sdk_version"}
    assert (body["min_protocol_version"], body["max_protocol_version"]) == (5, 7)
    assert body["sdk_version"] == "restate-sdk-python/1.2.0"
    assert {s["name"] for s in body["services"]} == {"Greeter", "Counter", "Signup"}
    assert all(s["revision"] == 1 and s["deployment_id"] == body["id"] for s in body["services"])


async def test_reregister_with_force_is_200_same_id_next_revision(admin: Admin, sdk_deployment: str) -> None:
    _, first, _ = await admin.register(sdk_deployment, force=True)
    status, again, _ = await admin.register(sdk_deployment + "/", force=True)
    assert status == 200 and again["id"] == first["id"]
    assert {s["revision"] for s in again["services"]} == {2}


async def test_reregister_without_force_is_200_unchanged(admin: Admin, sdk_deployment: str) -> None:
    _, first, _ = await admin.register(sdk_deployment)
    status, again, _ = await admin.register(sdk_deployment)
    assert status == 200 and again["id"] == first["id"]
    assert {s["revision"] for s in again["services"]} == {1}
    resp = await admin.client.post("/v2/deployments", json={"uri": sdk_deployment, "force": False})
    assert resp.status == 409  # admin API v2: an existing deployment without force is a conflict


async def test_services_show_types_handlers_and_defaults(admin: Admin, sdk_deployment: str) -> None:
    _, reg, _ = await admin.register(sdk_deployment, force=True)
    status, body = await admin.get("/services")
    assert status == 200
    services = {s["name"]: s for s in body["services"]}
    assert {n: s["ty"] for n, s in services.items()} == {
        "Greeter": "Service", "Counter": "VirtualObject", "Signup": "Workflow"}
    assert SERVICE_KEYS <= set(services["Greeter"]) and "workflow_completion_retention" not in services["Greeter"]
    assert services["Signup"]["workflow_completion_retention"] == "1d"
    greeter = services["Greeter"]
    assert (greeter["idempotency_retention"], greeter["journal_retention"]) == ("1d", "1d")
    # discovered over h2c, the SDK says BIDI_STREAM: Restate's 1 min inactivity timeout applies
    assert (greeter["inactivity_timeout"], greeter["abort_timeout"]) == ("1m", "10m")
    assert greeter["retry_policy"] == DEFAULT_RETRY and greeter["deployment_id"] == reg["id"]
    handlers = {h["name"]: h for h in greeter["handlers"]}
    assert all("ty" not in h for h in handlers.values())
    assert handlers["greet"] == {
        "name": "greet", "public": True, "input_description": "JSON string", "output_description": "JSON string",
        "input_json_schema": {"type": "string"}, "output_json_schema": {"type": "string"},
        "retry_policy": {"max_attempts": None}}
    assert handlers["private"]["public"] is False
    assert (handlers["noop"]["input_description"], handlers["noop"]["output_description"]) == ("none", "none")
    assert handlers["greet_model"]["input_description"] == "JSON 'GreetRequest'"
    kinds = {h["name"]: h["ty"] for s in ("Counter", "Signup") for h in services[s]["handlers"]}
    assert kinds == {"add": "Exclusive", "get": "Shared", "slow_add": "Exclusive",
                     "run": "Workflow", "confirm": "Shared", "status": "Shared"}
    status, one = await admin.get("/services/Counter")
    assert status == 200 and one == services["Counter"]
    status, handler = await admin.get("/services/Counter/handlers/get")
    assert status == 200 and handler["ty"] == "Shared"


async def test_unknown_service_and_handler_are_404_admin_shape(admin: Admin, sdk_deployment: str) -> None:
    assert await admin.get("/services/NoSuch") == (
        404, {"message": "The requested service 'NoSuch' does not exist", "restate_code": None})
    await admin.register(sdk_deployment)
    assert await admin.get("/services/Greeter/handlers/nope") == (
        404, {"message": "The requested handler 'nope' on service 'Greeter' does not exist", "restate_code": None})


async def test_deployments_list_and_get(admin: Admin, sdk_deployment: str) -> None:
    _, reg, _ = await admin.register(sdk_deployment, metadata={"team": "a"})
    status, body = await admin.get("/deployments")
    assert status == 200 and len(body["deployments"]) == 1
    dep = body["deployments"][0]
    assert dep["id"] == reg["id"] and dep["uri"] == sdk_deployment + "/"
    assert (dep["protocol_type"], dep["http_version"]) == ("BidiStream", "HTTP/2.0")  # h2c, as Restate
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$", dep["created_at"])
    assert dep["metadata"] == {"team": "a"} and "additional_headers" not in dep
    assert sorted(dep["services"], key=lambda s: s["name"]) == [
        {"name": "Counter", "revision": 1}, {"name": "Greeter", "revision": 1}, {"name": "Signup", "revision": 1}]
    status, detailed = await admin.get(f"/deployments/{reg['id']}")
    assert status == 200 and {s["name"] for s in detailed["services"]} == {"Greeter", "Counter", "Signup"}
    status, err = await admin.get("/deployments/dp_12RJ4SyKryjcNTLt3lUPZHz")
    assert status == 404 and err["message"] == "The requested deployment 'dp_12RJ4SyKryjcNTLt3lUPZHz' does not exist"
    status, err = await admin.get("/deployments/dp_1xxx")
    assert status == 400 and err["message"].endswith("bad length")


async def test_use_http_11_discovers_over_http1_in_request_response(admin: Admin, sdk_deployment: str) -> None:
    _, reg, _ = await admin.register(sdk_deployment, use_http_11=True)
    status, dep = await admin.get(f"/deployments/{reg['id']}")
    assert status == 200 and (dep["protocol_type"], dep["http_version"]) == ("RequestResponse", "HTTP/1.1")
    status, greeter = await admin.get("/services/Greeter")
    assert status == 200 and greeter["inactivity_timeout"] == "0s"  # nothing to time out in request/response
    _, again, _ = await admin.register(sdk_deployment, force=True)  # re-registered without the flag: h2c
    status, dep = await admin.get(f"/deployments/{again['id']}")
    assert again["id"] == reg["id"] and (dep["protocol_type"], dep["http_version"]) == ("BidiStream", "HTTP/2.0")
    # hypercorn answers HTTP/1.1 too: the request-response attempts may take the HTTP/1.1 client
    stored = (await admin.store.load_state()).records[reg["id"]].deployment
    assert (stored.use_http_11, stored.http_11_attempts) == (False, True)


async def test_additional_headers_beyond_latin_1_reach_the_sdk(admin: Admin, sdk_deployment: str) -> None:
    """Sent in UTF-8 over either transport (a fuzz case once crashed the h2c encoder: a 500 page)."""
    for http_11 in (False, True):
        status, body, _ = await admin.register(sdk_deployment, force=True, use_http_11=http_11,
                                               additional_headers={"x-a": "\u0100"})
        assert status in (200, 201), body


async def test_patch_service(admin: Admin, sdk_deployment: str) -> None:
    await admin.register(sdk_deployment)
    resp = await admin.client.patch("/services/Greeter", json={"idempotency_retention": "2h", "public": False,
                                                                "abort_timeout": "PT90S"})
    body = await resp.json()
    assert resp.status == 200
    assert (body["idempotency_retention"], body["abort_timeout"], body["public"]) == ("2h", "1m 30s", False)
    assert not any(h["public"] for h in body["handlers"])
    assert (await admin.get("/services/Greeter"))[1] == body
    assert not admin.cache.current().services["Greeter"].public  # own writes land in the cache at once
    resp = await admin.client.patch("/services/Greeter", json={"workflow_completion_retention": "1h"})
    assert resp.status == 400
    assert (await resp.json())["message"] == "modifying retention time for service type Service is unsupported"
    resp = await admin.client.patch("/services/NoSuch", json={"public": True})
    assert resp.status == 404
    assert (await resp.json())["message"] == "not found in the schema registry: service with name 'NoSuch'"
    resp = await admin.client.patch("/services/Greeter", json={"idempotency_retention": "bogus"})
    assert resp.status == 422
    resp = await admin.client.patch("/services/Signup", json={"workflow_completion_retention": "3 days"})
    assert resp.status == 200 and (await resp.json())["workflow_completion_retention"] == "3d"


async def test_registration_visible_in_second_cache_within_one_second(
    admin: Admin, sdk_deployment: str, redis_url: str
) -> None:
    other = Redis.from_url(redis_url, socket_timeout=5)
    cache = RegistryCache(RegistryStore(other))
    task = asyncio.create_task(cache.run(poll_interval_s=0.25))
    try:
        status, _, _ = await admin.register(sdk_deployment)
        assert status == 201
        start = time.monotonic()
        while {"Greeter", "Counter", "Signup"} - set(cache.current().services):
            assert time.monotonic() - start < 1.0, "registration not visible within 1 s"
            await asyncio.sleep(0.01)
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), 10)  # redis-py can swallow a cancellation
        assert task.cancelled()
        await other.aclose()


@pytest.mark.parametrize(("data", "headers", "status", "message"), [
    (b"{bad", {"content-type": "application/json"}, 400, "Failed to parse the request body as JSON"),
    (b"{}", {"content-type": "application/json"}, 422, "did not match any variant"),
    (b"[]", {"content-type": "application/json"}, 422, "did not match any variant"),
    (b'{"uri": 5}', {"content-type": "application/json"}, 422, "did not match any variant"),
    (b'{"uri": "http://x:1", "force": "yes"}', {"content-type": "application/json"}, 422, "did not match"),
    (b'{"uri": "http://x:1"}', {"content-type": "text/plain"}, 415, "Content-Type: application/json"),
    (b'{"uri": "127.0.0.1:1"}', {"content-type": "application/json"}, 400, "is not absolute"),
])
async def test_malformed_register_requests(admin: Admin, data: bytes, headers: dict[str, str], status: int,
                                           message: str) -> None:
    resp = await admin.client.post("/deployments", data=data, headers=headers)
    body = await resp.json()
    assert resp.status == status and message in body["message"] and set(body) == {"message", "restate_code"}


async def test_unreachable_deployment_is_500_meta0003(admin: Admin) -> None:
    status, body, _ = await admin.register(f"http://127.0.0.1:{_closed_port()}")
    assert status == 500 and body["restate_code"] == "META0003"
    assert body["message"].startswith("[META0003] [META0003] error when calling")


async def test_endpoint_answering_404_is_500_with_hint(admin: Admin) -> None:
    status, body, _ = await admin.register(str(admin.client.make_url("/nope")))  # not an SDK: 404
    assert status == 500 and "got status code '404'" in body["message"]


async def test_health_and_version(admin: Admin) -> None:
    resp = await admin.client.get("/health")
    assert resp.status == 200
    status, body = await admin.get("/version")
    assert status == 200
    assert (body["min_admin_api_version"], body["max_admin_api_version"]) == (2, 4)
    assert body["ingress_endpoint"] == "http://127.0.0.1:18888/" and isinstance(body["version"], str)


def test_friendly_durations() -> None:
    assert [friendly_ms(x) for x in (0, 500, 1500, 60_000, 86_400_000, 90_061_001)] == [
        "0s", "500ms", "1s 500ms", "1m", "1d", "1d 1h 1m 1s 1ms"]
