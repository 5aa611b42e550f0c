"""Partition ownership against a real Redis, on a manual clock: membership, rendezvous
assignment, and routes written only inside the lease fence."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from partition import keys
from partition.leases import STALE_HEARTBEATS, DuplicateWorker, Ownership, parse_member, rendezvous_winner
from partition.scripts import Scripts
from shardgate import keys as cluster_keys
from shardgate.clock import ManualClock
from shardgate.routing import read_routes
from shardgate.tasks import cancel_and_wait
from tests.clusters import poll

P = 8
TTL_MS = 5000


class _Node:
    """One worker's ownership with the partitions it was told it gained and lost."""

    def __init__(self, redis: Redis, worker_id: str, clock: ManualClock) -> None:
        self.gained: list[int] = []
        self.lost: list[int] = []
        self.ownership = Ownership(redis, Scripts(redis), worker_id, f"127.0.0.1:{1000 + int(worker_id[1:])}", P,
                                   TTL_MS, 1000, lambda p, _t: self.gained.append(p), self.lost.append, clock)

    @property
    def owned(self) -> set[int]:
        return set(self.ownership.tokens)


async def test_two_workers_split_the_partitions_by_rendezvous_and_publish_fenced_routes(redis: Redis) -> None:
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w2", clock)
    await a.ownership.tick()
    assert a.owned == set(range(P))  # alone, it wins everything
    await b.ownership.tick()  # b sees both members and takes what it wins once a lets go
    await a.ownership.tick()  # a hands over what b wins
    await a.ownership.handed_over()
    await b.ownership.tick()
    expected_b = {p for p in range(P) if rendezvous_winner(["w1", "w2"], p) == "w2"}
    assert b.owned == expected_b and a.owned == set(range(P)) - expected_b
    assert sorted(a.lost) == sorted(expected_b)
    routes = await read_routes(redis, P)
    for p in range(P):
        owner = b if p in expected_b else a
        assert routes[p] == f"{owner.ownership.address}|{owner.ownership.tokens[p]}"


async def test_a_member_that_stops_heartbeating_expires_on_the_clock(redis: Redis) -> None:
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w2", clock)
    await a.ownership.tick()
    await b.ownership.tick()
    assert sorted(await a.ownership.live_members(clock.now_ms())) == ["w1", "w2"]
    clock.advance(TTL_MS + 1)  # b is silent for longer than its membership lifetime
    assert await a.ownership.live_members(clock.now_ms()) == []
    await a.ownership.tick()
    assert await a.ownership.live_members(clock.now_ms()) == ["w1"]


async def test_a_renewal_refused_by_the_fence_writes_no_route(redis: Redis) -> None:
    """A route write delayed past the lease TTL never points the partition at a non-owner."""
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w2", clock)
    await a.ownership.tick()
    stale = dict(a.ownership.tokens)
    # a's leases lapse (what the TTL does while it is paused); b takes everything it wins ...
    for p in range(P):
        await redis.delete(keys.lease(p))
    clock.advance(TTL_MS + 1)  # and its membership with them
    await b.ownership.tick()
    assert b.owned == set(range(P))
    before = await read_routes(redis, P)
    # ... then the paused a wakes up and runs its renewal and release with its old tokens.
    a.ownership.tokens.update(stale)
    await a.ownership.tick()
    assert a.owned == set() and sorted(a.lost) == list(range(P))
    assert await read_routes(redis, P) == before
    assert all(r is not None and r.startswith(b.ownership.address + "|") for r in before)


async def test_renewal_heals_a_lost_route(redis: Redis) -> None:
    clock = ManualClock()
    a = _Node(redis, "w1", clock)
    await a.ownership.tick()
    await redis.delete(keys.route(3))
    await a.ownership.tick()
    assert (await read_routes(redis, P))[3] == f"{a.ownership.address}|{a.ownership.tokens[3]}"


async def test_release_all_drops_routes_and_membership(redis: Redis) -> None:
    clock = ManualClock()
    a = _Node(redis, "w1", clock)
    await a.ownership.tick()
    await a.ownership.release_all()
    assert await read_routes(redis, P) == [None] * P
    assert await redis.hkeys(keys.MEMBERS) == []
    assert await redis.mget([keys.lease(p) for p in range(P)]) == [None] * P


