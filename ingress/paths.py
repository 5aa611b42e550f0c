"""Parse ingress URLs into typed request objects (Restate `handler/path_parsing.rs`).

`split_target` normalises the raw request target (trailing `/` trimmed, as Restate's
`NormalizePathLayer`) and `parse_path` turns the path into one request dataclass. Whether a
`{key}` segment is expected depends on the service type, so the parser takes a lookup
`service_type(name) -> ServiceType | None`; an unknown service is a 404 before anything else.
Keys and scopes are percent-decoded (UTF-8); service, handler and idempotency-key segments are
not. Handlers never slice raw paths: they match on the returned type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import unquote_to_bytes

from ingress.errors import BadRequest, NotFound
from shardgate.schema import ServiceType
from shardgate.sharding import (
    InvocationId,
    InvocationIdError,
    idempotent_invocation_id,
    workflow_invocation_id,
)

ServiceTypeLookup = Callable[[str], "ServiceType | None"]

NOT_FOUND = "not found"
BAD_SERVICE_PATH = "bad path, expected either /:service-name/:handler or /:object-name/:object-key/:handler"
BAD_AWAKEABLES_PATH = (
    "bad path, expected either /restate/awakeables/:id/resolve or /restate/awakeables/:id/reject"
)
BAD_INVOCATION_PATH = (
    "bad path, expected either /restate/invocation/:invocation_id/output or "
    "/restate/invocation/:invocation_id/attach or "
    "/restate/invocation/:invocation_target/:idempotency_key/output or "
    "/restate/invocation/:invocation_target/:idempotency_key/attach"
)
BAD_WORKFLOW_PATH = (
    "bad path, expected either /restate/workflow/:workflow_name/:workflow_key/output or "
    "/restate/workflow/:workflow_name/:workflow_key/attach"
)
BAD_RESTATE_API_PATH = (
    "bad path, expected /restate/call/:service/:handler, /restate/send/:service/:handler, "
    "/restate/scope/:scope/call/:service/:handler, /restate/attach/:invocation_id, "
    "/restate/output/:invocation_id, or /restate/lookup"
)
BAD_TARGET_ENCODING = "bad path, the request target is not valid UTF-8"
_RESTRICTED = re.compile(r"[A-Za-z0-9_.\-]+")  # scope and limit-key components
_RESTRICTED_MAX_LEN = 36


def service_not_found(service: str) -> NotFound:
    """The 404 for an unregistered service."""
    return NotFound(f"service '{service}' not found, make sure to register the service before calling it.")


def bad_invocation_id(raw: str, err: InvocationIdError) -> BadRequest:
    """The 400 for an undecodable invocation id."""
    return BadRequest(f"bad invocation id '{raw}': {err}")


# ---- request types ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """A call or send to `service/[key/]handler` (optionally scoped; legacy = unversioned path)."""

    service: str
    handler: str
    key: str | None  # decoded object/workflow key; None for plain services
    scope: str | None = None  # decoded `/restate/scope/{scope}/...` value
    legacy: bool = False
    is_send: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class CallRequest(ServiceRequest):
    """Request/response invocation: `/restate/call/...` or legacy `/{svc}/[key/]handler`."""


@dataclass(frozen=True, slots=True)
class SendRequest(ServiceRequest):
    """One-way invocation: `/restate/send/...` or legacy `/{svc}/[key/]handler/send`."""

    is_send: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ByInvocationId:
    """Target an invocation by its id."""

    id: InvocationId

    def invocation_id(self) -> InvocationId:
        return self.id


@dataclass(frozen=True, slots=True)
class ByWorkflow:
    """Target the `run` invocation of workflow `service` with `key`."""

    service: str
    key: str
    scope: str | None = None

    def invocation_id(self) -> InvocationId:
        return workflow_invocation_id(self.service, self.key, self.scope)


@dataclass(frozen=True, slots=True)
class ByIdempotencyKey:
    """Target the invocation created with an idempotency key."""

    service: str
    key: str | None
    handler: str
    idempotency_key: str
    scope: str | None = None

    def invocation_id(self) -> InvocationId:
        return idempotent_invocation_id(
            self.service, self.key, self.handler, self.idempotency_key, self.scope
        )


InvocationQuery = ByInvocationId | ByWorkflow | ByIdempotencyKey


@dataclass(frozen=True, slots=True)
class AttachRequest:
    """GET attach (blocking) for a target given in the path."""

    query: InvocationQuery
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """GET output (non-blocking) for a target given in the path."""

    query: InvocationQuery
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class TargetAttach:
    """POST /restate/attach with a JSON target body."""


@dataclass(frozen=True, slots=True)
class TargetOutput:
    """POST /restate/output with a JSON target body."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """POST /restate/lookup with a JSON target body."""


@dataclass(frozen=True, slots=True)
class Health:
    """GET /restate/health."""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """GET /restate/invocation/{id}/status (beyond Restate 1.7: `ingress.handlers.status`)."""

    invocation_id: InvocationId


@dataclass(frozen=True, slots=True)
class Awakeable:
    """POST /restate/awakeables/{id}/resolve|reject (alias prefix /restate/a/)."""

    awakeable_id: str
    action: str  # "resolve" | "reject"


ParsedRequest = (
    CallRequest
    | SendRequest
    | AttachRequest
    | OutputRequest
    | TargetAttach
    | TargetOutput
    | Lookup
    | Health
    | Awakeable
    | StatusRequest
)

_TARGET_ATTACH = TargetAttach()
_TARGET_OUTPUT = TargetOutput()
_LOOKUP = Lookup()
_HEALTH = Health()


# ---- parsing ------------------------------------------------------------------------------------


def split_target(raw_target: str) -> tuple[str, str | None]:
    """Split a raw request target into (normalised path, raw query or None).

    Trailing slashes are trimmed and leading ones collapsed, like tower-http's
    `NormalizePath::trim_trailing_slash`; the root stays `/`. A target with bytes that are not
    UTF-8 raises `BadRequest`, as Restate's HTTP stack refuses such a URI, so every string the
    parsers see afterwards is UTF-8 (aiohttp's C parser already answers non-ASCII request lines
    with its own 400; its pure-Python parser hands the bytes over as lone surrogates).
    """
    if not raw_target.isascii() and not _is_utf8(raw_target):
        raise BadRequest(BAD_TARGET_ENCODING)
    path, sep, query = raw_target.partition("?")
    if path.endswith("/") or path.startswith("//"):
        path = "/" + path.strip("/")
    return path, (query if sep else None)


def _is_utf8(text: str) -> bool:
    """Whether `text` holds no lone surrogate, i.e. came from valid UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def decode_key(segment: str) -> str:
    """Percent-decode a key/scope segment as UTF-8 (no `+` handling), Restate's `urlencoding::decode`.

    Raises `BadRequest` when the decoded bytes (or the segment itself) are not UTF-8."""
    if "%" not in segment:
        return segment
    if not _is_utf8(segment):
        raise BadRequest(BAD_TARGET_ENCODING)
    raw = unquote_to_bytes(segment)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        error_len = "None" if e.reason == "unexpected end of data" else f"Some({e.end - e.start})"
        detail = (
            f"FromUtf8Error {{ bytes: [{', '.join(str(b) for b in raw)}], error: Utf8Error "
            f"{{ valid_up_to: {e.start}, error_len: {error_len} }} }}"
        )
        raise BadRequest(f"bad path, cannot decode key: {detail}") from None


