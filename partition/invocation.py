r"""The invocation record, typed once: statuses and their lifecycle, handler kinds, the status
hash and its codec, and results.

Python and the Lua transitions must agree on every name below. `scripts.py` generates the Lua
constants (`ST_INVOKED`, `KIND_EXCLUSIVE`, `F_STATUS` ...) from these definitions when it loads the
scripts, so the two sides cannot drift; `tests/integration/test_lua_constants.py` fails on a bare
status or field literal in a `.lua` file. What the scripts reply, how an attempt ends and the ops
of an `apply` transition are in `partition/transition.py`.

The status hash `sg:{pI}:inv:<id>` (`keys.invocation`), one row per field. `InvocationRecord`
is its typed form; `to_fields()` / `from_fields()` is the only codec (`FIELDS` is this table):

| field | attribute | type | meaning | written by | read by |
|---|---|---|---|---|---|
| st | status | Status | where the invocation is in its lifecycle | accept, attempt_start, apply, notify | every script, attach/output, driver |
| svc | service | text | target service | accept | notify (woken target), driver (locate) |
| hdl | handler | text | target handler | accept | driver (attempt, retry policy) |
| key | key | text? | virtual object / workflow key; absent for services | accept | notify (woken target), driver (locate) |
| kind | kind | HandlerKind | service, exclusive, shared or workflow | accept | attempt_start (lock, state), apply END (workflow retention), driver |
| in | input_frame | bytes | the framed InputCommand (journal entry 0); dropped at completion | accept | driver (every attempt) |
| cret | completion_retention_ms | int | how long the completed invocation is kept (0: deleted at once) | accept | apply END |
| exec | execution_time_ms | int? | due time of a delayed start | accept | accept (duplicate's execution time) |
| rq | request_nonce | bytes | nonce of the client request that created it | accept | accept (a re-sent request is answered Accepted) |
| pars | parents | text | callers waiting for the result, 'id\|partition\|completion id,' each (an attacher's 'id\|partition\|completion id\|message type,') | accept | apply END (answered, then dropped), accept |
| att | attempts | int | failed attempts since the journal last grew | accept, apply | driver (Start.retry_count_since_last_stored_entry, back-off) |
| lg | last_growth_ms | int | when the journal last grew | accept, apply | driver (Start.duration_since_last_stored_entry) |
| wait | waiting_for | text | awaited notification keys while suspended, ' c1 s1 ' | apply SUSPEND; cleared on wake-up | notify, apply (promise waiters) |
| lerr | last_failure | text | why the last attempt failed (the only record of why it is paused) | apply ERROR | operators (HGETALL) |
| res | result | Result? | the result as an encoded NotificationTemplate result field | apply END | accept (duplicates, calling parents), attach/output, driver |
| exp | expires_ms | int? | when the retained result expires | apply END | accept (duplicates), attach/output |
| scp | scope | text? | flow-control scope; its per-key keys are the scope's own | accept | target_of (locate), driver (Start.scope) |
| lk | limit_key | text? | the limit key `l1` or `l1/l2` (only with a scope) | accept | accept (its queue), driver (Start.limit_key) |
| vqb | vqueue | text | the concurrency bucket it counts against ('' = unlimited) | accept | attempt_start, apply END, kill, cancel (slot) |
| jr | journal_retention_ms | int? | how long the journal (input first) is kept after completion, at most `cret` (absent: dropped) | accept | apply END, kill |
| an | apply_nonce | bytes | nonce of the last SUSPEND apply (a retry after a lost reply is not applied twice) | apply SUSPEND | apply |
| dp | pinned_deployment_id | text? | the deployment every attempt goes to, pinned by the first attempt that stored an entry | apply (first entry), resume (re-pin), accept (restart-as-new) | driver (attempt), resume, restart-as-new, /query |
| pv | pinned_protocol_version | int? | the service protocol version negotiated with it when pinned | apply (with `dp`) | resume and restart-as-new (compatibility), /query |
| sd | random_seed | int? | the random seed every attempt gets (absent: derived from the id); a restart from a journal prefix keeps the original's, so the copied entries replay | restart-as-new (`from` > 0) | driver (attempt) |
| idk | idempotency_key | text? | the idempotency key the client (or a calling handler) gave; not one the ingress generated | accept | /query (sys_idempotency, sys_invocation) |
| by | invoked_by | text? | `<id>\|<service>` of the invocation whose handler sent this one (absent: the ingress) | accept | /query (sys_invocation.invoked_by*) |
| ss | stream_seq | text | `<attempt nonce>\|<n>` of the last append of a live attempt (a retry is not stored twice) | append | append |

Besides these, one `n:<notification key>` field (value '1') per notification the journal holds
(`c<completion id>`, `s<signal index>`, `n<hex signal name>`): the dedup index and the check
that a suspension is already satisfied.

At completion with a retention, `apply` END (and `kill`, through `_apply_end.lua` `retain`) writes
the hash afresh with only what readers of a completed invocation use: `st res exp`, then `svc hdl
key kind scp lk cret exec rq` as they were (absent ones stay absent), and `dp pv` only when the journal
is retained (their one use after completion is restart-as-new, which needs the journal; a call
without journal retention stays within its 256 B). `in` moves to the journal (or goes), and `pars
att lg wait lerr vqb jr an` and the `n:*` fields go. A new hash rather than HDELs:
one that ever held a value over Redis's `hash-max-ziplist-value` (the input frame, usually) keeps
the large encoding: 1,040 B instead of 228 B for a `Greeter/greet` call on Redis 6.2 (docs/lifecycle.md).

Retired field names (`jret`, `ct`, `mt`, `rt`, `idem`, `rc`, `rm`, `rv`) are never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import xxhash

from partition.keys import TimerKind
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.kinds import HandlerKind as HandlerKind  # noqa: PLC0414  re-exported: part of the record

ArgvValue = str | bytes | int


class Status(str, Enum):
    """An invocation's status (Restate's `sys_invocation.status` names); the value is stored."""

    SCHEDULED = "scheduled"  # accepted with a delay; its start timer `s|<id>` starts it
    INBOXED = "inboxed"  # waiting in its key's inbox for the exclusive lock
    INVOKED = "invoked"  # being driven by the partition owner (listed in `active`)
    SUSPENDED = "suspended"  # waiting for one of the notifications in `wait`
    BACKING_OFF = "backing-off"  # a failed attempt; its retry timer `r|<id>` restarts it
    PAUSED = "paused"  # paused by the PAUSE policy or the admin API; `resume` restarts it
    COMPLETED = "completed"  # result stored; kept for the completion retention


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the lifecycle (DESIGN §6). In `sources` None is "no invocation yet", in
    `targets` "deleted"; empty `targets`: the status does not change. `script` names the
    transition implementing it ('' = not built yet; the rows of the lifecycle commands `kill`,
    `cancel`, `pause` and `resume` are built in scripts of those names but keep '' until
    tests/unit/test_invocation.py lists them)."""

    sources: frozenset[Status | None]
    event: str
    targets: frozenset[Status | None]
    script: str


