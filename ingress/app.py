"""Builds the two HTTP applications of an ingress node and the resources they share.

Long-lived resources (Redis pool, registry cache, routing table and gRPC channels, the HTTP
client used for discovery) open and close in one cleanup context on the ingress app; the
admin app reaches them through typed AppKeys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.asyncio import Redis

from ingress.admin import AdminSettings, InvocationControl, build_admin_app
from ingress.admin.query.prune import run_pruner
from ingress.admin.query.store import QueryStore
from ingress.api import IngressApiSettings, build_ingress_app
from ingress.auth import CredentialStore, TargetResolver, admin_auth_middleware, ingress_auth_middleware
from ingress.config import IngressConfig
from ingress.grpc_dispatcher import GrpcDispatcher
from ingress.handlers.status import RedisStatusReader
from ingress.metrics import ROUTE_REFRESHES, observe_request
from shardgate import redisconn
from shardgate.cluster import check_partition_count
from shardgate.identity import RequestSigner
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router

log = logging.getLogger("ingress")


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
    ingress_auth: CredentialStore | None = None
    admin_auth: CredentialStore | None = None

    @classmethod
    def create(cls, config: IngressConfig) -> IngressNode:
        """Build the node's parts (nothing connects yet). Raises CredentialsError for an
        unreadable credentials file."""
        ingress_auth, admin_auth = _credential_stores(config)
        redis = redisconn.connect(config.redis_url, timeout_s=config.redis_timeout_s, max_connections=256)
        store = RegistryStore(redis)
        router = Router(redis, config.partitions, ROUTE_REFRESHES.inc)
        dispatcher = GrpcDispatcher(router, config.routing_deadline_s, config.rpc_timeout_s, config.call_timeout_s,
                                    config.stream_linger_ms / 1000)
        return cls(config, redis, store, RegistryCache(store), router, dispatcher,
                   ingress_auth=ingress_auth, admin_auth=admin_auth)

    def credential_stores(self) -> list[CredentialStore]:
        """The distinct credential stores in use (none when auth is off)."""
        stores = [s for s in (self.ingress_auth, self.admin_auth) if s is not None]
        return list({id(s): s for s in stores}.values())

    def reload_credentials(self) -> None:
        """Re-read every credentials file now (SIGHUP)."""
        for credentials in self.credential_stores():
            credentials.reload()

    async def start(self) -> None:
        await check_partition_count(self.redis, self.config.partitions)
        await self.cache.refresh()
        await self.router.refresh()
        self.http = aiohttp.ClientSession()
        self.tasks = [
            asyncio.create_task(self.cache.run(self.config.registry_poll_interval_s)),
            asyncio.create_task(self.router.run(1.0)),
            # drops index entries of invocations whose hash expired (safe on every node at once)
            asyncio.create_task(run_pruner(QueryStore(self.redis, self.config.partitions), INDEX_PRUNE_S)),
        ]
        self.tasks += [asyncio.create_task(s.run(self.config.auth_reload_interval_s))
                       for s in self.credential_stores()]

    async def close(self) -> None:
        for t in self.tasks or []:
            t.cancel()
        await asyncio.gather(*(self.tasks or []), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        await self.dispatcher.aclose()  # its streams to the workers, before their channels close
        await self.router.close()
        await self.redis.aclose()

    def ingress_app(self, *middlewares: Middleware) -> web.Application:
        """The ingress API; `middlewares` run inside its own one, before the auth guard (when on)."""
        settings = IngressApiSettings(
            partitions=self.config.partitions,
            max_body_bytes=self.config.max_body_bytes,
            concurrency_limit=self.config.concurrency_limit,
            metrics=observe_request,
            advertised_url=self.config.advertised_ingress_url or None,
            scopes_enabled=self.config.scopes_enabled,
            invocation_status=RedisStatusReader(self.redis),
        )
        app = build_ingress_app(self.cache.current, self.dispatcher, settings)
        app.middlewares.extend(middlewares)
        if self.ingress_auth is not None:  # off: no middleware at all, nothing on the hot path
            resolver = TargetResolver(self.cache.current, self.redis, self.config.partitions)
            app.middlewares.append(ingress_auth_middleware(self.ingress_auth, resolver))

        async def lifecycle(_: web.Application) -> AsyncIterator[None]:
            await self.start()
            yield
            await self.close()

        app.cleanup_ctx.append(lifecycle)
        return app

    def admin_app(self) -> web.Application:
        """Admin API (with /metrics); must be started after the ingress app (which opens the resources)."""
        assert self.http is not None, "start the ingress app first"
        key_file = self.config.request_identity_key_file
        signer = RequestSigner.from_file(key_file) if key_file else None
        settings = AdminSettings(advertised_ingress_url=self.config.advertised_ingress_url, signer=signer)
        app = build_admin_app(self.store, self.cache, self.http, settings,
                              InvocationControl(self.dispatcher, self.config.partitions))
        if self.admin_auth is not None:
            app.middlewares.append(admin_auth_middleware(self.admin_auth))
        return app


def _credential_stores(config: IngressConfig) -> tuple[CredentialStore | None, CredentialStore | None]:
    """The ingress's and the admin's credential stores (one store when both name the same file).
    Raises CredentialsError."""
    ingress = CredentialStore.open(config.ingress_auth_file) if config.ingress_auth_file else None
    if config.admin_auth_file and config.admin_auth_file == config.ingress_auth_file:
        admin = ingress
    else:
        admin = CredentialStore.open(config.admin_auth_file) if config.admin_auth_file else None
    if ingress is not None and admin is None:
        log.warning("the ingress API requires credentials but the admin API is open "
                    "(set SHARDGATE_ADMIN_AUTH_FILE)")
    return ingress, admin


HEALTH_PATH = "/restate/health"
INDEX_PRUNE_S = 60.0
"""How often an ingress node prunes the invocation index of entries whose hash expired."""


def drain_middleware(draining: asyncio.Event) -> Middleware:
    """While `draining` is set: 503 on the health path, and `Connection: close` on every other response."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not draining.is_set():
            return await handler(request)
        response: web.StreamResponse
        if request.path == HEALTH_PATH:
            response = web.json_response({"status": "draining"}, status=503)
        else:
            response = await handler(request)
        if not response.prepared:
            response.force_close()
        return response

    return middleware


