"""Journal retention as Restate computes it, against a real Redis and a real restate-sdk deployment.

A completed invocation keeps its journal (the input entry first, then what it journaled) for its
journal retention, never longer than the invocation itself (`cret`), with a TTL on the journal key
so it expires on its own; without journal retention the journal is dropped at completion, as
before. Kill completes the same way; purge-journal drops the retained journal, purge drops it with
the invocation and its query index entry. A plain call that keeps its journal still costs exactly
two scripts (accept + apply).
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis.asyncio import Redis

from ingress.admin.invocations import RESTART_FIELDS
from partition import keys
from partition.effects import PlanContext, plan_attempt
from partition.invocation import KILLED, HandlerKind, HashField, InvocationRecord, Result, Status
from partition.invoker import Invoker
from partition.scripts import Scripts, Target
from partition.service import PartitionService
from partition.transition import End, JournalEntry, ManageOutcome, Op, TerminalKind
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.schema import Deployment, HandlerMeta, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.integration.conftest import lease_token

P = 3
NOW_MS = 50_000
RETAIN_MS = 60_000
JOURNAL_MS = 30_000
INPUT = protocol.input_command(b'"Ann"')
OUTPUT = b"output-command"


class CountingRedis(Redis):
    """A client that counts the scripts it sends (EVALSHA / EVAL): this test's own count, not the
    shared server's."""

    scripts_sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and str(args[0]).upper() in ("EVALSHA", "EVAL"):
            self.scripts_sent += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


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
    inv = idempotent_invocation_id("Greeter", None, "greet", f"ret-call-{n}")
    return spb.InvokeRequest(partition=partition_of(inv.partition_key, 8), invocation_id=str(inv),
                             service="Greeter", handler="greet", body=b'"Ann"', kind=spb.HANDLER_KIND_SERVICE,
                             idempotency_key=f"ret-call-{n}", completion_retention_ms=RETAIN_MS,
                             journal_retention_ms=journal_ms, wait=True)


async def _memory_bytes(redis: Redis, req: spb.InvokeRequest) -> int:
    """MEMORY USAGE of every key a completed call left (its hash and its journal)."""
    p = req.partition
    total = 0
    for key in (keys.invocation(p, req.invocation_id), keys.journal(p, req.invocation_id)):
        used = await redis.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


async def test_a_plain_call_keeping_its_journal_costs_two_scripts(redis_url: str, sdk_deployment: str) -> None:
    """accept + apply: one EVALSHA each, with the journal retained, against a real restate-sdk
    deployment; the retained journal is the Input and Output commands, and expires on its own."""
    redis = cast(CountingRedis, CountingRedis.from_url(redis_url, socket_timeout=5))
    await redis.flushdb()
    scripts = Scripts(redis)
    deployment = Deployment(id="dp_ret", uri=sdk_deployment, protocol_mode="REQUEST_RESPONSE",
                            min_protocol_version=5, max_protocol_version=6)
    greeter = ServiceMeta(name="Greeter", ty=ServiceType.SERVICE, deployment_id=deployment.id,
                          handlers={"greet": HandlerMeta(name="greet", ty=None)})
    schema = SchemaSnapshot(version=1, services={"Greeter": greeter}, deployments={deployment.id: deployment})
    invoker = Invoker(connect_timeout_s=5.0)
    await invoker.start()
    service = PartitionService(redis, scripts, invoker, lambda: schema, 8, 4)
    calls = [_greet(n, JOURNAL_MS if n != 3 else 0) for n in (1, 2, 3)]
    for p in {c.partition for c in calls}:
        tok = await scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                          args=["w1", 60_000, "127.0.0.1:1"])
        service.on_acquired(p, tok.decode())
    try:
        warm = await service.invoke(calls[0])  # loads the scripts (NOSCRIPT fallback) first
        assert warm.result.value == b'"Hello, Ann!"'
        before = redis.scripts_sent
        resp = await service.invoke(calls[1])
        assert resp.result.value == b'"Hello, Ann!"' and resp.result.failure_code == 0
        assert redis.scripts_sent - before == 2
        p, inv = calls[1].partition, calls[1].invocation_id
        journal = await redis.lrange(keys.journal(p, inv), 0, -1)
        assert journal[0] == protocol.input_command(b'"Ann"')
        assert 0 < await redis.pttl(keys.journal(p, inv)) <= JOURNAL_MS
        assert (await service.invoke(calls[2])).result.value == b'"Hello, Ann!"'
        with_journal, without = await _memory_bytes(redis, calls[1]), await _memory_bytes(redis, calls[2])
        print(f"MEMORY USAGE of a completed Greeter/greet call: {without} B without its journal, "
              f"{with_journal} B with it")
        assert without < with_journal
    finally:
        await service.shutdown()
        await invoker.close()
        await redis.aclose()


def test_restart_as_new_reads_the_fields_the_partition_writes() -> None:
    """The admin API's restart-as-new reads the status hash by name (it cannot import the worker)."""
    h = HashField
    assert RESTART_FIELDS == tuple(f.value for f in (h.STATUS, h.SERVICE, h.HANDLER, h.KEY, h.KIND, h.SCOPE,
                                                     h.LIMIT_KEY))
