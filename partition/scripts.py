"""Loads `lua/*.lua` once and exposes one typed async wrapper per state transition.

No other module calls EVAL/EVALSHA. A transition's script is composed, in this order, of:

1. the constants `lua_constants()` generates from the Python definitions (`partition/invocation.py`:
   statuses, handler kinds, hash fields; `partition/transition.py`: opcodes, terminal kinds, reply
   codes; `partition/keys.py`: timer members; `partition/outbox_codec.py`: outbox tags;
   `shardgate.protocol`: the message types Lua frames), so a
   `.lua` file never spells one of them and the two sides cannot drift;
2. `_prelude.lua`: the fence check and the little protobuf framing Lua still does;
3. the parts `COMPOSITION` lists (`_*.lua`), then the transition's own file,

so every transition is still one EVALSHA. Each wrapper turns the reply into a typed result
(`partition.transition`'s outcomes, `partition.invocation`'s records) or raises `Fenced`. Scripts run through
redis-py's Script objects (EVALSHA, NOSCRIPT fallback). Two plain reads of the status hash
(`result_of`, `target_of`) live here too, so no other module names a hash field.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from partition import effects, keys, outbox_codec
from partition.errors import Fenced, NotReplicated
from partition.invocation import (
    CANCELLED,
    COMPLETION_KEY,
    KILLED,
    NOTE_PREFIX,
    RESULT_FIELDS,
    TARGET_FIELDS,
    TIMER_WAITERS,
    VOID_FIELD,
    ArgvValue,
    HandlerKind,
    HashField,
    InvocationRecord,
    PinnedDeployment,
    Result,
    Status,
    StoredResult,
    signal_key,
)
from partition.metrics import NOT_REPLICATED, SCRIPT_BATCHED_CALLS, SCRIPT_BATCHES, SCRIPT_DURATION
from partition.restart import RestartOutcome
from partition.transition import (
    OP_ARGS,
    TERMINAL_ARGS,
    AcceptOutcome,
    AppendOutcome,
    ApplyOutcome,
    AttachOutcome,
    ManageOutcome,
    NotifyOutcome,
    Op,
    OpCode,
    ScopeLimitsOutcome,
    SettleOutcome,
    StartOutcome,
    Terminal,
    TerminalKind,
    encode_ops,
    encode_terminal,
)
from shardgate import protocol, redisconn
from shardgate.limits import BucketView, QueueView
from shardgate.protocol import MessageType
from shardgate.redispipe import ScriptPipeline

LUA_DIR = Path(__file__).with_name("lua")

# The cancel signal exactly as a handler's ctx.cancel(id) delivers it (SendSignal{idx 1, void}).
CANCEL_NOTE_KEY = signal_key(effects.CANCEL_SIGNAL)
CANCEL_FRAME = protocol.notification(MessageType.SIGNAL_NOTIFICATION, signal_id=effects.CANCEL_SIGNAL, void=True)
# The key of the Notification carrying an admin state edit (`StateEdit` as its frame); the admin
# API (`ingress/admin/services.py`) spells the same. No journal notification key looks like it.
STATE_EDIT_NOTE_KEY = "edit-state"

# Transition -> the files it is made of, in order (parts first, the transition's own file last).
COMPOSITION: dict[str, tuple[str, ...]] = {
    "accept": ("_parents", "_index", "_scope", "accept"),
    "apply": ("_parents", "_notes", "_scope", "_apply_effects", "_apply_promises", "_apply_suspend",
              "_apply_growth", "_apply_error", "_state", "_apply_end", "apply"),
    # a live (bidirectional) attempt's entries and effects so far; the attempt stays open
    "append": ("_notes", "_apply_effects", "_apply_promises", "_apply_growth", "append"),
    "attempt_start": ("_scope", "attempt_start"),
    "notify": ("_notes", "notify"),
    "settle": ("settle",),
    "outbox_ack": ("outbox_ack",),
    # the lifecycle commands: one fenced transition each
    "kill": ("_parents", "_index", "_scope", "_state", "_apply_end", "_lifecycle", "kill"),
    "cancel": ("_parents", "_index", "_notes", "_scope", "_lifecycle", "cancel"),
    "purge": ("_index", "purge"),
    # flow control: new concurrency limits of a partition's buckets
    "scope_limits": ("_scope", "_scope_limits"),
    "pause": ("_lifecycle", "pause"),
    "resume": ("_lifecycle", "resume"),
    # the admin API's state edit of one object key (queued behind its lock)
    "state_edit": ("_state", "state_edit"),
    # a handler's attach / get-output, answered on the target's partition
    "attach": ("attach",),
    # restart-as-new from a journal prefix: the new invocation, on the original's partition
    "restart": ("_index", "restart"),
}
LEASE_SCRIPTS = ("lease_acquire", "lease_renew", "lease_release")  # self-contained, run as they are

# apply.lua's ARGV: 7 fixed arguments, the terminal kind, its arguments, the attempt's deployment
# pin (id, protocol version; '' when the invocation is pinned already), then the ops.
APPLY_FIXED_ARGS = 7
APPLY_PIN_ARG = APPLY_FIXED_ARGS + 2 + TERMINAL_ARGS
APPLY_FIRST_OP = APPLY_PIN_ARG + 2
# append.lua's ARGV: 8 fixed arguments, the deployment pin (as apply's), then the ops.
APPEND_PIN_ARG = 9
APPEND_FIRST_OP = APPEND_PIN_ARG + 2

# Enum -> the prefix of its members' Lua names (ST_INVOKED, F_STATUS, OP_SET_STATE, APPLY_RESUME ...).
LUA_ENUMS: tuple[tuple[str, type[Enum]], ...] = (
    ("ST", Status), ("KIND", HandlerKind), ("F", HashField), ("OP", OpCode), ("TERM", TerminalKind),
    ("ACCEPT", AcceptOutcome), ("APPLY", ApplyOutcome), ("APPEND", AppendOutcome), ("START", StartOutcome), ("NOTIFY", NotifyOutcome),
    ("SETTLE", SettleOutcome), ("MANAGE", ManageOutcome), ("SCOPE_LIMITS", ScopeLimitsOutcome),
    ("ATTACH", AttachOutcome), ("RESTART", RestartOutcome),
)
LUA_MESSAGE_TYPES = (MessageType.GET_PROMISE_COMPLETION, MessageType.PEEK_PROMISE_COMPLETION,
                     MessageType.COMPLETE_PROMISE_COMPLETION, MessageType.CALL_COMPLETION,
                     MessageType.ATTACH_INVOCATION_COMPLETION, MessageType.GET_INVOCATION_OUTPUT_COMPLETION)


def lua_values() -> dict[str, str | bytes | int]:
    """Every constant of the generated Lua prelude: Lua name -> value."""
    out: dict[str, str | bytes | int] = {}
    for prefix, enum in LUA_ENUMS:
        out.update({f"{prefix}_{m.name}": m.value for m in enum})
    out.update({f"MT_{t.name}": int(t) for t in LUA_MESSAGE_TYPES})
    out.update(
        NOTE_PREFIX=NOTE_PREFIX, COMPLETION_KEY=COMPLETION_KEY,
        TIMER_START=keys.timer_prefix(keys.TimerKind.START), TIMER_RETRY=keys.timer_prefix(keys.TimerKind.RETRY),
        OUTBOX_NOTIFY=outbox_codec.OUTBOX_NOTIFY_TAG, PB_VOID=VOID_FIELD,
        PROMISE_ALREADY_COMPLETED=Result(*effects.PROMISE_ALREADY_COMPLETED).encode(),
        TARGET_NOT_FOUND=Result(*effects.TARGET_NOT_FOUND).encode(),
        APPLY_FIRST_OP=APPLY_FIRST_OP, APPLY_PIN_ARG=APPLY_PIN_ARG,
        APPEND_FIRST_OP=APPEND_FIRST_OP, APPEND_PIN_ARG=APPEND_PIN_ARG,
        STATE_EDIT_TAG=keys.STATE_EDIT_TAG, STATE_EDIT_SEP=keys.STATE_EDIT_SEP,
    )
    return out


def _lua_literal(value: str | bytes | int) -> str:
    if isinstance(value, int):
        return str(value)
    raw = value.encode() if isinstance(value, str) else value
    printable = (chr(b) if 32 <= b < 127 and b not in (39, 92) else f"\\{b:03d}" for b in raw)
    return "'" + "".join(printable) + "'"


def lua_constants() -> str:
    """The generated head of every composed script: `local NAME = value` for `lua_values()`,
    then OP_ARGS (opcode -> number of arguments that follow it in ARGV)."""
    lines = ["-- generated by partition/scripts.py from the Python definitions: do not edit"]
    lines += [f"local {name} = {_lua_literal(value)}" for name, value in lua_values().items()]
    arity = ", ".join(f"[OP_{code.name}] = {n}" for code, n in OP_ARGS.items())
    lines.append(f"local OP_ARGS = {{{arity}}}")
    return "\n".join(lines) + "\n"


def _read(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def source(name: str) -> str:
    """The full source of transition `name` as it is loaded into Redis."""
    if name in LEASE_SCRIPTS:
        return _read(name)
    return lua_constants() + _read("_prelude") + "".join(_read(part) for part in COMPOSITION[name])


# ---- replies -------------------------------------------------------------------------------------


def _pairs(flat: list[Any]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it))


def _int_or_none(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


def _ids(raw: list[bytes]) -> list[str]:
    return [r.decode() for r in raw]


@dataclass(frozen=True, slots=True)
class Target:
    """Where an invocation's per-key keys live (service + object key; key None for services; a
    scoped object's keys are its scope's own)."""

    partition: int
    invocation_id: str
    service: str
    key: str | None
    scope: str | None = None

    @property
    def k(self) -> str:
        return "" if self.key is None else self.key

    def lock(self) -> str:
        return keys.lock(self.partition, self.service, self.k, self.scope)

    def inbox(self) -> str:
        return keys.inbox(self.partition, self.service, self.k, self.scope)

    def state(self) -> str:
        return keys.state(self.partition, self.service, self.k, self.scope)

    def promises(self) -> str:
        return keys.promises(self.partition, self.service, self.k, self.scope)

    def promise_waiters(self) -> str:
        return keys.promise_waiters(self.partition, self.service, self.k, self.scope)

    @classmethod
    def of(cls, partition: int, invocation_id: str, record: InvocationRecord) -> Target:
        """The target of a stored invocation record."""
        return cls(partition, invocation_id, record.service, record.key, record.scope)


@dataclass(frozen=True, slots=True)
class Accepted:
    """Reply of `accept`: a new invocation (INVOKED, INBOXED, SCHEDULED) or a duplicate (DUP)."""

    outcome: AcceptOutcome
    state: dict[bytes, bytes] = field(default_factory=dict)  # INVOKED: the key's state (keyed kinds)
    dup_status: Status | None = None  # DUP: the existing invocation's status ...
    result: Result | None = None  # ... its result once completed
    expires_ms: int | None = None
    execution_time_ms: int | None = None
    parents_notified: int = 0  # outbox entries queued for the calling parent
    request_nonce: bytes = b""  # the nonce of the request that created it
    retry_after_ms: int = 0  # REJECTED: how long until the scope's limit may have room


@dataclass(frozen=True, slots=True)
class Applied:
    """Reply of `apply`."""

    outcome: ApplyOutcome
    status: Status | None = None  # BAD_STATE: the status found (None: no such invocation)
    expires_ms: int | None = None  # COMPLETED with a retention
    next_id: str | None = None  # COMPLETED: the inbox head that got the key lock ...
    next_record: InvocationRecord | None = None
    next_state: dict[bytes, bytes] = field(default_factory=dict)
    new_entries: list[bytes] = field(default_factory=list)  # RESUME: journal from the replayed length on
    woken: list[str] = field(default_factory=list)  # other invocations woken by a promise completion
    parents_notified: int = 0  # COMPLETED: outbox entries queued for waiting parents


@dataclass(frozen=True, slots=True)
class Appended:
    """Reply of `append`: on APPENDED and DUP, the journal length after it and the notifications
    from the attempt's cursor on, (index, frame) in journal order (the other entries there are
    the attempt's own commands, in order)."""

    outcome: AppendOutcome
    status: Status | None = None  # BAD_STATE: the status found (None: no such invocation)
    journal_len: int = 0
    notes: list[tuple[int, bytes]] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)  # APPENDED: other invocations woken by a promise completion


