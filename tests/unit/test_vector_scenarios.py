"""The runtime side of every captured restate-sdk 1.2.0 exchange (``<shared>/spec/vectors``).

For each scenario the SDK's response frames are fed to ``effects.plan_attempt`` (pure) and the
resulting ``apply`` transition is checked op by op: journal appends (byte-identical to the SDK's
command frames), runtime-produced notifications, state ops, timers, outbox messages, workflow
promise ops and the terminal (END result / SUSPEND keys / ERROR code, message and delay).

Resume scenarios also check replay consistency: the previous scenario's plan is applied to a
small model of what ``apply.lua`` / ``notify.lua`` keep in Redis (``Stored``), external events
are delivered the way the worker delivers them (timer firing, call results, signals, promise
completion), and the request the real ``Invoker`` builds from that stored state is compared
with the vector's request: Input and journal byte-for-byte, Start field by field. Where the
stand-in runtime that captured the vectors made different choices than ours (Start.debug_id,
random_seed, partial_state for plain services, the callee id of a call, wall-clock durations),
the comparison is structural and a comment says so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from partition import effects
from partition.effects import AttemptPlan, PlanContext, PlanError, count_commands, plan_attempt
from partition.invocation import VOID_FIELD, HandlerKind, Result, named_signal_key
from partition.invoker import AttemptInput, Invoker, random_seed
from partition.outbox_codec import decode_outbox
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
    PromiseExpiry,
    SetState,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.protocol import (
    Frame,
    decode_frames,
    encode_frame,
    encode_message,
    input_command,
    is_command,
    notification,
    parse_message,
)
from shardgate.protocol import MessageType as T
from shardgate.schema import (
    DAY_MS,
    Deployment,
    HandlerMeta,
    HandlerType,
    SchemaSnapshot,
    ServiceMeta,
    ServiceType,
)
from shardgate.sharding import (
    InvocationId,
    awakeable_id,
    child_invocation_id,
    parse_awakeable_id,
    partition_of,
    workflow_invocation_id,
)
from tests import testdata

# ---- vectors -------------------------------------------------------------------------------------


VECTORS_DIR = testdata.VECTORS_DIR
if not VECTORS_DIR.is_dir():  # test data the suite depends on: a missing copy is an error, not a skip
    raise RuntimeError(f"no protocol vectors in {VECTORS_DIR}: restore tests/data/vectors (git) or re-capture them with `make vectors`")


def _split(data: bytes) -> list[tuple[Frame, bytes]]:
    """Frames with the exact bytes each occupied in ``data``."""
    out, pos = [], 0
    for f in decode_frames(data):
        out.append((f, data[pos:pos + len(f)]))
        pos += len(f)
    assert pos == len(data)
    return out


@dataclass(frozen=True)
class Vector:
    name: str
    raw: dict[str, Any]
    request: list[tuple[Frame, bytes]]
    response: list[tuple[Frame, bytes]]

    @property
    def version(self) -> int:
        return int(self.raw["protocol_version"])

    @property
    def start(self) -> pb.StartMessage:
        f, _ = self.request[0]
        assert f.type == T.START
        return parse_message(f)

    @property
    def inv(self) -> InvocationId:
        return InvocationId.from_bytes(self.start.id)

    @property
    def invocation_id(self) -> str:
        """Our runtime's printable id for the vector's Start.id (the invoker sends inv.to_bytes())."""
        return str(self.inv)

    @property
    def input_value(self) -> bytes:
        f, _ = self.request[1]
        assert f.type == T.INPUT_COMMAND
        return parse_message(f).value.content

    @property
    def state_map(self) -> dict[bytes, bytes]:
        return {e.key: e.value for e in self.start.state_map}

    @property
    def response_frames(self) -> list[Frame]:
        return decode_frames(bytes.fromhex(self.raw["response_hex"]))

    def response_of(self, t: int) -> list[bytes]:
        """Exact bytes of the response frames of type ``t``."""
        return [b for f, b in self.response if f.type == t]

    def response_commands(self) -> list[bytes]:
        return [b for f, b in self.response if is_command(f.type)]

    def request_of(self, t: int) -> list[bytes]:
        return [b for f, b in self.request if f.type == t]

    def message(self, side: str, t: int) -> Any:
        frames = self.request if side == "request" else self.response
        [msg] = [parse_message(f) for f, _ in frames if f.type == t]
        return msg

    def commands_before(self) -> int:
        """1 (Input) + the command frames among the replayed entries."""
        return 1 + sum(1 for f, _ in self.request[2:] if is_command(f.type))


@functools.cache
def vec(name: str) -> Vector:
    raw = json.loads((VECTORS_DIR / f"{name}.json").read_text())
    assert raw["scenario"] == name
    return Vector(name, raw, _split(bytes.fromhex(raw["request_hex"])), _split(bytes.fromhex(raw["response_hex"])))


# ---- the services behind the vectors -------------------------------------------------------------

H = HandlerType


def _svc(name: str, ty: ServiceType, handlers: dict[str, HandlerType | None]) -> ServiceMeta:
    return ServiceMeta(name=name, ty=ty, deployment_id="dp_vectors",
                       handlers={h: HandlerMeta(name=h, ty=t) for h, t in handlers.items()})


DEPLOYMENT = Deployment(id="dp_vectors", uri="http://sdk.invalid:9080/", protocol_mode="REQUEST_RESPONSE",
                        min_protocol_version=5, max_protocol_version=7)
SCHEMA = SchemaSnapshot(
    version=1,
    services={
        "Greeter": _svc("Greeter", ServiceType.SERVICE, dict.fromkeys(
            ("greet", "with_run", "fail_terminal", "fail_retry"))),
        # `flaky` stands for the handler of s_run_retry_* (the vectors do not record its path).
        "Extra": _svc("Extra", ServiceType.SERVICE, dict.fromkeys(
            ("call_other", "send_other", "awk", "resolve_awk", "cancel_other", "rnd", "flaky"))),
        "Counter": _svc("Counter", ServiceType.VIRTUAL_OBJECT,
                        {"add": H.EXCLUSIVE, "nap": H.EXCLUSIVE, "keys": H.EXCLUSIVE, "peek": H.SHARED}),
        "Signup": _svc("Signup", ServiceType.WORKFLOW, {"run": H.WORKFLOW, "approve": H.SHARED}),
    },
    deployments={DEPLOYMENT.id: DEPLOYMENT},
)
PARTITIONS = 8
NOW_MS = 1_795_929_000_000  # before every wall-clock time in the captures


@dataclass(frozen=True)
class Scenario:
    service: str
    handler: str
    kind: str  # service | exclusive | shared | workflow
    lazy: bool = False  # the stand-in shipped the state lazily (partial_state, empty map)


SCENARIOS = {
    "a_greet": Scenario("Greeter", "greet", "service"),
    "b_object_eager_state": Scenario("Counter", "add", "exclusive"),
    "b2_object_lazy_state_suspend": Scenario("Counter", "add", "exclusive", lazy=True),
    "b3_object_lazy_state_resume": Scenario("Counter", "add", "exclusive", lazy=True),
    "c1_sleep_suspend": Scenario("Counter", "nap", "exclusive"),
    "c2_sleep_resume": Scenario("Counter", "nap", "exclusive"),
    "d1_run_propose": Scenario("Greeter", "with_run", "service"),
    "d2_run_replay": Scenario("Greeter", "with_run", "service"),
    "e_terminal_failure": Scenario("Greeter", "fail_terminal", "service"),
    "f_retryable_error": Scenario("Greeter", "fail_retry", "service"),
    "g1_workflow_promise_suspend": Scenario("Signup", "run", "workflow"),
    "g2_workflow_promise_resume": Scenario("Signup", "run", "workflow"),
    "g3_workflow_resolve_promise": Scenario("Signup", "approve", "shared"),
    "g4_workflow_resolve_promise_resume": Scenario("Signup", "approve", "shared"),
    "h_cancel_signal": Scenario("Counter", "nap", "exclusive"),
    "i_journal_mismatch": Scenario("Counter", "nap", "exclusive"),
    "l1_call_suspend": Scenario("Extra", "call_other", "service"),
    "l2_call_resume": Scenario("Extra", "call_other", "service"),
    "m_one_way_call": Scenario("Extra", "send_other", "service"),
    "n1_awakeable_suspend": Scenario("Extra", "awk", "service"),
    "n2_awakeable_resume": Scenario("Extra", "awk", "service"),
    "o_complete_awakeable": Scenario("Extra", "resolve_awk", "service"),
    "p_cancel_other": Scenario("Extra", "cancel_other", "service"),
    "q_state_keys_eager": Scenario("Counter", "keys", "exclusive"),
    "q2_state_keys_lazy": Scenario("Counter", "keys", "exclusive", lazy=True),
    "r_random_seed": Scenario("Extra", "rnd", "service"),
    "s_run_retry_rc0": Scenario("Extra", "flaky", "service"),
    "s_run_retry_replayed_rc1": Scenario("Extra", "flaky", "service"),
    "s_run_retry_replayed_rc2": Scenario("Extra", "flaky", "service"),
    "s_run_retry_replayed_rc3": Scenario("Extra", "flaky", "service"),
}


def scenario(v: Vector) -> Scenario:
    return SCENARIOS[v.name.rsplit("_v", 1)[0]]


def context(v: Vector, *, state: dict[bytes, bytes] | None = None, commands_before: int | None = None,
            now_ms: int = NOW_MS, invocation_id: str | None = None) -> PlanContext:
    sc = scenario(v)
    inv = InvocationId.parse(invocation_id) if invocation_id else v.inv
    return PlanContext(
        invocation_id=str(inv), partition=partition_of(inv.partition_key, PARTITIONS), partitions=PARTITIONS,
        kind=HandlerKind(sc.kind), service=sc.service, key=v.start.key if sc.kind != "service" else None,
        state=dict(v.state_map if state is None else state),
        commands_before=v.commands_before() if commands_before is None else commands_before,
        now_ms=now_ms, schema=SCHEMA,
    )


def plan_of(v: Vector, **kw: Any) -> tuple[AttemptPlan, PlanContext]:
    ctx = context(v, **kw)
    return plan_attempt(v.response_frames, ctx), ctx


# ---- ops (partition.invocation's typed op union) -------------------------------------------------


def outbox_of(plan: AttemptPlan) -> list[spb.OutboxMessage]:
    return [decode_outbox(op.message) for op in plan.ops if isinstance(op, OutboxEntry)]


def the_outbox_op(plan: AttemptPlan) -> spb.OutboxMessage:
    """The plan's only op, an outbox message, decoded."""
    [op] = plan.ops
    assert isinstance(op, OutboxEntry)
    return decode_outbox(op.message)


