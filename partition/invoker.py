"""Runs one attempt of an invocation against its SDK deployment (request-response mode).

Start + Input + the stored journal go out in one POST; the SDK's frames come back in
the response and are returned for `effects.plan_attempt`. Transport failures, HTTP errors and
framing violations raise `DeploymentError` (the attempt is retried with back-off).

Plain `http://` deployments are reached over HTTP/1.1 through the lean keep-alive client of
`http1.py` when registered with `use_http_11`, when they answered discovery in HTTP/1.x, or when
they were registered for h2c but answer HTTP/1.1 as well (`http_11_attempts`: the attempts are
request-response either way, and this client costs half the CPU); else over h2c through
`shardgate.http2` (one stream per attempt, the body sent with END_STREAM). A deployment of the
third kind whose HTTP/1.1 answers stop being HTTP/1.1 (replaced by an h2c-only server at the same
address) is reached over h2c from the next attempt on. `https://` deployments go through aiohttp.

A bidirectional attempt (`open_stream`, driven by `partition/bidi.py`) goes over h2c to a
deployment that said BIDI_STREAM: the same Start, Input and journal, but the request stays open
and the SDK's frames are read as they come (`AttemptStream`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from partition.errors import DeploymentError
from partition.http1 import Http1Error, Http1Pool, encode_request
from partition.invocation import random_seed as random_seed  # noqa: PLC0414  re-exported
from partition.metrics import DEPLOYMENT_ATTEMPTS, DEPLOYMENT_DURATION, DEPLOYMENT_ERRORS
from shardgate import http2, protocol
from shardgate.identity import RequestSigner
from shardgate.protocol import Frame
from shardgate.schema import Deployment
from shardgate.sharding import InvocationId

MIN_PROTOCOL_VERSION = 5
DEFAULT_MAX_PROTOCOL_VERSION = 6  # what a stock Restate 1.7 negotiates; 7 is opt-in
MAX_CACHED_URLS = 4096
DRAIN_S = 5.0
"""How long a bidirectional attempt's stream may take to end its response after the terminal
frame (Restate's drain); then it is reset."""
_HTTP1_ATTEMPTS, _H2C_ATTEMPTS, _HTTPS_ATTEMPTS, _BIDI_ATTEMPTS = (
    DEPLOYMENT_ATTEMPTS.labels(t) for t in ("http1", "h2c", "https", "h2c_bidi"))


@dataclass(frozen=True, slots=True)
class PostOptions:
    """How one attempt's POST is sent: its timeouts, and over HTTP/1.1 (else h2c for http://)."""

    total_timeout_s: float
    connect_timeout_s: float
    http_11: bool


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
    random_seed: int | None = None  # the record's (a restart from a prefix keeps the original's); None: from the id
    protocol_version: int | None = None  # the pinned one; None: negotiated (an attempt that pins)


def negotiate(deployment: Deployment, max_version: int, pinned: int | None = None) -> int:
    """The protocol version for an attempt: the `pinned` one (Restate keeps the version an
    invocation was pinned with) while both sides still speak it, else the highest both speak."""
    version = min(deployment.max_protocol_version, max_version)
    if pinned is not None and max(MIN_PROTOCOL_VERSION, deployment.min_protocol_version) <= pinned <= version:
        return pinned
    if version < max(MIN_PROTOCOL_VERSION, deployment.min_protocol_version):
        raise DeploymentError(
            f"deployment {deployment.id} speaks protocol v{deployment.min_protocol_version}-"
            f"v{deployment.max_protocol_version}, this worker v{MIN_PROTOCOL_VERSION}-v{max_version}"
        )
    return version


def decode_response(data: bytes) -> list[Frame]:
    """The frames of a deployment's response body. A truncated or corrupt frame stream (a frame
    cut short, a header alone, a length past the end) raises `DeploymentError` (retryable), the
    only error this raises; message payloads are decoded later, by the planner."""
    try:
        return protocol.decode_frames(data)
    except protocol.ProtocolError as e:
        DEPLOYMENT_ERRORS.labels("protocol").inc()
        raise DeploymentError(f"protocol violation: {e}") from e


def _check_answer(url: str, status: int, content_type: str, ct: str) -> None:
    """Raises DeploymentError unless the deployment answered 200 with the protocol's content type `ct`."""
    if status != 200:
        DEPLOYMENT_ERRORS.labels("http_status").inc()
        raise DeploymentError(f"deployment answered HTTP {status} for {url}")
    got = content_type.split(";")[0].strip().lower()
    if got != ct:
        DEPLOYMENT_ERRORS.labels("protocol").inc()
        raise DeploymentError(f"deployment answered content-type {got!r}, expected {ct!r}")


class Invoker:
    """Sends attempts to deployments over shared HTTP/1.1 and h2c connection pools."""

    def __init__(self, connect_timeout_s: float, max_protocol_version: int = DEFAULT_MAX_PROTOCOL_VERSION,
                 signer: RequestSigner | None = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self.max_protocol_version = max_protocol_version
        self._session: aiohttp.ClientSession | None = None
        self._signer = signer
        self._http1 = Http1Pool()
        self._http2 = http2.H2Pool()
        self._targets: dict[str, http2.Target | None] = {}
        self._h2c_only: set[str] = set()  # `http_11_attempts` deployments that stopped speaking HTTP/1.1

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        self._http1.close()
        self._http2.close()
        if self._session is not None:
            await self._session.close()

    async def attempt(self, deployment: Deployment, inp: AttemptInput) -> list[Frame]:
        """Run one attempt; returns the SDK's frames. Raises DeploymentError (retryable)."""
        path, ct, headers, body = self._request(deployment, inp)
        preferred = deployment.http_11_attempts and deployment.id not in self._h2c_only
        opts = PostOptions(inp.attempt_timeout_s, self._connect_timeout_s, deployment.use_http_11 or preferred)
        try:
            data = await self._post(deployment.uri.rstrip("/") + path, body, headers, ct, opts)
        except DeploymentError as e:
            if preferred and isinstance(e.__cause__, Http1Error):
                self._h2c_only.add(deployment.id)  # the retry goes over h2c, as registered
            raise
        return decode_response(data)

    def streams_to(self, deployment: Deployment) -> bool:
        """Whether attempts to `deployment` can be bidirectional: registered for h2c (not
        `use_http_11`), a plain `http://` URL, and it said BIDI_STREAM."""
        return (not deployment.use_http_11 and deployment.protocol_mode == "BIDI_STREAM"
                and self._http_target(deployment.uri) is not None)

    async def open_stream(self, deployment: Deployment, inp: AttemptInput) -> AttemptStream:
        """Open a bidirectional attempt's h2c stream; its `start` sends Start, Input and the
        journal, and the request stays open. Raises DeploymentError (retryable)."""
        path, ct, headers, body = self._request(deployment, inp)
        url = deployment.uri.rstrip("/") + path
        target = self._http_target(url)
        if target is None:
            raise DeploymentError(f"a bidirectional attempt needs an http:// deployment, not {deployment.uri}")
        _BIDI_ATTEMPTS.inc()
        try:
            request = http2.encode_request("POST", target.authority, target.path, headers, b"")
            duplex = await self._http2.open(target.host, target.port, request, self._connect_timeout_s)
        except (TimeoutError, OSError, http2.Http2Error) as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"cannot reach deployment at {url}: {type(e).__name__}: {e}") from e
        return AttemptStream(duplex, url, ct, body)

    def _request(self, deployment: Deployment, inp: AttemptInput) -> tuple[str, str, dict[str, str], bytes]:
        """An attempt's path, content type, headers and body (Start, Input, the journal)."""
        version = negotiate(deployment, self.max_protocol_version, inp.protocol_version)
        ct = protocol.content_type(version)
        inv = InvocationId.parse(inp.invocation_id)
        start = protocol.start_message(
            inv.to_bytes(), inp.invocation_id, 1 + len(inp.journal),
            list(inp.state.items()) if inp.keyed else None,
            inp.partial_state, inp.key or "", inp.retry_count, inp.duration_since_last_entry_ms,
            random_seed(inp.invocation_id) if inp.random_seed is None else inp.random_seed, version,
        )
        path = f"/invoke/{inp.service}/{inp.handler}"
        headers = {"content-type": ct, "accept": ct, "x-restate-invocation-id": inp.invocation_id}
        headers.update(deployment.additional_headers)
        if self._signer is not None:
            headers.update(self._signer.headers(path))
        return path, ct, headers, b"".join((start, inp.input_frame, *inp.journal))

    async def _post(self, url: str, body: bytes, headers: dict[str, str], ct: str, opts: PostOptions) -> bytes:
        """POST `body` to `url`; the response body. Raises DeploymentError (transport, status,
        content type)."""
        started = time.perf_counter()
        try:
            target = self._http_target(url)
            if target is None:
                _HTTPS_ATTEMPTS.inc()
                status, got, data = await self._post_aiohttp(url, body, headers, opts)
            elif opts.http_11:
                _HTTP1_ATTEMPTS.inc()
                status, got, data = await self._post_http1(target, body, headers, opts)
            else:
                _H2C_ATTEMPTS.inc()
                status, got, data = await self._post_h2(target, body, headers, opts)
        except (TimeoutError, aiohttp.ClientError, OSError, Http1Error, http2.Http2Error) as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"cannot reach deployment at {url}: {type(e).__name__}: {e}") from e
        finally:
            DEPLOYMENT_DURATION.observe(time.perf_counter() - started)
        _check_answer(url, status, got, ct)
        return data

    async def _post_http1(self, target: http2.Target, body: bytes, headers: dict[str, str],
                          opts: PostOptions) -> tuple[int, str, bytes]:
        head = encode_request(target.authority, target.path, headers, body)
        resp = await self._http1.post(target.host, target.port, head, body, opts.total_timeout_s,
                                      opts.connect_timeout_s)
        return resp.status, resp.headers.get("content-type", ""), resp.body

    async def _post_h2(self, target: http2.Target, body: bytes, headers: dict[str, str],
                       opts: PostOptions) -> tuple[int, str, bytes]:
        request = http2.encode_request("POST", target.authority, target.path, headers, body)
        resp = await self._http2.request(target.host, target.port, request, opts.total_timeout_s,
                                         opts.connect_timeout_s)
        return resp.status, resp.headers.get("content-type", ""), resp.body

    async def _post_aiohttp(self, url: str, body: bytes, headers: dict[str, str],
                            opts: PostOptions) -> tuple[int, str, bytes]:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=opts.total_timeout_s, sock_connect=opts.connect_timeout_s)
        async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            return resp.status, resp.headers.get("content-type", ""), await resp.read()

    def _http_target(self, url: str) -> http2.Target | None:
        """Where the lean clients send a POST to `url`; None for what they do not handle (https)."""
        try:
            return self._targets[url]
        except KeyError:
            pass
        if len(self._targets) >= MAX_CACHED_URLS:
            self._targets.clear()
        target = self._targets[url] = http2.parse_target(url)
        return target


