"""Deployment discovery: fetch an SDK endpoint's manifest (`GET {uri}/discover`).

Mirrors Restate 1.7's discovery client (`crates/service-protocol-v4/src/discovery.rs`): the
`accept` header lists manifest versions v1..v4, the chosen version is read back from the
response `content-type`, and connection errors and 408/429/500/502/503/504 are retried five
times in all with exponential backoff (100 ms, x2) inside one overall deadline. Always HTTP/1.1
(aiohttp), so the Python SDK reports `REQUEST_RESPONSE`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

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
    """A successful discovery: the manifest, its version and the SDK's `x-restate-server`."""

    manifest: dict[str, Any]
    manifest_version: int
    sdk_version: str | None


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


def _headers_repr(headers: Any) -> str:
    return json.dumps({k.lower(): v for k, v in headers.items()})


async def _attempt(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float
) -> Discovered:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                body = (await _read_limited(resp, MAX_ERROR_BODY_BYTES)).decode("utf-8", "replace")
                if resp.status == 404:
                    raise DiscoveryError(
                        "got status code '404'. Make sure the provided URI has the correct path where the "
                        f"Restate SDK endpoint is mounted. Response headers: {_headers_repr(resp.headers)}. "
                        f"Body: {body}",
                        404,
                    )
                raise DiscoveryError(
                    f"got status code '{resp.status} {resp.reason or ''}'. Response headers: "
                    f"{_headers_repr(resp.headers)}. Body: {body}",
                    resp.status,
                )
            version = _manifest_version(resp.headers.get("content-type"))
            raw = await _read_limited(resp, MAX_MANIFEST_BYTES)
            if len(raw) > MAX_MANIFEST_BYTES:
                raise DiscoveryError(f"the manifest exceeds {MAX_MANIFEST_BYTES} bytes", 200, None)
            sdk_version = resp.headers.get("x-restate-server")
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DiscoveryError(f"error when calling '{url}': {reason}") from exc
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
    return Discovered(manifest, version, sdk_version)


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
    signer: RequestSigner | None = None,
) -> Discovered:
    """Fetch and decode the manifest of the deployment at `uri`, retrying transient failures.

    The whole call, retries included, ends within `timeout_s`. With a request-identity `signer`
    every attempt carries a fresh token for the audience `/discover`. Raises `DiscoveryError`.
    """
    url = discover_url(uri)
    deadline = time.monotonic() + timeout_s
    backoff_s = INITIAL_BACKOFF_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        remaining_s = deadline - time.monotonic()
        headers = {**additional_headers, **(signer.headers("/discover") if signer else {}), "accept": ACCEPT}
        try:
            return await _attempt(session, url, headers, max(remaining_s, 0.001))
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


async def discover(
    session: aiohttp.ClientSession, uri: str, additional_headers: dict[str, str], timeout_s: float
) -> tuple[dict[str, Any], int]:
    """(manifest JSON, manifest version) of the deployment at `uri`; see `discover_endpoint`.

    Raises `DiscoveryError`.
    """
    found = await discover_endpoint(session, uri, additional_headers, timeout_s)
    return found.manifest, found.manifest_version
