"""Every request path of a real worker + ingress + restate-sdk deployment on a real Redis Cluster.

Two workers and an ingress (`DevCluster`) run against a 3-primary / 3-replica cluster through a
`redis+cluster://` URL. Each path below runs its Lua transitions (accept, attempt_start, apply,
notify, settle, outbox_ack, kill, cancel, the lease scripts) on whichever primary serves the
partition's hash slot; a script touching keys of two slots fails (CROSSSLOT, or redis-py's own
"all keys must map to the same key slot"), so a pass proves every script single-slot in use. The
partitions are spread over all three primaries (checked), so every primary serves some of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.crc import key_slot

from partition import keys
from shardgate.sharding import partition_key_for_key, partition_of
from tests.clusters import poll
from tests.rediscluster.cluster import RedisClusterProcs, flush_primaries
from tests.rediscluster.harness import PARTITIONS, Env, shardgate_on

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(rcluster: RedisClusterProcs, tmp_path_factory: pytest.TempPathFactory,
              sdk_deployment: str) -> AsyncIterator[Env]:
    flush_primaries(rcluster)
    async with shardgate_on(rcluster.url, tmp_path_factory.mktemp("sg") / "data", sdk_deployment) as e:
        yield e


def key_per_partition(prefix: str) -> dict[int, str]:
    """One virtual-object key landing on each partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        key = f"{prefix}-{i}"
        found.setdefault(partition_of(partition_key_for_key(key), PARTITIONS), key)
        i += 1
    return found


async def output(env: Env, inv: str, want_status: int = 200, deadline_s: float = 30.0) -> object:
    """Poll `/restate/output/<id>` until it answers `want_status`; its body."""
    async def probe() -> tuple[object] | None:
        status, body = await env.get(f"/restate/output/{inv}")
        return (body,) if status == want_status else None

    return (await poll(f"output of {inv}", deadline_s, probe))[0]


async def test_partitions_spread_over_every_primary(env: Env, rcluster: RedisClusterProcs) -> None:
    primaries = {rcluster.primary_for_slot(key_slot(keys.lease(p).encode())) for p in range(PARTITIONS)}
    assert len(primaries) == 3, primaries


async def test_plain_call_and_send(env: Env) -> None:
    name = unique("n")
    assert await env.post("/restate/call/Greeter/greet", name) == (200, f"Hello, {name}!")
    status, ack = await env.post("/restate/send/Greeter/greet", name)
    assert status == 202 and ack["status"] == "Accepted", ack
    assert await output(env, ack["invocationId"]) == f"Hello, {name}!"


async def test_idempotent_call_and_send(env: Env) -> None:
    ik = {"idempotency-key": unique("ik")}
    first = await env.post("/restate/call/Greeter/with_run", "a", headers=ik)
    assert first[0] == 200, first
    assert await env.post("/restate/call/Greeter/with_run", "a", headers=ik) == first
    ik2 = {"idempotency-key": unique("ik")}
    status, ack = await env.post("/restate/send/Greeter/greet", "b", headers=ik2)
    assert status == 202 and ack["status"] == "Accepted", ack
    status, again = await env.post("/restate/send/Greeter/greet", "b", headers=ik2)
    assert (status, again) == (202, {"invocationId": ack["invocationId"], "status": "PreviouslyAccepted"})


async def test_virtual_objects_on_every_partition(env: Env) -> None:
    objects = key_per_partition(unique("ctr"))

    async def add_twice(key: str) -> None:
        assert await env.post(f"/restate/call/Counter/{key}/add", 2) == (200, 2)
        status, ack = await env.post(f"/restate/send/Counter/{key}/add", 3)  # queued behind nothing
        assert status == 202, ack
        assert await output(env, ack["invocationId"]) == 5

    await asyncio.gather(*(add_twice(k) for k in objects.values()))
    for key in objects.values():
        assert await env.post(f"/restate/call/Counter/{key}/get") == (200, 5)


async def test_concurrent_adds_on_one_key_are_serialised(env: Env) -> None:
    key = unique("hot")
    results = await asyncio.gather(*(env.post(f"/restate/call/Counter/{key}/add", 1) for _ in range(20)))
    assert sorted(r[1] for r in results) == list(range(1, 21))


async def test_workflow_run_promise_and_output(env: Env) -> None:
    wf = unique("wf")
    status, ack = await env.post(f"/restate/send/Signup/{wf}/run", "a@b.c")
    assert status == 202, ack
    await output(env, ack["invocationId"], want_status=470)  # running, waiting on its promise
    assert await env.post(f"/restate/call/Signup/{wf}/confirm", "s3cr3t") == (200, None)
    assert await output(env, ack["invocationId"]) == "a@b.c confirmed with s3cr3t"
    assert await env.post(f"/restate/call/Signup/{wf}/status") == (200, "s3cr3t")
    status, body = await env.get(f"/restate/workflow/Signup/{wf}/output")
    assert (status, body) == (200, "a@b.c confirmed with s3cr3t")


async def test_delayed_send_runs_after_its_delay(env: Env) -> None:
    name = unique("later")
    status, ack = await env.post("/restate/send/Greeter/greet?delay=500ms", name)
    assert status == 202, ack
    assert await output(env, ack["invocationId"]) == f"Hello, {name}!"


async def test_sleep_timer_fires(env: Env) -> None:
    """A handler sleeping suspends; the timer's firing (notify) wakes it and it completes."""
    assert await env.post("/restate/call/Greeter/sleepy", 1, timeout_s=30) == (200, "slept 1s")


async def test_cancel_of_a_delayed_send_and_kill_of_a_running_call(env: Env) -> None:
    status, ack = await env.post("/restate/send/Greeter/greet?delay=60s", "never")
    assert status == 202, ack
    delayed = ack["invocationId"]
    assert await env.admin("PATCH", f"/invocations/{delayed}/cancel") == (200, None)
    status, body = await env.get(f"/restate/attach/{delayed}")  # a never-started one is removed
    assert (status, body) == (404, {"code": 404, "message": "not found", "source": "invocation"})

    status, ack = await env.post("/restate/send/Greeter/slow_asyncio", 60)
    assert status == 202, ack
    running = ack["invocationId"]
    await output(env, running, want_status=470)
    attached = asyncio.create_task(env.get(f"/restate/attach/{running}", timeout_s=60))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(attached), 0.2)  # attached before the kill, usually
    assert not attached.done(), "the attach returned before the kill"
    assert await env.admin("PATCH", f"/invocations/{running}/kill") == (200, None)
    status, body = await asyncio.wait_for(attached, 30)
    assert status == 409 and body["message"] == "killed", body


async def test_ingress_reads_partition_keys_from_every_primary(env: Env, rcluster: RedisClusterProcs) -> None:
    sizes = []
    for port, role in rcluster.roles().items():
        if role == "master":
            with contextlib.closing(rcluster.node(port).client()) as c:
                sizes.append(int(c.dbsize()))
    assert len(sizes) == 3 and all(n > 0 for n in sizes), sizes
