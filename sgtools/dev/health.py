"""Health checks: HTTP and Redis probes, and waiting for a child (or Redis) to pass them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from redis.exceptions import RedisError

from sgtools.dev.errors import DevError
from sgtools.dev.process import ChildProcess, exited_error
from shardgate import redisconn
from shardgate.envconfig import mask_url

logger = logging.getLogger(__name__)

HEALTH_POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0

Probe = Callable[[], Awaitable[bool]]


async def http_ok(session: aiohttp.ClientSession, urls: list[str]) -> bool:
    """True if every URL answers GET with 200."""
    for url in urls:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
    return True


async def redis_ping(url: str) -> bool:
    """True if the Redis at `url` answers PING."""
    client = redisconn.connect(url, timeout_s=PROBE_TIMEOUT_S, max_connections=2)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def wait_healthy(child: ChildProcess, probe: Probe, timeout_s: float) -> None:
    """Poll `probe` until it passes; fail fast if the child exits, or after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if not child.running:
            raise exited_error(child, "during start-up")
        if await probe():
            child.healthy = True
            logger.info("%s is healthy", child.name)
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise DevError(f"{child.name} (pid {child.pid}) not healthy within {timeout_s:.0f}s; "
                           f"see {child.log_path}")
        await asyncio.sleep(HEALTH_POLL_INTERVAL_S)


async def wait_external_redis(url: str, timeout_s: float) -> None:
    """Wait for an existing Redis (--redis-url) to answer PING."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await redis_ping(url):
        if asyncio.get_running_loop().time() >= deadline:
            raise DevError(f"Redis at {mask_url(url)} does not answer PING")
        await asyncio.sleep(HEALTH_POLL_INTERVAL_S)


async def gather_or_cancel(*aws: Awaitable[Any]) -> list[Any]:
    """Like `asyncio.gather`, but the first failure cancels (and awaits) the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
