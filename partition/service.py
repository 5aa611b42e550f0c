"""The worker's partition RPCs: each is answered by the leader of the addressed partition.

A worker holds one `PartitionLeader` (`leader.py`) per partition it owns: `on_acquired` creates
and opens it, `on_lost` closes it. An RPC for a partition without a leader here answers
NOT_LEADER, and the ingress re-routes. Outbox messages go to the local leader of their
partition when there is one, else over gRPC to its owner (`delivery.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from partition.driver import Driver, LeaseCheck
from partition.errors import NotLeader, WorkerBusy
from partition.invoker import Invoker
from partition.leader import PartitionLeader
from partition.metrics import INVOCATIONS
from partition.schedules import ScheduleChanges
from partition.scripts import Scripts
from partition.transition import AcceptOutcome
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.limits import RULES_KEY, VERSION_FIELD, RuleBook, book_from_hash
from shardgate.schema import SchemaSnapshot
from shardgate.tasks import cancel_and_wait

SHUTDOWN_WAIT_S = 5.0
"""How long a stop waits for the closed leaders' tasks before it goes on without them."""
RULES_POLL_S = 0.25
"""How often the flow-control rule book's version is checked (a change is in force within a second)."""

log = logging.getLogger(__name__)

RemoteDeliver = Callable[[pb.OutboxMessage, int], Awaitable[None]]


