"""End-to-end tests of a real multi-process cluster (`sgtools.dev.DevCluster`).

Redis + 2 partition workers + 1 ingress, 8 partitions, a short lease (2 s TTL, 300 ms heartbeat),
and the real restate-sdk conformance deployment (`sdk_deployment`). One cluster per module serves
the non-destructive tests; the crash tests (SIGKILL of a worker) start their own cluster.

Nothing here sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.cluster import CLUSTER_KEY
from shardgate.sharding import idempotent_invocation_id, partition_key_for_key, partition_of
from tests.clusters import partition_owners, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 300
FAILOVER_BOUND_S = LEASE_TTL_MS / 1000 + 2.0
POLL_MARGIN_S = 0.5  # the ingress re-polls the routing table at most every 0.5 s while rerouting


# ---- cluster plumbing ----------------------------------------------------------------------------


@dataclass
class Env:
    """A started cluster with the conformance deployment registered, plus clients for it."""

    cluster: DevCluster
    redis: Redis
    http: aiohttp.ClientSession

    @property
    def ingress(self) -> str:
        return self.cluster.ingress_url

    async def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                   timeout_s: float = 30.0) -> tuple[int, Any]:
        """POST to the ingress (JSON body unless None); returns (status, decoded JSON or text)."""
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout_s)}
        if body is not None:
            kwargs["json"] = body
        else:  # handlers without input refuse any content-type (aiohttp adds octet-stream)
            kwargs["skip_auto_headers"] = {"Content-Type"}
        async with self.http.post(f"{self.ingress}{path}", headers=headers, **kwargs) as r:
            return r.status, await _decode(r)

    async def get(self, path: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        async with self.http.get(f"{self.ingress}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status, await _decode(r)


async def _decode(r: aiohttp.ClientResponse) -> Any:
    text = await r.text()
    try:
        return await r.json(content_type=None)
    except ValueError:
        return text


def cluster_spec(data_dir: Path) -> ClusterSpec:
    return ClusterSpec(
        workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=data_dir,
        lease_ttl_ms=LEASE_TTL_MS, start_timeout_s=45.0, log_level="INFO",
        extra_env={"SHARDGATE_LEASE_TTL_MS": str(LEASE_TTL_MS),
                   "SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)},
    )


async def owners(env: Env) -> dict[int, int] | None:
    return await partition_owners(env.cluster, env.redis, PARTITIONS)


async def settled_owners(env: Env, deadline_s: float = 20.0) -> dict[int, int]:
    return await poll("partition ownership to settle", deadline_s, lambda: owners(env))


async def register_deployment(env: Env, uri: str) -> None:
    async with env.http.post(f"{env.cluster.admin_url}/deployments", json={"uri": uri}) as r:
        assert r.status in (200, 201), await r.text()

    async def greeter_ready() -> bool | None:
        status, _ = await env.post("/restate/call/Greeter/greet", "ready", timeout_s=10)
        return True if status == 200 else None

    await poll("the ingress to serve the registered deployment", 20.0, greeter_ready)


@contextlib.asynccontextmanager
async def running_cluster(data_dir: Path, sdk_url: str) -> AsyncIterator[Env]:
    async with DevCluster(cluster_spec(data_dir)) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
        env = Env(cluster, redis, http)
        try:
            await settled_owners(env)
            await register_deployment(env, sdk_url)
            yield env
        finally:
            await http.close()
            await redis.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[Env]:
    """One cluster for the tests that do not destroy anything."""
    async with running_cluster(tmp_path_factory.mktemp("cluster") / "data", sdk_deployment) as env:
        yield env


# ---- key / partition helpers ---------------------------------------------------------------------


def keys_per_partition(prefix: str) -> dict[int, str]:
    """One virtual-object key for every partition."""
    found: dict[int, str] = {}
    for i in itertools.count():
        key = f"{prefix}-{i}"
        found.setdefault(partition_of(partition_key_for_key(key), PARTITIONS), key)
        if len(found) == PARTITIONS:
            return found
    raise AssertionError("unreachable")


def idempotency_key_on(partitions: set[int], service: str, handler: str) -> tuple[str, int]:
    """An idempotency key whose invocation of the unkeyed `service/handler` lands on one of `partitions`."""
    for i in itertools.count():
        ik = f"ik-{uuid.uuid4().hex}-{i}"
        p = partition_of(idempotent_invocation_id(service, None, handler, ik).partition_key, PARTITIONS)
        if p in partitions:
            return ik, p
    raise AssertionError("unreachable")


async def in_flight(env: Env, worker: int) -> float:
    """The worker's `shardgate_partition_invocations_in_flight` gauge."""
    url = f"http://127.0.0.1:{env.cluster.workers[worker].metrics_port}/metrics"
    async with env.http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("shardgate_partition_invocations_in_flight "):
            return float(line.split()[1])
    raise AssertionError("in-flight gauge not exported")


