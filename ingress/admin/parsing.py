"""Admin request bodies: JSON decoding and the field checks of Restate's request types.

Texts follow Restate 1.7 (axum's `Json` extractor and serde). Deviation: request-shape errors,
which Restate answers in text/plain, use the admin JSON error shape; unknown fields are tolerated.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from yarl import URL

from ingress.delay import DelayError, parse_delay_ms
from ingress.errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType
from ingress.handlers.responses import JsonBodyError, load_json

DESERIALIZE = "Failed to deserialize the JSON body into the target type: "
UNTAGGED = DESERIALIZE + "data did not match any variant of untagged enum RegisterDeploymentRequest"
BODY_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"
_TOKEN_CHARS = "!#$%&'*+-.^_`|~"  # besides letters and digits, what an HTTP header name may hold


async def json_body(request: web.Request) -> Any:
    """The decoded JSON body. Raises 415 `UnsupportedMediaType` unless the content type is JSON,
    413 `PayloadTooLarge` past the app's body limit, 400 `BadRequest` when it does not parse as
    serde_json would (`load_json`: UTF-8, no lone surrogate, no nesting past the recursion limit)."""
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        raise UnsupportedMediaType("Expected request with `Content-Type: application/json`")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(BODY_TOO_LARGE) from None
    try:
        return load_json(body)
    except JsonBodyError as exc:
        raise BadRequest(f"Failed to parse the request body as JSON: {exc}") from None


def _header_ok(name: str, value: str) -> bool:
    """A valid header name (an HTTP token) and value: as `http::HeaderValue` wants it, no control
    character but tab (UTF-8 beyond ASCII is allowed)."""
    return (bool(name) and name.isascii() and all(c.isalnum() or c in _TOKEN_CHARS for c in name)
            and all(c == "\t" or (" " <= c != "\x7f") for c in value))


def string_map(value: Any, headers: bool = False) -> dict[str, str]:
    """A JSON object of strings (absent = empty); with `headers`, valid header names, lower-cased.

    Raises 422 `UnprocessableEntity`.
    """
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if ok and headers:
        ok = all(_header_ok(k, v) for k, v in value.items())
    if not ok:
        raise UnprocessableEntity(UNTAGGED)
    return {k.lower(): v for k, v in value.items()} if headers else dict(value)


def flag(body: dict[str, Any], key: str) -> bool | None:
    """An optional boolean field. Raises 422 `UnprocessableEntity` for any other type."""
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise UnprocessableEntity(UNTAGGED)
    return value


def normalize_uri(raw: Any) -> str:
    """The deployment URI in canonical form (path at least `/`).

    Raises 422 for a non-string or unparsable value, 400 for a relative or non-HTTP URI.
    """
    if not isinstance(raw, str):
        raise UnprocessableEntity(UNTAGGED)
    if "://" not in raw:
        raise BadRequest(f"The request field 'uri' is invalid. Reason: The provided uri {raw} is not "
                         "absolute, only absolute URIs can be used.")
    try:  # yarl parses lazily: a bad host (an empty IDNA label) only fails on `.host`
        url = URL(raw)
        scheme, host = url.scheme, url.host
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        raise UnprocessableEntity(UNTAGGED) from None
    if scheme not in ("http", "https") or not host:
        raise BadRequest(f"The request field 'uri' is invalid. Reason: shardgate supports only absolute "
                         f"http:// and https:// deployment URIs, got {raw}")
    try:
        return str(URL.build(scheme=scheme, authority=url.raw_authority, path=url.raw_path or "/",
                             query_string=url.raw_query_string, encoded=True))
    except (ValueError, TypeError):
        raise UnprocessableEntity(UNTAGGED) from None


def duration_ms(body: dict[str, Any], key: str) -> int | None:
    """An optional duration field (friendly or ISO 8601 string) in ms. Raises 422 when malformed."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UnprocessableEntity(f"{DESERIALIZE}{key}: invalid type: {json.dumps(value)}, expected a "
                                  "human-friendly duration string")
    try:
        return parse_delay_ms(value)
    except DelayError as exc:
        raise UnprocessableEntity(f"{DESERIALIZE}{key}: {exc}") from None
