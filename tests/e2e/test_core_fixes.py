"""Fixes in the invocation driver, end to end: a real multi-process cluster (`DevCluster`: Redis,
2 workers, ingress) and a real restate-sdk deployment (`tests/services/core_service.py`).

* A virtual object handler that always fails under the retry policy KILL completes with the
  failure; the key's lock then goes to the next call waiting in its inbox, which runs at once
  (it used to stay locked: nobody drove the inbox head).

Nothing sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import poll, unique
from tests.deployments import serve_sdk_app
from tests.services.core_service import KILL_AFTER_ATTEMPTS
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 8
DEADLINE_S = 15.0


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, counter_dir: Path) -> None:
        self.cluster, self.http, self.counter_dir = cluster, http, counter_dir

    async def request(self, method: str, path: str, body: Any = None, timeout_s: float = DEADLINE_S) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.cluster.ingress_url}{path}", json=body,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            return r.status, (await r.json(content_type=None)) if raw else None

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)


@pytest.fixture(scope="module")
def core_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("core")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    with serve_sdk_app("tests.services.core_service:app", base / "hypercorn.log",
                       {COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url, counter_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, core_deployment: tuple[str, Path]) -> AsyncIterator[Env]:
    url, counter_dir = core_deployment
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("core-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO")
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        e = Env(cluster, http, counter_dir)
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
            assert r.status in (200, 201), await r.text()

        async def ready() -> bool | None:
            status, _ = await e.request("POST", f"/restate/call/Wedge/{unique('probe')}/ok", "none", timeout_s=5)
            return True if status == 200 else None

        await poll("the ingress to serve the core deployment", 30.0, ready)
        yield e


@pytest.mark.timeout(60)
async def test_killed_invocation_hands_its_key_to_the_next_call(env: Env) -> None:
    key, name = unique("wedge"), unique("attempts")
    status, ack = await env.request("POST", f"/restate/send/Wedge/{key}/fail_always", name)
    assert status == 202, ack

    async def first_attempt_ran() -> bool | None:
        return True if env.counter(name) >= 1 else None

    # The failing invocation holds the key's lock through its back-offs, so this call is inboxed
    # behind it and may only run once the retry policy killed it: it sees every attempt's count.
    # (An attempt may also fail before reaching the handler while a worker's registry cache is
    # still cold; it counts against the policy but not in the counter.)
    await poll("the first failing attempt", DEADLINE_S, first_attempt_ran)
    status, seen = await env.request("POST", f"/restate/call/Wedge/{key}/ok", name)
    assert status == 200, seen
    status, body = await env.request("GET", f"/restate/output/{ack['invocationId']}")
    assert status == 500, body
    assert body["message"].endswith(f"failing attempt {seen}')")  # killed after its last attempt
    assert 1 <= seen == env.counter(name) <= KILL_AFTER_ATTEMPTS
    # and the key stays free for whatever comes next
    assert await env.request("POST", f"/restate/call/Wedge/{key}/ok", name) == (200, seen)
