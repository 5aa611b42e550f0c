"""Concurrency slots of scoped invocations in the partition Lua transitions, against a real Redis:
exact counting, FIFO within a limit key, round robin across limit keys, hand-over at END, kill and
cancel, delayed starts, fencing, and per-scope virtual-object keys."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.invocation import HandlerKind, InvocationRecord, Result, Status
from partition.scripts import Scripts, Target
from partition.transition import AcceptOutcome, ApplyOutcome, End, ManageOutcome, StartOutcome
from shardgate.sharding import idempotent_invocation_id

P = 5
SCOPE = "tenant1"


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


async def _lease(scripts: Scripts, worker: str = "w1") -> str:
    tok = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                      args=[worker, 5000, "127.0.0.1:1"])
    assert isinstance(tok, bytes)
    return tok.decode()


def _t(name: str, service: str = "Gate", key: str | None = None, scope: str | None = SCOPE) -> Target:
    return Target(P, str(idempotent_invocation_id(service, key, "work", name, scope)), service, key, scope)


def _record(t: Target, limit_key: str | None = None, bucket: str = SCOPE, exec_ms: int | None = None,
            kind: HandlerKind = HandlerKind.SERVICE) -> InvocationRecord:
    return InvocationRecord(
        status=Status.INVOKED if exec_ms is None else Status.SCHEDULED, service=t.service, handler="work",
        kind=kind, key=t.key, input_frame=b"input", execution_time_ms=exec_ms, last_growth_ms=1000,
        scope=t.scope, limit_key=limit_key, vqueue=bucket,
    )


async def _accept(scripts: Scripts, token: str, t: Target, limit: int, **kw: Any) -> AcceptOutcome:
    return (await scripts.accept(t, token, _record(t, **kw), limit)).outcome


async def _end(scripts: Scripts, token: str, t: Target) -> list[str]:
    """Complete `t`; the ids its freed slot (or its key's lock) went to."""
    applied = await scripts.apply(t, token, 2000, 0, End(Result(0, "", b"ok")), 0, [])
    assert applied.outcome is ApplyOutcome.COMPLETED
    return applied.woken


async def _status(redis: Redis, t: Target) -> Status | None:
    raw = await redis.hget(keys.invocation(P, t.invocation_id), "st")
    return None if raw is None else Status(raw.decode() if isinstance(raw, bytes) else raw)


async def _running(redis: Redis, bucket: str = SCOPE) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(keys.vqueue_running(P, bucket))}


async def test_a_full_bucket_queues_and_a_finished_invocation_hands_its_slot_on(scripts: Scripts,
                                                                                redis: Redis) -> None:
    token = await _lease(scripts)
    ts = [_t(f"i{n}") for n in range(5)]
    outcomes = [await _accept(scripts, token, t, 2) for t in ts]
    assert outcomes == [AcceptOutcome.INVOKED] * 2 + [AcceptOutcome.INBOXED] * 3
    assert await _running(redis) == {ts[0].invocation_id, ts[1].invocation_id}
    # the first to finish gives its slot to the first queued one (FIFO), which is due to start now
    assert await _end(scripts, token, ts[0]) == [ts[2].invocation_id]
    assert await _status(redis, ts[2]) is Status.SCHEDULED
    assert await redis.zscore(keys.timers(P), "s|" + ts[2].invocation_id) == 2000
    assert await _running(redis) == {ts[1].invocation_id, ts[2].invocation_id}
    started = await scripts.attempt_start(ts[2], token)
    assert started.outcome is StartOutcome.INVOKED
    assert await redis.zscore(keys.timers(P), "s|" + ts[2].invocation_id) is None  # consumed with the start
    assert await _end(scripts, token, ts[1]) == [ts[3].invocation_id]
    assert await _end(scripts, token, ts[2]) == [ts[4].invocation_id]
    for t in ts[3:]:
        assert (await scripts.attempt_start(t, token)).outcome is StartOutcome.INVOKED
        await _end(scripts, token, t)
    assert await _running(redis) == set()