def _s(*statuses: Status | None) -> frozenset[Status | None]:
    return frozenset(statuses)


_NEW = _s(None)
_ACTIVE = _s(Status.INVOKED, Status.SUSPENDED, Status.BACKING_OFF, Status.PAUSED)
TRANSITIONS: tuple[Transition, ...] = (
    Transition(_NEW, "accept with a delay", _s(Status.SCHEDULED), "accept"),
    Transition(_NEW, "accept; exclusive handler whose key is locked", _s(Status.INBOXED), "accept"),
    Transition(_NEW, "accept otherwise", _s(Status.INVOKED), "accept"),
    Transition(_s(Status.SCHEDULED), "start timer fires", _s(Status.INBOXED, Status.INVOKED), "attempt_start"),
    Transition(_s(Status.INBOXED), "the key lock is handed over", _s(Status.INVOKED), "apply"),
    # Flow control: over its concurrency limit a scoped invocation waits in its vqueue (inboxed);
    # a freed slot makes the vqueue's next one scheduled (start timer due now), holding the slot.
    Transition(_NEW, "accept; its concurrency bucket is full", _s(Status.INBOXED), "accept"),
    Transition(_s(Status.INBOXED), "a concurrency slot is handed over (also by kill, cancel)", _s(Status.SCHEDULED),
               "apply"),
    Transition(_s(Status.INVOKED), "suspension message", _s(Status.SUSPENDED), "apply"),
    Transition(_s(Status.SUSPENDED), "an awaited notification is stored", _s(Status.INVOKED), "notify, apply"),
    Transition(_s(Status.INVOKED), "retryable failure", _s(Status.BACKING_OFF), "apply"),
    Transition(_s(Status.BACKING_OFF), "retry timer fires", _s(Status.INVOKED), "attempt_start"),
    # The retry policy is applied by the failing attempt itself, so exhaustion leaves `invoked`.
    Transition(_s(Status.INVOKED), "retry policy exhausted (PAUSE)", _s(Status.PAUSED), "apply"),
    Transition(_s(Status.PAUSED, Status.BACKING_OFF, Status.SUSPENDED), "resume", _s(Status.INVOKED), ""),
    Transition(_s(Status.INVOKED, Status.SUSPENDED, Status.BACKING_OFF), "pause", _s(Status.PAUSED), ""),
    # Kept for its retention, else deleted at once.
    Transition(_s(Status.INVOKED), "output + end, or a failure under KILL / FAIL", _s(Status.COMPLETED, None),
               "apply"),
    Transition(_s(Status.SCHEDULED, Status.INBOXED), "cancel (never started: removed, callers answered)",
               _s(None), ""),
    Transition(_s(Status.INVOKED), "cancel (a signal is appended; the handler decides)", _s(), ""),
    Transition(_s(Status.SUSPENDED, Status.BACKING_OFF, Status.PAUSED),
               "cancel (a signal is appended and the invocation woken)", _s(Status.INVOKED), ""),
    Transition(_s(Status.SCHEDULED, Status.INBOXED), "kill (never started: removed, callers answered 409 killed)",
               _s(None), ""),
    Transition(_ACTIVE, "kill (completed with 409 killed)", _s(Status.COMPLETED, None), ""),
    Transition(_s(Status.COMPLETED), "purge, or the retention expires", _s(None), "TTL"),
)

