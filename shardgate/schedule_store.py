"""Schedules in Redis: key names, the stored record, and the admin API's writes and reads.

A schedule lives on partition `partition_of(hash_str(id))` under that partition's hash tag:

| key                          | type | who deletes it          | written by                               |
|------------------------------|------|-------------------------|------------------------------------------|
| sg:{pI}:sched:<id>           | hash | DELETE /schedules/{id}  | put, patch (here); schedule_fire.lua     |
| sg:{pI}:sched-hist:<id>      | list | DELETE (capped, LTRIM)  | schedule_fire.lua                        |
| sg:{pI}:sched-due            | zset | put/patch/delete, fire  | score = next nominal ms of active ones   |
| sg:{pI}:sched-ids            | set  | DELETE                  | put (every schedule of the partition)    |

The record's fields are `Field`; the definition is stored as canonical JSON (`def`). Every PUT or
PATCH bumps `ver`, and the partition leader's fenced fire transition (`partition/lua/
schedule_fire.lua`) only commits for the version and nominal time it planned with, so a tick
planned before an admin change never fires after it. The admin writes are configuration writes
(like the registry's): they carry no fence token, they only ever replace the definition and the
due time, never the fire state the leader owns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shardgate.schedule import ScheduleDefinition, decode_definition, encode_definition, iso_ms, upcoming
from shardgate.sharding import hash_str, partition_of

HISTORY_CAP = 10  # ticks kept in a schedule's history list


class Field(str, Enum):
    """Fields of the schedule hash (`sg:{pI}:sched:<id>`)."""

    DEFINITION = "def"  # canonical JSON of the ScheduleDefinition
    VERSION = "ver"  # bumped by every PUT / PATCH
    NEXT = "next"  # next nominal ms; "" once ended
    PAUSED = "paused"  # "1" while paused
    CREATED = "created"  # ms of the first PUT
    UPDATED = "updated"  # ms of the last PUT / PATCH
    FIRED = "fired"  # ticks fired
    SKIPPED = "skipped"  # ticks skipped (missed beyond catch-up, overlap, unknown target)
    LAST_NOMINAL = "last_nominal"  # nominal ms of the last fired tick
    LAST_INVOCATION = "last_inv"  # invocation id of the last fired tick
    LAST_FIRED = "last_fired"  # ms when the last tick fired


class Action(str, Enum):
    """What happened to a tick (history entries, metrics labels)."""

    FIRED = "fired"
    MISSED = "missed"  # skipped by the catch-up rule
    OVERLAP = "overlap"  # skipped: the previous invocation still ran
    NO_TARGET = "no_target"  # skipped: the target is not registered any more


log = logging.getLogger(__name__)

CHANGES_KEY = "sg:sched-changes"
"""A counter the admin side bumps after every schedule write that changed something. Each worker
reads it (one GET for all its partitions, `partition.schedules.ScheduleChanges`) and wakes its
schedule loops when it moved, so the loops need not poll their due sets often. Outside every
partition's slot, hence written after (not in) the schedule's own script."""


def lua_fields(prefix: str = "F") -> str:
    """`local <prefix>_<NAME> = '<field>'` for every `Field`: the head of every schedule script."""
    return "".join(f"local {prefix}_{f.name} = '{f.value}'\n" for f in Field)


def schedule_partition(schedule_id: str, partitions: int) -> int:
    """The partition a schedule lives on (a hash of its id)."""
    return partition_of(hash_str(schedule_id), partitions)


def schedule_key(partition: int, schedule_id: str) -> str:
    return f"sg:{{p{partition}}}:sched:{schedule_id}"


def history_key(partition: int, schedule_id: str) -> str:
    return f"sg:{{p{partition}}}:sched-hist:{schedule_id}"


def due_key(partition: int) -> str:
    return f"sg:{{p{partition}}}:sched-due"


def index_key(partition: int) -> str:
    return f"sg:{{p{partition}}}:sched-ids"


# KEYS[1]=sched KEYS[2]=due KEYS[3]=ids; ARGV[1]=id ARGV[2]=definition ARGV[3]=now_ms ARGV[4]=next ms
# or '' ARGV[5]='1' when paused; returns {version, 1 when created}
_PUT = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local ver = redis.call('HINCRBY', KEYS[1], F_VERSION, 1)
redis.call('HSET', KEYS[1], F_DEFINITION, ARGV[2], F_NEXT, ARGV[4], F_PAUSED, ARGV[5], F_UPDATED, ARGV[3])
if created then
  redis.call('HSET', KEYS[1], F_CREATED, ARGV[3], F_FIRED, 0, F_SKIPPED, 0)
end
if ARGV[5] == '1' or ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[1])
return {ver, created and 1 or 0}
"""

