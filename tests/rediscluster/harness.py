"""A real shardgate cluster (2 workers + ingress from `sgtools.dev.DevCluster`) on a Redis Cluster,
with the conformance deployment registered, and the HTTP helpers the tests share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster
from shardgate import redisconn
from shardgate.routing import read_routes
from tests.clusters import poll

PARTITIONS = 16
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 300


@dataclass
class Env:
    """The running cluster, a cluster client of the Redis Cluster, and an HTTP session."""

    cluster: DevCluster
    redis: Redis
    http: aiohttp.ClientSession

    async def request(self, method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
                      timeout_s: float = 30.0) -> tuple[int, Any]:
        """One HTTP request (JSON body unless None); (status, decoded JSON or text)."""
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout_s), "headers": headers}
        if body is not None:
            kwargs["json"] = body
        else:
            kwargs["skip_auto_headers"] = {"Content-Type"}
        async with self.http.request(method, url, **kwargs) as r:
            text = await r.text()
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, text

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.request("POST", f"{self.cluster.ingress_url}{path}", body, **kw)

    async def get(self, path: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        return await self.request("GET", f"{self.cluster.ingress_url}{path}", timeout_s=timeout_s)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request(method, f"{self.cluster.admin_url}{path}", body)


async def routes_settled(redis: Redis) -> bool | None:
    """True once every partition has a live lease whose token is the one in its route."""
    routes = await read_routes(redis, PARTITIONS)
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(PARTITIONS):
            pipe.get(keys.lease(p))
        leases = await pipe.execute()
    for raw, lease in zip(routes, leases, strict=True):
        if raw is None or lease is None or raw.split("|", 1)[1] != lease.decode():
            return None
    return True


def spec(data_dir: Path, redis_url: str, extra_env: dict[str, str] | None = None) -> ClusterSpec:
    env = {"SHARDGATE_LEASE_TTL_MS": str(LEASE_TTL_MS), "SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)}
    env.update(extra_env or {})
    return ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=data_dir,
                       redis_url=redis_url, lease_ttl_ms=LEASE_TTL_MS, start_timeout_s=45.0,
                       log_level="INFO", extra_env=env)


@contextlib.asynccontextmanager
async def shardgate_on(redis_url: str, data_dir: Path, sdk_url: str,
                       extra_env: dict[str, str] | None = None) -> AsyncIterator[Env]:
    """Start workers + ingress on the Redis Cluster at `redis_url`, register `sdk_url`, wait until
    every partition is owned and the ingress serves the deployment."""
    async with DevCluster(spec(data_dir, redis_url, extra_env)) as cluster:
        redis = redisconn.connect(redis_url, timeout_s=5.0, max_connections=64)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        env = Env(cluster, redis, http)
        try:
            await poll("every partition to be owned", 30.0, lambda: routes_settled(redis))
            status, body = await env.admin("POST", "/deployments", {"uri": sdk_url})
            assert status in (200, 201), body

            async def ready() -> bool | None:
                status, _ = await env.post("/restate/call/Greeter/greet", "ready", timeout_s=10)
                return True if status == 200 else None

            await poll("the ingress to serve the deployment", 30.0, ready)
            yield env
        finally:
            await http.close()
            await redis.aclose()