async def _until(what: str, condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    async def probe() -> bool | None:
        return True if condition() else None

    await poll(what, deadline_s, probe, interval_s=0.01)


@pytest.mark.timeout(30)
async def test_joins_and_graceful_leaves_move_partitions_without_waiting_for_a_heartbeat(redis: Redis) -> None:
    """The manual clock never advances, so no heartbeat elapses: every move below is driven by the
    `sg:membership` announcements alone (join -> the owner releases -> the joiner acquires; leave ->
    the survivor acquires)."""
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w2", clock)
    await a.ownership.tick()
    assert a.owned == set(range(P))
    already = await _subscribers(redis)  # the session's Redis may hold other tests' subscriptions
    loops = [asyncio.create_task(n.ownership.listen()) for n in (a, b)]
    loops.append(asyncio.create_task(a.ownership.run()))
    try:
        await poll("both to subscribe", 5.0, _subscribed(redis, already + 2), interval_s=0.01)
        loops.append(asyncio.create_task(b.ownership.run()))
        expected_b = {p for p in range(P) if rendezvous_winner(["w1", "w2"], p) == "w2"}
        assert expected_b and expected_b != set(range(P))
        await _until("b to take what it wins", lambda: b.owned == expected_b and not (a.owned & b.owned))
        await a.ownership.release_all()
        await _until("b to take everything a handed back", lambda: b.owned == set(range(P)))
        assert (await read_routes(redis, P)) == [f"{b.ownership.address}|{b.ownership.tokens[p]}"
                                                 for p in range(P)]
    finally:
        await asyncio.wait_for(cancel_and_wait(loops), 10)  # redis-py can swallow a cancellation


async def _subscribers(redis: Redis) -> int:
    numsub = await redis.pubsub_numsub(cluster_keys.MEMBERSHIP_CHANNEL)
    return int(numsub[0][1]) if numsub else 0


def _subscribed(redis: Redis, count: int) -> Callable[[], Awaitable[bool | None]]:
    """True once the membership channel has `count` subscribers (a join announced before the
    other node listens would wake nobody: the manual clock never runs a heartbeat)."""
    async def probe() -> bool | None:
        return True if await _subscribers(redis) >= count else None

    return probe


@pytest.mark.timeout(30)
async def test_a_second_process_with_a_live_worker_id_is_refused(redis: Redis) -> None:
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w1", clock)
    await a.ownership.claim_identity()
    await a.ownership.tick()
    claim = asyncio.create_task(b.ownership.claim_identity())
    await poll("b to wait for the entry", 5.0, _sleeping(clock), interval_s=0.01)
    clock.advance(500)
    await a.ownership.tick()  # the live process refreshes its entry
    clock.advance(500)
    with pytest.raises(DuplicateWorker, match="'w1' is in use by another live process"):
        await asyncio.wait_for(claim, 5.0)
    raw = await redis.hget(keys.MEMBERS, "w1")
    assert raw is not None and parse_member(raw)[1] == a.ownership.instance


@pytest.mark.timeout(30)
async def test_a_dead_predecessors_entry_is_taken_over_before_it_expires(redis: Redis) -> None:
    """A crash restart with the same id: the old entry (TTL 5 s) stops being refreshed, and the new
    process joins after STALE_HEARTBEATS heartbeats instead of waiting for the whole TTL."""
    clock = ManualClock()
    dead, new = _Node(redis, "w1", clock), _Node(redis, "w1", clock)
    await dead.ownership.claim_identity()
    await dead.ownership.tick()
    claim = asyncio.create_task(new.ownership.claim_identity())
    steps = 0
    while not claim.done():  # half-heartbeat steps while the claim waits
        await poll("the claim to wait or finish", 5.0, _sleeping_or_done(clock, claim), interval_s=0.01)
        if not claim.done():
            clock.advance(500)
            steps += 1
    await claim
    assert steps == int(STALE_HEARTBEATS * 2)
    raw = await redis.hget(keys.MEMBERS, "w1")
    assert raw is not None
    _, instance, expires = parse_member(raw)
    assert instance == new.ownership.instance and expires > clock.now_ms()
    assert clock.now_ms() - 1_700_000_000_000 < TTL_MS  # joined before the old entry expired


def _sleeping(clock: ManualClock) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return True if clock.sleepers else None

    return probe


def _sleeping_or_done(clock: ManualClock, task: asyncio.Task[None]) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return True if clock.sleepers or task.done() else None

    return probe


@pytest.mark.timeout(30)
async def test_a_lease_run_out_by_the_clock_is_confirmed_by_a_renewal_before_anything_is_sent(redis: Redis) -> None:
    """After a freeze longer than the lease (the clock jumps; nobody took the partitions), the
    worker's own clock says its leases ran out: `confirm_lease` wakes a renewal round and holds
    until Redis confirmed them."""
    clock = ManualClock()
    a = _Node(redis, "w1", clock)
    await a.ownership.tick()
    assert all(a.ownership.lease_valid(p) for p in range(P))
    clock.advance(TTL_MS - TTL_MS // 5)  # past the local margin, before Redis's TTL
    assert not any(a.ownership.lease_valid(p) for p in range(P))
    loop = asyncio.create_task(a.ownership.run())
    try:
        assert await asyncio.wait_for(a.ownership.confirm_lease(3), 5.0) is True
        assert a.ownership.lease_valid(3) and a.owned == set(range(P))
    finally:
        await cancel_and_wait([loop])


@pytest.mark.timeout(30)
async def test_a_lease_another_worker_took_during_a_freeze_is_never_confirmed(redis: Redis) -> None:
    clock = ManualClock()
    a, b = _Node(redis, "w1", clock), _Node(redis, "w2", clock)
    await a.ownership.tick()
    for p in range(P):  # a is frozen past its lease: Redis let it expire, b took everything
        await redis.delete(keys.lease(p))
    clock.advance(TTL_MS + 1)
    await b.ownership.tick()
    assert b.owned == set(range(P))
    assert not a.ownership.lease_valid(5)
    loop = asyncio.create_task(a.ownership.run())  # a thaws
    try:
        assert await asyncio.wait_for(a.ownership.confirm_lease(5), 5.0) is False
        assert 5 in a.lost and 5 not in a.owned
    finally:
        await cancel_and_wait([loop])