async def wait_in_flight(env: Env, worker: int) -> None:
    async def probe() -> bool | None:
        return True if await in_flight(env, worker) >= 1 else None

    await poll(f"an attempt in flight on worker {worker}", 10.0, probe)


# ---- a. concurrency on one key -------------------------------------------------------------------


@pytest.mark.timeout(180)  # the first test also pays for the module's cluster start
async def test_concurrent_adds_on_one_key_sum_exactly(shared: Env) -> None:
    key = f"conc-{uuid.uuid4().hex}"
    n = 200
    # One at a time through the key's lock: the last caller waits for all 199 others.
    results = await asyncio.gather(*(shared.post(f"/restate/call/Counter/{key}/add", 1, timeout_s=120)
                                     for _ in range(n)))
    statuses = [status for status, _ in results]
    assert statuses == [200] * n, f"non-200 answers: {sorted(set(statuses))}"
    # Exclusive handlers run one at a time per key, each seeing every earlier write.
    assert sorted(value for _, value in results) == list(range(1, n + 1))
    assert await shared.post(f"/restate/call/Counter/{key}/get") == (200, n)


# ---- b. arrival order per key --------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_per_key_arrival_order(shared: Env) -> None:
    key = f"order-{uuid.uuid4().hex}"
    n = 50
    ids: list[str] = []
    for _ in range(n):  # each send is acknowledged before the next one is made
        status, body = await shared.post(f"/restate/send/Counter/{key}/add", 1)
        assert status == 202, body
        assert body["status"] == "Accepted"
        ids.append(body["invocationId"])
    assert len(set(ids)) == n

    async def counted() -> bool | None:
        status, value = await shared.post(f"/restate/call/Counter/{key}/get")
        assert status == 200, value
        return True if value == n else None

    await poll(f"Counter/{key} to reach {n}", 30.0, counted)
    outputs = [await shared.get(f"/restate/output/{inv}") for inv in ids]
    # The i-th accepted add ran i-th: execution order == acceptance order.
    assert outputs == [(200, i + 1) for i in range(n)]


# ---- e. a worker with another partition count is refused ------------------------------------------


