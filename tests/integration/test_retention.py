"""Journal retention as Restate computes it, against a real Redis and a real restate-sdk deployment.

A completed invocation keeps its journal (the input entry first, then what it journaled) for its
journal retention, never longer than the invocation itself (`cret`), with a TTL on the journal key
so it expires on its own; without journal retention the journal is dropped at completion, as
before. Kill completes the same way; purge-journal drops the retained journal, purge drops it with
the invocation and its query index entry. A plain call that keeps its journal still costs exactly
two scripts (accept + apply).

What a completed invocation keeps, and what it costs: a fresh, compactly encoded hash of only the
fields its readers need (status, result, expiry, target, kind, retention, request nonce, and the
scope, limit key and start time when it had them), at most `COMPLETED_BOUND_B` bytes of `MEMORY
USAGE` for a `Greeter/greet` call as the ingress sends it (docs/lifecycle.md, "Cost").
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from ulid import ULID

from ingress.admin.invocations import RESTART_FIELDS
from ingress.admin.query import store as query_store
from ingress.admin.query.rows import Columns, time_of
from partition import keys
from partition.effects import PlanContext, plan_attempt
from partition.invocation import KILLED, HandlerKind, HashField, InvocationRecord, Result, Status, new_record
from partition.invoker import Invoker
from partition.scripts import Scripts, Target
from partition.service import PartitionService
from partition.transition import AttemptFailed, End, JournalEntry, ManageOutcome, Op, Suspend, TerminalKind
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment, HandlerMeta, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.integration.conftest import lease_token
from tests.integration.counting import CountingRedis, counted_scripts

pytestmark = pytest.mark.timeout(60)

P = 3
NOW_MS = 50_000
RETAIN_MS = 60_000
JOURNAL_MS = 30_000
INPUT = protocol.input_command(b'"Ann"')
OUTPUT = b"output-command"
# What the ingress forwards of a `curl -d '"Ann"' .../restate/call/Greeter/greet`: the input frame is
# then about 170 bytes, over Redis's hash-max-ziplist-value (64), as it is for most real calls.
INGRESS_HEADERS = (("x-restate-ingress-path", "/restate/call/Greeter/greet"), ("user-agent", "curl/7.88.1"),
                   ("accept", "*/*"), ("content-type", "application/json"), ("content-length", "5"))
GREETING = Result(0, "", b'"Hello, Ann!"')
EPOCH_MS = 1_796_000_000_000  # a real clock's milliseconds (13 digits, as `exp` holds them)
H = HashField
COMPLETED_FIELDS = {H.STATUS, H.RESULT, H.EXPIRES, H.SERVICE, H.HANDLER, H.KIND, H.COMPLETION_RETENTION}
# what a completed plain service call keeps (neither its generated key nor a nonce: decision 32)
# MEMORY USAGE bound of that hash (measured: 214 B on Redis 6.2 with libc malloc, 232 B on 7.0 with jemalloc)
COMPLETED_BOUND_B = 256


@pytest.fixture
async def tok(scripts: Scripts) -> str:
    return await lease_token(scripts, P)


def _t(n: int) -> Target:
    return Target(P, str(idempotent_invocation_id("Greeter", None, "greet", f"ret-{n}")), "Greeter", None)


async def _accept(scripts: Scripts, tok: str, t: Target, cret: int = RETAIN_MS, jret: int = JOURNAL_MS) -> None:
    record = InvocationRecord(status=Status.INVOKED, service=t.service, handler="greet", kind=HandlerKind.SERVICE,
                              input_frame=INPUT, completion_retention_ms=cret, journal_retention_ms=jret,
                              last_growth_ms=1000)
    await scripts.accept(t, tok, record)


async def _end(scripts: Scripts, tok: str, t: Target, cret: int = RETAIN_MS) -> None:
    applied = await scripts.apply(t, tok, NOW_MS, 0, End(Result(0, "", b'"Hello"')), 0, [JournalEntry(OUTPUT)])
    assert applied.expires_ms == (NOW_MS + cret if cret else None)


async def _journal(redis: Redis, t: Target) -> list[bytes]:
    return cast("list[bytes]", await redis.lrange(keys.journal(P, t.invocation_id), 0, -1))


async def _pttl(redis: Redis, key: str) -> int:
    return int(await redis.pttl(key))


async def test_a_completed_invocation_keeps_its_journal_with_the_input_first(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(1)
    await _accept(scripts, tok, t)
    await _end(scripts, tok, t)
    assert await _journal(redis, t) == [INPUT, OUTPUT]
    inv = keys.invocation(P, t.invocation_id)
    assert not await redis.hexists(inv, "in")  # moved, not copied
    assert 0 < await _pttl(redis, keys.journal(P, t.invocation_id)) <= JOURNAL_MS
    assert JOURNAL_MS < await _pttl(redis, inv) <= RETAIN_MS


async def test_the_journal_never_outlives_its_invocation(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(2)
    await _accept(scripts, tok, t, cret=RETAIN_MS, jret=10 * RETAIN_MS)
    await _end(scripts, tok, t)
    journal_ttl = await _pttl(redis, keys.journal(P, t.invocation_id))
    assert 0 < journal_ttl <= RETAIN_MS
    assert journal_ttl <= await _pttl(redis, keys.invocation(P, t.invocation_id)) + 5


async def test_without_journal_retention_the_journal_is_dropped(scripts: Scripts, redis: Redis, tok: str) -> None:
    kept, gone = _t(3), _t(4)
    await _accept(scripts, tok, kept, jret=0)
    await _end(scripts, tok, kept)
    assert await _journal(redis, kept) == []
    assert await redis.hget(keys.invocation(P, kept.invocation_id), "st") == b"completed"
    await _accept(scripts, tok, gone, cret=0, jret=JOURNAL_MS)  # nothing retained: nothing kept
    await _end(scripts, tok, gone, cret=0)
    assert not await redis.exists(keys.invocation(P, gone.invocation_id), keys.journal(P, gone.invocation_id))


async def test_kill_keeps_the_journal_for_its_retention(scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(5)
    await _accept(scripts, tok, t)
    await redis.rpush(keys.journal(P, t.invocation_id), b"sleep-command")
    killed = await scripts.kill(t, tok, NOW_MS)
    assert killed.outcome is ManageOutcome.DONE
    assert await _journal(redis, t) == [INPUT, b"sleep-command"]
    assert 0 < await _pttl(redis, keys.journal(P, t.invocation_id)) <= JOURNAL_MS
    raw: Any = await redis.hget(keys.invocation(P, t.invocation_id), "res")
    assert Result.decode(raw) == KILLED


async def test_purge_journal_then_purge_drop_the_journal_the_invocation_and_its_index_entry(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    t = _t(6)
    await _accept(scripts, tok, t)
    await _end(scripts, tok, t)
    index = keys.invocation_index(P)
    assert await redis.zscore(index, t.invocation_id) is not None
    assert (await scripts.purge(t, tok, journal_only=True)).outcome is ManageOutcome.DONE
    assert await _journal(redis, t) == []
    assert await redis.hget(keys.invocation(P, t.invocation_id), "st") == b"completed"
    assert await redis.zscore(index, t.invocation_id) is not None  # still listed: only the journal went
    assert (await scripts.purge(t, tok)).outcome is ManageOutcome.DONE
    assert not await redis.exists(keys.invocation(P, t.invocation_id))
    assert await redis.zscore(index, t.invocation_id) is None


# ---- what a completed invocation keeps -----------------------------------------------------------------


def _generated_key(n: int) -> str:
    """An idempotency key as the ingress generates one for a plain call (a ULID), fixed by `n`."""
    return str(ULID.from_bytes((1_790_000_000_000 << 80 | n).to_bytes(16, "big")))


def _ingress_call(n: int, journal_ms: int = 0, **extra: Any) -> spb.InvokeRequest:
    """A `Greeter/greet` call as the ingress sends it: its generated idempotency key, forwarded
    headers, nonce."""
    inv = idempotent_invocation_id("Greeter", extra.get("key"), "greet", _generated_key(n))
    return spb.InvokeRequest(partition=P, invocation_id=str(inv), service="Greeter", handler="greet",
                             body=b'"Ann"', kind=spb.HANDLER_KIND_SERVICE, idempotency_key=_generated_key(n),
                             idempotency_key_generated=True,
                             headers=[spb.Header(key=k, value=v) for k, v in INGRESS_HEADERS],
                             completion_retention_ms=86_400_000, journal_retention_ms=journal_ms,
                             request_nonce=b"\x07" * 8, wait=True, **extra)


async def _run_to_completion(scripts: Scripts, redis: Redis, tok: str, req: spb.InvokeRequest) -> str:
    """Accept `req`, then every field a run writes: a failed attempt (att, lerr), its retry, a
    suspension (wait, an) woken by a notification (n:c1), and END. The completed hash's key."""
    record = new_record(req, EPOCH_MS)
    t = Target(P, req.invocation_id, req.service, record.key, record.scope)
    await scripts.accept(t, tok, record)
    failed = AttemptFailed(Status.BACKING_OFF, EPOCH_MS + 100, "[500] boom")
    await scripts.apply(t, tok, EPOCH_MS, 0, failed, 1, [])
    retry = keys.timer_member(keys.TimerKind.RETRY, t.invocation_id)
    await scripts.attempt_start(t, tok, retry)
    await scripts.apply(t, tok, EPOCH_MS + 200, 0, Suspend(" c1 ", b"nonce"), 1, [JournalEntry(b"call")])
    await scripts.notify(P, t.invocation_id, tok, "c1", b"call-completion")
    inv = keys.invocation(P, t.invocation_id)
    running = {k.decode() for k in cast("list[bytes]", await redis.hkeys(inv))}
    assert {f.value for f in (H.INPUT, H.ATTEMPTS, H.LAST_GROWTH, H.LAST_FAILURE, H.APPLY_NONCE)} <= running
    assert "n:c1" in running
    applied = await scripts.apply(t, tok, EPOCH_MS + 300, 2, End(GREETING), 0, [])
    assert applied.expires_ms == EPOCH_MS + 300 + 86_400_000
    return inv


