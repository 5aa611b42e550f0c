"""`/query` at scale: latency of the CLI's `invocations list` statements and of a GROUP BY status
over N retained invocations, and the Redis memory those invocations take.

    .venv/bin/python deploy/bench/query.py [--invocations 100000] [--partitions 24] [--rounds 5]

Starts a private redis-server, writes the invocations through the real transitions (`accept`,
then `kill` for the completed share, which leaves them retained with their result, as a finished
idempotent call is), serves the admin API (`build_admin_app`) on a free port and times each
statement over HTTP, as the CLI sends it. Prints one JSON object. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ingress.admin import AdminSettings, InvocationControl, build_admin_app
from ingress.grpc_dispatcher import GrpcDispatcher
from partition import keys
from partition.invocation import HandlerKind, InvocationRecord, Status
from partition.scripts import Scripts, Target
from sgtools.redis_bin import find_redis_server
from shardgate import protocol
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router
from shardgate.sharding import idempotent_invocation_id, partition_of

DAY_MS = 86_400_000
CONCURRENCY = 256
LIST_COUNT = "SELECT COUNT(1) FROM (SELECT * FROM sys_invocation inv LIMIT 50000 ) WHERE status != 'completed'"
LIST_IDS = "SELECT id FROM sys_invocation inv WHERE status != 'completed' ORDER BY inv.created_at DESC, inv.id LIMIT 100"
LIST_DETAIL = (
    "SELECT inv.id, inv.target, inv.target_service_ty, inv.idempotency_key, inv.status, inv.created_at, "
    "inv.modified_at as state_modified_at, inv.pinned_deployment_id, inv.retry_count as num_retries, "
    "inv.last_failure as last_failure_message, inv.last_failure_related_entry_index as last_failure_entry_index, "
    "inv.last_failure_related_entry_name as last_failure_entry_name, inv.last_failure_related_entry_type as "
    "last_failure_entry_ty, inv.last_attempt_deployment_id, inv.last_attempt_server, inv.next_retry_at, "
    "inv.last_start_at, inv.invoked_by_id, inv.invoked_by_target, inv.trace_id, inv.completion_result, "
    "inv.completion_failure, dp.id IS NOT NULL as pinned_deployment_exists FROM sys_invocation inv LEFT JOIN "
    "sys_deployment dp ON dp.id = inv.pinned_deployment_id WHERE inv.id in ({ids}) ORDER BY inv.created_at DESC, inv.id")
GROUP_BY = "SELECT status, count(*) FROM sys_invocation GROUP BY status"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Writer:
    """Writes invocations through the real accept / kill scripts."""

    def __init__(self, redis: Redis, partitions: int) -> None:
        self.redis, self.scripts, self.partitions, self.tokens = redis, Scripts(redis), partitions, dict[int, str]()

    async def leases(self) -> None:
        for p in range(self.partitions):
            raw = await self.scripts.lease_acquire(keys=[keys.lease(p), keys.epoch(p), keys.route(p)],
                                                   args=["bench", 3_600_000, "127.0.0.1:1"])
            self.tokens[p] = raw.decode()

    async def one(self, n: int, completed: bool, now_ms: int) -> None:
        inv = idempotent_invocation_id("Greeter", None, "greet", f"bench-{n}")
        t = Target(partition_of(inv.partition_key, self.partitions), str(inv), "Greeter", None)
        record = InvocationRecord(status=Status.INVOKED, service="Greeter", handler="greet", kind=HandlerKind.SERVICE,
                                  input_frame=protocol.input_command(b'"bench-%d"' % n), completion_retention_ms=DAY_MS,
                                  request_nonce=b"0123456789abcdef", last_growth_ms=now_ms)
        await self.scripts.accept(t, self.tokens[t.partition], record)
        if completed:
            await self.scripts.kill(t, self.tokens[t.partition], now_ms + 1)

    async def many(self, count: int, completed_share: float) -> float:
        """Write `count` invocations (that share completed); the seconds it took."""
        started, now_ms = time.perf_counter(), int(time.time() * 1000)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def bounded(n: int) -> None:
            async with sem:
                await self.one(n, (n % 1000) < completed_share * 1000, now_ms + n)

        await asyncio.gather(*(bounded(n) for n in range(count)))
        return time.perf_counter() - started


async def _time(http: aiohttp.ClientSession, url: str, sql: str, accept: str, rounds: int) -> dict[str, Any]:
    took, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        async with http.post(url, json={"query": sql}, headers={"accept": accept},
                             timeout=aiohttp.ClientTimeout(total=600)) as r:
            body = await r.read()
            assert r.status == 200, body[:500]
        took.append((time.perf_counter() - started) * 1000)
        size = len(body)
    return {"median_ms": round(statistics.median(took), 1), "min_ms": round(min(took), 1),
            "max_ms": round(max(took), 1), "answer_bytes": size}


async def measure(redis_url: str, count: int, partitions: int, rounds: int, completed_share: float) -> dict[str, Any]:
    redis = Redis.from_url(redis_url, max_connections=CONCURRENCY + 16)
    writer = Writer(redis, partitions)
    await writer.leases()
    before = int((await redis.info("memory"))["used_memory"])
    write_s = await writer.many(count, completed_share)
    after = int((await redis.info("memory"))["used_memory"])
    async with aiohttp.ClientSession() as http:
        router = Router(redis, partitions)
        store = RegistryStore(redis)
        app = build_admin_app(store, RegistryCache(store), http, AdminSettings(advertised_ingress_url="http://x"),
                              InvocationControl(GrpcDispatcher(router, 1.0, 1.0, 1.0), partitions))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v4/query"
        try:
            async with http.post(url, json={"query": LIST_IDS}, headers={"accept": "application/json"}) as r:
                ids = [row["id"] for row in (await r.json())["rows"]]
            detail = LIST_DETAIL.format(ids=", ".join(f"'{i}'" for i in ids))
            results = {
                "invocations_list_count_arrow": await _time(http, url, LIST_COUNT, "*/*", rounds),
                "invocations_list_ids_json": await _time(http, url, LIST_IDS, "application/json", rounds),
                "invocations_list_detail_json": await _time(http, url, detail, "application/json", rounds),
                "group_by_status_json": await _time(http, url, GROUP_BY, "application/json", rounds),
            }
            async with http.post(url, json={"query": GROUP_BY}, headers={"accept": "application/json"}) as r:
                counts = (await r.json())["rows"]
        finally:
            await runner.cleanup()
            await router.close()
    index_entries = sum([await redis.zcard(f"sg:{{p{p}}}:idx") for p in range(partitions)])
    index_bytes = sum([int(await redis.memory_usage(f"sg:{{p{p}}}:idx", samples=0) or 0) for p in range(partitions)])
    await redis.aclose()
    return {"invocations": count, "partitions": partitions, "completed_share": completed_share,
            "write_s": round(write_s, 1), "redis_used_memory_bytes": after - before,
            "bytes_per_invocation": round((after - before) / count), "index_entries": index_entries, "index_bytes": index_bytes,
            "status_counts": counts, "latency": results,
            "invocations_list_total_median_ms": round(sum(results[k]["median_ms"] for k in list(results)[:3]), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--completed-share", type=float, default=0.9)
    args = parser.parse_args(argv)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="query-bench-") as tmp:
        proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            result = asyncio.run(measure(url, args.invocations, args.partitions, args.rounds, args.completed_share))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