def assert_end(plan: AttemptPlan, result: tuple[int, str, bytes]) -> None:
    assert plan.terminal == "END"
    assert plan.result == Result(*result)
    assert plan.awaiting == ""
    # the journal is deleted at completion: nothing is shipped for it
    assert not [op for op in plan.ops if isinstance(op, (JournalEntry, NotificationEntry))]


def output_result(v: Vector) -> Result:
    """The result exactly as the vector's OutputCommand carries it."""
    out = v.message("response", T.OUTPUT_COMMAND)
    if out.HasField("failure"):
        return Result(out.failure.code, out.failure.message)
    assert out.HasField("value")
    return Result(0, "", out.value.content)


# ---- what apply.lua / notify.lua keep (a model, to rebuild the next request) ---------------------

LUA_VOID = VOID_FIELD  # the generated PB_VOID: NotificationTemplate.void, empty


def _varint(n: int) -> bytes:
    out = b""
    while n >= 128:
        out += bytes([n % 128 + 128])
        n //= 128
    return out + bytes([n])


def lua_pb_completion(msg_type: int, cid: str | int, result: bytes) -> bytes:
    """`_prelude.lua` completion_frame: a framed notification {1: completion_id, result field}."""
    return encode_frame(msg_type, b"\x08" + _varint(int(cid)) + result)


def lua_pb_result(rc: int, rm: str, rv: bytes) -> bytes:
    """The result field apply.lua wraps for a callee's waiting parents (encoded in Python)."""
    return Result(rc, rm, rv).encode()


class Promises:
    """One workflow instance's durable promises (apply.lua KEYS[10] / KEYS[11])."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.waiters: dict[str, list[tuple[Stored, str]]] = {}


@dataclass(eq=False)
class Stored:
    """One invocation as the Lua transitions keep it: journal, notification keys, state, timers,
    outbox, `att` (failed attempts since the journal last grew) and status."""

    input_frame: bytes
    state: dict[bytes, bytes] = field(default_factory=dict)
    promises: Promises | None = None
    journal: list[bytes] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    timers: list[tuple[int, str]] = field(default_factory=list)
    outbox: list[spb.OutboxMessage] = field(default_factory=list)
    att: int = 0
    status: str = "invoked"
    waiting: str = ""

    def _note(self, key: str, frame: bytes) -> bool:
        if key in self.notes:
            return False
        self.journal.append(frame)
        self.notes.add(key)
        return True

    def notify(self, key: str, frame: bytes) -> str:
        """notify.lua: append once per key; wake the invocation if it waits for the key."""
        if not self._note(key, frame):
            return "DUP"
        if self.status == "suspended" and f" {key} " in self.waiting:
            self.status, self.waiting = "invoked", ""
            return "WOKEN"
        return "APPLIED"

    def fire_timer(self, member: str) -> str:
        """driver.Driver.fire_timer for a sleep timer `w|<invocation id>|<completion id>`."""
        due = [d for d, m in self.timers if m == member]
        assert due, member
        self.timers.remove((due[0], member))
        kind, _, rest = member.partition("|")
        assert kind == "w"
        _, _, cid = rest.partition("|")
        return self.notify(f"c{cid}", notification(T.SLEEP_COMPLETION, completion_id=int(cid), void=True))

    def apply(self, plan: AttemptPlan) -> str:
        """apply.lua for one plan; returns RESUME | SUSPENDED | BACKOFF | OK."""
        assert self.status == "invoked", f"apply on a {self.status} invocation"
        for op in plan.ops:
            self._apply_op(op)
        if plan.terminal == "ERROR":  # driver.Driver._fail: the failed attempt counts, after a reset if it grew
            self.att = (0 if plan.grew else self.att) + 1
            self.status = "backing-off"
            return "BACKOFF"
        self.att = 0 if plan.grew else self.att  # driver.Driver._step
        if plan.terminal == "SUSPEND":
            if any(k in self.notes for k in plan.awaiting.split()):
                return "RESUME"
            self.status, self.waiting = "suspended", plan.awaiting
            return "SUSPENDED"
        assert plan.terminal == "END"
        self.status = "completed"
        return "OK"

    def _apply_op(self, op: Op) -> None:
        """One op as apply.lua's handlers (`_apply_effects.lua`, `_apply_promises.lua`) apply it."""
        if isinstance(op, JournalEntry):
            self.journal.append(op.frame)
        elif isinstance(op, NotificationEntry):
            self._note(op.key, op.frame)
        elif isinstance(op, SetState):
            self.state[op.key] = op.value
        elif isinstance(op, ClearState):
            self.state.pop(op.key, None)
        elif isinstance(op, ClearAllState):
            self.state.clear()
        elif isinstance(op, AddTimer):
            self.timers.append((op.due_ms, op.member))
        elif isinstance(op, OutboxEntry):
            self.outbox.append(decode_outbox(op.message))
        elif isinstance(op, GetPromise):
            assert self.promises is not None
            if op.name in self.promises.values:
                self._note(f"c{op.completion_id}", lua_pb_completion(
                    T.GET_PROMISE_COMPLETION, op.completion_id, self.promises.values[op.name]))
            else:
                self.promises.waiters.setdefault(op.name, []).append((self, str(op.completion_id)))
        elif isinstance(op, CompletePromise):
            self._complete_promise(op)
        elif isinstance(op, PromiseExpiry):
            assert self.promises is not None  # an expiry only: nothing a replay sees
        else:
            pytest.fail(f"op {op!r} not modelled")

    def _complete_promise(self, op: CompletePromise) -> None:
        assert self.promises is not None
        cid = op.completion_id
        if op.name in self.promises.values:
            already = Result(*effects.PROMISE_ALREADY_COMPLETED).encode()  # the generated constant
            self._note(f"c{cid}", lua_pb_completion(T.COMPLETE_PROMISE_COMPLETION, cid, already))
            return
        self.promises.values[op.name] = op.result
        self._note(f"c{cid}", lua_pb_completion(T.COMPLETE_PROMISE_COMPLETION, cid, LUA_VOID))
        for waiter, wcid in self.promises.waiters.pop(op.name, []):
            frame = lua_pb_completion(T.GET_PROMISE_COMPLETION, wcid, op.result)
            if waiter is self:
                self._note(f"c{wcid}", frame)
            else:
                waiter.notify(f"c{wcid}", frame)

    def retry(self) -> None:
        """The back-off timer fired (attempt_start.lua)."""
        assert self.status == "backing-off"
        self.status = "invoked"


def first_store(v: Vector, state: dict[bytes, bytes] | None = None, promises: Promises | None = None) -> Stored:
    """A new invocation: the Input frame ingress stored, and the key's state."""
    return Stored(input_frame=input_command(v.input_value), promises=promises,
                  state=dict(v.state_map if state is None else state))