class RuleBookCache:
    """The flow-control rule book of this worker: loaded at the first `current()`, then kept fresh
    by `run()` polling the stored version every `RULES_POLL_S` (one HGET; HGETALL on a change)."""

    def __init__(self, redis: Redis, clock: Clock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._clock = clock
        self._book: RuleBook | None = None
        self._loading: asyncio.Lock = asyncio.Lock()
        self.on_change: list[Callable[[RuleBook], None]] = []  # called with each new book after the first

    async def current(self) -> RuleBook:
        """The rule book; the first call reads it from Redis. Raises RedisError on that read."""
        if self._book is not None:
            return self._book
        async with self._loading:
            if self._book is None:
                self._book = book_from_hash(await self._redis.hgetall(RULES_KEY))
        return self._book

    async def refresh(self) -> None:
        """Re-read the rule book when its stored version changed. Raises RedisError."""
        raw = await self._redis.hget(RULES_KEY, VERSION_FIELD)
        version = int(raw) if raw else 0
        if self._book is None or self._book.version != version:
            first = self._book is None
            self._book = book_from_hash(await self._redis.hgetall(RULES_KEY))
            if not first:
                for listener in self.on_change:
                    listener(self._book)

    async def run(self, interval_s: float = RULES_POLL_S) -> None:
        """Poll until cancelled; a Redis failure keeps the last book and tries again."""
        while True:
            try:
                await self.refresh()
            except Exception as e:  # noqa: BLE001  Redis unavailable: keep the last rule book
                log.warning("cannot refresh the flow-control rules (%s)", type(e).__name__)
            await self._clock.sleep(interval_s)


class PartitionService:
    """One per worker process; partitions come and go through `on_acquired` / `on_lost`."""

    def __init__(self, redis: Redis, scripts: Scripts, invoker: Invoker, schema: Callable[[], SchemaSnapshot],
                 partitions: int, max_concurrent: int, remote_deliver: RemoteDeliver | None = None,
                 clock: Clock = SYSTEM_CLOCK, *, ready: int = 1000, max_backlog: int = 10_000) -> None:
        self._redis = redis
        self._scripts = scripts
        self._remote_deliver = remote_deliver
        self._clock = clock
        self._driver = Driver(scripts, invoker, schema, partitions, max_concurrent, clock, ready=ready,
                              max_backlog=max_backlog)
        self._leaders: dict[int, PartitionLeader] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.rules = RuleBookCache(redis, clock)
        self.rules.on_change.append(self._limits_changed)
        self._polls: list[asyncio.Task[None]] = []  # the rule book's and the schedule counter's
        self._schedule_changes = ScheduleChanges(redis, self._poke_schedules, clock)

    # ---- ownership callbacks -----------------------------------------------------------------
    def stream_attempts(self, mode: str) -> None:
        """Which attempts are bidirectional where the deployment streams (`PartitionConfig.bidi`)."""
        self._driver.bidi = mode

    def check_leases(self, leases: LeaseCheck) -> None:
        """Send no attempt to a deployment on a partition whose lease ran out by this worker's
        clock (`Ownership.lease_valid`) until a renewal confirms it, e.g. right after a freeze."""
        self._driver.leases = leases

    def new_leader(self, partition: int, token: str) -> PartitionLeader:
        """A leader for `partition` under `token`, not opened (tests drive its parts directly)."""
        return PartitionLeader(partition, token, redis=self._redis, scripts=self._scripts, driver=self._driver,
                               clock=self._clock, deliver=self._deliver_from_outbox, rules=self.rules.current)

    def on_acquired(self, partition: int, token: str) -> None:
        if not self._polls:  # the first partition: keep the rule book fresh, watch the schedules
            loop = asyncio.get_running_loop()
            self._polls = [loop.create_task(self.rules.run()), loop.create_task(self._schedule_changes.run())]
        old = self._leaders.pop(partition, None)
        if old is not None:
            self._close(old)
        leader = self._leaders[partition] = self.new_leader(partition, token)
        leader.open()

    def _poke_schedules(self) -> None:
        for leader in self._leaders.values():
            leader.poke_schedules()

    def _limits_changed(self, book: RuleBook) -> None:
        for leader in self._leaders.values():
            leader.limits_changed(book)

    def on_lost(self, partition: int) -> None:
        leader = self._leaders.pop(partition, None)
        if leader is not None:
            self._close(leader)
        self._driver.unhold(partition)  # its drivers are cancelled: a later leader starts afresh

    def _close(self, leader: PartitionLeader) -> None:
        leader.close()
        task = asyncio.get_running_loop().create_task(leader.wait_closed())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def leader(self, partition: int) -> PartitionLeader:
        """The leader of `partition` here. Raises NotLeader."""
        leader = self._leaders.get(partition)
        if leader is None:
            raise NotLeader(partition)
        return leader

    # ---- RPCs --------------------------------------------------------------------------------
    @property
    def driver(self) -> Driver:
        """The worker's attempt engine (its admission counters are read by tests and metrics)."""
        return self._driver

    async def invoke(self, req: pb.InvokeRequest) -> pb.InvokeResponse:
        """Accept a call or send; a call waits for the result. Raises WorkerBusy for a call while
        the worker is saturated (nothing stored); sends are always accepted into Redis."""
        leader = self.leader(req.partition)
        if req.wait and self._driver.saturated():
            INVOCATIONS.labels("refused").inc()
            raise WorkerBusy()
        return await leader.invoke(req)

    async def attach(self, ref: pb.InvocationRef) -> pb.InvokeResponse:
        """Wait for an invocation's result; NOT_FOUND if it does not exist."""
        return await self.leader(ref.partition).attach(ref)

    async def get_output(self, ref: pb.InvocationRef) -> pb.OutputResponse:
        return await self.leader(ref.partition).get_output(ref)

    async def manage(self, req: pb.ManageRequest) -> pb.ManageResponse:
        """Apply a lifecycle command (cancel, kill, purge, pause, resume) to an invocation."""
        return await self.leader(req.partition).manage(req)

    async def deliver(self, msg: pb.OutboxMessage) -> pb.DeliverResponse:
        """Apply a message from another partition's outbox (or an awakeable completion)."""
        if msg.HasField("invoke"):
            acc = await self.leader(msg.invoke.partition).accept(msg.invoke)
            dup = acc.outcome is AcceptOutcome.DUP
            return pb.DeliverResponse(status=pb.DELIVER_STATUS_DUPLICATE if dup else pb.DELIVER_STATUS_APPLIED)
        return await self.leader(msg.notify.partition).notify(msg.notify)

    async def _deliver_from_outbox(self, msg: pb.OutboxMessage) -> None:
        p = msg.invoke.partition if msg.HasField("invoke") else msg.notify.partition
        if p in self._leaders:
            await self.deliver(msg)
        elif self._remote_deliver is not None:
            await self._remote_deliver(msg, p)
        else:
            raise NotLeader(p)

    def hold(self, partition: int) -> None:
        """Start no new attempt of `partition` here: it is being handed to another worker."""
        self._driver.hold(partition)

    def quiesce(self) -> None:
        """Graceful stop: start no new attempt (the running ones go on to their transition)."""
        self._driver.quiesce()

    async def wait_idle(self, partition: int, grace_s: float) -> bool:
        """Wait up to `grace_s` until no attempt of `partition` runs here; True when none does."""
        return await self._driver.wait_idle(partition, grace_s)

    async def shutdown(self) -> None:
        """Stop every leader (their attempts are replayed by the partitions' next owners)."""
        for p in list(self._leaders):
            self.on_lost(p)
        if self._polls:  # bounded: a lost cancellation is cancelled again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel_and_wait(self._polls), SHUTDOWN_WAIT_S)
        if self._closing:
            _, stuck = await asyncio.wait(list(self._closing), timeout=SHUTDOWN_WAIT_S)
            if stuck:  # a task ignores its cancellation: name every running task, do not hang the stop
                current = asyncio.current_task()
                running = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
                log.error("leaders did not stop within %.0fs; running tasks: %s", SHUTDOWN_WAIT_S,
                          "; ".join(f"{t.get_coro()!r} at {_where(t)}" for t in running))


def _where(task: asyncio.Task[object]) -> str:
    """Where a task is suspended: file:line of its innermost frames."""
    return " <- ".join(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}" for f in task.get_stack(limit=6))
