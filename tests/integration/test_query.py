"""`/query` against a real Redis: invocations created by the real Lua transitions (accept, kill,
purge), read through the per-partition index by the admin API's query route (a real aiohttp
app over HTTP), answered in JSON and as an Arrow IPC stream.

* accept lists each invocation in its partition's index at its accept time; purge unlists it;
* an index entry whose hash is gone (completed without retention, expired) is pruned by the
  next read and never shown, and by the periodic pass without any read;
* the CLI's statements answer what Restate answers: GROUP BY status counts, the id lookup, the
  state of one key as hex, the Arrow COUNT of `invocations list`, information_schema;
* NULL columns are left out of JSON rows, timestamps have milliseconds and `Z`;
* a statement DataFusion rejects, and DDL, answer 400 with its message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ingress.admin import AdminSettings, InvocationControl, build_admin_app
from ingress.admin.query.prune import prune_indexes
from ingress.admin.query.store import QueryStore, index_key
from ingress.grpc_dispatcher import GrpcDispatcher
from partition import keys
from partition.invocation import HandlerKind, InvocationRecord, Status
from partition.scripts import Scripts, Target
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router
from shardgate.schedule import iso_ms, next_fire, parse_definition
from shardgate.schedule_store import ScheduleStore
from shardgate.sharding import InvocationId, idempotent_invocation_id, partition_of

PARTITIONS = 8
NOW_MS = 1_790_000_000_000
RETAIN_MS = 3_600_000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


class World:
    """Invocations made with the real scripts, on the partitions their ids name."""

    def __init__(self, redis: Redis) -> None:
        self.redis, self.scripts, self.tokens = redis, Scripts(redis), dict[int, str]()

    async def token(self, p: int) -> str:
        if p not in self.tokens:
            raw = await self.scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                                   args=["w1", 60_000, "127.0.0.1:1"])
            self.tokens[p] = raw.decode()
        return self.tokens[p]

    async def accept(self, service: str, key: str | None, handler: str, n: int, kind: HandlerKind,
                     at_ms: int = NOW_MS, exec_ms: int | None = None) -> Target:
        inv = idempotent_invocation_id(service, key, handler, f"q-{n}")
        t = Target(partition_of(inv.partition_key, PARTITIONS), str(inv), service, key)
        record = InvocationRecord(status=Status.INVOKED if exec_ms is None else Status.SCHEDULED, service=service,
                                  handler=handler, kind=kind, key=key, input_frame=b"", completion_retention_ms=RETAIN_MS,
                                  execution_time_ms=exec_ms, last_growth_ms=at_ms)
        await self.scripts.accept(t, await self.token(t.partition), record)
        return t

    async def kill(self, t: Target) -> None:
        await self.scripts.kill(t, await self.token(t.partition), NOW_MS + 5)


@pytest.fixture
async def world(redis: Redis) -> World:
    return World(redis)


@pytest.fixture
async def admin(redis: Redis) -> AsyncIterator[str]:
    """The admin API app (query route included) served over HTTP; yields its base URL."""
    async with aiohttp.ClientSession() as http:
        router = Router(redis, PARTITIONS)
        store = RegistryStore(redis)
        app = build_admin_app(store, RegistryCache(store), http, AdminSettings(advertised_ingress_url="http://x"),
                              InvocationControl(GrpcDispatcher(router, 1.0, 1.0, 1.0), PARTITIONS))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()
            await router.close()


async def _post(url: str, sql: str, accept: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{url}/v4/query", json={"query": sql}, headers={"accept": accept},
            timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, r.headers.get("content-type", ""), await r.read()


async def rows(url: str, sql: str) -> list[dict[str, Any]]:
    status, ctype, body = await _post(url, sql, "application/json")
    assert status == 200, body
    assert ctype.startswith("application/json")

    return list(json.loads(body)["rows"])


async def test_accept_lists_and_purge_unlists_an_invocation(world: World, redis: Redis) -> None:
    t = await world.accept("Greeter", None, "greet", 1, HandlerKind.SERVICE, at_ms=NOW_MS + 7)
    assert await redis.zscore(index_key(t.partition), t.invocation_id) == NOW_MS + 7
    await world.kill(t)
    managed = await world.scripts.purge(t, await world.token(t.partition))
    assert managed.status is Status.COMPLETED
    assert await redis.zscore(index_key(t.partition), t.invocation_id) is None


async def test_group_by_status_counts_every_invocation(world: World, admin: str) -> None:
    for n in range(5):
        await world.accept("Greeter", None, "greet", n, HandlerKind.SERVICE)
    for n in range(3):
        await world.kill(await world.accept("Greeter", None, "slow", 10 + n, HandlerKind.SERVICE))
    await world.accept("Counter", "k1", "add", 20, HandlerKind.EXCLUSIVE)
    await world.accept("Counter", "k1", "add", 21, HandlerKind.EXCLUSIVE)  # the key is locked: inboxed
    await world.accept("Greeter", None, "greet", 30, HandlerKind.SERVICE, exec_ms=NOW_MS * 2)
    got = await rows(admin, "SELECT status, count(*) AS n FROM sys_invocation GROUP BY status ORDER BY status")
    assert got == [{"status": "completed", "n": 3}, {"status": "pending", "n": 1}, {"status": "running", "n": 6},
                   {"status": "scheduled", "n": 1}]
    stored = await rows(admin, "SELECT status, count(*) AS n FROM sys_invocation_status WHERE status == 'inboxed' "
                               "GROUP BY status")
    assert stored == [{"status": "inboxed", "n": 1}]


async def test_the_cli_detail_query_of_one_id(world: World, admin: str) -> None:
    t = await world.accept("Counter", "k1", "add", 1, HandlerKind.EXCLUSIVE, at_ms=NOW_MS + 123)
    await world.kill(t)
    other = await world.accept("Greeter", None, "greet", 2, HandlerKind.SERVICE)
    sql = ("SELECT inv.id, inv.target, inv.target_service_ty, inv.idempotency_key, inv.status, inv.created_at, "
           "inv.completion_result, inv.completion_failure, dp.id IS NOT NULL as pinned_deployment_exists "
           "FROM sys_invocation inv LEFT JOIN sys_deployment dp ON dp.id = inv.pinned_deployment_id "
           f"WHERE inv.id in ('{t.invocation_id}') ORDER BY inv.created_at DESC, inv.id")
    got = await rows(admin, sql)
    assert got == [{"id": t.invocation_id, "target": "Counter/k1/add", "target_service_ty": "virtual_object",
                    "status": "completed", "created_at": "2026-09-21T14:13:20.123Z", "completion_result": "failure",
                    "completion_failure": "[409] killed", "pinned_deployment_exists": False}]
    assert [r["id"] for r in await rows(admin, f"SELECT id FROM sys_invocation inv WHERE inv.id = "
                                               f"'{other.invocation_id}' LIMIT 1")] == [other.invocation_id]


async def test_an_entry_whose_hash_is_gone_is_pruned_by_the_next_read(world: World, redis: Redis,
                                                                       admin: str) -> None:
    kept = await world.accept("Greeter", None, "greet", 1, HandlerKind.SERVICE)
    gone = await world.accept("Greeter", None, "greet", 2, HandlerKind.SERVICE)
    await redis.delete(keys.invocation(gone.partition, gone.invocation_id))  # as END without retention does
    assert [r["id"] for r in await rows(admin, "SELECT id FROM sys_invocation")] == [kept.invocation_id]
    assert await redis.zscore(index_key(gone.partition), gone.invocation_id) is None
    assert await redis.zscore(index_key(kept.partition), kept.invocation_id) is not None


async def test_state_of_one_key_as_hex(redis: Redis, admin: str) -> None:
    p = partition_of(InvocationId.parse(str(idempotent_invocation_id("Counter", "k1", "add", "x"))).partition_key,
                     PARTITIONS)
    await redis.hset(keys.state(p, "Counter", "k1"), mapping={"count": b"5", "raw": b"\x00\xff"})
    await redis.hset(keys.state(p, "Counter", "k2"), mapping={"count": b"7"})
    got = await rows(admin, "select key, value from state where service_name = 'Counter' and service_key = 'k1' ;")
    assert sorted(got, key=lambda r: r["key"]) == [{"key": "count", "value": "35"}, {"key": "raw", "value": "00ff"}]
    every = await rows(admin, "SELECT service_key, key FROM state WHERE service_name = 'Counter' ORDER BY service_key, key")
    assert every == [{"service_key": "k1", "key": "count"}, {"service_key": "k1", "key": "raw"},
                     {"service_key": "k2", "key": "count"}]


async def test_arrow_stream_for_the_cli_count_and_information_schema(world: World, admin: str) -> None:
    for n in range(4):
        await world.accept("Greeter", None, "greet", n, HandlerKind.SERVICE)
    await world.kill(await world.accept("Greeter", None, "greet", 9, HandlerKind.SERVICE))
    status, ctype, body = await _post(
        admin, "SELECT COUNT(1) FROM (SELECT * FROM sys_invocation inv LIMIT 50000 ) WHERE status != 'completed'", "*/*")
    assert (status, ctype) == (200, "application/vnd.apache.arrow.stream")
    table = pa.ipc.open_stream(body).read_all()
    assert table.column_names == ["count(Int64(1))"]
    assert table.column(0).to_pylist() == [4]
    _, _, body = await _post(admin, "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = "
                                    "'sys_journal' AND column_name IN ('version', 'entry_json', 'appended_at')", "*/*")
    assert pa.ipc.open_stream(body).read_all().column(0).to_pylist() == [3]


async def test_nulls_are_left_out_of_json_rows(world: World, admin: str) -> None:
    t = await world.accept("Greeter", None, "greet", 1, HandlerKind.SERVICE)
    got = await rows(admin, "SELECT id, target_service_key, completion_result, retry_count, journal_size, "
                            "next_retry_at FROM sys_invocation")
    assert got == [{"id": t.invocation_id, "retry_count": 0, "journal_size": 1}]  # the input entry only


@pytest.mark.parametrize(("sql", "message"), [
    ("SELEC 1", "Expected: an SQL statement"),
    ("SELECT nope FROM sys_invocation", "nope"),
    ("CREATE TABLE x AS SELECT 1", "DDL not supported"),
])
async def test_a_bad_statement_is_400_with_its_message(admin: str, sql: str, message: str) -> None:
    status, _, body = await _post(admin, sql, "application/json")
    assert status == 400

    assert message in json.loads(body)["message"]


async def test_a_body_without_query_is_422(admin: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{admin}/query", json={"sql": "SELECT 1"},
                                                          timeout=aiohttp.ClientTimeout(total=10)) as r:
        assert r.status == 422


async def test_the_periodic_pass_prunes_without_a_query(world: World, redis: Redis) -> None:
    kept = [await world.accept("Greeter", None, "greet", n, HandlerKind.SERVICE) for n in range(3)]
    gone = [await world.accept("Greeter", None, "greet", 10 + n, HandlerKind.SERVICE) for n in range(2)]
    for t in gone:
        await redis.delete(keys.invocation(t.partition, t.invocation_id))
    assert await prune_indexes(QueryStore(redis, PARTITIONS)) == 2
    listed = set()
    for p in range(PARTITIONS):
        members: list[bytes] = await redis.zrange(index_key(p), 0, -1)  # type: ignore[assignment]
        listed |= {m.decode() for m in members}
    assert listed == {t.invocation_id for t in kept}


async def test_a_limit_reads_no_more_than_it_needs_and_counts_right(world: World, admin: str) -> None:
    for n in range(6):
        await world.accept("Greeter", None, "greet", n, HandlerKind.SERVICE)
    await world.kill(await world.accept("Greeter", None, "greet", 9, HandlerKind.SERVICE))
    assert len(await rows(admin, "SELECT id FROM sys_invocation LIMIT 3")) == 3
    got = await rows(admin, "SELECT COUNT(1) AS n FROM (SELECT * FROM sys_invocation inv LIMIT 50000 ) "
                            "WHERE status != 'completed'")
    assert got == [{"n": 6}]


async def test_sys_schedule_lists_every_schedule(redis: Redis, admin: str) -> None:
    """Schedules stored the way `PUT /schedules/{id}` stores them (its own tests cover the API)."""
    store = ScheduleStore(redis, PARTITIONS)
    for sid, body, paused in [("nightly", {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}, False),
                              ("often", {"every": "PT15M"}, True)]:
        d = parse_definition(sid, {**body, "target": {"service": "Greeter", "handler": "greet"}})
        await store.put(d, next_fire(d, NOW_MS), paused, NOW_MS)
    got = await rows(admin, "SELECT id, state, cron, every, timezone, target_service_name, target_handler_name, "
                            "fired FROM sys_schedule ORDER BY id")
    assert got == [
        {"id": "nightly", "state": "active", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
         "target_service_name": "Greeter", "target_handler_name": "greet", "fired": 0},
        {"id": "often", "state": "paused", "every": "PT15M", "timezone": "UTC", "target_service_name": "Greeter",
         "target_handler_name": "greet", "fired": 0},
    ]
    nxt = await rows(admin, "SELECT next_fire_at FROM sys_schedule WHERE id = 'nightly'")
    assert nxt == [{"next_fire_at": iso_ms(next_fire(parse_definition("nightly", {
        "cron": "0 3 * * *", "timezone": "Europe/Berlin", "target": {"service": "Greeter", "handler": "greet"}}),
        NOW_MS) or 0)}]


async def _post_headers(url: str, sql: str, accept: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{url}/v4/query", json={"query": sql}, headers={"accept": accept},
            timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("accept", ["application/json", "*/*"])
async def test_a_large_answer_is_streamed_batch_by_batch(admin: str, accept: str) -> None:
    """An answer of many record batches goes out chunked (no length: it is not held whole) and
    arrives complete and in order; a one-batch answer keeps its Content-Length."""
    status, headers, body = await _post_headers(admin, "SELECT value * 2 AS v FROM range(50000)", accept)
    assert status == 200, body
    assert "Content-Length" not in headers and headers.get("Transfer-Encoding") == "chunked"
    if accept == "application/json":
        got = [row["v"] for row in json.loads(body)["rows"]]
    else:
        got = pa.ipc.open_stream(body).read_all().column("v").to_pylist()
    assert got == [2 * i for i in range(50000)]
    status, headers, body = await _post_headers(admin, "SELECT value FROM range(3)", accept)
    assert status == 200 and int(headers["Content-Length"]) == len(body) > 0
    status, headers, body = await _post_headers(admin, "SELECT value FROM range(0)", accept)
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    if accept == "application/json":
        assert json.loads(body) == {"rows": []}
    else:
        assert pa.ipc.open_stream(body).read_all().num_rows == 0


async def test_sys_idempotency_lists_the_keys_clients_gave_and_invoked_by_names_the_sender(
        world: World, admin: str) -> None:
    keyed = idempotent_invocation_id("Greeter", None, "greet", "client-key")
    t = Target(partition_of(keyed.partition_key, PARTITIONS), str(keyed), "Greeter", None)
    record = InvocationRecord(status=Status.INVOKED, service="Greeter", handler="greet", kind=HandlerKind.SERVICE,
                              input_frame=b"", completion_retention_ms=RETAIN_MS, last_growth_ms=NOW_MS,
                              idempotency_key="client-key", invoked_by="inv_1callerAAAAAAAAAAAAAAAAAAAAAAAAAA|Caller")
    await world.scripts.accept(t, await world.token(t.partition), record)
    plain = await world.accept("Greeter", None, "greet", 2, HandlerKind.SERVICE)  # from the ingress, no key kept
    assert await rows(admin, "SELECT * FROM sys_idempotency") == [{
        "partition_key": keyed.partition_key, "service_name": "Greeter", "service_handler": "greet",
        "idempotency_key": "client-key", "invocation_id": t.invocation_id}]
    got = await rows(admin, "SELECT id, idempotency_key, invoked_by, invoked_by_id, invoked_by_service_name "
                            "FROM sys_invocation ORDER BY invoked_by DESC")
    assert got == [
        {"id": t.invocation_id, "idempotency_key": "client-key", "invoked_by": "service",
         "invoked_by_id": "inv_1callerAAAAAAAAAAAAAAAAAAAAAAAAAA", "invoked_by_service_name": "Caller"},
        {"id": plain.invocation_id, "invoked_by": "ingress"}]
    await world.kill(t)  # completed and retained: the key is still listed
    assert [r["invocation_id"] for r in await rows(admin, "SELECT invocation_id FROM sys_idempotency")] == [
        t.invocation_id]
