"""The real ingress and admin aiohttp apps served in-process for the HTTP-level fuzz tests.

Hypothesis drives plain (synchronous) test functions, so each app runs on its own event loop
(`asyncio.Runner`) that lives as long as the fixture; requests are sent verbatim (no URL
re-encoding) and raw bytes can be written to the socket for what an HTTP client will not send.
The ingress uses `tests.fakes.InMemoryDispatcher` with its echo responder and a clock far ahead
(every invocation, delayed sends included, completes at once, so no request can block on a
handler); the admin API a real Redis and the real
restate-sdk deployment for discovery.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from yarl import URL

from ingress.admin import AdminSettings, build_admin_app
from ingress.api import IngressApiSettings, build_ingress_app
from shardgate.registry import RegistryCache, RegistryStore
from tests.e2e.test_ingress_api import PARTITIONS, SCHEMA
from tests.fakes import InMemoryDispatcher

REQUEST_TIMEOUT_S = 10.0
ADMIN_SETTINGS = AdminSettings(advertised_ingress_url="http://127.0.0.1:18888", discovery_timeout_s=3.0)
# The fake dispatcher's clock runs in the year 2200, so every delayed send is due at once and no
# attach can wait for a scheduled invocation.
FAR_FUTURE_MS = 7_258_118_400_000
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """One response: status, headers (lower-cased names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises AssertionError (with the body) when it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"{self.status} body is not JSON: {self.body[:200]!r}") from None


class Served:
    """An aiohttp app on its own loop; `request` and `raw` block until answered (with a timeout)."""

    def __init__(self, runner: asyncio.Runner, client: TestClient, closers: list[Callable[[], Awaitable[Any]]]):
        self.runner = runner
        self.client = client
        self._closers = closers

    def run(self, coro: Awaitable[T]) -> T:
        return self.runner.run(asyncio.wait_for(coro, REQUEST_TIMEOUT_S))  # type: ignore[arg-type]

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        """Send `target` (path and query) exactly as given."""
        return self.run(self._request(method, target, headers, body))

    async def _request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        url = URL(f"http://{self.client.host}:{self.client.port}{target}", encoded=True)
        skip = () if any(k.lower() == "content-type" for k in headers) else ("Content-Type",)
        async with self.client.session.request(method, url, data=body, headers=headers,
                                               skip_auto_headers=skip, allow_redirects=False) as resp:
            data = await resp.read()
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)

    def raw(self, request: bytes) -> Answer:
        """Write `request` bytes to a fresh connection and parse the (first) response."""
        return self.run(self._raw(request))

    async def _raw(self, request: bytes) -> Answer:
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            return Answer(status, headers, body)
        finally:
            writer.close()

    def close(self) -> None:
        for closer in self._closers:
            self.runner.run(closer())
        self.runner.close()


def serve_ingress() -> Served:
    """The ingress API over the in-memory dispatcher (echo responder) and the e2e tests' schema."""
    runner = asyncio.Runner()
    dispatcher = InMemoryDispatcher(now_ms=lambda: FAR_FUTURE_MS)

    async def start() -> TestClient:
        app = build_ingress_app(lambda: SCHEMA, dispatcher, IngressApiSettings(partitions=PARTITIONS))
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    client = runner.run(start())
    return Served(runner, client, [dispatcher.close, client.close])


def serve_admin(redis_url: str) -> Served:
    """The admin API over a real Redis (flushed first); discovery goes to real deployments."""
    runner = asyncio.Runner()

    async def start() -> tuple[TestClient, Redis, aiohttp.ClientSession]:
        redis = Redis.from_url(redis_url, socket_timeout=5)
        await redis.flushall()
        http = aiohttp.ClientSession()
        client = TestClient(TestServer(_admin_app(redis, http)))
        await client.start_server()
        return client, redis, http

    client, redis, http = runner.run(start())
    return Served(runner, client, [client.close, http.close, redis.aclose])


def _admin_app(redis: Redis, http: aiohttp.ClientSession) -> web.Application:
    store = RegistryStore(redis)
    return build_admin_app(store, RegistryCache(store), http, ADMIN_SETTINGS)


@contextmanager
def serve_admin_in_thread(redis_url: str) -> Iterator[str]:
    """The admin API on a thread with its own loop, for blocking clients; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def main() -> None:
        redis = Redis.from_url(redis_url, socket_timeout=5)
        await redis.flushall()
        http = aiohttp.ClientSession()
        runner = web.AppRunner(_admin_app(redis, http))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
            await http.close()
            await redis.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(REQUEST_TIMEOUT_S), "the admin API did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(REQUEST_TIMEOUT_S)
        loop.close()
