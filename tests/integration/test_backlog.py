"""A worker's memory stays bounded under a backlog (docs/operations.md, "Bounded memory").

A partition service runs in-process with a tiny admission bound (2 attempts in flight, 1 ready,
a backlog of 5 queued ids) against a real Redis and a real restate-sdk deployment whose handler
blocks until the test opens its gate. Far more sends than the bound are accepted (all 202: they
wait in Redis); while the gate is shut, the invocations held in memory (driver tasks and their
`Run`s) never exceed the bound, a call is refused (WorkerBusy, nothing stored), and once the gate
opens every send runs exactly once and a retried call succeeds. No bound here depends on speed:
the held count is checked at every event-loop turn, the rest waits for states, not times.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Self

import grpc
import pytest
from redis.asyncio import Redis

from ingress.dispatcher import InvocationRequest
from ingress.errors import PartitionBusy
from ingress.grpc_dispatcher import GrpcDispatcher
from ingress.handlers.responses import ingress_error_response
from partition import keys
from partition.errors import WorkerBusy
from partition.invoker import Invoker
from partition.scripts import Scripts
from partition.server import PartitionServicer
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.kinds import HandlerKind
from shardgate.routing import Router
from shardgate.schema import Deployment, HandlerMeta, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.clusters import poll
from tests.deployments import serve_sdk_app
from tests.integration.conftest import lease_token
from tests.services.backlog_service import GATE_DIR_ENV, lines

pytestmark = pytest.mark.timeout(120)

P = 4
MAX_CONCURRENT, READY, MAX_BACKLOG = 2, 1, 5
SENDS = 60  # far more than MAX_CONCURRENT + READY + MAX_BACKLOG: most wait in the active sets only
DEADLINE_S = 60.0


@pytest.fixture
def gate_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def gate_deployment(gate_dir: Path) -> Iterator[str]:
    with serve_sdk_app("tests.services.backlog_service:app", gate_dir / "sdk.log",
                       env={GATE_DIR_ENV: str(gate_dir)}) as url:
        yield url


def _schema(uri: str) -> SchemaSnapshot:
    dep = Deployment(id="dp_gate", uri=uri, protocol_mode="REQUEST_RESPONSE", min_protocol_version=5,
                     max_protocol_version=6)
    svc = ServiceMeta(name="Gate", ty=ServiceType.SERVICE, deployment_id=dep.id,
                      handlers={"hold": HandlerMeta(name="hold", ty=None)})
    return SchemaSnapshot(version=1, services={"Gate": svc}, deployments={dep.id: dep})


def _request(n: int, wait: bool) -> pb.InvokeRequest:
    idem = f"backlog-{n}-{os.urandom(4).hex()}"
    inv = idempotent_invocation_id("Gate", None, "hold", idem)
    return pb.InvokeRequest(partition=partition_of(inv.partition_key, P), invocation_id=str(inv), service="Gate",
                            handler="hold", body=str(n).encode(), kind=pb.HANDLER_KIND_SERVICE,
                            idempotency_key=idem, completion_retention_ms=60_000, wait=wait)


class HeldProbe:
    """Samples, at every event-loop turn, the invocations the worker holds in memory."""

    def __init__(self, service: PartitionService) -> None:
        self.service = service
        self.peak_held = 0
        self.peak_tasks = 0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        self.peak_held = max(self.peak_held, self.service.driver.held)
        tasks = sum(1 for t in asyncio.all_tasks() if "PartitionLeader._drive" in repr(t.get_coro()))
        self.peak_tasks = max(self.peak_tasks, tasks)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0)

    def __enter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _owner(redis: Redis, gate_deployment: str) -> tuple[PartitionService, Invoker, Scripts]:
    """A partition service (not yet owning anything) under this module's small bounds."""
    scripts = Scripts(redis)
    invoker = Invoker(connect_timeout_s=5.0)
    await invoker.start()
    schema = _schema(gate_deployment)
    svc = PartitionService(redis, scripts, invoker, lambda: schema, P, MAX_CONCURRENT, ready=READY,
                           max_backlog=MAX_BACKLOG)
    return svc, invoker, scripts


@pytest.fixture
async def service(redis: Redis, gate_deployment: str) -> AsyncIterator[PartitionService]:
    svc, invoker, scripts = await _owner(redis, gate_deployment)
    for p in range(P):
        svc.on_acquired(p, await lease_token(scripts, p, ttl_ms=120_000))
    yield svc
    await svc.shutdown()
    await invoker.close()


async def _active(redis: Redis) -> int:
    return sum([int(await redis.scard(keys.active(p))) for p in range(P)])


async def test_a_backlog_of_sends_is_held_in_redis_not_in_memory_and_runs_once(
        service: PartitionService, redis: Redis, gate_dir: Path) -> None:
    driver = service.driver
    with HeldProbe(service) as probe:
        sent = await asyncio.gather(*(service.invoke(_request(n, wait=False)) for n in range(SENDS)))
        assert all(not r.HasField("rejected_retry_after_ms") for r in sent)
        assert await _active(redis) == SENDS  # every send accepted: invoked and waiting in Redis
        await poll("the first attempts to reach the deployment", DEADLINE_S,
                   lambda: _true(len(lines(gate_dir, "started")) == MAX_CONCURRENT))
        await poll("the backlog to fill", DEADLINE_S, lambda: _true(driver.saturated()))
        with pytest.raises(WorkerBusy):  # a call would wait behind them all: refused, nothing stored
            await service.invoke(_request(-1, wait=True))
        assert await _active(redis) == SENDS
        assert driver.waiting <= MAX_BACKLOG
        (gate_dir / "open").touch()
        await poll("every send to complete", DEADLINE_S,
                   lambda: _true(len(lines(gate_dir, "done")) >= SENDS and driver.held == 0),
                   diag=lambda: _state(service, redis, gate_dir))
        assert await _active(redis) == 0
        result = await service.invoke(_request(-2, wait=True))  # room again: the retried call runs
    assert result.result.value == b"-2"
    runs = Counter(lines(gate_dir, "done"))
    assert sorted(runs) == [-2, *range(SENDS)] and set(runs.values()) == {1}, runs
    assert -1 not in lines(gate_dir, "started")
    assert MAX_CONCURRENT <= probe.peak_held <= MAX_CONCURRENT + READY, probe.peak_held
    assert MAX_CONCURRENT <= probe.peak_tasks <= MAX_CONCURRENT + READY, probe.peak_tasks  # the probe sees them
    assert driver.waiting == 0


