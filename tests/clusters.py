"""Helpers shared by the multi-process e2e tests: polling with a deadline, partition ownership."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from redis.asyncio import Redis

from partition import keys
from partition.leases import rendezvous_winner

T = TypeVar("T")
POLL_S = 0.05


async def poll(what: str, deadline_s: float, probe: Callable[[], Awaitable[T | None]],
               diag: Callable[[], Awaitable[str]] | None = None, interval_s: float = POLL_S) -> T:
    """Call `probe()` until it returns something other than None; fail after `deadline_s`
    (with `diag()`'s text, when given, to explain the state at that moment)."""
    end = time.monotonic() + deadline_s
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            result, last = None, e
        if result is not None:
            return result
        if time.monotonic() > end:
            detail = await diag() if diag is not None else ""
            pytest.fail(f"timed out after {deadline_s}s waiting for {what} (last error: {last!r})\n{detail}")
        await asyncio.sleep(interval_s)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def partition_owners(cluster: Any, redis: Redis, partitions: int) -> dict[int, int] | None:
    """Partition -> index of the owning worker once ownership has settled, else None.

    Settled: every partition has a live lease whose token is the one in `sg:routes`, and the
    routed address (host:port) is the gRPC port of the running worker that wins the partition
    by rendezvous over the running workers.
    """
    workers = cluster.workers
    live = [w.worker_id for w in workers if w.running]
    by_port = {w.grpc_port: i for i, w in enumerate(workers)}
    routes = await redis.hgetall(keys.ROUTES)
    leases = await redis.mget([keys.lease(p) for p in range(partitions)])
    result: dict[int, int] = {}
    for p in range(partitions):
        raw = routes.get(str(p).encode())
        if raw is None or leases[p] is None:
            return None
        address, token = raw.decode().split("|", 1)
        index = by_port.get(int(address.rsplit(":", 1)[1]))
        if token != leases[p].decode() or index is None or not workers[index].running:
            return None
        if workers[index].worker_id != rendezvous_winner(live, p):
            return None
        result[p] = index
    return result