async def test_limit_keys_of_a_bucket_take_turns(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    first = _t("a0")
    assert await _accept(scripts, token, first, 1, limit_key="a") is AcceptOutcome.INVOKED
    a = [_t(f"a{n}") for n in range(1, 4)]
    b = [_t(f"b{n}") for n in range(2)]
    for t in a:
        assert await _accept(scripts, token, t, 1, limit_key="a") is AcceptOutcome.INBOXED
    for t in b:
        assert await _accept(scripts, token, t, 1, limit_key="b") is AcceptOutcome.INBOXED
    order: list[str] = []
    current = first
    while True:
        woken = await _end(scripts, token, current)
        if not woken:
            break
        assert len(woken) == 1
        order += woken
        current = next(t for t in a + b if t.invocation_id == woken[0])
        assert (await scripts.attempt_start(current, token)).outcome is StartOutcome.INVOKED
    expected = [a[0], b[0], a[1], b[1], a[2]]  # round robin across limit keys, FIFO within each
    assert order == [t.invocation_id for t in expected]


async def test_kill_and_cancel_free_exactly_the_slots_held(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    run, queued1, queued2 = _t("run"), _t("q1"), _t("q2")
    assert await _accept(scripts, token, run, 1) is AcceptOutcome.INVOKED
    assert await _accept(scripts, token, queued1, 1) is AcceptOutcome.INBOXED
    assert await _accept(scripts, token, queued2, 1) is AcceptOutcome.INBOXED
    # killing a queued one frees nothing (it held no slot) and takes it out of the queue
    killed = await scripts.kill(queued1, token, 3000)
    assert killed.outcome is ManageOutcome.DONE
    assert await _running(redis) == {run.invocation_id}
    # killing the running one hands the slot to the next still queued one
    killed = await scripts.kill(run, token, 3000)
    assert killed.outcome is ManageOutcome.DONE
    assert await _running(redis) == {queued2.invocation_id}
    assert await _status(redis, queued2) is Status.SCHEDULED
    # cancelling it before it started gives the slot back
    cancelled = await scripts.cancel(queued2, token)
    assert cancelled.outcome is ManageOutcome.DONE
    assert await _running(redis) == set()
    assert await redis.zscore(keys.timers(P), "s|" + queued2.invocation_id) is None


async def test_a_delayed_scoped_invocation_takes_its_slot_when_it_starts(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    holder, later = _t("holder"), _t("later")
    assert await _accept(scripts, token, later, 1, exec_ms=10**13) is AcceptOutcome.SCHEDULED
    assert await _running(redis) == set()  # not started yet: no slot
    assert await _accept(scripts, token, holder, 1) is AcceptOutcome.INVOKED
    started = await scripts.attempt_start(later, token, "s|" + later.invocation_id)
    assert started.outcome is StartOutcome.INBOXED
    assert await _status(redis, later) is Status.INBOXED
    assert await _end(scripts, token, holder) == [later.invocation_id]
    assert (await scripts.attempt_start(later, token)).outcome is StartOutcome.INVOKED
    assert await _running(redis) == {later.invocation_id}


async def test_a_stale_owner_takes_no_slot(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    await redis.set(keys.lease(P), "w2|99")
    with pytest.raises(Fenced):
        await _accept(scripts, token, _t("x"), 1)
    assert await _running(redis) == set()


async def test_scoped_objects_have_their_own_lock_state_and_inbox(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    plain = _t("plain", "Tally", "k", scope=None)
    scoped = _t("scoped", "Tally", "k")
    assert scoped.lock() != plain.lock() and scoped.state() != plain.state() and scoped.inbox() != plain.inbox()
    assert _t("other", "Tally", "k", scope="tenant2").state() != scoped.state()
    for t in (plain, scoped):
        rec = _record(t, bucket="", kind=HandlerKind.EXCLUSIVE)
        assert (await scripts.accept(t, token, rec)).outcome is AcceptOutcome.INVOKED  # no shared lock
    behind = _t("behind", "Tally", "k")
    rec = _record(behind, bucket="", kind=HandlerKind.EXCLUSIVE)
    assert (await scripts.accept(behind, token, rec)).outcome is AcceptOutcome.INBOXED
    # a scoped inbox head is handed back to be located with its scope (woken), not started blind
    assert await _end(scripts, token, scoped) == [behind.invocation_id]
    assert await _status(redis, behind) is Status.INVOKED
    located = await scripts.target_of(P, behind.invocation_id)
    assert located == behind


async def test_a_raised_limit_admits_the_queue_at_once(scripts: Scripts, redis: Redis) -> None:
    token = await _lease(scripts)
    ts = [_t(f"r{n}") for n in range(6)]
    for t in ts:
        await _accept(scripts, token, t, 1)
    assert await scripts.vqueue_buckets(P) == [SCOPE]
    # buckets the partition does not have are ignored
    admitted = await scripts.scope_limits(P, token, 4000, [(SCOPE, 3), ("other", 9)])
    assert admitted == [ts[1].invocation_id, ts[2].invocation_id]
    assert await _running(redis) == {t.invocation_id for t in ts[:3]}
    assert await redis.hget(keys.vqueue_limits(P), "other") is None
    # no rule any more: the rest drains
    admitted = await scripts.scope_limits(P, token, 4000, [(SCOPE, 1 << 30)])
    assert admitted == [t.invocation_id for t in ts[3:]]
    for t in ts:
        if t is not ts[0]:
            assert (await scripts.attempt_start(t, token)).outcome is StartOutcome.INVOKED
        await _end(scripts, token, t)
    assert await scripts.vqueue_buckets(P) == []  # nothing runs or waits: forgotten
    await redis.set(keys.lease(P), "w2|99")
    with pytest.raises(Fenced):
        await scripts.scope_limits(P, token, 4000, [(SCOPE, 3)])
