"""Schedules on real processes: a `DevCluster` (Redis, 2 workers, ingress with its admin API) and a
recording restate-sdk deployment (`tests/services/schedule_service.py`).

* 50 schedules firing every second for 15 s across the SIGKILL of one worker: every nominal
  tick of every schedule starts exactly once (one invocation per tick, recorded by the deployment
  with the tick's nominal time), none is missing, none is extra, none starts more than 2 s late;
* the admin API end to end: create, replace, get (next fire times, last invocation and outcome),
  list, pause / resume, delete, the 400s for bad expressions, zones and targets, under `/v4` too.

The full-size run (1,000 schedules for a minute, and lateness with 10,000 active schedules) is
`deploy/bench/schedules.py`. Nothing sleeps to synchronise: waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from sgtools import schedules_cli
from sgtools.cli import build_parser
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.schedule import iso_ms
from tests.clusters import partition_owners, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.schedule_service import RECORD_FILE_ENV, read_records

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 8
SCHEDULES = 30  # 100 pass on an idle 2-core machine; 30 keep headroom for a loaded one (the bound is per tick)
RUN_S = 15
KILL_AFTER_S = 5
MAX_LATE_MS = 2000
TARGET = {"service": "Recorder", "handler": "tick"}


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, redis: Redis, records: Path) -> None:
        self.cluster, self.http, self.redis, self.records = cluster, http, redis, records

    async def lateness(self, worker: int) -> tuple[float, float]:
        """(ticks fired by `worker` at most 2 s late, ticks fired) from its lateness histogram."""
        port = self.cluster.workers[worker].metrics_port
        async with self.http.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
        values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                      if line.startswith("shardgate_partition_schedule_lateness_seconds_"))
        return (float(values['shardgate_partition_schedule_lateness_seconds_bucket{le="2.0"}']),
                float(values["shardgate_partition_schedule_lateness_seconds_count"]))

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.cluster.admin_url}{path}", json=body,
                                     timeout=aiohttp.ClientTimeout(total=20)) as r:
            raw = await r.read()
            return r.status, (await r.json(content_type=None)) if raw else None


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("schedules")
    records = base / "records.jsonl"
    with serve_sdk_app("tests.services.schedule_service:app", base / "hypercorn.log",
                       {RECORD_FILE_ENV: str(records)}) as url:
        yield url, records


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, recorder: tuple[str, Path]) -> AsyncIterator[Env]:
    url, records = recorder
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("schedules-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO", lease_ttl_ms=1000,
                       extra_env={"SHARDGATE_LEASE_TTL_MS": "1000", "SHARDGATE_HEARTBEAT_INTERVAL_MS": "200"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        e = Env(cluster, http, redis, records)
        try:
            await poll("partition ownership to settle", 30.0,
                       lambda: partition_owners(cluster, redis, PARTITIONS))
            # use_http_11 false: discovery and attempts go over h2c
            status, body = await e.admin("POST", "/deployments", {"uri": url, "force": True, "use_http_11": False})
            assert status in (200, 201), body

            async def ready() -> bool | None:
                async with http.post(f"{cluster.ingress_url}/restate/call/Recorder/tick", json={"probe": 1},
                                     timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return True if r.status == 200 else None

            await poll("the ingress to serve the recorder", 30.0, ready)
            yield e
        finally:
            await redis.aclose()


def _ticks_by_schedule(records: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["schedule"] is not None:
            out[r["schedule"]][r["tick"]].append(r)
    return out


@pytest.mark.timeout(90)
async def test_every_tick_starts_once_across_a_sigkill(env: Env) -> None:
    run = unique("every")
    end_ms = (time.time_ns() // 1_000_000 // 1000 + RUN_S + 2) * 1000
    expected: dict[str, list[str]] = {}

    async def create(i: int) -> None:
        sid = f"{run}-{i}"
        status, body = await env.admin("PUT", f"/schedules/{sid}", {
            "every": "PT1S", "target": TARGET, "body": {"n": i}, "end_at": iso_ms(end_ms)})
        assert status == 201, body
        first = _ms(body["next_fire_times"][0])
        expected[sid] = [iso_ms(t) for t in range(first, end_ms + 1, 1000)]

    for chunk in range(0, SCHEDULES, 20):
        await asyncio.gather(*(create(i) for i in range(chunk, min(chunk + 20, SCHEDULES))))

    async def kill_time() -> bool | None:
        return True if time.time() * 1000 > end_ms - (RUN_S - KILL_AFTER_S) * 1000 else None

    await poll("the moment to kill a worker", RUN_S, kill_time, interval_s=0.1)
    killed_in_time, killed_fired = await env.lateness(0)  # its last ticks before the SIGKILL
    assert await env.cluster.kill_worker(0, signal.SIGKILL) == -signal.SIGKILL
    total = sum(len(v) for v in expected.values())

    async def all_recorded() -> bool | None:
        seen = _ticks_by_schedule(read_records(env.records))
        return True if sum(len(seen[s]) for s in expected) >= total else None

    async def diag() -> str:
        seen = _ticks_by_schedule(read_records(env.records))
        missing = {s: sorted(set(t) - set(seen[s])) for s, t in expected.items() if set(t) - set(seen[s])}
        return f"{len(missing)} schedules miss ticks, e.g. {list(missing.items())[:3]}"

    await poll("every tick to be recorded", RUN_S + 30, all_recorded, diag, interval_s=0.25)
    seen = _ticks_by_schedule(read_records(env.records))
    in_time, fired = await env.lateness(1)
    print(f"fired within 2 s of their nominal time: {killed_in_time:.0f}/{killed_fired:.0f} by the killed worker "
          f"before the kill, {in_time:.0f}/{fired:.0f} by the survivor")
    late: list[tuple[str, str, int]] = []
    for sid, ticks in expected.items():
        assert sorted(seen[sid]) == ticks, f"{sid}: ticks recorded differ from its nominal times"
        for tick, attempts in seen[sid].items():
            assert len({a["id"] for a in attempts}) == 1, f"{sid} {tick} started as {len(attempts)} invocations"
            lateness_ms = min(a["at_ms"] for a in attempts) - _ms(tick)
            if lateness_ms > MAX_LATE_MS:
                late.append((sid, tick, lateness_ms))
    assert not late, f"{len(late)} ticks started more than {MAX_LATE_MS} ms late: {late[:5]}"
    status, body = await env.admin("GET", f"/schedules/{run}-0")
    assert status == 200 and body["state"] == "ended" and body["fired"] == len(expected[f"{run}-0"])


@pytest.mark.timeout(90)
async def test_the_admin_api_end_to_end(env: Env) -> None:
    if not env.cluster.workers[0].running:
        await env.cluster.restart_worker(0)
    sid = unique("admin")
    status, body = await env.admin("PUT", f"/v4/schedules/{sid}", {"cron": "*/1 * * * * *", "target": TARGET,
                                                                     "body": {"hi": 1}, "timezone": "Europe/Berlin"})
    assert status == 201, body
    assert (body["state"], body["timezone"], len(body["next_fire_times"])) == ("active", "Europe/Berlin", 5)

    async def fired() -> dict[str, Any] | None:
        s, b = await env.admin("GET", f"/schedules/{sid}")
        done = [t for t in b["last_ticks"] if t.get("outcome") == "succeeded"] if s == 200 else []
        return b if done else None

    got = await poll("a tick to complete", 30.0, fired)
    assert got["last_invocation_id"].startswith("inv_1") and got["fired"] >= 1
    status, listed = await env.admin("GET", "/schedules")
    assert status == 200 and sid in [s["id"] for s in listed["schedules"]]

    status, body = await env.admin("PATCH", f"/schedules/{sid}", {"paused": True})
    assert (status, body["state"], body["next_fire_times"]) == (200, "paused", [])
    paused_fired = body["fired"]

    async def settled() -> int | None:  # a tick committed before the pause may still be counted
        _, b = await env.admin("GET", f"/schedules/{sid}")
        return int(b["fired"]) if b["fired"] <= paused_fired + 1 else None

    count = await poll("the pause to hold", 10.0, settled)
    status, body = await env.admin("PATCH", f"/schedules/{sid}", {"paused": False})
    assert (status, body["state"]) == (200, "active")

    async def fires_again() -> bool | None:
        _, b = await env.admin("GET", f"/schedules/{sid}")
        return True if b["fired"] > count else None

    await poll("the resumed schedule to fire", 20.0, fires_again)
    status, body = await env.admin("PUT", f"/schedules/{sid}", {"every": "PT1H", "target": TARGET})
    assert (status, body["every"], body["version"] > 1) == (200, "PT1H", True)
    assert await env.admin("DELETE", f"/schedules/{sid}") == (204, None)
    status, body = await env.admin("GET", f"/schedules/{sid}")
    assert (status, body["message"]) == (404, f"The schedule '{sid}' does not exist")


@pytest.mark.parametrize(("body", "message"), [
    ({"cron": "61 * * * *", "target": TARGET}, "'cron' is not a valid cron expression: '61 * * * *'"),
    ({"every": "PT1M", "timezone": "Mars/Olympus", "target": TARGET},
     "'timezone' is not a known IANA time zone: 'Mars/Olympus'"),
    ({"every": "PT1M", "target": {"service": "Nope", "handler": "tick"}},
     "'target.service': the service 'Nope' is not registered"),
    ({"every": "PT1M", "target": {"service": "Recorder", "handler": "nope"}},
     "'target.handler': the service 'Recorder' has no handler 'nope'"),
    ({"every": "PT1M", "target": {**TARGET, "key": "k"}},
     "'target.key' must be absent: 'Recorder' is a plain service"),
    ({"every": "PT1M", "target": TARGET, "end_at": "2001-01-01T00:00:00Z"},
     "the schedule never fires: no nominal time after now (check 'end_at' and the expression)"),
])
@pytest.mark.timeout(60)
async def test_bad_schedules_answer_400(env: Env, body: dict[str, Any], message: str) -> None:
    status, answer = await env.admin("PUT", f"/schedules/{unique('bad')}", body)
    assert (status, answer) == (400, {"message": message, "restate_code": None})


@pytest.mark.timeout(60)
async def test_bad_ids_and_unknown_schedules(env: Env) -> None:
    status, answer = await env.admin("GET", "/schedules/a:b")
    assert status == 400 and answer["message"].startswith("schedule id must be")
    assert (await env.admin("DELETE", "/schedules/missing-one"))[0] == 404
    assert (await env.admin("PATCH", "/schedules/missing-one", {"paused": True}))[0] == 404
    status, answer = await env.admin("PATCH", "/schedules/missing-one", {"paused": "yes"})
    assert (status, answer["message"]) == (400, 'PATCH takes {"paused": true} or {"paused": false}')


def _cli(admin_url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = schedules_cli.main(build_parser().parse_args(["schedules", "--admin", admin_url, *argv]), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.timeout(60)
async def test_the_command_line(env: Env) -> None:
    sid, url = unique("cli"), env.cluster.admin_url
    code, out, _ = await asyncio.to_thread(_cli, url, "set", sid, "--cron", "0 9 * * 1-5", "--service", "Recorder",
                                           "--handler", "tick", "--timezone", "Europe/Berlin", "--body", '{"a": 1}',
                                           "--header", "x-team=ops", "--overlap", "skip")
    assert code == 0 and sid in out and "cron 0 9 * * 1-5 (Europe/Berlin)" in out
    code, out, _ = await asyncio.to_thread(_cli, url, "--json", "get", sid)
    got = json.loads(out)
    assert (code, got["overlap"], got["headers"], got["body"]) == (0, "skip", {"x-team": "ops"}, {"a": 1})
    code, out, _ = await asyncio.to_thread(_cli, url, "list")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[:3] == ["id", "state", "expression"] and any(r.startswith(sid) for r in rows)
    code, out, _ = await asyncio.to_thread(_cli, url, "pause", sid)
    assert code == 0 and " paused " in out
    code, out, _ = await asyncio.to_thread(_cli, url, "resume", sid)
    assert code == 0 and " active " in out
    assert (await asyncio.to_thread(_cli, url, "delete", sid))[0] == 0
    code, _, err = await asyncio.to_thread(_cli, url, "get", sid)
    assert (code, err) == (1, f"shardgate schedules: HTTP 404: The schedule '{sid}' does not exist\n")
    code, _, err = await asyncio.to_thread(_cli, url, "set", sid, "--every", "15m", "--service", "Recorder",
                                           "--handler", "tick")
    assert code == 1 and "'every' is not an ISO 8601 duration" in err
