"""The standalone Redis client's pool (`shardgate.redisconn.connect`): a full pool waits for a
connection to come back instead of failing, within the client's timeout; against a real
redis-server, with commands that hold their connection (BLPOP on a key nobody pushes to)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shardgate import redisconn
from tests.clusters import poll

pytestmark = pytest.mark.timeout(30)


def _pool(client: Any) -> redisconn.WaitingConnectionPool:
    pool = client.connection_pool
    assert isinstance(pool, redisconn.WaitingConnectionPool)
    return pool


async def _until(what: str, condition: Callable[[], bool]) -> None:
    async def probe() -> bool | None:
        return True if condition() else None

    await poll(what, 5.0, probe, interval_s=0.005)


async def test_a_full_pool_waits_for_a_connection_instead_of_failing(redis_url: str) -> None:
    client = redisconn.connect(redis_url, timeout_s=5.0, max_connections=2)
    try:
        started = time.monotonic()
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.blpop([f"sg:test:pool:{i}"], timeout=0.2) for i in range(8))), 10)
        assert replies == [None] * 8
        assert time.monotonic() - started >= 0.8 - 0.05, "8 commands on 2 connections take 4 rounds of 0.2 s"
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_full_pool_fails_once_its_wait_passes(redis_url: str) -> None:
    client = redisconn.connect(redis_url, timeout_s=5.0, max_connections=1, pool_wait_s=0.3)
    try:
        holder = asyncio.ensure_future(client.blpop(["sg:test:pool:held"], timeout=2))
        await _until("the holder to take the only connection", lambda: len(_pool(client)._in_use_connections) == 1)
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="no Redis connection came free within 0.3 s"):
            await asyncio.wait_for(client.ping(), 5)
        assert 0.25 <= time.monotonic() - started < 1.5
        assert await asyncio.wait_for(holder, 5) is None
        assert await client.ping()  # the connection came back
    finally:
        await client.aclose()


async def test_a_cancelled_waiter_passes_its_wake_up_on(redis_url: str) -> None:
    client = redisconn.connect(redis_url, timeout_s=5.0, max_connections=1)
    try:
        holder = asyncio.ensure_future(client.blpop(["sg:test:pool:h2"], timeout=0.3))
        await _until("the holder to take the only connection", lambda: len(_pool(client)._in_use_connections) == 1)
        first = asyncio.ensure_future(client.ping())
        second = asyncio.ensure_future(client.ping())
        await _until("both to wait for it", lambda: len(_pool(client)._waiters) == 2)
        first.cancel()
        assert await asyncio.wait_for(second, 3) is True
        assert await asyncio.wait_for(holder, 3) is None
    finally:
        await client.aclose()
