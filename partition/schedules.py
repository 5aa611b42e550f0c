"""The schedule loop of one owned partition: fires due schedule ticks as idempotent sends.

The partition's `sched-due` sorted set holds each active schedule's next nominal time. The loop
(on the injected clock, like `timers.py`) sleeps until the earliest one is due, or until poked:
the admin API writes from another process, so `ScheduleChanges` (one per worker) polls the
admin's change counter every `POLL_S` and pokes every loop of the worker when it moved; at most
`IDLE_S` without either, the loop looks anyway. Then it handles each due
tick with ONE fenced transition, `schedule_fire.lua`: it checks the fence token, the schedule's
version and that the tick is still the due one, advances the schedule to the next nominal time
(computed here) and queues the tick's send in the partition outbox, the path a handler's
`ctx.send` takes. The send's idempotency key is `<schedule id>@<nominal time>`, so its
invocation id is deterministic and the receiving partition's `accept` dedupes it.

Hence a worker killed while firing leaves the tick due (the new owner fires it) or fired and
queued (the outbox delivers it); two workers that both think they own the partition cannot both
commit (the fence, and the due-time check for the tick itself); a tick is skipped only by the
catch-up rule (`shardgate.schedule.plan_due`), by `overlap: skip` while the previous tick's
invocation still runs, or when its target is no longer registered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from enum import Enum
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from partition import keys
from partition.errors import Fenced
from partition.invocation import Status
from partition.loop import run_wakeable
from partition.metrics import SCHEDULE_LATENESS, SCHEDULE_TICKS
from partition.outbox_codec import encode_outbox_invoke
from partition.scripts import LUA_DIR, Scripts, lua_constants
from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.kinds import HandlerKind
from shardgate.schedule import (
    Overlap,
    ScheduleDefinition,
    ScheduleError,
    TickPlan,
    iso_ms,
    overlap_skip,
    plan_due,
    tick_key,
)
from shardgate.schedule_store import (
    CHANGES_KEY,
    HISTORY_CAP,
    Action,
    StoredSchedule,
    TickRecord,
    due_key,
    history_key,
    lua_fields,
    schedule_key,
)
from shardgate.schema import HandlerType, SchemaSnapshot, ServiceType, effective_settings
from shardgate.sharding import InvocationId, idempotent_invocation_id, partition_of, workflow_invocation_id

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a worker reads the admin's schedule change counter (one GET per worker)
IDLE_S = 5.0  # a partition's loop looks at its due set at least this often, poked or not
BATCH = 256
FIRE_CONCURRENCY = 32
STUCK_RETRY_S = 1.0  # a tick still due after its turn (e.g. an unreadable definition) is looked at again
SCHEDULE_ID_HEADER = "x-shardgate-schedule-id"
SCHEDULE_TICK_HEADER = "x-shardgate-schedule-tick"  # the tick's nominal time, RFC 3339 UTC
SCHEDULE_SCRIPTS = ("schedule_fire",)  # partition/lua files this module composes (not in scripts.COMPOSITION)
_SCOPED = "scope" in spb.InvokeRequest.DESCRIPTOR.fields_by_name  # scopes served by this build


class FireOutcome(str, Enum):
    """Replies of `schedule_fire.lua`."""

    DONE = "DONE"  # fired or skipped as planned, schedule advanced
    STALE = "STALE"  # the version or the due tick changed since planning: plan again
    FENCED = "FENCED"  # the partition's lease is not ours


@functools.cache
def fire_source() -> str:
    """The composed fire script: generated constants, the prelude (fence check), its own file."""
    outcomes = "".join(f"local SFIRE_{o.name} = '{o.value}'\n" for o in FireOutcome)
    return (lua_constants() + lua_fields("SF") + outcomes + (LUA_DIR / "_prelude.lua").read_text()
            + (LUA_DIR / "schedule_fire.lua").read_text())


def tick_request(d: ScheduleDefinition, nominal_ms: int, schema: SchemaSnapshot,
                 partitions: int) -> spb.InvokeRequest | None:
    """The idempotent send of the tick at `nominal_ms`; None when its target is not registered."""
    t = d.target
    meta = schema.services.get(t.service)
    handler = meta.handlers.get(t.handler) if meta is not None else None
    if meta is None or handler is None:
        return None
    key = (t.key or "") if meta.ty.keyed else None
    idem = tick_key(d.schedule_id, nominal_ms)
    scope = t.scope if _SCOPED else None
    inv: InvocationId
    if meta.ty is ServiceType.WORKFLOW and handler.ty is HandlerType.WORKFLOW:
        inv = workflow_invocation_id(t.service, key or "", scope)
    else:
        inv = idempotent_invocation_id(t.service, key, t.handler, idem, scope)
    headers = dict(d.headers)
    if d.body is not None:
        headers.setdefault("content-type", "application/json")
    headers.update({SCHEDULE_ID_HEADER: d.schedule_id, SCHEDULE_TICK_HEADER: iso_ms(nominal_ms)})
    req = spb.InvokeRequest(
        partition=partition_of(inv.partition_key, partitions), invocation_id=str(inv), service=t.service,
        handler=t.handler, body=d.body_bytes(), kind=HandlerKind.of_handler(handler.ty).to_proto(),
        headers=[spb.Header(key=k, value=v) for k, v in sorted(headers.items())], idempotency_key=idem,
        completion_retention_ms=effective_settings(meta, handler).completion_retention_ms)
    if key is not None:
        req.key = key
    _pass_through(req, d)
    return req


def _pass_through(req: spb.InvokeRequest, d: ScheduleDefinition) -> None:
    """Scope and limit key go with the request once the build's InvokeRequest carries them."""
    fields = spb.InvokeRequest.DESCRIPTOR.fields_by_name
    for name, value in (("scope", d.target.scope), ("limit_key", d.target.limit_key)):
        if value is not None and name in fields:
            setattr(req, name, value)


