"""The lifecycle commands as Lua transitions against a real Redis: kill, cancel, purge, pause and
resume, each one fenced script. Every status change they make is a row of the lifecycle table
(`invocation.allowed`), and a command that does not apply writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.invocation import CANCELLED, KILLED, HandlerKind, InvocationRecord, Result, Status, allowed
from partition.outbox_codec import decode_outbox
from partition.scripts import CANCEL_FRAME, CANCEL_NOTE_KEY, Managed, Scripts, Target
from partition.transition import AttemptFailed, End, ManageOutcome, Suspend
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.sharding import idempotent_invocation_id

P = 5
NOW_MS = 10_000
RETAIN_MS = 60_000
PARENT = "inv_1parentAAAAAAAAAAAAAAAAAAAAAAAAAA|2|7,"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def scripts(redis: Redis) -> Scripts:
    return Scripts(redis)


@pytest.fixture
async def tok(scripts: Scripts) -> str:
    raw = await scripts.lease_acquire(keys=[keys.lease(P), keys.epoch(P), keys.route(P)],
                                      args=["w1", 5000, "127.0.0.1:1"])
    assert raw is not None
    return str(raw.decode())


def _t(n: int, service: str = "Counter", key: str | None = "k") -> Target:
    return Target(P, str(idempotent_invocation_id(service, key, "add", f"life-{n}")), service, key)


async def _accept(scripts: Scripts, tok: str, t: Target, kind: HandlerKind = HandlerKind.EXCLUSIVE,
                  exec_ms: int | None = None, parent: str = "", cret: int = RETAIN_MS) -> None:
    record = InvocationRecord(
        status=Status.INVOKED if exec_ms is None else Status.SCHEDULED, service=t.service, handler="add",
        kind=kind, key=t.key, input_frame=b"input", completion_retention_ms=cret, execution_time_ms=exec_ms,
        parents=parent, last_growth_ms=1000,
    )
    await scripts.accept(t, tok, record)


async def _status(redis: Redis, t: Target) -> Status | None:
    raw: Any = await redis.hget(keys.invocation(P, t.invocation_id), "st")
    return None if raw is None else Status(raw.decode())


async def _checked(redis: Redis, t: Target, command: object) -> Managed:
    """Run a command (an awaitable) and check the status change it made is a lifecycle row."""
    before = await _status(redis, t)
    managed = await command  # type: ignore[misc]
    assert isinstance(managed, Managed)
    after = await _status(redis, t)
    assert managed.status == before
    assert allowed(before, after), f"{before} -> {after} is no lifecycle row"
    return managed


async def _stored_result(redis: Redis, t: Target) -> Result:
    raw: Any = await redis.hget(keys.invocation(P, t.invocation_id), "res")
    return Result.decode(raw)


def _outbox_failures(raw: list[Any]) -> list[tuple[str, int, str]]:
    """(target invocation, failure code, message) of every notify entry in the outbox."""
    out = []
    for entry in raw:
        msg = decode_outbox(entry)
        frame = protocol.decode_frames(msg.notify.frame)[0]
        note: Any = protocol.parse_message(frame)
        out.append((msg.notify.invocation_id, note.failure.code, note.failure.message))
    return out


# ---- kill ------------------------------------------------------------------------------------------


async def test_kill_completes_with_killed_and_hands_the_lock_to_the_inbox_head(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    first, second = _t(1), _t(2)
    await _accept(scripts, tok, first, parent=PARENT)
    await _accept(scripts, tok, second)
    assert await _status(redis, second) is Status.INBOXED
    await redis.rpush(keys.journal(P, first.invocation_id), b"entry")
    killed = await _checked(redis, first, scripts.kill(first, tok, NOW_MS))
    assert (killed.outcome, killed.status) == (ManageOutcome.DONE, Status.INVOKED)
    assert killed.expires_ms == NOW_MS + RETAIN_MS and killed.parents_notified == 1
    assert await _status(redis, first) is Status.COMPLETED
    assert await _stored_result(redis, first) == KILLED
    assert not await redis.exists(keys.journal(P, first.invocation_id))
    # the inbox head got the key's lock and is invoked
    assert killed.next_id == second.invocation_id and killed.next_record is not None
    assert killed.next_record.status is Status.INVOKED
    assert await redis.get(keys.lock(P, "Counter", "k")) == second.invocation_id.encode()
    assert await redis.smembers(keys.active(P)) == {second.invocation_id.encode()}
    # the waiting parent is answered with the killed failure
    assert _outbox_failures(await redis.lrange(keys.outbox(P), 0, -1)) == [
        ("inv_1parentAAAAAAAAAAAAAAAAAAAAAAAAAA", 409, "killed")]


async def test_kill_of_a_never_started_invocation_removes_it_and_answers_its_parent(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    holder, inboxed, scheduled = _t(3), _t(4), _t(5, key="other")
    await _accept(scripts, tok, holder)
    await _accept(scripts, tok, inboxed, parent=PARENT)
    await _accept(scripts, tok, scheduled, exec_ms=NOW_MS * 100)
    for t, st in ((inboxed, Status.INBOXED), (scheduled, Status.SCHEDULED)):
        killed = await _checked(redis, t, scripts.kill(t, tok, NOW_MS))
        assert (killed.outcome, killed.status, killed.next_id, killed.expires_ms) == (
            ManageOutcome.DONE, st, None, None)
        assert not await redis.exists(keys.invocation(P, t.invocation_id))  # nothing kept: output is 404
    assert await redis.lrange(keys.inbox(P, "Counter", "k"), 0, -1) == []
    assert await redis.zcard(keys.timers(P)) == 0
    assert await redis.zrange(keys.invocation_index(P), 0, -1) == [holder.invocation_id.encode()]  # /query
    assert await redis.get(keys.lock(P, "Counter", "k")) == holder.invocation_id.encode()  # untouched
    assert _outbox_failures(await redis.lrange(keys.outbox(P), 0, -1)) == [
        ("inv_1parentAAAAAAAAAAAAAAAAAAAAAAAAAA", 409, "killed")]


async def test_kill_without_retention_deletes_the_invocation(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(6)
    await _accept(scripts, tok, t, cret=0)
    killed = await scripts.kill(t, tok, NOW_MS)
    assert killed.outcome is ManageOutcome.DONE and killed.expires_ms is None
    assert not await redis.exists(keys.invocation(P, t.invocation_id))
    assert not await redis.exists(keys.lock(P, "Counter", "k"))


async def test_commands_that_do_not_apply_write_nothing(scripts: Scripts, redis: Redis, tok: str) -> None:
    done, unknown = _t(7), _t(8)
    await _accept(scripts, tok, done)
    await scripts.apply(done, tok, NOW_MS, 0, End(Result(0, "", b"1")), 0, [])
    before = await redis.hgetall(keys.invocation(P, done.invocation_id))
    for command, expected in ((scripts.kill(done, tok, NOW_MS), ManageOutcome.COMPLETED),
                              (scripts.cancel(done, tok), ManageOutcome.COMPLETED),
                              (scripts.pause(P, done.invocation_id, tok), ManageOutcome.COMPLETED),
                              (scripts.resume(P, done.invocation_id, tok), ManageOutcome.COMPLETED)):
        assert (await command).outcome is expected
    assert await redis.hgetall(keys.invocation(P, done.invocation_id)) == before
    for command in (scripts.kill(unknown, tok, NOW_MS), scripts.cancel(unknown, tok), scripts.purge(unknown, tok),
                    scripts.pause(P, unknown.invocation_id, tok), scripts.resume(P, unknown.invocation_id, tok)):
        managed = await command
        assert (managed.outcome, managed.status) == (ManageOutcome.NOT_FOUND, None)
    assert not await redis.exists(keys.invocation(P, unknown.invocation_id))


async def test_every_command_is_fenced(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(9)
    await _accept(scripts, tok, t)
    await scripts.lease_release(keys=[keys.lease(P), keys.route(P)], args=[tok, "127.0.0.1:1"])
    for command in (scripts.kill(t, tok, NOW_MS), scripts.cancel(t, tok), scripts.purge(t, tok),
                    scripts.pause(P, t.invocation_id, tok), scripts.resume(P, t.invocation_id, tok)):
        with pytest.raises(Fenced):
            await command
    assert await _status(redis, t) is Status.INVOKED


# ---- cancel ----------------------------------------------------------------------------------------


async def test_cancel_of_a_scheduled_invocation_removes_it_and_answers_its_parent(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(10, service="Greeter", key=None)
    await _accept(scripts, tok, t, kind=HandlerKind.SERVICE, exec_ms=NOW_MS * 100, parent=PARENT)
    cancelled = await _checked(redis, t, scripts.cancel(t, tok))
    assert (cancelled.outcome, cancelled.status, cancelled.parents_notified) == (
        ManageOutcome.DONE, Status.SCHEDULED, 1)
    assert not await redis.exists(keys.invocation(P, t.invocation_id))  # nothing kept: output is 404
    assert await redis.zcard(keys.timers(P)) == 0  # it never runs
    assert await redis.zcard(keys.invocation_index(P)) == 0  # /query does not list it
    assert _outbox_failures(await redis.lrange(keys.outbox(P), 0, -1)) == [
        ("inv_1parentAAAAAAAAAAAAAAAAAAAAAAAAAA", CANCELLED.code, CANCELLED.message)]


async def test_cancel_of_an_inboxed_invocation_removes_it_from_the_inbox(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    holder, inboxed, last = _t(11), _t(12), _t(13)
    for t in (holder, inboxed, last):
        await _accept(scripts, tok, t)
    cancelled = await _checked(redis, inboxed, scripts.cancel(inboxed, tok))
    assert (cancelled.outcome, cancelled.status) == (ManageOutcome.DONE, Status.INBOXED)
    assert await redis.lrange(keys.inbox(P, "Counter", "k"), 0, -1) == [last.invocation_id.encode()]
    # the holder's END hands the lock to the next one still inboxed
    applied = await scripts.apply(holder, tok, NOW_MS, 0, End(Result(0, "", b"1")), 0, [])
    assert applied.next_id == last.invocation_id


async def test_cancel_of_a_running_invocation_appends_the_signal_once(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(14)
    await _accept(scripts, tok, t)
    first = await _checked(redis, t, scripts.cancel(t, tok))
    again = await scripts.cancel(t, tok)
    assert (first.outcome, first.woken, again.outcome) == (ManageOutcome.APPENDED, False, ManageOutcome.APPENDED)
    assert await redis.lrange(keys.journal(P, t.invocation_id), 0, -1) == [CANCEL_FRAME]
    assert CANCEL_FRAME == protocol.notification(T.SIGNAL_NOTIFICATION, signal_id=1, void=True)
    # the attempt in flight suspends on the cancel signal (the SDK always awaits it): resumed at once
    applied = await scripts.apply(t, tok, NOW_MS, 0, Suspend(f" c1 {CANCEL_NOTE_KEY} "), 0, [])
    assert applied.outcome == "RESUME" and applied.new_entries == [CANCEL_FRAME]


@pytest.mark.parametrize("stopped", [Status.SUSPENDED, Status.BACKING_OFF, Status.PAUSED])
async def test_cancel_wakes_a_stopped_invocation(scripts: Scripts, redis: Redis, tok: str, stopped: Status) -> None:
    t = _t(15)
    await _accept(scripts, tok, t)
    terminal = Suspend(" c1 s1 ") if stopped is Status.SUSPENDED else AttemptFailed(stopped, NOW_MS + 500, "boom")
    await scripts.apply(t, tok, NOW_MS, 0, terminal, 3, [])
    assert await _status(redis, t) is stopped
    cancelled = await _checked(redis, t, scripts.cancel(t, tok))
    assert (cancelled.outcome, cancelled.status, cancelled.woken) == (ManageOutcome.APPENDED, stopped, True)
    assert await _status(redis, t) is Status.INVOKED
    assert await redis.smembers(keys.active(P)) == {t.invocation_id.encode()}
    assert await redis.zcard(keys.timers(P)) == 0  # a retry timer would only start it again
    attempts: Any = await redis.hget(keys.invocation(P, t.invocation_id), "att")
    assert int(attempts) == (0 if stopped is Status.PAUSED else 3)  # a paused one had exhausted its retries


# ---- purge -----------------------------------------------------------------------------------------


async def test_purge_only_after_completion_then_the_id_is_free(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(16)
    await _accept(scripts, tok, t)
    early = await _checked(redis, t, scripts.purge(t, tok))
    assert (early.outcome, early.status) == (ManageOutcome.NOT_COMPLETED, Status.INVOKED)
    await scripts.apply(t, tok, NOW_MS, 0, End(Result(0, "", b"1")), 0, [])
    await redis.rpush(keys.journal(P, t.invocation_id), b"retained entry")
    journal_only = await scripts.purge(t, tok, journal_only=True)
    assert journal_only.outcome is ManageOutcome.DONE
    assert not await redis.exists(keys.journal(P, t.invocation_id))
    assert await _status(redis, t) is Status.COMPLETED
    purged = await _checked(redis, t, scripts.purge(t, tok))
    assert (purged.outcome, purged.status) == (ManageOutcome.DONE, Status.COMPLETED)
    assert not await redis.exists(keys.invocation(P, t.invocation_id))
    await _accept(scripts, tok, t)  # the same id (idempotency key) runs again
    assert await _status(redis, t) is Status.INVOKED


async def test_purge_of_a_workflow_run_takes_its_state_and_promises(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(17, service="Signup", key="wf")
    await _accept(scripts, tok, t, kind=HandlerKind.WORKFLOW)
    await redis.hset(keys.state(P, "Signup", "wf"), "k", "v")
    await redis.hset(keys.promises(P, "Signup", "wf"), "p", "r")
    await scripts.apply(t, tok, NOW_MS, 0, End(Result(0, "", b"1")), 0, [])
    assert (await scripts.purge(t, tok)).outcome is ManageOutcome.DONE
    assert not await redis.exists(keys.state(P, "Signup", "wf"), keys.promises(P, "Signup", "wf"))


# ---- pause / resume --------------------------------------------------------------------------------


async def test_pause_and_resume_a_running_invocation(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(18)
    await _accept(scripts, tok, t)
    paused = await _checked(redis, t, scripts.pause(P, t.invocation_id, tok))
    assert (paused.outcome, paused.status) == (ManageOutcome.DONE, Status.INVOKED)
    assert await _status(redis, t) is Status.PAUSED and not await redis.smembers(keys.active(P))
    assert await redis.get(keys.lock(P, "Counter", "k")) == t.invocation_id.encode()  # keeps its lock
    assert (await scripts.pause(P, t.invocation_id, tok)).outcome is ManageOutcome.ALREADY
    # the attempt that was in flight is not stored
    assert (await scripts.apply(t, tok, NOW_MS, 0, End(Result(0, "", b"1")), 0, [])).outcome == "BAD_STATE"
    resumed = await _checked(redis, t, scripts.resume(P, t.invocation_id, tok))
    assert (resumed.outcome, resumed.status, resumed.woken) == (ManageOutcome.DONE, Status.PAUSED, True)
    assert await _status(redis, t) is Status.INVOKED
    assert await redis.smembers(keys.active(P)) == {t.invocation_id.encode()}
    assert (await scripts.resume(P, t.invocation_id, tok)).outcome is ManageOutcome.ALREADY


async def test_resume_of_a_paused_invocation_starts_its_retries_afresh(scripts: Scripts, redis: Redis,
                                                                       tok: str) -> None:
    t = _t(19)
    await _accept(scripts, tok, t)
    await scripts.apply(t, tok, NOW_MS, 0, AttemptFailed(Status.PAUSED, 0, "retries exhausted"), 70, [])
    resumed = await _checked(redis, t, scripts.resume(P, t.invocation_id, tok))
    assert (resumed.outcome, resumed.status) == (ManageOutcome.DONE, Status.PAUSED)
    assert await redis.hget(keys.invocation(P, t.invocation_id), "att") == b"0"


async def test_pause_of_a_backing_off_invocation_drops_its_retry_timer(scripts: Scripts, redis: Redis,
                                                                       tok: str) -> None:
    t = _t(20)
    await _accept(scripts, tok, t)
    await scripts.apply(t, tok, NOW_MS, 0, AttemptFailed(Status.BACKING_OFF, NOW_MS + 500, "boom"), 1, [])
    assert await redis.zcard(keys.timers(P)) == 1
    paused = await _checked(redis, t, scripts.pause(P, t.invocation_id, tok))
    assert (paused.outcome, paused.status) == (ManageOutcome.DONE, Status.BACKING_OFF)
    assert await redis.zcard(keys.timers(P)) == 0


async def test_pause_of_a_suspended_invocation_keeps_it_paused_when_woken(scripts: Scripts, redis: Redis,
                                                                        tok: str) -> None:
    t = _t(22)
    await _accept(scripts, tok, t)
    await scripts.apply(t, tok, NOW_MS, 0, Suspend(" c1 s1 "), 0, [])
    paused = await _checked(redis, t, scripts.pause(P, t.invocation_id, tok))
    assert (paused.outcome, paused.status) == (ManageOutcome.DONE, Status.SUSPENDED)
    notified = await scripts.notify(P, t.invocation_id, tok, "c1", b"sleep done")
    assert notified.outcome == "APPLIED"  # stored, but it wakes nothing while paused
    assert await _status(redis, t) is Status.PAUSED and not await redis.smembers(keys.active(P))
    resumed = await scripts.resume(P, t.invocation_id, tok)
    assert resumed.outcome is ManageOutcome.DONE and await _status(redis, t) is Status.INVOKED
    assert await redis.lrange(keys.journal(P, t.invocation_id), 0, -1) == [b"sleep done"]


async def test_pause_and_resume_refuse_a_never_started_invocation(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(21)
    await _accept(scripts, tok, t, exec_ms=NOW_MS * 100)
    for command in (scripts.pause(P, t.invocation_id, tok), scripts.resume(P, t.invocation_id, tok)):
        managed = await command
        assert (managed.outcome, managed.status) == (ManageOutcome.WRONG_STATE, Status.SCHEDULED)
    assert await _status(redis, t) is Status.SCHEDULED and await redis.zcard(keys.timers(P)) == 1
