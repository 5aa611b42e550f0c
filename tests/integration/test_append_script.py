"""`append`, the transition that stores a live (bidirectional) attempt's entries while it goes on,
against a real Redis: fencing, the status and sequence checks, exactly-once retries, the
notifications it hands back, the pin and the attempt counter, and every op type."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.invocation import HandlerKind, InvocationRecord, PinnedDeployment, Result, Status
from partition.outbox_codec import decode_outbox, encode_outbox_notify
from partition.scripts import APPEND_FIRST_OP, Scripts, Target, _attempt_keys
from partition.transition import (
    OP_TYPES,
    AddTimer,
    AppendOutcome,
    ApplyOutcome,
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
    Suspend,
)
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.sharding import idempotent_invocation_id
from tests.integration.conftest import lease_token

P = 5
PIN = PinnedDeployment("dp_1first", 5)


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


async def _lease(scripts: Scripts, worker: str = "w1") -> str:
    return await lease_token(scripts, P, worker)


def _t(n: int, service: str = "Counter", key: str | None = "k") -> Target:
    return Target(P, str(idempotent_invocation_id(service, key, "add", f"append-{n}")), service, key)


async def _invoked(scripts: Scripts, token: str, t: Target, kind: HandlerKind = HandlerKind.EXCLUSIVE,
                   attempts: int = 0, cret: int = 0) -> None:
    record = InvocationRecord(status=Status.INVOKED, service=t.service, handler="add", kind=kind, key=t.key,
                              input_frame=b"input", attempts=attempts, completion_retention_ms=cret,
                              last_growth_ms=1000)
    assert (await scripts.accept(t, token, record)).outcome == "INVOKED"


def _run_note(cid: int, value: bytes) -> bytes:
    return protocol.notification(T.RUN_COMPLETION, completion_id=cid, value=value)


def _sleep_note(cid: int) -> bytes:
    return protocol.notification(T.SLEEP_COMPLETION, completion_id=cid, void=True)


def _cmd(name: str) -> bytes:
    """A command frame (its payload is opaque to the scripts)."""
    return protocol.encode_frame(T.RUN_COMMAND, name.encode())


async def _journal(redis: Redis, t: Target) -> list[bytes]:
    return await redis.lrange(keys.journal(P, t.invocation_id), 0, -1)


async def _field(redis: Redis, t: Target, name: str) -> bytes | None:
    return await redis.hget(keys.invocation(P, t.invocation_id), name)


async def test_appends_go_on_in_order_and_hand_back_their_notifications(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(1)
    await _invoked(scripts, tok, t)
    first = await scripts.append(t, tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("a")),
                                                            NotificationEntry("c1", _run_note(1, b"1"))])
    assert first.outcome is AppendOutcome.APPENDED
    assert first.journal_len == 2 and first.notes == [(1, _run_note(1, b"1"))]
    second = await scripts.append(t, tok, 2100, 2, "n1", 2, [JournalEntry(_cmd("b"))])
    assert second.outcome is AppendOutcome.APPENDED and second.journal_len == 3 and second.notes == []
    assert await _journal(redis, t) == [_cmd("a"), _run_note(1, b"1"), _cmd("b")]
    assert await _field(redis, t, "st") == b"invoked"  # the attempt goes on
    assert t.invocation_id.encode() in await redis.smembers(keys.active(P))
    assert await _field(redis, t, "ss") == b"n1|2"


async def test_a_retried_append_is_stored_once(scripts: Scripts, redis: Redis) -> None:
    """A lost reply makes the driver send the same append again: DUP, nothing pushed twice."""
    tok = await _lease(scripts)
    t = _t(2)
    await _invoked(scripts, tok, t)
    ops = [JournalEntry(_cmd("a")), NotificationEntry("c1", _run_note(1, b"1")), SetState(b"n", b"1")]
    first = await scripts.append(t, tok, 2000, 0, "n1", 1, ops)
    again = await scripts.append(t, tok, 2001, 0, "n1", 1, ops)
    assert again.outcome is AppendOutcome.DUP
    assert again.journal_len == first.journal_len == 2 and again.notes == first.notes
    assert await _journal(redis, t) == [_cmd("a"), _run_note(1, b"1")]
    assert await redis.hgetall(keys.state(P, "Counter", "k")) == {b"n": b"1"}


async def test_a_gap_or_a_superseded_attempt_stores_nothing(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(3)
    await _invoked(scripts, tok, t)
    gap = await scripts.append(t, tok, 2000, 0, "n1", 2, [JournalEntry(_cmd("x"))])
    assert gap.outcome is AppendOutcome.BAD_STATE and gap.status is Status.INVOKED
    assert await _journal(redis, t) == []
    await scripts.append(t, tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("a"))])
    # a new attempt starts its own sequence; the old one's next append is refused
    assert (await scripts.append(t, tok, 2100, 1, "n2", 1, [JournalEntry(_cmd("b"))])).outcome == "APPENDED"
    stale = await scripts.append(t, tok, 2200, 1, "n1", 2, [JournalEntry(_cmd("late"))])
    assert stale.outcome is AppendOutcome.BAD_STATE
    skipped = await scripts.append(t, tok, 2200, 2, "n2", 3, [JournalEntry(_cmd("late"))])
    assert skipped.outcome is AppendOutcome.BAD_STATE
    assert await _journal(redis, t) == [_cmd("a"), _cmd("b")]


async def test_an_invocation_that_is_not_invoked_takes_no_append(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    missing = await scripts.append(_t(40), tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("a"))])
    assert missing.outcome is AppendOutcome.BAD_STATE and missing.status is None
    t = _t(4)
    await _invoked(scripts, tok, t)
    suspended = await scripts.apply(t, tok, 2000, 0, Suspend(" c1 "), 0, [JournalEntry(_cmd("sleep"))])
    assert suspended.outcome == "SUSPENDED"
    refused = await scripts.append(t, tok, 2100, 1, "n1", 1, [JournalEntry(_cmd("b"))])
    assert refused.outcome is AppendOutcome.BAD_STATE and refused.status is Status.SUSPENDED
    assert await _journal(redis, t) == [_cmd("sleep")]
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_a_stale_token_is_fenced(scripts: Scripts, redis: Redis) -> None:
    old = await _lease(scripts, "w1")
    t = _t(5)
    await _invoked(scripts, old, t)
    await scripts.lease_release(keys=[keys.lease(P), keys.route(P)], args=[old, "127.0.0.1:1"])
    await _lease(scripts, "w2")
    with pytest.raises(Fenced):
        await scripts.append(t, old, 2000, 0, "n1", 1, [JournalEntry(_cmd("a")), SetState(b"n", b"1")])
    assert await _journal(redis, t) == []
    assert await _field(redis, t, "ss") is None
    assert not await redis.exists(keys.state(P, "Counter", "k"))


async def test_notifications_other_transitions_appended_come_back_in_journal_order(
        scripts: Scripts, redis: Redis) -> None:
    """What a timer, a signal or a promise completion appended while the stream was open reaches
    the attempt through the next append's reply, with its index; commands do not come back."""
    tok = await _lease(scripts)
    t = _t(6)
    await _invoked(scripts, tok, t)
    await scripts.append(t, tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("sleep"))])
    assert (await scripts.notify(P, t.invocation_id, tok, "c1", _sleep_note(1))).outcome == "APPLIED"
    reply = await scripts.append(t, tok, 2100, 1, "n1", 2, [JournalEntry(_cmd("run")),
                                                             NotificationEntry("c2", _run_note(2, b"r"))])
    assert reply.notes == [(1, _sleep_note(1)), (3, _run_note(2, b"r"))]
    assert reply.journal_len == 4
    assert await _journal(redis, t) == [_cmd("sleep"), _sleep_note(1), _cmd("run"), _run_note(2, b"r")]


