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


def _closed_write(redis_url: str, connection_class: type[Any]) -> BaseException | None:
    """Connect a `connection_class` to the test's Redis under uvloop (what the processes run on),
    close its socket under it and write: what the write raised, or None."""
    import uvloop

    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")

    async def main() -> BaseException | None:
        conn = connection_class(host=host, port=int(port), socket_timeout=5)
        await conn.connect()
        try:
            conn._writer.transport.abort()
            await asyncio.sleep(0)  # the loop closes the handle
            try:
                await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
            except BaseException as e:  # noqa: BLE001  what the test inspects
                return e
            return None
        finally:
            await conn.disconnect(nowait=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(main(), 10))


def test_a_write_on_a_closed_socket_is_a_connection_error_under_uvloop(redis_url: str) -> None:
    """Redis going away between a connect and its HELLO made uvloop raise RuntimeError, which the
    worker's outage retries did not take for an outage (a chaos run re-ran a stored `ctx.run`)."""
    from redis.asyncio.connection import Connection

    plain = _closed_write(redis_url, Connection)
    # redis-py before 8.2 passes uvloop's RuntimeError on; 8.2 turns it into a ConnectionError itself
    assert (isinstance(plain, RuntimeError) and "closed" in str(plain)) or isinstance(plain, RedisConnectionError), plain
    guarded = _closed_write(redis_url, redisconn.GuardedConnection)
    assert isinstance(guarded, RedisConnectionError), guarded


async def test_the_clients_build_guarded_connections(redis_url: str) -> None:
    client = redisconn.connect(redis_url, timeout_s=5.0, max_connections=2)
    try:
        assert _pool(client).connection_class is redisconn.GuardedConnection
        assert await client.ping()
    finally:
        await client.aclose()
    tls = redisconn.connect("rediss://127.0.0.1:1/0", timeout_s=1.0, max_connections=1)
    try:
        assert _pool(tls).connection_class is redisconn.GuardedSSLConnection
    finally:
        await tls.aclose()
    cluster = redisconn.connect("redis+cluster://127.0.0.1:1", timeout_s=1.0, max_connections=1)
    try:
        assert cluster.nodes_manager.connection_kwargs["connection_class"] is redisconn.GuardedConnection
        assert all(n.connection_class is redisconn.GuardedConnection
                   for n in cluster.nodes_manager.startup_nodes.values())
    finally:
        await cluster.aclose()
