"""Builds the two HTTP applications of an ingress node and the resources they share.

Long-lived resources (Redis pool, registry cache, routing table and gRPC channels, the HTTP
client used for discovery) open and close in one cleanup context on the ingress app; the
admin app reaches them through typed AppKeys.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from ingress.admin import AdminSettings, build_admin_app
from ingress.api import IngressApiSettings, build_ingress_app
from ingress.config import IngressConfig
from ingress.grpc_dispatcher import GrpcDispatcher
from ingress.metrics import ROUTE_REFRESHES, observe_request
from partition.identity import RequestSigner
from shardgate.cluster import check_partition_count
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router


@dataclass
class IngressNode:
    """Everything one ingress process shares between its two HTTP apps."""

    config: IngressConfig
    redis: Redis
    store: RegistryStore
    cache: RegistryCache
    router: Router
    dispatcher: GrpcDispatcher
    http: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] | None = None

    @classmethod
    def create(cls, config: IngressConfig) -> IngressNode:
        redis = Redis.from_url(config.redis_url, socket_timeout=config.redis_timeout_s,
                               socket_connect_timeout=config.redis_timeout_s, max_connections=256)
        store = RegistryStore(redis)
        router = Router(redis, config.partitions, ROUTE_REFRESHES.inc)
        dispatcher = GrpcDispatcher(router, config.routing_deadline_s, config.rpc_timeout_s, config.call_timeout_s)
        return cls(config, redis, store, RegistryCache(store), router, dispatcher)

    async def start(self) -> None:
        await check_partition_count(self.redis, self.config.partitions)
        await self.cache.refresh()
        await self.router.refresh()
        self.http = aiohttp.ClientSession()
        self.tasks = [
            asyncio.create_task(self.cache.run(self.config.registry_poll_interval_s)),
            asyncio.create_task(self.router.run(1.0)),
        ]

    async def close(self) -> None:
        for t in self.tasks or []:
            t.cancel()
        await asyncio.gather(*(self.tasks or []), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        await self.router.close()
        await self.redis.aclose()

    def ingress_app(self) -> web.Application:
        settings = IngressApiSettings(
            partitions=self.config.partitions,
            max_body_bytes=self.config.max_body_bytes,
            concurrency_limit=self.config.concurrency_limit,
            metrics=observe_request,
        )
        app = build_ingress_app(self.cache.current, self.dispatcher, settings)

        async def lifecycle(_: web.Application) -> AsyncIterator[None]:
            await self.start()
            yield
            await self.close()

        app.cleanup_ctx.append(lifecycle)
        return app

    def admin_app(self) -> web.Application:
        """Admin API + /metrics; must be started after the ingress app (which opens the resources)."""
        assert self.http is not None, "start the ingress app first"
        key_file = self.config.request_identity_key_file
        signer = RequestSigner.from_file(key_file) if key_file else None
        settings = AdminSettings(advertised_ingress_url=self.config.advertised_ingress_url, signer=signer)
        app = build_admin_app(self.store, self.cache, self.http, settings)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", metrics)
        return app


async def serve(config: IngressConfig, stop: asyncio.Event) -> None:
    """Run both HTTP servers until `stop` is set; in-flight requests get 5 s to finish."""
    node = IngressNode.create(config)
    ingress_runner = web.AppRunner(node.ingress_app(), access_log=None, handler_cancellation=False,
                                   shutdown_timeout=5.0)
    await ingress_runner.setup()
    admin_runner = web.AppRunner(node.admin_app(), access_log=None, shutdown_timeout=5.0)
    await admin_runner.setup()
    try:
        await web.TCPSite(ingress_runner, config.bind_host, config.ingress_port, backlog=2048).start()
        await web.TCPSite(admin_runner, config.bind_host, config.admin_port).start()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await admin_runner.cleanup()
        await ingress_runner.cleanup()
