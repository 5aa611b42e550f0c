"""Deployment pinning end to end (Restate's `PinnedDeployment`): a real cluster (`DevCluster`:
Redis, one worker, ingress) and two real restate-sdk deployments of the same service
(`tests/services/pinning_service.py` served twice, `a` then `b`, `b` registered with `force`).

* the first attempt that stores a journal entry pins the deployment it went to (`dp`, `pv` in the
  status hash; `/query`'s `pinned_deployment_id`, `pinned_service_protocol_version`);
* an invocation suspended while pinned to `a` resumes on `a` after `b` became the service's latest
  deployment (no attempt reaches `b`, its `ctx.run` ran once), and a new invocation goes to `b`;
* the completed record keeps the pin while its journal is retained;
* `resume?deployment=` refuses a malformed or unknown deployment with Restate's texts, `keep`
  resumes on the pinned one, and a resume re-pinned to `b` (the worker's Manage RPC with
  `deployment_id`) replays the journal there: the `ctx.run` does not run again;
* restart-as-new from a journal prefix (the worker's Manage RPC RESTART_AS_NEW, which the admin
  API's restart-as-new sends once the ingress dispatcher carries it): from the `ctx.run` command
  (its completion, stored after it, is copied too) or from its completion, on the original's
  pinned deployment or on the one given; the `ctx.run` is replayed, never run again; a prefix past
  the journal's end and a running original are refused.

Nothing sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from sgtools.dev import ClusterSpec, DevCluster
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.schema import DAY_MS
from shardgate.sharding import InvocationId, new_invocation_id, partition_key_for_key, partition_of
from tests.clusters import poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter
from tests.services.pinning_service import NAME_ENV

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 4
DEADLINE_S = 20.0


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, redis: Redis, base: Path) -> None:
        self.cluster, self.http, self.redis, self.base = cluster, http, redis, base
        self.counter_dir = base / "counters"
        self.drawn: dict[str, int] = {}  # invocation id -> the `rnd` its result drew from ctx.random()

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None)

    async def ingress(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request(method, f"{self.cluster.ingress_url}{path}", body)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request(method, f"{self.cluster.admin_url}{path}", body)

    async def register(self, url: str) -> str:
        status, body = await self.admin("POST", "/deployments", {"uri": url, "force": True})
        assert status in (200, 201), body
        return str(body["id"])

    @contextmanager
    def deployment(self, name: str) -> Iterator[str]:
        with serve_sdk_app("tests.services.pinning_service:app", self.base / f"hypercorn-{name}.log",
                           {COUNTER_DIR_ENV: str(self.counter_dir), NAME_ENV: name}) as url:
            yield url

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)

    @staticmethod
    def partition(key: str) -> int:
        return partition_of(partition_key_for_key(key), PARTITIONS)

    async def record(self, key: str, inv: str) -> dict[str, str]:
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(keys.invocation(self.partition(key), inv)))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    async def suspended_with_awakeable(self, key: str, label: str) -> tuple[str, str]:
        """Send `Pin/run_then_wait(label)` to `key`; (invocation id, awakeable id) once suspended."""
        status, ack = await self.ingress("POST", f"/restate/send/Pin/{key}/run_then_wait", label)
        assert status == 202, ack
        inv = str(ack["invocationId"])
        state = keys.state(self.partition(key), "Pin", key)

        async def ready() -> str | None:
            raw = await self.redis.hget(state, "awakeable")
            return None if raw is None or (await self.record(key, inv)).get("st") != "suspended" \
                else str(json.loads(raw))

        async def diag() -> str:
            return f"record {await self.record(key, inv)}, state {await self.redis.hgetall(state)}"

        return inv, await poll(f"{inv} to suspend on its awakeable", DEADLINE_S, ready, diag)

    async def query(self, sql: str) -> list[dict[str, Any]]:
        async with self.http.post(f"{self.cluster.admin_url}/query", json={"query": sql},
                                  headers={"accept": "application/json"}) as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["rows"])

    async def resolved_result(self, inv: str, awakeable: str, word: str) -> Any:
        """The result once the awakeable is resolved, without its `rnd` (kept in `self.drawn`)."""
        assert (await self.ingress("POST", f"/restate/awakeables/{awakeable}/resolve", word))[0] == 202
        status, body = await self.ingress("GET", f"/restate/attach/{inv}")
        assert status == 200, body
        self.drawn[inv] = body.pop("rnd")
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    base = tmp_path_factory.mktemp("pinning")
    spec = ClusterSpec(workers=1, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=base / "data",
                       start_timeout_s=45.0, log_level="INFO")
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        try:
            yield Env(cluster, http, redis, base)
        finally:
            await redis.aclose()


@pytest.mark.timeout(120)
async def test_a_suspended_invocation_resumes_on_the_deployment_it_was_pinned_to(env: Env) -> None:
    with env.deployment("a") as url_a, env.deployment("b") as url_b:
        dp_a = await env.register(url_a)
        old_key, label = unique("pin"), unique("old")
        old, old_awakeable = await env.suspended_with_awakeable(old_key, label)
        pinned = await env.record(old_key, old)
        assert pinned["dp"] == dp_a and int(pinned["pv"]) >= 5
        rows = await env.query("SELECT pinned_deployment_id, pinned_service_protocol_version FROM sys_invocation "
                               f"WHERE id = '{old}'")
        assert rows == [{"pinned_deployment_id": dp_a, "pinned_service_protocol_version": int(pinned["pv"])}]

        dp_b = await env.register(url_b)
        assert dp_b != dp_a
        status, service = await env.admin("GET", "/services/Pin")
        assert (status, service["deployment_id"]) == (200, dp_b)

        async def new_goes_to_b() -> tuple[str, str, str, str] | None:  # once the worker sees the new registry
            key, new_label = unique("pin"), unique("new")
            inv, awakeable = await env.suspended_with_awakeable(key, new_label)
            return (key, new_label, inv, awakeable) if (await env.record(key, inv))["dp"] == dp_b else None

        _, new_label, new, new_awakeable = await poll("a new invocation to be pinned to b", DEADLINE_S,
                                                            new_goes_to_b)

        assert await env.resolved_result(old, old_awakeable, "w") == {"run": 1, "word": "w", "served_by": "a"}
        assert env.counter(f"{label}.run") == 1
        assert env.counter(f"{label}.attempt.b") == 0 and env.counter(f"{label}.attempt.a") >= 2
        assert await env.resolved_result(new, new_awakeable, "v") == {"run": 1, "word": "v", "served_by": "b"}
        assert env.counter(f"{new_label}.attempt.a") == 0

        completed = await env.record(old_key, old)
        assert completed["st"] == "completed"
        journal_kept = await env.redis.exists(keys.journal(env.partition(old_key), old))
        assert completed.get("dp") == (dp_a if journal_kept else None)


async def _pinned_to(env: Env, dp: str) -> tuple[str, str, str, str]:
    """A new `run_then_wait` suspended and pinned to `dp` (once the worker's registry shows it as
    the latest): (key, label, invocation id, awakeable id)."""
    async def pinned() -> tuple[str, str, str, str] | None:
        key, label = unique("pin"), unique("moved")
        inv, awakeable = await env.suspended_with_awakeable(key, label)
        return (key, label, inv, awakeable) if (await env.record(key, inv)).get("dp") == dp else None

    return await poll(f"a new invocation to be pinned to {dp}", DEADLINE_S, pinned)


async def _manage_resume(env: Env, key: str, inv: str, deployment_id: str) -> int:
    """The worker's Manage RPC: resume `inv` re-pinned to `deployment_id` (the ManageRequest field
    the admin API's resume fills once the ingress dispatcher carries it)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{env.cluster.workers[0].grpc_port}")
    try:
        stub = pb_grpc.PartitionServiceStub(channel)
        resp = await stub.Manage(pb.ManageRequest(partition=env.partition(key), invocation_id=inv,
                                                  command=pb.MANAGE_COMMAND_RESUME, deployment_id=deployment_id),
                                 timeout=DEADLINE_S)
        return int(resp.status)
    finally:
        await channel.close()


