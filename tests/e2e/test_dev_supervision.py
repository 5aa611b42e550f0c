"""`shardgate dev` keeps serving when one of its processes dies: the real command, default flags.

One `shardgate dev` for the module, started with nothing but free ports and a data dir: 2 workers,
64 partitions, the workers' default lease TTL (`PartitionConfig.lease_ttl_ms`, 5 s) and heartbeat,
Redis with `appendfsync always`, children restarted with back-off. The restate-sdk deployment is
`tests/services/crash_service.py` (test_crash's `crash_deployment` fixture), whose `Ledger` virtual
object records what ran: every send appends a unique item to its key's ledger, so the ledgers show
how often each accepted send really ran.

Before each kill, for one key on every partition: `Ledger/{key}/nap` (appends "nap-start", then
suspends in a `ctx.sleep` holding the key's lock), an immediate append (inboxed behind the nap) and
a delayed append (`?delay=`, scheduled). The kill happens once every nap is suspended, every
immediate send inboxed and every delayed one scheduled.

  a. SIGKILL of worker-0 / worker-1: calls to keys on every partition answer within lease TTL + 2 s
     of the kill; the supervisor brings the worker back (new pid, the other pids unchanged), and
     every send accepted before the kill ran exactly once.
  b. SIGKILL of Redis: the supervisor restarts it from its AOF; workers and ingress recover on
     their own (same pids); every send answered 202 (before, during or after the outage) ran
     exactly once, and no send ran twice.

Waits poll a condition against a deadline; the only wall-clock waits are the ones the scenarios
are made of (naps and send delays).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from partition.config import PartitionConfig
from sgtools.dev import read_log_tail
from shardgate.sharding import InvocationId, partition_key_for_key, partition_of
from tests.clusters import DevCommand, partition_owners, pid_alive, poll, shardgate_dev
from tests.e2e.test_crash import crash_deployment, decode

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

__all__ = ["crash_deployment"]  # a fixture this module uses, defined (and launched) by test_crash

PARTITIONS = 64  # `shardgate dev`'s default
LEASE_TTL_S = PartitionConfig.lease_ttl_ms / 1000  # the workers' default: `shardgate dev` sets none
ANSWER_BOUND_S = LEASE_TTL_S + 2.0  # the acceptance bound for calls after a worker's SIGKILL
# The batch's timers count from each send; accepting the 192 sends and waiting for the 64 naps to
# suspend takes 1-4 s depending on the machine, and every nap must still be suspended and every
# delayed send still scheduled when that is done (then the kill comes).
NAP_MS = 8000  # the suspended sleep: due while (or just after) the killed process is down
DELAYS_MS = (6000, 14000)  # delayed sends due during the outage and after the restart
RESTART_DEADLINE_S = 30.0
COMPLETION_DEADLINE_S = 45.0
SENDERS = 4  # concurrent send loops during the Redis outage
ACKS_AFTER_RESTART = 20  # sends the cluster must acknowledge after Redis came back


# ---- cluster plumbing ----------------------------------------------------------------------------


@dataclass
class Env:
    dev: DevCommand
    redis: Redis
    http: aiohttp.ClientSession
    deployment_log: Path

    async def post(self, path: str, body: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
        """POST to the ingress: `body` as JSON, or no body and no content-type when it is None."""
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout_s)}
        if body is not None:
            kwargs["json"] = body
        else:  # handlers without input refuse any content-type (aiohttp would add octet-stream)
            kwargs["skip_auto_headers"] = {"Content-Type"}
        async with self.http.post(f"{self.dev.ingress_url}{path}", **kwargs) as r:
            return r.status, await decode(r)

    async def send(self, path: str, body: Any, timeout_s: float = 30.0) -> str | None:
        """POST /restate/send/{path}: the invocation id when answered 202 Accepted, else None."""
        status, ack = await self.post(f"/restate/send/{path}", body, timeout_s)
        if status == 202 and isinstance(ack, dict) and ack.get("status") == "Accepted":
            return str(ack["invocationId"])
        return None

    async def status(self, invocation_id: str) -> str | None:
        p = partition_of(InvocationId.parse(invocation_id).partition_key, PARTITIONS)
        raw: bytes | None = await self.redis.hget(keys.invocation(p, invocation_id), "st")  # type: ignore[assignment]
        return raw.decode() if raw is not None else None

    async def reconnect_redis(self) -> None:
        """A fresh client for a restarted Redis (redis-py fails each pooled connection once)."""
        await self.redis.aclose()
        self.redis = Redis.from_url(self.dev.redis_url)

    async def ledger(self, key: str) -> list[str]:
        status, items = await self.post(f"/restate/call/Ledger/{key}/items", None)
        assert status == 200, (status, items)
        return list(items)

    def describe(self) -> str:
        """cluster.json, the supervisor's log and the tail of every child's log."""
        logs = sorted((self.dev.data_dir / "logs").glob("*.log")) + [self.deployment_log]
        tails = "\n".join(f"--- {p.name}\n{read_log_tail(p, 0, 10)}" for p in logs)
        return (f"processes {self.dev.processes()}\n--- supervisor\n{self.dev.stderr()[-4000:]}\n{tails}")

    async def adescribe(self) -> str:
        return self.describe()


def partition_of_key(key: str) -> int:
    return partition_of(partition_key_for_key(key), PARTITIONS)


def key_per_partition(prefix: str) -> list[str]:
    """One key for each partition 0..PARTITIONS-1, in partition order."""
    found: dict[int, str] = {}
    for i in itertools.count():
        key = f"{prefix}-{i}"
        found.setdefault(partition_of_key(key), key)
        if len(found) == PARTITIONS:
            return [found[p] for p in range(PARTITIONS)]
    raise AssertionError("unreachable")


async def settled_owners(env: Env, deadline_s: float = 30.0) -> dict[int, int]:
    async def probe() -> dict[int, int] | None:
        return await partition_owners(env.dev, env.redis, PARTITIONS)

    return await poll("partition ownership to settle", deadline_s, probe, env.adescribe)


async def all_running(env: Env) -> dict[str, int]:
    """Wait until cluster.json names a live process for every child; returns name -> pid."""
    async def probe() -> dict[str, int] | None:
        pids = env.dev.pids()
        live = {name: pid for name, pid in pids.items() if pid is not None and pid_alive(pid)}
        return live if len(live) == len(pids) else None

    return await poll("every process to be running", RESTART_DEADLINE_S, probe, env.adescribe)


async def restarted(env: Env, name: str, old_pid: int) -> int:
    """Wait until the supervisor restarted `name` (a live pid other than `old_pid`) and says so."""
    async def probe() -> int | None:
        pid = env.dev.pids()[name]
        ok = pid is not None and pid != old_pid and pid_alive(pid)
        return pid if ok and f"{name} restarted (pid {pid}" in env.dev.stderr() else None

    return await poll(f"the supervisor to restart {name}", RESTART_DEADLINE_S, probe, env.adescribe)


# ---- fixtures ------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_env(tmp_path_factory: pytest.TempPathFactory,
                      crash_deployment: tuple[str, Path, Path]) -> AsyncIterator[Env]:
    url, _, deployment_log = crash_deployment
    data_dir = tmp_path_factory.mktemp("dev-supervision") / "data"
    async with shardgate_dev(data_dir, "--ingress-port", "0", "--admin-port", "0") as dev:
        redis = Redis.from_url(dev.redis_url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        env = Env(dev, redis, http, deployment_log)
        try:
            await settled_owners(env)
            async with http.post(f"{dev.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()

            async def ready() -> bool | None:
                answer = await env.post("/restate/call/Leaf/double", 21, timeout_s=5)
                return True if answer == (200, 42) else None

            await poll("the ingress to serve the crash deployment", 30.0, ready, env.adescribe)
            yield env
        finally:
            await http.close()
            await env.redis.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def env(cluster_env: Env) -> Env:
    """The module's cluster with every process running and partition ownership settled."""
    await all_running(cluster_env)
    await settled_owners(cluster_env)
    return cluster_env


