"""Runs one attempt of an invocation against its SDK deployment (request-response mode).

Start + the journal go out in one HTTP/1.1 POST; the SDK's frames come back in the
response. The attempt's outcome is returned as an `AttemptResult` (output + state writes,
to be stored atomically with the completion), or raised as a `DeploymentError` (retryable).
Protocol features of the durable-execution work (sleep, run, calls, promises, awakeables)
are reported as `UnsupportedFeature`, a retryable, logged error, so such handlers never hang.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import xxhash

from partition import protocol
from partition.errors import DeploymentError, UnsupportedFeature
from partition.metrics import DEPLOYMENT_DURATION, DEPLOYMENT_ERRORS
from partition.protocol import MessageType as T
from partition.sharding import InvocationId
from shardgate.schema import Deployment

MAX_PROTOCOL_VERSION = 6  # what a stock Restate 1.7 negotiates; v7 is opt-in later
MIN_PROTOCOL_VERSION = 5


@dataclass(slots=True)
class AttemptResult:
    """A finished attempt: the invocation's output and the state writes it made."""

    rc: int  # 0 = success, else the terminal failure code
    rm: str
    rv: bytes
    state_ops: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AttemptInput:
    invocation_id: str
    service: str
    handler: str
    key: str | None
    keyed: bool
    input_frame: bytes  # the framed InputCommand (journal entry 0)
    state: dict[bytes, bytes]
    partial_state: bool
    retry_count: int
    duration_since_last_entry_ms: int


class RetryableError(DeploymentError):
    """The SDK answered an Error frame; carries its code and requested retry delay."""

    def __init__(self, message: str, code: int = 500, next_retry_delay_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.next_retry_delay_ms = next_retry_delay_ms


_UNSUPPORTED = {
    T.SUSPENSION: "suspension",
    T.GET_LAZY_STATE_COMMAND: "lazy state (GetLazyState)",
    T.GET_LAZY_STATE_KEYS_COMMAND: "lazy state keys",
    T.GET_PROMISE_COMMAND: "durable promises",
    T.PEEK_PROMISE_COMMAND: "durable promises",
    T.COMPLETE_PROMISE_COMMAND: "durable promises",
    T.SLEEP_COMMAND: "ctx.sleep",
    T.CALL_COMMAND: "service calls",
    T.ONE_WAY_CALL_COMMAND: "one-way calls",
    T.SEND_SIGNAL_COMMAND: "signals",
    T.RUN_COMMAND: "ctx.run",
    T.PROPOSE_RUN_COMPLETION: "ctx.run",
    T.ATTACH_INVOCATION_COMMAND: "attach",
    T.GET_INVOCATION_OUTPUT_COMMAND: "get invocation output",
    T.COMPLETE_AWAKEABLE_COMMAND: "awakeables",
}


def random_seed(invocation_id: str) -> int:
    """Stable per invocation without storage: the same on every attempt."""
    return xxhash.xxh3_64_intdigest(invocation_id.encode())


class Invoker:
    """Sends attempts to deployments over a shared HTTP/1.1 connection pool."""

    def __init__(self, connect_timeout_s: float, abort_timeout_s: float, signer: Any = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=abort_timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._signer = signer

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def attempt(self, deployment: Deployment, inp: AttemptInput) -> AttemptResult:
        """Run one attempt. Raises DeploymentError (retryable) on any failure."""
        version = min(deployment.max_protocol_version, MAX_PROTOCOL_VERSION)
        if version < MIN_PROTOCOL_VERSION:
            raise DeploymentError(f"deployment {deployment.id} supports no protocol version in [5, 6]")
        ct = protocol.content_type(version)
        inv = InvocationId.parse(inp.invocation_id)
        start = protocol.start_message(
            inv.to_bytes(), inp.invocation_id, 1,
            list(inp.state.items()) if inp.keyed else None,
            inp.partial_state, inp.key or "", inp.retry_count, inp.duration_since_last_entry_ms,
            random_seed(inp.invocation_id), version,
        )
        path = f"/invoke/{inp.service}/{inp.handler}"
        headers = {"content-type": ct, "accept": ct, "x-restate-invocation-id": inp.invocation_id}
        headers.update(deployment.additional_headers)
        if self._signer is not None:
            headers.update(self._signer.headers(path))
        body = await self._post(deployment.uri.rstrip("/") + path, start + inp.input_frame, headers, ct)
        return self._interpret(body)

    async def _post(self, url: str, body: bytes, headers: dict[str, str], ct: str) -> bytes:
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    DEPLOYMENT_ERRORS.labels("http_status").inc()
                    raise DeploymentError(f"deployment answered HTTP {resp.status} for {url}")
                if protocol.parse_content_type(resp.headers.get("content-type")) is None or (
                    resp.headers.get("content-type", "").split(";")[0].strip().lower() != ct
                ):
                    DEPLOYMENT_ERRORS.labels("protocol").inc()
                    raise DeploymentError(f"unexpected content-type {resp.headers.get('content-type')!r}")
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"cannot reach deployment at {url}: {type(e).__name__}: {e}") from e
        finally:
            DEPLOYMENT_DURATION.observe(time.perf_counter() - started)

    def _interpret(self, body: bytes) -> AttemptResult:
        try:
            frames = protocol.decode_frames(body)
        except protocol.ProtocolError as e:
            DEPLOYMENT_ERRORS.labels("protocol").inc()
            raise DeploymentError(f"protocol violation: {e}") from e
        result: AttemptResult | None = None
        ops: list[Any] = []
        for frame in frames:
            t = frame.type
            if t == T.OUTPUT_COMMAND:
                msg = protocol.parse_message(frame)
                if msg.HasField("failure"):
                    result = AttemptResult(msg.failure.code or 500, msg.failure.message, b"")
                else:
                    result = AttemptResult(0, "", msg.value.content)
            elif t == T.SET_STATE_COMMAND:
                msg = protocol.parse_message(frame)
                ops += ("S", msg.key, msg.value.content)
            elif t == T.CLEAR_STATE_COMMAND:
                ops += ("C", protocol.parse_message(frame).key)
            elif t == T.CLEAR_ALL_STATE_COMMAND:
                ops.append("A")
            elif t == T.END:
                if result is None:
                    raise DeploymentError("protocol violation: End without an Output")
                result.state_ops = ops
                return result
            elif t == T.ERROR:
                msg = protocol.parse_message(frame)
                DEPLOYMENT_ERRORS.labels("sdk_error").inc()
                delay = msg.next_retry_delay if msg.HasField("next_retry_delay") else None
                raise RetryableError(f"[{msg.code}] {msg.message}", msg.code, delay)
            elif t in _UNSUPPORTED:
                DEPLOYMENT_ERRORS.labels("unsupported").inc()
                raise UnsupportedFeature(
                    f"the handler uses {_UNSUPPORTED[t]} ({T(t).name}), which this shardgate version "
                    "does not implement yet; the invocation is retried with back-off"
                )
        DEPLOYMENT_ERRORS.labels("protocol").inc()
        raise DeploymentError("protocol violation: the response ended without End, Suspension or Error")
