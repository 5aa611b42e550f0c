"""Scopes and concurrency limits end to end: a real multi-process cluster (`DevCluster`: Redis, 2
workers, ingress) and a real restate-sdk deployment (`tests/services/scopes_service.py`) that
reports the highest number of its `Gate.work` calls that ever ran at once.

* 300 scoped sends under `concurrency: 5` never run more than 5 at once, all complete with their
  own result, and the limit holds across a SIGKILL of the scope's owner in the middle (the new
  owner resumes the queue; no slot leaks: the running set is empty at the end);
* two limit keys of one scope under one limit: 10 invocations arriving behind 200 queued ones of
  the other key finish long before those 200 (round robin across limit keys);
* scoped virtual objects keep their state per scope;
* the validation errors of scopes, limit keys and rules, and the rule routes (also under /v4).

Nothing sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.sharding import InvocationId, partition_key_for_key, partition_of
from tests.clusters import partition_owners, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.scopes_service import LOG_DIR_ENV, read_done, read_peak

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 8
DEADLINE_S = 45.0
SEND_CONCURRENCY = 16


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, redis: Redis, log_dir: Path) -> None:
        self.cluster, self.http, self.redis, self.log_dir = cluster, http, redis, log_dir

    async def request(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                      timeout_s: float = DEADLINE_S) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            return r.status, (await r.json(content_type=None)) if raw else None

    async def ingress(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await self.request(method, f"{self.cluster.ingress_url}{path}", body, headers)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request(method, f"{self.cluster.admin_url}{path}", body)

    async def put_rule(self, pattern: str, concurrency: int) -> None:
        status, body = await self.admin("PUT", "/limits/rules",
                                        [{"pattern": pattern, "limits": {"concurrency": concurrency}}])
        assert status == 200, body

    async def send_work(self, scope: str, tokens: list[str], ms: int, limit_key: str | None = None) -> list[str]:
        """Scoped sends of Gate/work, SEND_CONCURRENCY at a time; their invocation ids in order."""
        gate = asyncio.Semaphore(SEND_CONCURRENCY)
        headers = {"x-restate-limit-key": limit_key} if limit_key else None

        async def one(token: str) -> str:
            async with gate:
                status, body = await self.ingress("POST", f"/restate/scope/{scope}/send/Gate/work",
                                                  {"token": token, "ms": ms}, headers)
            assert status == 202, body
            return str(body["invocationId"])

        return list(await asyncio.gather(*(one(t) for t in tokens)))

    async def wait_rule_in_force(self, scope: str) -> None:
        """Poll with scoped probe sends until the scope's owner counted one against a rule (its
        record names a concurrency bucket): from then on every invocation of the scope is limited."""
        async def probe() -> bool | None:
            [inv_id] = await self.send_work(scope, [unique("probe")], ms=0)
            p = partition_of(InvocationId.parse(inv_id).partition_key, PARTITIONS)
            return True if await self.redis.hget(keys.invocation(p, inv_id), "vqb") else None

        await poll(f"the rule of {scope} to be in force", DEADLINE_S, probe, interval_s=0.1)

    def done(self) -> list[str]:
        return read_done(self.log_dir)

    async def wait_done(self, tokens: list[str], at_least: int | None = None, deadline_s: float = DEADLINE_S) -> None:
        wanted = set(tokens)
        need = len(wanted) if at_least is None else at_least

        async def probe() -> bool | None:
            return True if len(wanted.intersection(self.done())) >= need else None

        await poll(f"{need} of {len(wanted)} Gate.work calls to finish", deadline_s, probe)

    async def running_slots(self, scope: str) -> int:
        p = partition_of(partition_key_for_key(scope), PARTITIONS)
        return int(await self.redis.scard(keys.vqueue_running(p, scope)))


@pytest.fixture(scope="module")
def scopes_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("scopes")
    log_dir = base / "log"
    log_dir.mkdir()
    with serve_sdk_app("tests.services.scopes_service:app", base / "hypercorn.log",
                       {LOG_DIR_ENV: str(log_dir)}) as url:
        yield url, log_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, scopes_deployment: tuple[str, Path]) -> AsyncIterator[Env]:
    url, log_dir = scopes_deployment
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("scopes-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO", lease_ttl_ms=2000,
                       extra_env={"SHARDGATE_LEASE_TTL_MS": "2000", "SHARDGATE_HEARTBEAT_INTERVAL_MS": "300"})
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        try:
            e = Env(cluster, http, redis, log_dir)
            status, body = await e.admin("POST", "/deployments", {"uri": url, "force": True})
            assert status in (200, 201), body

            async def ready() -> bool | None:
                status, _ = await e.ingress("POST", "/restate/call/Tally/probe/add", 0)
                return True if status == 200 else None

            await poll("the ingress to serve the scopes deployment", 30.0, ready)
            yield e
        finally:
            await redis.aclose()


@pytest.mark.timeout(90)
async def test_300_invocations_never_exceed_the_limit_across_a_sigkill_of_the_owner(env: Env) -> None:
    scope = unique("crash")
    await env.put_rule(scope, 5)
    owners = await poll("ownership to settle", DEADLINE_S, lambda: partition_owners(env.cluster, env.redis,
                                                                                      PARTITIONS))
    owner = owners[partition_of(partition_key_for_key(scope), PARTITIONS)]
    tokens = [unique("t") for _ in range(300)]
    await env.wait_rule_in_force(scope)
    ids = await env.send_work(scope, tokens, ms=100)
    await env.wait_done(tokens, at_least=60)
    assert await env.cluster.kill_worker(owner, signal.SIGKILL) == -signal.SIGKILL
    await env.wait_done(tokens)
    assert read_peak(env.log_dir) <= 5, f"peak concurrency {read_peak(env.log_dir)} > 5"
    assert read_peak(env.log_dir) == 5  # the limit was reached: the queue, not the load, held them back
    for inv_id, token in zip(ids, tokens, strict=True):
        assert await env.ingress("GET", f"/restate/output/{inv_id}") == (200, token)
    done = env.done()
    reruns = [t for t in tokens if done.count(t) > 1]
    assert len(reruns) <= 5, f"{len(reruns)} invocations ran twice; only the 5 in flight at the kill may"

    async def slots_free() -> bool | None:
        return True if await env.running_slots(scope) == 0 else None

    await poll("every concurrency slot to be given back", DEADLINE_S, slots_free)


@pytest.mark.timeout(200)
async def test_a_late_limit_key_is_not_starved_by_another_keys_backlog(env: Env) -> None:
    """One limit key with 1,000 queued, another arriving later with 10: the 10 finish long before
    the 1,000 do (round robin across the limit keys of a scope)."""
    scope = unique("fair")
    await env.put_rule(scope, 2)
    await env.wait_rule_in_force(scope)
    big = [unique("big") for _ in range(1000)]
    small = [unique("small") for _ in range(10)]
    await env.send_work(scope, big, ms=30, limit_key="big")
    big_before = len(set(big).intersection(env.done()))
    status, body = await env.admin("GET", f"/limits/status?scope={scope}")
    assert status == 200, body
    [bucket] = body["buckets"]
    assert (bucket["bucket"], bucket["concurrency"], bucket["running"]) == (scope, 2, 2), bucket
    assert bucket["queued"] > 0 and bucket["oldest_queued_age_ms"] >= 0, bucket
    assert [k["limit_key"] for k in bucket["limit_keys"]] == ["big"], bucket
    await env.send_work(scope, small, ms=30, limit_key="small")
    await env.wait_done(small)
    big_then = len(set(big).intersection(env.done()))
    # round robin: the 10 take every other slot, so about 10 more of the big ones finish meanwhile
    assert big_then - big_before <= 40, (big_before, big_then)
    assert len(big) - big_then >= 100, f"the 10 finished only after {big_then} of the 1,000"
    await env.wait_done(big, deadline_s=120.0)

    async def drained() -> bool | None:
        status, body = await env.admin("GET", f"/limits/status?scope={scope}")
        return True if status == 200 and body == {"scope": scope, "buckets": []} else None

    await poll("the scope's bucket to be empty and forgotten", DEADLINE_S, drained)


@pytest.mark.timeout(60)
async def test_scoped_virtual_objects_keep_their_state_per_scope(env: Env) -> None:
    key, s1, s2 = unique("k"), unique("s1"), unique("s2")
    assert await env.ingress("POST", f"/restate/scope/{s1}/call/Tally/{key}/add", 1) == (200, 1)
    assert await env.ingress("POST", f"/restate/scope/{s2}/call/Tally/{key}/add", 10) == (200, 10)
    assert await env.ingress("POST", f"/restate/call/Tally/{key}/add", 100) == (200, 100)
    assert await env.ingress("POST", f"/restate/scope/{s1}/call/Tally/{key}/add", 1) == (200, 2)
    # concurrent calls on one scoped object queue on its own lock and hand it over one by one
    answers = await asyncio.gather(*(env.ingress("POST", f"/restate/scope/{s2}/call/Tally/{key}/add", 1)
                                     for _ in range(8)))
    assert sorted(answers) == [(200, n) for n in range(11, 19)]
    assert await env.ingress("POST", f"/restate/call/Tally/{key}/add", 0) == (200, 100)


def _error(message: str) -> dict[str, Any]:
    return {"code": 400, "message": message, "source": "ingress"}


@pytest.mark.timeout(60)
async def test_scope_and_limit_key_validation(env: Env) -> None:
    path = f"/restate/scope/{unique('v')}/call/Gate/work"
    body = {"token": "v", "ms": 0}
    assert await env.ingress("POST", "/restate/scope/" + "x" * 37 + "/call/Gate/work", body) == (
        400, _error("bad scope value: value too long: 37 bytes (max 36)"))
    assert await env.ingress("POST", path, body, {"x-restate-limit-key": "a/b/c"}) == (
        400, _error("invalid limit-key: too many path components in the given limit-key (max 2)"))
    assert await env.ingress("POST", path, body, {"x-restate-limit-key": "a b"}) == (
        400, _error("invalid limit-key: invalid limit-key component: "
                    "value contains characters outside the allowed set [a-zA-Z0-9_.-]"))
    assert await env.ingress("POST", path + "?limit-key=a/b/c", body) == (
        400, _error("invalid limit-key: too many path components in the given limit-key (max 2)"))
    # the header wins over the query
    assert await env.ingress("POST", path + "?limit-key=a/b/c", body, {"x-restate-limit-key": "u1/l2"}) == (
        200, "v")
    assert await env.ingress("POST", "/restate/call/Gate/work?limit-key=u1", body) == (
        400, _error("limit-key requires a scope to be set"))


@pytest.mark.timeout(60)
async def test_rule_routes(env: Env) -> None:
    scope = unique("r")
    status, body = await env.admin("PUT", "/v4/limits/rules", [{"pattern": f"{scope}/*", "limits": {"concurrency": 3},
                                                                "precondition": {"expected_version": 0}}])
    assert status == 200 and body[0]["version"] == 1, body
    status, body = await env.admin("GET", f"/limits/rules/{scope}/*")
    assert (status, body["limits"]) == (200, {"concurrency": 3})
    status, body = await env.admin("PUT", "/limits/rules", [{"pattern": f"{scope}/*", "limits": {"concurrency": 4},
                                                             "precondition": {"expected_version": 7}}])
    assert status == 409, body
    status, body = await env.admin("PUT", "/limits/rules", [{"pattern": "a/b/c/d", "limits": {"concurrency": 1}}])
    assert status == 400 and "too many components" in body["message"], body
    status, body = await env.admin("POST", "/limits/rules/bulk-delete", [{"pattern": f"{scope}/*",
                                                                          "expected_version": 2}])
    assert status == 409, body
    assert await env.admin("POST", "/v4/limits/rules/bulk-delete", [{"pattern": f"{scope}/*",
                                                                     "expected_version": 1}]) == (200, [f"{scope}/*"])
    status, body = await env.admin("GET", f"/limits/rules/{scope}/*")
    assert status == 404, body
    status, body = await env.admin("PUT", "/limits/rules", [{"pattern": scope, "limits": {"rate": "5/d"}}])
    assert status == 400 and "invalid rate '5/d'" in body["message"], body
    status, body = await env.admin("GET", "/limits/status?scope=bad%20scope")
    assert status == 400, body


@pytest.mark.timeout(60)
async def test_a_raised_limit_reaches_the_queued_invocations(env: Env) -> None:
    scope = unique("raise")
    await env.put_rule(scope, 1)
    await env.wait_rule_in_force(scope)
    tokens = [unique("q") for _ in range(12)]
    await env.send_work(scope, tokens, ms=1500)

    async def running(at_least: int) -> bool | None:
        status, body = await env.admin("GET", f"/limits/status?scope={scope}")
        assert status == 200, body
        return True if body["buckets"] and body["buckets"][0]["running"] >= at_least else None

    await poll("the first invocation to run", DEADLINE_S, lambda: running(1))
    _, body = await env.admin("GET", f"/limits/status?scope={scope}")
    assert body["buckets"][0]["running"] == 1 and body["buckets"][0]["queued"] >= 10, body
    await env.put_rule(scope, 6)
    # every worker polls the rule book every 250 ms; the owner hands the freed slots out at once
    await poll("the raised limit to start the queued invocations", DEADLINE_S, lambda: running(6))
    await env.wait_done(tokens)
