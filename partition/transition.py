r"""The vocabulary of the transitions: what each script replies, how an attempt ends and the ops
of one `apply` transition.

Python and the Lua transitions must agree on every name below, as on the record's
(`partition/invocation.py`). `scripts.py` generates the Lua constants (`OP_SET_STATE`, `OP_ARGS`,
`TERM_SUSPEND`, `APPLY_RESUME`, `NOTIFY_WOKEN` ...) from these enums when it loads the scripts, so
the two sides cannot drift; `tests/integration/test_lua_constants.py` fails on a bare opcode or
reply-code literal in a `.lua` file.

- Reply codes: one `str` enum per script (`AcceptOutcome`, `ApplyOutcome`, `StartOutcome`,
  `NotifyOutcome`, `SettleOutcome`), and one shared by the lifecycle commands (`ManageOutcome`:
  `kill`, `cancel`, `purge`, `pause`, `resume`); `scripts.py` turns them into typed results.
- Terminals: how an attempt ended (`End`, `Suspend`, `AttemptFailed`), passed to `apply.lua` as
  its kind (`TerminalKind`) and `TERMINAL_ARGS` argument slots (`encode_terminal`).
- Ops of one `apply` transition (`encode_ops`: opcode, then the dataclass fields in order):

| op | opcode | arguments | effect |
|---|---|---|---|
| JournalEntry | J | frame | append a command to the journal |
| NotificationEntry | N | key, frame | append a notification once per key |
| SetState | S | key, value | set a state entry of the object / workflow |
| ClearState | C | key | delete a state entry |
| ClearAllState | A | - | delete all state |
| AddTimer | T | due_ms, member | add a timer (`keys.timer_member`) |
| OutboxEntry | O | message | queue a message for another partition (`outbox_codec.encode_outbox_*`) |
| GetPromise | PG | name, completion_id | complete at once if the promise is resolved, else wait for it |
| PeekPromise | PP | name, completion_id | complete with the promise's result, or void |
| CompletePromise | PC | name, completion_id, result | resolve the promise once, wake its waiters |
| PromiseExpiry | PE | run_id, default_ms | a shared handler wrote promises: expire them unless the run is live |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import Enum
from typing import ClassVar

from partition.invocation import ArgvValue, Result, Status

# ---- script replies ------------------------------------------------------------------------------


class AcceptOutcome(str, Enum):
    """Reply codes of `accept.lua`."""

    INVOKED = "INVOKED"  # created and invoked: the caller starts its driver
    INBOXED = "INBOXED"  # created; waits in its key's inbox
    SCHEDULED = "SCHEDULED"  # created; waits for its start timer
    DUP = "DUP"  # the id exists already (dedup): its status and result come along
    FENCED = "FENCED"  # the caller lost the partition's lease
    REJECTED = "REJECTED"  # refused by an `on_limit: reject` rule (nothing stored); the retry delay comes along


class ApplyOutcome(str, Enum):
    """Reply codes of `apply.lua`."""

    COMPLETED = "OK"  # END stored: result published, lock released or handed over
    RESUME = "RESUME"  # SUSPEND on something already stored: replay at once
    SUSPENDED = "SUSPENDED"  # SUSPEND stored: waits for a notification
    BACKOFF = "BACKOFF"  # ERROR stored: backing-off (retry timer) or paused
    BAD_STATE = "BAD_STATE"  # the invocation was not invoked: nothing stored
    FENCED = "FENCED"


class AppendOutcome(str, Enum):
    """Reply codes of `append.lua` (a live attempt's entries stored while it goes on)."""

    APPENDED = "APPENDED"  # stored: the journal length and the notifications from the known length come along
    DUP = "DUP"  # this append of this attempt was stored before (a retry after a lost reply): nothing stored again
    BAD_STATE = "BAD_STATE"  # not invoked, or not the attempt's next append: nothing stored
    FENCED = "FENCED"


class StartOutcome(str, Enum):
    """Reply codes of `attempt_start.lua`."""

    INVOKED = "INVOKED"  # now invoked: hash, state and journal come along
    INBOXED = "INBOXED"  # a due scheduled exclusive invocation found its key locked
    WAIT = "WAIT"  # not startable (suspended, paused, inboxed, completed): nothing done
    GONE = "GONE"  # no such invocation
    FENCED = "FENCED"


class NotifyOutcome(str, Enum):
    """Reply codes of `notify.lua`."""

    APPLIED = "APPLIED"  # appended; the invocation does not wait for it (yet)
    WOKEN = "WOKEN"  # appended and it woke the suspended invocation: its target comes along
    DUP = "DUP"  # this notification key was appended before
    GONE = "GONE"  # no such invocation, or it completed
    FENCED = "FENCED"


class AttachOutcome(str, Enum):
    """Reply codes of `attach.lua`."""

    ANSWERED = "ANSWERED"  # the caller's completion was queued in the outbox (result, void or not found)
    JOINED = "JOINED"  # the caller waits among the target's parents (answered at its END)
    FENCED = "FENCED"


class SettleOutcome(str, Enum):
    """Reply codes of `settle.lua`."""

    GONE = "GONE"  # the invocation no longer exists: its timer member and `active` entry removed
    DROPPED = "DROPPED"  # the timer member could not start anything: removed
    KEPT = "KEPT"  # the invocation still waits for the member: kept (pushed back when asked)
    FENCED = "FENCED"


class ScopeLimitsOutcome(str, Enum):
    """Reply codes of `scope_limits` (`_scope_limits.lua`)."""

    OK = "OK"  # the limits are stored; the reply lists the invocations given a freed slot
    FENCED = "FENCED"


class ManageOutcome(str, Enum):
    """Reply codes of the lifecycle commands (`kill.lua`, `cancel.lua`, `purge.lua`, `pause.lua`,
    `resume.lua`); each reply carries the status the command found after the code."""

    DONE = "DONE"  # the command took effect (kill: completed; cancel: a never-started one removed ...)
    APPENDED = "APPENDED"  # cancel: the cancel signal is in the journal; the handler decides
    ALREADY = "ALREADY"  # pause: already paused; resume: already running; nothing written
    NOT_FOUND = "NOT_FOUND"  # no such invocation
    COMPLETED = "COMPLETED"  # kill / cancel / pause / resume of a completed invocation: nothing written
    NOT_COMPLETED = "NOT_COMPLETED"  # purge of an invocation that has not completed: nothing written
    WRONG_STATE = "WRONG_STATE"  # pause of one not running, resume of an inboxed / scheduled one
    FENCED = "FENCED"


class TerminalKind(str, Enum):
    """How an attempt ended, as `apply.lua` gets it (ARGV[8])."""

    END = "END"  # output + end: complete
    SUSPEND = "SUSPEND"  # suspension: wait for notifications
    ERROR = "ERROR"  # failed: back off or pause


@dataclass(frozen=True, slots=True)
class End:
    result: Result


@dataclass(frozen=True, slots=True)
class Suspend:
    awaiting: str  # ' c1 s1 n<hex> '
    nonce: bytes = b""  # this apply's own: a retry of one that landed and resumed is not applied twice


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    status: Status  # BACKING_OFF (retry timer at `retry_at_ms`) or PAUSED
    retry_at_ms: int
    message: str


Terminal = End | Suspend | AttemptFailed
TERMINAL_ARGS = 3  # argument slots after the terminal kind (ARGV[9..11])


def encode_terminal(t: Terminal) -> list[ArgvValue]:
    """The terminal's ARGV slots: kind, then `TERMINAL_ARGS` arguments."""
    args: list[ArgvValue]
    if isinstance(t, End):
        args = [TerminalKind.END.value, t.result.encode()]
    elif isinstance(t, Suspend):
        args = [TerminalKind.SUSPEND.value, t.awaiting, t.nonce]
    else:
        args = [TerminalKind.ERROR.value, t.status.value, t.retry_at_ms, t.message]
    return args + [""] * (1 + TERMINAL_ARGS - len(args))


# ---- ops -----------------------------------------------------------------------------------------


class OpCode(str, Enum):
    """Opcodes of the ops of one `apply` transition (op table above)."""

    JOURNAL = "J"
    NOTE = "N"
    SET_STATE = "S"
    CLEAR_STATE = "C"
    CLEAR_ALL_STATE = "A"
    TIMER = "T"
    OUTBOX = "O"
    GET_PROMISE = "PG"
    PEEK_PROMISE = "PP"
    COMPLETE_PROMISE = "PC"
    PROMISE_EXPIRY = "PE"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    OPCODE: ClassVar[OpCode] = OpCode.JOURNAL
    frame: bytes


@dataclass(frozen=True, slots=True)
class NotificationEntry:
    OPCODE: ClassVar[OpCode] = OpCode.NOTE
    key: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class SetState:
    OPCODE: ClassVar[OpCode] = OpCode.SET_STATE
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class ClearState:
    OPCODE: ClassVar[OpCode] = OpCode.CLEAR_STATE
    key: bytes


@dataclass(frozen=True, slots=True)
class ClearAllState:
    OPCODE: ClassVar[OpCode] = OpCode.CLEAR_ALL_STATE


@dataclass(frozen=True, slots=True)
class AddTimer:
    OPCODE: ClassVar[OpCode] = OpCode.TIMER
    due_ms: int
    member: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    OPCODE: ClassVar[OpCode] = OpCode.OUTBOX
    message: bytes


@dataclass(frozen=True, slots=True)
class GetPromise:
    OPCODE: ClassVar[OpCode] = OpCode.GET_PROMISE
    name: str
    completion_id: int


@dataclass(frozen=True, slots=True)
class PeekPromise:
    OPCODE: ClassVar[OpCode] = OpCode.PEEK_PROMISE
    name: str
    completion_id: int


@dataclass(frozen=True, slots=True)
class CompletePromise:
    OPCODE: ClassVar[OpCode] = OpCode.COMPLETE_PROMISE
    name: str
    completion_id: int
    result: bytes  # the encoded NotificationTemplate result field the waiters get


@dataclass(frozen=True, slots=True)
class PromiseExpiry:
    """After a shared handler wrote a workflow's promises: give them an expiry unless a run of the
    workflow is live (its END sets one). No run: `default_ms` from now; a completed run: its own."""
    OPCODE: ClassVar[OpCode] = OpCode.PROMISE_EXPIRY
    run_id: str  # the workflow run's (deterministic) invocation id
    default_ms: int


Op = (JournalEntry | NotificationEntry | SetState | ClearState | ClearAllState | AddTimer | OutboxEntry
      | GetPromise | PeekPromise | CompletePromise | PromiseExpiry)
OP_TYPES: tuple[type[Op], ...] = (JournalEntry, NotificationEntry, SetState, ClearState, ClearAllState, AddTimer,
                                  OutboxEntry, GetPromise, PeekPromise, CompletePromise, PromiseExpiry)
_OP_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in OP_TYPES}
OP_ARGS = {cls.OPCODE: len(names) for cls, names in _OP_FIELDS.items()}  # arguments after each opcode


def encode_ops(ops: Iterable[Op]) -> list[ArgvValue]:
    """The one encoder of ops to `apply.lua`'s ARGV: opcode, then the fields in order."""
    out: list[ArgvValue] = []
    for op in ops:
        out.append(op.OPCODE.value)
        out += [getattr(op, name) for name in _OP_FIELDS[type(op)]]
    return out


def is_journal_op(op: Op) -> bool:
    """Ops that only grow the journal (pointless when the attempt ends: the journal is dropped)."""
    return isinstance(op, (JournalEntry, NotificationEntry))
