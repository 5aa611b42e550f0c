"""Redis key schema: the only place that builds key strings.

Every key of partition `i` carries the hash tag `{p<i>}`, so all of them live in one Redis
Cluster slot and one Lua script can change them atomically. Cluster-wide keys carry no tag.
Service names cannot contain ':' (manifest name rule), so `<service>:<key>` is unambiguous.

| key                              | type   | who deletes it                                  | scripts             |
|----------------------------------|--------|-------------------------------------------------|---------------------|
| sg:{pI}:lease                    | string | TTL (lease_ttl_ms), or release                  | lease_*, every write|
| sg:{pI}:epoch                    | string | never (fencing epoch, only grows)               | lease_acquire       |
| sg:{pI}:inv:<id>                 | hash   | complete (no retention) or TTL = retention      | accept, complete, attempt_failed |
| sg:{pI}:active                   | set    | complete removes members                        | accept, complete    |
| sg:{pI}:lock:<svc>:<key>         | string | complete (hands over to the inbox head or DEL)  | accept, complete    |
| sg:{pI}:inbox:<svc>:<key>        | list   | complete pops; empty lists vanish               | accept, complete    |
| sg:{pI}:state:<svc>:<key>        | hash   | ClearAllState from the handler                  | accept, complete    |
| sg:cluster                       | hash   | never (partitions: P fixed at first start)      | -                   |
| sg:members                       | hash   | pruned by any worker once a member expired      | -                   |
| sg:routes                        | hash   | overwritten on every lease acquisition          | lease_acquire       |
| sg:registry                      | hash   | never (version + one field per deployment)     | registry.py (inline)|

Retired names are never reused for another meaning.
"""

from __future__ import annotations

from shardgate.cluster import CLUSTER_KEY as CLUSTER  # noqa: F401  (listed for the schema table)
MEMBERS = "sg:members"
ROUTES = "sg:routes"


def tag(partition: int) -> str:
    return f"sg:{{p{partition}}}:"


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
