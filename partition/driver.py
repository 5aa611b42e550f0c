"""The attempt engine: takes one invocation to its next stop, one attempt at a time.

Each attempt replays the stored journal to the deployment (`invoker.py`), its frames are planned
into one transition (`effects.py`) and applied by `apply.lua`; a failed attempt backs off,
pauses or completes with the failure per the retry policy. The engine is shared by every
partition of the worker (one bound on attempts in flight); everything about a partition — its
fence token, its waiters, which invocations run there, what to do after a reply was lost — is
its `PartitionLeader`'s (`leader.py`), which the engine reaches through the `Lead` protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from partition.bidi import AttemptStopped, BidiAttempt, Poke
from partition.effects import (
    AttemptPlan,
    AttemptPlanner,
    PlanContext,
    PlanError,
    count_commands,
    plan_attempt,
    without_journal,
)
from partition.errors import DeploymentError, Fenced
from partition.invocation import InvocationRecord, PinnedDeployment, Result, Status, rpc_result
from partition.invoker import AttemptInput, Invoker, negotiate
from partition.metrics import HELD_INVOCATIONS, IN_FLIGHT, INVOCATIONS, WAITING_INVOCATIONS
from partition.retry import FailureAction, after_failure, policy_for, while_unreachable
from partition.scripts import Applied, Scripts, Target
from partition.transition import ApplyOutcome, AttemptFailed, End, Op, Suspend, Terminal, TerminalKind
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.protocol.v1 import protocol_pb2 as protocol_pb
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.protocol import Frame
from shardgate.schema import Deployment, SchemaSnapshot, ServiceMeta, effective_settings

log = logging.getLogger(__name__)

MAX_IDLE_RESUMES = 3
MAX_LOADING = 64
"""Resumes reading an invocation (record, state, journal) from Redis at once, worker-wide: each
holds a pooled Redis connection, and a flood of them (a sweep after a failover with a backlog)
must leave the pool to the lease renewals and the attempts' transitions."""
MAX_FAILURE_MESSAGE = 2000
MAX_STREAMING_HANDLERS = 4096
"""(deployment, service, handler) seen to go on soon after their waits, remembered per worker."""
LEARN_WINDOW_MS = 1500
"""A replay this soon after the journal last grew makes its handler stream (`Driver._learn_streaming`)."""
# Restate's InvokerError::UnknownDeployment (RT0011): the attempt backs off and is retried.
PINNED_DEPLOYMENT_GONE = (
    "the invocation has a deployment id associated, but it was not found in the registry. This might indicate "
    "that a deployment was forcefully removed from the registry, but there are still in-flight invocations "
    "pinned to it"
)


@dataclass(slots=True)
class Run:
    """One invocation being driven here: what the next attempt replays."""

    target: Target
    token: str
    record: InvocationRecord
    state: dict[bytes, bytes]
    journal: list[bytes]
    idle_resumes: int = 0  # consecutive RESUMEs whose attempt stored nothing new
    attempt_pin: PinnedDeployment | None = None  # the deployment an unpinned invocation's attempt went to


def _target(partition: int, inv_id: str, record: InvocationRecord) -> Target:
    return Target.of(partition, inv_id, record)


def _terminal(plan: AttemptPlan) -> Terminal:
    """The `apply` terminal of an attempt that ended or suspended."""
    if plan.terminal is TerminalKind.END:
        assert plan.result is not None
        return End(plan.result)
    return Suspend(plan.awaiting, os.urandom(8))


def _attempt_input(run: Run, meta: ServiceMeta, now: int) -> AttemptInput:
    """What the deployment gets for the next attempt: the stored journal and (eager) state."""
    t, rec = run.target, run.record
    settings = effective_settings(meta, meta.handlers.get(rec.handler))
    lazy = settings.enable_lazy_state
    keyed = rec.kind.keyed
    pin = run.attempt_pin or rec.pin  # the version `Driver._deployment` chose, else the pinned one
    return AttemptInput(
        invocation_id=t.invocation_id, service=t.service, handler=rec.handler, key=t.key,
        keyed=keyed, input_frame=rec.input_frame, journal=run.journal,
        state={} if lazy else run.state, partial_state=lazy or not keyed,
        retry_count=rec.attempts, duration_since_last_entry_ms=max(0, now - rec.last_growth_ms),
        # Request-response: the request body is closed at once, so the inactivity timeout
        # (which would ask the SDK to suspend) runs out first, then the abort timeout.
        attempt_timeout_s=settings.attempt_timeout_ms / 1000,
        random_seed=rec.random_seed,
        protocol_version=pin.protocol_version or None if pin is not None else None,
    )


