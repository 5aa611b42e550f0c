"""`GET /restate/invocation/{id}/status` against a real cluster (`DevCluster`: Redis, 2 workers, the
ingress) and a real restate-sdk deployment (Greeter, Counter, Signup).

Invocations are made through the cluster's own ingress; the status route is served by an ingress
app built in this process with `build_ingress_app` and a `RedisStatusReader` over the cluster's
Redis (the ingress process serves it once `ingress/app.py` passes one). A delayed send is
`created`/`scheduled`, an invocation queued behind a key's lock `created`/`pending`, a suspended
one `started`/`suspended`, a finished one `completed` (with its failure as `error` when it failed);
unknown ids answer 404, malformed ones 400, other methods 405. The per-status gauge of an admin app
(built here too, recounting every 0.2 s) counts what `/query`'s `GROUP BY status` counts. Waits
poll against a deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ingress.admin import AdminSettings, InvocationControl, build_admin_app
from ingress.api import IngressApiSettings, build_ingress_app
from ingress.grpc_dispatcher import GrpcDispatcher
from ingress.handlers import status as status_module
from ingress.handlers.status import RedisStatusReader
from partition import keys
from partition.invocation import HashField
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router
from shardgate.schema import SchemaSnapshot
from tests.clusters import poll, unique

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 8
DEADLINE_S = 30.0
UNKNOWN_ID = "inv_19qmpqSOYavs3m8NBJV7rgq0RAIyAAAAAA"


class Env:
    def __init__(self, http: aiohttp.ClientSession, ingress_url: str, status_url: str, admin_url: str) -> None:
        self.http, self.ingress_url, self.status_url, self.admin_url = http, ingress_url, status_url, admin_url

    async def gauge(self) -> dict[str, int]:
        """`shardgate_admin_invocations` by status, as the in-process admin app's /metrics shows it."""
        async with self.http.get(f"{self.admin_url}/metrics", timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            text = await r.text()
        out = {}
        for line in text.splitlines():
            if line.startswith('shardgate_admin_invocations{status="'):
                labels, value = line.rsplit(" ", 1)
                out[labels.split('"')[1]] = int(float(value))
        return {k: v for k, v in out.items() if v}

    async def grouped(self) -> dict[str, int]:
        """`SELECT status, count(*) FROM sys_invocation GROUP BY status` through the cluster's admin API."""
        async with self.http.post(f"{self.admin_url}/query", headers={"accept": "application/json"},
                                  json={"query": "SELECT status, count(*) AS n FROM sys_invocation GROUP BY status"},
                                  timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            assert r.status == 200, await r.text()
            return {row["status"]: row["n"] for row in (await r.json())["rows"]}

    async def ingress(self, path: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
        async with self.http.request(method, f"{self.ingress_url}{path}", json=body,
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def status(self, inv_id: str, method: str = "GET") -> tuple[int, Any]:
        async with self.http.request(method, f"{self.status_url}/restate/invocation/{inv_id}/status",
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def send(self, path: str, body: Any) -> str:
        status, answer = await self.ingress(path, body)
        assert status == 202, answer
        return str(answer["invocationId"])

    async def wait_for(self, inv_id: str, wanted: dict[str, str]) -> None:
        async def probe() -> bool | None:
            return True if await self.status(inv_id) == (200, wanted) else None

        await poll(f"{inv_id} to be {wanted}", DEADLINE_S, probe)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[Env]:
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("status") / "data", start_timeout_s=45.0, log_level="INFO")
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        router = Router(redis, PARTITIONS)
        dispatcher = GrpcDispatcher(router, routing_deadline_s=15.0, rpc_timeout_s=5.0, call_timeout_s=30.0)
        settings = IngressApiSettings(partitions=PARTITIONS, invocation_status=RedisStatusReader(redis))
        server = TestServer(build_ingress_app(SchemaSnapshot.empty, dispatcher, settings), host="127.0.0.1")
        await server.start_server()
        store = RegistryStore(redis)
        admin = TestServer(build_admin_app(store, RegistryCache(store), http,
                                           AdminSettings(advertised_ingress_url=cluster.ingress_url),
                                           InvocationControl(dispatcher, PARTITIONS, status_count_interval_s=0.2)),
                           host="127.0.0.1")
        await admin.start_server()
        try:
            async with http.post(f"{cluster.admin_url}/deployments", json={"uri": sdk_deployment, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
                assert r.status in (200, 201), await r.text()
            e = Env(http, cluster.ingress_url, str(server.make_url("")).rstrip("/"),
                    str(admin.make_url("")).rstrip("/"))

            async def ready() -> bool | None:
                return True if (await e.ingress("/Greeter/greet", "probe"))[0] == 200 else None

            await poll("the ingress to serve the deployment", DEADLINE_S, ready)
            yield e
        finally:
            await admin.close()
            await server.close()
            await dispatcher.aclose()
            await router.close()
            await redis.aclose()


async def test_the_route_reads_the_fields_and_keys_the_partition_writes() -> None:
    assert status_module.STATUS_FIELDS == (HashField.STATUS.value, HashField.RESULT.value,
                                           HashField.LAST_FAILURE.value)
    assert status_module.invocation_key(3, "inv_x") == keys.invocation(3, "inv_x")


async def test_a_call_goes_from_started_to_completed(env: Env) -> None:
    inv = await env.send("/Greeter/slow/send", 600)
    await env.wait_for(inv, {"stage": "started", "status": "suspended"})
    done = await env.send("/Greeter/greet/send", "Ann")
    await env.wait_for(done, {"stage": "completed", "status": "completed"})


async def test_never_started_invocations_are_created(env: Env) -> None:
    later = await env.send("/Greeter/greet/send?delay=10m", "later")
    assert await env.status(later) == (200, {"stage": "created", "status": "scheduled"})
    key = unique("busy")
    holder = await env.send(f"/Counter/{key}/slow_add/send", 1)  # holds the key ~5 s
    await env.wait_for(holder, {"stage": "started", "status": "suspended"})
    queued = await env.send(f"/Counter/{key}/add/send", 1)
    assert await env.status(queued) == (200, {"stage": "created", "status": "pending"})


async def test_a_failed_invocation_shows_its_error(env: Env) -> None:
    failed = await env.send("/Greeter/fail/send", "nope")
    await env.wait_for(failed, {"stage": "completed", "status": "completed", "error": "[409] failed on purpose: nope"})


async def test_unknown_malformed_and_other_methods(env: Env) -> None:
    status, body = await env.status(UNKNOWN_ID)
    assert (status, body["message"]) == (404, "invocation not found")
    assert (await env.status("inv_1bad"))[0] == 400
    assert (await env.status(UNKNOWN_ID, method="POST"))[0] == 405


async def test_the_per_status_gauge_counts_what_group_by_status_counts(env: Env) -> None:
    await env.send("/Greeter/slow/send", 600)
    await env.send("/Greeter/greet/send?delay=10m", "gauge")

    async def same() -> dict[str, int] | None:
        gauge, grouped = await env.gauge(), await env.grouped()
        return gauge if gauge == grouped and gauge.get("suspended") and gauge.get("scheduled") else None

    counted = await poll("the gauge to count what GROUP BY status counts", DEADLINE_S, same)
    assert set(counted) <= {"pending", "scheduled", "running", "suspended", "backing-off", "paused", "completed"}
