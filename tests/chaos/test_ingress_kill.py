"""SIGKILL of an ingress node mid-call, behind the load balancer, under the chaos load.

The real CLI (`shardgate dev --ingress-nodes 2 --load-balancer`, haproxy from `make lb-tools`) with
2 workers; the ledger deployment records every side effect. ingress-0 is SIGKILLed while calls and
sends run through haproxy; the supervisor restarts it. The calls open on ingress-0 at that moment
lose their connection: what their callers get back is what this fault measures (see docs/chaos.md).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from sgtools.dev import LoadBalancerNotFound, find_haproxy
from tests.chaos.conftest import SHAPE, Shape, full_only, run_fault
from tests.clusters import DevCommand, pid_alive, poll, shardgate_dev

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

RESTART_DEADLINE_S = 30.0
KILL_SHAPE = Shape(send_keys=8, callers=12, before=SHAPE.before, after=SHAPE.after)
"""Enough streams that several requests are open on the node at the moment it is killed."""


@dataclass
class Env:
    dev: DevCommand
    http: aiohttp.ClientSession
    redis: Redis
    ledger_dir: Path

    async def describe(self) -> str:
        return f"cluster.json processes {self.dev.processes()}\nsupervisor log:\n{self.dev.stderr()[-3000:]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, ledger_deployment: tuple[str, Path]) -> AsyncIterator[Env]:
    try:
        find_haproxy()
    except LoadBalancerNotFound as exc:
        pytest.fail(f"haproxy is missing: run `make lb-tools` (apt-get install -y haproxy). {exc}")
    url, ledger_dir = ledger_deployment
    data_dir = tmp_path_factory.mktemp("chaos-lb") / "data"
    args = ["--ingress-nodes", "2", "--load-balancer", "--ingress-port", "0", "--admin-port", "0",
            "--workers", "2", "--partitions", "8"]
    async with shardgate_dev(data_dir, *args) as dev:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        redis = Redis.from_url(dev.redis_url)
        e = Env(dev, http, redis, ledger_dir)
        try:
            async with http.post(f"{dev.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()
            streak = 0

            async def both_nodes_serve() -> bool | None:
                nonlocal streak
                async with http.post(f"{dev.ingress_url}/restate/call/ChaosPlain/record", json="ready",
                                     timeout=aiohttp.ClientTimeout(total=10)) as r:
                    streak = streak + 1 if r.status == 200 else 0
                return True if streak >= 4 else None  # round robin: both nodes answered

            await poll("both ingress nodes to serve the ledger deployment", 30.0, both_nodes_serve, e.describe)
            yield e
        finally:
            await http.close()
            await redis.aclose()


@full_only()
@pytest.mark.timeout(240)
async def test_ingress_node_sigkill_mid_call(env: Env) -> None:
    async def inject() -> None:
        victim = env.dev.pids()["ingress-0"]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)

        async def restarted() -> bool | None:
            pid = env.dev.pids()["ingress-0"]
            ok = pid is not None and pid != victim and pid_alive(pid)
            return True if ok and f"ingress-0 restarted (pid {pid}" in env.dev.stderr() else None

        await poll("the supervisor to restart ingress-0", RESTART_DEADLINE_S, restarted, env.describe)

    await run_fault("ingress node SIGKILL (behind haproxy)", env.http, env.dev.ingress_url, env.redis,
                    env.ledger_dir, inject, env.describe, KILL_SHAPE)
