"""Reads for `/query` from the partitions' Redis keys.

Invocations are found through each partition's invocation index `sg:{pI}:idx` (a sorted set
written by `accept.lua`, see `partition/lua/_index.lua`), never by scanning Redis; an id filter
reads the named invocations only. `scan.lua` reads the index's hashes in chunks, applies the
status / service / key constraints inside Redis and prunes entries whose hash is gone. State and
promises are read by key when the query names service and key, else by one SCAN per query.

The key and field names below mirror `partition/keys.py` and `partition/invocation.py` (the
ingress must not import the worker); `tests/unit/test_query.py` keeps them equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from shardgate.sharding import InvocationId, InvocationIdError, partition_key_for_key, partition_of

# hash fields of `sg:{pI}:inv:<id>` (partition.invocation.HashField values)
F_STATUS, F_SERVICE, F_HANDLER, F_KEY, F_KIND = "st", "svc", "hdl", "key", "kind"
F_INPUT, F_RETENTION, F_EXECUTION_TIME, F_PARENTS = "in", "cret", "exec", "pars"
F_ATTEMPTS, F_LAST_GROWTH, F_LAST_FAILURE, F_RESULT, F_EXPIRES = "att", "lg", "lerr", "res", "exp"
F_PINNED_DEPLOYMENT, F_PINNED_PROTOCOL = "dp", "pv"
F_IDEMPOTENCY_KEY, F_INVOKED_BY = "idk", "by"
RETRY_TIMER_PREFIX = "r|"  # partition.keys.timer_prefix(TimerKind.RETRY)
CHUNK = 1000  # invocations per scan.lua call: each call holds Redis for a few milliseconds

_SCAN = (Path(__file__).with_name("scan.lua")).read_text()


def index_key(partition: int) -> str:
    return f"sg:{{p{partition}}}:idx"


def inv_key(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:inv:{invocation_id}"


def journal_key(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:journal:{invocation_id}"


def timers_key(partition: int) -> str:
    return f"sg:{{p{partition}}}:timers"


def keyed_key(partition: int, kind: str, service: str, key: str) -> str:
    """`state` or `prom` hash of one service key."""
    return f"sg:{{p{partition}}}:{kind}:{service}:{key}"


@dataclass(slots=True)
class InvocationRows:
    """Invocations as read, column by column: ids, partitions, accept times, retry due times,
    journal lengths and the hash fields asked for (None where absent)."""

    fields: tuple[str, ...]
    ids: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    accepted_ms: list[int | None] = field(default_factory=list)
    retry_due_ms: list[int | None] = field(default_factory=list)
    journal_lengths: list[int | None] = field(default_factory=list)
    values: dict[str, list[bytes | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.fields:
            self.values.setdefault(name, [])

    def __len__(self) -> int:
        return len(self.ids)

    def add_reply(self, partition: int, reply: list[Any]) -> None:
        """Append the columns of one scan.lua reply (after its two counts)."""
        ids, scores, retry, journal, *values = reply
        self.ids += [i.decode() for i in ids]
        self.partitions += [partition] * len(ids)
        self.accepted_ms += [_int(x) for x in scores]
        self.retry_due_ms += [_int(x) for x in retry] if retry else [None] * len(ids)
        self.journal_lengths += [int(x) for x in journal] if journal else [None] * len(ids)
        for name, column in zip(self.fields, values, strict=True):
            self.values[name] += column

    def extend(self, other: InvocationRows) -> None:
        self.ids += other.ids
        self.partitions += other.partitions
        self.accepted_ms += other.accepted_ms
        self.retry_due_ms += other.retry_due_ms
        self.journal_lengths += other.journal_lengths
        for name in self.fields:
            self.values[name] += other.values[name]

    def where(self, keep: list[bool]) -> InvocationRows:
        """The rows whose `keep` entry is true."""
        def pick(column: list[Any]) -> list[Any]:
            return [v for v, k in zip(column, keep, strict=True) if k]

        return InvocationRows(self.fields, pick(self.ids), pick(self.partitions), pick(self.accepted_ms),
                              pick(self.retry_due_ms), pick(self.journal_lengths),
                              {n: pick(c) for n, c in self.values.items()})


@dataclass(frozen=True, slots=True)
class InvocationFilter:
    """Stored statuses, services and keys a row must have (None: any)."""

    statuses: frozenset[str] | None = None
    services: frozenset[str] | None = None
    keys: frozenset[str] | None = None


def _set_args(values: frozenset[str] | None) -> list[str]:
    items = sorted(values or ())
    return [str(len(items)), *items]


def _int(raw: Any) -> int | None:
    """A Redis score or number (integral scores come as plain digits)."""
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return int(float(raw))


def partition_of_id(invocation_id: str, partitions: int) -> int | None:
    """The partition of an invocation id (None for a malformed one, which matches nothing)."""
    try:
        return partition_of(InvocationId.parse(invocation_id).partition_key, partitions)
    except InvocationIdError:
        return None


class QueryStore:
    """The Redis reads of `/query` over `partitions` partitions."""

    def __init__(self, redis: Redis, partitions: int) -> None:
        self._redis = redis
        self._scan = redis.register_script(_SCAN)
        self.partitions = partitions

    @property
    def redis(self) -> Redis:
        return self._redis

    async def _scan_chunk(self, partition: int, head: tuple[str, str], ids: Sequence[str], out: InvocationRows,
                          f: InvocationFilter, extra: tuple[bool, bool]) -> tuple[int, int]:
        """One scan.lua call, its rows appended to `out`: (ids looked at, pruned). `head` is (first
        rank, chunk size) of the index, or ('ids', '') to look at `ids`; `extra` asks for retry due
        times and journal lengths."""
        argv = [inv_key(partition, ""), journal_key(partition, ""), *head, str(len(out.fields)), *out.fields,
                *_set_args(f.statuses), *_set_args(f.services), *_set_args(f.keys), RETRY_TIMER_PREFIX,
                *("1" if x else "" for x in extra), *ids]
        reply = cast("list[Any]", await self._scan(keys=[index_key(partition), timers_key(partition)], args=argv))
        out.add_reply(partition, reply[2:])
        return int(reply[0]), int(reply[1])

    async def prune(self, partition: int, fields: tuple[str, ...], f: InvocationFilter) -> int:
        """Walk one partition's index with a filter (rows are read and dropped); entries pruned."""
        out, first, total = InvocationRows(fields), 0, 0
        while True:
            seen, pruned = await self._scan_chunk(partition, (str(first), str(CHUNK)), (), out, f, (False, False))
            total += pruned
            if seen < CHUNK:
                return total
            first += seen - pruned

    async def _partition_rows(self, partition: int, ids: Sequence[str] | None, fields: tuple[str, ...],
                              f: InvocationFilter, extra: tuple[bool, bool],
                              enough: int | None = None) -> InvocationRows:
        """The admitted rows of one partition: the named ids, else the whole index (or until
        `enough` rows), chunk by chunk (a chunk's pruned entries shift the later ranks back, so the
        next chunk starts earlier)."""
        out = InvocationRows(fields)
        if ids is not None:
            await self._scan_chunk(partition, ("ids", ""), ids, out, f, extra)
            return out
        first = 0
        while True:
            seen, pruned = await self._scan_chunk(partition, (str(first), str(CHUNK)), (), out, f, extra)
            if seen < CHUNK or (enough is not None and len(out) >= enough):
                return out
            first += seen - pruned

    async def _first_rows(self, fetch: int, fields: tuple[str, ...], f: InvocationFilter,
                          extra: tuple[bool, bool]) -> InvocationRows:
        """Any `fetch` admitted rows (fewer if there are not that many): partitions in turn."""
        out = InvocationRows(fields)
        for partition in range(self.partitions):
            if len(out) >= fetch:
                break
            out.extend(await self._partition_rows(partition, None, fields, f, extra, fetch - len(out)))
        return out.where([i < fetch for i in range(len(out))])

    async def invocations(self, fields: Sequence[str], f: InvocationFilter, ids: Iterable[str] | None,
                          retry: bool = False, journal: bool = False, fetch: int | None = None) -> InvocationRows:
        """Every listed invocation `f` admits (only `ids` when given; any `fetch` of them when
        given), with `fields` (which must start with status, service, key), and retry due times /
        journal lengths when asked. Raises `redis.RedisError`."""
        if fetch is not None and ids is None:
            return await self._first_rows(fetch, tuple(fields), f, (retry, journal))
        by_partition: dict[int, list[str] | None] = {p: None for p in range(self.partitions)}
        if ids is not None:
            by_partition = {}
            for i in sorted(set(ids)):
                p = partition_of_id(i, self.partitions)
                if p is not None:
                    by_partition.setdefault(p, []).append(i)  # type: ignore[union-attr]
        found = await asyncio.gather(*(self._partition_rows(p, got, tuple(fields), f, (retry, journal))
                                       for p, got in by_partition.items()))
        out = InvocationRows(tuple(fields))
        for rows in found:
            out.extend(rows)
        return out

    async def journal(self, partition: int, invocation_id: str) -> list[bytes]:
        """The stored journal entries of one invocation (framed messages, oldest first)."""
        return cast("list[bytes]", await self._redis.lrange(journal_key(partition, invocation_id), 0, -1))

    async def keyed_hashes(self, kind: str, services: frozenset[str] | None,
                           keys: frozenset[str] | None) -> list[tuple[int, str, str, dict[bytes, bytes]]]:
        """(partition, service, key, hash) of every `kind` hash ("state", "prom") matching the
        services and keys: read directly when both are known, else found by one SCAN."""
        if self.partitions == 0:
            return []
        if services is not None and keys is not None:
            targets = [(partition_of(partition_key_for_key(k), self.partitions), s, k) for s in services for k in keys]
        else:
            targets = await self._scan_keyed(kind, services)
        found = await asyncio.gather(*(self._redis.hgetall(keyed_key(p, kind, s, k)) for p, s, k in targets))
        return [(p, s, k, cast("dict[bytes, bytes]", h)) for (p, s, k), h in zip(targets, found, strict=True) if h]

    async def _scan_keyed(self, kind: str, services: frozenset[str] | None) -> list[tuple[int, str, str]]:
        """(partition, service, key) of every `kind` hash, found with SCAN MATCH."""
        patterns = [f"sg:{{p*}}:{kind}:{s}:*" for s in sorted(services)] if services else [f"sg:{{p*}}:{kind}:*"]
        out = []
        for pattern in patterns:
            async for raw in self._redis.scan_iter(match=pattern, count=1000):
                name = raw.decode() if isinstance(raw, bytes) else raw
                tag, _, rest = name[3:].partition(f"}}:{kind}:")
                service, _, key = rest.partition(":")
                if tag.startswith("{p") and tag[2:].isdigit():
                    out.append((int(tag[2:]), service, key))
        return out
