"""Crash tests of durable execution: SIGKILL a partition worker in the middle of an invocation.

One real multi-process cluster for the module (`DevCluster`: Redis + 3 partition workers + ingress,
12 partitions, 2 s lease TTL, 300 ms heartbeat) with the restate-sdk 1.2.0 deployment
`tests/services/crash_service.py` (every service of `durable_service.py` plus Crash and the ChainA ->
ChainB -> ChainC objects), served by hypercorn with `DURABLE_COUNTER_DIR` so that file counters tell
how often a side effect really ran (as opposed to being replayed).

  a. an invocation suspended in a durable sleep survives the SIGKILL of its owner, whether the timer
     falls due after the takeover or during the outage: the new owner fires it, never early;
  b. a `ctx.run` whose result was stored before the owner was killed is replayed, not re-run;
  c. a call chain A -> B -> C over partitions of three different workers survives the SIGKILL of the
     worker of any one hop, with every hop's side effect run exactly once;
  d. 1,000 delayed sends accepted while a worker is SIGKILLed and restarted all run, each exactly once.

Every test starts from a healed cluster (killed workers restarted, partition ownership settled). Waits
poll a condition against a deadline; the only wall-clock waits are the ones the scenarios are made of
(durable sleeps, send delays, and the deployment holding an attempt open with `asyncio.sleep`).
On a timeout the failure message carries the Redis state of the invocations involved and the tail of
the workers' logs (`<data dir>/logs/*.log`).
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster, read_log_tail
from shardgate.protocol import MessageType
from shardgate.routing import read_routes
from shardgate.sharding import InvocationId, idempotent_invocation_id, partition_key_for_key, partition_of
from tests.clusters import partition_owners, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

WORKERS = 3
PARTITIONS = 12  # rendezvous over worker-0..2 gives every worker at least 3 partitions
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 300
FAILOVER_S = LEASE_TTL_MS / 1000 + 2.0  # lease lapse + takeover + ingress re-route, generously
TIMER_SLACK_S = 0.05  # a timer may look this much "early" from the client clock
RUN_COMPLETION = int(MessageType.RUN_COMPLETION).to_bytes(2, "big")  # 0x8011


# ---- cluster plumbing ----------------------------------------------------------------------------


@dataclass
class Env:
    cluster: DevCluster
    redis: Redis
    http: aiohttp.ClientSession
    counter_dir: Path
    deployment_log: Path

    async def post(self, path: str, body: Any, *, headers: dict[str, str] | None = None,
                   timeout_s: float = 40.0) -> tuple[int, Any]:
        """POST to the ingress: `body` as JSON, or no body and no content-type when it is None."""
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout_s), "headers": headers}
        if body is not None:
            kwargs["json"] = body
        else:  # handlers without input refuse any content-type (aiohttp would add octet-stream)
            kwargs["skip_auto_headers"] = {"Content-Type"}
        async with self.http.post(f"{self.cluster.ingress_url}{path}", **kwargs) as r:
            return r.status, await decode(r)

    async def get(self, path: str, timeout_s: float = 40.0) -> tuple[int, Any]:
        async with self.http.get(f"{self.cluster.ingress_url}{path}",
                                 timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status, await decode(r)

    async def send(self, path: str, body: Any) -> str:
        """POST /restate/send/{path}: expect 202 Accepted, return the invocation id."""
        status, ack = await self.post(f"/restate/send/{path}", body)
        assert status == 202 and ack["status"] == "Accepted", (status, ack)
        return str(ack["invocationId"])

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)

    async def status(self, invocation_id: str) -> str | None:
        raw = await self.redis.hget(keys.invocation(partition_of_id(invocation_id), invocation_id), "st")
        return raw.decode() if raw is not None else None

    async def journal(self, invocation_id: str) -> list[bytes]:
        return await self.redis.lrange(keys.journal(partition_of_id(invocation_id), invocation_id), 0, -1)

    async def result(self, invocation_id: str, deadline_s: float,
                     diag: Callable[[], Awaitable[str]] | None = None) -> tuple[int, Any, float]:
        """Poll GET /restate/output/{id} until it is no longer 470: (status, body, monotonic time seen)."""
        async def probe() -> tuple[int, Any, float] | None:
            status, body = await self.get(f"/restate/output/{invocation_id}", timeout_s=10)
            return None if status in (470, 503) else (status, body, time.monotonic())

        return await poll(f"the output of {invocation_id}", deadline_s, probe,
                          diag or (lambda: self.describe(invocation_id)))

    async def describe(self, *invocation_ids: str) -> str:
        """Redis state of the invocations, the routing table and the tail of every log."""
        lines = []
        for inv in invocation_ids:
            p = partition_of_id(inv)
            h = await self.redis.hgetall(keys.invocation(p, inv))
            fields = {k.decode(): (v[:60] if len(v) > 60 else v) for k, v in h.items()}
            journal = [f"0x{int.from_bytes(e[:2], 'big'):04x}" for e in await self.journal(inv)]
            all_timers = await self.redis.zrange(keys.timers(p), 0, -1, withscores=True)
            timers = [(m.decode(), s) for m, s in all_timers if inv.encode() in m]
            lines.append(f"{inv} (partition {p}): hash {fields} journal {journal} timers {timers}")
        routes = await read_routes(self.redis, self.cluster.spec.partitions)
        lines.append(f"routes {dict(enumerate(routes))}")
        lines.append("workers " + ", ".join(f"{w.name}: pid {w.pid} running={w.running} grpc {w.grpc_port}"
                                            for w in self.cluster.workers))
        return "\n".join(lines) + "\n" + log_tails(self)


def log_tails(env: Env, lines: int = 12) -> str:
    logs = sorted((env.cluster.data_dir / "logs").glob("*.log")) + [env.deployment_log]
    return "\n".join(f"--- {p.name} (last {lines} lines)\n{read_log_tail(p, 0, lines)}" for p in logs)


async def decode(r: aiohttp.ClientResponse) -> Any:
    raw = await r.read()
    if not raw:
        return None
    try:
        return await r.json(content_type=None)
    except ValueError:
        return raw.decode(errors="replace")


def partition_of_id(invocation_id: str) -> int:
    return partition_of(InvocationId.parse(invocation_id).partition_key, PARTITIONS)


def partition_of_key(key: str) -> int:
    return partition_of(partition_key_for_key(key), PARTITIONS)


async def owners(env: Env) -> dict[int, int] | None:
    return await partition_owners(env.cluster, env.redis, PARTITIONS)


async def settled_owners(env: Env, deadline_s: float = 20.0) -> dict[int, int]:
    return await poll("partition ownership to settle", deadline_s, lambda: owners(env),
                      lambda: env.describe())


async def kill(env: Env, worker: int) -> None:
    assert await env.cluster.kill_worker(worker, signal.SIGKILL) == -signal.SIGKILL


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """Serve `tests/services/crash_service.py` with hypercorn; yields (url, counter dir, log path)."""
    base = tmp_path_factory.mktemp("crash-deployment")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    log_path = base / "hypercorn.log"
    with serve_sdk_app("tests.services.crash_service:app", log_path,
                       {COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url, counter_dir, log_path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_env(tmp_path_factory: pytest.TempPathFactory,
                      crash_deployment: tuple[str, Path, Path]) -> AsyncIterator[Env]:
    url, counter_dir, deployment_log = crash_deployment
    spec = ClusterSpec(
        workers=WORKERS, partitions=PARTITIONS, ingress_port=0, admin_port=0,
        data_dir=tmp_path_factory.mktemp("crash-cluster") / "data", lease_ttl_ms=LEASE_TTL_MS,
        start_timeout_s=45.0, log_level="INFO",
        # every attempt bidirectional (the deployment is registered for h2c): what an open stream
        # stored must survive its worker's death as what a request-response attempt stored does
        extra_env={"SHARDGATE_LEASE_TTL_MS": str(LEASE_TTL_MS),
                   "SHARDGATE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS), "SHARDGATE_BIDI": "always"},
    )
    async with DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        env = Env(cluster, redis, http, counter_dir, deployment_log)
        try:
            await settled_owners(env, 30.0)
            async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()

            async def ready() -> bool | None:
                answer = await env.post("/restate/call/Leaf/double", 21, timeout_s=5)
                return True if answer == (200, 42) else None

            await poll("the ingress to serve the crash deployment", 30.0, ready)
            yield env
        finally:
            await http.close()
            await redis.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def env(cluster_env: Env) -> Env:
    """The module's cluster, healed: every worker running and partition ownership settled."""
    for i, worker in enumerate(cluster_env.cluster.workers):
        if not worker.running:
            await cluster_env.cluster.restart_worker(i)
    await settled_owners(cluster_env)
    assert not cluster_env.cluster.failed.is_set(), cluster_env.cluster.failure_reason
    return cluster_env


