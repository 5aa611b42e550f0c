"""In-memory test doubles: `InMemoryDispatcher` implements `ingress.dispatcher.Dispatcher` in-process.

Semantics follow the spec's partition behaviour closely enough for HTTP-shape tests:

* an invocation id seen for the first time is accepted and run by a *responder* (per
  ``(service, handler)`` via ``script()``, else the default one; it may be async, may return
  ``bytes`` or an ``Outcome``; an exception becomes a 500 failure outcome). Set ``fail_with``
  to make the next dispatcher method raise an ``IngressError`` (e.g. ``PartitionUnavailable``);
* a repeated id: a **send** answers ``PreviouslyAccepted`` (with the original execution time);
  a **call** attaches to the running invocation or replays the retained result with
  ``expires_ms``; a repeated call to a workflow ``run`` gets 409 ``the workflow method was
  already invoked``;
* delayed sends stay *scheduled* until ``fire_due()`` runs them, or, with ``auto_fire=True``,
  start by themselves when due (as the partitions do);
* completed invocations are kept for ``completion_retention_ms`` (0 = forgotten at once) and
  are forgotten once ``expires_ms`` has passed (checked lazily on every lookup, against ``now_ms``);
* ``attach`` waits for completion; ``get_output`` raises ``InvocationNotReady`` /
  ``InvocationNotFound``;
* ``manage`` applies the lifecycle commands as the partitions do: kill and cancel remove a
  scheduled invocation (callers get 409 ``killed`` / ``cancelled``, nothing is kept); kill
  completes a started one with 409 ``killed``; cancel of a started one is answered APPENDED and its
  scripted handler lets the cancellation propagate (409 ``cancelled``); purge forgets a completed
  one; pause stops a running one until resume starts it again.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ingress.dispatcher import (
    Command,
    CommandOutcome,
    HandlerKind,
    InvocationRequest,
    Outcome,
    RestartRequest,
    SendReceipt,
    SendStatus,
)
from ingress.errors import IngressError, InvocationNotFound, InvocationNotReady

Responder = Callable[[InvocationRequest], "Outcome | bytes | Awaitable[Outcome | bytes]"]

WORKFLOW_ALREADY_INVOKED = "the workflow method was already invoked"
KILLED = "killed"
CANCELLED = "cancelled"


def echo(req: InvocationRequest) -> bytes:
    """Default responder: the output is the input."""
    return req.body


@dataclass
class _Entry:
    request: InvocationRequest
    future: asyncio.Future[Outcome]
    scheduled: bool = False  # delayed send not started yet
    expires_ms: int | None = None  # set on completion when retained
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None  # auto_fire: starts a scheduled entry when due
    paused: bool = False  # stopped by `manage(PAUSE)` until `manage(RESUME)`

    @property
    def done(self) -> bool:
        return self.future.done()


@dataclass
class InMemoryDispatcher:
    """A Dispatcher that runs invocations in-process with scripted responders."""

    default: Responder = echo
    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    requests: list[InvocationRequest] = field(default_factory=list)  # every call/send received
    signals: list[tuple[str, int, str, bytes]] = field(default_factory=list)  # every signal received
    fail_with: IngressError | None = None  # raised by the next call/send/attach/get_output
    auto_fire: bool = False  # delayed sends start by themselves when due (else only via fire_due)
    _scripts: dict[tuple[str, str], Responder] = field(default_factory=dict)
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def script(self, service: str, handler: str, responder: Responder) -> None:
        """Use `responder` for invocations of `service/handler`."""
        self._scripts[(service, handler)] = responder

    def entry_ids(self) -> list[str]:
        """Ids of the invocations currently known (running, scheduled or retained)."""
        return list(self._entries)

    # ---- Dispatcher protocol ------------------------------------------------------------------

    async def call(self, req: InvocationRequest) -> Outcome:
        self._maybe_fail()
        self.requests.append(req)
        entry = self._lookup(req.invocation_id)
        if entry is None:
            entry = self._accept(req)
        elif req.kind is HandlerKind.WORKFLOW:
            return Outcome(req.invocation_id, failure_code=409, failure_message=WORKFLOW_ALREADY_INVOKED)
        elif entry.done:
            return self._replay(entry)
        return await asyncio.shield(entry.future)

    async def send(self, req: InvocationRequest) -> SendReceipt:
        self._maybe_fail()
        self.requests.append(req)
        entry = self._lookup(req.invocation_id)
        if entry is not None:
            return SendReceipt(
                req.invocation_id, SendStatus.PREVIOUSLY_ACCEPTED, entry.request.execution_time_ms
            )
        self._accept(req)
        return SendReceipt(req.invocation_id, SendStatus.ACCEPTED, req.execution_time_ms)

    async def attach(self, invocation_id: str, partition: int) -> Outcome:
        self._maybe_fail()
        entry = self._lookup(invocation_id)
        if entry is None:
            raise InvocationNotFound("not found", invocation_id=invocation_id)
        if entry.done:
            return self._replay(entry)
        return await asyncio.shield(entry.future)

    async def get_output(self, invocation_id: str, partition: int) -> Outcome:
        self._maybe_fail()
        entry = self._lookup(invocation_id)
        if entry is None:
            raise InvocationNotFound("invocation not found")
        if not entry.done:
            raise InvocationNotReady("the invocation exists but has not completed yet")
        return self._replay(entry)

    async def signal(self, invocation_id: str, partition: int, key: str, frame: bytes) -> None:
        self._maybe_fail()
        self.signals.append((invocation_id, partition, key, frame))

    async def restart_as_new(self, req: RestartRequest) -> CommandOutcome:
        self._maybe_fail()
        return CommandOutcome.NOT_FOUND if self._lookup(req.invocation_id) is None else CommandOutcome.DONE

    async def manage(self, invocation_id: str, partition: int, command: Command,
                     deployment_id: str = "") -> CommandOutcome:
        self._maybe_fail()
        entry = self._lookup(invocation_id)
        if entry is None:
            return CommandOutcome.NOT_FOUND
        if command in (Command.PURGE, Command.PURGE_JOURNAL):
            if not entry.done:
                return CommandOutcome.NOT_COMPLETED
            if command is Command.PURGE:
                del self._entries[invocation_id]
            return CommandOutcome.DONE
        if entry.done:
            return CommandOutcome.COMPLETED
        if command is Command.KILL:
            self._end(entry, Outcome(invocation_id, failure_code=409, failure_message=KILLED))
            return CommandOutcome.DONE
        if command is Command.CANCEL:
            cancelled = Outcome(invocation_id, failure_code=409, failure_message=CANCELLED)
            # a started one: the scripted handler lets the cancellation propagate
            return CommandOutcome.DONE if self._end(entry, cancelled) else CommandOutcome.APPENDED
        return self._pause(entry) if command is Command.PAUSE else self._resume(entry)

    # ---- test controls ------------------------------------------------------------------------

    def fire_due(self, now_ms: int | None = None) -> int:
        """Start scheduled invocations whose execution time has passed; returns how many."""
        now = self.now_ms() if now_ms is None else now_ms
        started = 0
        for entry in list(self._entries.values()):
            if entry.scheduled and (entry.request.execution_time_ms or 0) <= now:
                self._fire(entry)
                started += 1
        return started

    async def close(self) -> None:
        """Cancel invocations still running (and pending auto_fire timers)."""
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
        tasks = [e.task for e in self._entries.values() if e.task is not None and not e.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- internals ----------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            err, self.fail_with = self.fail_with, None
            raise err

    def _lookup(self, invocation_id: str) -> _Entry | None:
        """The entry with that id, unless its retained result has expired (then it is forgotten)."""
        entry = self._entries.get(invocation_id)
        if entry is not None and entry.expires_ms is not None and entry.expires_ms <= self.now_ms():
            del self._entries[invocation_id]
            return None
        return entry

    def _accept(self, req: InvocationRequest) -> _Entry:
        loop = asyncio.get_running_loop()
        entry = _Entry(req, loop.create_future())
        self._entries[req.invocation_id] = entry
        now = self.now_ms()
        if req.execution_time_ms is not None and req.execution_time_ms > now:
            entry.scheduled = True
            if self.auto_fire:
                entry.timer = loop.call_later((req.execution_time_ms - now) / 1000, self._fire, entry)
        else:
            self._start(entry)
        return entry

    def _fire(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.scheduled:
            entry.scheduled = False
            self._start(entry)

    def _stop(self, entry: _Entry) -> None:
        """Stop whatever would run or is running the entry (its start timer, its responder)."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.task is not None and entry.task is not asyncio.current_task():
            entry.task.cancel()
        entry.scheduled = False

    def _end(self, entry: _Entry, result: Outcome) -> bool:
        """Stop the entry and answer its callers with `result`: a never-started one is forgotten
        (True), a started one completes (kept for its retention). Returns whether it never started."""
        never_started = entry.scheduled
        self._stop(entry)
        if never_started:
            del self._entries[entry.request.invocation_id]
            entry.future.set_result(result)
        else:
            self._complete(entry, result)
        return never_started

    def _pause(self, entry: _Entry) -> CommandOutcome:
        if entry.paused:
            return CommandOutcome.ALREADY
        if entry.scheduled:
            return CommandOutcome.WRONG_STATE
        self._stop(entry)
        entry.paused = True
        return CommandOutcome.DONE

    def _resume(self, entry: _Entry) -> CommandOutcome:
        if entry.scheduled:
            return CommandOutcome.WRONG_STATE
        if not entry.paused:
            return CommandOutcome.ALREADY
        entry.paused = False
        self._start(entry)
        return CommandOutcome.DONE

    def _start(self, entry: _Entry) -> None:
        entry.task = asyncio.get_running_loop().create_task(self._run(entry))

    async def _run(self, entry: _Entry) -> None:
        req = entry.request
        responder = self._scripts.get((req.service, req.handler), self.default)
        try:
            result = responder(req)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing responder is a handler failure
            result = Outcome(req.invocation_id, failure_code=500, failure_message=str(e))
        if not isinstance(result, Outcome):
            result = Outcome(req.invocation_id, value=result)
        elif not result.invocation_id:
            result = Outcome(req.invocation_id, result.value, result.failure_code, result.failure_message)
        self._complete(entry, result)

    def _complete(self, entry: _Entry, result: Outcome) -> None:
        """Publish the entry's result; kept for its retention, else forgotten at once."""
        req = entry.request
        if req.completion_retention_ms > 0:
            entry.expires_ms = self.now_ms() + req.completion_retention_ms
        else:
            del self._entries[req.invocation_id]
        entry.future.set_result(result)

    @staticmethod
    def _replay(entry: _Entry) -> Outcome:
        o = entry.future.result()
        return Outcome(o.invocation_id, o.value, o.failure_code, o.failure_message, entry.expires_ms)
