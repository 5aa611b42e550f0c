"""Response builders shared by the handlers and the middleware (Restate `handler/responses.rs`).

Wire formats: error bodies are compact JSON `{"code","message","source"}` (a terminal invocation
failure with metadata: `{"code","message","metadata","source"}`, metadata keys sorted); the
`idempotency-expires` header is RFC 3339 with milliseconds and `+00:00`; a send's
`executionTime` is RFC 3339 UTC with nine fractional digits and `Z`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ingress.dispatcher import Outcome
from ingress.errors import IngressError

X_RESTATE_ID = "x-restate-id"
X_RESTATE_ERROR_SOURCE = "x-restate-error-source"
IDEMPOTENCY_EXPIRES = "idempotency-expires"
CONTENT_TYPE = "Content-Type"
APPLICATION_JSON = "application/json"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_dumps_ascii = json.JSONEncoder(separators=(",", ":")).encode
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonBodyError(ValueError):
    """A request body that is not a JSON document serde_json would accept; `str()` is the reason."""


@dataclass(frozen=True, slots=True)
class OutputRule:
    """How to label a handler's output (manifest `output.contentType` / `setContentTypeIfEmpty`)."""

    content_type: str | None = APPLICATION_JSON
    set_content_type_if_empty: bool = False

    def content_type_for(self, body: bytes) -> str | None:
        """The content-type header for `body`, or None to send none."""
        if body or self.set_content_type_if_empty:
            return self.content_type
        return None


DEFAULT_OUTPUT_RULE = OutputRule()


class UntypedResponse(web.Response):
    """A response sent without any `Content-Type`, also with a body.

    aiohttp labels every non-empty body `application/octet-stream` while preparing the headers;
    `drop_default_content_type` (an `on_response_prepare` hook of the ingress app) removes it again.
    Restate sends no content type for the output of a handler whose manifest declares none.
    """


async def drop_default_content_type(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: strip the content type aiohttp added to an `UntypedResponse`."""
    if isinstance(response, UntypedResponse):
        response.headers.popall(CONTENT_TYPE, None)


def _utc_fields(ms: int) -> str:
    t = time.gmtime(ms // 1000)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        f".{ms % 1000:03d}"
    )


def format_expires(ms: int) -> str:
    """`idempotency-expires` value, e.g. `2026-11-30T06:00:00.123+00:00`."""
    return _utc_fields(ms) + "+00:00"


def format_execution_time(ms: int) -> str:
    """Send `executionTime`, e.g. `2026-11-29T06:00:05.123000000Z`."""
    return _utc_fields(ms) + "000000Z"


def json_bytes(obj: object) -> bytes:
    """Compact UTF-8 JSON, as serde_json writes it. A string holding a lone surrogate (request
    bytes that are not UTF-8, a header name say, may put one into an error message) cannot be
    UTF-8, so then the whole document is written with `\\u` escapes instead."""
    text = _dumps(obj)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _dumps_ascii(obj).encode()


def load_json(body: bytes) -> Any:
    """Decode a JSON request body the way serde_json accepts one: strict UTF-8 (no UTF-16/32
    detection, no surrogates), no lone surrogate in a `\\u` escape, nesting no deeper than the
    decoder's recursion limit. Raises `JsonBodyError` with the reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonBodyError(str(e)) from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise JsonBodyError("recursion limit exceeded") from None
    except ValueError as e:
        raise JsonBodyError(str(e)) from None
    if "\\u" in text and _has_lone_surrogate(obj):
        raise JsonBodyError("lone surrogate in a string escape")
    return obj


def _has_lone_surrogate(obj: object) -> bool:
    """Whether any string (key or value) of a decoded JSON document holds a lone surrogate;
    iterative, so a deep document cannot exhaust the stack."""
    stack: list[object] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with `content-type: application/json`."""
    h = {CONTENT_TYPE: APPLICATION_JSON}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=json_bytes(obj), headers=h)


def error_response(
    status: int,
    message: str,
    source: str = "ingress",
    *,
    code: int | None = None,
    headers: dict[str, str] | None = None,
    metadata: Iterable[tuple[str, str]] = (),
) -> web.Response:
    """The JSON error shape `{"code","message","source"}` with `x-restate-error-source`; non-empty
    `metadata` becomes a `metadata` object (keys sorted) between `message` and `source`."""
    h = {X_RESTATE_ERROR_SOURCE: source}
    if headers:
        h.update(headers)
    body: dict[str, object] = {"code": status if code is None else code, "message": message}
    entries = dict(metadata)
    if entries:
        body["metadata"] = dict(sorted(entries.items()))
    body["source"] = source
    return json_response(body, status, h)


def ingress_error_response(err: IngressError) -> web.Response:
    """Render any `IngressError` (adds `x-restate-id` when the error carries one)."""
    headers: dict[str, str] = {}
    if err.invocation_id:
        headers[X_RESTATE_ID] = err.invocation_id
    retry_after_s = getattr(err, "retry_after_s", None)
    if retry_after_s is not None and err.status in (429, 503):
        headers["Retry-After"] = str(max(1, int(-(-retry_after_s // 1))))
    return error_response(err.status, err.message, err.source, headers=headers)


def invocation_failure_response(
    invocation_id: str,
    code: int,
    message: str,
    headers: dict[str, str] | None = None,
    metadata: Iterable[tuple[str, str]] = (),
) -> web.Response:
    """A terminal invocation failure: status = code when it is a valid HTTP status, else 500;
    the TerminalError's `metadata` (if any) goes into the body."""
    h = {X_RESTATE_ID: invocation_id}
    if headers:
        h.update(headers)
    status = code if 100 <= code <= 999 else 500
    return error_response(status, message, "invocation", code=code, headers=h, metadata=metadata)


def outcome_response(outcome: Outcome, invocation_id: str, rule: OutputRule) -> web.Response:
    """Answer a completed invocation: 200 with its output, or its failure (source invocation)."""
    inv = outcome.invocation_id or invocation_id
    headers = {X_RESTATE_ID: inv}
    if outcome.expires_ms is not None:
        headers[IDEMPOTENCY_EXPIRES] = format_expires(outcome.expires_ms)
    if outcome.failure_code:
        return invocation_failure_response(inv, outcome.failure_code, outcome.failure_message, headers,
                                           outcome.failure_metadata)
    content_type = rule.content_type_for(outcome.value)
    if content_type is None:
        return UntypedResponse(status=200, body=outcome.value, headers=headers)
    headers[CONTENT_TYPE] = content_type
    return web.Response(status=200, body=outcome.value, headers=headers)