# ---- a. a suspended durable sleep ----------------------------------------------------------------


@pytest.mark.timeout(120)  # the first test also pays for the module's cluster start
@pytest.mark.parametrize("sleep_ms,kill_before_due_s", [
    # The new owner must fire the timer at 6 s, not at takeover (about 2 s after a kill at ~1 s).
    pytest.param(6000, None, id="due-after-takeover"),
    # The timer falls due 1 s after the kill, while no worker owns the partition (the lease lapses
    # 1.7-2 s after the kill), so the new owner finds it overdue at takeover.
    pytest.param(6000, 1.0, id="due-during-outage"),
])
async def test_suspended_sleep_completes_on_new_owner(env: Env, sleep_ms: int,
                                                      kill_before_due_s: float | None) -> None:
    started = time.monotonic()
    inv = await env.send("Durable/sleep_ms", sleep_ms)
    p = partition_of_id(inv)

    async def suspended() -> bool | None:
        return True if await env.status(inv) == "suspended" else None

    await poll(f"{inv} to suspend in its sleep", 10.0, suspended, lambda: env.describe(inv))
    owner = (await settled_owners(env))[p]
    if kill_before_due_s is not None:
        # Not a synchronisation wait: it places the fault at a fixed distance before the timer is due,
        # so that the timer falls due inside the outage whatever the machine's speed.
        kill_at = started + sleep_ms / 1000 - kill_before_due_s
        await asyncio.sleep(max(0.0, kill_at - time.monotonic()))
    killed_after = time.monotonic() - started  # the signal is the fault; reaping the process is not
    await kill(env, owner)
    assert killed_after < sleep_ms / 1000, "too slow to kill the owner while the timer was pending"

    status, value, seen = await env.result(inv, sleep_ms / 1000 + FAILOVER_S + 10)
    assert (status, value) == (200, sleep_ms), await env.describe(inv)
    elapsed = seen - started
    assert elapsed >= sleep_ms / 1000 - TIMER_SLACK_S, (
        f"the sleep completed {elapsed:.2f}s after the start (owner killed after {killed_after:.2f}s): "
        f"the new owner fired the timer early\n{await env.describe(inv)}")
    new_owner = (await settled_owners(env))[p]
    assert new_owner != owner
    assert await env.status(inv) == "completed"


