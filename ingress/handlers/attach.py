"""Attach / output / lookup (Restate `handler/invocation.rs`, `workflow.rs`, `lookup.rs`).

Targets come from the path (`GET /restate/attach|output/{id}`, legacy workflow and
idempotency-key paths) or from a JSON body (`POST /restate/attach|output|lookup`). Lookup is a
pure id computation and never touches a partition.

Answers: output of an unfinished invocation is 470 and of an unknown one 404
`invocation not found`, both without `x-restate-id`; attach to an unknown invocation is the
invocation-style 404 `not found` (source `invocation`) with `x-restate-id`, as Restate answers.
A malformed target body is a 400 (Restate answers 500; deliberate improvement).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ingress.dispatcher import Dispatcher
from ingress.errors import BadRequest, InvocationNotFound, InvocationNotReady, MethodNotAllowed
from ingress.handlers.responses import (
    DEFAULT_OUTPUT_RULE,
    JsonBodyError,
    OutputRule,
    invocation_failure_response,
    json_response,
    load_json,
    outcome_response,
)
from ingress.handlers.target import Targets
from ingress.paths import (
    AttachRequest,
    ByIdempotencyKey,
    ByInvocationId,
    ByWorkflow,
    InvocationQuery,
    OutputRequest,
    parse_invocation_id,
    restricted_value_error,
)
from shardgate.sharding import partition_of

NOT_READY = "the invocation exists but has not completed yet"
INVOCATION_NOT_FOUND = "invocation not found"
_VARIANTS = "expected one of `workflow`, `idempotentInvocation`, `invocation`"


def _output_rule(targets: Targets, query: InvocationQuery) -> OutputRule:
    if isinstance(query, ByWorkflow):
        return targets.output_rule(query.service, None)
    if isinstance(query, ByIdempotencyKey):
        return targets.output_rule(query.service, query.handler)
    return DEFAULT_OUTPUT_RULE  # by id: the target is unknown here; JSON is the SDK default


async def answer_query(
    attach: bool, query: InvocationQuery, *, targets: Targets, dispatcher: Dispatcher, partitions: int
) -> web.Response:
    """Attach (blocking) or get the output (non-blocking) of the invocation `query` names."""
    inv_id = query.invocation_id()
    inv = str(inv_id)
    partition = partition_of(inv_id.partition_key, partitions)
    if attach:
        try:
            outcome = await dispatcher.attach(inv, partition)
        except InvocationNotFound:
            return invocation_failure_response(inv, 404, "not found")
    else:
        try:
            outcome = await dispatcher.get_output(inv, partition)
        except InvocationNotReady:
            raise InvocationNotReady(NOT_READY) from None
        except InvocationNotFound:
            raise InvocationNotFound(INVOCATION_NOT_FOUND) from None
    return outcome_response(outcome, inv, _output_rule(targets, query))


async def handle_attach(
    request: web.Request,
    req: AttachRequest | OutputRequest,
    *,
    targets: Targets,
    dispatcher: Dispatcher,
    partitions: int,
) -> web.Response:
    """GET attach/output with the target in the path."""
    if request.method != "GET":
        raise MethodNotAllowed()
    return await answer_query(
        isinstance(req, AttachRequest),
        req.query,
        targets=targets,
        dispatcher=dispatcher,
        partitions=partitions,
    )


async def handle_target(
    request: web.Request, attach: bool, *, targets: Targets, dispatcher: Dispatcher, partitions: int
) -> web.Response:
    """POST /restate/attach or /restate/output with a JSON target body."""
    query = await _read_target(request, "request")
    return await answer_query(attach, query, targets=targets, dispatcher=dispatcher, partitions=partitions)


async def handle_lookup(request: web.Request) -> web.Response:
    """POST /restate/lookup: the invocation id the target maps to (existence is not checked)."""
    query = await _read_target(request, "lookup")
    return json_response({"invocationId": str(query.invocation_id())})


async def _read_target(request: web.Request, what: str) -> InvocationQuery:
    if request.method != "POST":
        raise MethodNotAllowed()
    return parse_target_body(await request.read(), what)


def parse_target_body(body: bytes, what: str = "request") -> InvocationQuery:
    """Decode a `{"target": ...}` body (Restate `InvocationTargetRequest`) into a query.

    Unknown fields are ignored; `scope` is validated (`bad scope value: ...`). Raises 400
    `cannot read body: invalid <what> body: <detail>` for anything malformed, also for bytes that
    are not UTF-8, a lone surrogate escape and nesting past the decoder's recursion limit.
    """
    prefix = f"cannot read body: invalid {what} body: "
    try:
        obj = load_json(body)
    except JsonBodyError as e:
        raise BadRequest(prefix + str(e)) from None
    if not isinstance(obj, dict):
        raise BadRequest(prefix + f"invalid type: {_json_type(obj)}, expected internally tagged enum")
    if "target" not in obj:
        raise BadRequest(prefix + "missing field `target`")

    def field(name: str, optional: bool = False) -> Any:
        value = obj.get(name)
        if value is None:
            if optional:
                return None
            raise BadRequest(prefix + f"missing field `{name}`")
        if not isinstance(value, str):
            raise BadRequest(
                prefix + f"invalid type: {_json_type(value)}, expected a string (field `{name}`)"
            )
        return value

    target = obj["target"]
    if target == "invocation":
        return ByInvocationId(parse_invocation_id(field("invocationId")))
    if target == "workflow":
        name, key = field("workflowName"), field("workflowKey")
        return ByWorkflow(name, key, _scope(field("scope", optional=True)))
    if target == "idempotentInvocation":
        service, key = field("service"), field("key", optional=True)
        handler, idempotency_key = field("handler"), field("idempotencyKey")
        return ByIdempotencyKey(service, key, handler, idempotency_key, _scope(field("scope", optional=True)))
    shown = f"`{target}`" if isinstance(target, str) else _json_type(target)
    raise BadRequest(prefix + f"unknown variant {shown}, {_VARIANTS}")


def _scope(value: str | None) -> str | None:
    if value is None:
        return None
    err = restricted_value_error(value)
    if err is not None:
        raise BadRequest(f"bad scope value: {err}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"