@pytest.mark.timeout(120)
async def test_resume_with_a_deployment_moves_the_pin(env: Env) -> None:
    with env.deployment("a") as url_a, env.deployment("b") as url_b:
        dp_a = await env.register(url_a)
        key, label, inv, awakeable = await _pinned_to(env, dp_a)
        dp_b = await env.register(url_b)
        for bad, reason in (("KEEP", "bad format"), ("inv_1abc", "id doesn't match the expected type"),
                            ("dp_2" + "0" * 22, "unrecognized codec version"), ("dp_1abc", "bad length")):
            status, body = await env.admin("PATCH", f"/invocations/{inv}/resume?deployment={bad}")
            assert (status, body["message"]) == (400, f"The query parameter 'deployment' is invalid. Reason: {reason}")
        status, body = await env.admin("PATCH", f"/invocations/{inv}/resume?deployment=dp_1{'0' * 22}")
        assert (status, body["message"]) == (
            400, f"The given deployment was not found when trying to resume the invocation '{inv}'.")
        assert await env.admin("PATCH", f"/invocations/{inv}/resume?deployment=keep") == (200, None)

        async def suspended_on(dp: str, attempts_b: int) -> bool | None:
            record = await env.record(key, inv)
            done = (record.get("st"), record.get("dp")) == ("suspended", dp) \
                and env.counter(f"{label}.attempt.b") == attempts_b
            return True if done else None

        await poll("the kept pin to be resumed on a", DEADLINE_S, lambda: suspended_on(dp_a, 0))
        assert await _manage_resume(env, key, inv, dp_b) == pb.MANAGE_STATUS_DONE
        await poll("the invocation to be resumed on b", DEADLINE_S, lambda: suspended_on(dp_b, 1))
        assert await env.resolved_result(inv, awakeable, "w") == {"run": 1, "word": "w", "served_by": "b"}
        assert env.counter(f"{label}.run") == 1


