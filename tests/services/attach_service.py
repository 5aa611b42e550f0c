"""Test deployment for `tests/integration/test_attach_from_handlers.py` (restate-sdk 1.2.0 under hypercorn).

Served with:  hypercorn tests.services.attach_service:app --bind 127.0.0.1:9083

restate-sdk 1.2.0 for Python can only attach by invocation id (`ctx.attach_invocation`); it has
no get-output and no idempotent-request or workflow target. Those commands come from `Raw`, a
tiny handler that speaks the service protocol (v5/v6, request-response) itself, served by the
same app under `/invoke/Raw/`.

Services (restate-sdk)
  Held  (Workflow)
      run(x)      workflow  awaits promise "go"; returns f"{x}:{value}".
      release(v)  shared    resolves promise "go" with v.
  Echo  (Service)
      hello(name)           returns f"hi {name}".
  Attacher  (Service)
      attach(id)            ctx.attach_invocation(id): {"value": result}, or for a terminal
                            failure {"code": status code, "message": message}.

Raw  (Service, protocol spoken by hand)
  probe(req)  req = {"op": "attach" | "output", "target": T} with T one of
              {"id": invocation id}, {"service", "key"?, "handler", "idem"} (idempotent request),
              {"workflow", "key"} (workflow run). The first attempt journals one
              AttachInvocationCommand / GetInvocationOutputCommand (completion id 1) and suspends
              on it; once its completion is in the journal the handler returns {"void": true},
              {"value": decoded JSON} or {"code", "message"}.
"""

from __future__ import annotations

import json
from typing import Any

import restate
from restate import Context, WorkflowContext, WorkflowSharedContext
from restate.exceptions import TerminalError

from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T

RAW_PREFIX = "/invoke/Raw/"
COMPLETION_ID = 1

held = restate.Workflow("Held")


@held.main()
async def run(ctx: WorkflowContext, x: str) -> str:
    value = await ctx.promise("go", type_hint=str).value()
    return f"{x}:{value}"


@held.handler()
async def release(ctx: WorkflowSharedContext, v: str) -> None:
    await ctx.promise("go", type_hint=str).resolve(v)


echo = restate.Service("Echo")


@echo.handler()
async def hello(ctx: Context, name: str) -> str:
    return f"hi {name}"


attacher = restate.Service("Attacher")


@attacher.handler()
async def attach(ctx: Context, invocation_id: str) -> dict[str, Any]:
    try:
        return {"value": await ctx.attach_invocation(invocation_id)}
    except TerminalError as e:
        return {"code": e.status_code, "message": e.message}


sdk_app = restate.app(services=[held, echo, attacher])


# ---- Raw: the protocol by hand ---------------------------------------------------------------


def _target_fields(target: dict[str, Any]) -> dict[str, Any]:
    """The `target` oneof of an attach / get-output command for the request's target."""
    if "id" in target:
        return {"invocation_id": target["id"]}
    if "workflow" in target:
        return {"workflow_target": pb.WorkflowTarget(workflow_name=target["workflow"], workflow_key=target["key"])}
    idem = pb.IdempotentRequestTarget(service_name=target["service"], handler_name=target["handler"],
                                      idempotency_key=target["idem"])
    if "key" in target:
        idem.service_key = target["key"]
    return {"idempotent_request_target": idem}


def _command(req: dict[str, Any]) -> bytes:
    fields = _target_fields(req["target"])
    if req["op"] == "attach":
        return protocol.encode_message(T.ATTACH_INVOCATION_COMMAND, pb.AttachInvocationCommandMessage(
            result_completion_id=COMPLETION_ID, **fields))
    return protocol.encode_message(T.GET_INVOCATION_OUTPUT_COMMAND, pb.GetInvocationOutputCommandMessage(
        result_completion_id=COMPLETION_ID, **fields))


def _answer(note: Any) -> dict[str, Any]:
    if note.HasField("failure"):
        return {"code": note.failure.code, "message": note.failure.message}
    if note.HasField("value"):
        return {"value": json.loads(note.value.content)}
    return {"void": True}


def _respond(frames: list[protocol.Frame]) -> bytes:
    """The frames of this attempt: the command and a suspension first, the output once answered."""
    entries = frames[1:]  # frames[0] is Start
    req = json.loads(protocol.parse_message(entries[0]).value.content)  # type: ignore[attr-defined]
    notes = [protocol.parse_message(f) for f in entries
             if f.type in (T.ATTACH_INVOCATION_COMPLETION, T.GET_INVOCATION_OUTPUT_COMPLETION)]
    answered = [n for n in notes if n.completion_id == COMPLETION_ID]  # type: ignore[attr-defined]
    suspend = protocol.encode_message(T.SUSPENSION, pb.SuspensionMessage(waiting_completions=[COMPLETION_ID]))
    if not answered:
        return suspend if len(entries) > 1 else _command(req) + suspend
    output = pb.OutputCommandMessage(value=pb.Value(content=json.dumps(_answer(answered[0])).encode()))
    return protocol.encode_message(T.OUTPUT_COMMAND, output) + protocol.encode_message(T.END, pb.EndMessage())


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        event = await receive()
        body += bytes(event.get("body", b""))
        if not event.get("more_body"):
            return body


async def _raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await _read_body(receive)
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    out = _respond(protocol.decode_frames(body))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The SDK app, with `/invoke/Raw/...` answered by the hand-written protocol handler."""
    if scope["type"] == "http" and scope["path"].startswith(RAW_PREFIX):
        await _raw(scope, receive, send)
        return
    await sdk_app(scope, receive, send)
