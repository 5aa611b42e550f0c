"""Turns the frames of one attempt into the ops of one `apply` transition (pure).

The SDK's response to one request-response attempt is a list of frames ending with End,
Suspension or Error. `plan_attempt` walks them in order and produces:

- the journal entries to append (commands as received; notifications the runtime produces
  at once: lazy state, run results, call invocation ids),
- their effects as typed ops (`partition.transition.Op`: state writes, timers, outbox messages,
  workflow promises),
- the terminal: END (result), SUSPEND (awaited notification keys) or ERROR (retry).

A Call or OneWayCall (delayed or not) to a service or handler the schema snapshot does not know
fails its precondition, as in Restate (error code RT0018): the whole attempt is rejected, so
nothing of it is stored (the journal stays as it was) and the invocation backs off under its
retry policy with `[500 Internal] cannot process command Command: OneWayCall (command index N)
because of a failed precondition: the service handler Ghost/hello was not found`. A later
attempt, once the target is registered, goes through.

AttachInvocation and GetInvocationOutput name their target by invocation id, by idempotent
request (service, key?, handler, idempotency key) or by workflow (service, key); the id is
derived as the ingress derives it. The command is journaled and an outbox entry asks the target's
partition (`attach.lua`) for the result: an attach is answered when the target completes (at once
when it is completed), a get-output at once (void while it runs); an unknown target, or a
malformed id (answered here, without asking), gets `[404] not found` as in Restate.

Outbox entries (a call or one-way call, a notification, an attach) are encoded by `outbox_codec.py`.

`AttemptPlanner` plans the same frames one at a time, for a bidirectional stream that stays open
while the SDK waits: `needs_flush` names the frames after which what was planned must be stored
before the stream goes on (`take_batch`), and `finish` gives the terminal's part. The batches and
the final part add up, in order, to what `plan_attempt` gives for the whole list.

Nothing here does I/O, so each vector scenario can drive it directly in a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from partition import keys
from partition.invocation import HandlerKind, Result, completion_key, named_signal_key, signal_key
from partition.outbox_codec import (
    ATTACH_NOTE_KEY,
    OUTPUT_NOTE_KEY,
    encode_outbox_attach,
    encode_outbox_invoke,
    encode_outbox_notify,
)
from partition.transition import (
    AddTimer,
    ClearAllState,
    ClearState,
    CompletePromise,
    GetPromise,
    JournalEntry,
    NotificationEntry,
    Op,
    OutboxEntry,
    PeekPromise,
    PromiseExpiry,
    SetState,
    TerminalKind,
    is_journal_op,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import Frame
from shardgate.protocol import MessageType as T
from shardgate.schema import (
    HandlerMeta,
    HandlerType,
    SchemaSnapshot,
    ServiceMeta,
    ServiceType,
    effective_settings,
)
from shardgate.sharding import (
    AwakeableIdError,
    InvocationId,
    child_invocation_id,
    idempotent_invocation_id,
    parse_awakeable_id,
    partition_of,
    workflow_invocation_id,
)

CHILD_DEDUP_RETENTION_MS = 10 * 60 * 1000  # a called child's result is kept this long: re-delivered calls dedupe
PROMISE_ALREADY_COMPLETED = (409, "promise was already completed")
CANCEL_SIGNAL = 1
DEFAULT_PROMISE_RETENTION_MS = 24 * 3600 * 1000
"""How long promises written for a workflow key with no run last (Restate's default workflow retention)."""
TARGET_NOT_FOUND = (404, "not found")  # Restate's NOT_FOUND_INVOCATION_ERROR: attach / get-output of no invocation

PRECONDITION_FAILED = "RT0018"  # Restate's error code: a command's precondition failed
REJECTED_CODE = 500  # the failure code of a rejected attempt ...
REJECTED_CODE_NAME = "Internal"  # ... and its name, as Restate prints it: "[500 Internal] ..."


class PlanError(Exception):
    """The SDK sent something the runtime cannot accept (a protocol violation): retry the attempt."""


class CommandRejected(Exception):
    """A command of the attempt fails a precondition (the target of a call is not registered):
    the attempt is rejected as a whole. The message is Restate's text for it."""

    def __init__(self, command: str, index: int, reason: str) -> None:
        super().__init__(f"cannot process command Command: {command} (command index {index}) "
                         f"because of a failed precondition: {reason}")


@dataclass(slots=True)
class PlanContext:
    invocation_id: str
    partition: int
    partitions: int
    kind: HandlerKind
    service: str
    key: str | None
    state: dict[bytes, bytes]  # the state as of the attempt's start; updated by planned writes
    commands_before: int  # commands in the replayed journal, Input included
    now_ms: int
    schema: SchemaSnapshot
    journal_kept: bool = False  # the journal outlives the completion (journal retention): END ships its entries
    scope: str | None = None  # the invocation's scope (a workflow's run id depends on it)


@dataclass(slots=True)
class AttemptPlan:
    ops: list[Op] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)  # journal entries appended, in order
    terminal: TerminalKind | None = None
    result: Result | None = None  # END
    awaiting: str = ""  # SUSPEND: " c1 s1 nname "
    error_code: int = 0  # ERROR
    error_message: str = ""
    error_code_name: str = ""  # ERROR raised by the runtime: the code's name ("Internal")
    restate_code: str = ""  # ERROR raised by the runtime: Restate's error code ("RT0018")
    next_retry_delay_ms: int | None = None
    error_behavior: int = 0  # v7 ErrorMessage.behavior: 0 retry, 1 pause, 2 fail
    timers: int = 0
    outbox: int = 0

    @property
    def grew(self) -> bool:
        return bool(self.entries)

    @property
    def failure_text(self) -> str:
        """An ERROR attempt's failure as `last_failure` records it: `[500] message` for what the
        SDK reported, `[500 Internal] message` for an attempt the runtime rejected."""
        code = f"{self.error_code} {self.error_code_name}" if self.error_code_name else str(self.error_code)
        return f"[{code}] {self.error_message}"