async def _manage_restart(env: Env, key: str, inv: str, from_index: int, deployment_id: str) -> pb.ManageResponse:
    """The worker's Manage RPC: restart `inv` as new from `from_index` (the new id has its partition
    key), pinned to `deployment_id` ('' keeps the pin)."""
    new_id = str(new_invocation_id(InvocationId.parse(inv).partition_key))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{env.cluster.workers[0].grpc_port}")
    try:
        req = pb.ManageRequest(partition=env.partition(key), invocation_id=inv,
                               command=pb.MANAGE_COMMAND_RESTART_AS_NEW, restart_from=from_index,
                               new_invocation_id=new_id, deployment_id=deployment_id,
                               completion_retention_ms=DAY_MS, journal_retention_ms=DAY_MS)
        return cast(pb.ManageResponse, await pb_grpc.PartitionServiceStub(channel).Manage(req, timeout=DEADLINE_S))
    finally:
        await channel.close()


async def _restarted_awakeable(env: Env, key: str, new_id: str, before: str) -> str:
    """The awakeable a restarted `run_then_wait` suspended on (the key's state holds a new one)."""
    state = keys.state(env.partition(key), "Pin", key)

    async def ready() -> str | None:
        raw = await env.redis.hget(state, "awakeable")
        found = None if raw is None else str(json.loads(raw))
        suspended = (await env.record(key, new_id)).get("st") == "suspended"
        return found if suspended and found != before else None

    return await poll(f"{new_id} to suspend on a new awakeable", DEADLINE_S, ready)