async def serve(config: IngressConfig, stop: asyncio.Event) -> None:
    """Run both HTTP servers until `stop` is set, then drain (see the module docstring) and return."""
    node = IngressNode.create(config)
    loop = asyncio.get_running_loop()
    if node.credential_stores():
        loop.add_signal_handler(signal.SIGHUP, node.reload_credentials)
    draining = asyncio.Event()
    ingress_app = node.ingress_app(drain_middleware(draining))  # the auth guard's answers close too
    ingress_runner = web.AppRunner(ingress_app, access_log=None, handler_cancellation=False,
                                   shutdown_timeout=config.shutdown_grace_s)
    await ingress_runner.setup()
    admin_runner = web.AppRunner(node.admin_app(), access_log=None, shutdown_timeout=config.shutdown_grace_s)
    await admin_runner.setup()
    try:
        await web.TCPSite(ingress_runner, config.bind_host, config.ingress_port, backlog=2048).start()
        await web.TCPSite(admin_runner, config.bind_host, config.admin_port).start()
        await stop.wait()
        draining.set()
        log.info("ingress node draining", extra={"shutdown_delay_s": config.shutdown_delay_s,
                                                 "shutdown_grace_s": config.shutdown_grace_s})
        await asyncio.sleep(config.shutdown_delay_s)
    finally:
        # Each runner stops accepting, then waits up to the grace for its in-flight requests; the
        # ingress app goes last because its cleanup closes the resources both apps use.
        with contextlib.suppress(Exception):
            await admin_runner.cleanup()
        await ingress_runner.cleanup()
        if node.credential_stores():
            loop.remove_signal_handler(signal.SIGHUP)