# ---- the request the real Invoker builds -----------------------------------------------------------


@dataclass
class Sent:
    url: str
    headers: dict[str, str]
    request: list[tuple[Frame, bytes]]
    response: list[Frame]


async def send(v: Vector, stored: Stored, *, duration_ms: int | None = None) -> Sent:
    """Run `Invoker.attempt` with the AttemptInput `driver._attempt_input` builds from ``stored``; the
    deployment answers with the vector's response."""
    sc = scenario(v)
    keyed = sc.kind != "service"
    invoker = Invoker(connect_timeout_s=1.0, max_protocol_version=v.version)
    seen: dict[str, Any] = {}

    async def fake_post(url: str, body: bytes, headers: dict[str, str], ct: str, timeout: Any) -> bytes:
        seen.update(url=url, body=body, headers=dict(headers))
        return bytes.fromhex(v.raw["response_hex"])

    invoker._post = fake_post  # type: ignore[method-assign]
    kw: dict[str, Any] = {
        "invocation_id": v.invocation_id, "service": sc.service, "handler": sc.handler,
        "key": v.start.key if keyed else None, "keyed": keyed, "input_frame": stored.input_frame,
        "journal": list(stored.journal), "state": {} if sc.lazy else dict(stored.state),
        "partial_state": sc.lazy or not keyed, "retry_count": stored.att,
        # wall-clock dependent (now - time of the last growth): the vector's value is used
        "duration_since_last_entry_ms": (v.start.duration_since_last_stored_entry
                                         if duration_ms is None else duration_ms),
    }
    for f in dataclasses.fields(AttemptInput):  # timeouts play no part in what is sent
        if f.name not in kw and f.name.endswith("_timeout_s"):
            kw[f.name] = 60.0
    inp = AttemptInput(**kw)
    frames = await invoker.attempt(DEPLOYMENT, inp)
    return Sent(seen["url"], seen["headers"], _split(seen["body"]), frames)


Structural = Callable[[Frame, Frame], None]


def assert_request(v: Vector, sent: Sent, *, structural: dict[int, Structural] | None = None) -> None:
    """Our request vs the vector's: Input and journal byte-for-byte (except the entries listed in
    ``structural``, index 1 = Input), Start exactly but for the stand-in's own conventions."""
    sc = scenario(v)
    structural = structural or {}
    assert sent.url == f"http://sdk.invalid:9080/invoke/{sc.service}/{sc.handler}"
    ct = v.raw["request_headers"]["content-type"]
    assert sent.headers["content-type"] == ct == f"application/vnd.restate.invocation.v{v.version}"
    assert sent.headers["accept"] == v.raw["request_headers"]["accept"]
    # the stand-in sent a placeholder ("inv_test"); ours names the invocation
    assert sent.headers["x-restate-invocation-id"] == v.invocation_id

    assert len(sent.request) == len(v.request)
    for i, ((ours, ob), (theirs, tb)) in enumerate(zip(sent.request, v.request, strict=True)):
        if i == 0:
            continue
        if i in structural:
            assert ours.type == theirs.type, i
            structural[i](ours, theirs)
        else:
            assert ob == tb, f"entry {i} ({T(theirs.type).name}) differs"

    ours_start = parse_message(sent.request[0][0])
    theirs_start = v.start
    assert ours_start.id == theirs_start.id  # the invoker sends InvocationId.parse(id).to_bytes()
    assert ours_start.known_entries == theirs_start.known_entries == len(v.request) - 1
    # Conventions of the stand-in that ours does not share (compared structurally):
    # * debug_id: ours is the printable form of Start.id; the stand-in used an unrelated constant.
    assert ours_start.debug_id == v.invocation_id
    assert theirs_start.debug_id.startswith("inv_1") and len(theirs_start.debug_id) == 38
    # * random_seed: ours is derived from the invocation id (stable across attempts); the
    #   stand-in sent 0xC0FFEE (42 in r_random_seed).
    assert ours_start.random_seed == random_seed(v.invocation_id)
    assert theirs_start.random_seed in (0xC0FFEE, 42)
    expected = pb.StartMessage()
    expected.CopyFrom(theirs_start)
    expected.debug_id = ours_start.debug_id
    expected.random_seed = ours_start.random_seed
    # * partial_state for plain services: ours sends an empty map with partial_state=true like
    #   the reference runtime (spec 7.4); the stand-in left it false.
    if sc.kind == "service":
        assert not theirs_start.partial_state and not theirs_start.state_map and ours_start.partial_state
        expected.partial_state = True
    assert ours_start == expected  # known_entries, state_map, key, retry count, duration: exact
    assert sent.request[0][1] == encode_message(T.START, expected)
    # what comes back is exactly the SDK's response
    assert sent.response == v.response_frames


def _call_invocation_id_structural(child: str) -> Structural:
    """CallInvocationIdCompletion: the callee id is the runtime's choice (ours: a deterministic
    child id; the stand-in: a fixed id). Same completion id, both parse as invocation ids."""

    def check(ours: Frame, theirs: Frame) -> None:
        o, t = parse_message(ours), parse_message(theirs)
        assert o.completion_id == t.completion_id == 1
        assert o.invocation_id == child
        InvocationId.parse(t.invocation_id)
        o.invocation_id = t.invocation_id
        assert o == t

    return check


V67 = pytest.mark.parametrize("ver", [6, 7])


# ==== a: Greeter/greet ===============================================================================


@V67
def test_a_greet(ver: int) -> None:
    v = vec(f"a_greet_v{ver}")
    plan, _ = plan_of(v)
    assert_end(plan, (0, "", b'"Hello World!"'))
    assert plan.result == output_result(v)
    assert plan.ops == []
    assert plan.entries == v.response_of(T.OUTPUT_COMMAND)
    assert plan.timers == plan.outbox == 0


@V67
def test_a_greet_without_end_is_a_protocol_violation(ver: int) -> None:
    v = vec(f"a_greet_v{ver}")
    with pytest.raises(PlanError):
        plan_attempt(v.response_frames[:-1], context(v))  # Output but no End (spec 7.1: retryable)
    with pytest.raises(PlanError):
        plan_attempt(v.response_frames[1:], context(v))  # End without an Output


@V67
def test_a_greet_frame_after_end_is_a_protocol_violation(ver: int) -> None:
    v = vec(f"a_greet_v{ver}")
    set_state = encode_message(T.SET_STATE_COMMAND, pb.SetStateCommandMessage(key=b"k", value=pb.Value(content=b"1")))
    frames = v.response_frames + decode_frames(set_state)
    with pytest.raises(PlanError):
        plan_attempt(frames, context(v))


# ==== b: Counter/add, eager state ======================================================================


@V67
def test_b_object_eager_state(ver: int) -> None:
    v = vec(f"b_object_eager_state_v{ver}")
    assert v.state_map == {b"count": b"5"} and v.start.key == "c1"
    plan, ctx = plan_of(v)
    assert_end(plan, (0, "", b"8"))
    assert plan.result == output_result(v)
    assert plan.ops == [SetState(b"count", b"8")]
    assert ctx.state == {b"count": b"8"}
    # GetEagerState (store only), SetState, Output: all stored as sent
    assert plan.entries == v.response_commands()
    assert [f.type for f in v.response_frames] == [
        T.GET_EAGER_STATE_COMMAND, T.SET_STATE_COMMAND, T.OUTPUT_COMMAND, T.END]


@V67
def test_b_object_state_write_rejected_outside_exclusive_handlers(ver: int) -> None:
    v = vec(f"b_object_eager_state_v{ver}")
    for kind in ("shared", "service"):  # Counter/peek is shared; plain services have no state
        ctx = context(v)
        ctx.kind = HandlerKind(kind)
        with pytest.raises(PlanError):
            plan_attempt(v.response_frames, ctx)


# ==== b2/b3: Counter/add, lazy state ===================================================================


@V67
def test_b2_object_lazy_state_suspend(ver: int) -> None:
    v = vec(f"b2_object_lazy_state_suspend_v{ver}")
    assert v.start.partial_state and not v.state_map
    [get] = v.response_of(T.GET_LAZY_STATE_COMMAND)
    # state from the vector's Start (empty map): the key is absent -> void completion
    plan, _ = plan_of(v)
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    void = notification(T.GET_LAZY_STATE_COMPLETION, completion_id=1, void=True)
    assert plan.ops == [JournalEntry(get), NotificationEntry("c1", void)]
    assert plan.entries == [get, void]  # AwaitingOn (v7) is not a journal entry
    # with lazy state the worker still plans against the whole stored state (here count=10,
    # which b3 shows being replayed): the completion carries the stored value
    plan, _ = plan_of(v, state={b"count": b"10"})
    value = notification(T.GET_LAZY_STATE_COMPLETION, completion_id=1, value=b"10")
    assert plan.ops == [JournalEntry(get), NotificationEntry("c1", value)]
    assert plan.awaiting == " c1 s1 "