def rejected_plan(rejection: CommandRejected) -> AttemptPlan:
    """The plan of an attempt rejected at a command: no ops, no journal entries (nothing of the
    attempt is stored), an ERROR terminal that backs off under the retry policy."""
    return AttemptPlan(terminal=TerminalKind.ERROR, error_code=REJECTED_CODE, error_message=str(rejection),
                       error_code_name=REJECTED_CODE_NAME, restate_code=PRECONDITION_FAILED)


def _child_retention_ms(meta: ServiceMeta, handler: HandlerMeta, idem: str | None) -> tuple[int, int]:
    """How long a child's result and journal are kept (Restate `compute_retention`, as from the
    ingress): a workflow run or an idempotent call keeps its result for its retention (the run-once
    and dedup guarantees depend on it) and its journal for the journal retention, at most as long;
    any other child keeps both for the journal retention, its result at least long enough for a
    re-delivered call to find it."""
    settings = effective_settings(meta, handler)
    journal_ms = settings.journal_retention_ms
    if handler.ty is HandlerType.WORKFLOW or idem:
        completion_ms = settings.completion_retention_ms
        return completion_ms, min(journal_ms, completion_ms)
    return max(CHILD_DEDUP_RETENTION_MS, journal_ms), journal_ms


class _Planner:
    """Plans frame by frame into `plan`; the terminal fields stay on it across batches."""

    __slots__ = ("_promises_written", "command_index", "ctx", "plan", "terminal_type")

    def __init__(self, ctx: PlanContext) -> None:
        self.ctx = ctx
        self.plan = AttemptPlan()
        self.command_index = ctx.commands_before
        self._promises_written = False
        self.terminal_type: int | None = None  # the type of the terminal frame, once fed

    # ---- journal ---------------------------------------------------------------------------
    def command(self, frame: Frame) -> None:
        raw = frame.encode()
        self.plan.ops.append(JournalEntry(raw))
        self.plan.entries.append(raw)
        self.command_index += 1

    def note(self, key: str, frame: bytes) -> None:
        self.plan.ops.append(NotificationEntry(key, frame))
        self.plan.entries.append(frame)

    # ---- commands ---------------------------------------------------------------------------
    def _store_only(self, f: Frame) -> None:
        self.command(f)

    def _output(self, f: Frame) -> None:
        self.command(f)
        msg = cast(pb.OutputCommandMessage, protocol.parse_message(f))
        if msg.HasField("failure"):
            self.plan.result = Result.of_failure(msg.failure, 500)
        else:
            self.plan.result = Result(0, "", msg.value.content)

    def _writable(self) -> None:
        if not self.ctx.kind.writes_state:
            raise PlanError(f"state writes are not allowed in a {self.ctx.kind.value} handler")

    def _set_state(self, f: Frame) -> None:
        self._writable()
        msg = cast(pb.SetStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        self.plan.ops.append(SetState(msg.key, msg.value.content))
        self.ctx.state[msg.key] = msg.value.content

    def _clear_state(self, f: Frame) -> None:
        self._writable()
        msg = cast(pb.ClearStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        self.plan.ops.append(ClearState(msg.key))
        self.ctx.state.pop(msg.key, None)

    def _clear_all(self, f: Frame) -> None:
        self._writable()
        self.command(f)
        self.plan.ops.append(ClearAllState())
        self.ctx.state.clear()

    def _lazy_get(self, f: Frame) -> None:
        msg = cast(pb.GetLazyStateCommandMessage, protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        value = self.ctx.state.get(msg.key)
        frame = (protocol.notification(T.GET_LAZY_STATE_COMPLETION, completion_id=cid, void=True)
                 if value is None else
                 protocol.notification(T.GET_LAZY_STATE_COMPLETION, completion_id=cid, value=value))
        self.note(completion_key(cid), frame)

    def _lazy_keys(self, f: Frame) -> None:
        msg = cast(pb.GetLazyStateKeysCommandMessage, protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        self.note(completion_key(cid), protocol.notification(
            T.GET_LAZY_STATE_KEYS_COMPLETION, completion_id=cid, state_keys=sorted(self.ctx.state)))

    def _sleep(self, f: Frame) -> None:
        msg = cast(pb.SleepCommandMessage, protocol.parse_message(f))
        self.command(f)
        member = keys.timer_member(keys.TimerKind.WAKE, self.ctx.invocation_id, msg.result_completion_id)
        self.plan.ops.append(AddTimer(msg.wake_up_time, member))
        self.plan.timers += 1

    def _target(self, command: str, index: int, service: str, handler: str) -> tuple[ServiceMeta, HandlerMeta]:
        """The called service and handler. Raises CommandRejected when the schema snapshot does
        not know one of them (it may be registered before the next attempt)."""
        meta = self.ctx.schema.services.get(service)
        handler_meta = meta.handlers.get(handler) if meta is not None else None
        if meta is None or handler_meta is None:
            raise CommandRejected(command, index, f"the service handler {service}/{handler} was not found")
        return meta, handler_meta

    def _child(self, msg: Any, command: str, idem: str | None, parent: spb.Parent | None,
               exec_ms: int | None) -> spb.InvokeRequest:
        """The request creating the callee of the command about to be journaled (a Call or
        OneWayCall message). Raises CommandRejected for an unknown target."""
        index = self.command_index
        svc_name, handler_name = msg.service_name, msg.handler_name
        meta, handler = self._target(command, index, svc_name, handler_name)
        key: str | None = msg.key if meta.ty.keyed else None
        if meta.ty is ServiceType.WORKFLOW and handler.ty is HandlerType.WORKFLOW:
            inv = workflow_invocation_id(svc_name, key or "")
        elif idem:
            inv = idempotent_invocation_id(svc_name, key, handler_name, idem)
        else:
            inv = child_invocation_id(self.ctx.invocation_id, index, svc_name, key, handler_name)
        req = spb.InvokeRequest(
            partition=partition_of(inv.partition_key, self.ctx.partitions), invocation_id=str(inv),
            service=svc_name, handler=handler_name, body=msg.parameter,
            kind=HandlerKind.of_handler(handler.ty).to_proto(),
            headers=[spb.Header(key=h.key, value=h.value) for h in msg.headers],
            invoked_by=f"{self.ctx.invocation_id}|{self.ctx.service}",
        )
        req.completion_retention_ms, req.journal_retention_ms = _child_retention_ms(meta, handler, idem)
        if key is not None:
            req.key = key
        if idem:
            req.idempotency_key = idem
        if exec_ms is not None and exec_ms > self.ctx.now_ms:
            req.execution_time_ms = exec_ms
        if parent is not None:
            req.parent.CopyFrom(parent)
        return req

    def _call(self, f: Frame) -> None:
        msg = cast(pb.CallCommandMessage, protocol.parse_message(f))
        parent = spb.Parent(invocation_id=self.ctx.invocation_id, partition=self.ctx.partition,
                            result_completion_id=msg.result_completion_id)
        req = self._child(msg, "Call", _idempotency_key(msg), parent, None)
        self.command(f)
        self._invocation_id_note(msg.invocation_id_notification_idx, req.invocation_id)
        self._outbox(encode_outbox_invoke(req))

    def _invocation_id_note(self, completion_id: int, invocation_id: str) -> None:
        self.note(completion_key(completion_id), protocol.notification(
            T.CALL_INVOCATION_ID_COMPLETION, completion_id=completion_id, invocation_id=invocation_id))

    def _outbox(self, message: bytes) -> None:
        self.plan.ops.append(OutboxEntry(message))
        self.plan.outbox += 1

    def _one_way_call(self, f: Frame) -> None:
        msg = cast(pb.OneWayCallCommandMessage, protocol.parse_message(f))
        req = self._child(msg, "OneWayCall", _idempotency_key(msg), None, msg.invoke_time or None)
        self.command(f)
        self._invocation_id_note(msg.invocation_id_notification_idx, req.invocation_id)
        self._outbox(encode_outbox_invoke(req))

    def _signal_to(self, target: InvocationId, key: str, frame: bytes) -> None:
        p = partition_of(target.partition_key, self.ctx.partitions)
        self._outbox(encode_outbox_notify(p, str(target), key, frame))

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
            self._signal_to(target, signal_key(msg.idx), self._signal_frame(msg, msg.idx, None))

    def _complete_awakeable(self, f: Frame) -> None:
        msg = cast(pb.CompleteAwakeableCommandMessage, protocol.parse_message(f))
        self.command(f)
        try:
            target, idx = parse_awakeable_id(msg.awakeable_id)
        except AwakeableIdError:
            return
        self._signal_to(target, signal_key(idx), self._signal_frame(msg, idx, None))

    def _promise(self, f: Frame) -> None:
        if self.ctx.kind not in (HandlerKind.WORKFLOW, HandlerKind.SHARED) or self.ctx.key is None:
            raise PlanError("durable promises are only available to workflow handlers")
        msg: Any = protocol.parse_message(f)  # Get-, Peek- or CompletePromiseCommandMessage
        self.command(f)
        cid = msg.result_completion_id
        if self.ctx.kind is HandlerKind.SHARED and f.type != T.PEEK_PROMISE_COMMAND:
            self._promises_written = True  # a waiter or a value: it must not outlive the workflow
        if f.type == T.GET_PROMISE_COMMAND:
            self.plan.ops.append(GetPromise(msg.key, cid))
        elif f.type == T.PEEK_PROMISE_COMMAND:
            self.plan.ops.append(PeekPromise(msg.key, cid))
        else:
            # The result field as the waiters get it; a failure keeps its metadata.
            note = pb.NotificationTemplate()
            if msg.HasField("completion_failure"):
                note.failure.CopyFrom(msg.completion_failure)
            else:
                note.value.SetInParent()
                note.value.content = msg.completion_value.content
            self.plan.ops.append(CompletePromise(msg.key, cid, note.SerializeToString()))

    def _run_completion(self, f: Frame) -> None:
        msg = cast(pb.ProposeRunCompletionMessage, protocol.parse_message(f))
        cid = msg.result_completion_id
        if msg.HasField("failure"):
            frame = protocol.notification(T.RUN_COMPLETION, completion_id=cid, failure=msg.failure)
        else:
            frame = protocol.notification(T.RUN_COMPLETION, completion_id=cid, value=msg.value)
        self.note(completion_key(cid), frame)

    # ---- terminals ----------------------------------------------------------------------------
    def _suspension(self, f: Frame) -> None:
        msg = cast(pb.SuspensionMessage, protocol.parse_message(f))
        awaited: list[str] = []
        if msg.HasField("awaiting_on"):
            _flatten(msg.awaiting_on, awaited)
        _awaited_keys(msg, awaited)
        if not awaited:
            raise PlanError("suspension without anything to wait for")
        self.plan.terminal = TerminalKind.SUSPEND
        self.plan.awaiting = " " + " ".join(dict.fromkeys(awaited)) + " "

    def _attach(self, f: Frame) -> None:
        """Attach / get-output: stored; the target's partition is asked for its result through
        the outbox. A malformed or missing target is answered at once with not found."""
        msg = cast("pb.AttachInvocationCommandMessage | pb.GetInvocationOutputCommandMessage",
                   protocol.parse_message(f))
        self.command(f)
        cid = msg.result_completion_id
        attach = f.type == T.ATTACH_INVOCATION_COMMAND
        target = attach_target(msg)
        if target is None:
            note_type = T.ATTACH_INVOCATION_COMPLETION if attach else T.GET_INVOCATION_OUTPUT_COMPLETION
            self.note(completion_key(cid), protocol.notification(note_type, completion_id=cid,
                                                                 failure=TARGET_NOT_FOUND))
            return
        p = partition_of(target.partition_key, self.ctx.partitions)
        self._outbox(encode_outbox_attach(p, str(target), ATTACH_NOTE_KEY if attach else OUTPUT_NOTE_KEY,
                                          self.ctx.invocation_id, self.ctx.partition, cid))

    def feed(self, f: Frame) -> None:
        """Plan one frame. Raises PlanError, CommandRejected or protocol.ProtocolError."""
        t = f.type
        if self.terminal_type is not None:
            raise PlanError(f"frames after the terminal message 0x{self.terminal_type:04X}")
        if t == T.END:
            if self.plan.result is None:
                raise PlanError("End without an Output")
            self.plan.terminal = TerminalKind.END
        elif t == T.SUSPENSION:
            self._suspension(f)
        elif t == T.ERROR:
            msg = cast(pb.ErrorMessage, protocol.parse_message(f))
            self.plan.terminal = TerminalKind.ERROR
            self.plan.error_code = msg.code or 500
            self.plan.error_message = msg.message
            if msg.HasField("next_retry_delay"):
                self.plan.next_retry_delay_ms = msg.next_retry_delay
            self.plan.error_behavior = msg.behavior
        elif protocol.is_custom_entry(t):
            self.command(f)  # opaque to the runtime: stored and replayed as it is
            return
        else:
            handler = _HANDLERS.get(t)
            if handler is None:
                raise PlanError(f"unexpected message 0x{t:04X} from the SDK")
            handler(self, f)
            return
        self.terminal_type = t

    def finish(self) -> AttemptPlan:
        """The plan with its terminal; raises PlanError when no terminal frame was fed."""
        if self.terminal_type is None:
            raise PlanError("the response ended without End, Suspension or Error")
        if self._promises_written:
            self.plan.ops.append(self._promise_expiry())
        if self.plan.terminal is TerminalKind.END and not self.ctx.journal_kept:
            # The journal is deleted with the completion: do not ship entries that die at once.
            self.plan.ops = without_journal(self.plan.ops)
        return self.plan

    def _promise_expiry(self) -> PromiseExpiry:
        """The expiry op for the promises a shared handler wrote: the run's id, and the workflow's
        completion retention (Restate's default when no run handler is registered)."""
        run_id = workflow_invocation_id(self.ctx.service, self.ctx.key or "", self.ctx.scope)
        meta = self.ctx.schema.services.get(self.ctx.service)
        run = next((h for h in meta.handlers.values() if h.ty is HandlerType.WORKFLOW), None) if meta else None
        retention_ms = effective_settings(meta, run).completion_retention_ms if run is not None else 0
        return PromiseExpiry(str(run_id), retention_ms or DEFAULT_PROMISE_RETENTION_MS)


_HANDLERS: dict[int, Callable[[_Planner, Frame], None]] = {
    T.OUTPUT_COMMAND: _Planner._output,
    T.SET_STATE_COMMAND: _Planner._set_state,
    T.CLEAR_STATE_COMMAND: _Planner._clear_state,
    T.CLEAR_ALL_STATE_COMMAND: _Planner._clear_all,
    T.GET_EAGER_STATE_COMMAND: _Planner._store_only,
    T.GET_EAGER_STATE_KEYS_COMMAND: _Planner._store_only,
    T.RUN_COMMAND: _Planner._store_only,
    T.GET_LAZY_STATE_COMMAND: _Planner._lazy_get,
    T.GET_LAZY_STATE_KEYS_COMMAND: _Planner._lazy_keys,
    T.SLEEP_COMMAND: _Planner._sleep,
    T.CALL_COMMAND: _Planner._call,
    T.ONE_WAY_CALL_COMMAND: _Planner._one_way_call,
    T.SEND_SIGNAL_COMMAND: _Planner._send_signal,
    T.COMPLETE_AWAKEABLE_COMMAND: _Planner._complete_awakeable,
    T.GET_PROMISE_COMMAND: _Planner._promise,
    T.PEEK_PROMISE_COMMAND: _Planner._promise,
    T.COMPLETE_PROMISE_COMMAND: _Planner._promise,
    T.PROPOSE_RUN_COMPLETION: _Planner._run_completion,
    T.AWAITING_ON: lambda planner, f: None,
    T.ATTACH_INVOCATION_COMMAND: _Planner._attach,
    T.GET_INVOCATION_OUTPUT_COMMAND: _Planner._attach,
}
"""What each non-terminal, non-custom frame type does (built once: planning an attempt builds no table)."""

FLUSH_TYPES = frozenset({
    T.PROPOSE_RUN_COMPLETION, T.GET_LAZY_STATE_COMMAND, T.GET_LAZY_STATE_KEYS_COMMAND, T.SLEEP_COMMAND,
    T.CALL_COMMAND, T.ONE_WAY_CALL_COMMAND, T.SEND_SIGNAL_COMMAND, T.COMPLETE_AWAKEABLE_COMMAND,
    T.GET_PROMISE_COMMAND, T.PEEK_PROMISE_COMMAND, T.COMPLETE_PROMISE_COMMAND,
    T.ATTACH_INVOCATION_COMMAND, T.GET_INVOCATION_OUTPUT_COMMAND,
})
"""Frame types whose answer or effect the SDK may wait for while its stream stays open: a run's
result, lazy state, a timer, a call and its callee id, a signal or promise, an attach. The
frames before and including one of them must be stored before the stream goes on."""


def needs_flush(frame: Frame) -> bool:
    """Whether the batch planned so far must be stored now (`AttemptPlanner.take_batch`) rather
    than held for the next flush or the terminal: a frame in `FLUSH_TYPES`, or any frame that asks
    for an acknowledgement (REQUESTED_ACK)."""
    return frame.type in FLUSH_TYPES or frame.requested_ack


@dataclass(slots=True)
class Batch:
    """The part of an attempt planned since the last `take_batch`: stored by one transition that
    keeps the attempt open. Ops and entries in frame order."""

    ops: list[Op]
    entries: list[bytes]
    timers: int
    outbox: int


class AttemptPlanner:
    """Plans one attempt frame by frame, for a stream whose frames arrive while the attempt runs.

    `feed` each frame as it is decoded; when `needs_flush(frame)` says so, `take_batch` hands over
    what was planned since the last batch (its ops go to Redis before the stream goes on);
    `finish` after the terminal frame gives the terminal's plan with the ops not taken yet.
    Taking batches at any points and finishing yields, in order, the ops `plan_attempt` gives for
    the same frames (an END that drops the journal drops only the ops of the last part: the
    earlier batches' entries go with the journal). Run state that spans batches (the command
    index, the state as planned, the Output's result, written promises) is kept here.

    `feed` raises PlanError for a protocol violation and CommandRejected for a command whose
    target is unknown; after either the attempt is over (the planner is not reused).
    """

    __slots__ = ("_planner", "grew")

    def __init__(self, ctx: PlanContext) -> None:
        self._planner = _Planner(ctx)
        self.grew = False  # entries were taken in a batch during this attempt

    @property
    def done(self) -> bool:
        """A terminal frame (End, Suspension, Error) was fed."""
        return self._planner.terminal_type is not None

    @property
    def pending(self) -> bool:
        """Something was planned since the last batch (ops or entries not taken yet)."""
        plan = self._planner.plan
        return bool(plan.ops or plan.entries)

    def feed(self, frame: Frame) -> None:
        try:
            self._planner.feed(frame)
        except protocol.ProtocolError as e:
            raise PlanError(str(e)) from e

    def take_batch(self) -> Batch:
        plan = self._planner.plan
        batch = Batch(plan.ops, plan.entries, plan.timers, plan.outbox)
        plan.ops, plan.entries, plan.timers, plan.outbox = [], [], 0, 0
        self.grew = self.grew or bool(batch.entries)
        return batch

    def finish(self) -> AttemptPlan:
        return self._planner.finish()


def attach_target(msg: pb.AttachInvocationCommandMessage | pb.GetInvocationOutputCommandMessage,
                  ) -> InvocationId | None:
    """The invocation an attach / get-output command names, its id derived as the ingress derives
    it (`shardgate.sharding`); None when the target is missing or the id is malformed."""
    which = msg.WhichOneof("target")
    if which == "invocation_id":
        try:
            return InvocationId.parse(msg.invocation_id)
        except ValueError:
            return None
    if which == "idempotent_request_target":
        t = msg.idempotent_request_target
        return idempotent_invocation_id(t.service_name, t.service_key if t.HasField("service_key") else None,
                                        t.handler_name, t.idempotency_key, t.scope or None)
    if which == "workflow_target":
        w = msg.workflow_target
        return workflow_invocation_id(w.workflow_name, w.workflow_key, w.scope or None)
    return None


def _idempotency_key(msg: Any) -> str | None:
    """A Call's / OneWayCall's idempotency key; None when absent or empty."""
    return msg.idempotency_key if msg.HasField("idempotency_key") and msg.idempotency_key else None


def without_journal(ops: list[Op]) -> list[Op]:
    """The ops that still matter when the attempt completes the invocation (its journal goes)."""
    return [op for op in ops if not is_journal_op(op)]


def _awaited_keys(awaiting: Any, out: list[str]) -> None:
    """The notification keys a Suspension (v5/v6) or a Future (v7) waits for."""
    out += [completion_key(c) for c in awaiting.waiting_completions]
    out += [signal_key(s) for s in awaiting.waiting_signals]
    out += [named_signal_key(n) for n in awaiting.waiting_named_signals]


def _flatten(future: Any, out: list[str]) -> None:
    _awaited_keys(future, out)
    for nested in future.nested_futures:
        _flatten(nested, out)


def plan_attempt(frames: list[Frame], ctx: PlanContext) -> AttemptPlan:
    """Plan the `apply` transition for one attempt's response frames; an attempt rejected at a
    command (`CommandRejected`) is an ERROR plan without ops (`rejected_plan`). Raises PlanError."""
    planner = _Planner(ctx)
    last = len(frames) - 1
    try:
        for i, f in enumerate(frames):
            if i != last and f.type in _TERMINAL_TYPES:
                raise PlanError(f"frames after the terminal message 0x{f.type:04X}")
            planner.feed(f)
        return planner.finish()
    except CommandRejected as e:
        return rejected_plan(e)
    except protocol.ProtocolError as e:
        raise PlanError(str(e)) from e


_TERMINAL_TYPES = frozenset({T.END, T.SUSPENSION, T.ERROR})


def count_commands(entries: list[bytes]) -> int:
    """Commands among stored journal entries (each entry starts with its u16 type code)."""
    n = 0
    for e in entries:
        t = (e[0] << 8) | e[1]
        if 0x0400 <= t < 0x8000:
            n += 1
    return n
