"""Routing table shared by ingress nodes and workers: partition id -> owning worker's gRPC stub, from the routing hints workers publish.

Workers' lease scripts write each partition's route (`sg:{pI}:route` = "address|token") inside
the fence, on acquisition and on every renewal. The table is reloaded every second and at once
when a worker answers NOT_LEADER or cannot be reached, so the hot path never reads leases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import grpc
from redis.asyncio import Redis

from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate import keys

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEEPALIVE_TIME_MS = 10_000


def channel_options(keepalive_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    """Options of an ingress (or worker) channel to a worker: a keepalive ping every
    `keepalive_ms` while the connection lives, also with no data flowing (a call or attach held
    open for minutes), so a dead peer is noticed; the worker's server allows exactly that
    (`server_options`)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle long call
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def server_options(keepalive_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    """Options of a worker's gRPC server: it accepts the channels' keepalive pings (every
    `keepalive_ms`, data or not). gRPC's defaults (one ping per 5 minutes without data, 2
    strikes) answer GOAWAY "too_many_pings" after about 200 s of an idle call, which cut every
    call and attach held open that long."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]


_CHANNEL_OPTIONS = channel_options()


async def read_routes(redis: Redis, partitions: int) -> list[str | None]:
    """Every partition's route `address|token` (None where no owner published one), in one
    round trip: a non-transactional pipeline of GETs, so it also works across cluster slots."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.get(keys.route(p))
        raw = cast("list[bytes | None]", await pipe.execute())
    return [None if v is None else v.decode() for v in raw]


class Router:
    def __init__(self, redis: Redis, partitions: int, on_refresh: Callable[[], None] | None = None) -> None:
        self._redis = redis
        self._on_refresh = on_refresh
        self._routes: list[str | None] = [None] * partitions
        self._stubs: dict[str, pb_grpc.PartitionServiceStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()

    def stub(self, partition: int) -> pb_grpc.PartitionServiceStub | None:
        addr = self._routes[partition]
        if addr is None:
            return None
        stub = self._stubs.get(addr)
        if stub is None:
            channel = grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)
            self._channels[addr] = channel
            stub = self._stubs[addr] = pb_grpc.PartitionServiceStub(channel)
        return stub

    async def refresh(self) -> None:
        """Reload the table; concurrent callers share one reload."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._load())
        await asyncio.shield(self._refreshing)

    async def _load(self) -> None:
        raw = await read_routes(self._redis, len(self._routes))
        if self._on_refresh is not None:
            self._on_refresh()
        routes: list[str | None] = [None if v is None else v.split("|", 1)[0] for v in raw]
        self._routes = routes
        live = set(filter(None, routes))
        for addr in [a for a in self._channels if a not in live]:
            channel = self._channels.pop(addr)
            self._stubs.pop(addr, None)
            # in the background: callers awaiting this refresh must not wait for the grace period
            task = asyncio.ensure_future(channel.close(grace=5))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  keep the old table until the next try
                log.warning("routing table refresh failed: %s", e)
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