@V67
def test_b3_object_lazy_state_resume(ver: int) -> None:
    v = vec(f"b3_object_lazy_state_resume_v{ver}")
    plan, ctx = plan_of(v, state={b"count": b"10"})
    assert ctx.commands_before == 2
    assert_end(plan, (0, "", b"13"))
    assert plan.result == output_result(v)
    assert plan.ops == [SetState(b"count", b"13")]
    assert ctx.state == {b"count": b"13"}
    assert plan.entries == v.response_commands()


@V67
async def test_b3_replays_what_b2_stored(ver: int) -> None:
    b2, b3 = vec(f"b2_object_lazy_state_suspend_v{ver}"), vec(f"b3_object_lazy_state_resume_v{ver}")
    stored = first_store(b2, state={b"count": b"10"})
    sent = await send(b2, stored)
    assert_request(b2, sent)  # lazy: empty map, partial_state=true, key c2
    plan = plan_attempt(sent.response, context(b2, state=stored.state))
    assert stored.apply(plan) == "RESUME"  # the awaited c1 was produced by this very attempt
    sent = await send(b3, stored)
    assert_request(b3, sent)  # Input + GetLazyState + GetLazyStateCompletion{1, "10"}, byte-for-byte
    assert b3.request_of(T.GET_LAZY_STATE_COMPLETION) == [stored.journal[1]]
    plan = plan_attempt(sent.response, context(b3, state=stored.state,
                                               commands_before=1 + count_commands(stored.journal)))
    assert stored.apply(plan) == "OK"
    assert stored.state == {b"count": b"13"}


# ==== c1/c2: Counter/nap (sleep) =======================================================================


@V67
def test_c1_sleep_suspend(ver: int) -> None:
    v = vec(f"c1_sleep_suspend_v{ver}")
    plan, ctx = plan_of(v)
    [set_state] = v.response_of(T.SET_STATE_COMMAND)
    [sleep] = v.response_of(T.SLEEP_COMMAND)
    wake = v.message("response", T.SLEEP_COMMAND).wake_up_time
    assert wake > NOW_MS
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    assert plan.ops == [
        JournalEntry(set_state), SetState(b"napping", b"true"),
        JournalEntry(sleep), AddTimer(wake, f"w|{v.invocation_id}|1"),
    ]
    assert plan.entries == [set_state, sleep]
    assert plan.timers == 1 and plan.outbox == 0
    assert ctx.state == {b"napping": b"true"}