async def test_a_completed_call_keeps_only_what_its_readers_need(scripts: Scripts, redis: Redis,
                                                                  tok: str) -> None:
    inv = await _run_to_completion(scripts, redis, tok, _ingress_call(1))
    raw = cast("dict[bytes, bytes]", await redis.hgetall(inv))
    assert {k.decode() for k in raw} == {f.value for f in COMPLETED_FIELDS}
    assert raw[b"st"] == b"completed" and Result.decode(raw[b"res"]) == GREETING
    assert (raw[b"svc"], raw[b"hdl"], raw[b"kind"]) == (b"Greeter", b"greet", b"service")
    assert raw[b"cret"] == b"86400000" and raw[b"exp"] == str(EPOCH_MS + 300 + 86_400_000).encode()
    assert await redis.zscore(keys.invocation_index(P), inv.rsplit(":", 1)[1]) is not None  # still listed
    assert 0 < await _pttl(redis, inv) <= 86_400_000


async def test_a_completed_call_costs_at_most_256_bytes(scripts: Scripts, redis: Redis, tok: str) -> None:
    """The completed record is a new hash in Redis's compact encoding (a hash that once held the
    input frame stays a hashtable however many fields it loses: 1,040 B for this call before)."""
    inv = await _run_to_completion(scripts, redis, tok, _ingress_call(2))
    assert await redis.object("encoding", inv) in (b"ziplist", b"listpack")
    used = int(cast(int, await redis.memory_usage(inv, samples=0)))
    print(f"MEMORY USAGE of a completed Greeter/greet call: {used} B")
    assert used <= COMPLETED_BOUND_B