async def test_the_first_entry_pins_the_deployment_and_resets_the_failures(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(7)
    await _invoked(scripts, tok, t, attempts=3)
    nothing = await scripts.append(t, tok, 2000, 0, "n1", 1, [SetState(b"s", b"1")], pin=PIN)
    assert nothing.outcome is AppendOutcome.APPENDED
    assert await _field(redis, t, "dp") is None  # no entry stored: not pinned yet
    assert await _field(redis, t, "att") == b"3"
    await scripts.append(t, tok, 2500, 0, "n1", 2, [JournalEntry(_cmd("a"))], pin=PIN)
    assert await _field(redis, t, "dp") == b"dp_1first" and await _field(redis, t, "pv") == b"5"
    assert await _field(redis, t, "att") == b"0"
    assert await _field(redis, t, "lg") == b"2500"
    await scripts.append(t, tok, 2600, 1, "n1", 3, [JournalEntry(_cmd("b"))],
                         pin=PinnedDeployment("dp_1other", 6))
    assert await _field(redis, t, "dp") == b"dp_1first"  # the first pin stays


async def test_apply_finishes_a_live_attempt_and_the_completed_hash_forgets_the_sequence(
        scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(8)
    await _invoked(scripts, tok, t, cret=60_000)
    await scripts.append(t, tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("a")), SetState(b"n", b"2")])
    done = await scripts.apply(t, tok, 3000, 1, End(Result(0, "", b"ok")), 0, [JournalEntry(_cmd("out"))])
    assert done.outcome is ApplyOutcome.COMPLETED
    assert await _field(redis, t, "ss") is None
    stored = await scripts.result_of(P, t.invocation_id)
    assert stored is not None and stored.result == Result(0, "", b"ok")
    late = await scripts.append(t, tok, 3100, 2, "n1", 2, [JournalEntry(_cmd("late"))])
    assert late.outcome is AppendOutcome.BAD_STATE and late.status is Status.COMPLETED


