"""Every Lua transition's KEYS share one hash slot, for every partition: statically (the key lists
the `Scripts` wrappers build, checked with Redis Cluster's own CRC16 slot function) and on a real
Redis Cluster (every wrapper runs there for every partition and is fenced, never CROSSSLOT)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from ingress.admin.query import store as query
from partition import keys
from partition.errors import Fenced
from partition.invocation import HandlerKind, InvocationRecord, Result, Status
from partition.scripts import COMPOSITION, Scripts, Target
from partition.transition import End
from shardgate import keys as cluster_keys
from shardgate import redisconn
from shardgate import schedule_store as schedules
from tests.rediscluster.cluster import RedisClusterProcs

PARTITIONS_CHECKED = 512  # more than any deployment's partition count we document
TOKEN = "not-the-lease-token"


class _Recorded(Exception):
    pass


class RecordingScripts(Scripts):
    """The real wrappers; `_run` records the script name and its KEYS instead of running it."""

    def __init__(self) -> None:
        super().__init__(Redis())  # registering a script does not connect
        self.calls: list[tuple[str, list[str]]] = []

    async def _run(self, name: str, keys_: list[str], args: Sequence[Any]) -> Any:
        self.calls.append((name, list(keys_)))
        raise _Recorded


def targets(p: int) -> list[Target]:
    """A plain service call, a virtual-object key and a scoped object on partition `p`."""
    return [Target(p, f"inv-{p}-a", "Greeter", None), Target(p, f"inv-{p}-b", "Counter", f"k{p}"),
            Target(p, f"inv-{p}-c", "Counter", f"k{p}", scope="tenant1")]


def _ack_argument(s: Scripts) -> Any:
    """`outbox_ack` takes a count (trim) or, since the ack-by-message change, the delivered messages."""
    third = list(inspect.signature(s.outbox_ack).parameters)[2]
    return 1 if third == "count" else [b"message"]


def wrapper_calls(s: Scripts, t: Target) -> list[Callable[[], Awaitable[Any]]]:
    """One call of every transition wrapper for target `t`."""
    record = InvocationRecord(Status.INVOKED, t.service, "h", HandlerKind.EXCLUSIVE, key=t.key, scope=t.scope)
    p, inv = t.partition, t.invocation_id
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: s.accept(t, TOKEN, record),
        lambda: s.apply(t, TOKEN, 0, 0, End(Result(value=b"1")), 0, []),
        lambda: s.append(t, TOKEN, 0, 0, "nonce", 1, []),  # a live attempt's entries so far
        lambda: s.attempt_start(t, TOKEN),
        lambda: s.notify(p, inv, TOKEN, "k", b""),
        lambda: s.settle(p, inv, TOKEN),
        lambda: s.outbox_ack(p, TOKEN, _ack_argument(s)),
        lambda: s.kill(t, TOKEN, 0),
        lambda: s.cancel(t, TOKEN),
        lambda: s.purge(t, TOKEN),
        lambda: s.pause(p, inv, TOKEN),
        lambda: s.resume(p, inv, TOKEN),
        lambda: s.attach(p, inv, TOKEN, "caller", 0, 1, False),  # a handler's attach / get-output
        lambda: s.restart(p, inv, TOKEN, 0, 1, record, f"{inv}-new", [b"entry"], ["c1"]),  # restart-as-new
    ]
    if hasattr(s, "scope_limits"):  # flow control's transition (new concurrency limits)
        calls.append(lambda: s.scope_limits(p, TOKEN, 0, [("bucket", 1)]))
    if t.key is not None:  # `restate state edit`: an object key's state
        calls.append(lambda: s.state_edit(t, TOKEN, None, {b"k": b"v"}))
    return calls


async def test_every_transitions_keys_share_the_partitions_slot() -> None:
    s = RecordingScripts()
    for p in range(PARTITIONS_CHECKED):
        for t in targets(p):
            for call in wrapper_calls(s, t):
                with pytest.raises(_Recorded):
                    await call()
        slot = key_slot(keys.lease(p).encode())
        for name, used in s.calls:
            assert {key_slot(k.encode()) for k in used} == {slot}, (p, name, used)
        s.calls.clear()


async def test_every_composed_script_is_covered_by_the_check() -> None:
    s = RecordingScripts()
    for t in targets(3):
        for call in wrapper_calls(s, t):
            with pytest.raises(_Recorded):
                await call()
    assert {name for name, _ in s.calls} == set(COMPOSITION)


def test_lease_script_keys_and_prefixes_share_the_slot() -> None:
    """The lease scripts' KEYS (lease, epoch, route) and the prefixes Lua appends ids to."""
    for p in range(PARTITIONS_CHECKED):
        slot = key_slot(keys.lease(p).encode())
        built = [keys.epoch(p), cluster_keys.route(p), keys.invocation_prefix(p) + "x",
                 keys.journal_prefix(p) + "x", keys.vqueue_running(p, "b"), keys.vqueue_limits(p),
                 keys.vqueue_ring(p, "b"), keys.vqueue_queue(p, "b", "l"), keys.vqueue_buckets(p)]
        assert {key_slot(k.encode()) for k in built} == {slot}, (p, built)


def test_schedule_and_query_script_keys_share_the_slot() -> None:
    """The other scripts: schedule put/patch/delete (`shardgate.schedule_store`), schedule firing
    (`partition.schedules`, with the lease and outbox) and the admin query's scan.lua."""
    for p in range(PARTITIONS_CHECKED):
        slot = key_slot(keys.lease(p).encode())
        built = [schedules.schedule_key(p, "s1"), schedules.history_key(p, "s1"), schedules.due_key(p),
                 schedules.index_key(p), keys.outbox(p), query.index_key(p), query.inv_key(p, "i"),
                 query.journal_key(p, "i"), query.timers_key(p), query.keyed_key(p, "state", "Counter", "k")]
        assert {key_slot(k.encode()) for k in built} == {slot}, (p, built)


def test_cluster_wide_keys_are_untagged_single_keys() -> None:
    """sg:cluster, sg:registry and sg:members carry no hash tag: each lives in its own slot and is
    only ever touched by single-key commands (HGET/HSET/HGETALL, WATCH/MULTI on one key)."""
    for key in (cluster_keys.CLUSTER, cluster_keys.REGISTRY, cluster_keys.MEMBERS):
        assert "{" not in key


@pytest.mark.timeout(60)
async def test_every_transition_runs_on_the_real_cluster_for_every_partition(rcluster: RedisClusterProcs) -> None:
    """No lease is held, so each script stops at its fence: what this proves is that Redis Cluster
    accepted every KEYS list (a cross-slot one would be refused before the script ran)."""
    client = redisconn.connect(rcluster.url, timeout_s=5.0, max_connections=16)
    s = Scripts(client)
    try:
        for p in range(64):
            for t in targets(p):
                for call in wrapper_calls(s, t):
                    try:
                        result = await call()
                    except Fenced:
                        continue
                    assert result is False  # outbox_ack answers False when fenced
    finally:
        await client.aclose()


async def test_a_cross_slot_key_list_is_refused_by_the_cluster(rcluster: RedisClusterProcs) -> None:
    """The check above can fail: two partitions' keys in one script are refused."""
    client = redisconn.connect(rcluster.url, timeout_s=5.0, max_connections=4)
    script = client.register_script("return 1")
    try:
        with pytest.raises((RedisClusterException, ResponseError)):
            await script(keys=[keys.lease(0), keys.lease(1)])
    finally:
        await client.aclose()