# A due timer member of this kind starts an invocation that is in this status (else it is stale).
TIMER_WAITERS = {TimerKind.START: Status.SCHEDULED, TimerKind.RETRY: Status.BACKING_OFF}


def allowed(source: Status | None, target: Status | None) -> bool:
    """Whether some lifecycle row moves `source` (None: nothing yet) to `target` (None: deleted);
    staying in a status is always allowed."""
    if source is not None and source == target:
        return True
    return any(source in row.sources and target in row.targets for row in TRANSITIONS)


# ---- results -------------------------------------------------------------------------------------


Metadata = tuple[tuple[str, str], ...]  # a TerminalError's metadata entries, in the order received


@dataclass(frozen=True, slots=True)
class Result:
    """An invocation's result: `code` 0 with `value`, or a failure (`code`, `message` and the
    TerminalError's `metadata` entries, Failure field 3)."""

    code: int = 0
    message: str = ""
    value: bytes = b""
    metadata: Metadata = ()

    @classmethod
    def of_failure(cls, failure: pb.Failure, default_code: int = 0) -> Result:
        """The result a protocol Failure stands for (`default_code` when it carries none)."""
        entries = tuple((m.key, m.value) for m in failure.metadata)
        return cls(failure.code or default_code, failure.message, metadata=entries)

    def failure(self) -> pb.Failure:
        """This failure as the protocol's Failure message (metadata entries in order)."""
        return pb.Failure(code=self.code, message=self.message,
                          metadata=[pb.FailureMetadata(key=k, value=v) for k, v in self.metadata])

    def encode(self) -> bytes:
        """The NotificationTemplate result field (Value or Failure) that the hash stores and Lua
        wraps into a CallCompletion for each waiting parent."""
        if self.code == 0:
            return pb.NotificationTemplate(value=pb.Value(content=self.value)).SerializeToString()
        return pb.NotificationTemplate(failure=self.failure()).SerializeToString()

    @classmethod
    def decode(cls, raw: bytes) -> Result:
        """Raises protocol.ProtocolError for bytes that are not such a field."""
        msg = protocol.parse_payload(protocol.MessageType.CALL_COMPLETION, raw)
        assert isinstance(msg, pb.NotificationTemplate)
        if msg.HasField("failure"):
            return cls.of_failure(msg.failure)
        return cls(0, "", msg.value.content)


