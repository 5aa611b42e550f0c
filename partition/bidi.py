"""One bidirectional attempt: the SDK gets its answers on the open stream instead of a replay.

In request-response every `ctx.run`, and every lazy state read, costs an attempt: the SDK
proposes, suspends, and the next attempt replays the journal with the answer in it. Over a
BIDI_STREAM deployment's h2c stream (`Invoker.open_stream`) the request stays open: the frames
are planned one by one (`effects.AttemptPlanner`), and when the SDK proposes a run's result or
asks for lazy state, what was planned so far is stored by `append` (one fenced script) and the
notifications from the attempt's journal position on (the run's completion, the state, anything a
timer or a signal appended meanwhile) are written back in journal order, so the handler goes on
in the same attempt. In protocol v7 a proposal that asked for an acknowledgement
(`REQUESTED_ACK`) gets `ProposeRunCompletionAck` instead of its value, at the same position.

A sleep that ends within `SLEEP_HOLD_S` and a call, attach or output read (for `CALL_HOLD_S`)
are stored the same way and waited for on the open stream: the attempt registers a poke with its
leader (`PartitionLeader.live`), which calls it when a transition appended a notification to the
invocation (a timer fired, a result was delivered, a cancel); the next append, empty if nothing
else is pending, brings it back in journal order. The request is closed (END_STREAM: the SDK
suspends once it waits, as in request-response) for a longer sleep at once, when the hold runs
out, when nothing comes from the SDK for `idle_s` after the last exchange otherwise, and at once
after a terminal frame (End, Suspension, Error). A lost poke costs the rest of the hold: the
suspension finds the notification stored and resumes. What the attempt produced after its last
append goes to the terminal `apply` as in request-response, from the journal position it knows.

Failures: a stream that breaks, a deadline passed (`attempt_timeout_s`, inactivity + abort) or a
protocol violation fails the attempt as a request-response one fails; what earlier appends stored
stays stored (a run whose append landed is not run again). An append that finds the invocation
no longer invoked (killed meanwhile) stops the attempt (`AttemptStopped`). An append retried
after Redis could not be reached is DUP when the first try landed: nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from partition.effects import (
    AttemptPlan,
    AttemptPlanner,
    Batch,
    CommandRejected,
    PlanError,
    needs_flush,
    rejected_plan,
)
from partition.errors import DeploymentError, Fenced
from partition.invoker import AttemptStream
from partition.retry import while_unreachable
from partition.scripts import Appended, Scripts
from partition.transition import AppendOutcome
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import http2, protocol
from shardgate.clock import Clock
from shardgate.protocol import Frame
from shardgate.protocol import MessageType as T

if TYPE_CHECKING:
    from partition.driver import Run

IDLE_S = 0.1
"""How long the request stays open with nothing coming from the SDK after the last exchange."""
SLEEP_HOLD_S = 1.0
"""A sleep that ends within this long is waited for on the open stream (the timer's notification
is written back when it fires); a longer one ends the request, and the SDK suspends."""
CALL_HOLD_S = 1.0
"""How long the stream stays open for a call's result (or an attach's, an output read's)."""
HOLD_SLACK_S = 0.2

ANSWERED_HERE = frozenset({
    T.PROPOSE_RUN_COMPLETION, T.GET_LAZY_STATE_COMMAND, T.GET_LAZY_STATE_KEYS_COMMAND,
    T.PEEK_PROMISE_COMMAND, T.GET_PROMISE_COMMAND, T.COMPLETE_PROMISE_COMMAND,
    T.ONE_WAY_CALL_COMMAND, T.SEND_SIGNAL_COMMAND, T.COMPLETE_AWAKEABLE_COMMAND,
})
"""Frames the attempt answers itself, or that wait for nothing: stored by an append, and what the
append stored for them (a run's result, state, a promise's value or completion, a callee's id)
is written back on the stream. A promise that is not completed yet is not waited for: the idle
close ends the request. The other frames that must be stored (a sleep, a call, an attach or an
output read) wait for something from outside and end the request at once."""
_TERMINAL_TYPES = frozenset({T.END, T.SUSPENSION, T.ERROR})


class AttemptStopped(Exception):
    """An append found the invocation no longer invoked (killed, or completed elsewhere)."""


Poke = Callable[[tuple[int, bytes] | None], None]
"""What a live attempt's leader calls when it appended a notification to the invocation: with the
notification's journal index and frame, or None when it cannot say (the attempt fetches it)."""


class Pokes(Protocol):
    """What the partition leader is told after an append, and where a live attempt registers the
    poke its leader calls when a notification was appended to the invocation (`driver.Lead`)."""

    live: dict[str, Poke]

    def poke(self, timers: bool, outbox: bool) -> None: ...

    def resume(self, invocation_id: str) -> None: ...


@dataclass(slots=True)
class BidiOutcome:
    plan: AttemptPlan | None  # the terminal's part (ops not appended yet); None: failed, see failure
    failure: str = ""