# ---- b. a stored ctx.run result is replayed after the owner dies ---------------------------------


@pytest.mark.timeout(60)
async def test_stored_run_result_is_not_rerun_after_sigkill(env: Env) -> None:
    name = unique("held")
    # hold_ms: the window (plain asyncio wall time) in which the owner is killed mid-attempt.
    inv = await env.send("Crash/run_then_hold", {"name": name, "hold_ms": 2500})
    p = partition_of_id(inv)

    async def run_stored() -> bool | None:
        journal = await env.journal(inv)
        stored = any(entry[:2] == RUN_COMPLETION for entry in journal)
        status = await env.status(inv)
        return True if stored and status not in (None, "completed") else None

    # The attempt that ran the closure proposed the result; the worker stored it (an append on
    # the open stream) as a RunCompletion notification and wrote it back, and the attempt holds in
    # asyncio.sleep.
    await poll(f"the run result of {inv} to be stored", 10.0, run_stored, lambda: env.describe(inv))
    assert env.counter(name) == 1
    await kill(env, (await settled_owners(env))[p])

    status, value, _ = await env.result(inv, FAILOVER_S + 15)
    assert (status, value) == (200, 1), await env.describe(inv)
    assert env.counter(name) == 1, f"the side effect ran {env.counter(name)} times\n{await env.describe(inv)}"


