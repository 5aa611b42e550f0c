"""`python -m partition`: one partition worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from partition.config import PartitionConfig
from partition.delivery import RemoteDelivery
from partition.identity import RequestSigner
from partition.invoker import Invoker
from partition.leases import Ownership
from partition.scripts import Scripts
from partition.server import PartitionServicer
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.cluster import check_partition_count
from shardgate.logs import run_process
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router

log = logging.getLogger("partition")


def _metrics_app(redis: Redis, ownership_ref: dict[str, Ownership]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        try:
            await redis.ping()
        except Exception as e:  # noqa: BLE001  readiness depends on Redis, liveness never does
            return web.json_response({"status": "redis unavailable", "error": str(e)}, status=503)
        owned = len(ownership_ref["o"].tokens) if "o" in ownership_ref else 0
        return web.json_response({"status": "ok", "owned_partitions": owned})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


async def serve(config: PartitionConfig) -> None:
    redis = Redis.from_url(config.redis_url, socket_timeout=config.redis_timeout_s,
                           socket_connect_timeout=config.redis_timeout_s, max_connections=512)
    await check_partition_count(redis, config.partitions)
    scripts = Scripts(redis)
    store = RegistryStore(redis)
    cache = RegistryCache(store)
    await cache.refresh()
    signer = RequestSigner.from_file(config.request_identity_key_file) if config.request_identity_key_file else None
    if signer is not None:
        log.info("signing requests to deployments", extra={"key_id": signer.key_id})
    invoker = Invoker(config.deployment_connect_timeout_s, config.max_protocol_version, signer)
    await invoker.start()
    router = Router(redis, config.partitions)
    service = PartitionService(redis, scripts, invoker, cache.current, config.partitions,
                               config.max_concurrent_invocations, RemoteDelivery(router).deliver)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_PartitionServiceServicer_to_server(PartitionServicer(service), server)
    port = server.add_insecure_port(f"{config.bind_host}:{config.grpc_port}")
    await server.start()
    address = f"{config.advertised_host}:{port}"

    ownership = Ownership(redis, scripts, config.worker_id, address, config.partitions, config.lease_ttl_ms,
                          config.heartbeat_interval_ms, service.on_acquired, service.on_lost)
    service.tokens = ownership.tokens
    runner = web.AppRunner(_metrics_app(redis, {"o": ownership}), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.bind_host, config.metrics_port)
    await site.start()

    tasks = [asyncio.create_task(ownership.run()), asyncio.create_task(cache.run(0.25)),
             asyncio.create_task(router.run(1.0))]
    log.info("partition worker started", extra={"worker_id": config.worker_id, "grpc": address,
                                                "metrics_port": config.metrics_port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("partition worker stopping: releasing partitions")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await ownership.release_all()
    await server.stop(grace=2)
    await service.shutdown()
    await invoker.close()
    await router.close()
    await runner.cleanup()
    await redis.aclose()


def main() -> int:
    return run_process("partition", PartitionConfig.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
