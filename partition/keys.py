"""Redis key schema: the only place that builds key strings.

Every key of partition `i` carries the hash tag `{p<i>}`, so all of them live in one Redis
Cluster slot and one Lua script can change them atomically. Cluster-wide keys carry no tag.
Service names cannot contain ':' (manifest name rule), so `<service>:<key>` is unambiguous.

| key                              | type   | who deletes it                                  | scripts             |
|----------------------------------|--------|-------------------------------------------------|---------------------|
| sg:{pI}:lease                    | string | TTL (lease_ttl_ms), or release                  | lease_*, every write|
| sg:{pI}:epoch                    | string | never (fencing epoch, only grows)               | lease_acquire       |
| sg:{pI}:inv:<id>                 | hash   | apply END (no retention) or TTL = retention     | accept, apply, attempt_start, notify |
| sg:{pI}:active                   | set    | ids with status invoked; apply/notify maintain  | accept, apply, attempt_start, notify |
| sg:{pI}:lock:<svc>:<key>         | string | apply END (hands over to the inbox head or DEL) | accept, apply, attempt_start |
| sg:{pI}:inbox:<svc>:<key>        | list   | apply END pops; empty lists vanish              | accept, apply, attempt_start |
| sg:{pI}:state:<svc>:<key>        | hash   | ClearAllState; TTL = retention for workflows    | accept, apply, attempt_start |
| sg:{pI}:journal:<id>             | list   | apply END                                       | apply, attempt_start, notify |
| sg:{pI}:timers                   | zset   | each firing transition ZREMs its member         | accept, apply, attempt_start, notify |
| sg:{pI}:outbox                   | list   | outbox_ack after delivery                       | apply, outbox_ack   |
| sg:{pI}:prom:<wf>:<key>          | hash   | TTL = workflow retention at the run's END       | apply               |
| sg:{pI}:promw:<wf>:<key>         | hash   | apply PC removes a promise's waiters            | apply               |
| sg:cluster                       | hash   | never (partitions: P fixed at first start)      | -                   |
| sg:members                       | hash   | pruned by any worker once a member expired      | -                   |
| sg:routes                        | hash   | overwritten on every lease acquisition          | lease_acquire       |
| sg:registry                      | hash   | never (version + one field per deployment)     | registry.py (inline)|

Inside the invocation hash, `n:<key>` fields record which notifications (c<completion id>,
s<signal index>, n<signal name>) the journal holds, and `wait` the awaited keys while suspended.
Timer members: `s|<id>` scheduled start, `r|<id>` retry, `w|<id>|<completion id>` sleep.

Retired names are never reused for another meaning.
"""

from __future__ import annotations

CLUSTER = "sg:cluster"
REGISTRY = "sg:registry"

MEMBERS = "sg:members"
ROUTES = "sg:routes"


def lease(partition: int) -> str:
    return f"sg:{{p{partition}}}:lease"


def epoch(partition: int) -> str:
    return f"sg:{{p{partition}}}:epoch"


def invocation_prefix(partition: int) -> str:
    """Prefix of invocation hashes; scripts append an id to reach the inbox head's hash."""
    return f"sg:{{p{partition}}}:inv:"


def invocation(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:inv:{invocation_id}"


def active(partition: int) -> str:
    return f"sg:{{p{partition}}}:active"


def lock(partition: int, service: str, key: str) -> str:
    return f"sg:{{p{partition}}}:lock:{service}:{key}"


def inbox(partition: int, service: str, key: str) -> str:
    return f"sg:{{p{partition}}}:inbox:{service}:{key}"


def state(partition: int, service: str, key: str) -> str:
    return f"sg:{{p{partition}}}:state:{service}:{key}"


def journal(partition: int, invocation_id: str) -> str:
    return f"sg:{{p{partition}}}:journal:{invocation_id}"


def journal_prefix(partition: int) -> str:
    """Prefix of journals; apply.lua appends an id to notify promise waiters."""
    return f"sg:{{p{partition}}}:journal:"


def timers(partition: int) -> str:
    return f"sg:{{p{partition}}}:timers"


def outbox(partition: int) -> str:
    return f"sg:{{p{partition}}}:outbox"


def promises(partition: int, service: str, key: str) -> str:
    return f"sg:{{p{partition}}}:prom:{service}:{key}"


def promise_waiters(partition: int, service: str, key: str) -> str:
    return f"sg:{{p{partition}}}:promw:{service}:{key}"
