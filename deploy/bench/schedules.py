"""Schedules at full size (issue 12's acceptance numbers); never collected by pytest.

    .venv/bin/python deploy/bench/schedules.py [--schedules 1000] [--seconds 60] [--active 10000]

Starts its own `DevCluster` (Redis, 2 workers, ingress; lease `--lease-ms`, default 2 s) and the recording deployment
`tests/services/schedule_service.py`, then:

1. exactly once across a SIGKILL: `--schedules` schedules `every PT1S` for `--seconds` s, worker 0
   SIGKILLed a third of the way in. Every nominal tick of every schedule must be recorded by the
   deployment as exactly one invocation; reports missing / extra / duplicated ticks and the start
   lateness (deployment start minus nominal time) p50 / p99 / max and how many were over 2 s.
2. lateness with `--active` active schedules: `every PT5M` with start times spread over five
   minutes (so about active/300 fire each second), measured for `--measure-s` s; reports fire
   lateness (schedule loop: committed fire minus nominal, from the workers' histogram) and start
   lateness (deployment) p50 / p99, and the Redis memory the schedules take (used_memory before and
   after creating them, and MEMORY USAGE of one schedule's keys).

Prints one JSON document with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sgtools.dev import ClusterSpec, DevCluster
from shardgate.schedule import iso_ms
from shardgate.schedule_store import due_key, history_key, index_key, schedule_key, schedule_partition
from tests.deployments import serve_sdk_app
from tests.services.schedule_service import RECORD_FILE_ENV, read_records

PARTITIONS = 16
TARGET = {"service": "Recorder", "handler": "tick"}


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _pct(values: list[int], q: float) -> int | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Bench:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, redis: Redis, records: Path) -> None:
        self.cluster, self.http, self.redis, self.records = cluster, http, redis, records

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.cluster.admin_url}{path}", json=body,
                                     timeout=aiohttp.ClientTimeout(total=60)) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None)

    async def put_all(self, bodies: dict[str, dict[str, Any]], concurrency: int = 32) -> dict[str, Any]:
        limit, answers = asyncio.Semaphore(concurrency), {}

        async def one(sid: str, body: dict[str, Any]) -> None:
            async with limit:
                status, answer = await self.admin("PUT", f"/schedules/{sid}", body)
                if status not in (200, 201):
                    raise RuntimeError(f"PUT {sid}: {status} {answer}")
                answers[sid] = answer

        await asyncio.gather(*(one(s, b) for s, b in bodies.items()))
        return answers

    async def delete_all(self, ids: list[str]) -> None:
        limit = asyncio.Semaphore(32)

        async def one(sid: str) -> None:
            async with limit:
                await self.admin("DELETE", f"/schedules/{sid}")

        await asyncio.gather(*(one(s) for s in ids))

    async def lateness_histogram(self) -> dict[float, float]:
        """le -> cumulative count of the schedule lateness histogram, summed over running workers."""
        total: dict[float, float] = defaultdict(float)
        for w in self.cluster.workers:
            if not w.running:
                continue
            async with self.http.get(f"http://127.0.0.1:{w.metrics_port}/metrics") as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("shardgate_partition_schedule_lateness_seconds_bucket"):
                        le = line.split('le="')[1].split('"')[0]
                        total[float("inf") if le == "+Inf" else float(le)] += float(line.rsplit(" ", 1)[1])
        return dict(total)


def _bucket_pct(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The histogram bucket bound holding quantile `q` of the observations between two scrapes."""
    diff = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    count = diff[-1][1] if diff else 0
    if count <= 0:
        return None
    return next(le for le, c in diff if c >= q * count)