async def run_refused_worker(shared: Env, worker_id: str, partitions: int) -> tuple[int | None, str]:
    """Start one more worker process against the cluster's Redis and wait for it to exit (it is
    expected to refuse to start); its exit code and output."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        "SHARDGATE_REDIS_URL": shared.cluster.redis_url,
        "SHARDGATE_PARTITIONS": str(partitions),
        "SHARDGATE_WORKER_ID": worker_id,
        "SHARDGATE_GRPC_PORT": "0",
        "SHARDGATE_METRICS_PORT": "0",
        "SHARDGATE_LEASE_TTL_MS": str(LEASE_TTL_MS),
        "SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "partition", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(60)
async def test_restart_with_other_partition_count_is_refused(shared: Env) -> None:
    code, text = await run_refused_worker(shared, "intruder", 16)
    assert code not in (0, None), text
    assert "8 partitions" in text and "16" in text, text
    # The refused process changed nothing: the cluster still has P=8 and still serves.
    assert await shared.redis.hget(CLUSTER_KEY, "partitions") == b"8"
    assert b"intruder" not in await shared.redis.hkeys(keys.MEMBERS)
    assert await shared.post("/restate/call/Greeter/greet", "still") == (200, "Hello, still!")


@pytest.mark.timeout(60)
async def test_a_second_process_with_a_worker_id_in_use_is_refused(shared: Env) -> None:
    """A copied SHARDGATE_WORKER_ID: the newcomer exits 3 saying so, and the live worker keeps its
    membership entry and its partitions (no lease ping-pong)."""
    taken = shared.cluster.workers[0].name
    before = await shared.redis.hget(keys.MEMBERS, taken)
    owned_before = await partition_owners(shared.cluster, shared.redis, PARTITIONS)
    code, text = await run_refused_worker(shared, taken, PARTITIONS)
    assert code == 3, text
    assert f"worker id '{taken}' is in use by another live process" in text, text
    after = await shared.redis.hget(keys.MEMBERS, taken)
    assert before is not None and after is not None
    assert after.split(b"|")[:2] == before.split(b"|")[:2]  # same address, same instance
    assert await partition_owners(shared.cluster, shared.redis, PARTITIONS) == owned_before
    assert await shared.post("/restate/call/Greeter/greet", "still") == (200, "Hello, still!")


# ---- c. failover after SIGKILL -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_worker_sigkill_failover(tmp_path: Path, sdk_deployment: str) -> None:
    async with running_cluster(tmp_path / "data", sdk_deployment) as env:
        before = await settled_owners(env)
        assert set(before.values()) == {0, 1}
        by_partition = keys_per_partition(f"fo-{uuid.uuid4().hex}")
        for key in by_partition.values():
            assert await env.post(f"/restate/call/Counter/{key}/add", 1) == (200, 1)

        assert await env.cluster.kill_worker(0, signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()

        async def first_success(key: str) -> float:
            async def probe() -> float | None:
                status, value = await env.post(f"/restate/call/Counter/{key}/get", timeout_s=10)
                if status != 200:
                    return None
                assert value == 1, f"state of {key} lost in failover: {value}"
                return time.monotonic() - killed_at

            return await poll(f"Counter/{key} after the failover", 20.0, probe)

        elapsed = dict(zip(by_partition, await asyncio.gather(*map(first_success, by_partition.values()))))
        slowest = max(elapsed.values())
        print(f"failover after SIGKILL: slowest partition {slowest:.2f}s")  # shown with -s
        assert slowest <= FAILOVER_BOUND_S + POLL_MARGIN_S, (
            f"partitions took up to {slowest:.2f}s after SIGKILL (bound {FAILOVER_BOUND_S}s "
            f"+ {POLL_MARGIN_S}s): { {p: round(s, 2) for p, s in sorted(elapsed.items())} }"
        )
        assert set((await settled_owners(env)).values()) == {1}

        await env.cluster.restart_worker(0)
        assert await settled_owners(env) == before  # rendezvous gives worker 0 its partitions back
        for key in by_partition.values():
            assert await env.post(f"/restate/call/Counter/{key}/add", 1) == (200, 2)
            assert await env.post(f"/restate/call/Counter/{key}/get") == (200, 2)


# ---- d. invocations in flight on a worker that dies ----------------------------------------------


async def _partition_of_worker(env: Env, worker: int) -> set[int]:
    owned = {p for p, w in (await settled_owners(env)).items() if w == worker}
    assert owned, f"worker {worker} owns no partition"
    return owned


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_invocation_accepted_on_dead_worker_completes(tmp_path: Path, sdk_deployment: str) -> None:
    async with running_cluster(tmp_path / "data", sdk_deployment) as env:
        ik, _ = idempotency_key_on(await _partition_of_worker(env, 0), "Greeter", "slow_asyncio")
        status, body = await env.post("/restate/send/Greeter/slow_asyncio", 3, headers={"idempotency-key": ik})
        assert status == 202 and body["status"] == "Accepted", body
        inv = body["invocationId"]
        await wait_in_flight(env, 0)  # the 3 s attempt is running inside the deployment
        status, body = await env.get(f"/restate/output/{inv}")
        assert status == 470, body

        await env.cluster.kill_worker(0, signal.SIGKILL)

        async def done() -> Any:
            status, value = await env.get(f"/restate/output/{inv}")
            assert status in (200, 470, 503), (status, value)
            return value if status == 200 else None

        assert await poll("the output of the interrupted invocation", 25.0, done) == "slow_asyncio done after 3s"


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_call_in_flight_on_dead_worker_returns_result(tmp_path: Path, sdk_deployment: str) -> None:
    async with running_cluster(tmp_path / "data", sdk_deployment) as env:
        ik, _ = idempotency_key_on(await _partition_of_worker(env, 0), "Greeter", "slow_asyncio")
        call = asyncio.ensure_future(
            env.post("/restate/call/Greeter/slow_asyncio", 3, headers={"idempotency-key": ik}, timeout_s=40))
        try:
            await wait_in_flight(env, 0)
            assert not call.done()
            await env.cluster.kill_worker(0, signal.SIGKILL)
            # The ingress re-sends the same Invoke to the new owner, which attaches to the invocation.
            assert await asyncio.wait_for(call, 40.0) == (200, "slow_asyncio done after 3s")
        finally:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_duplicate_send_during_failover_is_previously_accepted(tmp_path: Path, sdk_deployment: str) -> None:
    """A repeated idempotent send is PreviouslyAccepted, also while its partition changes owner.

    Each send carries its own request nonce, so only a re-send of the very request that may have
    been accepted is told Accepted. The send after the kill may meet the dead owner's stream as it
    breaks (grpc.aio can report that INTERNAL): it is re-routed, never answered 503."""
    async with running_cluster(tmp_path / "data", sdk_deployment) as env:
        ik, _ = idempotency_key_on(await _partition_of_worker(env, 0), "Greeter", "slow_asyncio")
        path, headers = "/restate/send/Greeter/slow_asyncio", {"idempotency-key": ik}
        status, first = await env.post(path, 1, headers=headers)
        assert (status, first["status"]) == (202, "Accepted"), first

        await env.cluster.kill_worker(0, signal.SIGKILL)
        status, during = await env.post(path, 1, headers=headers)  # routed to the dead owner first
        status_after, after = await env.post(path, 1, headers=headers)

        assert (status_after, after) == (202, {"invocationId": first["invocationId"],
                                               "status": "PreviouslyAccepted"}), after
        assert status == 202 and during["invocationId"] == first["invocationId"], during
        assert during["status"] == "PreviouslyAccepted", (
            "a duplicate idempotent send issued while the partition fails over is answered "
            f"{during['status']!r} although the invocation {first['invocationId']} was accepted before "
            "the owner died; only a re-send of a request that may itself have been accepted should "
            "be reported as Accepted")