async def test_a_killed_worker_with_a_backlog_loses_nothing(
        service: PartitionService, redis: Redis, gate_dir: Path, gate_deployment: str) -> None:
    """The partitions move to a new service (a new owner, new fence tokens) while most sends wait
    in Redis; the new owner resumes them all from the active sets."""
    await asyncio.gather(*(service.invoke(_request(n, wait=False)) for n in range(SENDS)))
    await poll("the backlog to fill", DEADLINE_S, lambda: _true(service.driver.saturated()))
    await service.shutdown()  # the old owner is gone: its attempts in flight were cut
    # and it gave up its rooms and queued ids (its leaders closed), so it is not "saturated"
    await poll("the old owner to let go", DEADLINE_S,
               lambda: _true(service.driver.held == 0 and service.driver.waiting == 0),
               diag=lambda: _state(service, redis, gate_dir))
    heir, invoker, scripts = await _owner(redis, gate_deployment)
    try:
        for p in range(P):
            await redis.delete(keys.lease(p))
            heir.on_acquired(p, await lease_token(scripts, p, ttl_ms=120_000))
        (gate_dir / "open").touch()
        await poll("every send to complete on the new owner", DEADLINE_S,
                   lambda: _true(set(lines(gate_dir, "done")) >= set(range(SENDS)) and heir.driver.held == 0),
                   diag=lambda: _state(heir, redis, gate_dir))
        assert await _active(redis) == 0
    finally:
        await heir.shutdown()
        await invoker.close()
    runs = Counter(lines(gate_dir, "done"))
    cut = set(lines(gate_dir, "started")[:MAX_CONCURRENT])  # in flight when the old owner stopped
    assert all(count == 1 for n, count in runs.items() if n not in cut), runs


def _ingress_request(n: int) -> InvocationRequest:
    req = _request(n, wait=False)
    return InvocationRequest(req.invocation_id, req.partition, "Gate", "hold", None, HandlerKind.SERVICE,
                             str(n).encode(), (), idempotency_key=req.idempotency_key,
                             completion_retention_ms=60_000)


async def test_a_refused_call_is_a_429_with_retry_after_at_the_ingress(
        redis: Redis, gate_deployment: str, gate_dir: Path) -> None:
    """Through the real gRPC path (InvokeStream) and the ingress's dispatcher and error rendering:
    calls to a saturated worker are 429 with Retry-After and the spec's JSON error shape; sends
    are still accepted; once there is room the call runs."""
    svc, invoker, scripts = await _owner(redis, gate_deployment)
    server = grpc.aio.server()
    pb_grpc.add_PartitionServiceServicer_to_server(PartitionServicer(svc), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    router = Router(redis, P)
    dispatcher = GrpcDispatcher(router, routing_deadline_s=15.0, rpc_timeout_s=10.0, call_timeout_s=60.0)
    try:
        for p in range(P):
            raw = await scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                              args=["w1", 120_000, f"127.0.0.1:{port}"])
            svc.on_acquired(p, raw.decode())
        await router.refresh()
        await asyncio.gather(*(dispatcher.send(_ingress_request(n)) for n in range(SENDS)))
        await poll("the backlog to fill", DEADLINE_S, lambda: _true(svc.driver.saturated()))
        with pytest.raises(PartitionBusy) as refused:
            await dispatcher.call(_ingress_request(-1))
        resp = ingress_error_response(refused.value)
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        assert resp.headers["x-restate-error-source"] == "ingress"
        assert json.loads(resp.text or "") == {
            "code": 429, "message": "too many requests: the partition is too busy. Retry later.", "source": "ingress"}
        await dispatcher.send(_ingress_request(SENDS))  # sends still go in (they wait in Redis)
        (gate_dir / "open").touch()
        call = await poll("a retried call to run once there is room", DEADLINE_S,
                          lambda: _retry_call(dispatcher, _ingress_request(-2)))
        assert call.value == b"-2"
        await poll("every send to complete", DEADLINE_S,
                   lambda: _true(len(lines(gate_dir, "done")) >= SENDS + 2 and svc.driver.held == 0))
        assert sorted(Counter(lines(gate_dir, "done")).values()) == [1] * (SENDS + 2)
    finally:
        await dispatcher.aclose()
        await router.close()
        await svc.shutdown()
        await server.stop(None)
        await invoker.close()


async def _retry_call(dispatcher: GrpcDispatcher, req: InvocationRequest) -> object | None:
    try:
        return await dispatcher.call(req)
    except PartitionBusy:
        return None


async def _true(cond: bool) -> bool | None:
    return True if cond else None


async def _state(service: PartitionService, redis: Redis, gate_dir: Path) -> str:
    d = service.driver
    return (f"held={d.held} waiting={d.waiting} active={await _active(redis)} "
            f"started={len(lines(gate_dir, 'started'))} done={len(lines(gate_dir, 'done'))}")