def rpc_result(r: Result, expires_ms: int | None = None) -> spb.Result:
    """An invocation's result as the partition RPCs return it (`expires_ms` only when known;
    `failure_metadata` is a map: a key repeated in the entries keeps its last value)."""
    out = spb.Result(value=r.value, failure_code=r.code, failure_message=r.message,
                     failure_metadata=dict(r.metadata))
    if expires_ms is not None:
        out.expires_ms = expires_ms
    return out


KILLED = Result(409, "killed")  # the result of a killed invocation (Restate's exact failure)
CANCELLED = Result(409, "cancelled")  # what callers of a cancelled invocation that never started get

VOID_FIELD = pb.NotificationTemplate(void=pb.Void()).SerializeToString()  # the result of a void completion


# ---- notification keys ---------------------------------------------------------------------------

NOTE_PREFIX = "n:"  # hash field prefix of the notification index
COMPLETION_KEY = "c"
SIGNAL_KEY = "s"
NAMED_SIGNAL_KEY = "n"


def completion_key(completion_id: int | str) -> str:
    return f"{COMPLETION_KEY}{completion_id}"


def signal_key(index: int) -> str:
    return f"{SIGNAL_KEY}{index}"


def named_signal_key(name: str) -> str:
    """Dedup / wait key of a named signal: hex, so it never contains a space or a NUL."""
    return NAMED_SIGNAL_KEY + name.encode().hex()


# ---- the status hash -----------------------------------------------------------------------------