async def test_a_failed_apply_after_appends_keeps_what_they_stored(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(9)
    await _invoked(scripts, tok, t)
    await scripts.append(t, tok, 2000, 0, "n1", 1, [JournalEntry(_cmd("a")), NotificationEntry("c1", _run_note(1, b"1"))])
    failed = await scripts.apply(t, tok, 2500, 2, AttemptFailed(Status.BACKING_OFF, 3000, "boom"), 1, [])
    assert failed.outcome == "BACKOFF"
    started = await scripts.attempt_start(t, tok, f"r|{t.invocation_id}")
    assert started.journal == [_cmd("a"), _run_note(1, b"1")]


async def test_one_append_takes_every_op_type(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    wf = Target(P, str(idempotent_invocation_id("Signup", "w1", "run", "x")), "Signup", "w1")
    waiter = Target(P, str(idempotent_invocation_id("Signup", "w1", "status", "y")), "Signup", "w1")
    await _invoked(scripts, tok, wf, HandlerKind.WORKFLOW)
    await _invoked(scripts, tok, waiter, HandlerKind.SHARED)
    parked = await scripts.apply(waiter, tok, 1500, 0, Suspend(" c1 "), 0, [JournalEntry(_cmd("get")),
                                                                             GetPromise("p", 1)])
    assert parked.outcome == "SUSPENDED"
    member = keys.timer_member(keys.TimerKind.WAKE, wf.invocation_id, 9)
    ops = [JournalEntry(_cmd("cmd")), NotificationEntry("c1", _run_note(1, b"n")), SetState(b"a", b"1"),
           SetState(b"b", b"2"), ClearState(b"a"), ClearAllState(), SetState(b"c", b"3"), AddTimer(7000, member),
           OutboxEntry(encode_outbox_notify(1, "inv_1other", "s1", b"sig")), GetPromise("p", 2),
           CompletePromise("p", 3, Result(0, "", b"v").encode()), PeekPromise("p", 4),
           PromiseExpiry(wf.invocation_id, 1000)]
    assert {type(op) for op in ops} == set(OP_TYPES)
    reply = await scripts.append(wf, tok, 2000, 0, "n1", 1, ops)
    assert reply.outcome is AppendOutcome.APPENDED
    assert reply.woken == [waiter.invocation_id]  # the suspended waiter got the promise's value
    assert await _field(redis, waiter, "st") == b"invoked"
    assert await redis.hgetall(keys.state(P, "Signup", "w1")) == {b"c": b"3"}
    assert await redis.zscore(keys.timers(P), member) == 7000
    assert decode_outbox((await redis.lrange(keys.outbox(P), 0, -1))[0]).notify.key == "s1"
    journal = await _journal(redis, wf)
    assert journal[:2] == [_cmd("cmd"), _run_note(1, b"n")]
    assert protocol.notification(T.GET_PROMISE_COMPLETION, completion_id=2, value=b"v") in journal
    # every notification of the journal came back, with its index; the commands did not
    assert [i for i, _ in reply.notes] == [i for i, e in enumerate(journal) if 0x80 <= e[0] < 0xFC]
    assert _cmd("cmd") not in [frame for _, frame in reply.notes]


async def test_an_unknown_op_changes_nothing(scripts: Scripts, redis: Redis) -> None:
    tok = await _lease(scripts)
    t = _t(10)
    await _invoked(scripts, tok, t)
    args = [tok, t.invocation_id, 2000, 0, "n1", keys.invocation_prefix(P), keys.journal_prefix(P), 1, "", ""]
    assert len(args) + 1 == APPEND_FIRST_OP
    script = scripts._scripts["append"]
    with pytest.raises(Exception, match="append: unknown op"):
        await script(keys=_attempt_keys(t), args=[*args, "J", _cmd("a"), "??"])
    assert await _journal(redis, t) == []
    assert await _field(redis, t, "ss") is None


async def test_an_attempt_that_does_not_know_a_stored_command_is_refused(scripts: Scripts, redis: Redis) -> None:
    """A stale attempt (its cursor is behind a command another attempt stored) stores nothing:
    its commands would interleave with the other's."""
    tok = await _lease(scripts)
    t = _t(11)
    await _invoked(scripts, tok, t)
    await scripts.append(t, tok, 2000, 0, "n2", 1, [JournalEntry(_cmd("newer"))])
    stale = await scripts.append(t, tok, 2100, 0, "n1", 1, [JournalEntry(_cmd("older"))])
    assert stale.outcome is AppendOutcome.BAD_STATE and stale.status is Status.INVOKED
    assert await _journal(redis, t) == [_cmd("newer")]
