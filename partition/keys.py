"""Redis key schema: the only place that builds key strings.

Every key of partition `i` carries the hash tag `{p<i>}`, so all of them live in one Redis
Cluster slot and one Lua script can change them atomically. Cluster-wide keys carry no tag.
Service names cannot contain ':' (manifest name rule), so `<service>:<key>` is unambiguous.

| key                              | type   | who deletes it                                  | scripts             |
|----------------------------------|--------|-------------------------------------------------|---------------------|
| sg:{pI}:lease                    | string | TTL (lease_ttl_ms), or release                  | lease_*, every write|
| sg:{pI}:epoch                    | string | never (fencing epoch, only grows)               | lease_acquire       |
| sg:{pI}:inv:<id>                 | hash   | apply END (no retention), TTL = retention, purge | accept, apply, attempt_start, notify, settle, kill, cancel, purge, pause, resume |
| sg:{pI}:active                   | set    | ids with status invoked; apply/notify/settle    | accept, apply, attempt_start, notify, settle, kill, cancel, pause, resume |
| sg:{pI}:lock:<svc>:<key>         | string | apply END / kill (hand over to the inbox head)  | accept, apply, attempt_start, kill |
| sg:{pI}:inbox:<svc>:<key>        | list   | apply END / kill pop; cancel removes; empty lists vanish (ids, and state edits queued behind the lock, `STATE_EDIT_TAG`) | accept, apply, attempt_start, kill, cancel, state_edit |
| sg:{pI}:state:<svc>:<key>        | hash   | ClearAllState; TTL = retention for workflows; state_edit replaces it | accept, apply, attempt_start, state_edit |
| sg:{pI}:journal:<id>             | list   | apply END / kill (no journal retention), TTL = journal retention (the input moved to its head), purge, purge-journal | apply, attempt_start, notify, kill, cancel, purge |
| sg:{pI}:timers                   | zset   | each firing transition ZREMs its member; cancel/kill of a scheduled one | accept, apply, attempt_start, notify, settle, kill, cancel |
| sg:{pI}:outbox                   | list   | outbox_ack after delivery                       | accept, apply, outbox_ack |
| sg:{pI}:idx                      | zset   | purge; the query readers and a periodic pass prune entries whose hash is gone | accept (`_index.lua`), purge |
| sg:{pI}:prom:<wf>:<key>          | hash   | TTL = workflow retention at the run's END       | apply               |
| sg:{pI}:promw:<wf>:<key>         | hash   | apply PC removes a promise's waiters            | apply               |
| sg:{pI}:s:<scope>:<kind>:<svc>:<key> | as above | the lock/inbox/state/prom/promw of a scoped object | as above |
| sg:{pI}:vq:run:<bucket>          | set    | apply END / kill / cancel remove the finished id | accept, attempt_start, apply, kill, cancel |
| sg:{pI}:vq:lim                   | hash   | never (bucket -> its concurrency limit, latest accept wins) | accept, attempt_start, apply, kill, cancel |
| sg:{pI}:vq:rr:<bucket>           | list   | emptied as its limit keys' queues drain (round robin) | accept, attempt_start, apply, kill, cancel |
| sg:{pI}:vq:buckets               | set    | a bucket leaves when nothing runs or waits in it | accept, attempt_start, apply, kill, cancel |
| sg:{pI}:vq:rate                  | hash   | never (bucket -> `<ms per token>(pipe)<burst>`, latest accept or scope_limits wins) | accept, attempt_start, apply, kill, cancel, scope_limits |
| sg:{pI}:vq:tat                   | hash   | never (bucket -> its next-token time in ms)      | accept, attempt_start, apply, kill, cancel, scope_limits |
| sg:{pI}:vq:q:<bucket>(pipe)<limit key> | list   | popped when a slot is handed over (FIFO)        | accept, attempt_start, apply, kill, cancel |
| sg:cluster                       | hash   | never (partitions: P fixed at first start)      | -                   |
| sg:members                       | hash   | pruned by any worker once a member expired      | -                   |
| sg:{pI}:route                    | string | lease_release; written by lease_acquire/renew    | lease_*             |
| sg:registry                      | hash   | never (version + one field per deployment)     | registry.py (inline)|

The fields of the invocation hash (`inv:<id>`), including the `n:<key>` notification index,
are tabled once in `partition/invocation.py` (`FIELDS`, `InvocationRecord`); the ops an `apply`
transition takes are in `partition/transition.py`. Timer members (`timer_member`): `s|<id>` scheduled start, `r|<id>`
retry, `w|<id>|<completion id>` sleep.

Retired names are never reused for another meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shardgate.keys import CLUSTER, MEMBERS, REGISTRY, route
from shardgate.limits import vqueue_key

__all__ = ["CLUSTER", "MEMBERS", "REGISTRY", "route"]


def lease(partition: int) -> str:
    return f"sg:{{p{partition}}}:lease"


def epoch(partition: int) -> str:
    return f"sg:{{p{partition}}}:epoch"


def invocation_index(partition: int) -> str:
    """The partition's invocation index (member = id, score = accept ms), read by `/query`;
    `_index.lua` derives the same name from an invocation hash key."""
    return f"sg:{{p{partition}}}:idx"


def invocation_prefix(partition: int) -> str:
    """Prefix of invocation hashes; scripts append an id to reach the inbox head's hash."""
    return f"sg:{{p{partition}}}:inv:"