class HashField(str, Enum):
    """Field names of the status hash (rows of the table above)."""

    STATUS = "st"
    SERVICE = "svc"
    HANDLER = "hdl"
    KEY = "key"
    KIND = "kind"
    INPUT = "in"
    COMPLETION_RETENTION = "cret"
    EXECUTION_TIME = "exec"
    REQUEST_NONCE = "rq"
    PARENTS = "pars"
    ATTEMPTS = "att"
    LAST_GROWTH = "lg"
    WAITING = "wait"
    LAST_FAILURE = "lerr"
    RESULT = "res"
    EXPIRES = "exp"
    SCOPE = "scp"
    LIMIT_KEY = "lk"
    VQUEUE = "vqb"
    JOURNAL_RETENTION = "jr"
    APPLY_NONCE = "an"
    PINNED_DEPLOYMENT = "dp"
    PINNED_PROTOCOL = "pv"
    RANDOM_SEED = "sd"
    IDEMPOTENCY_KEY = "idk"
    INVOKED_BY = "by"
    STREAM_SEQ = "ss"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One row of the field table: the hash field, the record attribute and its codec."""

    field: HashField
    attr: str
    type: str
    meaning: str
    writers: str
    readers: str
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], ArgvValue]

    def row(self) -> str:
        cells = (self.field.value, self.attr, self.type, self.meaning, self.writers, self.readers)
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _text(raw: bytes) -> str:
    return raw.decode()


def _same(value: Any) -> ArgvValue:
    return value  # type: ignore[no-any-return]


def _enum_value(value: Any) -> ArgvValue:
    return value.value  # type: ignore[no-any-return]


def _spec(f: HashField, attr: str, ty: str, meaning: str, writers: str, readers: str) -> FieldSpec:
    codecs: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], ArgvValue]]] = {
        "text": (_text, _same), "text?": (_text, _same), "int": (int, _same), "int?": (int, _same),
        "bytes": (bytes, _same), "Status": (lambda r: Status(r.decode()), _enum_value),
        "HandlerKind": (lambda r: HandlerKind(r.decode()), _enum_value),
        "Result?": (Result.decode, lambda r: r.encode()),
    }
    decode, encode = codecs[ty]
    return FieldSpec(f, attr, ty, meaning, writers, readers, decode, encode)


H = HashField
FIELDS: tuple[FieldSpec, ...] = (
    _spec(H.STATUS, "status", "Status", "where the invocation is in its lifecycle",
          "accept, attempt_start, apply, notify", "every script, attach/output, driver"),
    _spec(H.SERVICE, "service", "text", "target service", "accept", "notify (woken target), driver (locate)"),
    _spec(H.HANDLER, "handler", "text", "target handler", "accept", "driver (attempt, retry policy)"),
    _spec(H.KEY, "key", "text?", "virtual object / workflow key; absent for services", "accept",
          "notify (woken target), driver (locate)"),
    _spec(H.KIND, "kind", "HandlerKind", "service, exclusive, shared or workflow", "accept",
          "attempt_start (lock, state), apply END (workflow retention), driver"),
    _spec(H.INPUT, "input_frame", "bytes", "the framed InputCommand (journal entry 0); dropped at completion",
          "accept", "driver (every attempt)"),
    _spec(H.COMPLETION_RETENTION, "completion_retention_ms", "int",
          "how long the completed invocation is kept (0: deleted at once)", "accept", "apply END"),
    _spec(H.EXECUTION_TIME, "execution_time_ms", "int?", "due time of a delayed start", "accept",
          "accept (duplicate's execution time)"),
    _spec(H.REQUEST_NONCE, "request_nonce", "bytes", "nonce of the client request that created it", "accept",
          "accept (a re-sent request is answered Accepted)"),
    _spec(H.PARENTS, "parents", "text", "callers waiting for the result, 'id|partition|completion id,' each "
          "(an attacher's 'id|partition|completion id|message type,')",
          "accept", "apply END (answered, then dropped), accept"),
    _spec(H.ATTEMPTS, "attempts", "int", "failed attempts since the journal last grew", "accept, apply",
          "driver (Start.retry_count_since_last_stored_entry, back-off)"),
    _spec(H.LAST_GROWTH, "last_growth_ms", "int", "when the journal last grew", "accept, apply",
          "driver (Start.duration_since_last_stored_entry)"),
    _spec(H.WAITING, "waiting_for", "text", "awaited notification keys while suspended, ' c1 s1 '",
          "apply SUSPEND; cleared on wake-up", "notify, apply (promise waiters)"),
    _spec(H.LAST_FAILURE, "last_failure", "text",
          "why the last attempt failed (the only record of why it is paused)", "apply ERROR", "operators (HGETALL)"),
    _spec(H.RESULT, "result", "Result?", "the result as an encoded NotificationTemplate result field",
          "apply END", "accept (duplicates, calling parents), attach/output, driver"),
    _spec(H.EXPIRES, "expires_ms", "int?", "when the retained result expires", "apply END",
          "accept (duplicates), attach/output"),
    _spec(H.SCOPE, "scope", "text?", "flow-control scope; its per-key keys are the scope's own", "accept",
          "target_of (locate), driver (Start.scope)"),
    _spec(H.LIMIT_KEY, "limit_key", "text?", "the limit key `l1` or `l1/l2` (only with a scope)", "accept",
          "accept (its queue), driver (Start.limit_key)"),
    _spec(H.VQUEUE, "vqueue", "text", "the concurrency bucket it counts against ('' = unlimited)", "accept",
          "attempt_start, apply END, kill, cancel (slot)"),
    _spec(H.JOURNAL_RETENTION, "journal_retention_ms", "int?",
          "how long the journal (input first) is kept after completion, at most `cret` (absent: dropped)", "accept",
          "apply END, kill"),
    _spec(H.APPLY_NONCE, "apply_nonce", "bytes",
          "nonce of the last SUSPEND apply (a retry after a lost reply is not applied twice)",
          "apply SUSPEND", "apply"),
    _spec(H.PINNED_DEPLOYMENT, "pinned_deployment_id", "text?",
          "the deployment every attempt goes to, pinned by the first attempt that stored an entry",
          "apply (first entry), resume (re-pin), accept (restart-as-new)",
          "driver (attempt), resume, restart-as-new, /query"),
    _spec(H.PINNED_PROTOCOL, "pinned_protocol_version", "int?",
          "the service protocol version negotiated with it when pinned", "apply (with `dp`)",
          "resume and restart-as-new (compatibility), /query"),
    _spec(H.RANDOM_SEED, "random_seed", "int?",
          "the random seed every attempt gets (absent: derived from the id); a restart from a journal prefix "
          "keeps the original's, so the copied entries replay", "restart-as-new (`from` > 0)",
          "driver (attempt)"),
    _spec(H.IDEMPOTENCY_KEY, "idempotency_key", "text?",
          "the idempotency key the client (or a calling handler) gave; not one the ingress generated", "accept",
          "/query (sys_idempotency, sys_invocation)"),
    _spec(H.INVOKED_BY, "invoked_by", "text?",
          "`<id>|<service>` of the invocation whose handler sent this one (absent: the ingress)", "accept",
          "/query (sys_invocation.invoked_by*)"),
    _spec(H.STREAM_SEQ, "stream_seq", "text",
          "`<attempt nonce>|<n>` of the last append of a live attempt (a retry is not stored twice)",
          "append", "append"),
)
_BY_NAME = {spec.field.value.encode(): spec for spec in FIELDS}


def field_table() -> str:
    """The field table of this module's docstring, rendered from `FIELDS`."""
    head = "| field | attribute | type | meaning | written by | read by |\n|---|---|---|---|---|---|\n"
    return head + "\n".join(spec.row() for spec in FIELDS)


