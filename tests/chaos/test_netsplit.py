"""Network partitions of one worker, from Redis or from the ingress, under the chaos load.

A network namespace (`tests/chaos/netns.py`: a veth pair, 10.250.N.1 outside, 10.250.N.2 inside)
holds one partition worker, started by hand with `ip netns exec ... python -m partition` and the
environment `sgtools.dev.worker_child` gives workers, bound to and advertising 10.250.N.2. Everything
it needs listens on the outside address too: a redis-server this module starts (`--bind 127.0.0.1
10.250.N.1`, AOF always) and a ledger deployment on 10.250.N.1. A DevCluster (2 workers, ingress)
runs on that Redis in the root namespace. Faults are iptables DROP rules inside the namespace:

* from Redis: every packet to Redis's port dropped; the worker's leases lapse (2 s TTL) and the
  others take its partitions over; the rule goes once the load's work is done.
* from the ingress: every packet from the ingress's side to its gRPC port dropped for a while, the
  worker keeps its leases; callers of its partitions wait or get the JSON 503 and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sgtools.dev import ClusterSpec, DevCluster, project_root, read_log_tail, worker_child
from sgtools.redis_bin import find_redis_server
from shardgate.routing import read_routes
from tests.chaos.conftest import full_only, run_fault
from tests.chaos.netns import NetNs
from tests.clusters import poll
from tests.deployments import free_port, healthy
from tests.services.ledger_service import LEDGER_DIR_ENV

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

PARTITIONS = 12
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 300
START_DEADLINE_S = 30.0
SPLIT_FROM_INGRESS_S = 6.0
"""How long the ingress cannot reach the worker (the scenario; shorter than the routing deadline)."""
NS_GRPC_PORT = 5122
NS_METRICS_PORT = 9100


@contextlib.contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` with its output in `log`; SIGTERM (then SIGKILL) it on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=project_root())
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Block until `check()` is true (fails on exit of `proc` or after START_DEADLINE_S)."""
    end = time.monotonic() + START_DEADLINE_S
    while not check():
        if proc.poll() is not None or time.monotonic() > end:
            pytest.fail(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)  # start-up polling of a child process, bounded by the deadline


@dataclass
class Env:
    ns: NetNs
    cluster: DevCluster
    redis: Redis
    redis_port: int
    http: aiohttp.ClientSession
    ledger_dir: Path
    worker_log: Path

    @property
    def ns_address(self) -> str:
        return f"{self.ns.ns_ip}:{NS_GRPC_PORT}"

    async def describe(self) -> str:
        logs = sorted((self.cluster.data_dir / "logs").glob("*.log")) + [self.worker_log]
        return "\n".join(f"--- {p.name}\n{read_log_tail(p, 0, 15)}" for p in logs)

    async def routes(self) -> list[str | None]:
        return [r.split("|", 1)[0] if r else None for r in await read_routes(self.redis, PARTITIONS)]

    async def ns_worker_owns(self, some: bool) -> bool | None:
        """True once every partition is routed and the namespaced worker owns some (`some`) or none."""
        try:
            routes = await self.routes()
        except RedisError:
            return None
        if None in routes:
            return None
        return True if (self.ns_address in routes) == some else None


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNs]:
    if os.geteuid() != 0:
        pytest.fail("the network partition tests need root (network namespaces, iptables)")
    ns = NetNs.create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture(scope="module")