def invocation(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:inv:{invocation_id}"


def active(partition: int) -> str:
    return f"sg:{{p{partition}}}:active"


def _keyed(partition: int, kind: str, service: str, key: str, scope: str | None) -> str:
    """A per-key key; a scope's objects have their own (`sg:{pI}:s:<scope>:<kind>:<svc>:<key>`: a
    scope holds no ':', so no scoped name equals another scope's or an unscoped one)."""
    if scope is None:
        return f"sg:{{p{partition}}}:{kind}:{service}:{key}"
    return f"sg:{{p{partition}}}:s:{scope}:{kind}:{service}:{key}"


def lock(partition: int, service: str, key: str, scope: str | None = None) -> str:
    return _keyed(partition, "lock", service, key, scope)


def inbox(partition: int, service: str, key: str, scope: str | None = None) -> str:
    return _keyed(partition, "inbox", service, key, scope)


def state(partition: int, service: str, key: str, scope: str | None = None) -> str:
    return _keyed(partition, "state", service, key, scope)


def journal(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:journal:{invocation_id}"


def journal_prefix(partition: int) -> str:
    """Prefix of journals; apply.lua appends an id to notify promise waiters."""
    return f"sg:{{p{partition}}}:journal:"


def timers(partition: int) -> str:
    return f"sg:{{p{partition}}}:timers"


def outbox(partition: int) -> str:
    return f"sg:{{p{partition}}}:outbox"


def promises(partition: int, service: str, key: str, scope: str | None = None) -> str:
    return _keyed(partition, "prom", service, key, scope)


def promise_waiters(partition: int, service: str, key: str, scope: str | None = None) -> str:
    return _keyed(partition, "promw", service, key, scope)


def vqueue_running(partition: int, bucket: str) -> str:
    """Ids holding a concurrency slot of `bucket` (Lua builds the vqueue keys the same way)."""
    return vqueue_key(partition, f"run:{bucket}")


def vqueue_limits(partition: int) -> str:
    return vqueue_key(partition, "lim")


def vqueue_ring(partition: int, bucket: str) -> str:
    return vqueue_key(partition, f"rr:{bucket}")


def vqueue_queue(partition: int, bucket: str, limit_key: str) -> str:
    return vqueue_key(partition, f"q:{bucket}|{limit_key}")


def vqueue_buckets(partition: int) -> str:
    return vqueue_key(partition, "buckets")


# ---- inbox entries ----------------------------------------------------------------------------------

STATE_EDIT_TAG = "edit|"  # an inbox entry that is a state edit queued behind the key's lock, not an id
STATE_EDIT_SEP = "\x1f"  # ends the digest of a queued state edit (hex, so it holds none)


# ---- timer members (`timers` zset) ----------------------------------------------------------------


class TimerKind(str, Enum):
    """What a timer member does when due; the value is the member's prefix before '|'."""

    START = "s"  # start a scheduled invocation (delayed send)
    RETRY = "r"  # retry a backing-off invocation
    WAKE = "w"  # complete a sleep: a SleepCompletion for the member's completion id


TIMER_SEP = "|"


@dataclass(frozen=True, slots=True)
class TimerMember:
    kind: TimerKind
    invocation_id: str
    completion_id: int | None = None  # WAKE only


def timer_prefix(kind: TimerKind) -> str:
    """What every member of this kind starts with (Lua builds START / RETRY members from it)."""
    return kind.value + TIMER_SEP


def timer_member(kind: TimerKind, invocation_id: str, completion_id: int | None = None) -> str:
    if kind is TimerKind.WAKE:
        return f"{timer_prefix(kind)}{invocation_id}{TIMER_SEP}{completion_id}"
    return timer_prefix(kind) + invocation_id


def parse_timer_member(member: str) -> TimerMember:
    """Raises ValueError for a member of no known kind."""
    raw_kind, _, rest = member.partition(TIMER_SEP)
    kind = TimerKind(raw_kind)
    if kind is not TimerKind.WAKE:
        return TimerMember(kind, rest)
    inv_id, _, cid = rest.partition(TIMER_SEP)
    return TimerMember(kind, inv_id, int(cid))
