"""Faults of one DevCluster (Redis, 3 workers, one ingress) under the chaos load.

The cluster runs with `restart` on (the supervisor restarts a dead Redis from its AOF, written with
`appendfsync always`, on the same port), a 2 s lease TTL and a 300 ms heartbeat. The ledger
deployment (`tests/services/ledger_service.py`) records every side effect; `run_fault` (conftest)
checks exactly-once, per-key order, no lock/slot left, every caller answered.

* worker SIGKILL: the owner of some partitions dies mid-load; the survivors take over; it is
  restarted once the load's work is done.
* worker rejoin under load: a worker killed beforehand is restarted mid-load (a rebalance).
* worker SIGSTOP past the lease TTL: frozen until its partitions moved, the load goes on; thawed
  (SIGCONT) once the load's work is done.
* Redis SIGKILL: the supervisor restarts it from its AOF; workers and ingress reconnect.

Short run (`make test`): worker SIGKILL and SIGSTOP, Redis SIGKILL; `make chaos` adds the rest. Known server bugs are
`xfail(strict=True)` with the bug in the reason (docs/chaos.md).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster, read_log_tail
from shardgate.routing import read_routes
from tests.chaos.conftest import SHAPE, Shape, full_only, run_fault
from tests.clusters import partition_owners, poll

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

WORKERS = 3
PARTITIONS = 12
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 300
SETTLE_S = 30.0


class Env:
    def __init__(self, cluster: DevCluster, redis: Redis, http: aiohttp.ClientSession, ledger_dir: os.PathLike[str]
                 ) -> None:
        self.cluster, self.redis, self.http, self.ledger_dir = cluster, redis, http, ledger_dir

    async def describe(self) -> str:
        logs = sorted((self.cluster.data_dir / "logs").glob("*.log"))
        tails = "\n".join(f"--- {p.name}\n{read_log_tail(p, 0, 15)}" for p in logs)
        return "workers " + ", ".join(f"{w.name} pid {w.pid} running={w.running}" for w in self.cluster.workers) \
            + "\n" + tails

    async def settled(self) -> dict[int, int]:
        async def probe() -> dict[int, int] | None:
            try:
                return await partition_owners(self.cluster, self.redis, PARTITIONS)
            except (RedisError, OSError):
                return None

        return await poll("partition ownership to settle", SETTLE_S, probe, self.describe)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory,
              ledger_deployment: tuple[str, os.PathLike[str]]) -> AsyncIterator[Env]:
    url, ledger_dir = ledger_deployment
    spec = ClusterSpec(workers=WORKERS, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("chaos-cluster") / "data", lease_ttl_ms=LEASE_TTL_MS,
                       restart=True, appendfsync="always", start_timeout_s=45.0,
                       extra_env={"SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)})
    async with DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        e = Env(cluster, redis, http, ledger_dir)
        try:
            await e.settled()
            async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()

            async def ready() -> bool | None:
                async with http.post(f"{cluster.ingress_url}/restate/call/ChaosPlain/record", json="ready",
                                     timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return True if r.status == 200 else None

            await poll("the ledger deployment to serve", 30.0, ready, e.describe)
            yield e
        finally:
            await http.close()
            await redis.aclose()


async def healed(env: Env) -> Env:
    for i, worker in enumerate(env.cluster.workers):
        if not worker.running:
            await env.cluster.restart_worker(i)
    await env.settled()
    return env


async def busiest_worker(env: Env) -> int:
    owners = await env.settled()
    counts = [list(owners.values()).count(w) for w in range(WORKERS)]
    return counts.index(max(counts))


def now_ms() -> int:
    return int(time.time() * 1000)


async def run(env: Env, fault: str, inject: Callable[[], Awaitable[int | None]],
              heal: Callable[[], Awaitable[None]] | None = None, shape: Shape = SHAPE) -> None:
    await run_fault(fault, env.http, env.cluster.ingress_url, env.redis, Path(env.ledger_dir), inject,
                    env.describe, shape, heal)


@pytest.mark.timeout(240)
async def test_worker_sigkill(env: Env) -> None:
    await healed(env)
    victim = await busiest_worker(env)

    async def inject() -> int:
        killed_ms = now_ms()
        assert await env.cluster.kill_worker(victim, signal.SIGKILL) == -signal.SIGKILL
        await env.settled()  # the survivors took its partitions over
        return killed_ms

    async def heal() -> None:  # after the load: its rejoin (a rebalance) is the next test's fault
        await healed(env)

    await run(env, "worker SIGKILL", inject, heal)


REJOIN_SHAPE = Shape(send_keys=12, callers=8, before=SHAPE.before, after=SHAPE.after)
"""More streams than the others: enough attempts run at any moment that some are on the
partitions that move."""


@full_only()
@pytest.mark.timeout(240)
async def test_worker_rejoin_under_load(env: Env) -> None:
    await healed(env)
    victim = await busiest_worker(env)
    assert await env.cluster.kill_worker(victim, signal.SIGKILL) == -signal.SIGKILL
    await env.settled()

    async def inject() -> None:
        await env.cluster.restart_worker(victim)
        await env.settled()

    await run(env, "worker rejoin (rebalance) under load", inject, shape=REJOIN_SHAPE)


@pytest.mark.timeout(240)
async def test_worker_sigstop_past_the_lease_ttl(env: Env) -> None:
    await healed(env)
    victim = await busiest_worker(env)
    address = f"127.0.0.1:{env.cluster.workers[victim].grpc_port}"

    async def inject() -> int:
        frozen_ms = now_ms()
        await env.cluster.kill_worker(victim, signal.SIGSTOP)

        async def moved() -> bool | None:
            routes = await read_routes(env.redis, PARTITIONS)
            return True if all(r and not r.startswith(address + "|") for r in routes) else None

        await poll("the frozen worker's partitions to move", SETTLE_S, moved, env.describe)
        return frozen_ms  # the load goes on while it stays frozen

    async def heal() -> None:  # thawed once the load's work is done: its rejoin is the rejoin test's fault
        await env.cluster.kill_worker(victim, signal.SIGCONT)
        await env.settled()

    try:
        await run(env, "worker SIGSTOP past lease TTL", inject, heal)
    finally:
        await env.cluster.kill_worker(victim, signal.SIGCONT)


@pytest.mark.timeout(240)
async def test_redis_sigkill_and_restart(env: Env) -> None:
    await healed(env)

    async def epochs() -> list[bytes | None]:
        return list(await env.redis.mget([keys.epoch(p) for p in range(PARTITIONS)]))

    async def inject() -> int | None:
        """The kill time when a lease lapsed while Redis was down (a fencing epoch moved: the
        running attempts of that owner could not be stored and run again under the new epoch);
        None when every owner kept its leases, so any second run is a bug."""
        child = env.cluster.redis
        assert child is not None and child.pid is not None
        old_pid = child.pid
        before = await epochs()
        killed_ms = now_ms()
        os.kill(old_pid, signal.SIGKILL)

        async def back() -> bool | None:
            if child.pid in (None, old_pid) or not child.running:
                return None
            try:
                return True if await env.redis.ping() else None
            except RedisError:
                return None

        await poll("the supervisor to restart Redis", SETTLE_S, back, env.describe)
        await env.settled()
        moved = [p for p, (b, a) in enumerate(zip(before, await epochs(), strict=True)) if a != b]
        print(f"Redis SIGKILL: fencing epochs moved on partitions {moved}")
        return killed_ms if moved else None

    await run(env, "Redis SIGKILL + restart", inject)
