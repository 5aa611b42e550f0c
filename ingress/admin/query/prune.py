"""The periodic pass over the invocation indexes: drop entries whose invocation is gone.

Reads prune as they go (`scan.lua`), so the pass only bounds how long an entry of an invocation
that completed without retention, expired or was deleted outside purge lingers when nobody
queries. It reads only the status field and returns no rows; every removal is checked against the
hash in the same script, so running it on several ingress nodes at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging

import redis.exceptions

from ingress.admin.query.store import F_KEY, F_SERVICE, F_STATUS, InvocationFilter, QueryStore

logger = logging.getLogger(__name__)
_NOTHING = InvocationFilter(statuses=frozenset({"\x00"}))  # admits no invocation: only the pruning happens


async def prune_indexes(store: QueryStore) -> int:
    """One pass over every partition's index; the number of entries removed. Raises `redis.RedisError`."""
    pruned = 0
    for partition in range(store.partitions):
        pruned += await store.prune(partition, (F_STATUS, F_SERVICE, F_KEY), _NOTHING)
    return pruned


async def run_pruner(store: QueryStore, interval_s: float) -> None:
    """Prune every `interval_s` until cancelled; a Redis failure is logged and retried next time."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await prune_indexes(store)
        except redis.exceptions.RedisError as exc:
            logger.warning("invocation index pruning failed: %s", exc)
            continue
        if removed:
            logger.info("pruned invocation index entries", extra={"removed": removed})