@dataclass(frozen=True, slots=True)
class Started:
    """Reply of `attempt_start` (record, state and journal only when INVOKED)."""

    outcome: StartOutcome
    record: InvocationRecord | None = None
    state: dict[bytes, bytes] = field(default_factory=dict)
    journal: list[bytes] = field(default_factory=list)
    status: Status | None = None  # WAIT: the status that is not startable
    started_from: Status | None = None  # INVOKED: the status it was started from (scheduled: a first start)


@dataclass(frozen=True, slots=True)
class Notified:
    """Reply of `notify`."""

    outcome: NotifyOutcome
    target: Target | None = None  # WOKEN: the invocation to restart (its keys)
    journal_len: int = 0  # APPLIED: the journal's length, the notification its last entry


@dataclass(frozen=True, slots=True)
class Managed:
    """Reply of a lifecycle command (`kill`, `cancel`, `purge`, `pause`, `resume`)."""

    outcome: ManageOutcome
    status: Status | None = None  # the status the command found (None: no such invocation)
    expires_ms: int | None = None  # kill DONE with a retention
    next_id: str | None = None  # kill DONE: the inbox head that got the key lock ...
    next_record: InvocationRecord | None = None
    next_state: dict[bytes, bytes] = field(default_factory=dict)
    parents_notified: int = 0  # kill / cancel DONE: outbox entries queued for waiting parents
    woken: bool = False  # cancel APPENDED / resume DONE: now invoked, to be driven
    started: list[str] = field(default_factory=list)  # kill DONE: other ids to start (scoped inbox head)


