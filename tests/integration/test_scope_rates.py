"""Rate limits of scoped invocations in the partition Lua transitions, against a real Redis, on a
clock the test moves (every transition gets its `now` from it, as the worker passes its injected
clock): a token bucket per rule bucket, exact to the millisecond; a queue waiting for its next
token is woken by a durable start timer (what the timer loop fires is replayed here as the loop
would); `on_limit: reject` refuses without storing anything; rate and concurrency together; a
newcomer never overtakes a waiting queue; the wake-up survives the cancel of the invocation that
carried it; a rule change adds or removes a rate of a bucket in use. Last, a real partition leader
(its timer loop, rule book and transitions) on a `ManualClock`: admissions follow the clock the
test moves, never real time; its flow-control gauges are read after a scoped accept and, while
the partition has no bucket, only every VQUEUE_IDLE_PERIODS."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.driver import Run
from partition.invocation import HandlerKind, InvocationRecord, Result, Status
from partition.invoker import Invoker
from partition.leader import VQUEUE_GAUGES_S, VQUEUE_IDLE_PERIODS
from partition.metrics import VQUEUE_GAUGES
from partition.scripts import Accepted, Scripts, Target
from partition.service import PartitionService
from partition.transition import AcceptOutcome, ApplyOutcome, End, ManageOutcome, StartOutcome
from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate.clock import ManualClock
from shardgate.limits import RULES_KEY, VERSION_FIELD, Limits, Rule, rule_field
from shardgate.schema import SchemaSnapshot
from shardgate.sharding import idempotent_invocation_id
from tests.clusters import poll

P = 6
SCOPE = "rated"
T0_MS = 1_800_000_000_000
MAX_STEPS = 10_000


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


async def _lease(scripts: Scripts) -> str:
    tok = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                      args=["w1", 60_000, "127.0.0.1:1"])
    assert isinstance(tok, bytes)
    return tok.decode()


def _t(name: str) -> Target:
    return Target(P, str(idempotent_invocation_id("Gate", None, "work", name, SCOPE)), "Gate", None, SCOPE)


def _record(t: Target, now_ms: int, limit_key: str | None = None) -> InvocationRecord:
    return InvocationRecord(status=Status.INVOKED, service=t.service, handler="work", kind=HandlerKind.SERVICE,
                            key=None, input_frame=b"input", last_growth_ms=now_ms, scope=SCOPE,
                            limit_key=limit_key, vqueue=SCOPE)


def _admission(**limits: Any) -> str:
    return Limits.parse(limits).admission()


class Partition:
    """The transitions of one partition, with the time the test sets and the starts it saw."""

    def __init__(self, scripts: Scripts, redis: Redis, token: str) -> None:
        self.scripts, self.redis, self.token = scripts, redis, token
        self.now_ms = T0_MS
        self.started: dict[str, int] = {}  # id -> when it started

    async def accept(self, t: Target, admission: str, refusable: bool = False, lk: str | None = None) -> Accepted:
        acc = await self.scripts.accept(t, self.token, _record(t, self.now_ms, lk), admission, self.now_ms, refusable)
        if acc.outcome is AcceptOutcome.INVOKED:
            self.started[t.invocation_id] = self.now_ms
        return acc

    async def due(self) -> list[str]:
        raw = await self.redis.zrangebyscore(keys.timers(P), "-inf", self.now_ms)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]

    async def fire_due(self, targets: dict[str, Target]) -> None:
        """Fire every due timer as the timer loop does (attempt_start with the member), until
        nothing is due now."""
        for _ in range(MAX_STEPS):
            due = await self.due()
            if not due:
                return
            for member in due:
                t = targets[keys.parse_timer_member(member).invocation_id]
                started = await self.scripts.attempt_start(t, self.token, member, self.now_ms)
                if started.outcome is StartOutcome.INVOKED:
                    assert t.invocation_id not in self.started, "started twice"
                    self.started[t.invocation_id] = self.now_ms
        raise AssertionError("timers kept firing at one instant")

    async def next_due_ms(self) -> int | None:
        first = await self.redis.zrange(keys.timers(P), 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def run_until_idle(self, targets: dict[str, Target]) -> None:
        """Move the clock from one due timer to the next until no timer is left."""
        for _ in range(MAX_STEPS):
            await self.fire_due(targets)
            nxt = await self.next_due_ms()
            if nxt is None:
                return
            assert nxt > self.now_ms
            self.now_ms = nxt
        raise AssertionError("the queue never drained")

    async def end(self, t: Target) -> list[str]:
        applied = await self.scripts.apply(t, self.token, self.now_ms, 0, End(Result(0, "", b"ok")), 0, [])
        assert applied.outcome is ApplyOutcome.COMPLETED
        return applied.woken


@pytest.fixture
async def part(scripts: Scripts, redis: Redis) -> Partition:
    return Partition(scripts, redis, await _lease(scripts))


def _max_in_window(starts_ms: list[int], window_ms: int = 1000) -> int:
    """The most starts in any closed window [s, s + window_ms] (s ranging over the starts)."""
    starts_ms = sorted(starts_ms)
    return max(sum(1 for x in starts_ms if s <= x <= s + window_ms) for s in starts_ms)


async def test_20_per_second_with_burst_5_never_starts_more_than_25_in_a_second(part: Partition) -> None:
    adm = _admission(rate="20/s", burst=5)
    ts = {t.invocation_id: t for t in (_t(f"i{n}") for n in range(120))}
    outcomes = [(await part.accept(t, adm)).outcome for t in ts.values()]
    assert outcomes == [AcceptOutcome.INVOKED] * 5 + [AcceptOutcome.INBOXED] * 115
    # the queue's wake-up: the start timer of the id it serves next, due with the next token (50 ms)
    head = list(ts)[5]
    assert await part.redis.zscore(keys.timers(P), "s|" + head) == T0_MS + 50
    await part.run_until_idle(ts)
    assert set(part.started) == set(ts)
    starts = sorted(part.started.values())
    assert _max_in_window(starts) == 25  # burst + rate x 1 s, and never more
    assert starts[-1] == T0_MS + (120 - 5) * 50  # and no slower than the rate
    order = sorted(part.started, key=lambda i: (part.started[i], list(ts).index(i)))
    assert order == list(ts)  # FIFO


async def test_an_idle_bucket_refills_to_its_burst_only(part: Partition) -> None:
    adm = _admission(rate="10/s", burst=3)
    first = [_t(f"a{n}") for n in range(3)]
    for t in first:
        assert (await part.accept(t, adm)).outcome is AcceptOutcome.INVOKED
    part.now_ms += 60_000  # a minute idle: the bucket holds 3 tokens again, not 600
    later = [_t(f"b{n}") for n in range(5)]
    outcomes = [(await part.accept(t, adm)).outcome for t in later]
    assert outcomes == [AcceptOutcome.INVOKED] * 3 + [AcceptOutcome.INBOXED] * 2


async def test_reject_answers_with_the_time_to_the_next_token_and_stores_nothing(part: Partition) -> None:
    adm = _admission(rate="1/s", burst=2, on_limit="reject")
    a, b, c = _t("a"), _t("b"), _t("c")
    assert (await part.accept(a, adm, refusable=True)).outcome is AcceptOutcome.INVOKED
    part.now_ms += 300
    assert (await part.accept(b, adm, refusable=True)).outcome is AcceptOutcome.INVOKED
    refused = await part.accept(c, adm, refusable=True)
    assert (refused.outcome, refused.retry_after_ms) == (AcceptOutcome.REJECTED, 700)
    assert not await part.redis.exists(keys.invocation(P, c.invocation_id))
    assert await part.due() == [] and await part.next_due_ms() is None
    part.now_ms += 700
    assert (await part.accept(c, adm, refusable=True)).outcome is AcceptOutcome.INVOKED
    # without `refusable` (an invocation from a handler's outbox) it waits instead
    d = _t("d")
    assert (await part.accept(d, adm)).outcome is AcceptOutcome.INBOXED


async def test_reject_on_a_full_concurrency_limit(part: Partition) -> None:
    adm = _admission(concurrency=1, on_limit="reject")
    a, b = _t("a"), _t("b")
    assert (await part.accept(a, adm, refusable=True)).outcome is AcceptOutcome.INVOKED
    refused = await part.accept(b, adm, refusable=True)
    assert (refused.outcome, refused.retry_after_ms) == (AcceptOutcome.REJECTED, 1000)
    await part.end(a)
    assert (await part.accept(b, adm, refusable=True)).outcome is AcceptOutcome.INVOKED


async def test_rate_and_concurrency_together(part: Partition) -> None:
    adm = _admission(concurrency=2, rate="10/s", burst=10)
    ts = {t.invocation_id: t for t in (_t(f"i{n}") for n in range(6))}
    outcomes = [(await part.accept(t, adm)).outcome for t in ts.values()]
    assert outcomes == [AcceptOutcome.INVOKED] * 2 + [AcceptOutcome.INBOXED] * 4
    assert await part.next_due_ms() is None  # waiting for a slot, not a token: no wake-up
    ids = list(ts)
    assert await part.end(ts[ids[0]]) == [ids[2]]  # a slot and a token: admitted at once
    await part.fire_due(ts)
    assert ids[2] in part.started


async def test_a_newcomer_waits_behind_a_queue_that_waits_for_a_token(part: Partition) -> None:
    adm = _admission(rate="1/s", burst=1)
    a, b, c = _t("a"), _t("b"), _t("c")
    ts = {t.invocation_id: t for t in (a, b, c)}
    assert (await part.accept(a, adm)).outcome is AcceptOutcome.INVOKED
    assert (await part.accept(b, adm)).outcome is AcceptOutcome.INBOXED
    part.now_ms += 1000  # b's token is due now, but its wake-up has not fired yet
    assert (await part.accept(c, adm)).outcome is AcceptOutcome.INBOXED
    await part.run_until_idle(ts)
    assert part.started[b.invocation_id] == T0_MS + 1000
    assert part.started[c.invocation_id] == T0_MS + 2000


async def test_cancelling_the_invocation_that_carries_the_wake_up_arms_the_next(part: Partition,
                                                                               scripts: Scripts) -> None:
    adm = _admission(rate="1/s", burst=1)
    a, b, c = _t("a"), _t("b"), _t("c")
    for t in (a, b, c):
        await part.accept(t, adm)
    assert await part.redis.zscore(keys.timers(P), "s|" + b.invocation_id) == T0_MS + 1000
    cancelled = await scripts.cancel(b, part.token)
    assert cancelled.outcome is ManageOutcome.DONE
    assert await part.redis.zscore(keys.timers(P), "s|" + b.invocation_id) is None
    assert await part.redis.zscore(keys.timers(P), "s|" + c.invocation_id) == T0_MS + 1000
    await part.run_until_idle({t.invocation_id: t for t in (a, c)})
    assert part.started[c.invocation_id] == T0_MS + 1000
    assert b.invocation_id not in part.started


async def test_a_wake_up_that_did_not_reach_attempt_start_is_kept_by_settle(part: Partition,
                                                                          scripts: Scripts) -> None:
    """The leader settles a fired member whose resume failed before `attempt_start` (a Redis
    timeout): the wake-up of a rate queue is pushed back, never dropped, or the queue stalls."""
    adm = _admission(rate="1/s", burst=1)
    a, b = _t("a"), _t("b")
    await part.accept(a, adm)
    await part.accept(b, adm)
    member = "s|" + b.invocation_id
    assert await part.redis.zscore(keys.timers(P), member) == T0_MS + 1000
    part.now_ms += 1000
    kept = await scripts.settle(P, b.invocation_id, part.token, member, part.now_ms + 1000)
    assert kept.value == "KEPT"
    assert await part.redis.zscore(keys.timers(P), member) == T0_MS + 2000
    part.now_ms += 1000
    await part.run_until_idle({t.invocation_id: t for t in (a, b)})
    assert part.started[b.invocation_id] == T0_MS + 2000


async def test_a_rule_change_adds_and_removes_the_rate_of_a_bucket_in_use(part: Partition,
                                                                         scripts: Scripts) -> None:
    ts = {t.invocation_id: t for t in (_t(f"i{n}") for n in range(8))}
    ids = list(ts)
    assert (await part.accept(ts[ids[0]], _admission(concurrency=1))).outcome is AcceptOutcome.INVOKED
    for i in ids[1:]:
        assert (await part.accept(ts[i], _admission(concurrency=1))).outcome is AcceptOutcome.INBOXED
    # the rule becomes "2/s, burst 1, no concurrency cap": the queue drains at the rate
    admitted = await scripts.scope_limits(P, part.token, part.now_ms, [(SCOPE, _admission(rate="2/s"))])
    assert admitted == [ids[1]]
    await part.fire_due(ts)
    assert await part.next_due_ms() == T0_MS + 500
    part.now_ms += 500
    await part.fire_due(ts)
    assert part.started[ids[2]] == T0_MS + 500
    # the rule is removed: what waits starts at once
    admitted = await scripts.scope_limits(P, part.token, part.now_ms, [(SCOPE, str(1 << 30))])
    await part.fire_due(ts)
    assert set(part.started) == set(ts)


async def test_a_leader_admits_at_the_rate_of_its_injected_clock(scripts: Scripts, redis: Redis) -> None:
    """60 sends under `20/s, burst 5` through a real leader: 5 start at once, then one per 50 ms of
    the manual clock, each woken by the leader's own timer loop; the clock never moves by itself,
    so a start that happened without the clock's permission would break the exact counts."""
    rule = Rule(SCOPE, Limits.parse({"rate": "20/s", "burst": 5}))
    await redis.hset(RULES_KEY, mapping={rule_field(SCOPE): json.dumps(rule.to_json()), VERSION_FIELD: 1})
    clock = ManualClock(T0_MS)
    service = PartitionService(redis, scripts, Invoker(connect_timeout_s=1.0), SchemaSnapshot.empty, 8, 4,
                               clock=clock)
    leader = service.new_leader(P, await _lease(scripts))
    started: dict[str, int] = {}
    parked = asyncio.get_running_loop().create_future()

    def record(run: Run) -> None:  # instead of an attempt against a deployment: note when it began
        started.setdefault(run.target.invocation_id, clock.now_ms())
        leader._drivers[run.target.invocation_id] = asyncio.ensure_future(parked)

    leader.start = record  # type: ignore[method-assign]
    leader.open()
    try:
        for n in range(60):
            t = _t(f"L{n}")
            req = spb.InvokeRequest(partition=P, invocation_id=t.invocation_id, service="Gate", handler="work",
                                    kind=spb.HANDLER_KIND_SERVICE, body=b"{}", scope=SCOPE)
            await leader.invoke(req)
        assert len(started) == 5
        for step in range(1, 56):
            clock.advance(50)

            async def admitted(n: int = 5 + step) -> bool | None:
                return True if len(started) >= n else None

            await poll(f"start number {5 + step}", 5.0, admitted, interval_s=0.002)
            assert len(started) == 5 + step, "more than one token in 50 ms"
        starts = sorted(started.values())
        assert starts == [T0_MS] * 5 + [T0_MS + 50 * k for k in range(1, 56)]
        assert _max_in_window(starts) == 25
    finally:
        leader.close()
        await leader.wait_closed()


