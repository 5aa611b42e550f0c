"""Each partition Lua transition against a real Redis: fencing, dedup, key locks and inboxes,
journals, suspension and wake-up, promises, timers and the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from partition import keys, protocol
from partition.effects import decode_outbox
from partition.errors import Fenced
from partition.protocol import MessageType as T
from partition.scripts import Scripts, Target
from partition.sharding import idempotent_invocation_id

P = 3


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


async def _lease(scripts: Scripts, worker: str = "w1") -> str:
    tok = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P)], args=[worker, 5000])
    assert tok is not None
    return tok.decode()


def _t(n: int, service: str = "Counter", key: str | None = "k") -> Target:
    return Target(P, str(idempotent_invocation_id(service, key, "add", f"idem-{n}")), service, key)


def _fields(kind: str = "exclusive", cret: int = 0, key: str | None = "k") -> list[object]:
    f: list[object] = ["svc", "Counter", "hdl", "add", "kind", kind, "in", b"input", "cret", cret, "att", 0]
    if key is not None:
        f += ["key", key]
    return f


async def _accept(scripts: Scripts, token: str, t: Target, kind: str = "exclusive", exec_ms: int | None = None,
                  parent: str = "", cret: int = 0):
    return await scripts.accept(t, token, 1000, kind, exec_ms, parent, _fields(kind, cret, t.key))


def _end(rc: int = 0, rm: str = "", rv: bytes = b"") -> list[object]:
    return ["END", rc, rm, rv]


async def test_accept_creates_then_reports_duplicate(scripts: Scripts) -> None:
    tok = await _lease(scripts)
    first = await _accept(scripts, tok, _t(1))
    assert first.outcome == "INVOKED"
    again = await _accept(scripts, tok, _t(1))
    assert again.outcome == "DUP" and again.dup_status == "invoked"


async def test_write_with_stale_fencing_token_is_refused(scripts: Scripts, redis: Redis) -> None:
    old = await _lease(scripts, "w1")
    await scripts.lease_release(keys=[keys.lease(P)], args=[old])
    new = await _lease(scripts, "w2")
    assert new != old and new.endswith("|2")
    with pytest.raises(Fenced):
        await _accept(scripts, old, _t(2))
    assert not await redis.exists(keys.invocation(P, _t(2).invocation_id))
    t3 = _t(3)
    assert (await _accept(scripts, new, t3)).outcome == "INVOKED"
    with pytest.raises(Fenced):
        await scripts.apply(t3, old, 2000, 0, _end(rv=b"1"), 0, ["S", b"count", b"1"])
    with pytest.raises(Fenced):
        await scripts.notify(P, t3.invocation_id, old, 2000, "s1", b"frame")
    with pytest.raises(Fenced):
        await scripts.attempt_start(t3, old, 2000)
    assert await redis.hget(keys.invocation(P, t3.invocation_id), "st") == b"invoked"
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_expired_lease_fences_its_former_owner(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    await redis.delete(keys.lease(P))  # what the TTL does when the owner stops renewing
    with pytest.raises(Fenced):
        await _accept(scripts, tok, _t(4))


async def test_lease_is_exclusive_and_epoch_grows(scripts: Scripts) -> None:
    tok = await _lease(scripts, "w1")
    assert await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P)], args=["w2", 5000]) is None
    assert await scripts.lease_renew(keys=[keys.lease(P)], args=[tok, 5000]) == 1
    assert await scripts.lease_renew(keys=[keys.lease(P)], args=["w2|9", 5000]) == 0
    assert await scripts.lease_release(keys=[keys.lease(P)], args=[tok]) == 1
    tok2 = await _lease(scripts, "w2")
    assert int(tok2.split("|")[1]) == int(tok.split("|")[1]) + 1


async def test_exclusive_invocations_queue_and_hand_over_the_lock(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    a, b, c = _t(10), _t(11), _t(12)
    assert (await _accept(scripts, tok, a)).outcome == "INVOKED"
    assert (await _accept(scripts, tok, b)).outcome == "INBOXED"
    assert (await _accept(scripts, tok, c)).outcome == "INBOXED"
    assert (await _accept(scripts, tok, _t(13), "shared")).outcome == "INVOKED"  # shared never waits

    done = await scripts.apply(a, tok, 2000, 0, _end(rv=b"1"), 0, ["S", b"count", b"1"])
    assert done.outcome == "OK" and done.next_id == b.invocation_id and done.next_state == {b"count": b"1"}
    assert done.next_fields is not None and done.next_fields[b"st"] == b"invoked"
    assert await redis.get(keys.lock(P, "Counter", "k")) == b.invocation_id.encode()
    done = await scripts.apply(b, tok, 3000, 0, _end(rv=b"2"), 0, ["S", b"count", b"2"])
    assert done.next_id == c.invocation_id
    done = await scripts.apply(c, tok, 4000, 0, _end(rv=b"3"), 0, ["A"])
    assert done.next_id is None
    assert not await redis.exists(keys.lock(P, "Counter", "k"))
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_completion_is_retained_only_with_a_retention(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    kept, dropped = _t(20, "Greeter", None), _t(21, "Greeter", None)
    await _accept(scripts, tok, kept, "service", cret=60_000)
    await _accept(scripts, tok, dropped, "service")
    done = await scripts.apply(kept, tok, 5000, 0, _end(409, "nope"), 0, [])
    assert done.outcome == "OK" and done.expires_ms == 65_000
    st, rc, rm = await redis.hmget(keys.invocation(P, kept.invocation_id), "st", "rc", "rm")
    assert (st, rc, rm) == (b"completed", b"409", b"nope")
    assert 0 < await redis.pttl(keys.invocation(P, kept.invocation_id)) <= 60_000
    await scripts.apply(dropped, tok, 5000, 0, _end(rv=b"x"), 0, [])
    assert not await redis.exists(keys.invocation(P, dropped.invocation_id))
    assert await redis.smembers(keys.active(P)) == set()
    again = await scripts.apply(kept, tok, 6000, 0, _end(), 0, [])
    assert again.outcome == "BAD_STATE" and again.status == "completed"


def _sleep_frame(cid: int) -> bytes:
    return protocol.notification(T.SLEEP_COMPLETION, completion_id=cid, void=True)


async def test_suspension_waits_and_a_notification_wakes_it(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(30)
    await _accept(scripts, tok, t)
    applied = await scripts.apply(t, tok, 2000, 0, ["SUSPEND", " c1 s1 "], 0,
                                  ["J", b"sleep-cmd", "T", 5000, f"w|{t.invocation_id}|1"])
    assert applied.outcome == "SUSPENDED"
    inv = keys.invocation(P, t.invocation_id)
    assert await redis.hget(inv, "st") == b"suspended"
    assert t.invocation_id.encode() not in await redis.smembers(keys.active(P))
    assert await redis.get(keys.lock(P, "Counter", "k")) == t.invocation_id.encode()  # keeps the lock
    member = f"w|{t.invocation_id}|1"
    assert await redis.zscore(keys.timers(P), member) == 5000
    woken = await scripts.notify(P, t.invocation_id, tok, 5000, "c1", _sleep_frame(1), member)
    assert woken.outcome == "WOKEN" and woken.target == t  # the keys to restart it come along
    again = await scripts.notify(P, t.invocation_id, tok, 5000, "c1", _sleep_frame(1), member)
    assert again.outcome == "DUP"
    assert await redis.zscore(keys.timers(P), member) is None
    started = await scripts.attempt_start(t, tok, 5001)
    assert started.outcome == "INVOKED"
    assert started.journal == [b"sleep-cmd", _sleep_frame(1)]


async def test_suspension_on_an_existing_notification_resumes_at_once(scripts: Scripts) -> None:
    """No lost wake-up: a notification stored before the suspension resumes it immediately."""
    tok = await _lease(scripts)
    t = _t(31)
    await _accept(scripts, tok, t)
    run_note = protocol.notification(T.RUN_COMPLETION, completion_id=1, value=b"42")
    applied = await scripts.apply(t, tok, 2000, 0, ["SUSPEND", " c1 s1 "], 0,
                                  ["J", b"run-cmd", "N", "c1", run_note])
    assert applied.outcome == "RESUME" and applied.new_entries == [b"run-cmd", run_note]


async def test_failed_attempt_backs_off_on_a_timer(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(32)
    await _accept(scripts, tok, t)
    applied = await scripts.apply(t, tok, 2000, 0, ["ERROR", "backing-off", 2500, "boom"], 1, ["J", b"run-cmd"])
    assert applied.outcome == "BACKOFF"
    assert await redis.zscore(keys.timers(P), f"r|{t.invocation_id}") == 2500
    started = await scripts.attempt_start(t, tok, 2600, f"r|{t.invocation_id}")
    assert started.outcome == "INVOKED" and started.fields is not None
    assert started.fields[b"att"] == b"1" and started.journal == [b"run-cmd"]
    assert await redis.zscore(keys.timers(P), f"r|{t.invocation_id}") is None


async def test_promise_completion_wakes_the_waiting_run(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    run = Target(P, str(idempotent_invocation_id("Signup", "w", "run", "x")), "Signup", "w")
    approve = Target(P, str(idempotent_invocation_id("Signup", "w", "approve", "y")), "Signup", "w")
    await scripts.accept(run, tok, 1000, "workflow", None, "", _fields("workflow", key="w"))
    await scripts.accept(approve, tok, 1000, "shared", None, "", _fields("shared", key="w"))
    waiting = await scripts.apply(run, tok, 2000, 0, ["SUSPEND", " c1 s1 "], 0, ["J", b"get", "PG", "ok", "1"])
    assert waiting.outcome == "SUSPENDED"
    value = b'\x2a\x05\x0a\x03"y"'  # NotificationTemplate.value = Value{content='"y"'}
    failure = b"\x32\x02\x08\x01"
    done = await scripts.apply(approve, tok, 3000, 0, ["SUSPEND", " c1 s1 "], 0,
                               ["J", b"complete", "PC", "ok", "1", value, failure])
    assert done.outcome == "RESUME" and done.woken == [run.invocation_id]
    expected = protocol.notification(T.GET_PROMISE_COMPLETION, completion_id=1, value=b'"y"')
    started = await scripts.attempt_start(run, tok, 3001)
    assert started.journal == [b"get", expected]
    # a second completion fails with the given failure instead of overwriting
    again = await scripts.apply(approve, tok, 3002, 2, ["SUSPEND", " c2 "], 0,
                                ["J", b"complete2", "PC", "ok", "2", b"\x2a\x00", failure])
    assert again.outcome == "RESUME"
    assert again.new_entries[-1] == protocol.notification(
        T.COMPLETE_PROMISE_COMPLETION, completion_id=2, failure=(1, ""))


async def test_child_result_is_queued_for_its_parent(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    child = _t(40, "Greeter", None)
    await _accept(scripts, tok, child, "service", parent="inv_1parent|7|2,")
    done = await scripts.apply(child, tok, 2000, 0, _end(rv=b'"hi"'), 0, [])
    assert done.parents_notified == 1
    msg = decode_outbox((await redis.lrange(keys.outbox(P), 0, -1))[0]).notify
    assert (msg.partition, msg.invocation_id, msg.key) == (7, "inv_1parent", "c2")
    assert msg.frame == protocol.notification(T.CALL_COMPLETION, completion_id=2, value=b'"hi"')
    assert await scripts.outbox_ack(P, tok, 1)
    assert await redis.llen(keys.outbox(P)) == 0


async def test_scheduled_invocation_waits_for_its_timer(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(50)
    assert (await _accept(scripts, tok, t, exec_ms=9000)).outcome == "SCHEDULED"
    assert await redis.zscore(keys.timers(P), f"s|{t.invocation_id}") == 9000
    started = await scripts.attempt_start(t, tok, 9001, f"s|{t.invocation_id}")
    assert started.outcome == "INVOKED"
    assert await redis.get(keys.lock(P, "Counter", "k")) == t.invocation_id.encode()


async def test_every_script_key_shares_the_partition_slot() -> None:
    from redis.crc import key_slot

    inv = _t(60).invocation_id
    names = [
        keys.lease(P), keys.epoch(P), keys.invocation(P, inv), keys.active(P), keys.lock(P, "Counter", "a:b{c}"),
        keys.inbox(P, "Counter", "x"), keys.state(P, "Counter", ""), keys.journal(P, inv), keys.timers(P),
        keys.outbox(P), keys.promises(P, "Signup", "w"), keys.promise_waiters(P, "Signup", "w"),
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
    await scripts.accept(waiter, tok, 1000, "shared", None, "", _fields("shared", cret=60_000, key="w"))
    await scripts.accept(done, tok, 1000, "shared", None, "", _fields("shared", key="w"))
    # the waiter registers for the promise, then finishes without awaiting it
    await scripts.apply(waiter, tok, 2000, 0, ["END", 0, "", b""], 0, ["PG", "ok", "1"])
    applied = await scripts.apply(done, tok, 3000, 0, ["END", 0, "", b""], 0,
                                  ["PC", "ok", "1", b"\x2a\x00", b"\x32\x02\x08\x01"])
    assert applied.woken == []
    assert not await redis.exists(keys.journal(P, waiter.invocation_id))
    assert not await redis.hexists(keys.invocation(P, waiter.invocation_id), "n:c1")


async def test_workflow_end_expires_its_promise_waiters(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    run = Target(P, str(idempotent_invocation_id("Signup", "w2", "run", "x")), "Signup", "w2")
    await scripts.accept(run, tok, 1000, "workflow", None, "", _fields("workflow", cret=60_000, key="w2"))
    await scripts.apply(run, tok, 2000, 0, ["END", 0, "", b""], 0, ["PG", "never", "1"])
    ttl = await redis.pttl(keys.promise_waiters(P, "Signup", "w2"))
    assert 0 < ttl <= 60_000


async def test_outbox_reports_more_work_after_a_full_batch(scripts: Scripts, redis: Redis) -> None:
    from partition.effects import encode_outbox_notify
    from partition.outbox import BATCH, PartitionOutbox

    tok = await _lease(scripts)
    for i in range(BATCH + 10):
        await redis.rpush(keys.outbox(P), encode_outbox_notify(1, f"inv-{i}", "c1", b"f"))
    delivered: list[str] = []

    async def deliver(msg: object) -> None:
        delivered.append(msg.notify.invocation_id)  # type: ignore[attr-defined]

    outbox = PartitionOutbox(redis, scripts, P, tok, deliver)
    done, pending = await outbox._drain()
    assert (done, pending > 0) == (BATCH, True)
    done, pending = await outbox._drain()
    assert (done, pending) == (10, 0)
    assert delivered == [f"inv-{i}" for i in range(BATCH + 10)]