# ---- the sends whose execution is checked --------------------------------------------------------


@dataclass
class Batch:
    """Sends accepted before a kill, one group per key (one key on every partition)."""

    keys: list[str]
    naps: dict[str, str] = field(default_factory=dict)  # key -> invocation id
    now: dict[str, str] = field(default_factory=dict)  # item -> invocation id (immediate append)
    later: dict[str, str] = field(default_factory=dict)  # item -> invocation id (delayed append)

    def expected(self, key: str) -> list[str]:
        return ["nap-start", "nap-end", f"{key}/now", f"{key}/later"]

    def invocations(self) -> list[str]:
        return [*self.naps.values(), *self.now.values(), *self.later.values()]


async def accept_batch(env: Env, prefix: str) -> Batch:
    """Per key: a nap (suspends holding the lock), an immediate and a delayed append; every one must
    be answered 202. Returns once every nap is suspended, every immediate append inboxed behind it
    and every delayed one still scheduled."""
    batch = Batch(key_per_partition(prefix))
    slots = asyncio.Semaphore(16)

    async def one_key(i: int, key: str) -> None:
        async with slots:
            nap = await env.send(f"Ledger/{key}/nap", NAP_MS)
            now = await env.send(f"Ledger/{key}/append", f"{key}/now")
            later = await env.send(f"Ledger/{key}/append?delay={DELAYS_MS[i % 2]}ms", f"{key}/later")
        assert nap and now and later, f"a send to {key} was not accepted"
        batch.naps[key], batch.now[f"{key}/now"], batch.later[f"{key}/later"] = nap, now, later

    await asyncio.gather(*(one_key(i, k) for i, k in enumerate(batch.keys)))

    async def parked() -> bool | None:
        statuses = [await env.status(inv) for inv in batch.naps.values()]
        return True if statuses == ["suspended"] * len(statuses) else None

    await poll("every nap to suspend", 15.0, parked, env.adescribe)
    now = collections.Counter([await env.status(inv) for inv in batch.now.values()])
    later = collections.Counter([await env.status(inv) for inv in batch.later.values()])
    assert now == {"inboxed": PARTITIONS}, f"immediate sends not waiting behind their nap: {now}"
    assert later == {"scheduled": PARTITIONS}, f"delayed sends no longer scheduled: {later}"
    return batch


