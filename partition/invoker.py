"""Runs one attempt of an invocation against its SDK deployment (request-response mode).

Start + Input + the stored journal go out in one HTTP/1.1 POST; the SDK's frames come back in
the response and are returned for `effects.plan_attempt`. Transport failures, HTTP errors and
framing violations raise `DeploymentError` (the attempt is retried with back-off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import xxhash

from partition import protocol
from partition.errors import DeploymentError
from partition.metrics import DEPLOYMENT_DURATION, DEPLOYMENT_ERRORS
from partition.protocol import Frame
from partition.sharding import InvocationId
from shardgate.schema import Deployment

MIN_PROTOCOL_VERSION = 5
DEFAULT_MAX_PROTOCOL_VERSION = 6  # what a stock Restate 1.7 negotiates; 7 is opt-in


@dataclass(frozen=True, slots=True)
class AttemptInput:
    invocation_id: str
    service: str
    handler: str
    key: str | None
    keyed: bool
    input_frame: bytes  # the framed InputCommand (journal entry 0)
    journal: list[bytes]  # entries after the Input, framed, in order
    state: dict[bytes, bytes]
    partial_state: bool
    retry_count: int
    duration_since_last_entry_ms: int
    attempt_timeout_s: float  # inactivity + abort timeout: then the attempt is aborted and retried


def random_seed(invocation_id: str) -> int:
    """Stable per invocation without storage: the same on every attempt."""
    return xxhash.xxh3_64_intdigest(invocation_id.encode())


def negotiate(deployment: Deployment, max_version: int) -> int:
    """The protocol version for a new attempt: the highest both sides speak."""
    version = min(deployment.max_protocol_version, max_version)
    if version < max(MIN_PROTOCOL_VERSION, deployment.min_protocol_version):
        raise DeploymentError(
            f"deployment {deployment.id} speaks protocol v{deployment.min_protocol_version}-"
            f"v{deployment.max_protocol_version}, this worker v{MIN_PROTOCOL_VERSION}-v{max_version}"
        )
    return version


class Invoker:
    """Sends attempts to deployments over a shared HTTP/1.1 connection pool."""

    def __init__(self, connect_timeout_s: float, max_protocol_version: int = DEFAULT_MAX_PROTOCOL_VERSION,
                 signer: Any = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self.max_protocol_version = max_protocol_version
        self._session: aiohttp.ClientSession | None = None
        self._signer = signer

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def attempt(self, deployment: Deployment, inp: AttemptInput) -> list[Frame]:
        """Run one attempt; returns the SDK's frames. Raises DeploymentError (retryable)."""
        version = negotiate(deployment, self.max_protocol_version)
        ct = protocol.content_type(version)
        inv = InvocationId.parse(inp.invocation_id)
        start = protocol.start_message(
            inv.to_bytes(), inp.invocation_id, 1 + len(inp.journal),
            list(inp.state.items()) if inp.keyed else None,
            inp.partial_state, inp.key or "", inp.retry_count, inp.duration_since_last_entry_ms,
            random_seed(inp.invocation_id), version,
        )
        path = f"/invoke/{inp.service}/{inp.handler}"
        headers = {"content-type": ct, "accept": ct, "x-restate-invocation-id": inp.invocation_id}
        headers.update(deployment.additional_headers)
        if self._signer is not None:
            headers.update(self._signer.headers(path))
        body = b"".join((start, inp.input_frame, *inp.journal))
        timeout = aiohttp.ClientTimeout(total=inp.attempt_timeout_s, sock_connect=self._connect_timeout_s)
        data = await self._post(deployment.uri.rstrip("/") + path, body, headers, ct, timeout)
        try:
            return protocol.decode_frames(data)
        except protocol.ProtocolError as e:
            DEPLOYMENT_ERRORS.labels("protocol").inc()
            raise DeploymentError(f"protocol violation: {e}") from e

    async def _post(self, url: str, body: bytes, headers: dict[str, str], ct: str,
                    timeout: aiohttp.ClientTimeout) -> bytes:
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                data = await resp.read()
                if resp.status != 200:
                    DEPLOYMENT_ERRORS.labels("http_status").inc()
                    raise DeploymentError(f"deployment answered HTTP {resp.status} for {url}")
                got = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if got != ct:
                    DEPLOYMENT_ERRORS.labels("protocol").inc()
                    raise DeploymentError(f"deployment answered content-type {got!r}, expected {ct!r}")
                return data
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"cannot reach deployment at {url}: {type(e).__name__}: {e}") from e
        finally:
            DEPLOYMENT_DURATION.observe(time.perf_counter() - started)
