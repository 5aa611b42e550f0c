"""The ingress's only way to reach partitions: the Dispatcher protocol and its value types.

`GrpcDispatcher` (in `ingress/grpc_dispatcher.py`) implements it against partition workers;
`InMemoryDispatcher` (tests) implements it in-process. Both are checked by the same contract
suite (`tests/contract/`). Failures are raised as the `ingress.errors` types named below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from shardgate.kinds import HandlerKind

__all__ = ["HandlerKind"]  # re-exported: handlers build requests with it


@dataclass(frozen=True, slots=True)
class InvocationRequest:
    """One call or send, fully resolved by the ingress (id and partition already computed)."""

    invocation_id: str
    partition: int
    service: str
    handler: str
    key: str | None  # object / workflow key; None for plain services
    kind: HandlerKind
    body: bytes
    headers: tuple[tuple[str, str], ...]
    idempotency_key: str | None = None  # user-given or generated (controlled-idempotent-sharding)
    completion_retention_ms: int = 0  # how long the result stays retrievable after completion
    journal_retention_ms: int = 0
    execution_time_ms: int | None = None  # delayed send: absolute epoch ms
    scope: str | None = None  # flow-control scope (`/restate/scope/{scope}/...`)
    limit_key: str | None = None  # validated limit key `l1` or `l1/l2`; only with a scope


@dataclass(frozen=True, slots=True)
class Outcome:
    """A completed invocation's result as a caller sees it."""

    invocation_id: str
    value: bytes = b""
    failure_code: int = 0  # 0 = success
    failure_message: str = ""
    expires_ms: int | None = None  # when the retained result is purged; None = not announced
    failure_metadata: tuple[tuple[str, str], ...] = ()  # the TerminalError's metadata, sorted by key

    @property
    def ok(self) -> bool:
        return self.failure_code == 0


class SendStatus(str, Enum):
    ACCEPTED = "Accepted"
    PREVIOUSLY_ACCEPTED = "PreviouslyAccepted"


@dataclass(frozen=True, slots=True)
class SendReceipt:
    invocation_id: str
    status: SendStatus
    execution_time_ms: int | None = None


class Command(str, Enum):
    """A lifecycle command of the admin API (`PATCH /invocations/{id}/<command>`)."""

    CANCEL = "cancel"
    KILL = "kill"
    PURGE = "purge"
    PURGE_JOURNAL = "purge-journal"
    PAUSE = "pause"
    RESUME = "resume"


class CommandOutcome(str, Enum):
    """What a lifecycle command found and did."""

    DONE = "done"  # took effect (cancel: a never-started invocation was removed, its callers answered)
    APPENDED = "appended"  # cancel: the cancel signal is in the journal; the handler decides
    ALREADY = "already"  # pause: already paused; resume: already running
    NOT_FOUND = "not_found"  # no such invocation
    COMPLETED = "completed"  # already completed: nothing to cancel, kill, pause or resume
    NOT_COMPLETED = "not_completed"  # purge of an invocation that has not completed
    WRONG_STATE = "wrong_state"  # pause of one not running; resume of an inboxed or scheduled one


class Dispatcher(Protocol):
    """What the ingress needs from the partitions.

    Raises `ingress.errors.InvocationNotFound` (404), `InvocationNotReady` (470, output only),
    `PartitionUnavailable` (503) as appropriate.
    """

    async def call(self, req: InvocationRequest) -> Outcome:
        """Accept the invocation (or find the existing one with that id) and wait for its result."""
        ...

    async def send(self, req: InvocationRequest) -> SendReceipt:
        """Accept the invocation durably and return at once."""
        ...

    async def attach(self, invocation_id: str, partition: int) -> Outcome:
        """Wait for the invocation's result (at once if already completed and retained)."""
        ...

    async def get_output(self, invocation_id: str, partition: int) -> Outcome:
        """The result if completed and retained; else InvocationNotReady / InvocationNotFound."""
        ...

    async def signal(self, invocation_id: str, partition: int, key: str, frame: bytes) -> None:
        """Append a signal notification (awakeable completion) to an invocation's journal, once
        per `key`. A target that does not exist (any more) is not an error."""
        ...

    async def manage(self, invocation_id: str, partition: int, command: Command) -> CommandOutcome:
        """Apply a lifecycle command to an invocation (one transition on its partition). Kill
        answers its waiting callers 409 `killed`; a cancel that removes a never-started invocation
        answers them 409 `cancelled`. Raises only `PartitionUnavailable`."""
        ...
