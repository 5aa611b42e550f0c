"""A handler's AttachInvocation / GetInvocationOutput commands, end to end.

A worker's partition service runs in-process (owning every partition) against a real Redis and a
real restate-sdk 1.2.0 deployment under hypercorn (`tests/services/attach_service.py`). The
attaching handler and its target sit on different partitions, so each request and each answer
goes through an outbox. `Attacher/attach` is the SDK's `ctx.attach_invocation(id)`; the commands
the Python SDK cannot send (get-output, idempotent-request and workflow targets) come from the
deployment's hand-written `Raw/probe` handler.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.invocation import HashField, Status
from partition.invoker import Invoker
from partition.scripts import Scripts
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.schema import Deployment, HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import InvocationId, idempotent_invocation_id, partition_of, workflow_invocation_id
from tests.deployments import serve_sdk_app
from tests.integration.conftest import lease_token

pytestmark = pytest.mark.timeout(60)

P = 8  # partitions
DEADLINE_S = 15.0
RETENTION_MS = 60_000
UNKNOWN_ID = "inv_1aiqX0vFEFNH1Umgre58JiCLgHfTtztYK5"
NOT_FOUND = {"code": 404, "message": "not found"}


def _schema(uri: str) -> SchemaSnapshot:
    dep = Deployment(id="dp_attach", uri=uri, protocol_mode="REQUEST_RESPONSE", min_protocol_version=5,
                     max_protocol_version=6)

    def service(name: str, *handlers: str) -> ServiceMeta:
        return ServiceMeta(name=name, ty=ServiceType.SERVICE, deployment_id=dep.id,
                           handlers={h: HandlerMeta(name=h, ty=None) for h in handlers})

    held = ServiceMeta(name="Held", ty=ServiceType.WORKFLOW, deployment_id=dep.id,
                       handlers={"run": HandlerMeta(name="run", ty=HandlerType.WORKFLOW),
                                 "release": HandlerMeta(name="release", ty=HandlerType.SHARED)})
    services = {"Held": held, "Echo": service("Echo", "hello"), "Attacher": service("Attacher", "attach"),
                "Raw": service("Raw", "probe")}
    return SchemaSnapshot(version=1, services=services, deployments={dep.id: dep})


def _request(inv: InvocationId, service: str, handler: str, body: Any, *, key: str | None = None,
             idem: str | None = None, kind: pb.HandlerKind = pb.HANDLER_KIND_SERVICE, wait: bool = True) -> pb.InvokeRequest:
    req = pb.InvokeRequest(partition=partition_of(inv.partition_key, P), invocation_id=str(inv), service=service,
                           handler=handler, body=json.dumps(body).encode(), kind=kind,
                           completion_retention_ms=RETENTION_MS, wait=wait)
    if key is not None:
        req.key = key
    if idem is not None:
        req.idempotency_key = idem
    return req


def _call(service: str, handler: str, body: Any, idem: str, away_from: InvocationId | None = None) -> pb.InvokeRequest:
    """An idempotent call of a plain service; with `away_from`, on another partition than it."""
    for i in range(64):
        inv = idempotent_invocation_id(service, None, handler, f"{idem}-{i}")
        if away_from is None or partition_of(inv.partition_key, P) != partition_of(away_from.partition_key, P):
            return _request(inv, service, handler, body, idem=f"{idem}-{i}")
    raise AssertionError("no idempotency key lands on another partition")


def _workflow(key: str, handler: str, body: Any, wait: bool) -> pb.InvokeRequest:
    if handler == "run":
        return _request(workflow_invocation_id("Held", key), "Held", "run", body, key=key,
                        kind=pb.HANDLER_KIND_WORKFLOW, wait=wait)
    inv = idempotent_invocation_id("Held", key, handler, f"{key}-{handler}")
    return _request(inv, "Held", handler, body, key=key, idem=f"{key}-{handler}", kind=pb.HANDLER_KIND_SHARED)


class Worker:
    """The partition service of one worker owning every partition."""

    def __init__(self, redis: Redis, uri: str) -> None:
        self.redis = redis
        self.scripts = Scripts(redis)
        self.invoker = Invoker(connect_timeout_s=5.0)
        schema = _schema(uri)
        self.service = PartitionService(redis, self.scripts, self.invoker, lambda: schema, P, 16)

    async def start(self) -> None:
        await self.invoker.start()
        for p in range(P):
            self.service.on_acquired(p, await lease_token(self.scripts, p, ttl_ms=120_000))

    async def stop(self) -> None:
        await self.service.shutdown()
        await self.invoker.close()

    async def call(self, req: pb.InvokeRequest) -> Any:
        """The JSON value a call returned (it must succeed)."""
        async with asyncio.timeout(DEADLINE_S):
            result = (await self.service.invoke(req)).result
        assert result.failure_code == 0, result.failure_message
        return json.loads(result.value) if result.value else None

    async def start_run(self, key: str, x: str) -> InvocationId:
        """Start workflow Held/{key} (it waits for its promise); its id."""
        req = _workflow(key, "run", x, wait=False)
        await self.service.invoke(req)
        return InvocationId.parse(req.invocation_id)

    async def wait_status(self, inv: InvocationId, status: Status) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                stored = await self.scripts.result_of(partition_of(inv.partition_key, P), str(inv))
                if stored is not None and stored.status is status:
                    return
                await asyncio.sleep(0.02)

    async def wait_attached(self, target: InvocationId, caller: str) -> None:
        """Until `caller` is among the waiting parents of `target`."""
        hash_key = keys.invocation(partition_of(target.partition_key, P), str(target))
        async with asyncio.timeout(DEADLINE_S):
            while caller.encode() not in (await self.redis.hget(hash_key, HashField.PARENTS.value) or b""):
                await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_sdk_app("tests.services.attach_service:app", tmp_path_factory.mktemp("attach") / "sdk.log") as url:
        yield url


@pytest.fixture
async def worker(redis_url: str, deployment: str) -> AsyncIterator[Worker]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    w = Worker(client, deployment)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await client.aclose()


async def test_attach_to_a_running_invocation_on_another_partition_gets_its_result_when_it_completes(
        worker: Worker) -> None:
    run_id = await worker.start_run("w1", "x")
    await worker.wait_status(run_id, Status.SUSPENDED)
    req = _call("Attacher", "attach", str(run_id), "attach-running", away_from=run_id)
    answer = asyncio.create_task(worker.call(req))
    await worker.wait_attached(run_id, req.invocation_id)
    assert not answer.done()
    assert await worker.call(_workflow("w1", "release", "go", wait=True)) is None
    assert await answer == {"value": "x:go"}


async def test_attach_to_a_completed_invocation_gets_its_result_at_once(worker: Worker) -> None:
    echo = _call("Echo", "hello", "ann", "echo-done")
    assert await worker.call(echo) == "hi ann"
    req = _call("Attacher", "attach", echo.invocation_id, "attach-done",
                away_from=InvocationId.parse(echo.invocation_id))
    assert await worker.call(req) == {"value": "hi ann"}


async def test_attach_to_an_unknown_invocation_fails_not_found(worker: Worker) -> None:
    assert await worker.call(_call("Attacher", "attach", UNKNOWN_ID, "attach-unknown")) == NOT_FOUND


async def test_get_output_is_void_while_running_then_the_value(worker: Worker) -> None:
    run_id = await worker.start_run("w2", "y")
    await worker.wait_status(run_id, Status.SUSPENDED)
    probe = {"op": "output", "target": {"id": str(run_id)}}
    assert await worker.call(_call("Raw", "probe", probe, "output-running", away_from=run_id)) == {"void": True}
    await worker.call(_workflow("w2", "release", "now", wait=True))
    await worker.wait_status(run_id, Status.COMPLETED)
    assert await worker.call(_call("Raw", "probe", probe, "output-done", away_from=run_id)) == {"value": "y:now"}


async def test_get_output_of_an_unknown_invocation_fails_not_found(worker: Worker) -> None:
    probe = {"op": "output", "target": {"id": UNKNOWN_ID}}
    assert await worker.call(_call("Raw", "probe", probe, "output-unknown")) == NOT_FOUND


async def test_attach_by_idempotency_key(worker: Worker) -> None:
    echo = _request(idempotent_invocation_id("Echo", None, "hello", "greet-bob"), "Echo", "hello", "bob",
                    idem="greet-bob")
    assert await worker.call(echo) == "hi bob"
    for op in ("attach", "output"):
        probe = {"op": op, "target": {"service": "Echo", "handler": "hello", "idem": "greet-bob"}}
        assert await worker.call(_call("Raw", "probe", probe, f"idem-{op}")) == {"value": "hi bob"}
    probe = {"op": "attach", "target": {"service": "Echo", "handler": "hello", "idem": "never-sent"}}
    assert await worker.call(_call("Raw", "probe", probe, "idem-unknown")) == NOT_FOUND


async def test_attach_by_workflow_target_waits_for_the_run(worker: Worker) -> None:
    run_id = await worker.start_run("w3", "z")
    await worker.wait_status(run_id, Status.SUSPENDED)
    probe = {"op": "attach", "target": {"workflow": "Held", "key": "w3"}}
    req = _call("Raw", "probe", probe, "wf-attach", away_from=run_id)
    answer = asyncio.create_task(worker.call(req))
    await worker.wait_attached(run_id, req.invocation_id)
    await worker.call(_workflow("w3", "release", "ok", wait=True))
    assert await answer == {"value": "z:ok"}
    after = {"op": "output", "target": {"workflow": "Held", "key": "w3"}}
    assert await worker.call(_call("Raw", "probe", after, "wf-output")) == {"value": "z:ok"}
