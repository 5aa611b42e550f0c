"""One owned partition: everything this worker runs for it, under one fence token.

Acquiring a partition creates its `PartitionLeader`; losing it closes the leader, which stops
its loops and drivers at once and answers its waiters NOT_LEADER (the ingress re-routes them).
The leader owns the partition's timer loop, outbox drain, the drivers of its invocations, the
callers waiting for their results, and the duty to re-derive all of that from Redis:

- A transition whose reply did not arrive (a Redis error or timeout, or a cancelled RPC) has an
  unknown outcome: the script may have run. The leader never guesses; it marks the id suspect
  and re-reads it shortly after (`reconcile`): completed -> its waiters are answered from the
  stored result; invoked without a local driver -> it gets one. The partition's active set is
  swept at the same time, because a lost END reply may have handed the key's lock to an inbox
  head that nobody drives yet.
- A periodic sweep (every `SWEEP_INTERVAL_S` of the injected clock) gives every id in the active
  set that has no local driver one, and answers waiters whose invocation completed, so no
  committed state is ever left undriven, whatever reply was lost.
- A duplicate notification for an invocation that is invoked without a driver here resumes it.
- Memory is bounded (`Driver.admit`): an invocation that finds no room in the worker gets no
  driver task and no `Run`; it stays invoked in Redis and its id is queued here (`_queued`, or
  past the worker's backlog bound only in the active set, `_overflow`) until the driver offers a
  room (`start_waiting`), when it is resumed from Redis like a swept one.

Lifecycle commands (`manage`: kill, cancel, purge, pause, resume) are one fenced script each; what
follows in memory (stop the local driver, answer waiters, drive the inbox head or the resumed
invocation) is re-derived like any other transition's when the reply is lost. A handler's cancel
of another invocation (a signal with the cancel index) takes the same `cancel` transition, so a
scheduled or inboxed invocation it cancels is removed as from the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from redis.asyncio import Redis

from partition import keys, restart
from partition.bidi import Poke
from partition.driver import Driver, OutcomeStored, Room, Run
from partition.errors import Fenced, InvocationNotFound, NotLeader
from partition.invocation import (
    CANCELLED,
    KILLED,
    HandlerKind,
    Result,
    Status,
    StoredResult,
    completion_key,
    new_record,
    rpc_result,
)
from partition.metrics import INVOCATIONS, QUEUE_WAIT, RECONCILED, VQUEUE_GAUGES, WAITING_CALLERS
from partition.outbox import PartitionOutbox
from partition.outbox_codec import ATTACH_NOTE_KEY, OUTPUT_NOTE_KEY, decode_attach_caller
from partition.schedules import PartitionSchedules
from partition.scripts import (
    CANCEL_NOTE_KEY,
    STATE_EDIT_NOTE_KEY,
    Accepted,
    Managed,
    Notified,
    Scripts,
    Target,
    state_version,
)
from partition.timers import PartitionTimers
from partition.transition import AcceptOutcome, AttachOutcome, ManageOutcome, NotifyOutcome, StartOutcome
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate import protocol
from shardgate.clock import Clock
from shardgate.limits import RuleBook
from shardgate.tasks import cancel_and_wait

RuleBookSource = Callable[[], Awaitable[RuleBook]]
"""The current flow-control rule book (loaded at the first call, then kept fresh by polling)."""


async def _no_rules() -> RuleBook:
    return RuleBook()

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKFLOW_ALREADY_INVOKED = "the workflow method was already invoked"
SWEEP_INTERVAL_S = 5.0  # every id of the active set without a driver gets one at least this often
REPAIR_DELAY_S = 0.2  # how soon a suspect id is re-read (doubling up to SWEEP_INTERVAL_S while Redis fails)
RESUME_RETRY_S = 1.0  # a fired timer that could not start its invocation fires again this much later
RECONCILE_CONCURRENCY = 32
STATE_EDIT_ATTEMPTS = 5  # a state edit re-checks its version this often while invocations keep changing the state
DRAIN_LIMIT = 1 << 30  # the limit of a bucket no rule counts any more: its queue drains at once
VQUEUE_GAUGES_S = 1.0  # how often a leader re-reads its partition's flow-control gauges
VQUEUE_IDLE_PERIODS = 10  # with no bucket at the last read and no scoped accept since: read every 10th period

_DELIVER_STATUS = {NotifyOutcome.GONE: pb.DELIVER_STATUS_GONE, NotifyOutcome.DUP: pb.DELIVER_STATUS_DUPLICATE}
_MANAGE_STATUS = {
    ManageOutcome.DONE: pb.MANAGE_STATUS_DONE, ManageOutcome.APPENDED: pb.MANAGE_STATUS_APPENDED,
    ManageOutcome.ALREADY: pb.MANAGE_STATUS_ALREADY, ManageOutcome.NOT_FOUND: pb.MANAGE_STATUS_NOT_FOUND,
    ManageOutcome.COMPLETED: pb.MANAGE_STATUS_COMPLETED, ManageOutcome.NOT_COMPLETED: pb.MANAGE_STATUS_NOT_COMPLETED,
    ManageOutcome.WRONG_STATE: pb.MANAGE_STATUS_WRONG_STATE,
}


def _stored_result(stored: StoredResult) -> pb.Result:
    """The RPC result of a completed invocation read back from Redis (with its expiry)."""
    assert stored.result is not None
    return rpc_result(stored.result, stored.expires_ms)


CLOSE_RECANCEL_S = 0.5
"""How often `wait_closed` cancels again the tasks of a closed leader that are still running."""


class Waiters:
    """Callers waiting on this worker for invocations' results (in memory only: they are RPCs)."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[asyncio.Future[pb.Result]]] = {}

    def add(self, invocation_id: str) -> asyncio.Future[pb.Result]:
        fut: asyncio.Future[pb.Result] = asyncio.get_running_loop().create_future()
        self._by_id.setdefault(invocation_id, []).append(fut)
        WAITING_CALLERS.inc()
        return fut

    def drop(self, invocation_id: str, fut: asyncio.Future[pb.Result] | None) -> None:
        futs = self._by_id.get(invocation_id)
        if fut is not None and futs and fut in futs:
            futs.remove(fut)
            WAITING_CALLERS.dec()
            if not futs:
                del self._by_id[invocation_id]

    def resolve(self, invocation_id: str, result: pb.Result) -> None:
        """Answer everyone waiting. Waiters never get `expires_ms`: Restate announces
        `idempotency-expires` only when a stored result is replayed, not to the callers that waited."""
        result.ClearField("expires_ms")
        futs = self._by_id.pop(invocation_id, [])
        WAITING_CALLERS.dec(len(futs))
        for fut in futs:
            if not fut.done():
                fut.set_result(result)

    def fail_all(self, exc: Exception) -> None:
        for futs in self._by_id.values():
            WAITING_CALLERS.dec(len(futs))
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
        self._by_id.clear()

    def __contains__(self, invocation_id: object) -> bool:
        return invocation_id in self._by_id

    def ids(self) -> list[str]:
        return list(self._by_id)


