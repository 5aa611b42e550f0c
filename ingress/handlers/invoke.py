"""Call and send (Restate `handler/service_handler.rs`), plus the per-handler target cache.

Checks run in Restate's order: handler exists (404), public (400), idempotency key on a workflow
run (400), scope (400: a bad value, or scopes turned off), method (405), body + content-type
against the handler's input rules (400), delay (400), limit key (400: a bad value, or one
without a scope), forwarded headers (400), delay on a call (400). Then the invocation id and
partition are derived (a scope is hashed into both, spec section 15) and the request is
dispatched with its scope and limit key.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from aiohttp import web
from ulid import ULID

from ingress.delay import delay_from_query
from ingress.dispatcher import Dispatcher, InvocationRequest
from ingress.errors import BadRequest, MethodNotAllowed, PartitionUnavailable
from ingress.handlers.responses import X_RESTATE_ID, format_execution_time, json_response, outcome_response
from ingress.handlers.target import Target, Targets
from ingress.paths import ServiceRequest, restricted_value_error
from shardgate.sharding import (
    InvocationId,
    idempotent_invocation_id,
    new_invocation_id,
    partition_key_for_key,
    partition_key_for_service,
    partition_of,
    workflow_invocation_id,
)

UNSUPPORTED_IDEMPOTENCY_KEY = (
    "cannot use the idempotency key with workflow handlers. The handler invocation will already be "
    "idempotent by the workflow key itself."
)
UNSUPPORTED_DELAY = "cannot use the delay query parameter with calls. The delay is supported only with sends"
SCOPE_REQUIRES_VQUEUES = "scoped invocations require vqueues to be enabled"
LIMIT_KEY_WITHOUT_SCOPE = "limit-key requires a scope to be set"
_TO_STR_ERROR = "ToStrError { _priv: () }"
# Not forwarded to the handler (Restate `parse_headers`); transfer-encoding is hop-by-hop.
_DROPPED_HEADERS = frozenset(
    {"connection", "host", "idempotency-key", "idempotency-expires", "transfer-encoding"}
)


def _header(request: web.Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None and not value.isascii():
        raise BadRequest(f"bad header {name}: {_TO_STR_ERROR}")
    return value


def _limit_key(request: web.Request, query: str | None) -> str | None:
    """The limit key from `x-restate-limit-key` (wins) or `?limit-key=`; validated, None if absent."""
    value = _header(request, "x-restate-limit-key")
    if value is None and query and "limit-key" in query.lower():
        value = next(
            (v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() == "limit-key"), None
        )
    if not value:
        return None
    parts = value.split("/")
    if parts and parts[-1] == "":  # split_terminator semantics
        parts.pop()
    if len(parts) > 2:
        raise BadRequest("invalid limit-key: too many path components in the given limit-key (max 2)")
    for part in parts:
        err = restricted_value_error(part)
        if err is not None:
            raise BadRequest(f"invalid limit-key: invalid limit-key component: {err}")
    return "/".join(parts) if parts else None


def _forwarded_headers(request: web.Request, ingress_path: str) -> tuple[tuple[str, str], ...]:
    headers = [("x-restate-ingress-path", ingress_path)]
    for name, value in request.headers.items():
        lname = name.lower()
        if lname in _DROPPED_HEADERS:
            continue
        if not value.isascii():
            raise BadRequest(f"bad header {lname}: {_TO_STR_ERROR}")
        headers.append((lname, value))
    return tuple(headers)


def invocation_id_for(
    target: Target, key: str | None, idempotency_key: str | None, *, generate_idempotency_key: bool,
    scope: str | None = None,
) -> tuple[InvocationId, str | None]:
    """Derive (invocation id, idempotency key to record) for a call/send.

    Workflow run: deterministic from the workflow key. User key: deterministic idempotent id. Services
    and virtual objects without a key (controlled-idempotent-sharding): a fresh ULID key, so the
    result is retained and a retry of the same request maps to the same id. Otherwise a random id on
    the key's (or a random service bucket's) partition key. A `scope` is part of every
    deterministic id and its hash is the partition key of every id (Restate's rules).
    """
    if target.workflow_run:
        return workflow_invocation_id(target.service, key or "", scope), None
    if idempotency_key is None and generate_idempotency_key and target.idempotent_by_default:
        idempotency_key = str(ULID())
    if idempotency_key is not None:
        inv_id = idempotent_invocation_id(target.service, key, target.handler, idempotency_key, scope)
        return inv_id, idempotency_key
    if scope is not None:
        return new_invocation_id(partition_key_for_key(scope)), None
    if key is None:
        return new_invocation_id(partition_key_for_service(target.service, None)), None
    return new_invocation_id(partition_key_for_key(key)), None


async def handle_invoke(
    request: web.Request,
    req: ServiceRequest,
    ingress_path: str,
    query: str | None,
    *,
    targets: Targets,
    dispatcher: Dispatcher,
    partitions: int,
    generate_idempotency_keys: bool = True,
    scopes_enabled: bool = True,
) -> web.Response:
    """Serve one call or send; `ingress_path` is the normalised `path[?query]`. With
    `scopes_enabled` False a scoped request gets Restate's 400 for a server without vqueues.
    Raises the IngressError of the first check that fails (module docstring), or the dispatcher's."""
    target = targets.resolve(req.service, req.handler)
    idempotency_key = _check_before_body(request, req, target, scopes_enabled)
    body = await request.read()
    delay_ms, limit_key, headers = _check_input(request, req, target, body, query, ingress_path)
    invocation = _invocation_request(
        req, target, body, headers, idempotency_key, delay_ms, limit_key,
        partitions=partitions, generate_idempotency_key=generate_idempotency_keys,
    )
    try:
        if not req.is_send:
            outcome = await dispatcher.call(invocation)
            return outcome_response(outcome, invocation.invocation_id, target.output)
        return await _send(dispatcher, invocation)
    except PartitionUnavailable as e:
        raise _unavailable(e, invocation, generated_key=idempotency_key is None) from None


def _unavailable(e: PartitionUnavailable, invocation: InvocationRequest, *, generated_key: bool) -> PartitionUnavailable:
    """The 503 of a call or send that may have reached its worker: it names the invocation
    (`x-restate-id`), so the client can attach to it instead of running it again; with an
    idempotency key the ingress made up, a plain re-send would not find it."""
    message = e.message
    if generated_key and invocation.idempotency_key is not None:
        message = message.replace(" The request may be retried safely.", "") + (
            " The invocation may have been accepted: attach to it by its id (x-restate-id).")
    return PartitionUnavailable(message, retry_after_s=e.retry_after_s, invocation_id=invocation.invocation_id)


def _check_before_body(
    request: web.Request, req: ServiceRequest, target: Target, scopes_enabled: bool
) -> str | None:
    """The checks that need no body (idempotency key, scope, method); returns the idempotency key.
    Raises BadRequest or MethodNotAllowed."""
    idempotency_key = _header(request, "idempotency-key")
    if idempotency_key is not None and target.workflow_run:
        raise BadRequest(UNSUPPORTED_IDEMPOTENCY_KEY)
    if req.scope is not None:
        err = restricted_value_error(req.scope)
        if err is not None:
            raise BadRequest(f"bad scope value: {err}")
        if not scopes_enabled:
            raise BadRequest(SCOPE_REQUIRES_VQUEUES)
    if request.method != "POST" and request.method != "GET":
        raise MethodNotAllowed()
    return idempotency_key


def _check_input(
    request: web.Request, req: ServiceRequest, target: Target, body: bytes, query: str | None,
    ingress_path: str,
) -> tuple[int | None, str | None, tuple[tuple[str, str], ...]]:
    """The checks of body, query and headers, in Restate's order; returns (delay in ms or None,
    limit key or None, the headers forwarded to the handler). Raises BadRequest."""
    target.validate_input(_header(request, "content-type"), body)
    delay_ms = delay_from_query(query)
    limit_key = _limit_key(request, query)
    if limit_key is not None and req.scope is None:
        raise BadRequest(LIMIT_KEY_WITHOUT_SCOPE)
    headers = _forwarded_headers(request, ingress_path)
    if delay_ms is not None and not req.is_send:
        raise BadRequest(UNSUPPORTED_DELAY)
    return delay_ms, limit_key, headers


def _invocation_request(
    req: ServiceRequest,
    target: Target,
    body: bytes,
    headers: tuple[tuple[str, str], ...],
    idempotency_key: str | None,
    delay_ms: int | None,
    limit_key: str | None,
    *,
    partitions: int,
    generate_idempotency_key: bool,
) -> InvocationRequest:
    """The fully resolved request: invocation id, partition, retentions, start time, scope."""
    inv_id, recorded_key = invocation_id_for(
        target, req.key, idempotency_key, generate_idempotency_key=generate_idempotency_key,
        scope=req.scope,
    )
    completion_ms, journal_ms = target.retention(recorded_key is not None)
    return InvocationRequest(
        invocation_id=str(inv_id),
        partition=partition_of(inv_id.partition_key, partitions),
        service=req.service,
        handler=req.handler,
        key=req.key,
        kind=target.kind,
        body=body,
        headers=headers,
        idempotency_key=recorded_key,
        idempotency_key_generated=recorded_key is not None and idempotency_key is None,
        completion_retention_ms=completion_ms,
        journal_retention_ms=journal_ms,
        execution_time_ms=None if delay_ms is None else time.time_ns() // 1_000_000 + delay_ms,
        scope=req.scope,
        limit_key=limit_key,
    )


async def _send(dispatcher: Dispatcher, invocation: InvocationRequest) -> web.Response:
    """Dispatch a send and answer 202 with its id, status and (when delayed) execution time."""
    receipt = await dispatcher.send(invocation)
    sent_id = receipt.invocation_id or invocation.invocation_id
    payload: dict[str, str] = {"invocationId": sent_id}
    # Restate answers `executionTime` for every send with a delay, also a zero one (which the
    # partition runs at once and so does not report as scheduled).
    execution_ms = receipt.execution_time_ms or invocation.execution_time_ms
    if execution_ms:
        payload["executionTime"] = format_execution_time(execution_ms)
    payload["status"] = receipt.status.value
    return json_response(payload, 202, {X_RESTATE_ID: sent_id})
