"""The admin state edit as a Lua transition against a real Redis (`state_edit.lua`, `_state.lua`):
it replaces an object key's whole state when the key is free, queues itself behind the key's lock
otherwise (applied when the lock is handed over, dropped when the state changed meanwhile), and
writes nothing when the state is no longer the one whose version was checked. The digest Lua
computes is the one Python computes; the version is the restate CLI's."""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis.asyncio import Redis

from ingress.admin.services import STATE_EDIT_NOTE_KEY as ADMIN_NOTE_KEY
from partition import keys
from partition.errors import Fenced
from partition.invocation import HandlerKind, InvocationRecord, Result, Status
from partition.scripts import STATE_EDIT_NOTE_KEY, Scripts, Target, state_version
from partition.transition import End, ManageOutcome, SetState
from shardgate.sharding import idempotent_invocation_id
from tests.integration.conftest import lease_token

P = 6
KEY = "k1"
BINARY = {b"\xffz": b"\x00\x01", b"a": b"1", b"ab": b"", b"count": b"5"}


@pytest.fixture
async def tok(scripts: Scripts) -> str:
    return await lease_token(scripts, P)


def _obj() -> Target:
    return Target(P, "", "Counter", KEY)


def _inv(n: int) -> Target:
    return Target(P, str(idempotent_invocation_id("Counter", KEY, "add", f"edit-{n}")), "Counter", KEY)


async def _state(redis: Redis) -> dict[bytes, bytes]:
    return cast("dict[bytes, bytes]", await redis.hgetall(keys.state(P, "Counter", KEY)))


async def _accept(scripts: Scripts, tok: str, t: Target) -> None:
    record = InvocationRecord(status=Status.INVOKED, service="Counter", handler="add", kind=HandlerKind.EXCLUSIVE,
                              key=KEY, input_frame=b"input", completion_retention_ms=60_000, last_growth_ms=1)
    await scripts.accept(t, tok, record)


def test_the_version_is_the_restate_cli_s_and_both_sides_name_the_edit_alike() -> None:
    assert state_version({b"count": b"5"}) == "S6MyUcVGhqv_Nm54F5guL_XKfJMeFCOXIi7QEc5GZZA"  # restate-clients.md §0.4
    assert ADMIN_NOTE_KEY == STATE_EDIT_NOTE_KEY


async def test_a_free_key_s_state_is_replaced_when_it_is_still_the_checked_one(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    await redis.hset(keys.state(P, "Counter", KEY), mapping=cast("dict[Any, Any]", BINARY))
    outcome = await scripts.state_edit(_obj(), tok, BINARY, {b"count": b"42", b"new": b"\x00"})
    assert outcome is ManageOutcome.DONE  # Lua's digest of the stored state is Python's
    assert await _state(redis) == {b"count": b"42", b"new": b"\x00"}
    stale = await scripts.state_edit(_obj(), tok, BINARY, {b"count": b"1"})
    assert stale is ManageOutcome.WRONG_STATE
    assert await _state(redis) == {b"count": b"42", b"new": b"\x00"}
    assert await scripts.state_edit(_obj(), tok, None, {}) is ManageOutcome.DONE  # clear, unconditionally
    assert await _state(redis) == {}


async def test_a_locked_key_s_edit_waits_for_the_lock_and_the_next_invocation_sees_it(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    first, second = _inv(1), _inv(2)
    await _accept(scripts, tok, first)
    await _accept(scripts, tok, second)  # inboxed behind first
    assert await scripts.state_edit(_obj(), tok, {}, {b"count": b"7"}) is ManageOutcome.APPENDED
    assert await _state(redis) == {}
    applied = await scripts.apply(first, tok, 100, 0, End(Result(0, "", b"1")), 0, [])
    assert applied.next_id == second.invocation_id  # the edit queued after it is still ahead of the lock
    assert await _state(redis) == {}
    done = await scripts.apply(second, tok, 200, 0, End(Result(0, "", b"2")), 0, [])
    assert done.next_id is None
    assert await _state(redis) == {b"count": b"7"}
    assert not await redis.exists(keys.inbox(P, "Counter", KEY), keys.lock(P, "Counter", KEY))


async def test_a_queued_edit_is_dropped_when_the_state_changed_before_its_turn(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    running, after = _inv(3), _inv(4)
    await _accept(scripts, tok, running)
    assert await scripts.state_edit(_obj(), tok, {}, {b"count": b"7"}) is ManageOutcome.APPENDED
    await _accept(scripts, tok, after)  # inboxed behind the edit
    applied = await scripts.apply(running, tok, 100, 0, End(Result(0, "", b"1")), 0, [SetState(b"count", b"1")])
    assert applied.next_id == after.invocation_id and applied.next_state == {b"count": b"1"}
    assert await _state(redis) == {b"count": b"1"}  # the stale edit was dropped, not applied


async def test_a_fenced_edit_writes_nothing(scripts: Scripts, redis: Redis, tok: str) -> None:
    with pytest.raises(Fenced):
        await scripts.state_edit(_obj(), "not-the-token", None, {b"count": b"9"})
    assert await _state(redis) == {}


async def test_a_scoped_object_s_state_is_its_scope_s_own(scripts: Scripts, redis: Redis, tok: str) -> None:
    scoped = Target(P, "", "Counter", KEY, "tenant-a")
    assert await scripts.state_edit(scoped, tok, {}, {b"count": b"3"}) is ManageOutcome.DONE
    assert await redis.hgetall(keys.state(P, "Counter", KEY, "tenant-a")) == {b"count": b"3"}
    assert await _state(redis) == {}  # the unscoped object is another one


async def test_an_edit_keeps_the_expiry_of_a_retained_state(scripts: Scripts, redis: Redis, tok: str) -> None:
    """A completed workflow's state expires with its retention; an edit must not make it immortal."""
    state_key = _obj().state()
    await redis.hset(state_key, mapping={"count": "1"})
    await redis.pexpire(state_key, 60_000)
    assert await scripts.state_edit(_obj(), tok, None, {b"count": b"2"}) is ManageOutcome.DONE
    assert await _state(redis) == {b"count": b"2"}
    assert 0 < await redis.pttl(state_key) <= 60_000