class PartitionLeader:
    """The leader of one partition under one fence token; `open()` once, `close()` once."""

    def __init__(self, partition: int, token: str, *, redis: Redis, scripts: Scripts, driver: Driver, clock: Clock,
                 deliver: Callable[[pb.OutboxMessage], Awaitable[None]], rules: RuleBookSource = _no_rules) -> None:
        self.partition = partition
        self._rules = rules
        self.token = token
        self._scripts = scripts
        self._driver = driver
        self._clock = clock
        self.waiters = Waiters()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self.live: dict[str, Poke] = {}
        """Invocations with a bidirectional attempt open (`partition/bidi.py`): id -> its poke, called
        when a transition here appended a notification to its journal (with its index and frame
        when known)."""
        self._rewake: set[str] = set()  # woken while their driver was finishing: resume after it
        self._accepting: Counter[str] = Counter()  # ids with an accept script in flight: the sweep leaves them be
        # invoked ids without a driver because the worker has no room (`Driver.admit`), oldest first;
        # `_overflow`: more than the driver lets us queue wait in the active set only (the sweep finds them)
        self._queued: OrderedDict[str, None] = OrderedDict()
        self._overflow = False
        self._refill: asyncio.Task[None] | None = None
        self._resuming: set[str] = set()  # ids a resume under a room is reading: the sweep leaves them be
        self._reserved: dict[str, Room] = {}  # the room a resume hands to start() (only during that call)
        # drivers stopped by kill / pause / cancel, until they really ended (a cancellation can be
        # lost), and the ids to resume from storage once they did: no second run beside a zombie
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._resume_after_stop: set[str] = set()
        self._suspect: set[str] = set()  # ids whose last transition's outcome is unknown
        self._repair: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers = PartitionTimers(redis, partition, self.fire_timer, clock)
        self._outbox = PartitionOutbox(redis, scripts, partition, token, deliver, clock)
        self._schedules = PartitionSchedules(redis, scripts, partition, token, driver.schema, driver.partitions,
                                             self._outbox.poke, clock)
        self._loops: list[asyncio.Task[None]] = []
        self._vqueue_dirty = True  # a scoped accept happened since the gauges' last read (or none read yet)
        self.closed = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Start the timer loop, the outbox drain and the sweep (whose first pass resumes
        everything that was in flight on this partition)."""
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._timers.run()), loop.create_task(self._outbox.run()),
                       loop.create_task(self._sweep_loop())]
        self._loops.append(loop.create_task(self._schedules.run()))  # closed with the other loops
        self._loops.append(loop.create_task(self._vqueue_gauges_loop()))

    def close(self) -> None:
        """The partition is lost: stop everything at once (the new owner replays the attempts, so
        side effects never run twice concurrently) and send the waiters to the new owner."""
        self.closed = True
        VQUEUE_GAUGES.forget(self.partition)
        for task in [*self._loops, *self._drivers.values(), *self._tasks]:
            task.cancel()
        if self._repair is not None:
            self._repair.cancel()
        self.waiters.fail_all(NotLeader(self.partition))

    async def wait_closed(self) -> None:
        """Wait until every task of this leader ended. A cancellation can be lost (a library that
        turns it into another error, or asyncio.wait_for's race with a result on Python 3.11), so
        the tasks still running are cancelled again every CLOSE_RECANCEL_S."""
        pending: set[asyncio.Task[Any]] = {*self._loops, *self._drivers.values(), *self._stopping.values(), *self._tasks}
        if self._repair is not None:
            pending.add(self._repair)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=CLOSE_RECANCEL_S)
            for task in pending:
                task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the Lead protocol (what the engine calls) ---------------------------------------------
    def resolve(self, invocation_id: str, result: pb.Result) -> None:
        self.waiters.resolve(invocation_id, result)

    def awaited(self, invocation_id: str) -> bool:
        return invocation_id in self.waiters

    def poke_schedules(self) -> None:
        """The admin API changed a schedule (maybe of this partition): look at the due set now."""
        self._schedules.poke()

    def poke(self, timers: bool, outbox: bool) -> None:
        if timers:
            self._timers.poke()
        if outbox:
            self._outbox.poke()

    def start(self, run: Run) -> None:
        """Drive an invocation here, unless it is driven here already, in the room its resume
        reserved (`_reserved`), else one the driver admits now. Without room the `Run` is dropped:
        the invocation is invoked in Redis (in the active set) and its id waits here for a room
        (`_wait_for_room`)."""
        inv_id = run.target.invocation_id
        if self.closed or inv_id in self._drivers:
            return
        if inv_id in self._stopping:  # its stopped driver has not ended yet: resume after it
            self._resume_after_stop.add(inv_id)
            return
        kept = self._reserved.pop(inv_id, None) or self._driver.admit()
        if kept is None:
            self._wait_for_room(inv_id)
            return
        kept.kept = True
        task = asyncio.get_running_loop().create_task(self._drive(run))
        task.add_done_callback(lambda _t: kept.release())  # also when cancelled before it ran
        self._drivers[inv_id] = task

    def resume(self, invocation_id: str) -> None:
        """Restart an invoked invocation from storage, unless it is driven here (or, without room
        in the worker, queue its id for a room)."""
        if invocation_id in self._stopping:
            self._resume_after_stop.add(invocation_id)
        elif invocation_id not in self._drivers:
            room = self._driver.admit()
            if room is None:
                self._wait_for_room(invocation_id)
            else:
                self._spawn_resume(invocation_id, room)

    def driving(self, invocation_id: str) -> bool:
        return invocation_id in self._drivers

    # ---- admission (the worker's bound on invocations in memory) ---------------------------------
    def _wait_for_room(self, inv_id: str) -> None:
        """`inv_id` is invoked but there is no room for it here: queue its id (or, past the
        driver's backlog bound, leave it to the active set and the sweep) until a room frees up."""
        if self.closed or inv_id in self._queued:
            return
        if self._driver.can_queue():
            self._queued[inv_id] = None
            self._driver.queued(1)
        else:
            self._set_overflow(True)
        self._driver.wait_for_room(self)

    def _set_overflow(self, overflow: bool) -> None:
        self._overflow = overflow
        self._driver.overflowing(self, overflow)

    def start_waiting(self, room: Room) -> bool:
        """The driver has room: start the oldest queued id under `room`; when only the active set
        holds waiting ones, re-read it (`sweep`). False when nothing was started (a closed
        leader gives its queued ids up here: the partition's next owner resumes them)."""
        if self.closed:
            self._driver.queued(-len(self._queued))
            self._queued.clear()
            self._set_overflow(False)
            return False
        while self._queued:
            inv_id, _ = self._queued.popitem(last=False)
            self._driver.queued(-1)
            if inv_id in self._drivers or inv_id in self._stopping:
                continue
            if self._queued or self._overflow:
                self._driver.wait_for_room(self)
            self._spawn_resume(inv_id, room, swept=True)
            return True
        if self._overflow and (self._refill is None or self._refill.done()):
            self._refill = asyncio.get_running_loop().create_task(self._refill_from_active())
            self._tasks.add(self._refill)
            self._refill.add_done_callback(self._tasks.discard)
        return False

    async def _refill_from_active(self) -> None:
        try:
            await self.sweep()
        except Exception as e:  # noqa: BLE001  Redis unavailable: the periodic sweep tries again
            log.warning("cannot re-read the waiting invocations (%s)", type(e).__name__,
                        extra={"partition": self.partition})

    def _spawn_resume(self, inv_id: str, room: Room, swept: bool = False) -> None:
        """`_resume_one` under `room`, released when the task ends unless a driver kept it."""
        if self.closed:
            room.release()
            return
        task = asyncio.get_running_loop().create_task(self._resume_one(inv_id, "", None, swept, room))
        self._tasks.add(task)
        self._resuming.add(inv_id)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._resumed(inv_id, room))

    def _resumed(self, inv_id: str, room: Room) -> None:
        self._resuming.discard(inv_id)
        room.drop()

    # ---- driving -----------------------------------------------------------------------------
    async def _drive(self, run: Run) -> None:
        inv_id = run.target.invocation_id
        ok = True
        try:
            await self._driver.drive(self, run)
        except Fenced:
            INVOCATIONS.labels("fenced").inc()
            log.info("partition lost while driving invocation", extra={"invocation_id": inv_id,
                                                                       "partition": self.partition})
        except asyncio.CancelledError:
            log.info("driver stopped (partition released, or the invocation killed or paused)",
                     extra={"invocation_id": inv_id, "partition": self.partition})
            raise
        except OutcomeStored:
            ok = False
            log.info("an attempt's outcome was stored by a try whose reply was lost; re-deriving it from Redis",
                     extra={"invocation_id": inv_id, "partition": self.partition})
        except Exception:
            ok = False
            log.exception("invocation driver failed; re-deriving it from Redis",
                          extra={"invocation_id": inv_id, "partition": self.partition})
        finally:
            if self._drivers.get(inv_id) is asyncio.current_task():
                del self._drivers[inv_id]
        if not ok:
            self.outcome_unknown(inv_id)
        elif inv_id in self._rewake:
            self._rewake.discard(inv_id)
            self.resume(inv_id)

    async def _resume_one(self, inv_id: str, timer_member: str = "", target: Target | None = None,
                          swept: bool = False, room: Room | None = None) -> None:
        """(Re)start an invocation from its stored record, state and journal, under `room` (else
        one admitted now; without room its id waits for one, see `start`, and nothing is read). A
        fired `timer_member` is consumed by `attempt_start`, or settled (fenced) when that is not
        reached. `swept`: found undriven by the sweep, which has nothing to add once a driver (or
        the accept that starts one) took the id in the meantime."""
        if self.closed or (swept and (inv_id in self._drivers or inv_id in self._accepting)):
            return
        if inv_id in self._drivers:
            # Its driver is finishing an attempt that suspended: it resumes once that is done.
            self._rewake.add(inv_id)
            if timer_member:
                await self._settle_timer(inv_id, timer_member)
            return
        room = room if room is not None else self._driver.admit()
        if room is None and not timer_member:  # a fired timer is consumed first (its start may queue)
            self._wait_for_room(inv_id)
            return
        try:
            await self._restart(inv_id, timer_member, target, swept, room)
        except Fenced:
            return
        except Exception:
            log.exception("resuming invocation failed; re-deriving it", extra={"invocation_id": inv_id,
                                                                               "partition": self.partition})
            if timer_member:
                await self._settle_timer(inv_id, timer_member)
            self.outcome_unknown(inv_id)
        finally:
            if room is not None:
                room.drop()

    async def _settle_timer(self, inv_id: str, member: str) -> None:
        """A fired member that did not reach `attempt_start` is never left due (the timer loop
        would fire it over and over): dropped when nothing waits for it, else pushed back by
        `RESUME_RETRY_S`, so it fires again and is not lost in a crash."""
        try:
            await self._scripts.settle(self.partition, inv_id, self.token, member,
                                       self._clock.now_ms() + int(RESUME_RETRY_S * 1000))
        except Fenced:
            pass
        except Exception:
            log.exception("cannot settle timer %s", member, extra={"invocation_id": inv_id,
                                                                   "partition": self.partition})

    async def _restart(self, inv_id: str, timer_member: str, t: Target | None, swept: bool = False,
                       room: Room | None = None) -> None:
        async with self._driver.loading:  # a bounded number of resumes read from Redis at once
            await self._load_and_start(inv_id, timer_member, t, swept, room)

    async def _load_and_start(self, inv_id: str, timer_member: str, t: Target | None, swept: bool,
                              room: Room | None) -> None:
        if t is None:
            found = await self._scripts.located(self.partition, inv_id)
            if found is None:  # it no longer exists: forget it (fenced), timer member included
                await self._scripts.settle(self.partition, inv_id, self.token, timer_member)
                return
            t, status = found
            if swept and (inv_id in self._drivers or inv_id in self._accepting):
                return  # a driver here started since the sweep read the active set
            if swept and status is not Status.INVOKED:  # a driver here ended since that read
                if self.awaited(inv_id):
                    await self._driver.answer_from_storage(self, t)
                return
        started = await self._scripts.attempt_start(t, self.token, timer_member, self._clock.now_ms())
        if started.outcome is StartOutcome.INVOKED and started.record is not None:
            if started.record.vqueue and started.started_from is Status.SCHEDULED:
                queued_since_ms = max(started.record.last_growth_ms, started.record.execution_time_ms or 0)
                QUEUE_WAIT.observe(max(0.0, (self._clock.now_ms() - queued_since_ms) / 1000))
            if room is not None:
                self._reserved[inv_id] = room
            try:
                self.start(Run(t, self.token, started.record, started.state, started.journal))
            finally:
                self._reserved.pop(inv_id, None)  # not taken: the resume releases it
        elif self.awaited(inv_id):  # e.g. completed in a transition whose reply was lost
            await self._driver.answer_from_storage(self, t)

    def _poke_live(self, inv_id: str, note: tuple[int, bytes] | None = None) -> None:
        """A notification was appended to a running invocation (`note`: its journal index and
        frame): its open stream, if any, forwards or fetches it."""
        poke = self.live.get(inv_id)
        if poke is not None:
            poke(note)

    def wake(self, notified: Notified) -> None:
        """Start the invocation a notification woke (its keys came with the notify reply); a
        duplicate is re-derived, in case the wake-up it caused was lost with a reply."""
        if notified.outcome is NotifyOutcome.WOKEN and notified.target is not None:
            t = notified.target
            self._spawn(self._resume_one(t.invocation_id, target=t))

    async def fire_timer(self, member: str) -> None:
        """A due timer: a sleep completion wakes its invocation, a retry or delayed send starts it.
        Raises ValueError for a member of no known kind."""
        timer = keys.parse_timer_member(member)
        if timer.kind is not keys.TimerKind.WAKE:
            await self._resume_one(timer.invocation_id, member)
            return
        cid = timer.completion_id
        assert cid is not None  # parse_timer_member: a WAKE member always names its completion
        frame = protocol.notification(protocol.MessageType.SLEEP_COMPLETION, completion_id=cid, void=True)
        notified = await self._transition(timer.invocation_id, self._scripts.notify(
            self.partition, timer.invocation_id, self.token, completion_key(cid), frame, member))
        self.wake(notified)
        if notified.outcome is NotifyOutcome.APPLIED:
            self._poke_live(timer.invocation_id, (notified.journal_len - 1, frame))

    # ---- re-deriving from Redis --------------------------------------------------------------
    async def _transition(self, inv_id: str, call: Awaitable[T]) -> T:
        """Await a transition of `inv_id`; if its reply is lost (error or cancellation), its outcome
        is unknown: mark the id for `reconcile` and re-raise."""
        try:
            return await call
        except Fenced:
            raise
        except BaseException:
            self.outcome_unknown(inv_id)
            raise

    def outcome_unknown(self, inv_id: str) -> None:
        """A transition of `inv_id` may or may not have run: re-derive it (and sweep) shortly."""
        if self.closed:
            return
        self._suspect.add(inv_id)
        if self._repair is None or self._repair.done():
            self._repair = asyncio.get_running_loop().create_task(self._repair_loop())

    async def _repair_loop(self) -> None:
        delay_s = REPAIR_DELAY_S
        while self._suspect and not self.closed:
            await self._clock.sleep(delay_s)
            ids, self._suspect = self._suspect, set()
            # The lost transition may have added timers or outbox messages nobody was told about.
            self.poke(True, True)
            try:
                for inv_id in sorted(ids):
                    await self.reconcile(inv_id)
                await self.sweep()
                delay_s = REPAIR_DELAY_S
            except Fenced:
                return
            except Exception as e:  # noqa: BLE001  Redis still failing: keep them suspect, back off
                log.warning("cannot re-derive %d invocations yet (%s), retrying", len(ids), type(e).__name__,
                            extra={"partition": self.partition})
                self._suspect |= ids
                delay_s = min(delay_s * 2, SWEEP_INTERVAL_S)

    async def reconcile(self, inv_id: str, swept: bool = False) -> None:
        """Make this process's view of `inv_id` match Redis: answer waiters of a completed
        invocation, drive an invoked one that has no driver here (`swept`: see `_resume_one`)."""
        if inv_id in self._drivers or (swept and inv_id in self._accepting):
            return  # its driver answers its waiters
        stored = await self._scripts.result_of(self.partition, inv_id)
        RECONCILED.labels("read").inc()
        if stored is None:
            return
        if stored.status is Status.COMPLETED and stored.result is not None:
            if self.awaited(inv_id):
                RECONCILED.labels("answered").inc()
                self.resolve(inv_id, rpc_result(stored.result, None))
        elif stored.status is Status.INVOKED:
            RECONCILED.labels("resumed").inc()
            await self._resume_one(inv_id, swept=swept)

    async def sweep(self) -> None:
        """Every invoked id of the partition gets a driver (or, without room, waits for a room);
        waiters of completed ones an answer."""
        active = await self._scripts.active_ids(self.partition)
        self._set_overflow(False)  # every id that waits in the active set only is in `active`: queued again below
        undriven = [i for i in active if i not in self._drivers and i not in self._accepting
                    and i not in self._queued and i not in self._resuming]
        if undriven and not self._driver.waiting:
            log.info("resuming invocations without a driver", extra={"partition": self.partition,
                                                                     "count": len(undriven)})
            RECONCILED.labels("resumed").inc(len(undriven))
        for inv_id in undriven:
            room = self._driver.admit()
            if room is None:
                self._wait_for_room(inv_id)
            else:
                self._spawn_resume(inv_id, room, swept=True)
        waiting = [i for i in self.waiters.ids() if i not in self._drivers and i not in active
                   and i not in self._accepting]
        if waiting:
            limit = asyncio.Semaphore(RECONCILE_CONCURRENCY)

            async def one(inv_id: str) -> None:
                async with limit:
                    await self.reconcile(inv_id, swept=True)

            await asyncio.gather(*(one(i) for i in waiting))

    async def _sweep_loop(self) -> None:
        delay_s = REPAIR_DELAY_S
        while True:
            try:
                await self.sweep()
                delay_s = SWEEP_INTERVAL_S
            except Fenced:
                return
            except Exception as e:  # noqa: BLE001  Redis unavailable: try again sooner
                log.warning("partition sweep failed (%s), retrying", type(e).__name__,
                            extra={"partition": self.partition})
                delay_s = min(max(delay_s, REPAIR_DELAY_S) * 2, SWEEP_INTERVAL_S)
            await self._clock.sleep(delay_s)

    # ---- flow control ------------------------------------------------------------------------
    def limits_changed(self, book: RuleBook) -> None:
        """The rule book changed: store the new limits of this partition's buckets and start what
        a raised (or removed) limit lets through."""
        self._spawn(self._apply_limits(book))

    async def _apply_limits(self, book: RuleBook) -> None:
        self._vqueue_dirty = True
        try:
            buckets = await self._scripts.vqueue_buckets(self.partition)
            if not buckets:
                return
            limits: list[tuple[str, int | str]] = [(b, book.bucket_admission(b)) for b in buckets]
            admitted = await self._scripts.scope_limits(self.partition, self.token, self._clock.now_ms(), limits)
        except Fenced:
            return
        except Exception:
            log.exception("cannot apply the new concurrency limits; the start timers of what they admit"
                          " (if stored) start it", extra={"partition": self.partition})
            self.poke(True, False)
            return
        self.poke(True, False)
        for inv_id in admitted:
            self.resume(inv_id)

    async def _vqueue_gauges_loop(self) -> None:
        """Refresh this partition's flow-control gauges (`partition.metrics.VqueueGauges`) every
        VQUEUE_GAUGES_S of the injected clock: plain reads, one when the partition has no bucket.
        Buckets appear with scoped accepts, which only this leader runs: after a read that found
        none, the next read waits for one (`_vqueue_dirty`), or VQUEUE_IDLE_PERIODS at most."""
        idle = 0
        while True:
            if self._vqueue_dirty or idle >= VQUEUE_IDLE_PERIODS:
                self._vqueue_dirty, idle = False, 0  # cleared before the read: an accept during it sets it again
                try:
                    book = await self._rules()
                    views = await self._scripts.vqueue_views(self.partition, self._clock.now_ms())
                    VQUEUE_GAUGES.update(self.partition, views, book.rule_of)
                    if views:
                        self._vqueue_dirty = True  # buckets in use: keep reading every period
                except Exception as e:  # noqa: BLE001  Redis unavailable: the gauges stay as last read
                    self._vqueue_dirty = True
                    log.debug("cannot read the vqueue gauges (%s)", type(e).__name__,
                              extra={"partition": self.partition})
            else:
                idle += 1
            await self._clock.sleep(VQUEUE_GAUGES_S)

    # ---- the partition's RPCs ----------------------------------------------------------------
    async def accept(self, req: pb.InvokeRequest, refusable: bool = False) -> Accepted:
        """Create the invocation (or find the existing one) and start what it needs. A scoped one
        under a rule counts against the rule's bucket (queued when it is full or out of rate
        tokens; `refusable` under an `on_limit: reject` rule: REJECTED, nothing stored)."""
        inv_id = req.invocation_id
        now_ms = self._clock.now_ms()
        record = new_record(req, now_ms)
        limit, rated = None, False
        if record.scope is not None:
            found = (await self._rules()).match(record.scope, record.limit_key)
            if found is not None:
                record = replace(record, vqueue=found.bucket)
                self._vqueue_dirty = True
                limit, rated = found.rule.limits.admission(), found.rule.limits.rate is not None
        t = Target.of(self.partition, inv_id, record)
        self._accepting[inv_id] += 1
        try:
            acc = await self._transition(inv_id, self._scripts.accept(t, self.token, record, limit, now_ms, refusable))
        finally:
            self._accepting[inv_id] -= 1  # no await until start() below: the sweep sees the driver next
            if not self._accepting[inv_id]:
                del self._accepting[inv_id]
        if acc.outcome is AcceptOutcome.REJECTED:
            INVOCATIONS.labels("rejected").inc()
            return acc
        if acc.outcome is AcceptOutcome.DUP:
            INVOCATIONS.labels("duplicate").inc()
            self.poke(False, acc.parents_notified > 0)
            if acc.dup_status is Status.INVOKED:
                self.resume(inv_id)
            return acc
        INVOCATIONS.labels("accepted").inc()
        if acc.outcome is AcceptOutcome.INVOKED:
            if record.vqueue:
                QUEUE_WAIT.observe(0.0)
            self.start(Run(t, self.token, replace(record, status=Status.INVOKED), acc.state, []))
        elif acc.outcome is AcceptOutcome.SCHEDULED or rated:
            self.poke(True, False)  # a start timer, or a queue's wake-up for its next rate token
        return acc

    async def invoke(self, req: pb.InvokeRequest) -> pb.InvokeResponse:
        """Accept a call or send; a call waits for the result."""
        inv_id = req.invocation_id
        waiter = self.waiters.add(inv_id) if req.wait else None
        try:
            acc = await self.accept(req, refusable=True)
        except BaseException:
            self.waiters.drop(inv_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=inv_id)
        if acc.outcome is AcceptOutcome.REJECTED:
            self.waiters.drop(inv_id, waiter)
            resp.rejected_retry_after_ms = acc.retry_after_ms
            return resp
        dup = acc.outcome is AcceptOutcome.DUP
        exec_ms = acc.execution_time_ms if dup else (
            req.execution_time_ms if acc.outcome is AcceptOutcome.SCHEDULED else None)
        if exec_ms is not None:
            resp.execution_time_ms = exec_ms
        # a key the ingress generated is known to this request alone: any duplicate is its re-send
        resent = req.idempotency_key_generated or (bool(req.request_nonce) and acc.request_nonce == req.request_nonce)
        if dup and not req.wait and not resent:
            resp.send_status = pb.SEND_STATUS_PREVIOUSLY_ACCEPTED
        if waiter is None:
            return resp
        if dup and HandlerKind.from_proto(req.kind) is HandlerKind.WORKFLOW and not resent:
            self.waiters.drop(inv_id, waiter)
            resp.result.CopyFrom(rpc_result(Result(409, WORKFLOW_ALREADY_INVOKED)))
            return resp
        if dup and acc.dup_status is Status.COMPLETED and acc.result is not None:
            self.waiters.drop(inv_id, waiter)
            resp.result.CopyFrom(rpc_result(acc.result, acc.expires_ms))
            return resp
        resp.result.CopyFrom(await self._wait(inv_id, waiter))
        return resp

    async def attach(self, ref: pb.InvocationRef) -> pb.InvokeResponse:
        """Wait for an invocation's result. Raises InvocationNotFound."""
        inv_id = ref.invocation_id
        waiter = self.waiters.add(inv_id)
        try:
            stored = await self._scripts.result_of(self.partition, inv_id)
        except BaseException:
            self.waiters.drop(inv_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=inv_id)
        if stored is None or stored.status is Status.COMPLETED:
            self.waiters.drop(inv_id, waiter)
            if stored is None:
                raise InvocationNotFound(inv_id)
            resp.result.CopyFrom(_stored_result(stored))
            return resp
        resp.result.CopyFrom(await self._wait(inv_id, waiter))
        return resp

    async def get_output(self, ref: pb.InvocationRef) -> pb.OutputResponse:
        stored = await self._scripts.result_of(self.partition, ref.invocation_id)
        if stored is None:
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_FOUND)
        if stored.status is not Status.COMPLETED:
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_READY)
        return pb.OutputResponse(status=pb.OUTPUT_STATUS_READY, result=_stored_result(stored))

    async def notify(self, n: pb.Notification) -> pb.DeliverResponse:
        """Apply a notification from another partition's outbox (or an awakeable completion); a
        cancel signal is the `cancel` command."""
        if n.key == STATE_EDIT_NOTE_KEY:
            return await self._edit_state(pb.StateEdit.FromString(n.frame))
        if n.key in (ATTACH_NOTE_KEY, OUTPUT_NOTE_KEY):
            return await self._attach_from_handler(n)
        if n.key == CANCEL_NOTE_KEY:
            managed = await self._cancel(n.invocation_id)
            gone = managed.outcome in (ManageOutcome.NOT_FOUND, ManageOutcome.COMPLETED)
            return pb.DeliverResponse(status=pb.DELIVER_STATUS_GONE if gone else pb.DELIVER_STATUS_APPLIED)
        notified = await self._transition(n.invocation_id, self._scripts.notify(
            self.partition, n.invocation_id, self.token, n.key, n.frame))
        self.wake(notified)
        if notified.outcome is NotifyOutcome.APPLIED:
            self._poke_live(n.invocation_id, (notified.journal_len - 1, n.frame))
        if notified.outcome is NotifyOutcome.DUP and n.invocation_id not in self._drivers:
            self.outcome_unknown(n.invocation_id)  # the wake-up of the first delivery may have been lost
        return pb.DeliverResponse(status=_DELIVER_STATUS.get(notified.outcome, pb.DELIVER_STATUS_APPLIED))

    async def _attach_from_handler(self, n: pb.Notification) -> pb.DeliverResponse:
        """A handler's attach / get-output to `n.invocation_id` (here): answered through the
        outbox (at once, or at the target's END for an attach to a running one)."""
        try:
            caller_id, caller_partition, cid = decode_attach_caller(n.frame)
        except ValueError:
            log.warning("malformed attach request for %s dropped", n.invocation_id)
            return pb.DeliverResponse(status=pb.DELIVER_STATUS_GONE)
        outcome = await self._scripts.attach(self.partition, n.invocation_id, self.token, caller_id,
                                             caller_partition, cid, n.key == OUTPUT_NOTE_KEY)
        self.poke(False, outcome is AttachOutcome.ANSWERED)
        return pb.DeliverResponse(status=pb.DELIVER_STATUS_APPLIED)

    async def _edit_state(self, edit: pb.StateEdit) -> pb.DeliverResponse:
        """Replace an object key's state (admin `POST /services/{svc}/state`), queued behind its
        lock while an invocation holds it. An edit carrying a version that is not the current
        state's is dropped, as Restate drops it (the admin caller was answered 202 either way)."""
        t = Target(self.partition, "", edit.service, edit.key, edit.scope if edit.HasField("scope") else None)
        new_state = {e.key: e.value for e in edit.entries}
        for _ in range(STATE_EDIT_ATTEMPTS):
            checked = None
            if edit.HasField("version"):
                checked = await self._scripts.object_state(t)
                if state_version(checked) != edit.version:
                    log.info("state edit of %s/%s dropped: stale version %s", edit.service, edit.key, edit.version)
                    break
            # WRONG_STATE: the state changed between the read and the edit; check the version again
            if await self._scripts.state_edit(t, self.token, checked, new_state) is not ManageOutcome.WRONG_STATE:
                break
        return pb.DeliverResponse(status=pb.DELIVER_STATUS_APPLIED)

    async def _wait(self, inv_id: str, waiter: asyncio.Future[pb.Result]) -> pb.Result:
        try:
            return await waiter
        finally:
            self.waiters.drop(inv_id, waiter)

    # ---- lifecycle commands ------------------------------------------------------------------
    async def manage(self, req: pb.ManageRequest) -> pb.ManageResponse:
        """Apply one lifecycle command as one fenced transition, then what follows it here."""
        if req.command == pb.MANAGE_COMMAND_RESTART_AS_NEW:
            return await self._restart_as_new(req)
        commands: dict[int, Callable[[str], Awaitable[Managed]]] = {
            pb.MANAGE_COMMAND_CANCEL: self._cancel, pb.MANAGE_COMMAND_KILL: self._kill,
            pb.MANAGE_COMMAND_PURGE: self._purge, pb.MANAGE_COMMAND_PURGE_JOURNAL: self._purge_journal,
            pb.MANAGE_COMMAND_PAUSE: self._pause,
            pb.MANAGE_COMMAND_RESUME: lambda inv_id: self._resume_command(inv_id, req.deployment_id),
        }
        managed = await commands[req.command](req.invocation_id)
        found = managed.status.value if managed.status is not None else ""
        return pb.ManageResponse(status=_MANAGE_STATUS[managed.outcome], invocation_status=found)

    def _stop_driver(self, inv_id: str) -> None:
        """Stop the attempt in flight for `inv_id` here (its effects were never stored). Until the
        task really ended, nothing starts the invocation again here (`_reap`)."""
        self._rewake.discard(inv_id)
        task = self._drivers.pop(inv_id, None)
        if task is not None:
            task.cancel()
            self._stopping[inv_id] = task
            self._spawn(self._reap(inv_id, task))

    async def _reap(self, inv_id: str, task: asyncio.Task[None]) -> None:
        """Cancel a stopped driver until it ended (a lost cancellation would leave a zombie that
        could still store its attempt beside a new run), then resume what asked for it meanwhile."""
        try:
            await cancel_and_wait([task])
        finally:
            if self._stopping.get(inv_id) is task:
                del self._stopping[inv_id]
        if inv_id in self._resume_after_stop:
            self._resume_after_stop.discard(inv_id)
            self.resume(inv_id)

    async def _kill(self, inv_id: str) -> Managed:
        t = await self._scripts.target_of(self.partition, inv_id)
        if t is None:
            return Managed(ManageOutcome.NOT_FOUND)
        killed = await self._transition(inv_id, self._scripts.kill(t, self.token, self._clock.now_ms()))
        if killed.outcome is not ManageOutcome.DONE:
            return killed
        INVOCATIONS.labels("killed").inc()
        self._stop_driver(inv_id)
        self.resolve(inv_id, rpc_result(KILLED))
        self.poke(True, killed.parents_notified > 0)  # timers: a freed concurrency slot's next starts
        if killed.next_id and killed.next_record is not None:
            nt = Target.of(self.partition, killed.next_id, killed.next_record)
            self.start(Run(nt, self.token, killed.next_record, killed.next_state, []))
        for started in killed.started:
            self.resume(started)
        return killed

    async def _cancel(self, inv_id: str) -> Managed:
        t = await self._scripts.target_of(self.partition, inv_id)
        if t is None:
            return Managed(ManageOutcome.NOT_FOUND)
        cancelled = await self._transition(inv_id, self._scripts.cancel(t, self.token))
        if cancelled.outcome is ManageOutcome.DONE:
            INVOCATIONS.labels("cancelled").inc()
            self.resolve(inv_id, rpc_result(CANCELLED))
            self.poke(True, cancelled.parents_notified > 0)  # timers: a freed concurrency slot's next starts
        elif cancelled.outcome is ManageOutcome.APPENDED and cancelled.woken:
            self._spawn(self._resume_one(inv_id, target=t))
        elif cancelled.outcome is ManageOutcome.APPENDED:
            self._poke_live(inv_id)
        return cancelled

    async def _purge(self, inv_id: str, journal_only: bool = False) -> Managed:
        t = await self._scripts.target_of(self.partition, inv_id)
        if t is None:
            return Managed(ManageOutcome.NOT_FOUND)
        return await self._transition(inv_id, self._scripts.purge(t, self.token, journal_only))

    async def _purge_journal(self, inv_id: str) -> Managed:
        return await self._purge(inv_id, journal_only=True)

    async def _pause(self, inv_id: str) -> Managed:
        paused = await self._transition(inv_id, self._scripts.pause(self.partition, inv_id, self.token))
        if paused.outcome is ManageOutcome.DONE:
            INVOCATIONS.labels("paused").inc()
            self._stop_driver(inv_id)
        return paused

    async def _restart_as_new(self, req: pb.ManageRequest) -> pb.ManageResponse:
        """Restart a completed invocation from its journal prefix (`req.restart_from`) as
        `req.new_invocation_id` here (same partition key), pinned as asked (Restate's
        restart-as-new): the new one is scheduled with its start timer due now."""
        original, journal = await self._scripts.restart_source(self.partition, req.invocation_id)
        found = "" if original is None else original.status.value
        refused = restart.refusal(original, journal)
        if refused is not None:
            return pb.ManageResponse(status=refused, invocation_status=found)
        assert original is not None
        prefix = restart.plan_prefix(journal, req.restart_from, original.pinned_protocol_version)
        if isinstance(prefix, restart.PrefixError):
            return pb.ManageResponse(status=restart.PREFIX_STATUS[prefix], invocation_status=found)
        now = self._clock.now_ms()
        record = restart.restarted(original, prefix, req, now)
        new_id = req.new_invocation_id
        created = await self._transition(new_id, self._scripts.restart(
            self.partition, req.invocation_id, self.token, now, len(journal), record, new_id, prefix.entries,
            prefix.notes))
        if created is restart.RestartOutcome.GONE:  # purged since it was read
            return pb.ManageResponse(status=pb.MANAGE_STATUS_MISSING_INPUT, invocation_status=found)
        self.poke(timers=True, outbox=False)
        return pb.ManageResponse(status=pb.MANAGE_STATUS_DONE, invocation_status=found, new_invocation_id=new_id)

    async def _resume_command(self, inv_id: str, deployment_id: str = "") -> Managed:
        resumed = await self._transition(inv_id, self._scripts.resume(self.partition, inv_id, self.token,
                                                                      deployment_id))
        if resumed.woken:
            self._spawn(self._resume_one(inv_id))
        return resumed