class AttemptStream:
    """The deployment's side of a bidirectional attempt: `head` checks the response's status and
    content type, `frames` gives the SDK's frames as they arrive, `send` writes frames to it, `end`
    closes the request (the SDK then suspends once it waits), `reset` gives the stream up. Every
    failure raises DeploymentError (retryable)."""

    __slots__ = ("_body", "_ct", "_decoder", "_duplex", "_url", "version")

    def __init__(self, duplex: http2.Duplex, url: str, ct: str, body: bytes) -> None:
        self._duplex = duplex
        self._url = url
        self._ct = ct
        self._body = body
        self._decoder = protocol.FrameDecoder(None)
        self.version = protocol.parse_content_type(ct) or 0  # the negotiated protocol version

    async def start(self) -> None:
        """Send Start, Input and the journal (the request stays open)."""
        body, self._body = self._body, b""
        await self.send(body)

    async def head(self) -> None:
        try:
            resp = await self._duplex.response()
        except http2.Http2Error as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"cannot reach deployment at {self._url}: {e}") from e
        _check_answer(self._url, resp.status, resp.headers.get("content-type", ""), self._ct)

    async def frames(self) -> list[Frame] | None:
        """The frames completed by the next piece of the response (maybe none, as after an
        `interrupt`); None once it ended."""
        try:
            data = await self._duplex.read()
            if data is None:
                return []
            if not data:
                self._decoder.close()
                return None
            return self._decoder.feed(data)
        except http2.Http2Error as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"the stream to {self._url} failed: {e}") from e
        except protocol.ProtocolError as e:
            DEPLOYMENT_ERRORS.labels("protocol").inc()
            raise DeploymentError(f"protocol violation: {e}") from e

    async def send(self, data: bytes) -> None:
        try:
            await self._duplex.send(data)
        except http2.Http2Error as e:
            DEPLOYMENT_ERRORS.labels("transport").inc()
            raise DeploymentError(f"the stream to {self._url} failed: {e}") from e

    def end(self) -> None:
        self._duplex.end()

    def interrupt(self) -> None:
        """Wake the `frames` call that waits (it returns no frames)."""
        self._duplex.interrupt()

    def discard(self) -> None:
        """Drop the rest of the response (the attempt has what it needs); see `Duplex.discard`."""
        self._duplex.discard(DRAIN_S)

    def reset(self) -> None:
        self._duplex.reset()
