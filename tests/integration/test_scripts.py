"""Each partition Lua transition against a real Redis: fencing, dedup, key locks and inboxes,
journals, suspension and wake-up, promises, timers and the outbox; the driver's fenced clean-up
of fired timers; and the cost of a plain call (exactly two scripts, against a real deployment)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.invocation import HandlerKind, HashField, InvocationRecord, Result, Status, allowed
from partition.invoker import Invoker
from partition.leader import PartitionLeader
from partition.outbox_codec import decode_outbox, encode_outbox_notify
from partition.scripts import Scripts, Target
from partition.service import PartitionService
from partition.transition import (
    OP_TYPES,
    AddTimer,
    AttemptFailed,
    ClearAllState,
    ClearState,
    CompletePromise,
    End,
    GetPromise,
    JournalEntry,
    NotificationEntry,
    OutboxEntry,
    PeekPromise,
    PromiseExpiry,
    SetState,
    SettleOutcome,
    Suspend,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate import protocol
from shardgate.clock import SYSTEM_CLOCK
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment, HandlerMeta, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of, workflow_invocation_id
from tests.integration.counting import CountingRedis, counted_scripts

P = 3


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


async def _lease(scripts: Scripts, worker: str = "w1") -> str:
    tok = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                      args=[worker, 5000, "127.0.0.1:1"])
    assert tok is not None
    return tok.decode()


def _t(n: int, service: str = "Counter", key: str | None = "k") -> Target:
    return Target(P, str(idempotent_invocation_id(service, key, "add", f"idem-{n}")), service, key)


def _record(t: Target, kind: HandlerKind = HandlerKind.EXCLUSIVE, cret: int = 0, exec_ms: int | None = None,
            parent: str = "", nonce: bytes = b"") -> InvocationRecord:
    return InvocationRecord(
        status=Status.INVOKED if exec_ms is None else Status.SCHEDULED, service=t.service, handler="add",
        kind=kind, key=t.key, input_frame=b"input", completion_retention_ms=cret, execution_time_ms=exec_ms,
        parents=parent, request_nonce=nonce, last_growth_ms=1000,
    )


async def _accept(scripts: Scripts, token: str, t: Target, kind: HandlerKind = HandlerKind.EXCLUSIVE,
                  exec_ms: int | None = None, parent: str = "", cret: int = 0) -> Any:
    return await scripts.accept(t, token, _record(t, kind, cret, exec_ms, parent))


def _end(rc: int = 0, rm: str = "", rv: bytes = b"") -> End:
    return End(Result(rc, rm, rv))


async def _status(redis: Redis, t: Target) -> Status | None:
    raw = await redis.hget(keys.invocation(P, t.invocation_id), "st")
    return None if raw is None else Status(raw.decode())


async def test_accept_creates_then_reports_duplicate(scripts: Scripts) -> None:
    tok = await _lease(scripts)
    first = await _accept(scripts, tok, _t(1))
    assert first.outcome == "INVOKED"
    again = await _accept(scripts, tok, _t(1))
    assert again.outcome == "DUP" and again.dup_status is Status.INVOKED and again.result is None


async def test_accept_stores_the_record_it_is_given(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(2)
    record = _record(t, parent="inv_1parent|7|2,", nonce=b"n1")
    await scripts.accept(t, tok, record)
    stored = InvocationRecord.from_fields(await redis.hgetall(keys.invocation(P, t.invocation_id)))
    assert stored == record  # the codec round-trips through Redis
    assert (await _accept(scripts, tok, t)).request_nonce == b"n1"


async def test_write_with_stale_fencing_token_is_refused(scripts: Scripts, redis: Redis) -> None:
    old = await _lease(scripts, "w1")
    await scripts.lease_release(keys=[keys.lease(P), keys.route(P)], args=[old, "127.0.0.1:1"])
    new = await _lease(scripts, "w2")
    assert new != old and new.endswith("|2")
    with pytest.raises(Fenced):
        await _accept(scripts, old, _t(2))
    assert not await redis.exists(keys.invocation(P, _t(2).invocation_id))
    t3 = _t(3)
    assert (await _accept(scripts, new, t3)).outcome == "INVOKED"
    with pytest.raises(Fenced):
        await scripts.apply(t3, old, 2000, 0, _end(rv=b"1"), 0, [SetState(b"count", b"1")])
    with pytest.raises(Fenced):
        await scripts.notify(P, t3.invocation_id, old, "s1", b"frame")
    with pytest.raises(Fenced):
        await scripts.attempt_start(t3, old)
    with pytest.raises(Fenced):
        await scripts.settle(P, t3.invocation_id, old, f"r|{t3.invocation_id}")
    assert await scripts.outbox_ack(P, old, [b"x"]) is False
    assert await _status(redis, t3) is Status.INVOKED
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_expired_lease_fences_its_former_owner(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    await redis.delete(keys.lease(P))  # what the TTL does when the owner stops renewing
    with pytest.raises(Fenced):
        await _accept(scripts, tok, _t(4))


async def test_lease_is_exclusive_and_epoch_grows(scripts: Scripts) -> None:
    tok = await _lease(scripts, "w1")
    assert await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                       args=["w2", 5000, "127.0.0.1:1"]) is None
    assert await scripts.lease_renew(keys=[keys.lease(P), keys.route(P)], args=[tok, 5000, "127.0.0.1:1"]) == 1
    assert await scripts.lease_renew(keys=[keys.lease(P), keys.route(P)], args=["w2|9", 5000, "127.0.0.1:1"]) == 0
    assert await scripts.lease_release(keys=[keys.lease(P), keys.route(P)], args=[tok, "127.0.0.1:1"]) == 1
    tok2 = await _lease(scripts, "w2")
    assert int(tok2.split("|")[1]) == int(tok.split("|")[1]) + 1


async def test_exclusive_invocations_queue_and_hand_over_the_lock(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    a, b, c = _t(10), _t(11), _t(12)
    assert (await _accept(scripts, tok, a)).outcome == "INVOKED"
    assert (await _accept(scripts, tok, b)).outcome == "INBOXED"
    assert (await _accept(scripts, tok, c)).outcome == "INBOXED"
    assert (await _accept(scripts, tok, _t(13), HandlerKind.SHARED)).outcome == "INVOKED"  # shared never waits

    done = await scripts.apply(a, tok, 2000, 0, _end(rv=b"1"), 0, [SetState(b"count", b"1")])
    assert done.outcome == "OK" and done.next_id == b.invocation_id and done.next_state == {b"count": b"1"}
    assert done.next_record == _record(b)  # the head's record, now invoked
    assert await redis.get(keys.lock(P, "Counter", "k")) == b.invocation_id.encode()
    done = await scripts.apply(b, tok, 3000, 0, _end(rv=b"2"), 0, [SetState(b"count", b"2")])
    assert done.next_id == c.invocation_id
    done = await scripts.apply(c, tok, 4000, 0, _end(rv=b"3"), 0, [ClearAllState()])
    assert done.next_id is None and done.next_record is None
    assert not await redis.exists(keys.lock(P, "Counter", "k"))
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_completion_is_retained_only_with_a_retention(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    kept, dropped = _t(20, "Greeter", None), _t(21, "Greeter", None)
    await _accept(scripts, tok, kept, HandlerKind.SERVICE, cret=60_000)
    await _accept(scripts, tok, dropped, HandlerKind.SERVICE)
    done = await scripts.apply(kept, tok, 5000, 0, _end(409, "nope"), 0, [])
    assert done.outcome == "OK" and done.expires_ms == 65_000
    stored = await scripts.result_of(P, kept.invocation_id)
    assert stored is not None
    assert (stored.status, stored.result, stored.expires_ms) == (Status.COMPLETED, Result(409, "nope"), 65_000)
    # only what a completed invocation is read for is kept
    assert not await redis.hexists(keys.invocation(P, kept.invocation_id), "in")
    assert 0 < await redis.pttl(keys.invocation(P, kept.invocation_id)) <= 60_000
    await scripts.apply(dropped, tok, 5000, 0, _end(rv=b"x"), 0, [])
    assert not await redis.exists(keys.invocation(P, dropped.invocation_id))
    assert await scripts.result_of(P, dropped.invocation_id) is None
    assert await redis.smembers(keys.active(P)) == set()
    again = await scripts.apply(kept, tok, 6000, 0, _end(), 0, [])
    assert again.outcome == "BAD_STATE" and again.status is Status.COMPLETED


def _sleep_frame(cid: int) -> bytes:
    return protocol.notification(T.SLEEP_COMPLETION, completion_id=cid, void=True)


async def test_suspension_waits_and_a_notification_wakes_it(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(30)
    await _accept(scripts, tok, t)
    member = keys.timer_member(keys.TimerKind.WAKE, t.invocation_id, 1)
    applied = await scripts.apply(t, tok, 2000, 0, Suspend(" c1 s1 "), 0,
                                  [JournalEntry(b"sleep-cmd"), AddTimer(5000, member)])
    assert applied.outcome == "SUSPENDED"
    assert await _status(redis, t) is Status.SUSPENDED
    assert t.invocation_id.encode() not in await redis.smembers(keys.active(P))
    assert await redis.get(keys.lock(P, "Counter", "k")) == t.invocation_id.encode()  # keeps the lock
    assert await redis.zscore(keys.timers(P), member) == 5000
    woken = await scripts.notify(P, t.invocation_id, tok, "c1", _sleep_frame(1), member)
    assert woken.outcome == "WOKEN" and woken.target == t  # the keys to restart it come along
    again = await scripts.notify(P, t.invocation_id, tok, "c1", _sleep_frame(1), member)
    assert again.outcome == "DUP"
    assert await redis.zscore(keys.timers(P), member) is None
    started = await scripts.attempt_start(t, tok)
    assert started.outcome == "INVOKED"
    assert started.journal == [b"sleep-cmd", _sleep_frame(1)]


async def test_notification_for_a_running_invocation_is_stored_without_waking(scripts: Scripts) -> None:
    tok = await _lease(scripts)
    t = _t(33)
    await _accept(scripts, tok, t)
    assert (await scripts.notify(P, t.invocation_id, tok, "s5", b"signal")).outcome == "APPLIED"
    assert (await scripts.notify(P, _t(34).invocation_id, tok, "s5", b"signal")).outcome == "GONE"


async def test_suspension_on_an_existing_notification_resumes_at_once(scripts: Scripts) -> None:
    """No lost wake-up: a notification stored before the suspension resumes it immediately."""
    tok = await _lease(scripts)
    t = _t(31)
    await _accept(scripts, tok, t)
    run_note = protocol.notification(T.RUN_COMPLETION, completion_id=1, value=b"42")
    applied = await scripts.apply(t, tok, 2000, 0, Suspend(" c1 s1 "), 0,
                                  [JournalEntry(b"run-cmd"), NotificationEntry("c1", run_note)])
    assert applied.outcome == "RESUME" and applied.new_entries == [b"run-cmd", run_note]


async def test_failed_attempt_backs_off_on_a_timer(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(32)
    await _accept(scripts, tok, t)
    applied = await scripts.apply(t, tok, 2000, 0, AttemptFailed(Status.BACKING_OFF, 2500, "boom"), 1,
                                  [JournalEntry(b"run-cmd")])
    assert applied.outcome == "BACKOFF"
    assert await redis.zscore(keys.timers(P), f"r|{t.invocation_id}") == 2500
    assert await redis.hget(keys.invocation(P, t.invocation_id), "lerr") == b"boom"
    started = await scripts.attempt_start(t, tok, f"r|{t.invocation_id}")
    assert started.outcome == "INVOKED" and started.record is not None
    assert started.record.attempts == 1 and started.record.last_growth_ms == 2000
    assert started.journal == [b"run-cmd"]
    assert await redis.zscore(keys.timers(P), f"r|{t.invocation_id}") is None


async def test_paused_invocation_gets_no_timer_and_does_not_start(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(35)
    await _accept(scripts, tok, t)
    await scripts.apply(t, tok, 2000, 0, AttemptFailed(Status.PAUSED, 2500, "boom"), 3, [])
    assert await redis.zcard(keys.timers(P)) == 0
    started = await scripts.attempt_start(t, tok)
    assert started.outcome == "WAIT" and started.status is Status.PAUSED


async def test_malformed_apply_changes_nothing(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(36)
    await _accept(scripts, tok, t)
    args = [tok, t.invocation_id, 2000, 0, 0, keys.invocation_prefix(P), keys.journal_prefix(P),
            "END", Result().encode(), "", "", "S", b"count", b"1", "??"]
    script = scripts._scripts["apply"]
    with pytest.raises(Exception, match="unknown op"):
        await script(keys=[keys.lease(P), keys.invocation(P, t.invocation_id)] + [keys.active(P)] * 9, args=args)
    assert await _status(redis, t) is Status.INVOKED
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_promise_completion_wakes_the_waiting_run(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    run = Target(P, str(idempotent_invocation_id("Signup", "w", "run", "x")), "Signup", "w")
    approve = Target(P, str(idempotent_invocation_id("Signup", "w", "approve", "y")), "Signup", "w")
    await _accept(scripts, tok, run, HandlerKind.WORKFLOW)
    await _accept(scripts, tok, approve, HandlerKind.SHARED)
    waiting = await scripts.apply(run, tok, 2000, 0, Suspend(" c1 s1 "), 0,
                                  [JournalEntry(b"get"), GetPromise("ok", 1)])
    assert waiting.outcome == "SUSPENDED"
    value = Result(0, "", b'"y"').encode()
    done = await scripts.apply(approve, tok, 3000, 0, Suspend(" c1 s1 "), 0,
                               [JournalEntry(b"complete"), CompletePromise("ok", 1, value)])
    assert done.outcome == "RESUME" and done.woken == [run.invocation_id]
    assert done.new_entries[-1] == protocol.notification(T.COMPLETE_PROMISE_COMPLETION, completion_id=1, void=True)
    expected = protocol.notification(T.GET_PROMISE_COMPLETION, completion_id=1, value=b'"y"')
    started = await scripts.attempt_start(run, tok)
    assert started.journal == [b"get", expected]
    # a second completion fails with "already completed" instead of overwriting
    again = await scripts.apply(approve, tok, 3002, 2, Suspend(" c2 "), 0,
                                [JournalEntry(b"complete2"), CompletePromise("ok", 2, Result(0, "", b"z").encode())])
    assert again.outcome == "RESUME"
    assert again.new_entries[-1] == protocol.notification(
        T.COMPLETE_PROMISE_COMPLETION, completion_id=2, failure=(409, "promise was already completed"))


async def test_one_apply_takes_every_op_type(scripts: Scripts, redis: Redis) -> None:
    """Each op of the typed union has its Lua handler, and one script applies them in order."""
    tok = await _lease(scripts)
    wf = Target(P, str(idempotent_invocation_id("Signup", "w3", "run", "x")), "Signup", "w3")
    await _accept(scripts, tok, wf, HandlerKind.WORKFLOW)
    member = keys.timer_member(keys.TimerKind.WAKE, wf.invocation_id, 9)
    ops = [JournalEntry(b"cmd"), NotificationEntry("c1", b"note"), SetState(b"a", b"1"), SetState(b"b", b"2"),
           ClearState(b"a"), ClearAllState(), SetState(b"c", b"3"), AddTimer(7000, member),
           OutboxEntry(encode_outbox_notify(1, "inv_1other", "s1", b"sig")), GetPromise("p", 2),
           CompletePromise("p", 3, Result(0, "", b"v").encode()), PeekPromise("p", 4),
           PromiseExpiry(wf.invocation_id, 1000)]  # the run itself is live: no expiry
    assert {type(op) for op in ops} == set(OP_TYPES)
    applied = await scripts.apply(wf, tok, 2000, 0, Suspend(" c9 "), 0, ops)
    assert applied.outcome == "SUSPENDED"
    assert await redis.hgetall(keys.state(P, "Signup", "w3")) == {b"c": b"3"}
    assert await redis.zscore(keys.timers(P), member) == 7000
    assert decode_outbox((await redis.lrange(keys.outbox(P), 0, -1))[0]).notify.key == "s1"
    value = {"value": b"v"}
    assert await redis.lrange(keys.journal(P, wf.invocation_id), 0, -1) == [
        b"cmd", b"note",
        protocol.notification(T.COMPLETE_PROMISE_COMPLETION, completion_id=3, void=True),
        protocol.notification(T.GET_PROMISE_COMPLETION, completion_id=2, **value),  # the waiter: itself
        protocol.notification(T.PEEK_PROMISE_COMPLETION, completion_id=4, **value),
    ]


async def test_child_result_is_queued_for_its_parent(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    child = _t(40, "Greeter", None)
    await _accept(scripts, tok, child, HandlerKind.SERVICE, parent="inv_1parent|7|2,")
    done = await scripts.apply(child, tok, 2000, 0, _end(rv=b'"hi"'), 0, [])
    assert done.parents_notified == 1
    raw = (await redis.lrange(keys.outbox(P), 0, -1))[0]
    msg = decode_outbox(raw).notify
    assert (msg.partition, msg.invocation_id, msg.key) == (7, "inv_1parent", "c2")
    assert msg.frame == protocol.notification(T.CALL_COMPLETION, completion_id=2, value=b'"hi"')
    assert await scripts.outbox_ack(P, tok, [raw])
    assert await redis.llen(keys.outbox(P)) == 0


async def test_duplicate_call_to_a_completed_child_answers_its_parent_at_once(scripts: Scripts,
                                                                              redis: Redis) -> None:
    tok = await _lease(scripts)
    child = _t(41, "Greeter", None)
    await _accept(scripts, tok, child, HandlerKind.SERVICE, cret=60_000)
    await scripts.apply(child, tok, 2000, 0, _end(500, "boom"), 0, [])
    dup = await _accept(scripts, tok, child, HandlerKind.SERVICE, parent="inv_1parent|7|300,")
    assert dup.outcome == "DUP" and dup.dup_status is Status.COMPLETED and dup.result == Result(500, "boom")
    assert dup.parents_notified == 1 and dup.expires_ms == 62_000
    msg = decode_outbox((await redis.lrange(keys.outbox(P), 0, -1))[0]).notify
    assert msg.key == "c300"
    assert msg.frame == protocol.notification(T.CALL_COMPLETION, completion_id=300, failure=(500, "boom"))


async def test_duplicate_call_to_a_running_child_joins_its_parents_once(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    child = _t(42, "Greeter", None)
    await _accept(scripts, tok, child, HandlerKind.SERVICE, parent="inv_1a|7|2,")
    for _ in range(2):  # a re-delivered call joins once
        assert (await _accept(scripts, tok, child, HandlerKind.SERVICE, parent="inv_1b|5|3,")).outcome == "DUP"
    done = await scripts.apply(child, tok, 2000, 0, _end(rv=b"1"), 0, [])
    assert done.parents_notified == 2
    notes = [decode_outbox(raw).notify for raw in await redis.lrange(keys.outbox(P), 0, -1)]
    assert [(n.invocation_id, n.partition, n.key) for n in notes] == [("inv_1a", 7, "c2"), ("inv_1b", 5, "c3")]


async def test_scheduled_invocation_waits_for_its_timer(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(50)
    assert (await _accept(scripts, tok, t, exec_ms=9000)).outcome == "SCHEDULED"
    assert await redis.zscore(keys.timers(P), f"s|{t.invocation_id}") == 9000
    assert (await _accept(scripts, tok, t)).execution_time_ms == 9000
    started = await scripts.attempt_start(t, tok, f"s|{t.invocation_id}")
    assert started.outcome == "INVOKED"
    assert await redis.get(keys.lock(P, "Counter", "k")) == t.invocation_id.encode()


async def test_observed_status_changes_follow_the_lifecycle_table(scripts: Scripts, redis: Redis) -> None:
    """Walk one invocation through every built transition; each change is a row of TRANSITIONS."""
    tok = await _lease(scripts)
    holder, t = _t(80), _t(81)
    seen: list[Status | None] = [None]

    async def step() -> None:
        now = await _status(redis, t)
        assert allowed(seen[-1], now), (seen[-1], now)
        seen.append(now)

    await _accept(scripts, tok, holder)
    await _accept(scripts, tok, t, exec_ms=9000)
    await step()  # scheduled
    await scripts.attempt_start(t, tok, f"s|{t.invocation_id}")
    await step()  # inboxed (the holder has the lock)
    await scripts.apply(holder, tok, 2000, 0, _end(), 0, [])
    await step()  # invoked (handed over)
    await scripts.apply(t, tok, 2000, 0, Suspend(" c1 "), 0, [])
    await step()  # suspended
    await scripts.notify(P, t.invocation_id, tok, "c1", _sleep_frame(1))
    await step()  # invoked
    await scripts.apply(t, tok, 2000, 1, AttemptFailed(Status.BACKING_OFF, 2500, "x"), 1, [])
    await step()  # backing-off
    await scripts.attempt_start(t, tok, f"r|{t.invocation_id}")
    await step()  # invoked
    await scripts.apply(t, tok, 2000, 1, AttemptFailed(Status.PAUSED, 0, "x"), 2, [])
    await step()  # paused
    await redis.hset(keys.invocation(P, t.invocation_id), "st", "invoked")  # resume: not built yet
    await step()  # invoked
    await scripts.apply(t, tok, 3000, 1, _end(), 0, [])
    await step()  # deleted (no retention)
    assert seen == [None, Status.SCHEDULED, Status.INBOXED, Status.INVOKED, Status.SUSPENDED, Status.INVOKED,
                    Status.BACKING_OFF, Status.INVOKED, Status.PAUSED, Status.INVOKED, None]
    assert not allowed(Status.COMPLETED, Status.INVOKED) and not allowed(Status.PAUSED, Status.SUSPENDED)


async def test_every_script_key_shares_the_partition_slot() -> None:
    from redis.crc import key_slot

    inv = _t(60).invocation_id
    names = [
        keys.lease(P), keys.epoch(P), keys.invocation(P, inv), keys.active(P), keys.lock(P, "Counter", "a:b{c}"),
        keys.inbox(P, "Counter", "x"), keys.state(P, "Counter", ""), keys.journal(P, inv), keys.timers(P),
        keys.outbox(P), keys.promises(P, "Signup", "w"), keys.promise_waiters(P, "Signup", "w"), keys.route(P),
    ]
    assert len({key_slot(n.encode()) for n in names}) == 1


async def test_reacquiring_under_the_same_worker_id_bumps_the_epoch(scripts: Scripts) -> None:
    """A restarted process with the same worker id must fence out its predecessor."""
    first = await _lease(scripts, "w1")
    second = await _lease(scripts, "w1")
    assert second != first
    with pytest.raises(Fenced):
        await _accept(scripts, first, _t(70))


async def test_promise_waiter_that_already_completed_is_skipped(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    waiter = Target(P, str(idempotent_invocation_id("Signup", "w", "status", "a")), "Signup", "w")
    done = Target(P, str(idempotent_invocation_id("Signup", "w", "approve", "b")), "Signup", "w")
    await _accept(scripts, tok, waiter, HandlerKind.SHARED, cret=60_000)
    await _accept(scripts, tok, done, HandlerKind.SHARED)
    # the waiter registers for the promise, then finishes without awaiting it
    await scripts.apply(waiter, tok, 2000, 0, _end(), 0, [GetPromise("ok", 1)])
    applied = await scripts.apply(done, tok, 3000, 0, _end(), 0, [CompletePromise("ok", 1, Result().encode())])
    assert applied.woken == []
    assert not await redis.exists(keys.journal(P, waiter.invocation_id))
    assert not await redis.hexists(keys.invocation(P, waiter.invocation_id), "n:c1")


async def test_workflow_end_expires_its_promise_waiters(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    run = Target(P, str(idempotent_invocation_id("Signup", "w2", "run", "x")), "Signup", "w2")
    await _accept(scripts, tok, run, HandlerKind.WORKFLOW, cret=60_000)
    await scripts.apply(run, tok, 2000, 0, _end(), 0, [GetPromise("never", 1)])
    ttl = await redis.pttl(keys.promise_waiters(P, "Signup", "w2"))
    assert 0 < ttl <= 60_000


async def test_promises_a_shared_handler_writes_expire_unless_a_run_holds_them(scripts: Scripts, redis: Redis) -> None:
    """Finding: promises written for a workflow key whose run never existed never expired."""
    tok = await _lease(scripts)
    now = int(time.time() * 1000)
    run = Target(P, str(workflow_invocation_id("Signup", "w5")), "Signup", "w5")
    prom, waiters = keys.promises(P, "Signup", "w5"), keys.promise_waiters(P, "Signup", "w5")

    async def shared(n: int, *ops: Any) -> None:
        t = Target(P, str(idempotent_invocation_id("Signup", "w5", "approve", f"s{n}")), "Signup", "w5")
        await _accept(scripts, tok, t, HandlerKind.SHARED)
        await scripts.apply(t, tok, now, 0, _end(), 0, [*ops, PromiseExpiry(run.invocation_id, 60_000)])

    # No run: a completed promise and a waiter both get the default expiry.
    await shared(1, CompletePromise("ok", 1, Result(0, "", b"v").encode()), GetPromise("other", 2))
    for k in (prom, waiters):
        assert 0 < await redis.pttl(k) <= 60_000
    # The run's accept keeps them for as long as it lives, a shared write meanwhile too.
    await _accept(scripts, tok, run, HandlerKind.WORKFLOW, cret=30_000)
    assert (await redis.pttl(prom), await redis.pttl(waiters)) == (-1, -1)
    await shared(2, CompletePromise("ok2", 1, Result(0, "", b"w").encode()))
    assert await redis.pttl(prom) == -1
    # Its END gives them its retention.
    await scripts.apply(run, tok, now, 0, _end(), 0, [])
    assert 0 < await redis.pttl(prom) <= 30_000
    # A completed run whose promises went (purged by hand here): new ones expire with its result.
    await redis.delete(prom, waiters)
    await shared(3, CompletePromise("late", 1, Result(0, "", b"x").encode()))
    expires_ms = int(await redis.hget(keys.invocation(P, run.invocation_id), HashField.EXPIRES.value) or 0)
    left_ms = expires_ms - int(time.time() * 1000)
    assert 0 < left_ms <= 30_000
    assert abs(await redis.pttl(prom) - left_ms) <= 1000  # PEXPIREAT at the result's expiry


async def test_outbox_reports_more_work_after_a_full_batch(scripts: Scripts, redis: Redis) -> None:
    from partition.outbox import BATCH, PartitionOutbox

    tok = await _lease(scripts)
    for i in range(BATCH + 10):
        await redis.rpush(keys.outbox(P), encode_outbox_notify(1, f"inv-{i}", "c1", b"f"))
    delivered: list[str] = []

    async def deliver(msg: object) -> None:
        delivered.append(msg.notify.invocation_id)  # type: ignore[attr-defined]

    outbox = PartitionOutbox(redis, scripts, P, tok, deliver)
    assert await outbox._drain() == (BATCH, 0, True)  # a full batch: the loop drains on at once
    assert await outbox._drain() == (10, 0, False)
    assert delivered == [f"inv-{i}" for i in range(BATCH + 10)]


# ---- settle: the fenced clean-up after a fired timer ---------------------------------------------


async def test_settle_forgets_a_vanished_invocation_and_drops_or_keeps_members(scripts: Scripts,
                                                                               redis: Redis) -> None:
    tok = await _lease(scripts)
    gone, waiting, running = _t(90), _t(91), _t(92)
    for t in (gone, waiting, running):
        await redis.zadd(keys.timers(P), {f"r|{t.invocation_id}": 100})
    await redis.sadd(keys.active(P), gone.invocation_id)
    await _accept(scripts, tok, waiting)
    await scripts.apply(waiting, tok, 50, 0, AttemptFailed(Status.BACKING_OFF, 100, "x"), 1, [])
    await _accept(scripts, tok, running, HandlerKind.SHARED)
    assert await scripts.settle(P, gone.invocation_id, tok, f"r|{gone.invocation_id}") is SettleOutcome.GONE
    assert await scripts.settle(P, waiting.invocation_id, tok, f"r|{waiting.invocation_id}",
                                5000) is SettleOutcome.KEPT
    assert await scripts.settle(P, running.invocation_id, tok, f"r|{running.invocation_id}",
                                5000) is SettleOutcome.DROPPED
    assert await redis.zrange(keys.timers(P), 0, -1, withscores=True) == [
        (f"r|{waiting.invocation_id}".encode(), 5000.0)]
    assert await redis.smembers(keys.active(P)) == {running.invocation_id.encode()}


def _leader(redis: Redis, scripts: Scripts, token: str) -> PartitionLeader:
    """A leader of partition P with no deployment and no loops running: these tests call its
    timer firing directly and never get as far as an attempt."""
    service = PartitionService(redis, scripts, Invoker(connect_timeout_s=1.0), SchemaSnapshot.empty, 8, 4)
    return service.new_leader(P, token)


async def test_timer_of_a_vanished_invocation_is_cleaned_up_under_the_fence(scripts: Scripts,
                                                                             redis: Redis) -> None:
    old = await _lease(scripts, "w1")
    await scripts.lease_release(keys=[keys.lease(P), keys.route(P)], args=[old, "127.0.0.1:1"])
    new = await _lease(scripts, "w2")
    inv = _t(93).invocation_id
    member = f"r|{inv}"
    await redis.zadd(keys.timers(P), {member: 100})
    await redis.sadd(keys.active(P), inv)
    stale = _leader(redis, scripts, old)  # still believes it owns the partition
    await stale.fire_timer(member)
    assert await redis.zscore(keys.timers(P), member) == 100  # fenced: nothing written
    assert await redis.sismember(keys.active(P), inv)
    owner = _leader(redis, scripts, new)
    await owner.fire_timer(member)
    assert await redis.zscore(keys.timers(P), member) is None
    assert not await redis.sismember(keys.active(P), inv)
    for leader in (stale, owner):
        leader.close()
        await leader.wait_closed()


async def test_retry_timer_of_an_invocation_driven_here_is_not_left_due(scripts: Scripts, redis: Redis) -> None:
    """A stale retry member of an invocation that is running here must not stay due, or the timer
    loop would fire it again at once, over and over."""
    tok = await _lease(scripts)
    t = _t(94)
    await _accept(scripts, tok, t)
    member = f"r|{t.invocation_id}"
    await redis.zadd(keys.timers(P), {member: 100})
    leader = _leader(redis, scripts, tok)
    busy = asyncio.get_running_loop().create_future()
    leader._drivers[t.invocation_id] = asyncio.ensure_future(busy)  # its driver is mid-attempt
    await leader.fire_timer(member)
    assert await redis.zscore(keys.timers(P), member) is None
    assert await _status(redis, t) is Status.INVOKED
    leader.close()
    await leader.wait_closed()


async def test_retry_timer_whose_restart_fails_is_pushed_back_not_lost(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(95)
    await _accept(scripts, tok, t)
    await scripts.apply(t, tok, 50, 0, AttemptFailed(Status.BACKING_OFF, 100, "x"), 1, [])
    await redis.hset(keys.invocation(P, t.invocation_id), "svc", b"\xff")  # unreadable: the restart fails
    member = f"r|{t.invocation_id}"
    leader = _leader(redis, scripts, tok)
    before_ms = SYSTEM_CLOCK.now_ms()
    await leader.fire_timer(member)
    due = await redis.zscore(keys.timers(P), member)
    assert due is not None and due >= before_ms + 1000  # fires again later, still there after a crash
    assert await _status(redis, t) is Status.BACKING_OFF
    leader.close()
    await leader.wait_closed()


# ---- the cost of a plain call --------------------------------------------------------------------


async def _evalsha_calls(redis: CountingRedis) -> int:
    return redis.scripts_sent


def _greet(n: int) -> spb.InvokeRequest:
    inv = idempotent_invocation_id("Greeter", None, "greet", f"cost-{n}")
    return spb.InvokeRequest(partition=partition_of(inv.partition_key, 8), invocation_id=str(inv),
                             service="Greeter", handler="greet", body=b'"Ann"', kind=spb.HANDLER_KIND_SERVICE,
                             idempotency_key=f"cost-{n}", completion_retention_ms=60_000, wait=True)


async def test_a_plain_call_costs_exactly_two_scripts(redis_url: str, sdk_deployment: str) -> None:
    """accept + apply: one EVALSHA each, nothing else, against a real restate-sdk deployment."""
    redis = CountingRedis.from_url(redis_url, socket_timeout=5)
    scripts = counted_scripts(redis)
    deployment = Deployment(id="dp_cost", uri=sdk_deployment, protocol_mode="REQUEST_RESPONSE",
                            min_protocol_version=5, max_protocol_version=6)
    greeter = ServiceMeta(name="Greeter", ty=ServiceType.SERVICE, deployment_id=deployment.id,
                          handlers={"greet": HandlerMeta(name="greet", ty=None)})
    schema = SchemaSnapshot(version=1, services={"Greeter": greeter}, deployments={deployment.id: deployment})
    invoker = Invoker(connect_timeout_s=5.0)
    await invoker.start()
    service = PartitionService(redis, scripts, invoker, lambda: schema, 8, 4)
    owned: set[int] = set()
    for n in (1, 2):
        p = _greet(n).partition
        if p not in owned:
            tok = await scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                              args=["w1", 60_000, "127.0.0.1:1"])
            service.on_acquired(p, tok.decode())
            owned.add(p)
    try:
        warm = await service.invoke(_greet(1))  # loads the scripts (NOSCRIPT fallback) first
        assert warm.result.value == b'"Hello, Ann!"'
        before = await _evalsha_calls(redis)
        assert scripts.pipeline is not None
        batches = scripts.pipeline.batches
        resp = await service.invoke(_greet(2))
        assert resp.result.value == b'"Hello, Ann!"' and resp.result.failure_code == 0
        assert await _evalsha_calls(redis) - before == 2
        assert scripts.pipeline.batches - batches == 2  # accept, then apply: two round trips
    finally:
        await service.shutdown()
        await invoker.close()
        await redis.aclose()