class Lead(Protocol):
    """What the engine needs of the partition leader an invocation runs under."""

    partition: int
    token: str
    live: dict[str, Poke]  # open bidirectional attempts -> their poke

    def resolve(self, invocation_id: str, result: pb.Result) -> None:
        """Answer every caller waiting here for the invocation's result."""

    def awaited(self, invocation_id: str) -> bool:
        """Does anyone wait here for this invocation's result?"""

    def poke(self, timers: bool, outbox: bool) -> None:
        """New entries for the partition's timer set / outbox."""

    def start(self, run: Run) -> None:
        """Drive an invocation whose record, state and journal are already known."""

    def resume(self, invocation_id: str) -> None:
        """(Re)start an invocation from storage."""


class Backlogged(Protocol):
    """A leader with invocations that wait in Redis for room in this worker's memory."""

    closed: bool

    def start_waiting(self, room: Room) -> bool:
        """Start the oldest invocation waiting here under `room` (it releases the room when its
        driver ends); False, the room unused, when none waits here any more."""


class Room:
    """Room for one invocation in this worker's memory: its driver task and its `Run` (record,
    state, journal), taken from `Driver.admit`. Released once, when the task ended (or at once
    when nothing came to use it); `kept` once a driver task owns it."""

    __slots__ = ("_on_release", "kept")

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release: Callable[[], None] | None = on_release
        self.kept = False

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def drop(self) -> None:
        """Release it unless a driver task kept it (that task releases it when it ends)."""
        if not self.kept:
            self.release()


class LeaseCheck(Protocol):
    """Partition leases as this worker's clock sees them (`partition.leases.Ownership`)."""

    def lease_valid(self, partition: int) -> bool: ...

    async def confirm_lease(self, partition: int) -> bool: ...


class OutcomeStored(Exception):
    """A retried `apply` found the attempt's outcome stored by an earlier try whose reply was lost."""