# ---- c. a call chain over three workers ----------------------------------------------------------


def key_on(partitions: list[int], prefix: str) -> str:
    for i in range(100_000):
        key = f"{prefix}-{i}"
        if partition_of_key(key) in partitions:
            return key
    raise AssertionError(f"no key for partitions {partitions}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hop", ["A", "B", "C"])
async def test_call_chain_survives_sigkill_of_one_hop(env: Env, hop: str) -> None:
    by_worker: dict[int, list[int]] = collections.defaultdict(list)
    for p, w in (await settled_owners(env)).items():
        by_worker[w].append(p)
    assert sorted(by_worker) == list(range(WORKERS)), by_worker
    # A on worker 0, B on worker 1, C on worker 2: each parameter kills another worker.
    name = unique(f"chain{hop}")
    ka, kb, kc = (key_on(by_worker[w], f"{name}-{h}") for w, h in enumerate("abc"))
    pa, pb, pc = map(partition_of_key, (ka, kb, kc))
    victim = "ABC".index(hop)
    x = 7
    # hold_ms: C holds each attempt open (plain asyncio wall time): the window for the SIGKILL.
    inv_a = await env.send(f"ChainA/{ka}/start", {"b": kb, "c": kc, "x": x, "name": name, "hold_ms": 3000})
    ids: dict[str, str] = {"A": inv_a}

    async def mid_chain() -> bool | None:
        for h, p, svc, k in (("B", pb, "ChainB", kb), ("C", pc, "ChainC", kc)):
            holder = await env.redis.get(keys.lock(p, svc, k))
            if holder is None:
                return None
            ids[h] = holder.decode()
        if [await env.status(ids[h]) for h in "ABC"] != ["suspended", "suspended", "invoked"]:
            return None
        return True if any(e[:2] == RUN_COMPLETION for e in await env.journal(ids["C"])) else None

    # A waits for B, B waits for C, C's run result is stored and its next attempt holds in asyncio.
    await poll("the chain to reach C", 10.0, mid_chain, lambda: env.describe(*ids.values()))
    assert [env.counter(f"{name}.{h}") for h in "ABC"] == [1, 1, 1]
    killed_at = time.monotonic()
    await kill(env, victim)

    status, value, seen = await env.result(inv_a, FAILOVER_S + 20, lambda: env.describe(*ids.values()))
    print(f"chain with the worker of {hop} killed: done {seen - killed_at:.2f}s after the SIGKILL")
    expected = {"hop": "A", "key": ka, "runs": 1, "inner": {
        "hop": "B", "key": kb, "runs": 1, "inner": {"hop": "C", "key": kc, "runs": 1, "x": x}}}
    assert (status, value) == (200, expected), await env.describe(*ids.values())
    runs = [env.counter(f"{name}.{h}") for h in "ABC"]
    assert runs == [1, 1, 1], f"side effects of A, B, C ran {runs} times\n{await env.describe(*ids.values())}"
    # Every hop finished: no object lock is left behind (a later call on these keys would hang).
    locks = [keys.lock(pa, "ChainA", ka), keys.lock(pb, "ChainB", kb), keys.lock(pc, "ChainC", kc)]
    assert await env.redis.exists(*locks) == 0, await env.describe(*ids.values())


