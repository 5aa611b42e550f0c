"""Backends for the Dispatcher contract suite: the in-memory fake and the real gRPC dispatcher.

`backend` is module-scoped and parametrised, so pytest runs the whole suite once per backend
and starts the real cluster (Redis + 2 workers + ingress, 8 partitions, the restate-sdk
conformance deployment registered) once. Tests take a fresh `dispatcher` from it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from ingress.dispatcher import Dispatcher, HandlerKind, InvocationRequest, Outcome
from ingress.grpc_dispatcher import GrpcDispatcher
from partition import keys
from partition.leases import rendezvous_winner
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.routing import read_routes
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.fakes import InMemoryDispatcher

try:  # the routing table moved from the ingress to shardgate (shared with the workers)
    from shardgate.routing import Router
except ImportError:  # pragma: no cover - older layout
    from shardgate.routing import Router  # type: ignore[no-redef]

PARTITIONS = 8
SETTLE_DEADLINE_S = 20.0
POLL_S = 0.05


# ---- the fake, scripted like tests/services/conformance_service.py ---------------------------------


def _arg(req: InvocationRequest) -> Any:
    return json.loads(req.body) if req.body else None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class ConformanceScripts:
    """Responders that make `InMemoryDispatcher` answer like the real deployment behind shardgate."""

    counters: dict[str, int] = field(default_factory=dict)

    def install(self, d: InMemoryDispatcher) -> None:
        d.script("Greeter", "greet", lambda r: _json(f"Hello, {_arg(r)}!"))
        d.script("Greeter", "fail", lambda r: Outcome(
            "", failure_code=409, failure_message=f"failed on purpose: {_arg(r)}"))
        d.script("Greeter", "slow_asyncio", self._slow_asyncio)
        d.script("Counter", "add", self._add)
        d.script("Counter", "get", lambda r: _json(self.counters.get(r.key or "", 0)))
        # Signup.run waits on a durable promise; shardgate does not implement promises yet, so
        # the real run is retried with back-off and never completes: the fake never completes it.
        d.script("Signup", "run", self._never)

    @staticmethod
    async def _slow_asyncio(r: InvocationRequest) -> bytes:
        seconds = _arg(r)
        await asyncio.sleep(seconds)
        return _json(f"slow_asyncio done after {seconds}s")

    def _add(self, r: InvocationRequest) -> bytes:
        key = r.key or ""
        self.counters[key] = self.counters.get(key, 0) + _arg(r)
        return _json(self.counters[key])

    @staticmethod
    async def _never(r: InvocationRequest) -> bytes:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


# ---- the real cluster ---------------------------------------------------------------------------


async def _poll(what: str, deadline_s: float, probe: Callable[[], Awaitable[bool]]) -> None:
    end = time.monotonic() + deadline_s
    while not await probe():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def _settled(redis: Redis, cluster: DevCluster) -> bool:
    """Every partition is routed to its live lease holder, the rendezvous winner of the workers."""
    workers = cluster.workers
    live = [w.worker_id for w in workers]
    by_port = {w.grpc_port: w.worker_id for w in workers}
    routes = await read_routes(redis, PARTITIONS)
    leases = await redis.mget([keys.lease(p) for p in range(PARTITIONS)])
    for p in range(PARTITIONS):
        raw = routes[p]
        if raw is None or leases[p] is None:
            return False
        address, token = raw.split("|", 1)
        if token != leases[p].decode():
            return False
        if by_port.get(int(address.rsplit(":", 1)[1])) != rendezvous_winner(live, p):
            return False
    return True


def _greet_on(partition: int) -> InvocationRequest:
    """An idempotent Greeter.greet request that lands on `partition`."""
    while True:
        ik = f"warm-{uuid.uuid4().hex}"
        inv = idempotent_invocation_id("Greeter", None, "greet", ik)
        if partition_of(inv.partition_key, PARTITIONS) == partition:
            return InvocationRequest(str(inv), partition, "Greeter", "greet", None, HandlerKind.SERVICE,
                                     b'"warm"', (), idempotency_key=ik)


@dataclass
class Backend:
    name: str
    make: Callable[[], Dispatcher]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "grpc"])
async def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  sdk_deployment: str) -> AsyncIterator[Backend]:
    if request.param == "memory":
        def make() -> Dispatcher:
            d = InMemoryDispatcher(auto_fire=True)
            ConformanceScripts().install(d)
            return d

        yield Backend("memory", make)
        return

    data_dir: Path = tmp_path_factory.mktemp("contract") / "data"
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=data_dir,
                       lease_ttl_ms=2000, start_timeout_s=45.0,
                       extra_env={"SHARDGATE_LEASE_TTL_MS": "2000", "SHARDGATE_HEARTBEAT_INTERVAL_MS": "300"})
    async with DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        router = Router(redis, PARTITIONS)
        dispatcher = GrpcDispatcher(router, routing_deadline_s=15.0, rpc_timeout_s=5.0, call_timeout_s=30.0)
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    f"{cluster.admin_url}/deployments", json={"uri": sdk_deployment}) as r:
                assert r.status in (200, 201), await r.text()
            await _poll("partition ownership to settle", SETTLE_DEADLINE_S, lambda: _settled(redis, cluster))
            await router.refresh()
            # Every worker has seen the registration once each partition has served a call.
            for p in range(PARTITIONS):
                outcome = await asyncio.wait_for(dispatcher.call(_greet_on(p)), 20.0)
                assert outcome.value == b'"Hello, warm!"', outcome
            yield Backend("grpc", lambda: dispatcher)
        finally:
            await router.close()
            await redis.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def dispatcher(backend: Backend) -> AsyncIterator[Dispatcher]:
    d = backend.make()
    yield d
    if isinstance(d, InMemoryDispatcher):
        await d.close()