@dataclass(frozen=True, slots=True)
class PinnedDeployment:
    """Restate's `PinnedDeployment`: the deployment an invocation runs on from its first stored
    entry on, and the protocol version negotiated with it then."""

    deployment_id: str
    protocol_version: int


class RecordError(ValueError):
    """A status hash lacks a required field or holds a value the codec cannot read."""


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    """The typed status hash (see the field table); `n:*` notification fields are not part of it."""

    status: Status
    service: str
    handler: str
    kind: HandlerKind
    key: str | None = None
    input_frame: bytes = b""
    completion_retention_ms: int = 0
    execution_time_ms: int | None = None
    request_nonce: bytes = b""
    parents: str = ""
    attempts: int = 0
    last_growth_ms: int = 0
    waiting_for: str = ""
    last_failure: str = ""
    result: Result | None = None
    expires_ms: int | None = None
    scope: str | None = None
    limit_key: str | None = None
    vqueue: str = ""
    journal_retention_ms: int | None = None
    apply_nonce: bytes = b""
    pinned_deployment_id: str | None = None
    pinned_protocol_version: int | None = None
    random_seed: int | None = None
    idempotency_key: str | None = None
    invoked_by: str | None = None
    stream_seq: str = ""

    @property
    def pin(self) -> PinnedDeployment | None:
        """The deployment this invocation is pinned to (None: no attempt stored an entry yet)."""
        if self.pinned_deployment_id is None:
            return None
        return PinnedDeployment(self.pinned_deployment_id, self.pinned_protocol_version or 0)

    def pinned_to(self, pin: PinnedDeployment) -> InvocationRecord:
        """This record once `pin` is stored (what `apply` did for the attempt's first entry)."""
        return replace(self, pinned_deployment_id=pin.deployment_id, pinned_protocol_version=pin.protocol_version)

    def to_fields(self) -> list[ArgvValue]:
        """Field, value pairs for HSET; absent and empty values are left out."""
        out: list[ArgvValue] = []
        for spec in FIELDS:
            value = getattr(self, spec.attr)
            if value is not None and value != "" and value != b"":
                out += (spec.field.value, spec.encode(value))
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> InvocationRecord:
        """Decode an HGETALL reply (bytes names and values). Raises RecordError."""
        values: dict[str, Any] = {}
        try:
            for name, value in raw.items():
                spec = _BY_NAME.get(name)
                if spec is not None:
                    values[spec.attr] = spec.decode(value)
            return cls(**values)
        except (TypeError, ValueError, protocol.ProtocolError) as e:
            raise RecordError(f"unreadable invocation hash: {e}") from e

    def with_attempt(self, attempts: int, grew_at_ms: int | None) -> InvocationRecord:
        """After a stored attempt: the failure count, and the growth time if the journal grew."""
        if grew_at_ms is None:
            return replace(self, attempts=attempts)
        return replace(self, attempts=attempts, last_growth_ms=grew_at_ms)


