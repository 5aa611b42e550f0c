"""Registry against a real Redis: registration semantics, revisions, patching, cache polling.

Also the pure manifest -> schema rules (`shardgate.schema.services_from_manifest`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from shardgate.registry import (
    REGISTRY_KEY,
    InvalidServiceChange,
    RegistryCache,
    RegistryState,
    RegistryStore,
    ServiceNotFound,
    ServiceTypeChanged,
    deployment_id_error,
    new_deployment_id,
)
from shardgate.schema import (
    Deployment,
    HandlerType,
    ManifestError,
    SchemaSnapshot,
    ServiceType,
    endpoint_info,
    services_from_manifest,
    snapshot_from_json,
    snapshot_to_json,
)
from shardgate.tasks import cancel_and_wait
from tests.testdata import vector_path

VECTOR = vector_path("manifest_http1.json")


def manifest(*services: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"protocolMode": "REQUEST_RESPONSE", "minProtocolVersion": 5, "maxProtocolVersion": 7,
            "services": list(services), **top}


def svc(name: str, ty: str = "SERVICE", handlers: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "ty": ty, "handlers": handlers if handlers is not None else [{"name": "h"}], **kw}


def deployment(uri: str, m: dict[str, Any]) -> tuple[Deployment, list[Any]]:
    dep_id = new_deployment_id()
    return (Deployment(id=dep_id, uri=uri, protocol_mode="REQUEST_RESPONSE", min_protocol_version=5,
                       max_protocol_version=7), services_from_manifest(m, dep_id, {}))


@pytest.fixture
def store(redis: Redis) -> RegistryStore:
    return RegistryStore(redis)


# --- manifest -> schema -------------------------------------------------------------------------

def test_vector_manifest_types_and_input_rules() -> None:
    services = {s.name: s for s in services_from_manifest(json.loads(VECTOR.read_text()), "dp_x", {"Greeter": 4})}
    assert services["Greeter"].revision == 4 and services["Counter"].revision == 1
    assert services["Counter"].ty is ServiceType.VIRTUAL_OBJECT
    counter = services["Counter"].handlers
    assert counter["add"].ty is HandlerType.EXCLUSIVE and counter["peek"].ty is HandlerType.SHARED
    assert counter["peek"].input_content_type is None and not counter["peek"].input_required  # input {}
    assert counter["add"].input_content_type == "application/json"
    assert counter["add"].input_json_schema == {"type": "integer"}
    assert services["Greeter"].handlers["greet"].ty is None
    signup = services["Signup"].handlers
    assert signup["run"].ty is HandlerType.WORKFLOW and signup["approve"].ty is HandlerType.SHARED
    assert signup["approve"].output_content_type is None  # output without contentType: no content type


def test_handler_defaults_and_overrides() -> None:
    m = manifest(
        svc("Obj", "VIRTUAL_OBJECT", [
            {"name": "plain"},
            {"name": "req", "input": {"required": True}},
            {"name": "schema_only", "input": {"jsonSchema": {"type": "string"}}},
            {"name": "hidden", "ingressPrivate": True, "retryPolicyMaxAttempts": 0, "abortTimeout": 1500},
        ], idempotencyRetention=3_600_000, retryPolicyOnMaxAttempts="KILL", retryPolicyExponentiationFactor=3),
    )
    (obj,) = services_from_manifest(m, "dp_x", {})
    plain, req, schema_only, hidden = obj.handlers.values()
    assert plain.ty is HandlerType.EXCLUSIVE and plain.input_content_type == "*/*"
    assert plain.output_content_type == "application/json"
    assert req.input_required and req.input_content_type is None  # accepts nothing, like Restate
    assert schema_only.input_content_type is None and schema_only.input_json_schema is None
    assert not hidden.public and plain.public
    assert hidden.retry_policy.max_attempts == 1 and hidden.abort_timeout_ms == 1500
    assert obj.idempotency_retention_ms == 3_600_000
    assert obj.retry_policy.on_max_attempts == "KILL" and obj.retry_policy.exponentiation_factor == 3.0


def test_private_service_makes_every_handler_private() -> None:
    (s,) = services_from_manifest(manifest(svc("S", ingressPrivate=True, handlers=[{"name": "a"}, {"name": "b"}])),
                                  "dp_x", {})
    assert not s.public and not any(h.public for h in s.handlers.values())


def test_unknown_fields_are_tolerated() -> None:
    (s,) = services_from_manifest(manifest(svc("S", extra=1, handlers=[{"name": "a", "zzz": 2}]), top=True), "dp", {})
    assert list(s.handlers) == ["a"]


@pytest.mark.parametrize(("m", "kind", "text"), [
    (manifest(svc("1abc")), "decode", "doesn't match pattern"),
    (manifest(svc("S", handlers=[{"name": "a-b"}])), "decode", "doesn't match pattern"),
    (manifest(svc("S"), minProtocolVersion=1, maxProtocolVersion=4), "unsupported_protocol", "[1, 4]"),
    (manifest(svc("S"), minProtocolVersion=8, maxProtocolVersion=9), "unsupported_protocol", "[8, 9]"),
    (manifest(svc("S"), minProtocolVersion=7, maxProtocolVersion=5), "bad_response", "min protocol version"),
    ({k: v for k, v in manifest(svc("S")).items() if k != "protocolMode"}, "bad_response", "missing protocol mode"),
    ({"protocolMode": "REQUEST_RESPONSE", "minProtocolVersion": 5, "maxProtocolVersion": 7}, "decode", "`services`"),
    (manifest({"name": "S", "handlers": []}), "decode", "missing field `ty`"),
    (manifest(svc("S", handlers=[{}])), "decode", "missing field `name`"),
    (manifest(svc("S"), minProtocolVersion="5"), "decode", "invalid type"),
    (manifest(svc("S", "VIRTUAL_OBJECT", [{"name": "a", "ty": "WORKFLOW"}])), "invalid", "(VirtualObject, Some(Workflow))"),
    (manifest(svc("S", "SERVICE", [{"name": "a", "ty": "EXCLUSIVE"}])), "invalid", "(Service, Some(Exclusive))"),
    (manifest(svc("restateFoo")), "reserved_name", "reserved name"),
    (manifest(svc("W", "WORKFLOW", [{"name": "run", "ty": "WORKFLOW", "idempotencyRetention": 1}])), "invalid",
     "idempotency_retention"),
    (manifest(svc("S", handlers=[{"name": "a", "workflowCompletionRetention": 1}])), "invalid", "not a WORKFLOW"),
    (manifest(svc("S", ingressPrivate=True, handlers=[{"name": "a", "ingressPrivate": False}])), "invalid",
     "explicitly set as public"),
    (manifest(svc("S", handlers=[{"name": "a", "input": {"contentType": "*/json"}}])), "invalid", "*/subType"),
    ([], "decode", "not a JSON object"),
])
def test_bad_manifests_are_rejected(m: Any, kind: str, text: str) -> None:
    with pytest.raises(ManifestError) as err:
        services_from_manifest(m, "dp_x", {})
    assert err.value.kind == kind and text in err.value.message


def test_endpoint_info_accepts_overlapping_range() -> None:
    assert endpoint_info(manifest(svc("S"), minProtocolVersion=6, maxProtocolVersion=9)) == ("REQUEST_RESPONSE", 6, 9)


def test_snapshot_json_round_trip() -> None:
    services = services_from_manifest(json.loads(VECTOR.read_text()), "dp_x", {})
    dep = Deployment(id="dp_x", uri="http://x/", protocol_mode="REQUEST_RESPONSE", min_protocol_version=5,
                     max_protocol_version=7, services=tuple(s.name for s in services), metadata={"a": "b"})
    snap = SchemaSnapshot(7, {s.name: s for s in services}, {"dp_x": dep})
    assert snapshot_from_json(snapshot_to_json(snap)) == snap


def test_deployment_ids_look_like_restate_ones() -> None:
    ids = {new_deployment_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 26 and i.startswith("dp_1") and deployment_id_error(i) is None for i in ids)
    assert deployment_id_error("dp_1xxx") == "bad length"
    assert deployment_id_error("xx_12RJ4SyKryjcNTLt3lUPZHr") == "unrecognized resource type: xx"
    assert deployment_id_error("dp_22RJ4SyKryjcNTLt3lUPZHr") == "unrecognized codec version"
    assert deployment_id_error("dp_12RJ4SyKryjcNTLt3lUPZH!") == "base62 decode error"


# --- store ----------------------------------------------------------------------------------------

async def test_new_deployment_is_created_and_loadable(store: RegistryStore) -> None:
    dep, services = deployment("http://a/", manifest(svc("A"), svc("B", "VIRTUAL_OBJECT")))
    reg = await store.register(dep, services)
    assert reg.created and reg.outcome == "created" and reg.snapshot.version == 1
    assert await store.version() == 1
    snap = await store.load()
    assert snap == reg.snapshot
    assert set(snap.services) == {"A", "B"} and snap.services["A"].deployment_id == dep.id
    assert snap.deployments[dep.id].services == ("A", "B") and snap.deployments[dep.id].created_at_ms > 0


async def test_same_uri_without_force_is_unchanged(store: RegistryStore) -> None:
    dep, services = deployment("http://a/", manifest(svc("A")))
    first = await store.register(dep, services)
    dep2, services2 = deployment("http://a/", manifest(svc("A"), svc("Z")))
    again = await store.register(dep2, services2)
    assert not again.created and again.outcome == "unchanged"
    assert again.deployment.id == first.deployment.id and await store.version() == 1
    assert set((await store.load()).services) == {"A"}


async def test_force_overwrites_keeps_id_and_bumps_revisions(store: RegistryStore) -> None:
    dep, services = deployment("http://a/", manifest(svc("A"), svc("B")))
    first = await store.register(dep, services)
    dep2, services2 = deployment("http://a/", manifest(svc("A")))
    again = await store.register(dep2, services2, force=True)
    assert not again.created and again.outcome == "overwritten"
    assert again.deployment.id == first.deployment.id
    snap = await store.load()
    assert snap.services["A"].revision == 2 and snap.services["A"].deployment_id == first.deployment.id
    assert "B" not in snap.services  # removed by the forced overwrite


async def test_new_uri_takes_over_service_and_falls_back_when_removed(store: RegistryStore) -> None:
    old = await store.register(*deployment("http://old/", manifest(svc("A"))))
    new = await store.register(*deployment("http://new/", manifest(svc("A"), svc("N"))))
    snap = await store.load()
    assert snap.services["A"].revision == 2 and snap.services["A"].deployment_id == new.deployment.id
    dep, _ = deployment("http://new/", manifest(svc("N")))
    await store.register(dep, services_from_manifest(manifest(svc("N")), dep.id, {}), force=True)
    snap = await store.load()
    assert snap.services["A"].deployment_id == old.deployment.id and snap.services["A"].revision == 1


async def test_type_change_needs_force_or_breaking(store: RegistryStore) -> None:
    await store.register(*deployment("http://a/", manifest(svc("A"))))
    with pytest.raises(ServiceTypeChanged):
        await store.register(*deployment("http://b/", manifest(svc("A", "VIRTUAL_OBJECT"))))
    reg = await store.register(*deployment("http://b/", manifest(svc("A", "VIRTUAL_OBJECT"))), breaking=True)
    assert reg.snapshot.services["A"].ty is ServiceType.VIRTUAL_OBJECT


async def test_dry_run_writes_nothing(store: RegistryStore) -> None:
    reg = await store.register(*deployment("http://a/", manifest(svc("A"))), dry_run=True)
    assert reg.created and "A" in reg.snapshot.services
    assert await store.version() == 0 and (await store.load()).services == {}


async def test_concurrent_registrations_all_apply_with_distinct_revisions(store: RegistryStore) -> None:
    regs = await asyncio.gather(*(store.register(*deployment(f"http://d{i}/", manifest(svc("A"))))
                                  for i in range(10)))
    state = await store.load_state()
    assert state.version == 10 and len(state.records) == 10
    revisions = sorted(r.services["A"].revision for r in state.records.values())
    assert revisions == list(range(1, 11))
    assert {r.deployment.id for r in regs} == set(state.records)


async def test_patch_service_updates_settings_and_public(store: RegistryStore) -> None:
    m = manifest(svc("W", "WORKFLOW", [{"name": "run", "ty": "WORKFLOW"}, {"name": "hidden", "ingressPrivate": True}]))
    await store.register(*deployment("http://a/", m), manifest=m)
    patched, state = await store.patch_service("W", public=False, idempotency_retention_ms=7_200_000,
                                               workflow_completion_retention_ms=60_000, abort_timeout_ms=None)
    assert not patched.public and not patched.handlers["run"].public
    assert patched.idempotency_retention_ms == 7_200_000 and patched.workflow_completion_retention_ms == 60_000
    assert state.version == 2 and (await store.load()).services["W"] == patched
    patched, _ = await store.patch_service("W", public=True)
    assert patched.handlers["run"].public and not patched.handlers["hidden"].public  # own ingressPrivate kept


async def test_patch_rejects_unknown_service_and_workflow_retention_on_service(store: RegistryStore) -> None:
    await store.register(*deployment("http://a/", manifest(svc("A"))))
    with pytest.raises(ServiceNotFound):
        await store.patch_service("Nope", public=False)
    with pytest.raises(InvalidServiceChange):
        await store.patch_service("A", workflow_completion_retention_ms=1000)


async def test_remove_deployment(store: RegistryStore) -> None:
    reg = await store.register(*deployment("http://a/", manifest(svc("A"))))
    state = await store.remove_deployment(reg.deployment.id)
    assert state is not None and state.snapshot.services == {} and await store.version() == 2
    assert await store.remove_deployment(reg.deployment.id) is None


async def test_registry_is_one_hash_key(store: RegistryStore, redis: Redis) -> None:
    await store.register(*deployment("http://a/", manifest(svc("A"))))
    assert await redis.keys("*") == [REGISTRY_KEY.encode()]


# --- cache ----------------------------------------------------------------------------------------

async def _eventually(predicate: Any, timeout_s: float) -> float:
    """Poll `predicate` until true; returns the elapsed seconds or fails at the deadline."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_cache_sees_another_writer_within_one_second(store: RegistryStore, redis_url: str) -> None:
    other = Redis.from_url(redis_url, socket_timeout=5)
    cache = RegistryCache(RegistryStore(other))
    task = asyncio.create_task(cache.run(poll_interval_s=0.25))
    try:
        await store.register(*deployment("http://a/", manifest(svc("A"))))
        await _eventually(lambda: "A" in cache.current().services, 1.0)
        assert cache.current().version == 1 and cache.current() is cache.current()
        await store.patch_service("A", public=False)
        await _eventually(lambda: not cache.current().services["A"].public, 1.0)
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), 10)  # redis-py can swallow a cancellation
        assert task.cancelled()
        await other.aclose()


async def test_cache_refresh_and_install(store: RegistryStore) -> None:
    cache = RegistryCache(store)
    assert cache.current().version == 0
    reg = await store.register(*deployment("http://a/", manifest(svc("A"))))
    cache.install(reg.state)
    assert "A" in cache.current().services
    cache.install(RegistryState.empty())  # older: ignored
    assert cache.current().version == 1
    await store.register(*deployment("http://b/", manifest(svc("B"))))
    assert set((await cache.refresh()).services) == {"A", "B"}
