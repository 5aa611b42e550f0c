"""Graceful stop of a partition worker: SIGTERM moves its partitions at once and cuts no attempt.

A real cluster (`DevCluster`: Redis, 2 workers, ingress, 8 partitions) with the heartbeat at 3 s and
the lease TTL at 10 s, so that nothing but the worker's own drain (release of each lease and the
`sg:membership` announcement) can move a partition within a second. The deployment is
`tests/services/crash_service.py`, whose `Crash/bump_then_hold` bumps a file counter outside any
`ctx.run` and then holds its attempt open: an attempt cut in the middle and replayed elsewhere
would bump it twice.

* SIGTERM while worker-0 runs attempts: every partition of worker-0 with no attempt running is
  served by worker-1 within a second; the partitions with running attempts follow once those
  attempts recorded their result; every send completes, each counter is exactly 1.
* The restarted worker gets its partitions back the same way (join announcement) within a second
  of being healthy.

Waits poll conditions against deadlines; the attempts' hold is the scenario itself.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition.leases import rendezvous_winner
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.routing import read_routes
from shardgate.sharding import InvocationId, idempotent_invocation_id, partition_of
from tests.clusters import partition_owners, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

PARTITIONS = 8
HEARTBEAT_MS = 3000
LEASE_TTL_MS = 10_000
HANDOVER_S = 1.0
HOLD_MS = 2500
SENDS_PER_PARTITION = 2
DEADLINE_S = 30.0


class Env:
    def __init__(self, cluster: DevCluster, redis: Redis, http: aiohttp.ClientSession, counter_dir: Path) -> None:
        self.cluster, self.redis, self.http, self.counter_dir = cluster, redis, http, counter_dir

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.cluster.ingress_url}{path}", json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, (await r.json(content_type=None)) if raw else None

    async def owner_of(self) -> list[str | None]:
        """The gRPC address each partition's route points to (None when unowned)."""
        return [r.split("|", 1)[0] if r else None for r in await read_routes(self.redis, PARTITIONS)]

    def address(self, worker: int) -> str:
        return f"127.0.0.1:{self.cluster.workers[worker].grpc_port}"


def partition_of_id(invocation_id: str) -> int:
    return partition_of(InvocationId.parse(invocation_id).partition_key, PARTITIONS)


def keys_for(partitions: set[int], per_partition: int) -> list[str]:
    """Idempotency keys whose `Crash/bump_then_hold` invocations land `per_partition` times on each
    of `partitions` (an idempotent invocation's partition follows from its key)."""
    chosen: dict[int, list[str]] = {p: [] for p in partitions}
    while any(len(v) < per_partition for v in chosen.values()):
        name = unique("drain")
        p = partition_of_id(str(idempotent_invocation_id("Crash", None, "bump_then_hold", name)))
        if p in chosen and len(chosen[p]) < per_partition:
            chosen[p].append(name)
    return [n for v in chosen.values() for n in v]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("drain-deployment")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    with serve_sdk_app("tests.services.crash_service:app", base / "hypercorn.log",
                       {COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url, counter_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, deployment: tuple[str, Path]) -> AsyncIterator[Env]:
    url, counter_dir = deployment
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("drain-cluster") / "data", lease_ttl_ms=LEASE_TTL_MS,
                       start_timeout_s=45.0,
                       extra_env={"SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
                                  "SHARDGATE_DRAIN_GRACE_S": "8"})
    async with DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        http = aiohttp.ClientSession()
        e = Env(cluster, redis, http, counter_dir)
        try:
            await poll("ownership to settle", DEADLINE_S, lambda: partition_owners(cluster, redis, PARTITIONS))
            async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()

            async def ready() -> bool | None:
                return True if (await e.request("POST", "/restate/call/Leaf/double", 21)) == (200, 42) else None

            await poll("the deployment to serve", DEADLINE_S, ready)
            yield e
        finally:
            await http.close()
            await redis.aclose()