def _managed(p: int, reply: list[Any]) -> Managed:
    """The common head of every lifecycle reply: {code, status found, ...}. Raises Fenced."""
    code = ManageOutcome(reply[0].decode())
    if code is ManageOutcome.FENCED:
        raise Fenced(p)
    return Managed(code, Status(reply[1].decode()) if reply[1] else None)


@dataclass(frozen=True, slots=True)
class ReplicaAcks:
    """Every transition waits (Redis WAIT) until `replicas` replicas hold it, at most `timeout_ms`
    (SHARDGATE_REDIS_WAIT_REPLICAS / _TIMEOUT_MS): what is acknowledged survives a failover."""

    replicas: int
    timeout_ms: int


def _attempt_keys(t: Target) -> list[str]:
    """The KEYS of `apply`, `append` and `kill` (as `apply.lua` lists them)."""
    p = t.partition
    return [keys.lease(p), keys.invocation(p, t.invocation_id), keys.active(p), t.lock(), t.inbox(), t.state(),
            keys.journal(p, t.invocation_id), keys.timers(p), keys.outbox(p), t.promises(), t.promise_waiters()]


def _count_batch(calls: int) -> None:
    SCRIPT_BATCHES.inc()
    SCRIPT_BATCHED_CALLS.inc(calls)


