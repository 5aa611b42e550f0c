"""Turns the frames of one attempt into the ops of one `apply` transition (pure).

The SDK's response to one request-response attempt is a list of frames ending with End,
Suspension or Error. `plan_attempt` walks them in order and produces:

- the journal entries to append (commands as received; notifications the runtime produces
  at once: lazy state, run results, call invocation ids),
- their effects as `apply.lua` ops (state writes, timers, outbox messages, workflow promises),
- the terminal: END (result), SUSPEND (awaited notification keys) or ERROR (retry).

Nothing here does I/O, so each vector scenario can drive it directly in a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from partition import protocol
from partition.protocol import Frame
from partition.protocol import MessageType as T
from partition.sharding import (
    AwakeableIdError,
    InvocationId,
    child_invocation_id,
    idempotent_invocation_id,
    parse_awakeable_id,
    partition_of,
    workflow_invocation_id,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.schema import (
    DEFAULT_IDEMPOTENCY_RETENTION_MS,
    DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS,
    HandlerMeta,
    HandlerType,
    SchemaSnapshot,
    ServiceMeta,
    ServiceType,
)

CHILD_DEDUP_RETENTION_MS = 10 * 60 * 1000  # a called child's result is kept this long: re-delivered calls dedupe
PROMISE_ALREADY_COMPLETED = (409, "promise was already completed")
CANCEL_SIGNAL = 1
UNSUPPORTED_TARGET = (
    501,
    ("attaching to or reading the output of another invocation from a handler is not supported by shardgate yet"),
)

_KIND = {
    HandlerType.EXCLUSIVE: spb.HANDLER_KIND_EXCLUSIVE,
    HandlerType.SHARED: spb.HANDLER_KIND_SHARED,
    HandlerType.WORKFLOW: spb.HANDLER_KIND_WORKFLOW,
}


class PlanError(Exception):
    """The SDK sent something the runtime cannot accept (a protocol violation): retry the attempt."""


@dataclass(slots=True)
class PlanContext:
    invocation_id: str
    partition: int
    partitions: int
    kind: str  # service | exclusive | shared | workflow
    service: str
    key: str | None
    state: dict[bytes, bytes]  # the state as of the attempt's start; updated by planned writes
    commands_before: int  # commands in the replayed journal, Input included
    now_ms: int
    schema: SchemaSnapshot


@dataclass(slots=True)
class AttemptPlan:
    ops: list[Any] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)  # journal entries appended, in order
    terminal: str = ""  # END | SUSPEND | ERROR
    result: tuple[int, str, bytes] | None = None  # END: (code, message, value)
    awaiting: str = ""  # SUSPEND: " c1 s1 nname "
    error_code: int = 0  # ERROR
    error_message: str = ""
    next_retry_delay_ms: int | None = None
    error_behavior: int = 0  # v7 ErrorMessage.behavior: 0 retry, 1 pause, 2 fail
    timers: int = 0
    outbox: int = 0

    @property
    def grew(self) -> bool:
        return bool(self.entries)


def _child_retention_ms(meta: ServiceMeta, handler: HandlerMeta, idem: str | None) -> int:
    """How long a child's result is kept: a workflow run or an idempotent call keeps it for its
    retention (as from the ingress: the run-once and dedup guarantees depend on it); any other
    child only long enough for a re-delivered call to find it."""
    if handler.ty is HandlerType.WORKFLOW:
        return _first(handler.workflow_completion_retention_ms, meta.workflow_completion_retention_ms,
                      DEFAULT_WORKFLOW_COMPLETION_RETENTION_MS)
    if idem:
        return _first(handler.idempotency_retention_ms, meta.idempotency_retention_ms,
                      DEFAULT_IDEMPOTENCY_RETENTION_MS)
    return CHILD_DEDUP_RETENTION_MS


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def named_signal_key(name: str) -> str:
    """Dedup / wait key of a named signal: hex, so it never contains a space or a NUL."""
    return "n" + name.encode().hex()


def _failure_field(code: int, message: str) -> bytes:
    return pb.NotificationTemplate(failure=pb.Failure(code=code, message=message)).SerializeToString()


def encode_outbox_invoke(req: spb.InvokeRequest) -> bytes:
    return b"I\x00" + req.SerializeToString()


def encode_outbox_notify(partition: int, invocation_id: str, key: str, frame: bytes) -> bytes:
    """Same layout `_prelude.lua` builds: N, partition, id, key, frame separated by NUL."""
    return b"\x00".join((b"N", str(partition).encode(), invocation_id.encode(), key.encode(), frame))


def decode_outbox(raw: bytes) -> spb.OutboxMessage:
    if raw[:2] == b"I\x00":
        return spb.OutboxMessage(invoke=spb.InvokeRequest.FromString(raw[2:]))
    tag, p, inv, key, frame = raw.split(b"\x00", 4)
    if tag != b"N":
        raise ValueError(f"unknown outbox entry tag {tag!r}")
    return spb.OutboxMessage(notify=spb.Notification(
        partition=int(p), invocation_id=inv.decode(), key=key.decode(), frame=frame))


class _Planner:
    def __init__(self, ctx: PlanContext) -> None:
        self.ctx = ctx
        self.plan = AttemptPlan()
        self.command_index = ctx.commands_before
        self._handlers: dict[int, Callable[[Frame], None]] = {
            T.OUTPUT_COMMAND: self._output,
            T.SET_STATE_COMMAND: self._set_state,
            T.CLEAR_STATE_COMMAND: self._clear_state,
            T.CLEAR_ALL_STATE_COMMAND: self._clear_all,
            T.GET_EAGER_STATE_COMMAND: self._store_only,
            T.GET_EAGER_STATE_KEYS_COMMAND: self._store_only,
            T.RUN_COMMAND: self._store_only,
            T.GET_LAZY_STATE_COMMAND: self._lazy_get,
            T.GET_LAZY_STATE_KEYS_COMMAND: self._lazy_keys,
            T.SLEEP_COMMAND: self._sleep,
            T.CALL_COMMAND: self._call,
            T.ONE_WAY_CALL_COMMAND: self._one_way_call,
            T.SEND_SIGNAL_COMMAND: self._send_signal,
            T.COMPLETE_AWAKEABLE_COMMAND: self._complete_awakeable,
            T.GET_PROMISE_COMMAND: self._promise,
            T.PEEK_PROMISE_COMMAND: self._promise,
            T.COMPLETE_PROMISE_COMMAND: self._promise,
            T.PROPOSE_RUN_COMPLETION: self._run_completion,
            T.AWAITING_ON: lambda f: None,
            T.ATTACH_INVOCATION_COMMAND: self._unsupported_target,
            T.GET_INVOCATION_OUTPUT_COMMAND: self._unsupported_target,
        }

    # ---- journal ---------------------------------------------------------------------------
    def command(self, frame: Frame) -> None:
        raw = frame.encode()
        self.plan.ops += ("J", raw)
        self.plan.entries.append(raw)
        self.command_index += 1

    def note(self, key: str, frame: bytes) -> None:
        self.plan.ops += ("N", key, frame)
        self.plan.entries.append(frame)

    # ---- commands ---------------------------------------------------------------------------
    def _store_only(self, f: Frame) -> None:
        self.command(f)

    def _output(self, f: Frame) -> None:
        self.command(f)
        msg = cast(pb.OutputCommandMessage, protocol.parse_message(f))
        if msg.HasField("failure"):
            self.plan.result = (msg.failure.code or 500, msg.failure.message, b"")
        else:
            self.plan.result = (0, "", msg.value.content)

    def _writable(self) -> None:
        if self.ctx.kind not in ("exclusive", "workflow"):
            raise PlanError(f"state writes are not allowed in a {self.ctx.kind} handler")

    def _set_state(self, f: Frame) -> None:
        self._writable()
        msg = cast(pb.SetStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        self.plan.ops += ("S", msg.key, msg.value.content)
        self.ctx.state[msg.key] = msg.value.content

    def _clear_state(self, f: Frame) -> None:
        self._writable()
        msg = cast(pb.ClearStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        self.plan.ops += ("C", msg.key)
        self.ctx.state.pop(msg.key, None)

    def _clear_all(self, f: Frame) -> None:
        self._writable()
        self.command(f)
        self.plan.ops.append("A")
        self.ctx.state.clear()

    def _lazy_get(self, f: Frame) -> None:
        msg = cast(pb.GetLazyStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        value = self.ctx.state.get(msg.key)
        frame = (protocol.notification(T.GET_LAZY_STATE_COMPLETION, completion_id=cid, void=True)
                 if value is None else
                 protocol.notification(T.GET_LAZY_STATE_COMPLETION, completion_id=cid, value=value))
        self.note(f"c{cid}", frame)

    def _lazy_keys(self, f: Frame) -> None:
        msg = cast(pb.GetLazyStateKeysCommandMessage, protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        self.note(f"c{cid}", protocol.notification(
            T.GET_LAZY_STATE_KEYS_COMPLETION, completion_id=cid, state_keys=sorted(self.ctx.state)))

    def _sleep(self, f: Frame) -> None:
        msg = cast(pb.SleepCommandMessage, protocol.parse_message(f))
        self.command(f)
        self.plan.ops += ("T", msg.wake_up_time, f"w|{self.ctx.invocation_id}|{msg.result_completion_id}")
        self.plan.timers += 1

    def _child(self, msg: Any, index: int, idem: str | None, headers: Any, parent: spb.Parent | None,
               exec_ms: int | None) -> tuple[str, spb.InvokeRequest | None, tuple[int, str] | None]:
        """The callee's id and the request creating it, or a failure when the target is unknown."""
        svc_name, handler_name = msg.service_name, msg.handler_name
        meta = self.ctx.schema.services.get(svc_name)
        handler = meta.handlers.get(handler_name) if meta else None
        key: str | None = msg.key if meta is not None and meta.ty.keyed else None
        if meta is not None and meta.ty is ServiceType.WORKFLOW and handler and handler.ty is HandlerType.WORKFLOW:
            inv = workflow_invocation_id(svc_name, key or "")
        elif idem:
            inv = idempotent_invocation_id(svc_name, key, handler_name, idem)
        else:
            inv = child_invocation_id(self.ctx.invocation_id, index, svc_name, key, handler_name)
        if meta is None or handler is None:
            what = f"service '{svc_name}'" if meta is None else f"handler '{svc_name}/{handler_name}'"
            return str(inv), None, (404, f"{what} not found")
        req = spb.InvokeRequest(
            partition=partition_of(inv.partition_key, self.ctx.partitions), invocation_id=str(inv),
            service=svc_name, handler=handler_name, body=msg.parameter,
            kind=_KIND.get(handler.ty, spb.HANDLER_KIND_SERVICE) if handler.ty else spb.HANDLER_KIND_SERVICE,
            headers=[spb.Header(key=h.key, value=h.value) for h in headers],
            completion_retention_ms=_child_retention_ms(meta, handler, idem),
        )
        if key is not None:
            req.key = key
        if idem:
            req.idempotency_key = idem
        if exec_ms is not None and exec_ms > self.ctx.now_ms:
            req.execution_time_ms = exec_ms
        if parent is not None:
            req.parent.CopyFrom(parent)
        return str(inv), req, None

    def _call(self, f: Frame) -> None:
        msg = cast(pb.CallCommandMessage, protocol.parse_message(f))
        idx = self.command_index
        self.command(f)
        parent = spb.Parent(invocation_id=self.ctx.invocation_id, partition=self.ctx.partition,
                            result_completion_id=msg.result_completion_id)
        idem = msg.idempotency_key if msg.HasField("idempotency_key") and msg.idempotency_key else None
        inv, req, failure = self._child(msg, idx, idem, msg.headers, parent, None)
        self.note(f"c{msg.invocation_id_notification_idx}", protocol.notification(
            T.CALL_INVOCATION_ID_COMPLETION, completion_id=msg.invocation_id_notification_idx, invocation_id=inv))
        if req is None:
            assert failure is not None
            self.note(f"c{msg.result_completion_id}", protocol.notification(
                T.CALL_COMPLETION, completion_id=msg.result_completion_id, failure=failure))
            return
        self.plan.ops += ("O", encode_outbox_invoke(req))
        self.plan.outbox += 1

    def _one_way_call(self, f: Frame) -> None:
        msg = cast(pb.OneWayCallCommandMessage, protocol.parse_message(f))
        idx = self.command_index
        self.command(f)
        idem = msg.idempotency_key if msg.HasField("idempotency_key") and msg.idempotency_key else None
        inv, req, _ = self._child(msg, idx, idem, msg.headers, None, msg.invoke_time or None)
        self.note(f"c{msg.invocation_id_notification_idx}", protocol.notification(
            T.CALL_INVOCATION_ID_COMPLETION, completion_id=msg.invocation_id_notification_idx, invocation_id=inv))
        if req is not None:
            self.plan.ops += ("O", encode_outbox_invoke(req))
            self.plan.outbox += 1

    def _signal_to(self, target: InvocationId, key: str, frame: bytes) -> None:
        p = partition_of(target.partition_key, self.ctx.partitions)
        self.plan.ops += ("O", encode_outbox_notify(p, str(target), key, frame))
        self.plan.outbox += 1

    def _signal_frame(self, msg: Any, signal_id: int | None, name: str | None) -> bytes:
        kw: dict[str, Any] = {"signal_id": signal_id} if signal_id is not None else {"signal_name": name}
        if msg.HasField("failure"):
            kw["failure"] = msg.failure
        elif msg.HasField("value"):
            kw["value"] = msg.value.content
        else:
            kw["void"] = True
        return protocol.notification(T.SIGNAL_NOTIFICATION, **kw)

    def _send_signal(self, f: Frame) -> None:
        msg = cast(pb.SendSignalCommandMessage, protocol.parse_message(f))
        self.command(f)
        try:
            target = InvocationId.parse(msg.target_invocation_id)
        except ValueError:
            return  # a signal to a malformed id goes nowhere, as to an unknown invocation
        if msg.HasField("name"):
            self._signal_to(target, named_signal_key(msg.name), self._signal_frame(msg, None, msg.name))
        else:
            self._signal_to(target, f"s{msg.idx}", self._signal_frame(msg, msg.idx, None))

    def _complete_awakeable(self, f: Frame) -> None:
        msg = cast(pb.CompleteAwakeableCommandMessage, protocol.parse_message(f))
        self.command(f)
        try:
            target, idx = parse_awakeable_id(msg.awakeable_id)
        except AwakeableIdError:
            return
        self._signal_to(target, f"s{idx}", self._signal_frame(msg, idx, None))

    def _promise(self, f: Frame) -> None:
        if self.ctx.kind not in ("workflow", "shared") or self.ctx.key is None:
            raise PlanError("durable promises are only available to workflow handlers")
        msg: Any = protocol.parse_message(f)  # Get-, Peek- or CompletePromiseCommandMessage
        self.command(f)
        cid = str(msg.result_completion_id)
        if f.type == T.GET_PROMISE_COMMAND:
            self.plan.ops += ("PG", msg.key, cid)
        elif f.type == T.PEEK_PROMISE_COMMAND:
            self.plan.ops += ("PP", msg.key, cid)
        else:
            note = pb.NotificationTemplate()
            if msg.HasField("completion_failure"):
                note.failure.CopyFrom(msg.completion_failure)
            else:
                note.value.SetInParent()
                note.value.content = msg.completion_value.content
            self.plan.ops += ("PC", msg.key, cid, note.SerializeToString(), _failure_field(*PROMISE_ALREADY_COMPLETED))

    def _run_completion(self, f: Frame) -> None:
        msg = cast(pb.ProposeRunCompletionMessage, protocol.parse_message(f))
        cid = msg.result_completion_id
        if msg.HasField("failure"):
            frame = protocol.notification(T.RUN_COMPLETION, completion_id=cid, failure=msg.failure)
        else:
            frame = protocol.notification(T.RUN_COMPLETION, completion_id=cid, value=msg.value)
        self.note(f"c{cid}", frame)

    # ---- terminals ----------------------------------------------------------------------------
    def _suspension(self, f: Frame) -> None:
        msg = cast(pb.SuspensionMessage, protocol.parse_message(f))
        keys: list[str] = []
        if msg.HasField("awaiting_on"):
            _flatten(msg.awaiting_on, keys)
        keys += [f"c{c}" for c in msg.waiting_completions]
        keys += [f"s{s}" for s in msg.waiting_signals]
        keys += [named_signal_key(n) for n in msg.waiting_named_signals]
        if not keys:
            raise PlanError("suspension without anything to wait for")
        self.plan.terminal = "SUSPEND"
        self.plan.awaiting = " " + " ".join(dict.fromkeys(keys)) + " "

    def _unsupported_target(self, f: Frame) -> None:
        """Attach / get-output commands: stored, and answered with a terminal failure for now."""
        msg = cast("pb.AttachInvocationCommandMessage | pb.GetInvocationOutputCommandMessage",
                   protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        note_type = (T.ATTACH_INVOCATION_COMPLETION if f.type == T.ATTACH_INVOCATION_COMMAND
                     else T.GET_INVOCATION_OUTPUT_COMPLETION)
        self.note(f"c{cid}", protocol.notification(note_type, completion_id=cid, failure=UNSUPPORTED_TARGET))

    def run(self, frames: list[Frame]) -> AttemptPlan:
        for i, f in enumerate(frames):
            t = f.type
            if t in (T.END, T.SUSPENSION, T.ERROR) and i != len(frames) - 1:
                raise PlanError(f"frames after the terminal message 0x{t:04X}")
            if t == T.END:
                if self.plan.result is None:
                    raise PlanError("End without an Output")
                self.plan.terminal = "END"
                return self._finish()
            if t == T.SUSPENSION:
                self._suspension(f)
                return self._finish()
            if t == T.ERROR:
                msg = cast(pb.ErrorMessage, protocol.parse_message(f))
                self.plan.terminal = "ERROR"
                self.plan.error_code = msg.code or 500
                self.plan.error_message = msg.message
                if msg.HasField("next_retry_delay"):
                    self.plan.next_retry_delay_ms = msg.next_retry_delay
                self.plan.error_behavior = msg.behavior
                return self._finish()
            if protocol.is_custom_entry(t):
                self.command(f)  # opaque to the runtime: stored and replayed as it is
                continue
            handler = self._handlers.get(t)
            if handler is None:
                raise PlanError(f"unexpected message 0x{t:04X} from the SDK")
            handler(f)
        raise PlanError("the response ended without End, Suspension or Error")

    def _finish(self) -> AttemptPlan:
        if self.plan.terminal == "END":
            # The journal is deleted with the completion: do not ship entries that die at once.
            ops, out = self.plan.ops, []
            i = 0
            while i < len(ops):
                op = ops[i]
                width = _OP_WIDTH[op]
                if op not in ("J", "N"):
                    out += ops[i:i + width]
                i += width
            self.plan.ops = out
        return self.plan


_OP_WIDTH = {"J": 2, "N": 3, "S": 3, "C": 2, "A": 1, "T": 3, "O": 2, "PG": 3, "PP": 3, "PC": 5}


def _flatten(future: Any, out: list[str]) -> None:
    out += [f"c{c}" for c in future.waiting_completions]
    out += [f"s{s}" for s in future.waiting_signals]
    out += [named_signal_key(n) for n in future.waiting_named_signals]
    for nested in future.nested_futures:
        _flatten(nested, out)


def plan_attempt(frames: list[Frame], ctx: PlanContext) -> AttemptPlan:
    """Plan the `apply` transition for one attempt's response frames. Raises PlanError."""
    try:
        return _Planner(ctx).run(frames)
    except protocol.ProtocolError as e:
        raise PlanError(str(e)) from e


def count_commands(entries: list[bytes]) -> int:
    """Commands among stored journal entries (each entry starts with its u16 type code)."""
    n = 0
    for e in entries:
        t = (e[0] << 8) | e[1]
        if 0x0400 <= t < 0x8000:
            n += 1
    return n
