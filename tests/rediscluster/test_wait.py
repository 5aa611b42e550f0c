"""`WAIT 1` after every transition (SHARDGATE_REDIS_WAIT_REPLICAS), on a real Redis Cluster: what it
guarantees and what it costs.

The accept transition runs through the real `Scripts.accept` wrapper (real Lua, a real lease token),
once as the worker runs it by default and once with `Scripts(acks=ReplicaAcks(1, ...))`, which
pipelines the script, the barrier write and `WAIT` on one connection
(`shardgate.redisconn.run_acknowledged`). Figures are printed (run with `-s`) and written to
`<tmp>/wait_cost.json`; docs/redis-cluster.md quotes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
import uuid
from pathlib import Path

import pytest
from redis.crc import key_slot

from partition import keys
from partition.errors import NotReplicated
from partition.invocation import HandlerKind, InvocationRecord, Status
from partition.scripts import ReplicaAcks, Scripts, Target
from shardgate import keys as cluster_keys
from shardgate import redisconn
from tests.rediscluster.cluster import RedisClusterProcs, flush_primaries

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

PARTITION = 5
SEQUENTIAL = 300
CONCURRENT = 32
ROUNDS = 10
WAIT_TIMEOUT_MS = 200


async def lease_token(scripts: Scripts, p: int) -> str:
    token = await scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), cluster_keys.route(p)],
                                        args=["bench-worker", 60_000, "127.0.0.1:1"])
    assert token, "the lease must be free"
    return str(token.decode())


async def accept_one(scripts: Scripts, token: str) -> float:
    """One accept of a fresh plain-service invocation; its latency in ms."""
    inv = f"inv-{uuid.uuid4().hex}"
    record = InvocationRecord(Status.INVOKED, "Greeter", "greet", HandlerKind.SERVICE, input_frame=b"x")
    started = time.perf_counter()
    await scripts.accept(Target(PARTITION, inv, "Greeter", None), token, record)
    return (time.perf_counter() - started) * 1000.0


async def measure(scripts: Scripts, token: str) -> dict[str, float]:
    sequential = [await accept_one(scripts, token) for _ in range(SEQUENTIAL)]
    started = time.perf_counter()
    for _ in range(ROUNDS):
        await asyncio.gather(*(accept_one(scripts, token) for _ in range(CONCURRENT)))
    elapsed_s = time.perf_counter() - started
    ordered = sorted(sequential)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
            "mean_ms": round(statistics.fmean(ordered), 3),
            f"accepts_per_s_at_{CONCURRENT}_in_flight": round(ROUNDS * CONCURRENT / elapsed_s, 1)}


async def test_wait_cost_and_what_it_confirms(rcluster: RedisClusterProcs, tmp_path: Path) -> None:
    flush_primaries(rcluster)
    client = redisconn.connect(rcluster.url, timeout_s=5.0, max_connections=64)
    try:
        plain, waiting = Scripts(client), Scripts(client, ReplicaAcks(replicas=1, timeout_ms=WAIT_TIMEOUT_MS))
        token = await lease_token(plain, PARTITION)
        await measure(plain, token)  # warm-up: connections, script cache
        without = await measure(plain, token)
        with_wait = await measure(waiting, token)  # each accept returned: the replica held it (else NotReplicated)

        # What WAIT confirms: with the replica frozen, the accept still runs on the primary but
        # WAIT answers 0 after its timeout, so the transition fails as a lost reply.
        primary = rcluster.primary_for_slot(key_slot(keys.lease(PARTITION).encode()))
        replica = rcluster.node(rcluster.replica_of(primary))
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await accept_one(waiting, token)
            frozen_ms = (time.perf_counter() - started) * 1000.0
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert frozen_ms >= WAIT_TIMEOUT_MS * 0.9
    finally:
        await client.aclose()
    figures = {"without_wait": without, "with_wait_1": with_wait,
               "replica_frozen_accept_ms": round(frozen_ms, 1), "wait_timeout_ms": WAIT_TIMEOUT_MS}
    (tmp_path / "wait_cost.json").write_text(json.dumps(figures, indent=2))
    print("\nWAIT cost:", json.dumps(figures))


async def test_with_wait_replicas_a_transition_counts_as_done_only_once_a_replica_holds_it(
        rcluster: RedisClusterProcs) -> None:
    """`Scripts(acks=ReplicaAcks(1, ...))` (SHARDGATE_REDIS_WAIT_REPLICAS=1): with the replica
    frozen an accept still runs on the primary but raises NotReplicated (a lost reply: nothing is
    acknowledged on it), and so does its re-send, a duplicate that writes nothing itself (the
    barrier write makes its WAIT cover the first accept); thawed, the re-send succeeds."""
    flush_primaries(rcluster)
    client = redisconn.connect(rcluster.url, timeout_s=5.0, max_connections=16)
    try:
        scripts = Scripts(client, ReplicaAcks(replicas=1, timeout_ms=WAIT_TIMEOUT_MS))
        token = await lease_token(scripts, PARTITION)
        record = InvocationRecord(Status.INVOKED, "Greeter", "greet", HandlerKind.SERVICE, input_frame=b"x")
        first = Target(PARTITION, f"inv-{uuid.uuid4().hex}", "Greeter", None)
        assert (await scripts.accept(first, token, record)).outcome.value == "INVOKED"
        primary = rcluster.primary_for_slot(key_slot(keys.lease(PARTITION).encode()))
        replica = rcluster.node(rcluster.replica_of(primary))
        assert replica.proc is not None
        frozen = Target(PARTITION, f"inv-{uuid.uuid4().hex}", "Greeter", None)
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await scripts.accept(frozen, token, record)
            assert await client.hget(keys.invocation(PARTITION, frozen.invocation_id), "st") == b"invoked"
            with pytest.raises(NotReplicated):
                await scripts.accept(frozen, token, record)  # the re-send: a duplicate, no write of its own
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert (await scripts.accept(frozen, token, record)).outcome.value == "DUP"
    finally:
        await client.aclose()
