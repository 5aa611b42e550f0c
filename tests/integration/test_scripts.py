"""Each partition Lua transition against a real Redis: fencing, dedup, key locks and inboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.scripts import Scripts
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


def _id(n: int) -> str:
    return str(idempotent_invocation_id("Counter", "k", "add", f"idem-{n}"))


def _fields(svc: str = "Counter", key: str | None = "k") -> list[object]:
    f: list[object] = ["svc", svc, "hdl", "add", "kind", "exclusive", "in", b"input", "cret", 0, "att", 0]
    if key is not None:
        f += ["key", key]
    return f


async def _accept(scripts: Scripts, token: str, inv: str, kind: str = "exclusive", exec_ms: int | None = None):
    return await scripts.accept(P, token, 1000, inv, kind, "Counter", "k", exec_ms, _fields())


async def test_accept_creates_then_reports_duplicate(scripts: Scripts) -> None:
    tok = await _lease(scripts)
    first = await _accept(scripts, tok, _id(1))
    assert first.outcome == "INVOKED"
    again = await _accept(scripts, tok, _id(1))
    assert again.outcome == "DUP"
    assert again.dup_status == "invoked"


async def test_write_with_stale_fencing_token_is_refused(scripts: Scripts, redis: Redis) -> None:
    old = await _lease(scripts, "w1")
    await scripts.lease_release(keys=[keys.lease(P)], args=[old])
    new = await _lease(scripts, "w2")
    assert new != old and new.endswith("|2")
    with pytest.raises(Fenced):
        await _accept(scripts, old, _id(2))
    assert not await redis.exists(keys.invocation(P, _id(2)))
    # the same refusal holds for completions and failed-attempt records
    assert (await _accept(scripts, new, _id(3))).outcome == "INVOKED"
    with pytest.raises(Fenced):
        await scripts.complete(P, old, 2000, _id(3), "Counter", "k", 0, "", b"1", ["S", b"count", b"1"])
    with pytest.raises(Fenced):
        await scripts.attempt_failed(P, old, 2000, _id(3), False, 3000, "boom")
    assert await redis.hget(keys.invocation(P, _id(3)), "st") == b"invoked"
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_expired_lease_fences_its_former_owner(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    await redis.delete(keys.lease(P))  # what the TTL does when the owner stops renewing
    with pytest.raises(Fenced):
        await _accept(scripts, tok, _id(4))


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
    a, b, c = _id(10), _id(11), _id(12)
    assert (await _accept(scripts, tok, a)).outcome == "INVOKED"
    assert (await _accept(scripts, tok, b)).outcome == "INBOXED"
    assert (await _accept(scripts, tok, c)).outcome == "INBOXED"
    shared = await scripts.accept(P, tok, 1000, _id(13), "shared", "Counter", "k", None, _fields())
    assert shared.outcome == "INVOKED"  # shared handlers never wait for the lock

    done = await scripts.complete(P, tok, 2000, a, "Counter", "k", 0, "", b"1", ["S", b"count", b"1"])
    assert done.ok and done.next_id == b and done.next_state == {b"count": b"1"}
    assert done.next_fields is not None and done.next_fields[b"st"] == b"invoked"
    assert await redis.get(keys.lock(P, "Counter", "k")) == b.encode()

    done = await scripts.complete(P, tok, 3000, b, "Counter", "k", 0, "", b"2", ["S", b"count", b"2"])
    assert done.next_id == c
    done = await scripts.complete(P, tok, 4000, c, "Counter", "k", 0, "", b"3", ["A"])
    assert done.next_id is None
    assert not await redis.exists(keys.lock(P, "Counter", "k"))
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_completion_is_retained_only_with_a_retention(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    kept, dropped = _id(20), _id(21)
    fields = _fields()
    fields[fields.index("cret") + 1] = 60_000
    await scripts.accept(P, tok, 1000, kept, "service", "Greeter", None, None, fields)
    await scripts.accept(P, tok, 1000, dropped, "service", "Greeter", None, None, _fields())
    done = await scripts.complete(P, tok, 5000, kept, "Greeter", None, 409, "nope", b"", [])
    assert done.ok and done.expires_ms == 65_000
    st, rc, rm = await redis.hmget(keys.invocation(P, kept), "st", "rc", "rm")
    assert (st, rc, rm) == (b"completed", b"409", b"nope")
    assert 0 < await redis.pttl(keys.invocation(P, kept)) <= 60_000
    await scripts.complete(P, tok, 5000, dropped, "Greeter", None, 0, "", b"x", [])
    assert not await redis.exists(keys.invocation(P, dropped))
    assert await redis.smembers(keys.active(P)) == set()
    # completing twice is refused rather than applied twice
    again = await scripts.complete(P, tok, 6000, kept, "Greeter", None, 0, "", b"", [])
    assert not again.ok and again.status == "completed"


async def test_failed_attempt_backs_off_and_restarts(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    inv = _id(30)
    await _accept(scripts, tok, inv)
    assert await scripts.attempt_failed(P, tok, 2000, inv, False, 2500, "boom") == 1
    assert await redis.hget(keys.invocation(P, inv), "st") == b"backing-off"
    started = await scripts.attempt_start(P, tok, 2600, inv, "Counter", "k")
    assert started.outcome == "INVOKED" and started.fields is not None
    assert started.fields[b"att"] == b"1"
    assert inv.encode() in await redis.smembers(keys.active(P))


async def test_every_script_key_shares_the_partition_slot() -> None:
    from redis.crc import key_slot

    inv = _id(40)
    names = [
        keys.lease(P), keys.epoch(P), keys.invocation(P, inv), keys.active(P),
        keys.lock(P, "Counter", "a:b{c}"), keys.inbox(P, "Counter", "x"), keys.state(P, "Counter", ""),
    ]
    assert len({key_slot(n.encode()) for n in names}) == 1