@pytest.mark.timeout(120)
async def test_sigterm_hands_idle_partitions_over_at_once_and_lets_running_attempts_finish(env: Env) -> None:
    owners = await poll("ownership to settle", DEADLINE_S,
                        lambda: partition_owners(env.cluster, env.redis, PARTITIONS))
    mine = {p for p, w in owners.items() if w == 0}
    assert len(mine) >= 2 and len(mine) < PARTITIONS, owners

    busy = set(sorted(mine)[: max(1, len(mine) // 2)])  # these run attempts when the SIGTERM comes
    idle = mine - busy
    names = keys_for(busy, SENDS_PER_PARTITION)
    ids = []
    for name in names:
        status, ack = await env.request("POST", "/restate/send/Crash/bump_then_hold",
                                        {"name": name, "hold_ms": HOLD_MS}, {"idempotency-key": name})
        assert status == 202, ack
        ids.append(ack["invocationId"])
    assert {partition_of_id(i) for i in ids} == busy

    async def all_running() -> bool | None:  # every attempt bumped its counter and now holds
        return True if all(read_counter(n, env.counter_dir) == 1 for n in names) else None

    await poll("every attempt to be running", DEADLINE_S, all_running)

    started = time.monotonic()
    await env.cluster.kill_worker(0, signal.SIGTERM, wait=False)
    other = env.address(1)

    async def idle_moved() -> float | None:
        routes = await env.owner_of()
        return time.monotonic() - started if all(routes[p] == other for p in idle) else None

    moved_after_s = await poll("worker-0's idle partitions to move", DEADLINE_S, idle_moved, interval_s=0.01)
    assert moved_after_s < HANDOVER_S, f"idle partitions moved after {moved_after_s:.2f}s"
    assert all(read_counter(n, env.counter_dir) == 1 for n in names)

    for inv, name in zip(ids, names, strict=True):
        async def output(inv: str = inv) -> Any | None:
            status, body = await env.request("GET", f"/restate/output/{inv}")
            return body if status == 200 else None

        assert await poll(f"the output of {inv}", DEADLINE_S, output) == 1, name
    assert [read_counter(n, env.counter_dir) for n in names] == [1] * len(names)  # no attempt ran twice
    assert await env.owner_of() == [other] * PARTITIONS
    exit_code = await env.cluster.workers[0].proc.wait()  # type: ignore[union-attr]
    assert exit_code == 0


@pytest.mark.timeout(60)
async def test_a_restarted_worker_takes_its_partitions_back_within_a_second(env: Env) -> None:
    await env.cluster.restart_worker(0)  # returns once its process is healthy: it has just joined
    started = time.monotonic()
    back = env.address(0)
    names = [w.name for w in env.cluster.workers]
    expected = {p for p in range(PARTITIONS) if rendezvous_winner(names, p) == names[0]}
    assert expected

    async def returned() -> float | None:
        routes = await env.owner_of()
        return time.monotonic() - started if all(routes[p] == back for p in expected) else None

    took_s = await poll("worker-0 to get its partitions back", DEADLINE_S, returned, interval_s=0.01)
    assert took_s < HANDOVER_S, f"the partitions came back {took_s:.2f}s after the worker was healthy"
    owners = await poll("ownership to settle", DEADLINE_S,
                        lambda: partition_owners(env.cluster, env.redis, PARTITIONS))
    assert {p for p, w in owners.items() if w == 0} == expected


@pytest.mark.timeout(120)
async def test_a_rebalance_lets_running_attempts_finish_before_it_moves_their_partitions(env: Env) -> None:
    """A worker that joins takes its partitions from their owner; the owner hands each one over
    only once its running attempts recorded their result, so none runs twice."""
    await env.cluster.kill_worker(0, signal.SIGTERM)  # worker-1 now owns every partition
    other = env.address(1)

    async def alone() -> bool | None:
        return True if await env.owner_of() == [other] * PARTITIONS else None

    await poll("worker-1 to own every partition", DEADLINE_S, alone)
    names = [w.name for w in env.cluster.workers]
    wins = {p for p in range(PARTITIONS) if rendezvous_winner(names, p) == names[0]}
    keys = keys_for(wins, SENDS_PER_PARTITION)
    ids = []
    for name in keys:
        status, ack = await env.request("POST", "/restate/send/Crash/bump_then_hold",
                                        {"name": name, "hold_ms": HOLD_MS}, {"idempotency-key": name})
        assert status == 202, ack
        ids.append(ack["invocationId"])

    async def all_running() -> bool | None:
        return True if all(read_counter(n, env.counter_dir) == 1 for n in keys) else None

    await poll("every attempt to be running on worker-1", DEADLINE_S, all_running)
    await env.cluster.restart_worker(0)  # joins while worker-1 runs attempts of the partitions it wins
    for inv, name in zip(ids, keys, strict=True):
        async def output(inv: str = inv) -> Any | None:
            status, body = await env.request("GET", f"/restate/output/{inv}")
            return body if status == 200 else None

        assert await poll(f"the output of {inv}", DEADLINE_S, output) == 1, name
    assert [read_counter(n, env.counter_dir) for n in keys] == [1] * len(keys)  # no attempt cut
    back = env.address(0)

    async def returned() -> bool | None:
        routes = await env.owner_of()
        return True if all(routes[p] == back for p in wins) else None

    await poll("worker-0 to get its partitions back", DEADLINE_S, returned)