class Scripts:
    """Every partition Lua transition, registered once per Redis client, and the typed reads.
    On a standalone server without replica acknowledgements the transitions of concurrent callers
    share round trips (`shardgate.redispipe.ScriptPipeline`: still one EVALSHA each)."""

    def __init__(self, redis: Redis, acks: ReplicaAcks | None = None) -> None:
        self._redis = redis
        self._acks = acks if acks is not None and acks.replicas > 0 else None
        self.pipeline = (ScriptPipeline(redis, on_batch=_count_batch)
                         if self._acks is None and not isinstance(redis, RedisCluster) else None)
        self._scripts = {name: redis.register_script(source(name)) for name in COMPOSITION}
        self._durations: dict[str, Any] = {}  # transition name -> its SCRIPT_DURATION child, looked up once
        self.lease_acquire = redis.register_script(source("lease_acquire"))
        self.lease_renew = redis.register_script(source("lease_renew"))
        self.lease_release = redis.register_script(source("lease_release"))

    async def _run(self, name: str, keys_: list[str], args: Sequence[ArgvValue]) -> Any:
        started = time.perf_counter()
        try:
            if self.pipeline is not None:
                return await self.pipeline.evalsha(self._scripts[name], keys_, args)
            if self._acks is None:
                return await self._scripts[name](keys=keys_, args=args)
            return await self._run_acknowledged(name, keys_, args, self._acks)
        finally:
            timer = self._durations.get(name)
            if timer is None:
                timer = self._durations[name] = SCRIPT_DURATION.labels(name)
            timer.observe(time.perf_counter() - started)

    async def _run_acknowledged(self, name: str, keys_: list[str], args: Sequence[ArgvValue],
                                acks: ReplicaAcks) -> Any:
        """The transition, then WAIT for `acks.replicas` (one round trip). Raises NotReplicated."""
        reply, acked = await redisconn.run_acknowledged(self._redis, self._scripts[name], keys_, args,
                                                        acks.replicas, acks.timeout_ms)
        if acked < acks.replicas:
            NOT_REPLICATED.labels(name).inc()
            raise NotReplicated(f"{name}: {acked} of {acks.replicas} replicas acknowledged it within "
                                f"{acks.timeout_ms} ms")
        return reply

    async def accept(self, t: Target, token: str, record: InvocationRecord, limit: int | str | None = None,
                     now_ms: int | None = None, refusable: bool = False) -> Accepted:
        """Create the invocation `record` describes, or report the existing one with its id (a
        duplicate from a calling parent answers or joins that parent). A record with a `vqueue`
        bucket takes one of its `limit` concurrency slots (`limit`: a count, or an admission of
        `shardgate.limits.Limits.admission` with a rate, whose tokens are counted at `now_ms`), or
        is queued (INBOXED), or, `refusable` under an `on_limit: reject` rule, refused (REJECTED,
        nothing stored). Raises Fenced."""
        p = t.partition
        start_ms = "" if record.execution_time_ms is None else record.execution_time_ms
        vq: list[ArgvValue] = ["", "", "", "", ""]
        if record.vqueue and limit is not None:
            now: ArgvValue = int(time.time() * 1000) if now_ms is None else now_ms
            vq = [record.vqueue, limit, record.limit_key or "", now, "1" if refusable else ""]
        keys_ = [keys.lease(p), keys.invocation(p, t.invocation_id), keys.active(p), t.lock(), t.inbox(), t.state(),
                 keys.timers(p), keys.outbox(p)]
        if record.kind is HandlerKind.WORKFLOW:
            keys_ += [t.promises(), t.promise_waiters()]
        reply = await self._run(
            "accept",
            keys_,
            [token, t.invocation_id, record.kind.value, start_ms, record.parents, *vq, *record.to_fields()],
        )
        code = AcceptOutcome(reply[0].decode())
        if code is AcceptOutcome.FENCED:
            raise Fenced(p)
        if code is AcceptOutcome.INVOKED:
            return Accepted(code, state=_pairs(reply[1]))
        if code is AcceptOutcome.REJECTED:
            return Accepted(code, retry_after_ms=int(reply[1]))
        if code is AcceptOutcome.DUP:
            return Accepted(
                code, dup_status=Status(reply[1].decode()), result=Result.decode(reply[2]) if reply[2] else None,
                expires_ms=_int_or_none(reply[3]), execution_time_ms=_int_or_none(reply[4]),
                parents_notified=int(reply[5]), request_nonce=reply[6],
            )
        return Accepted(code)

    async def apply(self, t: Target, token: str, now_ms: int, replayed_len: int, terminal: Terminal,
                    attempts: int, ops: Sequence[Op], pin: PinnedDeployment | None = None) -> Applied:
        """Store one attempt's journal entries, effects and terminal message; `attempts` is the
        failure count after it. `pin`, the deployment an unpinned invocation's attempt went to, is
        stored when the attempt stored an entry (Restate pins at the first one). Raises Fenced."""
        p = t.partition
        pinned: list[ArgvValue] = ["", ""] if pin is None else [pin.deployment_id, pin.protocol_version]
        args: list[ArgvValue] = [token, t.invocation_id, now_ms, replayed_len, attempts, keys.invocation_prefix(p),
                                 keys.journal_prefix(p), *encode_terminal(terminal), *pinned, *encode_ops(ops)]
        reply = await self._run(
            "apply",
            _attempt_keys(t),
            args,
        )
        return _applied(p, reply)

    async def append(self, t: Target, token: str, now_ms: int, cursor: int, nonce: str, seq: int,
                     ops: Sequence[Op], pin: PinnedDeployment | None = None) -> Appended:
        """Store what a live attempt produced since its last append (journal entries and their
        effects, no terminal); the invocation stays invoked. `cursor` is the journal length the
        attempt knows, (`nonce`, `seq`) numbers the append within its attempt (1, 2, ...), so a
        retry of a stored append is DUP and stores nothing twice. `pin` as for `apply`. Raises Fenced."""
        p = t.partition
        pinned: list[ArgvValue] = ["", ""] if pin is None else [pin.deployment_id, pin.protocol_version]
        args: list[ArgvValue] = [token, t.invocation_id, now_ms, cursor, nonce, keys.invocation_prefix(p),
                                 keys.journal_prefix(p), seq, *pinned, *encode_ops(ops)]
        reply = await self._run(
            "append",
            _attempt_keys(t),
            args,
        )
        code = AppendOutcome(reply[0].decode())
        if code is AppendOutcome.FENCED:
            raise Fenced(p)
        if code is AppendOutcome.BAD_STATE:
            return Appended(code, status=Status(reply[1].decode()) if reply[1] else None)
        flat = reply[2]
        notes = [(int(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        return Appended(code, journal_len=int(reply[1]), notes=notes, woken=[w.decode() for w in reply[3]])

    async def attempt_start(self, t: Target, token: str, timer_member: str = "", now_ms: int | None = None) -> Started:
        """Move an invocation to `invoked` and read its record, state and journal; the fired
        `timer_member` is removed whatever the outcome. `now_ms` (default: Redis's clock) counts a
        scoped invocation's rate tokens. Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "attempt_start",
            [keys.lease(p), keys.invocation(p, t.invocation_id), t.lock(), t.inbox(), t.state(),
             keys.journal(p, t.invocation_id), keys.timers(p), keys.active(p)],
            [token, t.invocation_id, timer_member, "" if now_ms is None else now_ms],
        )
        code = StartOutcome(reply[0].decode())
        if code is StartOutcome.FENCED:
            raise Fenced(p)
        if code is StartOutcome.INVOKED:
            return Started(code, InvocationRecord.from_fields(_pairs(reply[1])), _pairs(reply[2]), list(reply[3]),
                           started_from=Status(reply[4].decode()))
        if code is StartOutcome.WAIT:
            return Started(code, status=Status(reply[1].decode()))
        return Started(code)

    async def notify(self, partition: int, invocation_id: str, token: str, note_key: str, frame: bytes,
                     timer_member: str = "") -> Notified:
        """Append a notification once (and remove the fired `timer_member`); WOKEN carries the
        target to restart. Raises Fenced."""
        p = partition
        reply = await self._run(
            "notify",
            [keys.lease(p), keys.invocation(p, invocation_id), keys.journal(p, invocation_id), keys.timers(p),
             keys.active(p)],
            [token, invocation_id, note_key, frame, timer_member],
        )
        code = NotifyOutcome(reply[0].decode())
        if code is NotifyOutcome.FENCED:
            raise Fenced(p)
        if code is NotifyOutcome.WOKEN:
            svc, key, scope = reply[1]  # notify.lua: HMGET service, key, scope
            return Notified(code, Target(p, invocation_id, svc.decode(), None if key is None else key.decode(),
                                         None if scope is None else scope.decode()))
        if code is NotifyOutcome.APPLIED:
            return Notified(code, journal_len=int(reply[1]))
        return Notified(code)

    async def settle(self, partition: int, invocation_id: str, token: str, timer_member: str = "",
                     rearm_at_ms: int | None = None) -> SettleOutcome:
        """Clean up after a fired timer or a resume that did not reach `attempt_start`: forget a
        vanished invocation, drop a member nothing waits on, or keep one its invocation still waits
        for (pushed to `rearm_at_ms` when given, so it is never left due). Raises Fenced."""
        p = partition
        waiting = ""
        if timer_member:
            status = TIMER_WAITERS.get(keys.parse_timer_member(timer_member).kind)
            waiting = status.value if status is not None else ""
        reply = await self._run(
            "settle", [keys.lease(p), keys.invocation(p, invocation_id), keys.timers(p), keys.active(p)],
            [token, invocation_id, timer_member, waiting, "" if rearm_at_ms is None else rearm_at_ms],
        )
        code = SettleOutcome(reply[0].decode())
        if code is SettleOutcome.FENCED:
            raise Fenced(p)
        return code

    async def scope_limits(self, partition: int, token: str, now_ms: int,
                           limits: Sequence[tuple[str, int | str]]) -> list[str]:
        """Store new concurrency limits of the partition's buckets (only buckets it has); returns the
        queued invocations a raised limit gave a slot (scheduled, start timers due now). Raises Fenced."""
        p = partition
        args: list[ArgvValue] = [token, now_ms]
        for bucket, limit in limits:
            args += [bucket, limit]
        reply = await self._run("scope_limits", [keys.lease(p), keys.invocation_prefix(p), keys.timers(p)], args)
        if ScopeLimitsOutcome(reply[0].decode()) is ScopeLimitsOutcome.FENCED:
            raise Fenced(p)
        return _ids(reply[1])

    async def vqueue_buckets(self, partition: int) -> list[str]:
        """The buckets of the partition with running or queued invocations (a plain read)."""
        members = cast("set[bytes]", await self._redis.smembers(keys.vqueue_buckets(partition)))
        return sorted(m.decode() for m in members)

    async def vqueue_views(self, partition: int, now_ms: int) -> list[BucketView]:
        """Every bucket of the partition with its running count and queues (plain reads, three
        pipelined round trips after the bucket list; nothing when the partition has no bucket)."""
        buckets = await self.vqueue_buckets(partition)
        if not buckets:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.scard(keys.vqueue_running(partition, b))
                pipe.lrange(keys.vqueue_ring(partition, b), 0, -1)
            counts = await pipe.execute()
        rings = {b: sorted({lk.decode() for lk in counts[2 * i + 1]}) for i, b in enumerate(buckets)}
        pairs = [(b, lk) for b in buckets for lk in rings[b]]
        async with self._redis.pipeline(transaction=False) as pipe:
            for b, lk in pairs:
                pipe.llen(keys.vqueue_queue(partition, b, lk))
                pipe.lindex(keys.vqueue_queue(partition, b, lk), 0)
            heads = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in range(len(pairs)):
                head = heads[2 * i + 1]
                pipe.hget(keys.invocation(partition, head.decode() if head else "-"), HashField.LAST_GROWTH.value)
            accepted = await pipe.execute()
        queues: dict[str, list[QueueView]] = {b: [] for b in buckets}
        for i, (b, lk) in enumerate(pairs):
            age = None if accepted[i] is None else max(0, now_ms - int(accepted[i]))
            queues[b].append(QueueView(lk, int(heads[2 * i]), age))
        return [BucketView(b, int(counts[2 * i]), tuple(queues[b])) for i, b in enumerate(buckets)]

    # ---- lifecycle commands ------------------------------------------------------------------
    async def kill(self, t: Target, token: str, now_ms: int) -> Managed:
        """Complete an unfinished invocation with the killed failure, as END would (parents
        answered, lock handed over). Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "kill",
            _attempt_keys(t),
            [token, t.invocation_id, now_ms, keys.invocation_prefix(p), KILLED.encode()],
        )
        head = _managed(p, reply)
        if head.outcome is not ManageOutcome.DONE:
            return head
        next_id = reply[3].decode() or None
        return Managed(
            head.outcome, head.status, expires_ms=_int_or_none(reply[2]), next_id=next_id,
            next_record=InvocationRecord.from_fields(_pairs(reply[4])) if next_id else None,
            next_state=_pairs(reply[5]), parents_notified=int(reply[6]),
            started=_ids(reply[7]),
        )

    async def cancel(self, t: Target, token: str) -> Managed:
        """Remove a never-started invocation (DONE) or append the cancel signal to a started one
        (APPENDED; `woken` when that made it invoked). Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "cancel",
            [keys.lease(p), keys.invocation(p, t.invocation_id), keys.active(p), t.inbox(),
             keys.journal(p, t.invocation_id), keys.timers(p), keys.outbox(p)],
            [token, t.invocation_id, CANCELLED.encode(), CANCEL_NOTE_KEY, CANCEL_FRAME],
        )
        head = _managed(p, reply)
        if head.outcome is ManageOutcome.DONE:
            return Managed(head.outcome, head.status, parents_notified=int(reply[2]))
        if head.outcome is ManageOutcome.APPENDED:
            return Managed(head.outcome, head.status, woken=int(reply[2]) == 1)
        return head

    async def purge(self, t: Target, token: str, journal_only: bool = False) -> Managed:
        """Forget a completed invocation (a workflow run with its state and promises), or only
        its journal. Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "purge",
            [keys.lease(p), keys.invocation(p, t.invocation_id), keys.journal(p, t.invocation_id),
             t.state(), t.promises(), t.promise_waiters()],
            [token, t.invocation_id, "1" if journal_only else ""],
        )
        return _managed(p, reply)

    async def pause(self, partition: int, invocation_id: str, token: str) -> Managed:
        """Move an invoked or backing-off invocation to paused. Raises Fenced."""
        p = partition
        reply = await self._run(
            "pause", [keys.lease(p), keys.invocation(p, invocation_id), keys.active(p), keys.timers(p)],
            [token, invocation_id],
        )
        return _managed(p, reply)

    async def resume(self, partition: int, invocation_id: str, token: str, deployment_id: str = "") -> Managed:
        """Move a paused, backing-off or suspended invocation to invoked (`woken`), pinned to
        `deployment_id` from now on when given and it was pinned. Raises Fenced."""
        p = partition
        reply = await self._run(
            "resume", [keys.lease(p), keys.invocation(p, invocation_id), keys.active(p), keys.timers(p)],
            [token, invocation_id, deployment_id],
        )
        head = _managed(p, reply)
        return Managed(head.outcome, head.status, woken=head.outcome is ManageOutcome.DONE)

    async def state_edit(self, t: Target, token: str, checked: Mapping[bytes, bytes] | None,
                         new_state: Mapping[bytes, bytes]) -> ManageOutcome:
        """Replace the state of `t`'s object key with `new_state` if it still is `checked` (None:
        whatever it is): DONE; APPENDED when the key is locked (queued in its inbox, applied when
        the lock is handed over if the state is still `checked` then); WRONG_STATE when it changed
        (nothing written). Raises Fenced."""
        p = t.partition
        digest = "" if checked is None else state_digest(checked)
        reply = await self._run("state_edit", [keys.lease(p), t.lock(), t.inbox(), t.state()],
                                [token, digest, encode_state(new_state)])
        code = ManageOutcome(reply[0].decode())
        if code is ManageOutcome.FENCED:
            raise Fenced(p)
        return code

    async def attach(self, partition: int, target_id: str, token: str, caller_id: str, caller_partition: int,
                     completion_id: int, output: bool) -> AttachOutcome:
        """Answer a handler's attach (`output` False) or get-output (True) to `target_id` through
        the outbox, or, for an attach to a running target, add the caller to its parents (JOINED).
        Raises Fenced."""
        p = partition
        reply = await self._run(
            "attach", [keys.lease(p), keys.invocation(p, target_id), keys.outbox(p)],
            [token, caller_id, caller_partition, completion_id, "1" if output else ""],
        )
        code = AttachOutcome(reply[0].decode())
        if code is AttachOutcome.FENCED:
            raise Fenced(p)
        return code

    async def restart(self, partition: int, original_id: str, token: str, now_ms: int, journal_len: int,
                      record: InvocationRecord, new_id: str, entries: Sequence[bytes],
                      notes: Sequence[str]) -> RestartOutcome:
        """Create `new_id` from `record` with the journal `entries` (after its input) and the
        notification index `notes`, scheduled due now, while `original_id` is still completed with
        a journal of `journal_len` entries. Raises Fenced."""
        p = partition
        fields = [*record.to_fields(), *(v for note in notes for v in (NOTE_PREFIX + note, "1"))]
        reply = await self._run(
            "restart",
            [keys.lease(p), keys.invocation(p, original_id), keys.journal(p, original_id), keys.invocation(p, new_id),
             keys.journal(p, new_id), keys.timers(p)],
            [token, new_id, now_ms, journal_len, len(entries), *entries, *fields],
        )
        code = RestartOutcome(reply[0].decode())
        if code is RestartOutcome.FENCED:
            raise Fenced(p)
        return code

    async def restart_source(self, partition: int, invocation_id: str) -> tuple[InvocationRecord | None, list[bytes]]:
        """A completed invocation's record and retained journal (plain reads in one round trip;
        None when there is no such invocation)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.invocation(partition, invocation_id))
            pipe.lrange(keys.journal(partition, invocation_id), 0, -1)
            raw, journal = await pipe.execute()
        return (InvocationRecord.from_fields(raw) if raw else None), list(journal)

    async def object_state(self, t: Target) -> dict[bytes, bytes]:
        """The state of `t`'s object key as stored now (a plain read)."""
        return cast("dict[bytes, bytes]", await self._redis.hgetall(t.state()))

    # ---- plain reads of the status hash (no transition, no fence needed) ---------------------
    async def result_of(self, partition: int, invocation_id: str) -> StoredResult | None:
        """Status, result and expiry of an invocation; None when it does not exist."""
        values = await self._redis.hmget(keys.invocation(partition, invocation_id), list(RESULT_FIELDS))
        return StoredResult.from_values(cast("list[bytes | None]", values))

    async def active_ids(self, partition: int) -> list[str]:
        """Ids in the partition's `active` set: the invoked invocations its owner must be driving."""
        members = cast("set[bytes]", await self._redis.smembers(keys.active(partition)))
        return sorted(m.decode() for m in members)

    async def target_of(self, partition: int, invocation_id: str) -> Target | None:
        """Where an invocation's keys live, from its hash; None when it does not exist."""
        found = await self.located(partition, invocation_id)
        return None if found is None else found[0]

    async def located(self, partition: int, invocation_id: str) -> tuple[Target, Status] | None:
        """`target_of` and the invocation's status, in one read; None when it does not exist."""
        svc, key, scope, status = cast("list[bytes | None]", await self._redis.hmget(
            keys.invocation(partition, invocation_id), [*TARGET_FIELDS, HashField.STATUS.value]))
        if svc is None or status is None:
            return None
        return Target(partition, invocation_id, svc.decode(), None if key is None else key.decode(),
                      None if scope is None else scope.decode()), Status(status.decode())

    async def outbox_ack(self, partition: int, token: str, delivered: list[bytes]) -> bool:
        """Drop these delivered outbox messages (by value); False when fenced."""
        reply = await self._run("outbox_ack", [keys.lease(partition), keys.outbox(partition)], [token, *delivered])
        return bool(reply)


def _applied(p: int, reply: list[Any]) -> Applied:
    """Decode `apply.lua`'s reply. Raises Fenced."""
    code = ApplyOutcome(reply[0].decode())
    if code is ApplyOutcome.FENCED:
        raise Fenced(p)
    if code is ApplyOutcome.BAD_STATE:
        return Applied(code, status=Status(reply[1].decode()) if reply[1] else None)
    if code is ApplyOutcome.COMPLETED:
        next_id = reply[2].decode() or None
        return Applied(
            code, expires_ms=_int_or_none(reply[1]), next_id=next_id,
            next_record=InvocationRecord.from_fields(_pairs(reply[3])) if next_id else None,
            next_state=_pairs(reply[4]), woken=_ids(reply[5]), parents_notified=int(reply[6]),
        )
    if code is ApplyOutcome.RESUME:
        return Applied(code, new_entries=list(reply[1]), woken=_ids(reply[2]))
    return Applied(code, woken=_ids(reply[1]))


# ---- state edits ---------------------------------------------------------------------------------


def encode_state(pairs: Mapping[bytes, bytes]) -> bytes:
    """The pairs as `_state.lua` reads them, sorted by field bytes: u32 length + field + u32
    length + value each."""
    return b"".join(struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v for k, v in sorted(pairs.items()))


def state_digest(pairs: Mapping[bytes, bytes]) -> str:
    """The digest `_state.lua` computes of a state (SHA-1 hex of `encode_state`)."""
    return hashlib.sha1(encode_state(pairs), usedforsecurity=False).hexdigest()  # a change check


def state_version(pairs: Mapping[bytes, bytes]) -> str:
    """The restate CLI's version of a state (what `state edit` sends): unpadded base64url of the
    SHA-256 of u64 index, 0x01, field, 0x02, value, 0x03 for each pair in field byte order."""
    h = hashlib.sha256()
    for i, (k, v) in enumerate(sorted(pairs.items())):
        h.update(struct.pack(">Q", i) + b"\x01" + k + b"\x02" + v + b"\x03")
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
