"""Deployment discovery: fetch an SDK endpoint's manifest (`GET {uri}/discover`).

Mirrors Restate 1.7's discovery client (`crates/service-protocol-v4/src/discovery.rs`): the
`accept` header lists manifest versions v1..v4, the chosen version is read back from the
response `content-type`, and connection errors and 408/429/500/502/503/504 are retried five
times in all with exponential backoff (100 ms, x2) inside one overall deadline.

Transport, as Restate chooses it: a plain `http://` endpoint is asked over HTTP/2 with prior
knowledge (h2c, `shardgate.http2`) unless the operator asked for HTTP/1.1 (`use_http_11`);
`https://` goes over HTTP/1.1 (aiohttp). SDKs describe themselves by the transport they were
asked over (the Python SDK says `BIDI_STREAM` over HTTP/2, `REQUEST_RESPONSE` over HTTP/1.1),
which is why discovery uses the transport the invocations will use. Unlike Restate, an endpoint
that answers the h2c preface in HTTP/1.x is asked again over HTTP/1.1 and then reached that
way (`Discovered.http_11`), so a deployment registered without the flag keeps working; and one
that answers over h2c is asked once more over HTTP/1.1 (`Discovered.also_http_11`): the
workers' request-response attempts then take the cheaper HTTP/1.1 client (decision 39).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

import aiohttp

from shardgate import http2
from shardgate.identity import RequestSigner

logger = logging.getLogger(__name__)

MANIFEST_CONTENT_TYPES = {f"application/vnd.restate.endpointmanifest.v{n}+json": n for n in (1, 2, 3, 4)}
ACCEPT = ", ".join(MANIFEST_CONTENT_TYPES)
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
INITIAL_BACKOFF_S = 0.1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest above this is refused
MAX_ERROR_BODY_BYTES = 4096  # how much of an error body is quoted back to the operator


class DiscoveryError(Exception):
    """Discovery failed: the endpoint was unreachable or answered something unusable.

    `status` is the HTTP status the endpoint answered (None when there was no response);
    `restate_code` is Restate's error code for the failure (`META0003` unreachable / bad status,
    `META0013` bad content type), None for an undecodable body.
    """

    def __init__(self, message: str, status: int | None = None, restate_code: str | None = "META0003") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.restate_code = restate_code

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed (no response at all, or a transient status)."""
        return self.restate_code == "META0003" and (self.status is None or self.status in RETRYABLE_STATUSES)


@dataclass(frozen=True, slots=True)
class Discovered:
    """A successful discovery: the manifest, its version, the SDK's `x-restate-server`, and
    whether it was reached over HTTP/1.1 (else h2c)."""

    manifest: dict[str, Any]
    manifest_version: int
    sdk_version: str | None
    http_11: bool = True
    also_http_11: bool = False  # reached over h2c, and it answers discovery over HTTP/1.1 as well


def discover_url(uri: str) -> str:
    """The discovery URL of a deployment base URI (which may carry a path prefix)."""
    return uri.rstrip("/") + "/discover"


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of the body (one more than allowed reveals an oversized body)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def _headers_repr(headers: dict[str, str]) -> str:
    return json.dumps(headers)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes  # at most the limit + 1 bytes


async def _get_http1(session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float) -> _Answer:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as resp:
            limit = MAX_MANIFEST_BYTES if resp.status == 200 else MAX_ERROR_BODY_BYTES
            body = await _read_limited(resp, limit)
            return _Answer(resp.status, resp.reason or "", {k.lower(): v for k, v in resp.headers.items()}, body)
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DiscoveryError(f"error when calling '{url}': {reason}") from exc


async def _get_h2(pool: http2.H2Pool, target: http2.Target, url: str, headers: dict[str, str],
                  timeout_s: float) -> _Answer:
    try:
        request = http2.encode_request("GET", target.authority, target.path, headers, b"")
        resp = await pool.request(target.host, target.port, request, timeout_s, timeout_s,
                                  max_body_bytes=MAX_MANIFEST_BYTES)
    except http2.NotHttp2:
        raise
    except http2.BodyTooLarge:
        raise DiscoveryError(f"the manifest exceeds {MAX_MANIFEST_BYTES} bytes", 200, None) from None
    except (TimeoutError, OSError, http2.Http2Error) as exc:
        reason = str(exc) or type(exc).__name__
        raise DiscoveryError(f"error when calling '{url}': {reason}") from exc
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = ""
    body = resp.body if resp.status == 200 else resp.body[:MAX_ERROR_BODY_BYTES]
    return _Answer(resp.status, reason, resp.headers, body)


