"""A rolling restart under load loses no request: `sgtools.roll` against a real
`shardgate dev --ingress-nodes 2 --load-balancer --workers 2` (haproxy in front of two ingress
nodes, two workers, Redis) with the conformance deployment.

Every ingress node and every worker is SIGTERMed in turn while closed-loop callers send
`Greeter/greet` through the load balancer; each comes back (the supervisor restarts it) before the
next goes. Checked: every process was replaced by a new pid, every request sent was answered 200,
and the load flowed throughout (requests were answered during the roll, not only before it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from sgtools.roll import RollConfig, read_cluster, roll
from tests.clusters import DevCommand, poll, shardgate_dev
from tests.e2e.test_load_balancer import haproxy_or_fail

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[DevCommand]:
    haproxy_or_fail()
    data_dir = tmp_path_factory.mktemp("roll") / "data"
    args = ["--ingress-nodes", "2", "--load-balancer", "--ingress-port", "0", "--admin-port", "0",
            "--workers", "2", "--partitions", "8"]
    async with shardgate_dev(data_dir, *args) as dev, aiohttp.ClientSession() as http:
        async with http.post(f"{dev.admin_url}/deployments", json={"uri": sdk_deployment, "force": True},
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
            assert r.status in (200, 201), await r.text()

        async def serves() -> bool | None:
            async with http.post(f"{dev.ingress_url}/restate/call/Greeter/greet", json="ready",
                                 timeout=aiohttp.ClientTimeout(total=10)) as r:
                return True if r.status == 200 else None

        await poll("the cluster to serve the deployment", 30.0, serves)
        yield dev


@pytest.mark.timeout(240)
async def test_a_rolling_restart_of_every_ingress_node_and_worker_fails_no_request(dev: DevCommand) -> None:
    cluster_json = dev.data_dir / "cluster.json"
    before = {p["name"]: p["pid"] for p in read_cluster(cluster_json)["processes"]}
    report = await roll(RollConfig(cluster_json, concurrency=6, settle_s=1.0))
    rolled = [r["name"] for r in report["restarts"]]
    assert rolled == ["ingress-0", "ingress-1", "worker-0", "worker-1"], report
    after = {p["name"]: p["pid"] for p in read_cluster(cluster_json)["processes"]}
    assert all(after[name] not in (None, before[name]) for name in rolled), (before, after)
    assert report["failed"] == 0, (report["failures"], report["restarts"])
    assert report["ok"] == report["sent"] and report["ok"] > 100, report