async def test_query_shows_a_completed_call_as_before(scripts: Scripts, redis: Redis, tok: str) -> None:
    """The columns the CLI shows of a completed invocation, computed by the query package from the
    compact record: the completion time is `exp - cret`, the creation time the index's score."""
    req = _ingress_call(5)
    await _run_to_completion(scripts, redis, tok, req)
    q = query_store
    fields = [q.F_STATUS, q.F_SERVICE, q.F_KEY, q.F_HANDLER, q.F_KIND, q.F_PARENTS, q.F_ATTEMPTS,
              q.F_LAST_FAILURE, q.F_LAST_GROWTH, q.F_EXPIRES, q.F_RETENTION, q.F_EXECUTION_TIME, q.F_RESULT]
    rows = await q.QueryStore(redis, P + 1).invocations(fields, q.InvocationFilter(), None)
    columns = Columns(SchemaSnapshot.empty())
    shown = ("id", "target", "target_service_ty", "status", "completion_result", "created_at", "modified_at",
             "completed_at", "retry_count", "last_failure", "invoked_by", "scheduled_at")
    got = {c: columns.values(c, rows) for c in shown}
    completed = time_of(EPOCH_MS + 300)
    assert got == {"id": [req.invocation_id], "target": ["Greeter/greet"], "target_service_ty": ["service"],
                   "status": ["completed"], "completion_result": ["success"],
                   "created_at": [time_of(EPOCH_MS)],
                   "modified_at": [completed], "completed_at": [completed], "retry_count": [0],
                   "last_failure": [None], "invoked_by": ["ingress"], "scheduled_at": [None]}


