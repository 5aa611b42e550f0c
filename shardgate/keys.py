"""Cluster-wide Redis keys (no partition hash tag): the only place that names them.

Partition keys (with the `{p<i>}` tag) are built by `partition/keys.py`, which re-exports these.

| key          | type | who deletes it                                    | written by                 |
|--------------|------|---------------------------------------------------|----------------------------|
| sg:cluster   | hash | never (partitions: P fixed at first start)        | shardgate.cluster          |
| sg:members   | hash | pruned by any worker once a member expired        | partition.leases           |
| sg:registry  | hash | never (version + one field per deployment)        | shardgate.registry (CAS)   |
| sg:limits    | hash | never (`v` version, `r:<pattern>` one per rule)   | ingress.admin.limits       |

One partition-tagged key is named here too, because the kernel's router reads it:

| key            | type   | who deletes it                                  | written by                      |
|----------------|--------|-------------------------------------------------|---------------------------------|
| sg:{pI}:route  | string | lease_release (its owner), else overwritten      | lease_acquire, lease_renew only |

`route` is the routing hint `<gRPC address>|<fence token>` of partition I. Only the fenced lease
scripts write it, in the same script as the lease, so a worker that lost the lease can never
leave a route pointing at itself; every renewal writes it again.
One pub/sub channel (not a key): `sg:membership`. A worker publishes on it when it joins, when it
hands partitions back and when it leaves; every worker listens and runs its ownership round at
once, so released partitions move in milliseconds instead of at the next heartbeat.

Retired: `sg:routes` (one hash for all partitions, written outside the fence).
"""

from __future__ import annotations

CLUSTER = "sg:cluster"
REGISTRY = "sg:registry"
MEMBERS = "sg:members"
MEMBERSHIP_CHANNEL = "sg:membership"


def route(partition: int) -> str:
    """Routing hint of one partition (same hash tag as its lease)."""
    return f"sg:{{p{partition}}}:route"