class Driver:
    """Runs attempts for every partition leader of this worker, at most `max_concurrent` at once.

    Admission (`admit`): at most `max_concurrent + ready` invocations are held in memory (a driver
    task and its `Run`); the ones beyond wait in Redis (invoked, in their partition's active set)
    and their leaders queue their ids, at most `max_backlog` for the worker, in acceptance order.
    A freed room goes to the leader that waited longest (`start_waiting`), so partitions take
    turns; `saturated` (every room taken and `max_backlog` ids waiting, or more beyond the queue)
    refuses new calls."""

    def __init__(self, scripts: Scripts, invoker: Invoker, schema: Callable[[], SchemaSnapshot],
                 partitions: int, max_concurrent: int, clock: Clock = SYSTEM_CLOCK, *,
                 ready: int = 1000, max_backlog: int = 10_000) -> None:
        self._scripts = scripts
        self._invoker = invoker
        self._schema = schema
        self._partitions = partitions
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_held = max_concurrent + ready
        self.max_backlog = max_backlog
        self.held = 0  # Rooms taken: driver tasks (and resumes about to start one)
        self.waiting = 0  # ids the leaders queue for a room (more may wait in Redis only)
        self._backlogged: OrderedDict[Backlogged, None] = OrderedDict()  # leaders with waiting ids, oldest first
        self._offering = False
        self._overflowing: set[Backlogged] = set()  # leaders with waiting ids beyond the queue (in Redis only)
        self.loading = asyncio.Semaphore(MAX_LOADING)  # resumes reading from Redis (`PartitionLeader._restart`)
        self._clock = clock
        self._admitting = asyncio.Event()  # cleared by quiesce(): no new step starts
        self._admitting.set()
        self._holds: dict[int, asyncio.Event] = {}  # partitions being handed over: no new step
        self._busy: dict[int, int] = {}  # partition -> steps between an attempt's start and its transition
        self._idle: dict[int, asyncio.Event] = {}  # partition -> set while none runs
        self._streaming: set[tuple[str, str, str]] = set()  # see _learn_streaming
        self.bidi = "auto"
        """Which attempts are bidirectional (`PartitionConfig.bidi`: auto, always, off)."""
        self.leases: LeaseCheck | None = None
        """The worker's `Ownership`: right before an attempt is sent to the deployment, its lease
        must hold by this worker's clock (None: not checked, as in tests without ownership)."""

    @property
    def schema(self) -> Callable[[], SchemaSnapshot]:
        """The schema snapshot source every attempt reads."""
        return self._schema

    @property
    def partitions(self) -> int:
        return self._partitions

    # ---- admission ---------------------------------------------------------------------------
    def admit(self) -> Room | None:
        """Room for one more invocation in memory, or None: every room is taken, or invocations
        wait for one already (they go first). An in-memory check: no Redis, no task."""
        if self.held >= self.max_held or self._backlogged:
            return None
        return self._take()

    def _take(self) -> Room:
        self.held += 1
        HELD_INVOCATIONS.set(self.held)
        return Room(self._released)

    def _released(self) -> None:
        self.held -= 1
        HELD_INVOCATIONS.set(self.held)
        self._offer()

    def _offer(self) -> None:
        """Hand free rooms to the leaders that wait for one, longest waiting first (a leader that
        still has waiting ids queues itself again, at the end)."""
        if self._offering:  # called back from a start_waiting below: the loop goes on
            return
        self._offering = True
        try:
            while self.held < self.max_held and self._backlogged:
                lead, _ = self._backlogged.popitem(last=False)
                room = self._take()
                if not lead.start_waiting(room):
                    room.release()
        finally:
            self._offering = False

    def wait_for_room(self, lead: Backlogged) -> None:
        """`lead` has invocations waiting for a room: offer it the next free one (in turn)."""
        if lead not in self._backlogged:
            self._backlogged[lead] = None
        self._offer()

    def can_queue(self) -> bool:
        """May a leader queue one more waiting id (else it waits in Redis only, for the sweep)?"""
        return self.waiting < self.max_backlog

    def queued(self, delta: int) -> None:
        """A leader queued (+) or dequeued (-) waiting ids."""
        self.waiting += delta
        WAITING_INVOCATIONS.set(self.waiting)

    def overflowing(self, lead: Backlogged, overflow: bool) -> None:
        """`lead` has (or no longer has) waiting ids that only its active set holds."""
        if overflow:
            self._overflowing.add(lead)
        else:
            self._overflowing.discard(lead)

    def saturated(self) -> bool:
        """Every room taken and at least `max_backlog` invocations waiting (queued, or beyond the
        queue in Redis): new calls are refused (a call would wait behind them all); sends are still
        accepted (they wait in Redis)."""
        if self.held < self.max_held:
            return False
        self._overflowing = {lead for lead in self._overflowing if not lead.closed}  # a lost partition's go
        return self.waiting >= self.max_backlog or bool(self._overflowing)

    def quiesce(self) -> None:
        """Start no new attempt from now on (a graceful stop); the running ones go on to their
        transition, so what they did is recorded and nothing they ran runs again elsewhere."""
        self._admitting.clear()

    def hold(self, partition: int) -> None:
        """Start no new attempt of `partition` (it is being handed over) until `unhold`."""
        self._holds.setdefault(partition, asyncio.Event())

    def unhold(self, partition: int) -> None:
        gate = self._holds.pop(partition, None)
        if gate is not None:
            gate.set()

    async def wait_idle(self, partition: int, timeout_s: float) -> bool:
        """Wait until no attempt of `partition` is running, or `timeout_s` passed; True when idle."""
        if not self._busy.get(partition):
            return True
        return await self._clock.wait(self._idle.setdefault(partition, asyncio.Event()), timeout_s)

    async def drive(self, lead: Lead, run: Run) -> None:
        """Attempts until the invocation completes, suspends or backs off. Raises Fenced when the
        partition was lost, and whatever a transition raised (its outcome is then unknown: the
        leader re-derives it from Redis)."""
        while await self._step(lead, run):
            pass

    async def _step(self, lead: Lead, run: Run) -> bool:
        """One attempt and its transition; True when the next attempt should start at once.
        Waits (until the leader closes) while the driver is quiesced."""
        await self._admitting.wait()
        p = run.target.partition
        while (gate := self._holds.get(p)) is not None:
            await gate.wait()
        self._busy[p] = self._busy.get(p, 0) + 1
        idle = self._idle.get(p)
        if idle is None:  # one event per partition, kept (not one per attempt)
            idle = self._idle[p] = asyncio.Event()
        idle.clear()
        try:
            return await self._attempt_and_transition(lead, run)
        finally:
            self._busy[p] -= 1
            if not self._busy[p]:
                del self._busy[p]
                idle.set()

    async def _attempt_and_transition(self, lead: Lead, run: Run) -> bool:
        snapshot: SchemaSnapshot = self._schema()
        try:
            plan, failure = await self._attempt(lead, run, snapshot)
        except AttemptStopped:
            self._ignored(run.target, Applied(ApplyOutcome.BAD_STATE))
            await self.answer_from_storage(lead, run.target)
            return False
        if plan is None or plan.terminal is TerminalKind.ERROR:
            return await self._fail(lead, run, snapshot, plan, failure)
        new_att = 0 if plan.grew else run.record.attempts
        replayed = len(run.journal)
        t = run.target
        applied = await self._apply(run, replayed, _terminal(plan), new_att, plan.ops)
        if plan.grew and run.attempt_pin is not None:  # apply stored the pin with the first entry
            run.record, run.attempt_pin = run.record.pinned_to(run.attempt_pin), None
        self._after_apply(lead, plan, applied)
        if applied.outcome is ApplyOutcome.COMPLETED:
            assert plan.result is not None
            self._completed(lead, run, plan.result, applied)
            return False
        if applied.outcome is ApplyOutcome.RESUME:
            return await self._resumed(lead, run, snapshot, plan, applied, replayed, new_att)
        if applied.outcome is ApplyOutcome.BAD_STATE:
            self._ignored(t, applied)
            await self.answer_from_storage(lead, t)
        return False

    async def _apply(self, run: Run, replayed: int, terminal: Terminal, attempts: int, ops: Sequence[Op]) -> Applied:
        """Store an attempt's outcome (`apply`), retried while Redis cannot be reached, so what the
        deployment proposed (a `ctx.run` result ...) is kept until it is stored rather than lost
        with the attempt and run again. A retry is safe: the fence and the status check (END,
        ERROR, a stored SUSPEND), or the apply's nonce (a SUSPEND that resumed at once) refuse a
        second application. Raises Fenced, and OutcomeStored when a retry finds that an earlier
        try landed (its reply was lost): the leader then re-derives the invocation from Redis."""
        applied, retried = await while_unreachable(
            lambda: self._scripts.apply(run.target, run.token, self._clock.now_ms(), replayed, terminal, attempts, ops,
                                        run.attempt_pin),
            self._clock, "an attempt's outcome",
            {"invocation_id": run.target.invocation_id, "partition": run.target.partition})
        if retried and applied.outcome is ApplyOutcome.BAD_STATE:
            raise OutcomeStored(run.target.invocation_id)
        return applied

    def _completed(self, lead: Lead, run: Run, res: Result, applied: Applied) -> None:
        """The attempt completed the invocation: answer its waiters, drive the inbox's next one."""
        t = run.target
        INVOCATIONS.labels("succeeded" if res.code == 0 else "failed").inc()
        lead.resolve(t.invocation_id, rpc_result(res, applied.expires_ms))
        if applied.next_id and applied.next_record is not None:
            nt = _target(t.partition, applied.next_id, applied.next_record)
            lead.start(Run(nt, run.token, applied.next_record, applied.next_state, []))

    @staticmethod
    def _ignored(t: Target, applied: Applied) -> None:
        status = applied.status.value if applied.status is not None else "gone"
        log.info("attempt result ignored: invocation is %s", status, extra={"invocation_id": t.invocation_id})

    async def _resumed(self, lead: Lead, run: Run, snapshot: SchemaSnapshot, plan: AttemptPlan, applied: Applied,
                       replayed: int, new_att: int) -> bool:
        """The attempt suspended on what is already there: replay at once, unless it keeps doing so."""
        run.journal = run.journal[:replayed] + applied.new_entries
        run.record = run.record.with_attempt(new_att, self._clock.now_ms() if plan.grew else None)
        if plan.grew:
            run.idle_resumes = 0
        else:
            run.idle_resumes += 1
        if run.idle_resumes >= MAX_IDLE_RESUMES:
            # The SDK keeps suspending on something it already has: treat it as a failure
            # (back-off) rather than re-invoking it hot.
            run.idle_resumes = 0
            return await self._fail(lead, run, snapshot, None, "the SDK suspends on a notification it already has")
        return True

    async def answer_from_storage(self, lead: Lead, t: Target) -> None:
        """Callers waiting here for an invocation that completed (here, elsewhere, or in a
        transition whose reply was lost) get the stored result."""
        if not lead.awaited(t.invocation_id):
            return
        stored = await self._scripts.result_of(t.partition, t.invocation_id)
        if stored is not None and stored.status is Status.COMPLETED and stored.result is not None:
            lead.resolve(t.invocation_id, rpc_result(stored.result, None))

    @staticmethod
    def _after_apply(lead: Lead, plan: AttemptPlan, applied: Applied) -> None:
        lead.poke(plan.timers > 0 or applied.outcome is ApplyOutcome.BACKOFF,
                  plan.outbox > 0 or applied.parents_notified > 0)
        for woken in applied.woken:
            lead.resume(woken)

    def _learn_streaming(self, run: Run) -> None:
        """This attempt replays a journal that grew less than `LEARN_WINDOW_MS` ago: the handler
        went on soon after its last wait (a run's result, lazy state, a short sleep, a call's
        result), so its attempts on its deployment stream from now on, if the deployment can."""
        pinned = run.record.pinned_deployment_id
        if (not run.journal or pinned is None
                or self._clock.now_ms() - run.record.last_growth_ms > LEARN_WINDOW_MS):
            return
        key = (pinned, run.target.service, run.record.handler)
        if key not in self._streaming:
            if len(self._streaming) >= MAX_STREAMING_HANDLERS:
                self._streaming.clear()
            self._streaming.add(key)

    def _streams(self, deployment: Deployment, run: Run, meta: ServiceMeta) -> bool:
        """Whether the next attempt is bidirectional (`partition/bidi.py`): the deployment streams
        (h2c, BIDI_STREAM), the handler has an inactivity timeout, and this handler was seen to go
        on soon after its waits (`auto`, `_learn_streaming`: a stream costs a plain call more CPU
        than request-response, also over h2c), or always (`always`)."""
        if self.bidi == "off" or (
                self.bidi == "auto" and (deployment.id, run.target.service, run.record.handler) not in self._streaming):
            return False  # (a plain call under auto stops here)
        if not self._invoker.streams_to(deployment):
            return False
        # Restate too falls back to request-response when the inactivity timeout is 0
        return effective_settings(meta, meta.handlers.get(run.record.handler)).inactivity_timeout_ms > 0

    async def _attempt(self, lead: Lead, run: Run, snapshot: SchemaSnapshot) -> tuple[AttemptPlan | None, str]:
        """Run one attempt and plan its transition; (None, reason) when it failed before any plan.
        Raises Fenced, and AttemptStopped (a bidirectional attempt found it no longer invoked)."""
        t = run.target
        meta = snapshot.services.get(t.service)
        if meta is None:
            return None, f"service {t.service!r} is not registered"
        deployment, reason = self._deployment(run, meta, snapshot)
        if deployment is None:
            return None, reason
        inp = _attempt_input(run, meta, self._clock.now_ms())
        if self.bidi == "auto":
            self._learn_streaming(run)
        streaming = self._streams(deployment, run, meta)
        async with self._slots:
            # A freeze (SIGSTOP, a VM pause) may have outlived the lease, and another worker may
            # drive this invocation now: send nothing until a renewal confirms the lease.
            if (self.leases is not None and not self.leases.lease_valid(t.partition)
                    and not await self.leases.confirm_lease(t.partition)):
                raise Fenced(t.partition)
            IN_FLIGHT.inc()
            try:
                if streaming:
                    return await self._stream(lead, run, snapshot, deployment, inp)
                frames = await self._invoker.attempt(deployment, inp)
            except DeploymentError as e:
                return None, str(e)
            finally:
                IN_FLIGHT.dec()
        return self._plan(run, snapshot, frames)

    async def _stream(self, lead: Lead, run: Run, snapshot: SchemaSnapshot, deployment: Deployment,
                      inp: AttemptInput) -> tuple[AttemptPlan | None, str]:
        """A bidirectional attempt: its appends update `run`; the terminal's part is planned."""
        ctx = self._plan_context(run, snapshot)
        leases, p = self.leases, run.target.partition
        attempt = BidiAttempt(self._scripts, self._clock, run, AttemptPlanner(ctx), lead,
                              (lambda: leases.lease_valid(p)) if leases is not None else (lambda: True),
                              inp.attempt_timeout_s)
        outcome = await attempt.run(lambda: self._invoker.open_stream(deployment, inp))
        if outcome.plan is not None and outcome.plan.terminal is not TerminalKind.ERROR:
            run.state = ctx.state
        return outcome.plan, outcome.failure

    def _deployment(self, run: Run, meta: ServiceMeta, snapshot: SchemaSnapshot) -> tuple[Deployment | None, str]:
        """Where the next attempt goes (Restate's invoker): the pinned deployment even when a newer
        one of the service is registered, else the service's latest, which this attempt pins if it
        stores an entry (`run.attempt_pin`); (None, reason) when there is none."""
        run.attempt_pin = None
        pinned = run.record.pinned_deployment_id
        if pinned is not None:
            found = snapshot.deployments.get(pinned)
            return (found, "") if found is not None else (None, PINNED_DEPLOYMENT_GONE)
        latest = snapshot.deployments.get(meta.deployment_id)
        if latest is None:
            return None, f"service {meta.name!r} is not registered"
        try:
            version = negotiate(latest, self._invoker.max_protocol_version)
        except DeploymentError as e:
            return None, str(e)
        run.attempt_pin = PinnedDeployment(latest.id, version)
        return latest, ""

    def _plan(self, run: Run, snapshot: SchemaSnapshot, frames: list[Frame]) -> tuple[AttemptPlan | None, str]:
        """Plan an attempt's frames into one transition; keeps the state it wrote unless it failed."""
        ctx = self._plan_context(run, snapshot)
        try:
            plan = plan_attempt(frames, ctx)
        except PlanError as e:
            return None, f"protocol violation: {e}"
        if plan.terminal is not TerminalKind.ERROR:
            run.state = ctx.state
        return plan, ""

    def _plan_context(self, run: Run, snapshot: SchemaSnapshot) -> PlanContext:
        t = run.target
        return PlanContext(
            invocation_id=t.invocation_id, partition=t.partition, partitions=self._partitions,
            kind=run.record.kind, service=t.service, key=t.key, state=dict(run.state),
            commands_before=1 + count_commands(run.journal), now_ms=self._clock.now_ms(), schema=snapshot,
            journal_kept=bool(run.record.journal_retention_ms) and run.record.completion_retention_ms > 0,
            scope=t.scope,
        )

    async def _fail(self, lead: Lead, run: Run, snapshot: SchemaSnapshot, plan: AttemptPlan | None,
                    reason: str) -> bool:
        """Record a failed attempt: back off, pause, or complete with the failure per the policy."""
        t = run.target
        meta = snapshot.services.get(t.service)
        policy = policy_for(meta, meta.handlers.get(run.record.handler) if meta else None)
        grew = plan is not None and plan.grew
        failed = (0 if grew else run.record.attempts) + 1
        behavior: int = protocol_pb.ErrorMessage.RETRY
        if plan is not None:
            reason, behavior = plan.failure_text, plan.error_behavior
        action = after_failure(policy, failed, behavior)
        if action is FailureAction.COMPLETE:
            code = plan.error_code if plan is not None and behavior == protocol_pb.ErrorMessage.FAIL else 500
            return await self._complete_failed(lead, run, plan, Result(code, reason), failed)
        delay = plan.next_retry_delay_ms if plan is not None else None
        delay = policy.delay_ms(failed) if delay is None else delay
        paused = action is FailureAction.PAUSE
        INVOCATIONS.labels("paused" if paused else "retried").inc()
        error_code = f" ({plan.restate_code})" if plan is not None and plan.restate_code else ""
        log.warning("attempt failed (%d since the journal last grew), %s: %s%s", failed,
                    "pausing" if paused else f"retrying in {delay} ms", reason, error_code,
                    extra={"invocation_id": t.invocation_id, "partition": t.partition,
                           "target": f"{t.service}/{run.record.handler}"})
        now = self._clock.now_ms()
        failure = AttemptFailed(Status.PAUSED if paused else Status.BACKING_OFF, now + delay,
                                reason[:MAX_FAILURE_MESSAGE])
        applied = await self._apply(run, len(run.journal), failure, failed, plan.ops if plan is not None else [])
        self._after_apply(lead, plan or AttemptPlan(), applied)
        return False

    async def _complete_failed(self, lead: Lead, run: Run, plan: AttemptPlan | None, res: Result,
                               failed: int) -> bool:
        """Complete with the failure (KILL policy, or the SDK's FAIL) exactly as an END completes:
        waiters answered, parents notified, and the key's lock handed to its inbox head, which
        starts here at once (otherwise the key would stay locked by an invocation nobody drives)."""
        t = run.target
        ops = without_journal(plan.ops) if plan is not None else []
        applied = await self._apply(run, len(run.journal), End(res), failed, ops)
        self._after_apply(lead, plan or AttemptPlan(), applied)
        if applied.outcome is ApplyOutcome.COMPLETED:
            self._completed(lead, run, res, applied)
        elif applied.outcome is ApplyOutcome.BAD_STATE:
            self._ignored(t, applied)
            await self.answer_from_storage(lead, t)
        return False