async def test_a_completed_object_call_keeps_its_key_scope_and_limit_key(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    req = _ingress_call(3, key="k1", scope="tenant-a", limit_key="l1/l2")
    req.kind = spb.HANDLER_KIND_EXCLUSIVE
    inv = await _run_to_completion(scripts, redis, tok, req)
    raw = cast("dict[bytes, bytes]", await redis.hgetall(inv))
    assert {k.decode() for k in raw} == {f.value for f in COMPLETED_FIELDS | {H.KEY, H.SCOPE, H.LIMIT_KEY}}
    assert (raw[b"key"], raw[b"scp"], raw[b"lk"]) == (b"k1", b"tenant-a", b"l1/l2")
    assert raw[b"kind"] == b"exclusive"
    t = await scripts.target_of(P, req.invocation_id)  # purge and the lifecycle commands locate it
    assert t is not None and (t.service, t.key, t.scope) == ("Greeter", "k1", "tenant-a")


async def test_a_delayed_send_keeps_its_execution_time_for_duplicates(
        scripts: Scripts, redis: Redis, tok: str) -> None:
    req = _ingress_call(4, execution_time_ms=EPOCH_MS + 1000)
    req.wait, req.idempotency_key_generated = False, False  # a client's key: the nonce marks its re-send
    record = new_record(req, EPOCH_MS)
    t = Target(P, req.invocation_id, "Greeter", None)
    await scripts.accept(t, tok, record)
    await scripts.attempt_start(t, tok, keys.timer_member(keys.TimerKind.START, t.invocation_id))
    await scripts.apply(t, tok, EPOCH_MS + 1100, 0, End(GREETING), 0, [])
    dup = await scripts.accept(t, tok, record)
    assert (dup.dup_status, dup.execution_time_ms) == (Status.COMPLETED, EPOCH_MS + 1000)
    assert dup.request_nonce == b"\x07" * 8  # a re-send of that very request is told Accepted
    assert dup.result == GREETING and dup.expires_ms == EPOCH_MS + 1100 + 86_400_000


# ---- the final attempt's entries -----------------------------------------------------------------------


def _plan_end(journal_kept: bool) -> list[Op]:
    frames = protocol.decode_frames(
        protocol.encode_message(T.OUTPUT_COMMAND, pb.OutputCommandMessage(value=pb.Value(content=b'"Hi"')))
        + protocol.encode_message(T.END, pb.EndMessage()))
    t = _t(7)
    ctx = PlanContext(invocation_id=t.invocation_id, partition=P, partitions=8, kind=HandlerKind.SERVICE,
                      service="Greeter", key=None, state={}, commands_before=1, now_ms=NOW_MS,
                      schema=SchemaSnapshot.empty(), journal_kept=journal_kept)
    plan = plan_attempt(frames, ctx)
    assert plan.terminal is TerminalKind.END and plan.result == Result(0, "", b'"Hi"')
    return plan.ops


def test_an_ending_attempt_ships_its_entries_only_when_the_journal_is_kept() -> None:
    kept = _plan_end(journal_kept=True)
    assert [type(op) for op in kept] == [JournalEntry]
    assert protocol.decode_frames(kept[0].frame)[0].type == T.OUTPUT_COMMAND  # type: ignore[union-attr]
    assert _plan_end(journal_kept=False) == []


# ---- a real call -------------------------------------------------------------------------------------


def _greet(n: int, journal_ms: int) -> spb.InvokeRequest:
    inv = idempotent_invocation_id("Greeter", None, "greet", _generated_key(100 + n))
    return spb.InvokeRequest(partition=partition_of(inv.partition_key, 8), invocation_id=str(inv),
                             service="Greeter", handler="greet", body=b'"Ann"', kind=spb.HANDLER_KIND_SERVICE,
                             idempotency_key=_generated_key(100 + n), idempotency_key_generated=True,
                             completion_retention_ms=RETAIN_MS,
                             headers=[spb.Header(key=k, value=v) for k, v in INGRESS_HEADERS],
                             request_nonce=bytes([n]) * 8, journal_retention_ms=journal_ms, wait=True)


async def _memory_bytes(redis: Redis, req: spb.InvokeRequest) -> int:
    """MEMORY USAGE of every key a completed call left (its hash and its journal)."""
    p = req.partition
    total = 0
    for key in (keys.invocation(p, req.invocation_id), keys.journal(p, req.invocation_id)):
        used = await redis.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


@asynccontextmanager
async def _greeter_service(redis_url: str, sdk_deployment: str) -> AsyncIterator[tuple[CountingRedis, PartitionService]]:
    """A partition service in this process (every partition acquired) against a real restate-sdk
    deployment, on a client that counts its scripts by name."""
    redis = cast(CountingRedis, CountingRedis.from_url(redis_url, socket_timeout=5))
    await redis.flushdb()
    scripts = counted_scripts(redis)
    deployment = Deployment(id="dp_ret", uri=sdk_deployment, protocol_mode="REQUEST_RESPONSE",
                            min_protocol_version=5, max_protocol_version=6)
    greeter = ServiceMeta(name="Greeter", ty=ServiceType.SERVICE, deployment_id=deployment.id,
                          handlers={"greet": HandlerMeta(name="greet", ty=None)})
    schema = SchemaSnapshot(version=1, services={"Greeter": greeter}, deployments={deployment.id: deployment})
    invoker = Invoker(connect_timeout_s=5.0)
    await invoker.start()
    service = PartitionService(redis, scripts, invoker, lambda: schema, 8, 4)
    for p in range(8):
        tok = await scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                          args=["w1", 60_000, "127.0.0.1:1"])
        service.on_acquired(p, tok.decode())
    try:
        yield redis, service
    finally:
        await service.shutdown()
        await invoker.close()
        await redis.aclose()