def outside(netns: NetNs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    """redis-server and the ledger deployment on 127.0.0.1 and the namespace's outside address:
    yields (redis port, deployment URL, ledger dir)."""
    base = tmp_path_factory.mktemp("chaos-netns")
    (base / "redis").mkdir()
    (base / "ledger").mkdir()
    redis_port, deployment_port = free_port(), free_port()
    redis_argv = [find_redis_server(), "--bind", "127.0.0.1", netns.host_ip, "--port", str(redis_port),
                  "--dir", str(base / "redis"), "--appendonly", "yes", "--appendfsync", "always",
                  "--save", "", "--protected-mode", "no"]
    url = f"http://{netns.host_ip}:{deployment_port}"
    hypercorn = [sys.executable, "-m", "hypercorn", "tests.services.ledger_service:app",
                 "--bind", f"{netns.host_ip}:{deployment_port}"]
    with process(redis_argv, base / "redis.log") as redis_proc, \
            process(hypercorn, base / "hypercorn.log", {**os.environ, LEDGER_DIR_ENV: str(base / "ledger")}) as dep:
        wait_for("redis-server", lambda: b"Ready to accept" in (base / "redis.log").read_bytes(), redis_proc,
                 base / "redis.log")
        wait_for("the ledger deployment", lambda: healthy(url), dep, base / "hypercorn.log")
        yield redis_port, url, base / "ledger"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(netns: NetNs, outside: tuple[int, str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Env]:
    redis_port, url, ledger_dir = outside
    base = tmp_path_factory.mktemp("chaos-netns-cluster")
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=base / "data",
                       redis_url=f"redis://127.0.0.1:{redis_port}/0", lease_ttl_ms=LEASE_TTL_MS,
                       start_timeout_s=45.0, extra_env={"SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)})
    async with DevCluster(spec) as cluster:
        child = worker_child(spec, cluster.data_dir, 2, NS_GRPC_PORT, NS_METRICS_PORT,
                             f"redis://{netns.host_ip}:{redis_port}/0")
        worker_env = {**child.env, "SHARDGATE_WORKER_ID": "worker-netns", "SHARDGATE_BIND_HOST": netns.ns_ip,
                      "SHARDGATE_ADVERTISED_HOST": netns.ns_ip}
        worker_log = base / "worker-netns.log"
        with process(netns.argv(*child.argv), worker_log, worker_env):
            redis = Redis.from_url(spec.redis_url or "")
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            e = Env(netns, cluster, redis, redis_port, http, ledger_dir, worker_log)
            try:
                await poll("the namespaced worker to own partitions", START_DEADLINE_S,
                           lambda: e.ns_worker_owns(True), e.describe)
                async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                                     timeout=aiohttp.ClientTimeout(total=30)) as r:
                    assert r.status in (200, 201), await r.text()
                await poll("every partition to serve the ledger deployment", START_DEADLINE_S,
                           lambda: serves_every_partition(e), e.describe)
                yield e
            finally:
                await http.close()
                await redis.aclose()


async def serves_every_partition(env: Env) -> bool | None:
    """True once one call per object key on each of a dozen keys answers 200 (every owner has the
    deployment)."""
    for i in range(PARTITIONS * 2):
        async with env.http.post(f"{env.cluster.ingress_url}/restate/call/ChaosKey/ready-{i}/append",
                                 json={"tag": f"ready-{i}-{time.monotonic_ns()}", "seq": 0},
                                 timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                return None
    return True


@full_only()
@pytest.mark.timeout(300)
async def test_worker_partitioned_from_redis(env: Env) -> None:
    await poll("the namespaced worker to own partitions", START_DEADLINE_S, lambda: env.ns_worker_owns(True),
               env.describe)
    rule: tuple[str, ...] = ()

    async def inject() -> int:
        nonlocal rule
        cut_ms = int(time.time() * 1000)
        rule = env.ns.drop("OUTPUT", "-p", "tcp", "-d", env.ns.host_ip, "--dport", str(env.redis_port))
        await poll("the others to take the cut-off worker's partitions", START_DEADLINE_S,
                   lambda: env.ns_worker_owns(False), env.describe)
        return cut_ms  # the load goes on while it stays cut off

    async def heal() -> None:
        env.ns.undrop(rule)
        await poll("the worker to come back", 60.0, lambda: env.ns_worker_owns(True), env.describe)

    try:
        await run_fault("worker partitioned from Redis", env.http, env.cluster.ingress_url, env.redis,
                        env.ledger_dir, inject, env.describe, heal=heal)
    finally:
        if rule:
            with contextlib.suppress(subprocess.CalledProcessError):
                env.ns.undrop(rule)


@full_only()
@pytest.mark.timeout(300)
async def test_worker_partitioned_from_the_ingress(env: Env) -> None:
    await poll("the namespaced worker to own partitions", START_DEADLINE_S, lambda: env.ns_worker_owns(True),
               env.describe)

    async def inject() -> None:
        rule = env.ns.drop("INPUT", "-p", "tcp", "-s", env.ns.host_ip, "--dport", str(NS_GRPC_PORT))
        try:
            await asyncio.sleep(SPLIT_FROM_INGRESS_S)  # the partition's duration is the scenario
        finally:
            env.ns.undrop(rule)

    await run_fault("worker partitioned from the ingress", env.http, env.cluster.ingress_url, env.redis,
                    env.ledger_dir, inject, env.describe)