def random_seed(invocation_id: str) -> int:
    """An invocation's random seed without storage: the same on every attempt."""
    return xxhash.xxh3_64_intdigest(invocation_id.encode())


def parent_entry(parent: spb.Parent) -> str:
    """`<id>|<partition>|<completion id>,`: one waiting caller in the `pars` field."""
    return f"{parent.invocation_id}|{parent.partition}|{parent.result_completion_id},"


def new_record(req: spb.InvokeRequest, now_ms: int) -> InvocationRecord:
    """The record of an invocation `req` creates (the one place that builds it); `accept.lua`
    decides its final status. A start time not in the future means "now"."""
    start_ms = req.execution_time_ms if req.HasField("execution_time_ms") else None
    if start_ms is not None and start_ms <= now_ms:
        start_ms = None
    return InvocationRecord(
        status=Status.INVOKED if start_ms is None else Status.SCHEDULED,
        service=req.service, handler=req.handler, kind=HandlerKind.from_proto(req.kind),
        key=req.key if req.HasField("key") else None,
        input_frame=protocol.input_command(req.body, [(h.key, h.value) for h in req.headers]),
        completion_retention_ms=req.completion_retention_ms, execution_time_ms=start_ms,
        journal_retention_ms=req.journal_retention_ms or None,
        parents=parent_entry(req.parent) if req.HasField("parent") else "",
        attempts=0, last_growth_ms=now_ms,
        scope=req.scope if req.HasField("scope") else None,
        limit_key=req.limit_key if req.HasField("limit_key") else None,
        invoked_by=req.invoked_by or None,
        **({"request_nonce": req.request_nonce} | _idempotency_fields(req)),
    )


def _idempotency_fields(req: spb.InvokeRequest) -> dict[str, Any]:
    """A key the client gave is kept (text); one the ingress generated is not (docs/architecture.md
    decision 32), and neither is a nonce: only this request knows that key, so any duplicate of
    the invocation is its re-send (`leader.invoke`)."""
    if not req.HasField("idempotency_key"):
        return {}
    if req.idempotency_key_generated:
        return {"request_nonce": b""}
    return {"idempotency_key": req.idempotency_key}


# ---- what callers read back ----------------------------------------------------------------------

RESULT_FIELDS = (HashField.STATUS.value, HashField.RESULT.value, HashField.EXPIRES.value)
TARGET_FIELDS = (HashField.SERVICE.value, HashField.KEY.value, HashField.SCOPE.value)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """What attach / get_output read: the status and, once completed, the result."""

    status: Status
    result: Result | None
    expires_ms: int | None

    @classmethod
    def from_values(cls, values: list[bytes | None]) -> StoredResult | None:
        """From an HMGET of `RESULT_FIELDS`; None when the invocation does not exist."""
        st, res, exp = values
        if st is None:
            return None
        return cls(Status(st.decode()), Result.decode(res) if res else None, int(exp) if exp else None)