def _before_any_answer(e: DeploymentError) -> bool:
    """A stream that failed so that sending it again is safe (refused, or its connection closed
    before any part of the answer came)."""
    return isinstance(e.__cause__, http2.Http2Error) and e.__cause__.retryable


def _is_command(entry: bytes) -> bool:
    return not protocol.is_notification((entry[0] << 8) | entry[1])


class BidiAttempt:
    """Drives one bidirectional attempt of `run` (whose journal and record it keeps up to date with
    what its appends stored)."""

    def __init__(self, scripts: Scripts, clock: Clock, run: Run, planner: AttemptPlanner, lead: Pokes,
                 lease_ok: Callable[[], bool], timeout_s: float, idle_s: float = IDLE_S) -> None:
        self._scripts = scripts
        self._clock = clock
        self._run = run
        self._planner = planner
        self._lead = lead
        self._lease_ok = lease_ok
        self._timeout_s = timeout_s
        self._idle_s = idle_s
        self._nonce = os.urandom(8).hex()
        self._seq = 0
        self._acked: set[int] = set()  # v7: run proposals that asked for an acknowledgement
        self._pushed: list[tuple[int, bytes]] = []  # the poked notifications that came with their index
        self._fetch = False  # a poke without its notification: the next append fetches it
        self._stream: AttemptStream | None = None
        self._hold_until = 0.0  # loop time until which the request stays open for what it waits on

    def _poke(self, note: tuple[int, bytes] | None) -> None:
        """The leader appended a notification to this invocation (a timer, a call's result ...);
        `note`, its journal index and frame, when the transition said."""
        if note is not None:
            self._pushed.append(note)
        else:
            self._fetch = True
        if self._stream is not None:
            self._stream.interrupt()

    async def run(self, open_stream: Callable[[], Awaitable[AttemptStream]]) -> BidiOutcome:
        """The attempt to its terminal frame, on a stream from `open_stream` (once more on a new
        one when the first was refused or its connection went away before any answer, as a
        request-response attempt is sent again). Every way out but a terminal frame resets the
        stream. Raises Fenced, AttemptStopped, and DeploymentError when no stream could be opened."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        stream = await open_stream()
        finished = False
        inv_id = self._run.target.invocation_id
        self._lead.live[inv_id] = self._poke
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await stream.start()
                    await stream.head()
                except DeploymentError as e:
                    if not _before_any_answer(e):
                        raise
                    stream.reset()
                    stream = await open_stream()
                    await stream.start()
                    await stream.head()
                self._stream = stream
                plan = await self._converse(stream, deadline)
            finished = True
            stream.discard()  # the rest of the response (its end) is read and dropped
            return BidiOutcome(plan, "")
        except CommandRejected as e:
            return BidiOutcome(rejected_plan(e), "")
        except PlanError as e:
            return BidiOutcome(None, f"protocol violation: {e}")
        except DeploymentError as e:
            return BidiOutcome(None, str(e))
        except TimeoutError:
            return BidiOutcome(None, "the deployment did not answer in time")
        finally:
            if self._lead.live.get(inv_id) == self._poke:
                del self._lead.live[inv_id]
            self._stream = None
            if not finished:
                stream.reset()

    async def _converse(self, stream: AttemptStream, deadline: float) -> AttemptPlan:
        """Read, plan, append and answer until the terminal frame; its plan. Runs under the
        attempt's deadline. Raises PlanError, CommandRejected, DeploymentError, Fenced,
        AttemptStopped."""
        loop = asyncio.get_running_loop()
        planner = self._planner
        open_ = True
        while True:
            wait_until = min(deadline, max(loop.time() + self._idle_s, self._hold_until)) if open_ else deadline
            try:
                async with asyncio.timeout_at(wait_until):
                    frames = await stream.frames()
            except TimeoutError:
                if not open_ or loop.time() >= deadline:
                    raise
                stream.end()  # nothing more to tell it: let it suspend once it waits
                open_ = False
                continue
            if frames is None:
                raise PlanError("the stream ended without End, Suspension or Error")
            flush = False
            for i, frame in enumerate(frames):
                planner.feed(frame)
                if frame.type in _TERMINAL_TYPES:
                    stream.end()  # at once: the SDK finishes its response only then
                    if i != len(frames) - 1:
                        raise PlanError(f"frames after the terminal message 0x{frame.type:04X}")
                    return planner.finish()
                if open_ and needs_flush(frame):
                    if frame.type in ANSWERED_HERE or frame.requested_ack:
                        flush = True
                        if frame.requested_ack and frame.type == T.PROPOSE_RUN_COMPLETION and stream.version >= 7:
                            msg = cast(pb.ProposeRunCompletionMessage, protocol.parse_message(frame))
                            self._acked.add(msg.result_completion_id)
                    elif (hold_s := self._hold_for(frame)) is not None:
                        flush = True  # stored now; its answer is written back when it is appended
                        self._hold_until = max(self._hold_until, loop.time() + hold_s + HOLD_SLACK_S)
                    else:
                        stream.end()  # it waits for something from outside: let it suspend
                        open_ = False
            if flush and open_:
                self._pushed, self._fetch = [], False  # the append's reply brings what they announced
                await self._append(stream, planner.take_batch())
            elif (self._pushed or self._fetch) and open_:
                await self._forward_poked(stream)

    def _hold_for(self, frame: Frame) -> float | None:
        """How long the stream stays open for what `frame` waits on (a short sleep, a call's or
        an attach's result); None: it ends at once."""
        if frame.type == T.SLEEP_COMMAND:
            msg = cast(pb.SleepCommandMessage, protocol.parse_message(frame))
            left_s = (msg.wake_up_time - self._clock.now_ms()) / 1000
            return max(left_s, 0.0) if left_s <= SLEEP_HOLD_S else None
        if frame.type in (T.CALL_COMMAND, T.ATTACH_INVOCATION_COMMAND, T.GET_INVOCATION_OUTPUT_COMMAND):
            return CALL_HOLD_S
        return None

    async def _append(self, stream: AttemptStream, batch: Batch) -> None:
        """Store `batch`, then write back what the SDK does not know yet, in journal order."""
        run = self._run
        cursor = len(run.journal)
        self._seq += 1
        appended = await self._store(batch, cursor)
        if appended.outcome is AppendOutcome.BAD_STATE:
            raise AttemptStopped(run.target.invocation_id)
        self._lead.poke(batch.timers > 0, batch.outbox > 0)
        for woken in appended.woken:
            self._lead.resume(woken)
        run.journal.extend(self._entries(batch, appended, cursor))
        if batch.entries:  # the journal grew: the failure count starts over, the pin is stored
            run.record = run.record.with_attempt(0, self._clock.now_ms())
            run.idle_resumes = 0
            if run.attempt_pin is not None:
                run.record, run.attempt_pin = run.record.pinned_to(run.attempt_pin), None
        if not self._lease_ok():  # every answer lets user code go on: only under a valid lease
            raise Fenced(run.target.partition)
        out = b"".join(self._forwarded(frame) for _, frame in appended.notes)
        if out:
            await stream.send(out)

    async def _forward_poked(self, stream: AttemptStream) -> None:
        """Write back what pokes brought: straight from the poke when the notifications follow
        what the attempt knows without a gap and nothing of its own is waiting to be stored; else
        through an (empty or pending) append, whose reply has everything in journal order."""
        run = self._run
        cursor = len(run.journal)
        pushed = sorted({note for note in self._pushed if note[0] >= cursor})  # not brought by an append yet
        fetch = self._fetch
        self._pushed, self._fetch = [], False
        if not pushed and not fetch:
            return
        contiguous = all(index == cursor + i for i, (index, _) in enumerate(pushed))
        if fetch or not contiguous or self._planner.pending:
            await self._append(stream, self._planner.take_batch())
            return
        if not self._lease_ok():
            raise Fenced(run.target.partition)
        run.journal.extend(frame for _, frame in pushed)
        await stream.send(b"".join(self._forwarded(frame) for _, frame in pushed))

    async def _store(self, batch: Batch, cursor: int) -> Appended:
        """`append`, retried while Redis cannot be reached (a retry of a stored one is DUP)."""
        run = self._run
        appended, _ = await while_unreachable(
            lambda: self._scripts.append(run.target, run.token, self._clock.now_ms(), cursor, self._nonce, self._seq,
                                         batch.ops, run.attempt_pin),
            self._clock, "a live attempt's entries",
            {"invocation_id": run.target.invocation_id, "partition": run.target.partition})
        return appended

    @staticmethod
    def _entries(batch: Batch, appended: Appended, cursor: int) -> list[bytes]:
        """The journal from `cursor` to its new length: the notifications as the reply gives them,
        the other positions this batch's commands in order (nobody else appends commands)."""
        notes = dict(appended.notes)
        own = iter([e for e in batch.entries if _is_command(e)])
        out: list[bytes] = []
        try:
            for index in range(cursor, appended.journal_len):
                note = notes.get(index)
                out.append(note if note is not None else next(own))
        except StopIteration:
            raise PlanError("the journal holds commands this attempt did not send") from None
        if next(own, None) is not None:
            raise PlanError("the journal lacks commands this attempt sent")
        return out

    def _forwarded(self, note: bytes) -> bytes:
        """What the SDK gets for a stored notification: itself, or (v7) the acknowledgement of its
        own run proposal when the proposal asked for one."""
        if self._acked and (note[0] << 8 | note[1]) == T.RUN_COMPLETION:
            cid = cast(pb.NotificationTemplate, protocol.parse_message(protocol.decode_frames(note)[0])).completion_id
            if cid in self._acked:
                self._acked.discard(cid)
                return protocol.encode_message(T.PROPOSE_RUN_COMPLETION_ACK,
                                               pb.ProposeRunCompletionAckMessage(completion_id=cid))
        return note