async def wait_completed(env: Env, invocations: list[str]) -> None:
    """Every invocation completed: nothing of them can run again after this."""
    pending = set(invocations)

    async def probe() -> bool | None:
        for inv in list(pending):
            if await env.status(inv) == "completed":
                pending.discard(inv)
        return True if not pending else None

    async def diag() -> str:
        sample = sorted(pending)[:3]
        return f"{len(pending)} not completed, e.g. {[(i, await env.status(i)) for i in sample]}\n" + env.describe()

    await poll(f"{len(invocations)} invocations to complete", COMPLETION_DEADLINE_S, probe, diag)


async def check_batch_ran_once(env: Env, batch: Batch) -> dict[str, list[str]]:
    """Each nap, immediate and delayed send of the batch ran exactly once (in its key's ledger)."""
    ledgers = {key: await env.ledger(key) for key in batch.keys}
    wrong = {key: items for key, items in ledgers.items()
             if collections.Counter(k for k in items if not k.startswith(f"{key}/during-"))
             != collections.Counter(batch.expected(key))}
    assert not wrong, f"{len(wrong)} ledgers differ from one run of each send: {dict(list(wrong.items())[:5])}"
    for key, items in ledgers.items():  # the immediate append waited for the nap (the key's lock)
        assert items.index("nap-start") < items.index("nap-end") < items.index(f"{key}/now"), items
    return ledgers


async def call_every_partition(env: Env, probe_keys: list[str], since: float) -> list[float]:
    """Call a shared handler on a key of every partition at once; seconds after `since` each answered
    (a call that does not answer 200 within the bound fails the test)."""
    async def one(key: str) -> float:
        remaining_s = max(ANSWER_BOUND_S - (time.monotonic() - since), 0.1) + 1.0
        try:
            status, body = await env.post(f"/restate/call/Ledger/{key}/items", None, timeout_s=remaining_s)
        except TimeoutError:
            status, body = 0, "no answer"
        assert status == 200, (key, partition_of_key(key), status, body)
        return time.monotonic() - since

    return list(await asyncio.gather(*(one(k) for k in probe_keys)))


# ---- a. SIGKILL of a worker ----------------------------------------------------------------------


@pytest.mark.timeout(120)  # includes the module's `shardgate dev` start for the first test
@pytest.mark.parametrize("victim", [0, 1])
async def test_sigkill_of_a_worker_keeps_serving_and_loses_nothing(env: Env, victim: int) -> None:
    name = f"worker-{victim}"
    run = uuid.uuid4().hex[:8]
    probe_keys = key_per_partition(f"probe-{run}")
    owners = await settled_owners(env)
    assert sorted(set(owners.values())) == [0, 1], owners
    batch = await accept_batch(env, f"w{victim}-{run}")
    before = env.dev.pids()
    old_pid = before[name]
    assert old_pid is not None

    os.kill(old_pid, signal.SIGKILL)  # behind the supervisor's back: a crash
    killed_at = time.monotonic()
    answered = await call_every_partition(env, probe_keys, killed_at)
    slowest = max(answered)
    on_victim = [answered[p] for p in range(PARTITIONS) if owners[p] == victim]
    print(f"SIGKILL of {name}: every partition answered within {slowest:.2f}s "
          f"(its own partitions: {min(on_victim):.2f}-{max(on_victim):.2f}s)")  # shown with -s
    assert slowest <= ANSWER_BOUND_S, f"a call took {slowest:.2f}s after the SIGKILL\n{env.describe()}"

    pid = await restarted(env, name, old_pid)
    assert {n: p for n, p in env.dev.pids().items() if n != name} == \
        {n: p for n, p in before.items() if n != name}
    assert f"{name} (pid {old_pid}) died with code -9" in env.dev.stderr()
    # The restarted worker (same id) wins its partitions back.
    assert await settled_owners(env) == owners, f"{name} is now pid {pid}"

    await wait_completed(env, batch.invocations())
    await check_batch_ran_once(env, batch)


