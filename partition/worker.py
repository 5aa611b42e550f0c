"""The worker's composition root: builds every long-lived part once, starts and stops them in order.

Nothing else wires objects together. Order of start: Redis client and the partition-count check,
registry cache, invoker, router, partition service, gRPC server (its address is what ownership
advertises), ownership (membership + leases), metrics/health server, background loops. Stop runs
the other way round: no new attempt starts; each partition is handed back (lease released, the
other workers told on `sg:membership`) as soon as its running attempts recorded their transition,
at most `drain_grace_s` later, so idle partitions move in milliseconds and no attempt is cut in
the middle; then loops, gRPC drained, drivers, clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from partition.config import PartitionConfig
from partition.delivery import RemoteDelivery
from partition.invoker import Invoker
from partition.leases import Ownership
from partition.scripts import ReplicaAcks, Scripts
from partition.server import PartitionServicer
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate import redisconn
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.cluster import check_partition_count
from shardgate.identity import RequestSigner
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router, server_options
from shardgate.tasks import cancel_and_wait

log = logging.getLogger("partition")

REDIS_MAX_CONNECTIONS = 512
LEASE_REDIS_CONNECTIONS = 8  # heartbeat pipeline, membership channel, lease checks of the drivers
REGISTRY_POLL_S = 0.25
ROUTER_REFRESH_S = 1.0
GRPC_GRACE_S = 2.0


class Worker:
    """One partition worker process's parts. `start()` then `stop()`; both once."""

    def __init__(self, config: PartitionConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.redis = redisconn.connect(config.redis_url, timeout_s=config.redis_timeout_s,
                                       max_connections=REDIS_MAX_CONNECTIONS)
        acks = ReplicaAcks(config.redis_wait_replicas, config.redis_wait_timeout_ms)
        self.scripts = Scripts(self.redis, acks if config.redis_wait_replicas > 0 else None)
        # Membership and leases on their own few connections: a burst of transitions that takes
        # every connection of the main pool must not hold a lease renewal back past the lease TTL.
        self.lease_redis = redisconn.connect(config.redis_url, timeout_s=config.redis_timeout_s,
                                             max_connections=LEASE_REDIS_CONNECTIONS)
        self.registry = RegistryCache(RegistryStore(self.redis))
        signer = RequestSigner.from_file(config.request_identity_key_file) if config.request_identity_key_file else None
        if signer is not None:
            log.info("signing requests to deployments", extra={"key_id": signer.key_id})
        self.invoker = Invoker(config.deployment_connect_timeout_s, config.max_protocol_version, signer)
        self.router = Router(self.redis, config.partitions)
        self.service = PartitionService(self.redis, self.scripts, self.invoker, self.registry.current,
                                        config.partitions, config.max_concurrent_invocations,
                                        RemoteDelivery(self.router).deliver, clock,
                                        ready=config.ready_invocations, max_backlog=config.max_backlog_invocations)
        self.service.stream_attempts(config.bidi)
        self.grpc = grpc.aio.server(options=server_options())
        servicer = PartitionServicer(self.service, config.stream_linger_ms / 1000)
        pb_grpc.add_PartitionServiceServicer_to_server(servicer, self.grpc)
        self.ownership: Ownership | None = None
        self._metrics: web.AppRunner | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._serving = False  # the gRPC server was started (stop must drain it)

    async def start(self) -> None:
        """Join the cluster. Raises ClusterMismatch when the stored partition count differs."""
        config = self.config
        await check_partition_count(self.redis, config.partitions)
        await self.registry.refresh()
        await self.invoker.start()
        port = self.grpc.add_insecure_port(f"{config.bind_host}:{config.grpc_port}")
        await self.grpc.start()
        self._serving = True
        address = f"{config.advertised_host}:{port}"
        ownership = Ownership(self.lease_redis, Scripts(self.lease_redis), config.worker_id, address,
                              config.partitions, config.lease_ttl_ms, config.heartbeat_interval_ms,
                              self.service.on_acquired, self.service.on_lost, self.clock, drain=self._hand_over)
        await ownership.claim_identity()  # raises DuplicateWorker: stop() must then not leave for it
        self.ownership = ownership
        self.service.check_leases(ownership)
        self._metrics = web.AppRunner(self._metrics_app(), access_log=None)
        await self._metrics.setup()
        await web.TCPSite(self._metrics, config.bind_host, config.metrics_port).start()
        self._loops = [asyncio.create_task(self.ownership.run()),
                       asyncio.create_task(self.ownership.listen()),
                       asyncio.create_task(self.registry.run(REGISTRY_POLL_S)),
                       asyncio.create_task(self.router.run(ROUTER_REFRESH_S))]
        log.info("partition worker started", extra={"worker_id": config.worker_id, "grpc": address,
                                                    "metrics_port": config.metrics_port})

    async def stop(self) -> None:
        """Leave the cluster: hand the partitions back at once, drain RPCs, close clients.
        Safe after a `start()` that failed part-way (e.g. a refused partition count)."""
        log.info("partition worker stopping: handing partitions back as their running attempts finish",
                 extra={"drain_grace_s": self.config.drain_grace_s})
        self.service.quiesce()
        if self.ownership is not None:
            with contextlib.suppress(Exception):
                await self.ownership.hand_back(self._partition_drained)
        await cancel_and_wait(self._loops)  # a lost cancellation (redis-py) must not hang the stop
        log.info("partition worker stopping: partitions handed back, draining RPCs")
        if self._serving:
            await self.grpc.stop(grace=GRPC_GRACE_S)
        log.info("partition worker stopping: RPCs drained, stopping drivers")
        await self.service.shutdown()
        await self.invoker.close()
        await self.router.close()
        if self._metrics is not None:
            await self._metrics.cleanup()
        await self.redis.aclose()
        await self.lease_redis.aclose()
        log.info("partition worker stopped")

    async def _hand_over(self, partition: int) -> None:
        """Before a rebalance releases `partition`: no new attempt, the running ones finish."""
        self.service.hold(partition)
        await self._partition_drained(partition)

    async def _partition_drained(self, partition: int) -> None:
        """Wait up to the drain grace for the attempts of `partition` running here."""
        if not await self.service.wait_idle(partition, self.config.drain_grace_s):
            log.warning("attempts still running after the drain grace: the next owner replays them",
                        extra={"partition": partition})

    def _metrics_app(self) -> web.Application:
        """`/metrics`, `/health` (liveness: never touches Redis) and `/ready` (Redis + owned partitions)."""
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def ready(_: web.Request) -> web.Response:
            try:
                await self.redis.ping()
            except Exception:  # noqa: BLE001  readiness depends on Redis, liveness never does
                return web.json_response({"status": "redis unavailable"}, status=503)
            owned = len(self.ownership.tokens) if self.ownership is not None else 0
            return web.json_response({"status": "ok", "owned_partitions": owned})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        return app