def restricted_value_error(value: str) -> str | None:
    """Restate's `RestrictedValueError` text for a scope / limit-key component, or None if valid."""
    if not value:
        return "value cannot be empty"
    size = len(value.encode())
    if size > _RESTRICTED_MAX_LEN:
        return f"value too long: {size} bytes (max {_RESTRICTED_MAX_LEN})"
    if not _RESTRICTED.fullmatch(value):
        return "value contains characters outside the allowed set [a-zA-Z0-9_.-]"
    return None


def parse_invocation_id(raw: str) -> InvocationId:
    """Parse an invocation id, raising the 400 `bad invocation id '<id>': <reason>`."""
    try:
        return InvocationId.parse(raw)
    except InvocationIdError as e:
        raise bad_invocation_id(raw, e) from None


def parse_path(path: str, service_type: ServiceTypeLookup) -> ParsedRequest:
    """Parse a normalised path (see `split_target`) into a request object.

    Raises `BadRequest` (400) for bad shapes, `NotFound` (404) for unknown verbs or services.
    """
    slashes = path.count("/")
    # 2 = /service/handler (legacy) ... 7 = /restate/scope/s/call/service/key/handler
    if slashes < 2 or slashes > 7:
        raise BadRequest(f"bad path: {path}")
    parts = path.split("/")  # parts[0] == ""
    first = parts[1]
    if first == "restate":
        verb = parts[2]
        rest = parts[3:]
        if verb == "call" or verb == "send":
            return _call_or_send(verb, None, rest, service_type)
        if verb == "health":
            return _HEALTH
        if verb == "attach" or verb == "output":
            return _by_id(verb, rest)
        if verb == "lookup":
            if rest:
                raise BadRequest(BAD_RESTATE_API_PATH)
            return _LOOKUP
        if verb == "scope":
            if len(rest) < 2:
                raise BadRequest(BAD_RESTATE_API_PATH)
            return _call_or_send(rest[1], decode_key(rest[0]), rest[2:], service_type)
        if verb == "invocation":
            return _legacy_invocation(rest, service_type)
        if verb == "workflow":
            return _legacy_workflow(rest)
        if verb == "awakeables" or verb == "a":
            return _awakeable(rest)
        raise NotFound(NOT_FOUND)
    if first == "openapi":
        raise NotFound(NOT_FOUND)  # not implemented in Restate 1.7 either
    return _legacy_service(first, parts[2:], service_type)


