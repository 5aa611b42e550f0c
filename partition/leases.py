"""Partition ownership: worker membership, rendezvous assignment and fenced leases.

Every `heartbeat_interval_ms` a worker (1) refreshes its membership entry, (2) computes the
rendezvous winner of every partition over the live members, (3) renews the leases it holds
(one pipelined round trip), (4) acquires free partitions it wins and (5) releases the ones a
live member now wins. Acquiring bumps the partition's fencing epoch; every Lua write checks
the token `<worker>|<epoch>`, so a worker that lost a lease can no longer change anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import xxhash
from redis.asyncio import Redis

from partition import keys
from partition.metrics import LEASE_CHANGES, OWNED_PARTITIONS
from partition.scripts import Scripts

log = logging.getLogger(__name__)


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
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self.worker_id = worker_id
        self.address = address
        self.partitions = partitions
        self._ttl_ms = lease_ttl_ms
        self._interval_s = heartbeat_interval_ms / 1000
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self.tokens: dict[int, str] = {}
        self._stopping = False

    def token(self, partition: int) -> str | None:
        return self.tokens.get(partition)

    async def live_members(self, now_ms: int) -> list[str]:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(keys.MEMBERS))
        live, dead = [], []
        for member, value in raw.items():
            expires = int(value.decode().rsplit("|", 1)[1])
            if expires > now_ms:
                live.append(member.decode())
            elif expires < now_ms - 60_000:
                dead.append(member)
        if dead:
            await self._redis.hdel(keys.MEMBERS, *dead)
        return live

    async def tick(self) -> None:
        """One membership + lease round."""
        now = int(time.time() * 1000)
        await self._redis.hset(keys.MEMBERS, self.worker_id, f"{self.address}|{now + self._ttl_ms}")
        live = await self.live_members(now)
        if self.worker_id not in live:
            live.append(self.worker_id)
        await self._renew()
        if self._stopping:
            return
        wins = {p for p in range(self.partitions) if rendezvous_winner(live, p) == self.worker_id}
        await self._release([p for p in self.tokens if p not in wins])
        await self._acquire([p for p in sorted(wins) if p not in self.tokens])
        OWNED_PARTITIONS.set(len(self.tokens))

    async def _renew(self) -> None:
        owned = list(self.tokens.items())
        if not owned:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for p, tok in owned:
                await self._scripts.lease_renew(keys=[keys.lease(p)], args=[tok, self._ttl_ms], client=pipe)
            results = await pipe.execute()
        for (p, _), ok in zip(owned, results):
            if not ok:
                log.warning("lost partition lease", extra={"partition": p})
                self._drop(p, "lost")

    async def _acquire(self, candidates: list[int]) -> None:
        if not candidates:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in candidates:
                await self._scripts.lease_acquire(
                    keys=[keys.lease(p), keys.epoch(p)], args=[self.worker_id, self._ttl_ms], client=pipe
                )
            results = await pipe.execute()
        gained = {p: tok.decode() for p, tok in zip(candidates, results) if tok}
        if not gained:
            return
        await self._redis.hset(keys.ROUTES, mapping={p: f"{self.address}|{tok}" for p, tok in gained.items()})
        for p, tok in gained.items():
            self.tokens[p] = tok
            LEASE_CHANGES.labels("gained").inc()
            self._on_acquired(p, tok)
        log.info("acquired partitions", extra={"partitions": sorted(gained)})

    async def _release(self, partitions: list[int]) -> None:
        for p in partitions:
            tok = self.tokens.get(p)
            if tok is None:
                continue
            self._drop(p, "released")
            await self._scripts.lease_release(keys=[keys.lease(p)], args=[tok])
        if partitions:
            log.info("released partitions", extra={"partitions": partitions})

    def _drop(self, partition: int, change: str) -> None:
        self.tokens.pop(partition, None)
        LEASE_CHANGES.labels(change).inc()
        self._on_lost(partition)

    async def run(self) -> None:
        """Tick until cancelled; Redis hiccups are logged and retried on the next tick."""
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ownership tick failed")
            await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))

    async def release_all(self) -> None:
        """Graceful stop: hand every partition back and leave the membership set."""
        self._stopping = True
        await self._release(list(self.tokens))
        await self._redis.hdel(keys.MEMBERS, self.worker_id)
        OWNED_PARTITIONS.set(0)