@V67
def test_c2_sleep_resume(ver: int) -> None:
    v = vec(f"c2_sleep_resume_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 3  # Input, SetState, Sleep
    assert_end(plan, (0, "", b'"rested"'))
    assert plan.result == output_result(v)
    assert plan.ops == [ClearState(b"napping")]
    assert ctx.state == {}
    assert plan.entries == v.response_commands()


@V67
async def test_c2_replays_what_c1_stored(ver: int) -> None:
    c1, c2 = vec(f"c1_sleep_suspend_v{ver}"), vec(f"c2_sleep_resume_v{ver}")
    stored = first_store(c1)
    assert_request(c1, await send(c1, stored))
    plan = plan_attempt(c1.response_frames, context(c1, state=stored.state))
    assert stored.apply(plan) == "SUSPENDED"
    assert stored.waiting == " c1 s1 "
    [(due, member)] = stored.timers
    assert due == c1.message("response", T.SLEEP_COMMAND).wake_up_time
    assert stored.fire_timer(member) == "WOKEN"
    sent = await send(c2, stored)
    # Input, SetState, Sleep (the same capture run: same wake_up_time), SleepCompletion{1, void};
    # Start: known_entries=4 and the state the SetState wrote
    assert_request(c2, sent)
    assert stored.state == c2.state_map == {b"napping": b"true"}
    plan = plan_attempt(sent.response, context(c2, state=stored.state,
                                               commands_before=1 + count_commands(stored.journal)))
    assert stored.apply(plan) == "OK"
    assert stored.state == {}


# ==== d1/d2: Greeter/with_run ==========================================================================


@V67
def test_d1_run_propose(ver: int) -> None:
    v, d2 = vec(f"d1_run_propose_v{ver}"), vec(f"d2_run_replay_v{ver}")
    plan, _ = plan_of(v)
    [run] = v.response_of(T.RUN_COMMAND)
    [(proposal, _)] = [(f, b) for f, b in v.response if f.type == T.PROPOSE_RUN_COMPLETION]
    assert proposal.requested_ack == (ver == 7)  # v7 asks for an ack; request-response stores anyway
    assert parse_message(proposal).value == b'"rnd-x"'
    completion = notification(T.RUN_COMPLETION, completion_id=1, value=b'"rnd-x"')
    assert plan.ops == [JournalEntry(run), NotificationEntry("c1", completion)]
    assert plan.entries == [run, completion]
    # the stored RunCompletion is byte-for-byte the one d2 replays (flags 0, Value-wrapped)
    assert d2.request_of(T.RUN_COMPLETION) == [completion]
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "


@V67
def test_d2_run_replay(ver: int) -> None:
    v = vec(f"d2_run_replay_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 2
    assert_end(plan, (0, "", b'"run said rnd-x"'))
    assert plan.result == output_result(v)
    assert plan.ops == []
    assert plan.entries == v.response_commands()


@V67
async def test_d2_replays_what_d1_stored(ver: int) -> None:
    d1, d2 = vec(f"d1_run_propose_v{ver}"), vec(f"d2_run_replay_v{ver}")
    stored = first_store(d1)
    sent = await send(d1, stored)
    assert_request(d1, sent)
    plan = plan_attempt(sent.response, context(d1))
    assert stored.apply(plan) == "RESUME"  # the RunCompletion it awaits is already stored
    assert stored.att == 0
    sent = await send(d2, stored)
    assert_request(d2, sent)  # Input + RunCommand + RunCompletion, byte-for-byte
    plan = plan_attempt(sent.response, context(d2, commands_before=1 + count_commands(stored.journal)))
    assert stored.apply(plan) == "OK"


# ==== e/f: Greeter/fail_terminal, fail_retry ===========================================================


@V67
def test_e_terminal_failure(ver: int) -> None:
    v = vec(f"e_terminal_failure_v{ver}")
    plan, _ = plan_of(v)
    assert_end(plan, (409, "nope", b""))
    assert plan.result == output_result(v)
    assert plan.ops == []
    assert plan.entries == v.response_commands()


@V67
def test_f_retryable_error(ver: int) -> None:
    v = vec(f"f_retryable_error_v{ver}")
    err = v.message("response", T.ERROR)
    plan, _ = plan_of(v)
    assert plan.terminal == "ERROR"
    assert plan.error_code == err.code == 500
    assert plan.error_message == err.message == "ValueError('transient boom')"
    assert plan.next_retry_delay_ms is None  # the runtime's own policy decides
    assert plan.error_behavior == 0
    assert plan.result is None and plan.awaiting == ""
    assert plan.ops == [] and plan.entries == [] and not plan.grew


# ==== g1-g4: Signup workflow, durable promise ===========================================================


@V67
def test_g1_workflow_promise_suspend(ver: int) -> None:
    v = vec(f"g1_workflow_promise_suspend_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.kind == "workflow" and ctx.key == "wf1"
    [get] = v.response_of(T.GET_PROMISE_COMMAND)
    assert plan.ops == [JournalEntry(get), GetPromise("approval", 1)]
    assert plan.entries == [get]
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    # promises belong to workflows only
    ctx = context(v)
    ctx.kind = HandlerKind.SERVICE
    with pytest.raises(PlanError):
        plan_attempt(v.response_frames, ctx)


@V67
def test_g2_workflow_promise_resume(ver: int) -> None:
    v = vec(f"g2_workflow_promise_resume_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 2
    assert_end(plan, (0, "", b'"a@b.c:yes"'))
    assert plan.result == output_result(v)
    assert plan.ops == []


@V67
def test_g3_workflow_resolve_promise(ver: int) -> None:
    v = vec(f"g3_workflow_resolve_promise_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.kind == "shared" and ctx.key == "wf1"
    [complete] = v.response_of(T.COMPLETE_PROMISE_COMMAND)
    [op_j, op_pc, op_pe] = plan.ops
    assert op_j == JournalEntry(complete)
    # a shared handler wrote the key's promises: they expire unless its run holds them
    assert isinstance(op_pe, PromiseExpiry)
    assert op_pe.run_id == str(workflow_invocation_id(ctx.service, "wf1"))
    assert isinstance(op_pc, CompletePromise)
    assert (op_pc.name, op_pc.completion_id) == ("approval", 1)
    assert pb.NotificationTemplate.FromString(op_pc.result) == pb.NotificationTemplate(
        value=pb.Value(content=b'"yes"'))
    # a second completion gets the "already completed" failure, a constant of the Lua prelude
    assert effects.PROMISE_ALREADY_COMPLETED == (409, "promise was already completed")
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    assert plan.entries == [complete]


@V67
def test_g4_workflow_resolve_promise_resume(ver: int) -> None:
    v = vec(f"g4_workflow_resolve_promise_resume_v{ver}")
    plan, _ = plan_of(v)
    assert_end(plan, (0, "", b""))
    assert plan.result == output_result(v)
    assert plan.ops == []


def test_lua_completion_model_matches_the_codec() -> None:
    """Lua's frame wrapper around Python's encoded result fields builds what protocol.notification
    builds."""
    assert lua_pb_completion(T.COMPLETE_PROMISE_COMPLETION, "1", LUA_VOID) == notification(
        T.COMPLETE_PROMISE_COMPLETION, completion_id=1, void=True)
    assert lua_pb_completion(T.CALL_COMPLETION, 300, lua_pb_result(0, "", b"xyz")) == notification(
        T.CALL_COMPLETION, completion_id=300, value=b"xyz")
    assert lua_pb_completion(T.CALL_COMPLETION, 2, lua_pb_result(0, "", b"")) == notification(
        T.CALL_COMPLETION, completion_id=2, value=b"")
    assert lua_pb_completion(T.CALL_COMPLETION, 2, lua_pb_result(409, "nope", b"")) == notification(
        T.CALL_COMPLETION, completion_id=2, failure=(409, "nope"))


@V67
async def test_g2_g4_replay_what_g1_g3_stored(ver: int) -> None:
    g1, g2 = vec(f"g1_workflow_promise_suspend_v{ver}"), vec(f"g2_workflow_promise_resume_v{ver}")
    g3, g4 = vec(f"g3_workflow_resolve_promise_v{ver}"), vec(f"g4_workflow_resolve_promise_resume_v{ver}")
    # Signup/run and Signup/approve are two invocations of one workflow instance sharing its
    # promises (the stand-in gave both the same Start.id; the model tells them apart by identity)
    promises = Promises()
    run = first_store(g1, promises=promises)
    assert_request(g1, await send(g1, run))
    assert run.apply(plan_attempt(g1.response_frames, context(g1))) == "SUSPENDED"
    assert promises.waiters == {"approval": [(run, "1")]}

    approve = first_store(g3, promises=promises)
    assert_request(g3, await send(g3, approve))
    plan = plan_attempt(g3.response_frames, context(g3))
    assert approve.apply(plan) == "RESUME"  # CompletePromiseCompletion{1, void} stored at once
    assert run.status == "invoked"  # the waiter got its GetPromiseCompletion and woke up

    sent = await send(g2, run)
    assert_request(g2, sent)  # Input + GetPromise + GetPromiseCompletion{1, '"yes"'}, byte-for-byte
    assert run.apply(plan_attempt(sent.response, context(g2))) == "OK"
    sent = await send(g4, approve)
    assert_request(g4, sent)  # Input + CompletePromise + CompletePromiseCompletion{1, void}
    assert approve.apply(plan_attempt(sent.response, context(g4))) == "OK"

    # a second resolve finds the promise completed: the SDK gets the "already completed" failure
    again = first_store(g3, promises=promises)
    assert again.apply(plan_attempt(g3.response_frames, context(g3))) == "RESUME"
    assert again.journal[-1] == notification(
        T.COMPLETE_PROMISE_COMPLETION, completion_id=1, failure=effects.PROMISE_ALREADY_COMPLETED)


# ==== h: cancel signal while sleeping ================================================================


@V67
def test_h_cancel_signal(ver: int) -> None:
    v = vec(f"h_cancel_signal_v{ver}")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 3
    assert_end(plan, (409, "cancelled", b""))
    assert plan.result == output_result(v)
    assert plan.ops == []
    # the replayed cancel signal is exactly what a SendSignal{idx 1, void} delivers (see p)
    assert v.request_of(T.SIGNAL_NOTIFICATION) == [
        notification(T.SIGNAL_NOTIFICATION, signal_id=effects.CANCEL_SIGNAL, void=True)]


# ==== i: journal mismatch =============================================================================


def test_i_journal_mismatch() -> None:
    v = vec("i_journal_mismatch_v6")
    err = v.message("response", T.ERROR)
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 2  # Input, Sleep
    assert plan.terminal == "ERROR"
    assert plan.error_code == 570
    assert plan.error_message == err.message
    assert plan.error_message.startswith("Found a mismatch between the code paths")
    assert plan.next_retry_delay_ms is None
    assert plan.ops == [] and not plan.grew


# ==== l1/l2: Extra/call_other -> Greeter/greet =========================================================


def test_l1_call_suspend() -> None:
    v = vec("l1_call_suspend_v6")
    plan, ctx = plan_of(v)
    [call] = v.response_of(T.CALL_COMMAND)
    child = child_invocation_id(ctx.invocation_id, 1, "Greeter", None, "greet")  # the Call is command 1
    id_note = notification(T.CALL_INVOCATION_ID_COMPLETION, completion_id=1, invocation_id=str(child))
    [j, n, o] = plan.ops
    assert j == JournalEntry(call)
    assert n == NotificationEntry("c1", id_note)
    assert isinstance(o, OutboxEntry)
    assert decode_outbox(o.message) == spb.OutboxMessage(invoke=spb.InvokeRequest(
        partition=partition_of(child.partition_key, PARTITIONS), invocation_id=str(child),
        service="Greeter", handler="greet", body=b'"Bob"', kind=spb.HANDLER_KIND_SERVICE,
        completion_retention_ms=DAY_MS, journal_retention_ms=DAY_MS,  # a plain child: the journal retention
        parent=spb.Parent(invocation_id=ctx.invocation_id, partition=ctx.partition, result_completion_id=2),
        invoked_by=f"{ctx.invocation_id}|{ctx.service}",  # the caller, kept for /query's invoked_by
    ))
    assert plan.entries == [call, id_note]
    assert plan.outbox == 1
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c2 s1 "
    # deterministic: a re-run of the attempt asks for the same callee
    assert plan_of(v)[0].ops == plan.ops
    # another command index, another callee
    other, _ = plan_of(v, commands_before=2)
    assert outbox_of(other)[0].invoke.invocation_id != str(child)


def test_l1_call_to_an_unknown_handler_rejects_the_attempt() -> None:
    v = vec("l1_call_suspend_v6")
    msg = v.message("response", T.CALL_COMMAND)
    msg.handler_name = "nope"
    frames = decode_frames(encode_message(T.CALL_COMMAND, msg)) + v.response_frames[1:]
    plan = plan_attempt(frames, context(v))
    assert (plan.terminal, plan.ops, plan.entries) == ("ERROR", [], [])
    assert plan.failure_text == ("[500 Internal] cannot process command Command: Call (command index 1) because "
                                 "of a failed precondition: the service handler Greeter/nope was not found")
    assert plan.restate_code == "RT0018"


def test_l2_call_resume() -> None:
    v = vec("l2_call_resume_v6")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 2
    assert_end(plan, (0, "", b'"got Hello Bob!"'))
    assert plan.result == output_result(v)
    assert plan.ops == []


async def test_l2_replays_what_l1_stored() -> None:
    l1, l2 = vec("l1_call_suspend_v6"), vec("l2_call_resume_v6")
    stored = first_store(l1)
    assert_request(l1, await send(l1, stored))
    assert stored.apply(plan_attempt(l1.response_frames, context(l1))) == "SUSPENDED"
    [msg] = stored.outbox
    invoke = msg.invoke
    # the callee (Greeter/greet "Bob") ends with '"Hello Bob!"'; apply.lua's notify_parents
    # queues a CallCompletion for the parent, which notify.lua appends
    cid = invoke.parent.result_completion_id
    frame = lua_pb_completion(T.CALL_COMPLETION, cid, lua_pb_result(0, "", b'"Hello Bob!"'))
    assert invoke.parent.invocation_id == l1.invocation_id
    assert stored.notify(f"c{cid}", frame) == "WOKEN"
    sent = await send(l2, stored)
    # Input, Call and CallCompletion byte-for-byte; the CallInvocationIdCompletion names the
    # callee, whose id is the runtime's choice (the stand-in used a fixed one)
    assert_request(l2, sent, structural={3: _call_invocation_id_structural(invoke.invocation_id)})
    assert stored.apply(plan_attempt(sent.response, context(l2))) == "OK"


# ==== m: Extra/send_other (one-way call, 5 s delay) ===================================================


def test_m_one_way_call() -> None:
    v = vec("m_one_way_call_v6")
    send_cmd = v.message("response", T.ONE_WAY_CALL_COMMAND)
    due = send_cmd.invoke_time
    plan, ctx = plan_of(v, now_ms=due - 5000)
    child = child_invocation_id(ctx.invocation_id, 1, "Greeter", None, "greet")
    assert_end(plan, (0, "", b'"sent"'))
    assert plan.result == output_result(v)
    expected = spb.InvokeRequest(
        partition=partition_of(child.partition_key, PARTITIONS), invocation_id=str(child),
        service="Greeter", handler="greet", body=b'"Bob"', kind=spb.HANDLER_KIND_SERVICE,
        completion_retention_ms=DAY_MS, journal_retention_ms=DAY_MS, execution_time_ms=due,
        invoked_by=f"{ctx.invocation_id}|{ctx.service}",  # a one-way send also names its sender
    )
    assert the_outbox_op(plan) == spb.OutboxMessage(invoke=expected)
    assert not the_outbox_op(plan).invoke.HasField("parent")  # nobody waits for the result
    [one_way] = v.response_of(T.ONE_WAY_CALL_COMMAND)
    [output] = v.response_of(T.OUTPUT_COMMAND)
    assert plan.entries == [
        one_way,
        notification(T.CALL_INVOCATION_ID_COMPLETION, completion_id=1, invocation_id=str(child)),
        output,
    ]
    # an invoke_time already past means "now"
    late, _ = plan_of(v, now_ms=due)
    assert not the_outbox_op(late).invoke.HasField("execution_time_ms")


# ==== n1/n2: Extra/awk (awakeable) ====================================================================


def test_n1_awakeable_suspend() -> None:
    v = vec("n1_awakeable_suspend_v6")
    plan, _ = plan_of(v)
    assert plan.terminal == "SUSPEND"
    assert plan.awaiting == " s17 s1 "  # exactly the SDK's waiting_signals [17, 1]
    assert plan.ops == [] and plan.entries == [] and not plan.grew


def test_n2_awakeable_resume() -> None:
    v = vec("n2_awakeable_resume_v6")
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 1
    aid = awakeable_id(v.inv, 17)
    assert_end(plan, (0, "", json.dumps(f"{aid}|hello").encode()))
    assert plan.result == output_result(v)
    assert plan.ops == []


async def test_n2_replays_what_n1_stored() -> None:
    n1, n2, o = vec("n1_awakeable_suspend_v6"), vec("n2_awakeable_resume_v6"), vec("o_complete_awakeable_v6")
    stored = first_store(n1)
    assert_request(n1, await send(n1, stored))
    assert stored.apply(plan_attempt(n1.response_frames, context(n1))) == "SUSPENDED"
    # the SDK derived the awakeable id from the Start.id our invoker sends
    aid = awakeable_id(n1.inv, 17)
    assert json.loads(output_result(n2).value) == f"{aid}|hello"
    # another invocation resolves it with '"hello"' (Extra/resolve_awk, as in o)
    resolve = encode_message(T.COMPLETE_AWAKEABLE_COMMAND, pb.CompleteAwakeableCommandMessage(
        awakeable_id=aid, value=pb.Value(content=b'"hello"')))
    frames = decode_frames(resolve) + o.response_frames[1:]
    other = str(InvocationId(7, 7))
    [msg] = outbox_of(plan_attempt(frames, context(o, invocation_id=other)))
    assert (msg.notify.invocation_id, msg.notify.key) == (n1.invocation_id, "s17")
    assert msg.notify.partition == partition_of(n1.inv.partition_key, PARTITIONS)
    assert stored.notify(msg.notify.key, msg.notify.frame) == "WOKEN"
    sent = await send(n2, stored)
    assert_request(n2, sent)  # Input + SignalNotification{17, '"hello"'}, byte-for-byte
    assert stored.apply(plan_attempt(sent.response, context(n2))) == "OK"


# ==== o: Extra/resolve_awk ===========================================================================


def test_o_complete_awakeable() -> None:
    v = vec("o_complete_awakeable_v6")
    plan, _ = plan_of(v, invocation_id=str(InvocationId(7, 7)))  # the resolver is another invocation
    cmd = v.message("response", T.COMPLETE_AWAKEABLE_COMMAND)
    target, idx = parse_awakeable_id(cmd.awakeable_id)
    # the awakeable of n1: Start.id with signal index 17
    assert (target, idx) == (vec("n1_awakeable_suspend_v6").inv, 17)
    assert_end(plan, (0, "", b""))
    assert plan.result == output_result(v)
    assert the_outbox_op(plan) == spb.OutboxMessage(notify=spb.Notification(
        partition=partition_of(target.partition_key, PARTITIONS), invocation_id=str(target), key="s17",
        frame=notification(T.SIGNAL_NOTIFICATION, signal_id=17, value=b'"hi"'),
    ))
    assert plan.outbox == 1
    assert plan.entries == v.response_commands()


# ==== p: Extra/cancel_other ===========================================================================


def test_p_cancel_other() -> None:
    v = vec("p_cancel_other_v6")
    plan, _ = plan_of(v)
    target = InvocationId.parse("inv_1bKpJ5SqkSrl2bF1AbUuG4kzTXbOdPqlql")
    assert v.message("response", T.SEND_SIGNAL_COMMAND).target_invocation_id == str(target)
    assert_end(plan, (0, "", b""))
    assert plan.result == output_result(v)
    cancel = notification(T.SIGNAL_NOTIFICATION, signal_id=1, void=True)
    assert the_outbox_op(plan) == spb.OutboxMessage(notify=spb.Notification(
        partition=partition_of(target.partition_key, PARTITIONS), invocation_id=str(target), key="s1",
        frame=cancel,
    ))
    # what the cancelled invocation then replays (h_cancel_signal), byte-for-byte
    for ver in (6, 7):
        assert vec(f"h_cancel_signal_v{ver}").request_of(T.SIGNAL_NOTIFICATION) == [cancel]
    assert plan.entries == v.response_commands()


# ==== q/q2: Counter/keys ===============================================================================


def test_q_state_keys_eager() -> None:
    v = vec("q_state_keys_eager_v6")
    assert v.state_map == {b"a": b"1", b"b": b"2"}
    plan, ctx = plan_of(v)
    assert_end(plan, (0, "", b'["a", "b"]'))
    assert plan.result == output_result(v)
    assert plan.ops == [ClearAllState()]
    assert ctx.state == {}
    assert plan.entries == v.response_commands()


def test_q2_state_keys_lazy() -> None:
    v = vec("q2_state_keys_lazy_v6")
    [keys_cmd] = v.response_of(T.GET_LAZY_STATE_KEYS_COMMAND)
    # the state as the vector's Start shows it (empty): no keys
    plan, _ = plan_of(v)
    empty = notification(T.GET_LAZY_STATE_KEYS_COMPLETION, completion_id=1, state_keys=[])
    assert plan.ops == [JournalEntry(keys_cmd), NotificationEntry("c1", empty)]
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    # the keys come from the stored state, sorted
    plan, _ = plan_of(v, state={b"b": b"2", b"a": b"1"})
    keys = notification(T.GET_LAZY_STATE_KEYS_COMPLETION, completion_id=1, state_keys=[b"a", b"b"])
    assert plan.ops == [JournalEntry(keys_cmd), NotificationEntry("c1", keys)]
    assert parse_message(decode_frames(keys)[0]).state_keys.keys == [b"a", b"b"]
    stored = first_store(v, state={b"a": b"1"})
    assert stored.apply(plan) == "RESUME"


# ==== r: Extra/rnd ===================================================================================


def test_r_random_seed() -> None:
    v = vec("r_random_seed_v6")
    assert v.start.random_seed == 42
    plan, _ = plan_of(v)
    assert_end(plan, (0, "", b'"0.6394267984578837|3eb13b90-4668-4257-bdd6-40fb06671ad1"'))
    assert plan.result == output_result(v)
    assert plan.ops == []
    # ours: one seed per invocation, the same on every attempt, different across invocations
    assert random_seed(v.invocation_id) == random_seed(v.invocation_id)
    assert random_seed(v.invocation_id) != random_seed(str(InvocationId(7, 7)))


# ==== s: ctx.run retried by attempts (max_attempts=3, 100 ms) ==========================================


def test_s_run_retry_rc0() -> None:
    v = vec("s_run_retry_rc0_v6")
    [run] = v.response_of(T.RUN_COMMAND)
    plan, _ = plan_of(v)
    assert plan.terminal == "ERROR"
    assert (plan.error_code, plan.error_message, plan.next_retry_delay_ms) == (500, "ValueError('flaky')", 100)
    assert plan.ops == [JournalEntry(run)]  # the Run written before the error is kept
    assert plan.entries == [run] and plan.grew


@pytest.mark.parametrize(("rc", "delay"), [(1, 200)])
def test_s_run_retry_replayed_erroring(rc: int, delay: int) -> None:
    v = vec(f"s_run_retry_replayed_rc{rc}_v6")
    assert v.start.retry_count_since_last_stored_entry == rc
    plan, ctx = plan_of(v)
    assert ctx.commands_before == 2
    assert plan.terminal == "ERROR"
    assert (plan.error_code, plan.error_message, plan.next_retry_delay_ms) == (500, "ValueError('flaky')", delay)
    assert plan.ops == [] and not plan.grew


@pytest.mark.parametrize("rc", [2, 3])
def test_s_run_retry_replayed_exhausted(rc: int) -> None:
    v = vec(f"s_run_retry_replayed_rc{rc}_v6")
    assert v.start.retry_count_since_last_stored_entry == rc
    proposal = v.message("response", T.PROPOSE_RUN_COMPLETION)
    assert proposal.failure == pb.Failure(code=500, message="ValueError('flaky')")
    plan, _ = plan_of(v)
    failed = notification(T.RUN_COMPLETION, completion_id=1, failure=(500, "ValueError('flaky')"))
    assert plan.ops == [NotificationEntry("c1", failed)]  # the SDK's terminal failure, stored as proposed
    assert parse_message(decode_frames(failed)[0]).failure == proposal.failure
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c1 s1 "
    assert plan.grew  # the journal grew: the retry count resets


async def test_s_run_retry_requests_follow_the_stored_journal_and_count() -> None:
    rc0, rc1, rc2, rc3 = (vec(n) for n in ("s_run_retry_rc0_v6", "s_run_retry_replayed_rc1_v6",
                                           "s_run_retry_replayed_rc2_v6", "s_run_retry_replayed_rc3_v6"))
    stored = first_store(rc0)
    sent = await send(rc0, stored)
    assert_request(rc0, sent)
    assert stored.apply(plan_attempt(sent.response, context(rc0))) == "BACKOFF"
    assert stored.att == 1  # the attempt stored the Run (reset) and failed (+1)
    stored.retry()
    sent = await send(rc1, stored)  # duration_since_last_stored_entry: the vector's (wall clock)
    assert_request(rc1, sent)  # known_entries=2, retry_count=1, Input + RunCommand byte-for-byte
    assert stored.apply(plan_attempt(sent.response, context(rc1))) == "BACKOFF"
    assert stored.att == 2
    stored.retry()
    before_rc2 = list(stored.journal)
    sent = await send(rc2, stored)
    assert_request(rc2, sent)  # retry_count=2
    assert stored.apply(plan_attempt(sent.response, context(rc2))) == "RESUME"
    assert stored.att == 0
    assert stored.journal == before_rc2 + [
        notification(T.RUN_COMPLETION, completion_id=1, failure=(500, "ValueError('flaky')"))]
    # rc3 probes count 3 on the same journal. Our runtime never sends it: rc2's proposal was
    # stored, so the next attempt replays the RunCompletion with the count back at 0. The
    # journal bytes and count it carries are still what ours would send after a third failure.
    probe = Stored(input_frame=stored.input_frame, journal=before_rc2, att=3)
    assert_request(rc3, await send(rc3, probe))


# ==== every first attempt: the request ours sends ====================================================

FIRST_ATTEMPTS = [
    "a_greet_v6", "a_greet_v7", "b_object_eager_state_v6", "b_object_eager_state_v7",
    "b2_object_lazy_state_suspend_v6", "b2_object_lazy_state_suspend_v7", "c1_sleep_suspend_v6",
    "c1_sleep_suspend_v7", "d1_run_propose_v6", "d1_run_propose_v7", "e_terminal_failure_v6",
    "e_terminal_failure_v7", "f_retryable_error_v6", "f_retryable_error_v7", "g1_workflow_promise_suspend_v6",
    "g1_workflow_promise_suspend_v7", "g3_workflow_resolve_promise_v6", "g3_workflow_resolve_promise_v7",
    "l1_call_suspend_v6", "m_one_way_call_v6", "n1_awakeable_suspend_v6", "o_complete_awakeable_v6",
    "p_cancel_other_v6", "q_state_keys_eager_v6", "q2_state_keys_lazy_v6", "r_random_seed_v6",
    "s_run_retry_rc0_v6",
]


@pytest.mark.parametrize("name", FIRST_ATTEMPTS)
async def test_first_attempt_request(name: str) -> None:
    v = vec(name)
    assert v.start.known_entries == 1
    stored = first_store(v)
    sent = await send(v, stored)
    assert_request(v, sent)  # Input byte-for-byte (protocol.input_command), Start as documented
    assert sent.request[1][1] == input_command(v.input_value)


def test_every_invocation_vector_is_covered() -> None:
    names = {p.stem for p in VECTORS_DIR.glob("*_v[67].json") if "bidi" not in p.stem}
    assert names, VECTORS_DIR
    assert {n.rsplit("_v", 1)[0] for n in names} == set(SCENARIOS)


def _attach_plan(msg_type: T, msg: Any) -> tuple[bytes, AttemptPlan, PlanContext]:
    """The plan of an attempt journaling one attach / get-output command, then suspending on it."""
    command = encode_message(msg_type, msg)
    suspension = encode_message(T.SUSPENSION, pb.SuspensionMessage(waiting_completions=[3]))
    ctx = context(vec("a_greet_v6"))
    return command, plan_attempt(decode_frames(command + suspension), ctx), ctx


@pytest.mark.parametrize(("msg_type", "msg_cls", "note_key"), [
    (T.ATTACH_INVOCATION_COMMAND, pb.AttachInvocationCommandMessage, "attach"),
    (T.GET_INVOCATION_OUTPUT_COMMAND, pb.GetInvocationOutputCommandMessage, "get-output"),
])
def test_attach_and_get_output_ask_the_target_partition_through_the_outbox(
        msg_type: T, msg_cls: Any, note_key: str) -> None:
    target = "inv_1aiqX0vFEFNH1Umgre58JiCLgHfTtztYK5"
    command, plan, ctx = _attach_plan(msg_type, msg_cls(invocation_id=target, result_completion_id=3))
    assert plan.terminal == "SUSPEND" and plan.awaiting == " c3 "
    assert plan.ops[0] == JournalEntry(command) and len(plan.ops) == 2 and plan.outbox == 1
    (sent,) = outbox_of(plan)
    assert sent.notify.partition == partition_of(InvocationId.parse(target).partition_key, PARTITIONS)
    assert (sent.notify.invocation_id, sent.notify.key) == (target, note_key)
    assert sent.notify.frame == f"{ctx.invocation_id}|{ctx.partition}|3".encode()


def test_attach_targets_are_derived_as_the_ingress_derives_them() -> None:
    from shardgate.sharding import idempotent_invocation_id, workflow_invocation_id

    idem = pb.AttachInvocationCommandMessage(result_completion_id=3, idempotent_request_target=pb.IdempotentRequestTarget(
        service_name="Greeter", handler_name="greet", idempotency_key="k1"))
    keyed = pb.GetInvocationOutputCommandMessage(result_completion_id=3, idempotent_request_target=pb.IdempotentRequestTarget(
        service_name="Counter", service_key="", handler_name="add", idempotency_key="k1"))
    wf = pb.AttachInvocationCommandMessage(result_completion_id=3, workflow_target=pb.WorkflowTarget(
        workflow_name="Approval", workflow_key="w1"))
    expected = [idempotent_invocation_id("Greeter", None, "greet", "k1"),
                idempotent_invocation_id("Counter", "", "add", "k1"), workflow_invocation_id("Approval", "w1")]
    for msg, inv in zip((idem, keyed, wf), expected, strict=True):
        msg_type = T.ATTACH_INVOCATION_COMMAND if isinstance(msg, pb.AttachInvocationCommandMessage) \
            else T.GET_INVOCATION_OUTPUT_COMMAND
        (sent,) = outbox_of(_attach_plan(msg_type, msg)[1])
        assert sent.notify.invocation_id == str(inv)
        assert sent.notify.partition == partition_of(inv.partition_key, PARTITIONS)
    assert expected[0] != expected[1]


@pytest.mark.parametrize("msg", [
    pb.AttachInvocationCommandMessage(invocation_id="inv_garbage", result_completion_id=3),
    pb.AttachInvocationCommandMessage(result_completion_id=3),
])
def test_attach_to_a_malformed_or_missing_target_is_not_found_at_once(msg: Any) -> None:
    command, plan, _ = _attach_plan(T.ATTACH_INVOCATION_COMMAND, msg)
    expected = notification(T.ATTACH_INVOCATION_COMPLETION, completion_id=3, failure=(404, "not found"))
    assert plan.ops == [JournalEntry(command), NotificationEntry("c3", expected)] and plan.outbox == 0


def test_child_retention_follows_the_target() -> None:
    """A workflow run or an idempotent call made from a handler keeps its result for its retention
    (the run-once and dedup guarantees depend on it) and its journal at most as long; a plain child
    keeps both for the journal retention, its result at least for re-deliveries (Restate
    `compute_retention`)."""
    from partition.effects import CHILD_DEDUP_RETENTION_MS, _child_retention_ms

    svc = ServiceMeta(name="Signup", ty=ServiceType.WORKFLOW, deployment_id="dp", handlers={})
    run = HandlerMeta(name="run", ty=HandlerType.WORKFLOW)
    shared = HandlerMeta(name="approve", ty=HandlerType.SHARED)
    no_journal = HandlerMeta(name="approve", ty=HandlerType.SHARED, journal_retention_ms=0)
    long_journal = HandlerMeta(name="run", ty=HandlerType.WORKFLOW, journal_retention_ms=DAY_MS * 3)
    assert _child_retention_ms(svc, run, None) == (DAY_MS, DAY_MS)
    assert _child_retention_ms(svc, long_journal, None) == (DAY_MS, DAY_MS)  # the journal never outlives the result
    assert _child_retention_ms(svc, shared, "my-key") == (DAY_MS, DAY_MS)
    assert _child_retention_ms(svc, shared, None) == (DAY_MS, DAY_MS)
    assert _child_retention_ms(svc, no_journal, None) == (CHILD_DEDUP_RETENTION_MS, 0)


def test_named_signal_keys_survive_spaces_and_nul() -> None:
    key = named_signal_key("a b\x00c")
    assert " " not in key and "\x00" not in key and key.startswith("n")
    suspension = encode_message(T.SUSPENSION, pb.SuspensionMessage(waiting_named_signals=["a b\x00c"]))
    plan = plan_attempt(decode_frames(suspension), context(vec("a_greet_v6")))
    assert plan.awaiting == f" {key} "


# ---- the incremental planner (frames of a bidirectional stream, stored in batches) ---------------

BIDI_SCENARIOS = {"j1_bidi_sleep_v6": Scenario("Counter", "nap", "exclusive"),
                  "j2_bidi_run_v6": Scenario("Greeter", "with_run", "service"),
                  "j3_bidi_run_ack_v7": Scenario("Greeter", "with_run", "service")}


def any_context(name: str) -> PlanContext:
    """A fresh context for any captured exchange, the bidirectional ones included."""
    v = vec(name)
    sc = BIDI_SCENARIOS.get(name)
    if sc is None:
        return context(v)
    return PlanContext(invocation_id=str(v.inv), partition=partition_of(v.inv.partition_key, PARTITIONS),
                       partitions=PARTITIONS, kind=HandlerKind(sc.kind), service=sc.service,
                       key=v.start.key if sc.kind != "service" else None, state=dict(v.state_map),
                       commands_before=v.commands_before(), now_ms=NOW_MS, schema=SCHEMA)


ALL_ATTEMPTS = sorted(p.stem for p in VECTORS_DIR.glob("*_v[67].json"))


def planned_in_batches(name: str, cuts: set[int]) -> tuple[list[effects.Batch], AttemptPlan, bool]:
    """Feed the vector's response frames one by one, taking a batch after frame i for every i in
    `cuts` and wherever `needs_flush` asks; the batches, the final plan and the attempt-wide grew."""
    planner = effects.AttemptPlanner(any_context(name))
    batches = []
    for i, f in enumerate(vec(name).response_frames):
        planner.feed(f)
        if i in cuts or effects.needs_flush(f):
            batches.append(planner.take_batch())
    assert planner.done
    return batches, planner.finish(), planner.grew


TERMINAL_FIELDS = ("terminal", "result", "awaiting", "error_code", "error_message", "error_code_name",
                   "restate_code", "next_retry_delay_ms", "error_behavior")


@pytest.mark.parametrize("name", ALL_ATTEMPTS)
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(cuts=st.sets(st.integers(min_value=0, max_value=12), max_size=6))
def test_batches_add_up_to_the_whole_attempts_plan(name: str, cuts: set[int]) -> None:
    whole = plan_attempt(vec(name).response_frames, any_context(name))
    batches, final, grew = planned_in_batches(name, cuts)
    ops = [op for b in batches for op in b.ops] + final.ops
    entries = [e for b in batches for e in b.entries] + final.entries
    assert entries == whole.entries
    if whole.terminal == "END":
        # The journal goes with the completion (the contexts keep no journal): the terminal's part
        # drops its journal ops, the earlier batches' entries are deleted with the journal.
        assert effects.without_journal(ops) == whole.ops and effects.without_journal(final.ops) == final.ops
    else:
        assert ops == whole.ops
    assert sum(b.timers for b in batches) + final.timers == whole.timers
    assert sum(b.outbox for b in batches) + final.outbox == whole.outbox
    assert (grew or final.grew) == bool(entries)
    assert [getattr(final, k) for k in TERMINAL_FIELDS] == [getattr(whole, k) for k in TERMINAL_FIELDS]


def test_a_run_proposal_closes_a_batch_with_its_completion() -> None:
    """j2 (a captured bidi ctx.run): RunCommand + ProposeRunCompletion are stored together, before
    the stream goes on; the Output follows in the terminal's part."""
    v = vec("j2_bidi_run_v6")
    run, propose, output, end = v.response_frames
    assert [effects.needs_flush(f) for f in (run, propose, output, end)] == [False, True, False, False]
    batches, final, grew = planned_in_batches("j2_bidi_run_v6", set())
    [batch] = batches
    assert batch.ops[0] == JournalEntry(run.encode())
    assert isinstance(batch.ops[1], NotificationEntry) and batch.ops[1].key == "c1"
    assert parse_message(decode_frames(batch.ops[1].frame)[0]).completion_id == 1
    assert len(batch.ops) == 2 and grew
    assert final.terminal == "END" and final.ops == []  # a plain service's journal is not kept


def test_an_acknowledgement_request_closes_a_batch() -> None:
    v = vec("j3_bidi_run_ack_v7")
    propose = v.response_frames[1]
    assert propose.requested_ack and effects.needs_flush(propose)
    held = Frame(T.SET_STATE_COMMAND, 0, b"")
    assert not effects.needs_flush(held)
    assert effects.needs_flush(dataclasses.replace(held, flags=0x8000))


def test_a_sleep_closes_a_batch_with_its_timer() -> None:
    batches, final, _ = planned_in_batches("j1_bidi_sleep_v6", set())
    [batch] = batches  # SetState + Sleep: the timer must be set before the stream waits on it
    assert [type(op).__name__ for op in batch.ops] == ["JournalEntry", "SetState", "JournalEntry", "AddTimer"]
    assert batch.timers == 1 and final.timers == 0 and final.terminal == "END"


def test_the_planner_refuses_frames_after_the_terminal_and_a_finish_without_one() -> None:
    v = vec("a_greet_v6")
    output, end = v.response_frames
    planner = effects.AttemptPlanner(context(v))
    planner.feed(output)
    assert not planner.done
    with pytest.raises(PlanError, match="ended without End"):
        planner.finish()
    planner.feed(end)
    assert planner.done
    with pytest.raises(PlanError, match="frames after the terminal message 0x0003"):
        planner.feed(output)
    with pytest.raises(PlanError, match="frames after the terminal message 0x0003"):
        plan_attempt([end, output], context(v))


def test_a_malformed_frame_fed_is_a_plan_error() -> None:
    planner = effects.AttemptPlanner(context(vec("b_object_eager_state_v6")))
    with pytest.raises(PlanError):
        planner.feed(Frame(T.SET_STATE_COMMAND, 0, b"\xff\xff"))


def test_an_unknown_call_target_rejects_at_its_frame_and_keeps_the_earlier_batches() -> None:
    v = vec("l1_call_suspend_v6")
    planner = effects.AttemptPlanner(context(v))
    call = next(f for f in v.response_frames if f.type == T.CALL_COMMAND)
    msg = parse_message(call)
    msg.service_name = "Ghost"
    ghost = Frame(T.CALL_COMMAND, 0, msg.SerializeToString())
    before = [f for f in v.response_frames[:v.response_frames.index(call)]]
    for f in before:
        planner.feed(f)
    taken = planner.take_batch()
    with pytest.raises(effects.CommandRejected, match="Ghost/"):
        planner.feed(ghost)
    assert taken.entries == [f.encode() for f in before if is_command(f.type)]
