"""The schedule loop (`partition/schedules.py`, `schedule_fire.lua`) against a real Redis on a
manual clock: a due tick becomes one idempotent send in the outbox and the schedule advances;
two leaders of one partition (a stale one and a racing one) never queue a tick twice; a tick
planned before an admin change does not fire; catch-up, overlap, pause / resume, end of a
schedule and an unregistered target; the loop itself sleeps until the next tick; admin writes
bump the change counter that wakes a worker's loops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from partition import keys
from partition.errors import Fenced
from partition.outbox_codec import decode_outbox
from partition.schedules import (
    IDLE_S,
    SCHEDULE_TICK_HEADER,
    FireOutcome,
    PartitionSchedules,
    ScheduleChanges,
    tick_request,
)
from partition.scripts import Scripts
from shardgate.clock import ManualClock
from shardgate.schedule import iso_ms, next_fire, parse_definition, plan_due
from shardgate.schedule_store import (
    Action,
    ScheduleStore,
    StoredSchedule,
    due_key,
    history_key,
    index_key,
    schedule_key,
    sys_schedule_row,
)
from shardgate.schema import HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id
from shardgate.tasks import cancel_and_wait

PARTITIONS = 4
TOKEN = "worker-a|7"
START_MS = 1_800_000_000_000  # a whole second
WAIT_S = 5.0
SCHEMA = SchemaSnapshot(1, {
    "Recorder": ServiceMeta("Recorder", ServiceType.SERVICE, {"tick": HandlerMeta("tick", None)}, "dp_1"),
    "Counter": ServiceMeta("Counter", ServiceType.VIRTUAL_OBJECT,
                           {"add": HandlerMeta("add", HandlerType.EXCLUSIVE)}, "dp_1"),
}, {})


class Env:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.clock = ManualClock(START_MS)
        self.store = ScheduleStore(redis, PARTITIONS)
        self.scripts = Scripts(redis)
        self.pokes = 0

    def loop(self, sid: str, token: str = TOKEN) -> PartitionSchedules:
        return PartitionSchedules(self.redis, self.scripts, self.store.partition(sid), token, lambda: SCHEMA,
                                  PARTITIONS, self._poke, self.clock)

    def _poke(self) -> None:
        self.pokes += 1

    async def put(self, sid: str, paused: bool = False, **body: Any) -> None:
        body.setdefault("target", {"service": "Recorder", "handler": "tick"})
        d = parse_definition(sid, body)
        now = self.clock.now_ms()
        await self.redis.set(keys.lease(self.store.partition(sid)), TOKEN)
        await self.store.put(d, next_fire(d, now), paused, now)

    async def outbox(self, sid: str) -> list[Any]:
        raw = await self.redis.lrange(keys.outbox(self.store.partition(sid)), 0, -1)
        return [decode_outbox(r).invoke for r in raw]

    async def get(self, sid: str) -> StoredSchedule:
        found = await self.store.get(sid)
        assert found is not None
        return found

    async def run_due(self, sid: str) -> None:
        """Tick until nothing more is due now (what the loop does before it sleeps)."""
        loop = self.loop(sid)
        for _ in range(1000):
            if await loop.tick() > 0:
                return
        pytest.fail("the loop never went idle")


@pytest.fixture
def env(redis: Redis) -> Env:
    return Env(redis)


def _tick_times(sends: list[Any]) -> list[str]:
    return [{h.key: h.value for h in s.headers}[SCHEDULE_TICK_HEADER][11:19] for s in sends]


async def test_a_due_tick_is_one_idempotent_send_and_the_schedule_advances(env: Env) -> None:
    await env.put("s1", every="PT1S", body={"n": 1}, headers={"x-a": "b"})
    assert await env.loop("s1").tick() > 0 and await env.outbox("s1") == []  # not due yet
    env.clock.advance(1000)
    await env.run_due("s1")
    [send] = await env.outbox("s1")
    nominal = START_MS + 1000
    assert send.idempotency_key == f"s1@{iso_ms(nominal)}"
    assert send.invocation_id == str(idempotent_invocation_id("Recorder", None, "tick", send.idempotency_key))
    assert (send.service, send.handler, send.body) == ("Recorder", "tick", b'{"n":1}')
    headers = {h.key: h.value for h in send.headers}
    assert headers["x-a"] == "b" and headers["content-type"] == "application/json"
    assert send.completion_retention_ms > 0  # kept, so a re-delivered send is deduplicated
    s = await env.get("s1")
    assert (s.next_ms, s.fired, s.last_invocation_id, s.last_nominal_ms) == (nominal + 1000, 1, send.invocation_id,
                                                                           nominal)
    assert [(t.nominal_ms, t.action) for t in s.history] == [(nominal, Action.FIRED)]
    assert env.pokes == 1


async def test_keyed_targets_carry_their_key(env: Env) -> None:
    await env.put("s1", every="PT1S", target={"service": "Counter", "key": "k1", "handler": "add"})
    env.clock.advance(1000)
    await env.run_due("s1")
    [send] = await env.outbox("s1")
    assert send.key == "k1"
    assert send.invocation_id == str(idempotent_invocation_id("Counter", "k1", "add", send.idempotency_key))


async def test_every_script_key_is_in_the_schedules_slot(env: Env) -> None:
    p = env.store.partition("s1")
    names = [keys.lease(p), schedule_key(p, "s1"), due_key(p), keys.outbox(p), history_key(p, "s1"), index_key(p)]
    assert len({key_slot(n.encode()) for n in names}) == 1


async def test_a_stale_leader_is_fenced_and_writes_nothing(env: Env) -> None:
    await env.put("s1", every="PT1S")
    env.clock.advance(1000)
    with pytest.raises(Fenced):
        await env.loop("s1", token="worker-b|6").tick()
    assert await env.outbox("s1") == []
    assert (await env.get("s1")).next_ms == START_MS + 1000


async def test_two_leaders_racing_for_one_tick_queue_it_once(env: Env) -> None:
    await env.put("s1", every="PT1S")
    env.clock.advance(1000)
    a, b = env.loop("s1"), env.loop("s1")
    await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
    assert _tick_times(await env.outbox("s1")) == [iso_ms(START_MS + 1000)[11:19]]
    assert (await env.get("s1")).fired == 1


async def test_a_tick_planned_before_an_admin_change_does_not_fire(env: Env) -> None:
    await env.put("s1", every="PT1S")
    env.clock.advance(1000)
    planned = await env.get("s1")
    await env.put("s1", every="PT1S", body={"changed": True})  # bumps the version
    plan = plan_due(planned.definition, START_MS + 1000, env.clock.now_ms())
    req = tick_request(planned.definition, START_MS + 1000, SCHEMA, PARTITIONS)
    outcome = await env.loop("s1").commit(planned, plan, req, Action.FIRED, env.clock.now_ms())
    assert outcome is FireOutcome.STALE and await env.outbox("s1") == []
    env.clock.advance(1000)
    await env.run_due("s1")  # the replacement fires from its own next time on
    [send] = await env.outbox("s1")
    assert (send.body, send.idempotency_key) == (b'{"changed":true}', f"s1@{iso_ms(START_MS + 2000)}")


@pytest.mark.parametrize(("catch_up", "fired"), [
    ("none", ["00:00:08", "00:00:09", "00:00:10"]),
    ("one", ["00:00:07", "00:00:08", "00:00:09", "00:00:10"]),
    ("all", [f"00:00:{s:02d}" for s in range(1, 11)]),
])
async def test_catch_up_after_downtime(env: Env, catch_up: str, fired: list[str]) -> None:
    await env.put("s1", every="PT1S", catch_up=catch_up, catch_up_window="PT2S")
    env.clock.advance(10_000)  # nobody fired for 10 s: ticks 1..7 are older than the window
    await env.run_due("s1")
    sends = await env.outbox("s1")
    base = iso_ms(START_MS)[11:17]
    assert [t[6:] for t in _tick_times(sends)] == [f[6:] for f in fired]
    assert all(t.startswith(base) for t in _tick_times(sends))
    s = await env.get("s1")
    assert (s.fired, s.skipped, s.next_ms) == (len(fired), 10 - len(fired), START_MS + 11_000)


async def test_catch_up_all_stops_at_its_limit(env: Env) -> None:
    await env.put("s1", every="PT1S", catch_up="all", catch_up_window="PT1S", catch_up_limit=3)
    env.clock.advance(10_000)
    await env.run_due("s1")
    s = await env.get("s1")
    assert (s.fired, s.skipped) == (5, 5)  # the 3 newest missed ticks, then the 2 in the window


async def test_overlap_skip_waits_for_the_previous_invocation(env: Env) -> None:
    await env.put("s1", every="PT1S", overlap="skip")
    env.clock.advance(1000)
    await env.run_due("s1")
    [first] = await env.outbox("s1")
    # the first tick's invocation was delivered and runs
    await env.redis.hset(keys.invocation(first.partition, first.invocation_id), "st", "invoked")
    env.clock.advance(1000)
    await env.run_due("s1")
    s = await env.get("s1")
    assert (s.fired, s.skipped, s.history[0].action) == (1, 1, Action.OVERLAP)
    await env.redis.hset(keys.invocation(first.partition, first.invocation_id), "st", "completed")
    env.clock.advance(1000)
    await env.run_due("s1")
    assert _tick_times(await env.outbox("s1"))[1] == iso_ms(START_MS + 3000)[11:19]


async def test_pause_and_resume(env: Env) -> None:
    await env.put("s1", every="PT1S")
    s = await env.get("s1")
    assert await env.store.set_paused("s1", s.version, True, s.next_ms, env.clock.now_ms()) > 0
    env.clock.advance(5000)
    await env.run_due("s1")
    assert await env.outbox("s1") == [] and await env.redis.zcard(due_key(env.store.partition("s1"))) == 0
    s = await env.get("s1")
    assert s.state == "paused"
    assert await env.store.set_paused("s1", s.version - 1, False, None, 0) == -1  # a stale version
    resumed_next = next_fire(s.definition, env.clock.now_ms())
    assert await env.store.set_paused("s1", s.version, False, resumed_next, env.clock.now_ms()) > 0
    env.clock.advance(1000)
    await env.run_due("s1")
    assert _tick_times(await env.outbox("s1")) == [iso_ms(START_MS + 6000)[11:19]]  # ticks while paused never run


async def test_a_schedule_ends(env: Env) -> None:
    await env.put("s1", every=f"R2/{iso_ms(START_MS + 1000)}/PT1S")
    env.clock.advance(5000)
    await env.run_due("s1")
    s = await env.get("s1")
    assert (s.fired, s.state, s.next_ms) == (2, "ended", None)
    assert await env.redis.zcard(due_key(env.store.partition("s1"))) == 0


async def test_an_unregistered_target_skips_the_tick(env: Env) -> None:
    await env.put("s1", every="PT1S", target={"service": "Gone", "handler": "tick"})
    env.clock.advance(1000)
    await env.run_due("s1")
    s = await env.get("s1")
    assert (await env.outbox("s1"), s.fired, s.skipped, s.history[0].action) == ([], 0, 1, Action.NO_TARGET)
    assert s.next_ms == START_MS + 2000


async def test_delete_removes_every_key(env: Env) -> None:
    await env.put("s1", every="PT1S")
    env.clock.advance(1000)
    await env.run_due("s1")
    assert await env.store.delete("s1") and not await env.store.delete("s1")
    p = env.store.partition("s1")
    assert not await env.redis.exists(schedule_key(p, "s1"), history_key(p, "s1"))
    assert await env.redis.zcard(due_key(p)) == 0 and await env.redis.scard(index_key(p)) == 0


async def test_the_loop_sleeps_until_the_next_tick(env: Env) -> None:
    await env.put("s1", every="PT1S")
    task = asyncio.create_task(env.loop("s1").run())
    try:
        async def parked() -> None:
            async with asyncio.timeout(WAIT_S):
                while env.clock.sleepers == 0:
                    await asyncio.sleep(0.001)

        async def sends(n: int) -> None:
            async with asyncio.timeout(WAIT_S):
                while len(await env.outbox("s1")) < n:
                    await asyncio.sleep(0.005)

        await parked()
        assert await env.outbox("s1") == []
        for n in (1, 2, 3):
            env.clock.advance(1000)
            await sends(n)
            await parked()
        assert _tick_times(await env.outbox("s1")) == [iso_ms(START_MS + k * 1000)[11:19] for k in (1, 2, 3)]
    finally:
        await asyncio.wait_for(cancel_and_wait([task]), WAIT_S)  # re-cancels: redis-py can swallow one


async def test_scope_and_limit_key_are_passed_through(env: Env) -> None:
    await env.put("s1", every="PT1S", target={"service": "Recorder", "handler": "tick", "scope": "tenant-1",
                                              "limit_key": "reports"})
    env.clock.advance(1000)
    await env.run_due("s1")
    [send] = await env.outbox("s1")
    assert (send.scope, send.limit_key) == ("tenant-1", "reports")
    assert send.invocation_id == str(idempotent_invocation_id("Recorder", None, "tick", send.idempotency_key,
                                                              "tenant-1"))


async def test_sys_schedule_rows(env: Env) -> None:
    await env.put("s1", cron="*/5 * * * *", timezone="Europe/Berlin")
    await env.put("s2", every="PT1S", paused=True)
    rows = {r["id"]: r for r in map(sys_schedule_row, await env.store.list())}
    assert (rows["s1"]["state"], rows["s1"]["cron"], rows["s1"]["timezone"]) == ("active", "*/5 * * * *",
                                                                                 "Europe/Berlin")
    assert (rows["s2"]["state"], rows["s2"]["next_fire_at"], rows["s2"]["target_service_name"]) == (
        "paused", None, "Recorder")


async def test_admin_writes_that_change_a_schedule_wake_the_loops(env: Env) -> None:
    wakes: list[int] = []
    changes = ScheduleChanges(env.redis, lambda: wakes.append(1), env.clock)
    assert await changes.check() and len(wakes) == 1  # the first read wakes: a change may precede it
    assert not await changes.check()
    await env.put("s1", every="PT1M")
    assert await changes.check() and len(wakes) == 2
    version = (await env.get("s1")).version
    assert await env.store.set_paused("s1", version, True, None, env.clock.now_ms()) > 0
    assert await changes.check() and len(wakes) == 3
    assert await env.store.set_paused("s1", version, False, None, env.clock.now_ms()) == -1  # stale: no change
    assert not await changes.check()
    assert await env.store.delete("s1")
    assert await changes.check() and len(wakes) == 4
    assert not await env.store.delete("s1")
    assert not await changes.check() and len(wakes) == 4


async def test_a_loop_without_due_ticks_looks_again_within_its_idle_bound(env: Env) -> None:
    assert await env.loop("nothing").tick() == IDLE_S
    await env.put("s1", every="PT1H")
    assert await env.loop("s1").tick() == IDLE_S  # the next tick is an hour away: look again within IDLE_S


async def test_a_schedule_the_admin_adds_wakes_a_parked_loop_within_a_counter_poll(env: Env) -> None:
    loop = env.loop("s1")
    changes = ScheduleChanges(env.redis, loop.poke, env.clock)
    tasks = [asyncio.create_task(loop.run()), asyncio.create_task(changes.run())]
    try:
        async with asyncio.timeout(WAIT_S):
            while env.clock.sleepers < 2:  # the loop found nothing (sleeps IDLE_S), the counter poll sleeps
                await asyncio.sleep(0.001)
        await env.put("s1", every="PT1S")  # first due 1 s from now, long before the loop's idle look
        env.clock.advance(1000)  # past one counter poll (POLL_S) and the tick, far short of IDLE_S
        async with asyncio.timeout(WAIT_S):
            while len(await env.outbox("s1")) < 1:
                await asyncio.sleep(0.005)
        assert _tick_times(await env.outbox("s1")) == [iso_ms(START_MS + 1000)[11:19]]
    finally:
        await asyncio.wait_for(cancel_and_wait(tasks), WAIT_S)  # re-cancels: redis-py can swallow one