# KEYS[1]=sched KEYS[2]=due; ARGV[1]=id ARGV[2]=expected version ARGV[3]='1' pause / '' resume
# ARGV[4]=next ms (resume) ARGV[5]=now_ms; returns the new version, 0 when missing, -1 on a version race
_PATCH = """
local ver = redis.call('HGET', KEYS[1], F_VERSION)
if not ver then return 0 end
if ver ~= ARGV[2] then return -1 end
ver = redis.call('HINCRBY', KEYS[1], F_VERSION, 1)
redis.call('HSET', KEYS[1], F_PAUSED, ARGV[3], F_UPDATED, ARGV[5])
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], F_NEXT, ARGV[4])
  if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) end
end
return ver
"""

# KEYS[1]=sched KEYS[2]=hist KEYS[3]=due KEYS[4]=ids; ARGV[1]=id; returns 1 when it existed
_DELETE = """
local existed = redis.call('DEL', KEYS[1], KEYS[2]) > 0
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return existed and 1 or 0
"""


@dataclass(frozen=True, slots=True)
class TickRecord:
    """One history entry: a tick's nominal time, what happened, and its invocation."""

    nominal_ms: int
    action: Action
    at_ms: int
    invocation_id: str | None = None

    def encode(self) -> str:
        return json.dumps({"nominal": self.nominal_ms, "action": self.action.value, "at": self.at_ms,
                           "inv": self.invocation_id}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> TickRecord:
        d = json.loads(raw)
        return cls(int(d["nominal"]), Action(d["action"]), int(d["at"]), d.get("inv"))


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A schedule as read back: its definition, fire state and recent ticks (newest first)."""

    definition: ScheduleDefinition
    version: int
    next_ms: int | None
    paused: bool
    created_ms: int
    updated_ms: int
    fired: int
    skipped: int
    last_nominal_ms: int | None
    last_invocation_id: str | None
    history: list[TickRecord]

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes], history: list[bytes]) -> StoredSchedule:
        """Decode a schedule hash. Raises ScheduleError / KeyError for a corrupt record."""
        f = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: Field) -> int | None:
            value = f.get(name.value, "")
            return int(value) if value else None

        return cls(decode_definition(f[Field.DEFINITION.value]), num(Field.VERSION) or 0, num(Field.NEXT),
                   f.get(Field.PAUSED.value) == "1", num(Field.CREATED) or 0, num(Field.UPDATED) or 0,
                   num(Field.FIRED) or 0, num(Field.SKIPPED) or 0, num(Field.LAST_NOMINAL),
                   f.get(Field.LAST_INVOCATION.value) or None, [TickRecord.decode(h) for h in history])

    @property
    def state(self) -> str:
        """active, paused or ended."""
        if self.paused:
            return "paused"
        return "ended" if self.next_ms is None else "active"


class ScheduleStore:
    """The admin side of schedules: create/replace, pause/resume, delete, read, list."""

    def __init__(self, redis: Redis, partitions: int) -> None:
        self._redis = redis
        self.partitions = partitions
        self._put = redis.register_script(lua_fields() + _PUT)
        self._patch = redis.register_script(lua_fields() + _PATCH)
        self._delete = redis.register_script(_DELETE)

    def partition(self, schedule_id: str) -> int:
        return schedule_partition(schedule_id, self.partitions)

    async def put(self, d: ScheduleDefinition, next_ms: int | None, paused: bool, now_ms: int) -> tuple[int, bool]:
        """Create or replace; returns (version, created). Raises RedisError."""
        p = self.partition(d.schedule_id)
        sid = d.schedule_id
        ver, created = await self._put(
            keys=[schedule_key(p, sid), due_key(p), index_key(p)],
            args=[sid, encode_definition(d), now_ms, "" if next_ms is None else next_ms, "1" if paused else ""])
        await self._changed()
        return int(ver), bool(created)

    async def set_paused(self, schedule_id: str, expected_version: int, paused: bool, next_ms: int | None,
                         now_ms: int) -> int:
        """Pause or resume (resume sets the next nominal time); the new version, 0 when the
        schedule does not exist, -1 when its version is no longer `expected_version`. Raises RedisError."""
        p = self.partition(schedule_id)
        version = int(await self._patch(
            keys=[schedule_key(p, schedule_id), due_key(p)],
            args=[schedule_id, expected_version, "1" if paused else "", "" if next_ms is None else next_ms,
                  now_ms]))
        if version > 0:
            await self._changed()
        return version

    async def delete(self, schedule_id: str) -> bool:
        """Remove a schedule and its history; False when it did not exist. Raises RedisError."""
        p = self.partition(schedule_id)
        deleted = bool(await self._delete(
            keys=[schedule_key(p, schedule_id), history_key(p, schedule_id), due_key(p), index_key(p)],
            args=[schedule_id]))
        if deleted:
            await self._changed()
        return deleted

    async def _changed(self) -> None:
        """Bump CHANGES_KEY. The write before it has committed, so a failure here is only logged:
        the partition's schedule loop then sees the change at its next look
        (`partition.schedules.IDLE_S`) instead of within a poll of the counter."""
        try:
            await self._redis.incr(CHANGES_KEY)
        except RedisError as e:
            log.warning("schedule written, but the change counter not (%s): the workers see it within "
                        "their idle look", type(e).__name__)

    async def get(self, schedule_id: str) -> StoredSchedule | None:
        """The schedule, or None. Raises RedisError."""
        p = self.partition(schedule_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(schedule_key(p, schedule_id))
            pipe.lrange(history_key(p, schedule_id), 0, HISTORY_CAP - 1)
            raw, history = await pipe.execute()
        return StoredSchedule.from_hash(raw, history) if raw else None

    async def list(self) -> list[StoredSchedule]:
        """Every schedule of every partition, sorted by id (two pipelined round trips). Raises RedisError."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.smembers(index_key(p))
            members = cast("list[set[bytes]]", await pipe.execute())
        ids = sorted(m.decode() for ms in members for m in ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(schedule_key(self.partition(sid), sid))
            raws = cast("list[dict[bytes, bytes]]", await pipe.execute())
        return [StoredSchedule.from_hash(raw, []) for raw in raws if raw]


def describe(s: StoredSchedule) -> dict[str, Any]:
    """The JSON fields every view of a schedule shares (definition and fire state)."""
    out = s.definition.to_json()
    out.update(state=s.state, paused=s.paused, version=s.version, fired=s.fired, skipped=s.skipped,
               created_at=iso_ms(s.created_ms), updated_at=iso_ms(s.updated_ms),
               next_fire_times=[iso_ms(t) for t in upcoming(s.definition, None if s.paused else s.next_ms, 5)],
               last_invocation_id=s.last_invocation_id,
               last_nominal_time=None if s.last_nominal_ms is None else iso_ms(s.last_nominal_ms))
    return out


def sys_schedule_row(s: StoredSchedule) -> dict[str, Any]:
    """One row of the `/query` table `sys_schedule` (NULLs as None; times RFC 3339 UTC)."""
    d, t = s.definition, s.definition.target
    return {
        "id": d.schedule_id, "state": s.state, "cron": d.cron, "every": d.every, "timezone": d.timezone,
        "target_service_name": t.service, "target_service_key": t.key, "target_handler_name": t.handler,
        "scope": t.scope, "limit_key": t.limit_key, "catch_up": d.catch_up.value, "overlap": d.overlap.value,
        "next_fire_at": None if s.paused or s.next_ms is None else iso_ms(s.next_ms),
        "fired": s.fired, "skipped": s.skipped, "last_invocation_id": s.last_invocation_id,
        "last_nominal_at": None if s.last_nominal_ms is None else iso_ms(s.last_nominal_ms),
        "created_at": iso_ms(s.created_ms), "modified_at": iso_ms(s.updated_ms),
    }