def _lookup_type(service: str, service_type: ServiceTypeLookup) -> ServiceType:
    ty = service_type(service)
    if ty is None:
        raise service_not_found(service)
    return ty


def _call_or_send(
    verb: str, scope: str | None, rest: list[str], service_type: ServiceTypeLookup
) -> CallRequest | SendRequest:
    if verb == "call":
        cls: type[CallRequest | SendRequest] = CallRequest
    elif verb == "send":
        cls = SendRequest
    else:
        raise BadRequest(BAD_RESTATE_API_PATH)
    n = len(rest)
    if n == 0:
        raise BadRequest(BAD_RESTATE_API_PATH)
    service = rest[0]
    i = 1
    key = None
    if _lookup_type(service, service_type).keyed:
        if n < 2:
            raise BadRequest(BAD_RESTATE_API_PATH)
        key = decode_key(rest[1])
        i = 2
    if n != i + 1:  # handler missing, or extra segments
        raise BadRequest(BAD_RESTATE_API_PATH)
    return cls(service, rest[i], key, scope)


def _legacy_service(
    service: str, rest: list[str], service_type: ServiceTypeLookup
) -> CallRequest | SendRequest:
    n = len(rest)
    i = 0
    key = None
    if _lookup_type(service, service_type).keyed:
        if n < 1:
            raise BadRequest(BAD_SERVICE_PATH)
        key = decode_key(rest[0])
        i = 1
    if n <= i:
        raise BadRequest(BAD_SERVICE_PATH)
    handler = rest[i]
    if n == i + 1:
        return CallRequest(service, handler, key, None, True)
    if rest[i + 1] != "send" or n > i + 2:
        raise BadRequest(BAD_SERVICE_PATH)
    return SendRequest(service, handler, key, None, True)


def _by_id(verb: str, rest: list[str]) -> AttachRequest | OutputRequest | TargetAttach | TargetOutput:
    if not rest:
        return _TARGET_ATTACH if verb == "attach" else _TARGET_OUTPUT
    if len(rest) > 1:
        raise BadRequest(BAD_RESTATE_API_PATH)
    query = ByInvocationId(parse_invocation_id(rest[0]))
    return AttachRequest(query) if verb == "attach" else OutputRequest(query)


def _attach_or_output(last: str, query: InvocationQuery) -> AttachRequest | OutputRequest:
    if last == "output":
        return OutputRequest(query, legacy=True)
    if last == "attach":
        return AttachRequest(query, legacy=True)
    raise NotFound(NOT_FOUND)


def _legacy_invocation(rest: list[str],
                       service_type: ServiceTypeLookup) -> AttachRequest | OutputRequest | StatusRequest:
    """`/restate/invocation/{id}/attach|output|status` or `.../{svc}[/{key}]/{handler}/{idem}/attach|output`.

    Segments after the verb are ignored, as in Restate.
    """
    n = len(rest)
    if n < 2:
        raise BadRequest(BAD_INVOCATION_PATH)
    if n == 2:
        last = rest[1]
        if last == "status":
            return StatusRequest(parse_invocation_id(rest[0]))
        if last != "output" and last != "attach":
            raise NotFound(NOT_FOUND)
        return _attach_or_output(last, ByInvocationId(parse_invocation_id(rest[0])))
    service = rest[0]
    if _lookup_type(service, service_type).keyed:
        key: str | None = decode_key(rest[1])
        i = 2
    else:
        key = None
        i = 1
    if n < i + 3:
        raise BadRequest(BAD_INVOCATION_PATH)
    return _attach_or_output(rest[i + 2], ByIdempotencyKey(service, key, rest[i], rest[i + 1]))


def _legacy_workflow(rest: list[str]) -> AttachRequest | OutputRequest:
    """`/restate/workflow/{name}/{key}/attach|output`."""
    if len(rest) < 2:
        raise BadRequest(BAD_WORKFLOW_PATH)
    query = ByWorkflow(rest[0], decode_key(rest[1]))
    if len(rest) < 3:
        raise BadRequest(BAD_WORKFLOW_PATH)
    return _attach_or_output(rest[2], query)


def _awakeable(rest: list[str]) -> Awakeable:
    if len(rest) < 2:
        raise BadRequest(BAD_AWAKEABLES_PATH)
    if rest[1] != "resolve" and rest[1] != "reject":
        raise NotFound(NOT_FOUND)
    return Awakeable(rest[0], rest[1])