# ---- d. 1,000 delayed sends across a SIGKILL and a restart ---------------------------------------


@pytest.mark.timeout(300)
async def test_delayed_sends_across_kill_and_restart_run_exactly_once(env: Env) -> None:
    total, n_keys, concurrency = 1000, 50, 50
    kill_after, gated_from = 150, 900  # kill once 150 are accepted; the last 100 wait for the restart
    run = uuid.uuid4().hex[:10]
    ledger_keys = [f"sends-{run}-{j}" for j in range(n_keys)]
    rng = random.Random(run)
    plan = [(ledger_keys[i % n_keys], f"item-{run}-{i}", rng.randint(1000, 3000), f"ik-{run}-{i}")
            for i in range(total)]
    owners_before = await settled_owners(env)
    victim = 1
    assert any(owners_before[partition_of_key(k)] == victim for k in ledger_keys)

    accepted: dict[int, str] = {}  # plan index -> invocation id (202 only)
    failed: dict[int, tuple[int | None, Any]] = {}
    retries: collections.Counter[str] = collections.Counter()
    kill_now, restarted = asyncio.Event(), asyncio.Event()
    slots = asyncio.Semaphore(concurrency)
    timeline: dict[str, float] = {}
    before_kill: dict[int, str] = {}  # accepted before the SIGKILL

    async def send(i: int) -> None:
        key, item, delay_ms, ik = plan[i]
        if i >= gated_from:
            await restarted.wait()
        async with slots:
            end = time.monotonic() + 45.0
            while True:
                status: int | None
                try:
                    status, body = await env.post(f"/restate/send/Ledger/{key}/append?delay={delay_ms}ms",
                                                  item, headers={"idempotency-key": ik}, timeout_s=40)
                except (aiohttp.ClientError, TimeoutError) as e:  # same idempotency key: safe to retry
                    status, body = None, repr(e)
                if status == 202 and body.get("status") in ("Accepted", "PreviouslyAccepted"):
                    accepted[i] = body["invocationId"]
                    if len(accepted) >= kill_after:
                        kill_now.set()
                    return
                if status in (503, None) and time.monotonic() < end:
                    retries[str(status)] += 1
                    await asyncio.sleep(0.05)  # back-off before the retry, not synchronisation
                    continue
                failed[i] = (status, body)
                return

    async def chaos() -> None:
        await kill_now.wait()
        timeline["kill"] = time.monotonic()
        before_kill.update(accepted)
        await kill(env, victim)
        # Let the survivors take the victim's partitions (and the timers scheduled there) over ...
        await settled_owners(env)
        timeline["taken over"] = time.monotonic()
        # ... then bring it back: rendezvous hands them back to the restarted worker.
        await env.cluster.restart_worker(victim)
        timeline["restarted"] = time.monotonic()
        restarted.set()

    started = time.monotonic()
    chaos_task = asyncio.create_task(chaos())
    try:
        await asyncio.gather(*(send(i) for i in range(total)))
        timeline["last accepted"] = time.monotonic()
        await chaos_task
    finally:
        chaos_task.cancel()
    window = {k: round(v - started, 2) for k, v in timeline.items()}
    print(f"acceptance: {len(accepted)} accepted, {len(failed)} failed, retries {dict(retries)}, "
          f"timeline {window}")
    assert timeline["restarted"] <= timeline["last accepted"], window
    on_victim = [i for i in before_kill if owners_before[partition_of_key(plan[i][0])] == victim]
    assert on_victim, "no send was scheduled on the killed worker's partitions when it died"
    print(f"{len(on_victim)} sends were scheduled on worker {victim}'s partitions when it was killed")
    # A retried send is the same invocation: its id is the one its idempotency key determines.
    wrong_ids = {i: inv for i, inv in accepted.items()
                 if inv != str(idempotent_invocation_id("Ledger", plan[i][0], "append", plan[i][3]))}
    assert not wrong_ids, (f"{len(wrong_ids)} sends got an unexpected invocation id: "
                           f"{list(wrong_ids.items())[:5]}")
    assert await settled_owners(env) == owners_before

    # Execution: every accepted send completes (deadline ~60 s after the last acceptance).
    pending = dict(accepted)

    async def all_completed() -> bool | None:
        for i, inv in list(pending.items()):
            if await env.status(inv) == "completed":
                del pending[i]
        return True if not pending else None

    async def pending_diag() -> str:
        sample = list(pending.values())[:3]
        head = f"{len(pending)} of {len(accepted)} accepted sends not completed\n"
        return head + await env.describe(*sample)

    await poll("every accepted send to complete", 60.0, all_completed, pending_diag)
    executed_after = time.monotonic() - timeline["last accepted"]
    # Quiescent: no timer (scheduled start, retry) and no running attempt is left for any of them,
    # so nothing can execute again after the checks below.
    ours = {inv.encode() for inv in accepted.values()}
    for p in range(PARTITIONS):
        members = await env.redis.zrange(keys.timers(p), 0, -1)
        leftovers = [m for m in members if (m.split(b"|") + [b""])[1] in ours]
        leftovers += [m for m in await env.redis.smembers(keys.active(p)) if m in ours]
        assert not leftovers, f"partition {p} still holds {leftovers[:5]}"

    # Exactly once, per item: the ledgers hold every accepted item once and nothing else, and the
    # output of each send is the position of its own item in its key's ledger.
    ledgers: dict[str, list[str]] = {}
    for key in ledger_keys:
        status, items = await env.post(f"/restate/call/Ledger/{key}/items", None)
        assert status == 200, items
        ledgers[key] = items
    seen = collections.Counter(item for items in ledgers.values() for item in items)
    duplicates = {item: n for item, n in seen.items() if n > 1}
    expected_items = {plan[i][1] for i in accepted}
    missing = expected_items - set(seen)
    unexpected = set(seen) - {item for _, item, _, _ in plan}
    not_accepted_ran = {plan[i][1] for i in failed} & set(seen)

    outputs: dict[int, tuple[int, Any]] = {}
    out_slots = asyncio.Semaphore(concurrency)

    async def output(i: int, inv: str) -> None:
        async with out_slots:
            outputs[i] = await env.get(f"/restate/output/{inv}", timeout_s=20)

    await asyncio.gather(*(output(i, inv) for i, inv in accepted.items()))
    wrong_outputs = {}
    for i, (status, value) in outputs.items():
        key, item, _, _ = plan[i]
        items = ledgers[key]
        position_ok = isinstance(value, int) and 1 <= value <= len(items) and items[value - 1] == item
        if status != 200 or not position_ok:
            wrong_outputs[plan[i][1]] = (status, value)

    print(f"all {len(accepted)} accepted sends executed {executed_after:.1f}s after the last acceptance")
    problems = {
        "duplicated items": dict(list(duplicates.items())[:10]),
        "missing items": sorted(missing)[:10],
        "unexpected items": sorted(unexpected)[:10],
        "outputs not matching the ledger": dict(list(wrong_outputs.items())[:10]),
    }
    counts = {"duplicated": len(duplicates), "missing": len(missing), "unexpected": len(unexpected),
              "wrong outputs": len(wrong_outputs)}
    assert not any(counts.values()), f"{counts}: {problems}"
    assert sum(len(items) for items in ledgers.values()) == len(accepted)
    # All 1,000 sends were accepted (503s during the failover retried with the same idempotency key).
    assert not failed, (f"{len(failed)} sends never got a 202 (of which {len(not_accepted_ran)} ran anyway): "
                        f"{dict(list(failed.items())[:5])}")
    assert len(accepted) == total