async def test_a_plain_call_keeping_its_journal_costs_two_scripts(redis_url: str, sdk_deployment: str) -> None:
    """accept + apply: one EVALSHA each, with the journal retained, against a real restate-sdk
    deployment; the retained journal is the Input and Output commands, and expires on its own."""
    async with _greeter_service(redis_url, sdk_deployment) as (redis, service):
        calls = [_greet(n, JOURNAL_MS if n != 3 else 0) for n in (1, 2, 3)]
        warm = await service.invoke(calls[0])  # loads the scripts (NOSCRIPT fallback) first
        assert warm.result.value == b'"Hello, Ann!"'
        before = Tally(redis.sent)
        resp = await service.invoke(calls[1])
        assert resp.result.value == b'"Hello, Ann!"' and resp.result.failure_code == 0
        assert redis.sent - before == Tally({"accept": 1, "apply": 1})
        p, inv = calls[1].partition, calls[1].invocation_id
        journal = await redis.lrange(keys.journal(p, inv), 0, -1)
        assert journal[0] == protocol.input_command(b'"Ann"', list(INGRESS_HEADERS))
        assert 0 < await redis.pttl(keys.journal(p, inv)) <= JOURNAL_MS
        assert (await service.invoke(calls[2])).result.value == b'"Hello, Ann!"'
        with_journal, without = await _memory_bytes(redis, calls[1]), await _memory_bytes(redis, calls[2])
        print(f"MEMORY USAGE of a completed Greeter/greet call: {without} B without its journal, "
              f"{with_journal} B with it")
        assert without <= COMPLETED_BOUND_B < with_journal


async def test_a_sweep_racing_calls_adds_no_attempt(redis_url: str, sdk_deployment: str) -> None:
    """The leader's sweep (every invoked id without a driver gets one) run over and over while
    calls are accepted: an id whose accept is in flight, or whose driver started after the sweep
    read the active set, is not resumed a second time (no extra attempt_start), and each call
    still costs exactly accept + apply."""
    async with _greeter_service(redis_url, sdk_deployment) as (redis, service):
        calls = [_greet(n, 0) for n in range(10, 50)]
        assert (await service.invoke(calls[0])).result.value == b'"Hello, Ann!"'
        before = Tally(redis.sent)
        done = asyncio.Event()

        async def sweeping() -> int:
            passes = 0
            while not done.is_set():
                await asyncio.gather(*(service.leader(p).sweep() for p in range(8)))
                passes += 1
            return passes

        sweeper = asyncio.create_task(sweeping())
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(service.invoke(c) for c in calls[1:])), 30)
        finally:
            done.set()
            passes = await asyncio.wait_for(sweeper, 10)
        assert all(a.result.value == b'"Hello, Ann!"' for a in answers)
        assert passes > 1
        assert redis.sent - before == Tally({"accept": len(calls) - 1, "apply": len(calls) - 1})


def test_restart_as_new_reads_the_fields_the_partition_writes() -> None:
    """The admin API's restart-as-new reads the status hash by name (it cannot import the worker)."""
    h = HashField
    assert RESTART_FIELDS == tuple(f.value for f in (h.STATUS, h.SERVICE, h.HANDLER, h.KEY, h.KIND, h.SCOPE,
                                                     h.LIMIT_KEY, h.PINNED_DEPLOYMENT, h.PINNED_PROTOCOL))