def _decode(answer: _Answer, http_11: bool) -> Discovered:
    """The manifest in a discovery answer; raises DiscoveryError for anything unusable."""
    if answer.status != 200:
        body = answer.body.decode("utf-8", "replace")
        if answer.status == 404:
            raise DiscoveryError(
                "got status code '404'. Make sure the provided URI has the correct path where the "
                f"Restate SDK endpoint is mounted. Response headers: {_headers_repr(answer.headers)}. "
                f"Body: {body}",
                404,
            )
        raise DiscoveryError(
            f"got status code '{answer.status} {answer.reason}'. Response headers: "
            f"{_headers_repr(answer.headers)}. Body: {body}",
            answer.status,
        )
    version = _manifest_version(answer.headers.get("content-type"))
    raw = answer.body
    if len(raw) > MAX_MANIFEST_BYTES:
        raise DiscoveryError(f"the manifest exceeds {MAX_MANIFEST_BYTES} bytes", 200, None)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise DiscoveryError(
            f"received a bad response from the SDK that cannot be decoded: {exc}. "
            f"Discovery response: {raw[:MAX_ERROR_BODY_BYTES].decode('utf-8', 'replace')}",
            200,
            None,
        ) from exc
    if not isinstance(manifest, dict):
        raise DiscoveryError("received a bad response from the SDK that cannot be decoded: not a JSON object", 200, None)
    return Discovered(manifest, version, answer.headers.get("x-restate-server"), http_11)


PROBE_TIMEOUT_S = 2.0


async def _serves_http1(session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float) -> bool:
    """Whether the endpoint also answers discovery over HTTP/1.1 (one try, no retries)."""
    try:
        _decode(await _get_http1(session, url, headers, min(timeout_s, PROBE_TIMEOUT_S)), True)
    except DiscoveryError:
        return False
    return True


def _manifest_version(content_type: str | None) -> int:
    """The manifest version named by the response content type (parameters ignored)."""
    if content_type is None:
        raise DiscoveryError(
            "received a bad response from the SDK: No content type header was specified. "
            f"Expected one of '{ACCEPT}' content type.",
            200,
            "META0013",
        )
    version = MANIFEST_CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    if version is None:
        raise DiscoveryError(
            f"received a bad response from the SDK: Bad content type header: {json.dumps(content_type)}. "
            f"Expected one of '{json.dumps(ACCEPT)}'",
            200,
            "META0013",
        )
    return version


async def discover_endpoint(
    session: aiohttp.ClientSession, uri: str, additional_headers: dict[str, str], timeout_s: float,
    signer: RequestSigner | None = None, use_http_11: bool = True,
) -> Discovered:
    """Fetch and decode the manifest of the deployment at `uri`, retrying transient failures.

    Over h2c when `use_http_11` is false and `uri` is `http://`, else over HTTP/1.1; see the
    module docstring for the fallback. The whole call, retries included, ends within
    `timeout_s`. With a request-identity `signer` every attempt carries a fresh token for the
    audience `/discover`. Raises `DiscoveryError`.
    """
    url = discover_url(uri)
    target = None if use_http_11 else http2.parse_target(url)
    pool = http2.H2Pool() if target is not None else None
    try:
        return await _discover(session, pool, target, url, additional_headers, timeout_s, signer)
    finally:
        if pool is not None:
            pool.close()


async def _discover(session: aiohttp.ClientSession, pool: http2.H2Pool | None, target: http2.Target | None,
                    url: str, additional_headers: dict[str, str], timeout_s: float,
                    signer: RequestSigner | None) -> Discovered:
    deadline = time.monotonic() + timeout_s
    backoff_s = INITIAL_BACKOFF_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        remaining_s = max(deadline - time.monotonic(), 0.001)
        headers = {**additional_headers, **(signer.headers("/discover") if signer else {}), "accept": ACCEPT}
        try:
            if pool is not None and target is not None:
                try:
                    found = _decode(await _get_h2(pool, target, url, headers, remaining_s), False)
                    remaining_s = max(deadline - time.monotonic(), 0.001)
                    return replace(found, also_http_11=await _serves_http1(session, url, headers, remaining_s))
                except http2.NotHttp2:
                    logger.info("%s answered in HTTP/1.x: discovering (and invoking) it over HTTP/1.1", url)
                    pool = target = None
                    remaining_s = max(deadline - time.monotonic(), 0.001)
            return _decode(await _get_http1(session, url, headers, remaining_s), True)
        except DiscoveryError as exc:
            if not exc.retryable or attempt == MAX_ATTEMPTS or remaining_s - backoff_s <= 0:
                raise
            logger.warning(
                "discovery of %s failed (attempt %d/%d), retrying in %.1fs: %s",
                url, attempt, MAX_ATTEMPTS, backoff_s, exc.message,
            )
        await asyncio.sleep(backoff_s)
        backoff_s *= 2
    raise AssertionError("unreachable")  # the loop returns or raises

