"""Partition ownership: worker membership, rendezvous assignment and fenced leases.

Every `heartbeat_interval_ms` a worker (1) refreshes its membership entry, (2) computes the
rendezvous winner of every partition over the live members, (3) renews the leases it holds
(one pipelined round trip), (4) acquires free partitions it wins and (5) releases the ones a
live member now wins. Acquiring bumps the partition's fencing epoch; every Lua write checks
the token `<worker>|<epoch>`, so a worker that lost a lease can no longer change anything.
The routing hint of a partition (`sg:{pI}:route`) is written by the lease scripts themselves,
inside the fence, and again on every renewal. Time comes from the injected `Clock`.

A worker id belongs to one live process. Every process has a random instance tag written into
its membership entry (`<address>|<instance>|<expires ms>`); at start-up `claim_identity` refuses
(DuplicateWorker) to join while another process keeps refreshing the entry of the same id, so two
processes with one id (a copied SHARDGATE_WORKER_ID, containers that all run as PID 1 on one host
name) do not take each other's leases every second. A dead predecessor's entry (a crash restart)
is taken over once it expired or went unrefreshed for a few heartbeats.

A worker that joins, hands partitions back or leaves publishes on `sg:membership`; every worker
listens (`listen`) and runs its next round at once, so a graceful stop moves partitions in
milliseconds instead of up to a heartbeat later. The channel is only a wake-up: a lost message
costs one heartbeat of latency, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import cast

import xxhash
from redis.asyncio import Redis

from partition import keys
from partition.metrics import LEASE_CHANGES, OWNED_PARTITIONS
from partition.scripts import Scripts
from shardgate import keys as cluster_keys
from shardgate.clock import SYSTEM_CLOCK, Clock
from shardgate.cluster import ClusterMismatch

log = logging.getLogger(__name__)


STALE_HEARTBEATS = 2.5
"""A membership entry unrefreshed for this many heartbeats belongs to a dead process."""
LEASE_MARGIN_DIVISOR = 5
"""A lease counts as run out locally a fifth of its TTL before Redis lets it expire."""


class DuplicateWorker(ClusterMismatch):
    """Another live process uses this worker id: refuse to start (exit code 3)."""


def parse_member(value: bytes) -> tuple[str, str | None, int]:
    """(address, instance tag or None for an entry without one, expiry ms) of a membership entry."""
    head, expires = value.decode().rsplit("|", 1)
    address, _, instance = head.partition("|")
    return address, instance or None, int(expires)


def rendezvous_winner(members: list[str], partition: int) -> str | None:
    """The member with the highest hash weight for this partition (stable under joins/leaves)."""
    best, best_w = None, -1
    for m in members:
        w = xxhash.xxh3_64_intdigest(f"{m}/{partition}".encode())
        if w > best_w:
            best, best_w = m, w
    return best


class Ownership:
    """Tracks which partitions this worker owns and their fence tokens."""

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        worker_id: str,
        address: str,
        partitions: int,
        lease_ttl_ms: int,
        heartbeat_interval_ms: int,
        on_acquired: Callable[[int, str], None],
        on_lost: Callable[[int], None],
        clock: Clock = SYSTEM_CLOCK,
        drain: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self._redis = redis
        self._drain = drain  # awaited before a partition another member now wins is released
        self._handing: dict[int, asyncio.Task[None]] = {}
        self._scripts = scripts
        self.worker_id = worker_id
        self.address = address
        self.partitions = partitions
        self._ttl_ms = lease_ttl_ms
        self._valid_until_ms: dict[int, int] = {}  # partition -> when its lease may have run out
        self._renewed = asyncio.Event()  # set (and replaced) when a renewal round got its answers
        self._interval_s = heartbeat_interval_ms / 1000
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self.tokens: dict[int, str] = {}
        self._stopping = False
        self._joined = False
        self._clock = clock
        self._wake = asyncio.Event()
        self.instance = os.urandom(6).hex()

    def lease_valid(self, partition: int) -> bool:
        """Whether this worker may still act on `partition` by its own clock: held, and its lease
        (from the start of the last acquire or renewal that Redis confirmed, minus a safety margin)
        not run out. False right after a freeze (SIGSTOP, a long GC or VM pause) outlived the lease,
        before the next round notices the lease is gone, so nothing new is sent to a deployment
        on a partition another worker may already drive. Fencing keeps Redis safe either way."""
        until_ms = self._valid_until_ms.get(partition)
        return until_ms is not None and self._clock.now_ms() < until_ms

    async def confirm_lease(self, partition: int) -> bool:
        """True once the lease of `partition` holds by this worker's clock: at once, or after the
        renewal rounds this wakes (while Redis cannot be reached, it waits); False when the
        partition is no longer held (its leader is closing)."""
        while not self.lease_valid(partition):
            if partition not in self.tokens:
                return False
            renewed = self._renewed
            self.wake()
            await renewed.wait()
        return True

    def token(self, partition: int) -> str | None:
        return self.tokens.get(partition)

    async def live_members(self, now_ms: int) -> list[str]:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(keys.MEMBERS))
        live, dead = [], []
        for member, value in raw.items():
            expires = parse_member(value)[2]
            if expires > now_ms:
                live.append(member.decode())
            elif expires < now_ms - 60_000:
                dead.append(member)
        if dead:
            await self._redis.hdel(keys.MEMBERS, *dead)
        return live

    def wake(self) -> None:
        """Run the next round now instead of at the next heartbeat."""
        self._wake.set()

    async def _announce(self) -> None:
        """Tell the other workers that ownership should be recomputed (best effort)."""
        try:
            await self._redis.publish(cluster_keys.MEMBERSHIP_CHANNEL, self.worker_id)
        except Exception as exc:  # noqa: BLE001  only a wake-up: the next heartbeat does the same
            log.warning("cannot announce a membership change: %s", exc)

    def _entry(self, now_ms: int) -> str:
        return f"{self.address}|{self.instance}|{now_ms + self._ttl_ms}"

    async def claim_identity(self) -> None:
        """Wait until no other live process holds this worker id, then write our entry.
        Raises DuplicateWorker when another process refreshes the id's entry meanwhile."""
        first = cast("bytes | None", await self._redis.hget(keys.MEMBERS, self.worker_id))
        seen_ms = self._clock.now_ms()
        while first is not None:
            _, instance, expires = parse_member(first)
            now = self._clock.now_ms()
            if instance == self.instance or expires <= now or now - seen_ms >= STALE_HEARTBEATS * self._interval_s * 1000:
                break  # ours, expired, or a dead predecessor's
            await self._clock.sleep(self._interval_s / 2)
            current = cast("bytes | None", await self._redis.hget(keys.MEMBERS, self.worker_id))
            if current is not None and current != first:
                address = parse_member(current)[0]
                raise DuplicateWorker(f"worker id {self.worker_id!r} is in use by another live process "
                                      f"(at {address}); give every worker its own SHARDGATE_WORKER_ID")
            first = current
        await self._redis.hset(keys.MEMBERS, self.worker_id, self._entry(self._clock.now_ms()))

    async def tick(self) -> None:
        """One membership + lease round (only renewals once a graceful stop began)."""
        if self._stopping:
            await self._renew()
            return
        now = self._clock.now_ms()
        await self._redis.hset(keys.MEMBERS, self.worker_id, self._entry(now))
        if not self._joined:
            self._joined = True
            await self._announce()  # owners of the partitions this worker wins release them now
        live = await self.live_members(now)
        if self.worker_id not in live:
            live.append(self.worker_id)
        await self._renew()
        if self._stopping:
            return
        wins = {p for p in range(self.partitions) if rendezvous_winner(live, p) == self.worker_id}
        for p in [p for p in self.tokens if p not in wins and p not in self._handing]:
            self._handing[p] = asyncio.ensure_future(self._hand_over(p, self._drain))
        await self._acquire([p for p in sorted(wins) if p not in self.tokens])
        OWNED_PARTITIONS.set(len(self.tokens))

    def _held_until_ms(self, sent_ms: int) -> int:
        """Local end of a lease acquired or renewed by a command sent at `sent_ms`: Redis set its
        TTL no earlier, and a margin covers clock rate differences."""
        return sent_ms + self._ttl_ms - max(self._ttl_ms // LEASE_MARGIN_DIVISOR, 1)

    async def _renew(self) -> None:
        owned = list(self.tokens.items())
        if not owned:
            return
        sent_ms = self._clock.now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for p, tok in owned:
                await self._scripts.lease_renew(keys=[keys.lease(p), cluster_keys.route(p)],
                                                args=[tok, self._ttl_ms, self.address], client=pipe)
            results = await pipe.execute()
        for (p, tok), ok in zip(owned, results):
            if self.tokens.get(p) != tok:  # handed back meanwhile
                continue
            if ok:
                self._valid_until_ms[p] = self._held_until_ms(sent_ms)
            else:
                log.warning("lost partition lease", extra={"partition": p})
                self._drop(p, "lost")
        renewed, self._renewed = self._renewed, asyncio.Event()
        renewed.set()

    async def handed_over(self) -> None:
        """Wait for the hand-overs the last rounds started (tests step rounds by hand)."""
        while self._handing:
            await asyncio.gather(*list(self._handing.values()), return_exceptions=True)

    async def _hand_over(self, partition: int, drain: Callable[[int], Awaitable[object]] | None) -> None:
        """Give a partition away (to the member that now wins it, or on a graceful stop): first let
        its running attempts record their transition (`drain`, bounded by the caller), then release
        and announce it. Renewals go on meanwhile, so the lease cannot lapse while it drains. A
        failure is logged: the next round (or the lease TTL, when stopping) hands it over."""
        try:
            if drain is not None:
                await drain(partition)
            if partition in self.tokens:
                await self._release([partition])
                await self._announce()  # its winner acquires it now
        except asyncio.CancelledError:
            raise
        except Exception:  # a Redis hiccup: the next round hands it over again
            log.exception("handing a partition over failed", extra={"partition": partition})
        finally:
            self._handing.pop(partition, None)

    async def _acquire(self, candidates: list[int]) -> None:
        if not candidates:
            return
        sent_ms = self._clock.now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in candidates:
                await self._scripts.lease_acquire(
                    keys=[keys.lease(p), keys.epoch(p), cluster_keys.route(p)],
                    args=[self.worker_id, self._ttl_ms, self.address], client=pipe,
                )
            results = await pipe.execute()
        gained = {p: tok.decode() for p, tok in zip(candidates, results) if tok}
        if not gained:
            return
        for p, tok in gained.items():
            self.tokens[p] = tok
            self._valid_until_ms[p] = self._held_until_ms(sent_ms)
            LEASE_CHANGES.labels("gained").inc()
            self._on_acquired(p, tok)
        log.info("acquired partitions", extra={"partitions": sorted(gained)})

    async def _release(self, partitions: list[int]) -> None:
        for p in partitions:
            tok = self.tokens.get(p)
            if tok is None:
                continue
            self._drop(p, "released")
            await self._scripts.lease_release(keys=[keys.lease(p), cluster_keys.route(p)], args=[tok, self.address])
        if partitions:
            log.info("released partitions", extra={"partitions": partitions})

    def _drop(self, partition: int, change: str) -> None:
        self.tokens.pop(partition, None)
        self._valid_until_ms.pop(partition, None)
        LEASE_CHANGES.labels(change).inc()
        self._on_lost(partition)

    async def run(self) -> None:
        """Tick until cancelled; Redis hiccups are logged and retried on the next tick."""
        while True:
            started_ms = self._clock.now_ms()
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ownership tick failed")
            await self._clock.wait(self._wake, max(0.0, self._interval_s - (self._clock.now_ms() - started_ms) / 1000))

    async def listen(self, retry_s: float = 1.0) -> None:
        """Wake on every message of `sg:membership` until cancelled (resubscribes after a Redis error)."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(cluster_keys.MEMBERSHIP_CHANNEL)
                    while True:  # a bounded wait per read: the client's socket timeout never fires
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=retry_s)
                        if message is not None and message.get("data") != self.worker_id.encode():
                            self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  the heartbeat still runs; try again shortly
                log.warning("membership channel lost: %s", exc)
            await self._clock.sleep(retry_s)

    async def release_all(self) -> None:
        """Graceful stop at once: leave the membership set and hand every partition back."""
        await self.hand_back(None)

    async def hand_back(self, ready: Callable[[int], Awaitable[object]] | None) -> None:
        """Graceful stop: leave the membership set, then hand each partition back as soon as
        `await ready(partition)` returns (at once without `ready`) and say so each time, so the
        other workers take it over at once. Renewals go on (`run`) until the last is handed back."""
        self._stopping = True
        await self._redis.hdel(keys.MEMBERS, self.worker_id)

        await asyncio.gather(*(self._hand_over(p, ready) for p in list(self.tokens)))
        for task in list(self._handing.values()):
            task.cancel()
        OWNED_PARTITIONS.set(0)