@pytest.mark.timeout(120)
async def test_restart_as_new_from_a_prefix_replays_it_on_the_pinned_or_the_given_deployment(env: Env) -> None:
    with env.deployment("a") as url_a, env.deployment("b") as url_b:
        dp_a = await env.register(url_a)
        key, label, inv, awakeable = await _pinned_to(env, dp_a)
        dp_b = await env.register(url_b)
        assert await env.resolved_result(inv, awakeable, "w") == {"run": 1, "word": "w", "served_by": "a"}
        journal = cast("list[bytes]", await env.redis.lrange(keys.journal(env.partition(key), inv), 0, -1))
        types = [protocol.decode_frames(e)[0].type for e in journal]
        run_at = types.index(T.RUN_COMMAND)
        assert types[run_at + 1] == T.RUN_COMPLETION

        # from the run command: its completion (after `from`) is copied too, the ctx.run replays
        kept = await _manage_restart(env, key, inv, run_at, "")
        assert kept.status == pb.MANAGE_STATUS_DONE, kept
        again = await _restarted_awakeable(env, key, kept.new_invocation_id, awakeable)
        assert (await env.record(key, kept.new_invocation_id))["dp"] == dp_a  # deployment=keep
        assert await env.resolved_result(kept.new_invocation_id, again, "x") == {"run": 1, "word": "x",
                                                                               "served_by": "a"}
        moved = await _manage_restart(env, key, inv, run_at + 1, dp_b)
        assert moved.status == pb.MANAGE_STATUS_DONE, moved
        last = await _restarted_awakeable(env, key, moved.new_invocation_id, again)
        assert await env.resolved_result(moved.new_invocation_id, last, "y") == {"run": 1, "word": "y",
                                                                               "served_by": "b"}
        assert env.counter(f"{label}.run") == 1  # no restart ran the ctx.run again
        # a restart from a prefix keeps the original's random seed (Restate), so ctx.random() replays
        assert env.drawn[kept.new_invocation_id] == env.drawn[moved.new_invocation_id] == env.drawn[inv]

        beyond = await _manage_restart(env, key, inv, len(journal), "")
        assert beyond.status == pb.MANAGE_STATUS_COPY_RANGE_INVALID
        running_key = unique("pin")
        running, _ = await env.suspended_with_awakeable(running_key, unique("running"))
        refused = await _manage_restart(env, running_key, running, 1, "")
        assert (refused.status, refused.invocation_status) == (pb.MANAGE_STATUS_NOT_COMPLETED, "suspended")


@pytest.mark.timeout(120)
async def test_the_admin_api_moves_the_pin_and_restarts_from_a_prefix(env: Env) -> None:
    with env.deployment("a") as url_a, env.deployment("b") as url_b:
        dp_a = await env.register(url_a)
        key, label, inv, awakeable = await _pinned_to(env, dp_a)
        dp_b = await env.register(url_b)
        assert await env.admin("PATCH", f"/invocations/{inv}/resume?deployment=latest") == (200, None)

        async def moved() -> bool | None:
            record = await env.record(key, inv)
            done = (record.get("st"), record.get("dp")) == ("suspended", dp_b) and env.counter(f"{label}.attempt.b")
            return True if done else None

        await poll("the resume to move the invocation to b", DEADLINE_S, moved)
        assert await env.resolved_result(inv, awakeable, "w") == {"run": 1, "word": "w", "served_by": "b"}
        journal = await env.redis.lrange(keys.journal(env.partition(key), inv), 0, -1)
        run_at = [protocol.decode_frames(e)[0].type for e in journal].index(T.RUN_COMMAND)
        status, body = await env.admin("PATCH", f"/invocations/{inv}/restart-as-new?from={run_at}&deployment={dp_a}")
        assert status == 200, body
        new = body["new_invocation_id"]
        again = await _restarted_awakeable(env, key, new, awakeable)
        assert await env.resolved_result(new, again, "x") == {"run": 1, "word": "x", "served_by": "a"}
        status, body = await env.admin("PATCH", f"/invocations/{inv}/restart-as-new?from={len(journal)}")
        assert (status, body["message"]) == (400, (f"The prefix of the journal '{inv}' up to 'from' (included) "
                                                   "contains some Commands without respective Completions."))
        status, body = await env.admin("PATCH", f"/invocations/{new}/restart-as-new?from=1&deployment=keep")
        assert status == 200, body
        last = await _restarted_awakeable(env, key, body["new_invocation_id"], again)
        assert await env.resolved_result(body["new_invocation_id"], last, "y") == {"run": 1, "word": "y",
                                                                                 "served_by": "a"}
        assert env.counter(f"{label}.run") == 1
        assert env.drawn[body["new_invocation_id"]] == env.drawn[new] == env.drawn[inv]  # one seed down the chain