async def test_the_gauges_are_read_after_a_scoped_accept_and_seldom_without_buckets(scripts: Scripts,
                                                                                    redis: Redis) -> None:
    rule = Rule(SCOPE, Limits.parse({"concurrency": 2}))
    await redis.hset(RULES_KEY, mapping={rule_field(SCOPE): json.dumps(rule.to_json()), VERSION_FIELD: 1})
    clock = ManualClock(T0_MS)
    service = PartitionService(redis, scripts, Invoker(connect_timeout_s=1.0), SchemaSnapshot.empty, 8, 4,
                               clock=clock)
    leader = service.new_leader(P, await _lease(scripts))
    reads: list[int] = []
    views = scripts.vqueue_views

    async def counted(partition: int, now_ms: int) -> Any:
        reads.append(now_ms)
        return await views(partition, now_ms)

    scripts.vqueue_views = counted  # type: ignore[method-assign]
    parked = asyncio.get_running_loop().create_future()

    def record(run: Run) -> None:  # instead of an attempt against a deployment: hold the slot
        leader._drivers[run.target.invocation_id] = asyncio.ensure_future(parked)

    leader.start = record  # type: ignore[method-assign]
    period_ms = int(VQUEUE_GAUGES_S * 1000)

    async def reads_at_least(n: int) -> bool | None:
        return True if len(reads) >= n else None

    leader.open()
    try:
        await poll("the first gauge read", 5.0, lambda: reads_at_least(1), interval_s=0.002)
        for _ in range(VQUEUE_IDLE_PERIODS // 2):  # no bucket, no scoped accept: no read (far from the backstop)
            clock.advance(period_ms)
            await asyncio.sleep(0.01)
        assert len(reads) == 1
        req = spb.InvokeRequest(partition=P, invocation_id=_t("G1").invocation_id, service="Gate", handler="work",
                                kind=spb.HANDLER_KIND_SERVICE, body=b"{}", scope=SCOPE)
        await leader.invoke(req)
        clock.advance(period_ms)
        await poll("the read after a scoped accept", 5.0, lambda: reads_at_least(2), interval_s=0.002)

        async def running() -> bool | None:
            got = VQUEUE_GAUGES._views.get(P, ())
            return True if any(v.bucket == SCOPE and v.running == 1 for _, v in got) else None

        await poll("the bucket in the gauges", 5.0, running, interval_s=0.002)
        clock.advance(period_ms)  # a bucket in use: read every period
        await poll("the next read", 5.0, lambda: reads_at_least(3), interval_s=0.002)
    finally:
        leader.close()
        await leader.wait_closed()