_UNREAD = object()


class ScheduleChanges:
    """Wakes a worker's schedule loops when the admin API changed a schedule: one GET of the
    admin's change counter (`CHANGES_KEY`) every POLL_S for the whole worker, where every
    partition's loop used to poll its own due set."""

    def __init__(self, redis: Redis, wake: Callable[[], None], clock: Clock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._wake = wake
        self._clock = clock
        self._seen: object = _UNREAD  # the counter's value at the last read

    async def check(self) -> bool:
        """Read the counter; wake the loops (and return True) when it moved since the last read,
        or at the first read (a change may have come between a loop's first look and it). Raises
        RedisError."""
        raw = cast("bytes | None", await self._redis.get(CHANGES_KEY))
        moved, self._seen = raw != self._seen, raw
        if moved:
            self._wake()
        return moved

    async def run(self, interval_s: float = POLL_S) -> None:
        """Poll until cancelled; a Redis failure only delays the wake-up (the loops look within IDLE_S)."""
        while True:
            try:
                await self.check()
            except Exception as e:  # noqa: BLE001  Redis unavailable: the next read sees the change
                log.debug("cannot read the schedule change counter (%s)", type(e).__name__)
            await self._clock.sleep(interval_s)


class PartitionSchedules:
    """The schedule loop of one partition under one fence token."""

    def __init__(self, redis: Redis, scripts: Scripts, partition: int, token: str,
                 schema: Callable[[], SchemaSnapshot], partitions: int, poke_outbox: Callable[[], None],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._scripts = scripts
        self._partition = partition
        self._token = token
        self._schema = schema
        self._partitions = partitions
        self._poke_outbox = poke_outbox
        self._clock = clock
        self._fire_script = redis.register_script(fire_source())
        self._wake = asyncio.Event()
        self._concurrency = asyncio.Semaphore(FIRE_CONCURRENCY)

    def poke(self) -> None:
        """Something changed here: look at the due set now."""
        self._wake.set()

    async def run(self) -> None:
        """Fire due ticks until cancelled or fenced."""
        await run_wakeable("schedule loop", self._partition, self.tick, self._wake, self._clock)

    async def tick(self) -> float:
        """Handle every due tick once; return how long to sleep before the next look. Raises
        Fenced when the partition is lost, RedisError when Redis fails."""
        now_ms = self._clock.now_ms()
        due = cast("list[tuple[bytes, float]]", await self._redis.zrangebyscore(
            due_key(self._partition), "-inf", now_ms, start=0, num=BATCH, withscores=True))
        async with self._redis.pipeline(transaction=False) as pipe:
            for m, _ in due:
                pipe.hgetall(schedule_key(self._partition, m.decode()))
            hashes = cast("list[dict[bytes, bytes]]", await pipe.execute()) if due else []
        results = await asyncio.gather(*(self._guarded(m.decode(), int(s), raw)
                                         for (m, s), raw in zip(due, hashes, strict=True)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        fenced = [r for r in failures if isinstance(r, Fenced)]
        if fenced or failures:
            raise (fenced or failures)[0]  # the loop logs it and backs off
        progressed = any(r is True for r in results)
        if len(due) == BATCH or progressed:
            return 0  # more may be due (a catch-up step, a full batch)
        head = cast("list[tuple[bytes, float]]", await self._redis.zrange(due_key(self._partition), 0, 0,
                                                                           withscores=True))
        if not head:
            return IDLE_S
        delay_s = min(IDLE_S, max(0.0, (head[0][1] - self._clock.now_ms()) / 1000))
        return delay_s if delay_s > 0 or not due else STUCK_RETRY_S  # a due tick that did not commit

    async def _guarded(self, schedule_id: str, nominal_ms: int, raw: dict[bytes, bytes]) -> bool:
        async with self._concurrency:
            try:
                return await self.fire(schedule_id, nominal_ms, raw)
            except (asyncio.CancelledError, Fenced):
                raise
            except (RedisError, OSError):
                raise
            except Exception:
                log.exception("schedule %s: tick %s failed", schedule_id, iso_ms(nominal_ms),
                              extra={"partition": self._partition})
                return False

    async def fire(self, schedule_id: str, nominal_ms: int, raw: dict[bytes, bytes] | None = None) -> bool:
        """Plan and commit the due tick at `nominal_ms` (`raw`: the schedule's hash, read here when
        not given); True when the schedule is due again at once (a catch-up step). Raises Fenced,
        RedisError."""
        p = self._partition
        if raw is None:
            raw = cast("dict[bytes, bytes]", await self._redis.hgetall(schedule_key(p, schedule_id)))
        if not raw:
            return False  # deleted between the range read and now (DELETE drops both atomically)
        try:
            stored = StoredSchedule.from_hash(raw, [])
        except (ScheduleError, KeyError, ValueError):
            log.error("schedule %s: stored definition does not parse; not firing", schedule_id,
                      extra={"partition": p})
            return False
        now_ms = self._clock.now_ms()
        plan = plan_due(stored.definition, nominal_ms, now_ms)
        if plan.fire and stored.last_invocation_id and stored.definition.overlap is Overlap.SKIP:
            plan = overlap_skip(stored.definition, plan, await self._running(stored))
        req = tick_request(stored.definition, nominal_ms, self._schema(), self._partitions) if plan.fire else None
        action = self._action(plan, req)
        if action is Action.NO_TARGET:
            plan = TickPlan(nominal_ms, False, 1, plan.next_ms)
        outcome = await self.commit(stored, plan, req, action, now_ms)
        if outcome is FireOutcome.DONE:
            self._count(plan, action, now_ms)
            return plan.next_ms is not None and plan.next_ms <= now_ms
        return outcome is FireOutcome.STALE

    @staticmethod
    def _action(plan: TickPlan, req: spb.InvokeRequest | None) -> Action:
        if plan.fire:
            return Action.FIRED if req is not None else Action.NO_TARGET
        return Action.OVERLAP if plan.overlapped else Action.MISSED

    async def _running(self, stored: StoredSchedule) -> bool:
        """True while the previous tick's invocation exists and has not completed."""
        inv_id = stored.last_invocation_id
        assert inv_id is not None
        p = partition_of(InvocationId.parse(inv_id).partition_key, self._partitions)
        found = await self._scripts.result_of(p, inv_id)
        return found is not None and found.status is not Status.COMPLETED

    async def commit(self, stored: StoredSchedule, plan: TickPlan, req: spb.InvokeRequest | None,
                      action: Action, now_ms: int) -> FireOutcome:
        """Run `schedule_fire.lua` for `plan`, planned from `stored` (its version). Raises Fenced."""
        p, sid = self._partition, stored.definition.schedule_id
        entry = encode_outbox_invoke(req) if req is not None else b""
        inv_id = req.invocation_id if req is not None else ""
        record = TickRecord(plan.nominal_ms, action, now_ms, inv_id or None)
        reply = await self._fire_script(
            keys=[keys.lease(p), schedule_key(p, sid), due_key(p), keys.outbox(p), history_key(p, sid)],
            args=[self._token, sid, stored.version, plan.nominal_ms, "" if plan.next_ms is None else plan.next_ms,
                  entry, inv_id, now_ms, plan.skipped, record.encode(), HISTORY_CAP])
        outcome = FireOutcome(reply.decode() if isinstance(reply, bytes) else str(reply))
        if outcome is FireOutcome.FENCED:
            raise Fenced(p)
        if req is not None and outcome is FireOutcome.DONE:
            self._poke_outbox()
        return outcome

    def _count(self, plan: TickPlan, action: Action, now_ms: int) -> None:
        if plan.fire:
            SCHEDULE_TICKS.labels(Action.FIRED.value).inc()
            SCHEDULE_LATENESS.observe(max(0.0, (now_ms - plan.nominal_ms) / 1000))
        if plan.skipped:
            SCHEDULE_TICKS.labels(action.value).inc(plan.skipped)