async def exactly_once(b: Bench, schedules: int, seconds: int) -> dict[str, Any]:
    run = f"once-{int(time.time())}"
    end_ms = (time.time_ns() // 1_000_000 // 1000 + seconds + 3) * 1000
    bodies = {f"{run}-{i}": {"every": "PT1S", "target": TARGET, "body": {"n": i}, "end_at": iso_ms(end_ms)}
              for i in range(schedules)}
    answers = await b.put_all(bodies)
    expected = {sid: {iso_ms(t) for t in range(_ms(a["next_fire_times"][0]), end_ms + 1, 1000)}
                for sid, a in answers.items()}
    kill_at = time.time() + seconds / 3
    while time.time() < kill_at:
        await asyncio.sleep(0.1)
    await b.cluster.kill_worker(0, signal.SIGKILL)
    killed_ms = time.time_ns() // 1_000_000
    total = sum(len(v) for v in expected.values())
    deadline = time.time() + seconds + 120
    while time.time() < deadline:
        seen = {(r["schedule"], r["tick"]) for r in read_records(b.records) if r["schedule"] in expected}
        if len(seen) >= total:
            break
        await asyncio.sleep(1)
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    first: dict[tuple[str, str], int] = {}
    for r in read_records(b.records):
        if r["schedule"] in expected:
            k = (r["schedule"], r["tick"])
            ids[k].add(r["id"])
            first[k] = min(first.get(k, r["at_ms"]), r["at_ms"])
    want = {(s, t) for s, ts in expected.items() for t in ts}
    late = [first[k] - _ms(k[1]) for k in first]
    await b.delete_all(list(expected))
    await b.cluster.restart_worker(0)
    return {"schedules": schedules, "seconds": seconds, "ticks_expected": total, "ticks_recorded": len(first),
            "missing": len(want - set(first)), "extra": len(set(first) - want),
            "started_twice": sum(1 for v in ids.values() if len(v) > 1),
            "killed_at": iso_ms(killed_ms), "start_lateness_ms": {
                "p50": _pct(late, 0.5), "p99": _pct(late, 0.99), "max": max(late, default=None),
                "over_2s": sum(1 for x in late if x > 2000)}}


async def active_lateness(b: Bench, active: int, measure_s: int) -> dict[str, Any]:
    run = f"act-{int(time.time())}"
    info = await b.redis.info("memory")
    used_before = int(info["used_memory"])
    base_ms = (time.time_ns() // 1_000_000 // 1000 + 10) * 1000
    period_ms = 300_000
    bodies = {f"{run}-{i}": {"every": "PT5M", "target": TARGET, "body": {"n": i},
                             "start_at": iso_ms(base_ms + (i * period_ms) // active)} for i in range(active)}
    created = time.time()
    await b.put_all(bodies, concurrency=64)
    create_s = time.time() - created
    used_after = int((await b.redis.info("memory"))["used_memory"])
    sid = next(iter(bodies))
    p = schedule_partition(sid, PARTITIONS)
    one_keys = sum([int(await b.redis.memory_usage(k) or 0) for k in (schedule_key(p, sid), history_key(p, sid))])
    start_ms = max(time.time_ns() // 1_000_000, base_ms) + 2000
    while time.time() * 1000 < start_ms:
        await asyncio.sleep(0.2)
    hist_before = await b.lateness_histogram()
    await asyncio.sleep(measure_s)
    hist_after = await b.lateness_histogram()
    end_ms = time.time_ns() // 1_000_000
    await asyncio.sleep(5)  # let the last ticks reach the deployment
    late = [r["at_ms"] - _ms(r["tick"]) for r in read_records(b.records)
            if r["schedule"] in bodies and start_ms <= _ms(r["tick"]) <= end_ms]
    due_members = sum([int(await b.redis.zcard(due_key(q))) for q in range(PARTITIONS)])
    ids = sum([int(await b.redis.scard(index_key(q))) for q in range(PARTITIONS)])
    await b.delete_all(list(bodies))
    return {"active": active, "created_per_s": round(active / create_s), "due_members": due_members,
            "schedules_stored": ids, "measured_s": measure_s, "ticks_measured": len(late),
            "fire_lateness_s_bucket": {"p50": _bucket_pct(hist_before, hist_after, 0.5),
                                       "p99": _bucket_pct(hist_before, hist_after, 0.99)},
            "start_lateness_ms": {"p50": _pct(late, 0.5), "p99": _pct(late, 0.99), "max": max(late, default=None)},
            "redis_used_memory_bytes": {"before": used_before, "after": used_after,
                                        "per_schedule": round((used_after - used_before) / active),
                                        "one_schedule_keys_memory_usage": one_keys}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="sg-schedules-"))
    records = base / "records.jsonl"
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=base / "data",
                       start_timeout_s=60.0, log_level="WARNING", lease_ttl_ms=args.lease_ms, appendfsync="everysec",
                       extra_env={"SHARDGATE_LEASE_TTL_MS": str(args.lease_ms),
                                  "SHARDGATE_HEARTBEAT_INTERVAL_MS": str(max(50, args.lease_ms // 5))})
    out: dict[str, Any] = {"machine_load_before": list(os.getloadavg())}
    with serve_sdk_app("tests.services.schedule_service:app", base / "hypercorn.log",
                       {RECORD_FILE_ENV: str(records)}) as url:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
                DevCluster(spec) as cluster:
            redis = Redis.from_url(cluster.redis_url)
            b = Bench(cluster, http, redis, records)
            await asyncio.sleep(3)  # ownership settles (lease 1 s, heartbeat 200 ms)
            status, answer = await b.admin("POST", "/deployments",
                                           {"uri": url, "force": True, "use_http_11": args.http11})
            if status not in (200, 201):
                raise RuntimeError(f"register: {status} {answer}")
            await asyncio.sleep(1)
            if args.schedules:
                out["exactly_once"] = await exactly_once(b, args.schedules, args.seconds)
                print(json.dumps(out["exactly_once"]), file=sys.stderr)
                await asyncio.sleep(5)
            if args.active:
                out["active"] = await active_lateness(b, args.active, args.measure_s)
            await redis.aclose()
    out["machine_load_after"] = list(os.getloadavg())
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1000, help="every-second schedules (0 skips phase 1)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--active", type=int, default=10_000, help="active schedules of phase 2 (0 skips it)")
    parser.add_argument("--measure-s", type=int, default=60)
    parser.add_argument("--lease-ms", type=int, default=2000, help="worker lease TTL (heartbeat a fifth of it)")
    parser.add_argument("--http11", action=argparse.BooleanOptionalAction, default=False,
                        help="register the deployment with use_http_11 (the worker's lean client)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