# ---- b. SIGKILL of Redis -------------------------------------------------------------------------


@dataclass
class Outage:
    """Appends sent while Redis is killed and restarted; which were acknowledged."""

    keys: list[str]
    acked: dict[str, str] = field(default_factory=dict)  # item -> invocation id
    unacked: dict[str, str] = field(default_factory=dict)  # item -> status or error
    acked_after_restart: int = 0
    restarted: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def send_through_outage(env: Env, outage: Outage, sender: int) -> None:
    """Keep appending unique items (round robin over the keys) until `done`; no retries, so an item
    answered with anything but 202 ran at most once."""
    for i in itertools.count():
        if outage.done.is_set():
            return
        key = outage.keys[(i * SENDERS + sender) % len(outage.keys)]
        item = f"{key}/during-{sender}-{i}"
        after = outage.restarted.is_set()
        try:
            inv = await env.send(f"Ledger/{key}/append", item, timeout_s=10)
        except (aiohttp.ClientError, TimeoutError) as e:
            inv, outage.unacked[item] = None, repr(e)
        if inv is None:
            outage.unacked.setdefault(item, "not 202")
            await asyncio.sleep(0.05)  # pace the failing sends, not synchronisation
            continue
        outage.acked[item] = inv
        if after:
            outage.acked_after_restart += 1
            if outage.acked_after_restart >= ACKS_AFTER_RESTART:
                outage.done.set()


@pytest.mark.timeout(120)  # includes the module's `shardgate dev` start for the first test
async def test_sigkill_of_redis_restarts_it_and_loses_no_acknowledged_send(env: Env) -> None:
    run = uuid.uuid4().hex[:8]
    batch = await accept_batch(env, f"r-{run}")
    before = env.dev.pids()
    old_pid = before["redis"]
    redis_ports = env.dev.processes()["redis"]["ports"]
    assert old_pid is not None
    outage = Outage(batch.keys)
    senders = [asyncio.create_task(send_through_outage(env, outage, s)) for s in range(SENDERS)]
    try:
        await poll("a send acknowledged before the kill", 10.0,
                   lambda: _true_if(len(outage.acked) > 0))
        acked_before_kill = len(outage.acked)
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()

        await restarted(env, "redis", old_pid)
        outage.restarted.set()
        back_s = time.monotonic() - killed_at
        await env.reconnect_redis()
        await poll(f"{ACKS_AFTER_RESTART} sends acknowledged after Redis came back", 30.0,
                   lambda: _true_if(outage.done.is_set()), env.adescribe)
    finally:
        outage.done.set()
        await asyncio.gather(*senders, return_exceptions=True)
    print(f"Redis back {back_s:.2f}s after its SIGKILL; sends: {acked_before_kill} acknowledged before the "
          f"kill, {len(outage.acked)} in all, {len(outage.unacked)} not acknowledged")  # shown with -s
    assert f"redis (pid {old_pid}) died with code -9" in env.dev.stderr()
    # The same server again: same port, AOF on with the configured (default) fsync policy.
    assert env.dev.processes()["redis"]["ports"] == redis_ports
    config = {_text(k): _text(v) for k, v in (await env.redis.config_get("append*")).items()}
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always"), config
    # Workers and ingress rode the outage out on their own: nobody restarted them.
    assert {n: p for n, p in env.dev.pids().items() if n != "redis"} == \
        {n: p for n, p in before.items() if n != "redis"}

    await wait_completed(env, [*batch.invocations(), *outage.acked.values()])
    ledgers = await check_batch_ran_once(env, batch)
    seen = collections.Counter(item for items in ledgers.values() for item in items)
    lost = sorted(item for item in outage.acked if seen[item] != 1)
    twice = sorted(item for item in outage.unacked if seen[item] > 1)
    assert not lost, f"{len(lost)} acknowledged sends did not run exactly once: {lost[:5]}"
    assert not twice, f"{len(twice)} unacknowledged sends ran more than once: {twice[:5]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _true_if(condition: bool) -> bool | None:
    return True if condition else None

