"""Every metric the Grafana dashboard and the alert rules use is exported by a running cluster.

A real `DevCluster` (Redis, 2 workers, 1 ingress) serves traffic that touches every metric: calls
and sends (one delayed, so a timer fires), an output lookup, a virtual-object call, and attempts
against a deployment that has gone away (deployment errors). Then the `/metrics` of the ingress
(admin port) and of every worker are scraped, and each metric name found in the PromQL of
deploy/grafana/shardgate.json and deploy/prometheus/alerts.yaml (parsed by
deploy/tools/promql_names.py) must appear among the exported samples.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from deploy.tools import chart_tools
from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import poll
from tests.deployments import serve_sdk_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "shardgate.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
PARTITIONS = 8
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


def used_metric_names() -> set[str]:
    """The metric names of every query in the dashboard and the rules (PromQL parsed, not grepped)."""
    try:
        python = chart_tools.ensure_tools_python()
    except chart_tools.ToolInstallError as e:
        pytest.fail(f"cannot install the chart tools interpreter: {e}")
    done = subprocess.run([str(python), str(REPO_ROOT / "deploy/tools/promql_names.py"), "--dashboard",
                           str(DASHBOARD), "--rules", str(ALERTS)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["errors"] == [], result["errors"]
    names = set(result["names"])
    assert len(names) >= 10, names
    return names


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[tuple[DevCluster, aiohttp.ClientSession]]:
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("dash") / "data", start_timeout_s=45.0,
                       extra_env={"SHARDGATE_LOG_JSON": "false"})
    async with DevCluster(spec) as dev, aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        await register(http, dev, sdk_deployment, "/restate/call/Greeter/greet")
        yield dev, http


async def register(http: aiohttp.ClientSession, dev: DevCluster, uri: str, ready_path: str) -> None:
    async with http.post(f"{dev.admin_url}/deployments", json={"uri": uri}) as r:
        assert r.status in (200, 201), await r.text()

    async def serving() -> bool | None:
        async with http.post(f"{dev.ingress_url}{ready_path}", json="ready") as r:
            return True if r.status == 200 else None

    await poll(f"the ingress to serve {ready_path}", 20.0, serving)


async def exported_samples(http: aiohttp.ClientSession, dev: DevCluster) -> set[str]:
    """Sample names on the /metrics of the ingress and of every worker."""
    urls = [f"{dev.admin_url}/metrics"] + [f"http://127.0.0.1:{w.metrics_port}/metrics" for w in dev.workers]
    names: set[str] = set()
    for url in urls:
        async with http.get(url) as r:
            assert r.status == 200, url
            text = await r.text()
        for family in text_string_to_metric_families(text):
            names |= {sample.name for sample in family.samples}
    return names


async def make_traffic(http: aiohttp.ClientSession, dev: DevCluster, tmp_path: Path) -> None:
    ingress = dev.ingress_url
    for i in range(5):
        async with http.post(f"{ingress}/restate/call/Greeter/greet", json=f"n{i}") as r:
            assert r.status == 200, await r.text()
    async with http.post(f"{ingress}/restate/call/Counter/dash/add", json=1) as r:
        assert r.status == 200, await r.text()
    async with http.post(f"{ingress}/restate/send/Greeter/greet?delay=100ms", json="later") as r:
        assert r.status == 202, await r.text()
        invocation = (await r.json())["invocationId"]

    async def output() -> bool | None:
        async with http.get(f"{ingress}/restate/invocation/{invocation}/output") as r:
            return True if r.status == 200 else None

    await poll("the delayed send's output", 20.0, output)
    # A deployment that goes away: its attempts fail with transport errors and are retried.
    with serve_sdk_app("tests.services.ingress_fixes_service:app", tmp_path / "gone.log") as gone:
        await register(http, dev, gone, "/restate/call/Outputs/greet")
    async with http.post(f"{ingress}/restate/send/Outputs/greet", json="gone") as r:
        assert r.status == 202, await r.text()


@pytest.mark.timeout(120)
async def test_every_dashboard_and_alert_metric_is_exported(cluster: tuple[DevCluster, aiohttp.ClientSession],
                                                              tmp_path: Path) -> None:
    dev, http = cluster
    used = used_metric_names()
    await make_traffic(http, dev, tmp_path)

    async def all_exported() -> bool | None:
        return True if used <= await exported_samples(http, dev) else None

    async def missing() -> str:
        return f"not exported: {sorted(used - await exported_samples(http, dev))}"

    await poll("every dashboard and alert metric on /metrics", 30.0, all_exported, missing)
