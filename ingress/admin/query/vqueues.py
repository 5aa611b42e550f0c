"""`sys_rules` and `sys_vqueues`: the flow-control rule book and the invocations of its buckets.

`sys_rules` has one row per rule of the cluster-wide rule book (`shardgate.limits`, the Redis
hash `sg:limits`), with Restate 1.7's column names (`pattern`, `concurrency`, `description`,
`disabled`, `version`, `last_modified`) and, beyond Restate, `rate`, `burst` and `on_limit`.

`sys_vqueues` has one row per invocation counted by a bucket, with the column names of Restate's
table of the same name where they mean the same: `partition_key` (the scope's), `id` (here: the
bucket, `scope[/l1[/l2]]`, the counter a rule keeps), `stage` (`inbox`: waiting for a slot or a
rate token; `running`, `suspended`, `paused`: holding a slot), `status`, `sequence_number` (the
1-based position in its limit key's queue, inbox only), `entry_id` (the invocation id),
`entry_kind` (`invocation`), `created_at` (accepted). Beyond Restate: `scope` and `limit_key`.

The reads mirror the vqueue keys `partition/lua/_scope.lua` writes (`shardgate.limits.vqueue_key`)
and the hash fields below (`tests/unit/test_limits_query.py` keeps them equal to the worker's);
each is one pipelined round trip over every partition.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ingress.admin.query.rows import time_of
from ingress.admin.query.store import F_STATUS, QueryStore, index_key, inv_key
from shardgate.limits import RULES_KEY, book_from_hash, vqueue_key
from shardgate.sharding import partition_key_for_key

F_LIMIT_KEY, F_VQUEUE = "lk", "vqb"  # partition.invocation.HashField.LIMIT_KEY / VQUEUE
INBOXED = "inboxed"  # partition.invocation.Status.INBOXED
Row = dict[str, Any]

# stored status of an invocation holding a slot -> (stage, status) in Restate's words
_STAGES = {"scheduled": ("inbox", "scheduled"), "invoked": ("running", "started"),
           "backing-off": ("inbox", "backing-off"), "suspended": ("suspended", "suspended"),
           "paused": ("paused", "paused")}


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def rule_rows(redis: Redis) -> list[Row]:
    """One `sys_rules` row per stored rule. Raises RedisError."""
    book = book_from_hash(await redis.hgetall(RULES_KEY))
    rows = []
    for r in book.listed():
        rows.append({"pattern": r.pattern, "concurrency": r.limits.concurrency, "rate": r.limits.rate,
                     "burst": r.limits.burst, "on_limit": r.limits.on_limit, "description": r.description,
                     "disabled": r.disabled, "version": r.version, "last_modified": time_of(r.last_modified_ms)})
    return rows


async def _buckets(redis: Redis, partitions: int) -> list[tuple[int, str]]:
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.smembers(vqueue_key(p, "buckets"))
        found = await pipe.execute()
    return sorted((p, _text(b)) for p, members in enumerate(found) for b in members)


async def _entries(redis: Redis, buckets: list[tuple[int, str]]) -> tuple[list[Any], list[list[tuple[str, list[Any]]]]]:
    """Per bucket: the ids holding a slot, and each limit key's queue."""
    async with redis.pipeline(transaction=False) as pipe:
        for p, b in buckets:
            pipe.smembers(vqueue_key(p, f"run:{b}"))
            pipe.lrange(vqueue_key(p, f"rr:{b}"), 0, -1)
        first = await pipe.execute()
    rings = [sorted({_text(lk) for lk in first[2 * i + 1]}) for i in range(len(buckets))]
    async with redis.pipeline(transaction=False) as pipe:
        for (p, b), ring in zip(buckets, rings, strict=True):
            for lk in ring:
                pipe.lrange(vqueue_key(p, f"q:{b}|{lk}"), 0, -1)
        queued = iter(await pipe.execute())
    queues = [[(lk, next(queued)) for lk in ring] for ring in rings]
    return [first[2 * i] for i in range(len(buckets))], queues


async def vqueue_rows(store: QueryStore) -> list[Row]:
    """One `sys_vqueues` row per invocation holding a slot of, or queued in, a bucket of any
    partition (queue entries that no longer wait are left out). Raises RedisError."""
    redis = store.redis
    buckets = await _buckets(redis, store.partitions)
    if not buckets:
        return []
    running, queues = await _entries(redis, buckets)
    wanted: list[tuple[int, str, str, str | None, int | None]] = []  # partition, bucket, id, queue lk, position
    for (p, b), run, per_key in zip(buckets, running, queues, strict=True):
        wanted += [(p, b, _text(i), None, None) for i in sorted(run)]
        for lk, ids in per_key:
            wanted += [(p, b, _text(i), lk, n) for n, i in enumerate(ids, start=1)]
    async with redis.pipeline(transaction=False) as pipe:
        for p, _, inv_id, _, _ in wanted:
            pipe.hmget(inv_key(p, inv_id), [F_STATUS, F_LIMIT_KEY, F_VQUEUE])
            pipe.zscore(index_key(p), inv_id)
        found = await pipe.execute()
    rows = []
    for n, (_, bucket, inv_id, queue_lk, position) in enumerate(wanted):
        (status, lk, vq), accepted = found[2 * n], found[2 * n + 1]
        row = _row(bucket, inv_id, status, lk, vq, queue_lk, position, accepted)
        if row is not None:
            rows.append(row)
    return rows


def _row(bucket: str, inv_id: str, status: bytes | None, lk: bytes | None, vq: bytes | None,
         queue_lk: str | None, position: int | None, accepted: float | None) -> Row | None:
    """The row of one entry, or None when it no longer is what its list says (gone, or a queue
    entry that was admitted, cancelled or killed since)."""
    st = None if status is None else _text(status)
    if st is None or (vq is not None and _text(vq) != bucket):
        return None
    if queue_lk is not None:
        if st != INBOXED:
            return None
        stage, sql_status = "inbox", "new"
    else:
        stage, sql_status = _STAGES.get(st, ("running", st))
    scope = bucket.split("/", 1)[0]
    return {"partition_key": partition_key_for_key(scope), "id": bucket, "stage": stage, "status": sql_status,
            "sequence_number": position, "entry_id": inv_id, "entry_kind": "invocation",
            "created_at": time_of(None if accepted is None else int(accepted)), "scope": scope,
            "limit_key": None if lk is None else _text(lk) or None}

