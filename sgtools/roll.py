"""Rolling restart of a running `shardgate dev` cluster under load, counting failed requests.

`python -m sgtools.roll --cluster-json .shardgate-data/cluster.json` reads the cluster's processes
from `cluster.json`, keeps `--concurrency` closed-loop callers sending `--path` through the cluster's
ingress URL (the load balancer, with `--load-balancer`), and restarts every ingress node and then
every worker, one at a time: SIGTERM (the process drains: an ingress node turns unready and
finishes its open requests, a worker hands each partition back as its running attempts finish),
the supervisor starts it again, and the next one goes only once this one is healthy again (and,
for an ingress node, answering through the load balancer). It prints what was sent, what failed
(by status or error) and the latency percentiles during the roll; `--json` prints the report as JSON.

This is what Kubernetes does to a Deployment and a StatefulSet on `helm upgrade`; run it against
`shardgate dev --ingress-nodes 2 --load-balancer --workers 2`. Loopback clusters only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sgtools.bench import is_loopback_url, latency_summary_ms

ROLES = ("ingress", "worker")
"""What a roll restarts, in this order (never Redis or the load balancer)."""


class RollError(RuntimeError):
    """The roll could not go on (a process did not come back in time, a bad cluster.json)."""


@dataclass(frozen=True)
class RollConfig:
    cluster_json: Path
    path: str = "/restate/call/Greeter/greet"
    body: bytes = b'"roll"'
    concurrency: int = 8
    settle_s: float = 1.0
    """Load keeps flowing this long after a restarted process is back, before the next goes."""
    restart_deadline_s: float = 60.0
    request_timeout_s: float = 30.0


@dataclass
class LoadStats:
    """What the callers saw while the roll ran."""

    sent: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "failed": sum(self.failures.values()),
                "failures": dict(self.failures), "latency_ms": latency_summary_ms(self.latencies_s)}


def read_cluster(path: Path) -> dict[str, Any]:
    """The parsed cluster.json. Raises RollError when it is missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RollError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("processes"), list):
        raise RollError(f"{path} is not a shardgate dev cluster.json")
    return data


def process(path: Path, name: str) -> dict[str, Any]:
    for entry in read_cluster(path)["processes"]:
        if entry.get("name") == name:
            return dict(entry)
    raise RollError(f"no process {name!r} in {path}")


def health_urls(entry: dict[str, Any]) -> list[str]:
    """What must answer 200 before the process counts as back."""
    ports = entry["ports"]
    if entry["role"] == "worker":
        return [f"http://127.0.0.1:{ports['metrics']}/ready"]
    return [f"http://127.0.0.1:{ports['ingress']}/restate/health", f"http://127.0.0.1:{ports['admin']}/health"]


async def _all_ok(http: aiohttp.ClientSession, urls: Sequence[str]) -> bool:
    try:
        for url in urls:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status != 200:
                    return False
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    return True


async def _node_requests(http: aiohttp.ClientSession, entry: dict[str, Any]) -> float:
    """Requests an ingress node has served (its own /metrics), or -1 when it does not answer."""
    try:
        async with http.get(f"http://127.0.0.1:{entry['ports']['admin']}/metrics",
                            timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shardgate_ingress_requests_total{"))


async def _until(what: str, deadline_s: float, probe: Any) -> None:
    end = time.monotonic() + deadline_s
    while not await probe():
        if time.monotonic() > end:
            raise RollError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def restart(http: aiohttp.ClientSession, cfg: RollConfig, name: str, behind_lb: bool) -> dict[str, Any]:
    """SIGTERM process `name`, wait for the supervisor's new one to be healthy (and to be served
    traffic by the load balancer, for an ingress node behind one); what it took."""
    old = process(cfg.cluster_json, name)
    pid = old.get("pid")
    if not isinstance(pid, int):
        raise RollError(f"{name} is not running")
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)

    async def replaced() -> bool:
        now = process(cfg.cluster_json, name)
        return now.get("pid") not in (None, pid) and await _all_ok(http, health_urls(now))

    await _until(f"{name} to come back", cfg.restart_deadline_s, replaced)
    back_s = time.monotonic() - started
    if old["role"] == "ingress" and behind_lb:
        entry = process(cfg.cluster_json, name)
        first = await _node_requests(http, entry)

        async def served() -> bool:
            return await _node_requests(http, entry) > first

        await _until(f"the load balancer to send {name} requests again", cfg.restart_deadline_s, served)
    return {"name": name, "role": old["role"], "back_after_s": round(back_s, 3),
            "serving_after_s": round(time.monotonic() - started, 3)}


async def _caller(http: aiohttp.ClientSession, url: str, cfg: RollConfig, stats: LoadStats,
                  stop: asyncio.Event) -> None:
    headers = {"content-type": "application/json"}
    while not stop.is_set():
        started = time.monotonic()
        stats.sent += 1
        try:
            async with http.post(url, data=cfg.body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s)) as r:
                body = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stats.failures[type(exc).__name__] += 1
            continue
        if status == 200:
            stats.ok += 1
            stats.latencies_s.append(time.monotonic() - started)
        else:
            stats.failures[f"HTTP {status} {body[:120].decode(errors='replace')}"] += 1


async def roll(cfg: RollConfig) -> dict[str, Any]:
    """Restart every ingress node, then every worker, under load; the report (see the module doc).
    Raises RollError when a process does not come back."""
    cluster = read_cluster(cfg.cluster_json)
    url = f"{cluster['ingress_url']}{cfg.path}"
    if not is_loopback_url(url):
        raise RollError(f"{url} is not a loopback address")
    order = [p["name"] for role in ROLES for p in cluster["processes"] if p["role"] == role]
    stats, stop = LoadStats(), asyncio.Event()
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        callers = [asyncio.create_task(_caller(http, url, cfg, stats, stop)) for _ in range(cfg.concurrency)]
        restarts = []
        try:
            await _until("the first answers", cfg.restart_deadline_s, _answered(stats, cfg.concurrency))
            for name in order:
                restarts.append(await restart(http, cfg, name, bool(cluster.get("load_balancer"))))
                await asyncio.sleep(cfg.settle_s)  # the scenario: load on the healed cluster
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), cfg.request_timeout_s + 5)
    return {"restarts": restarts, "duration_s": round(time.monotonic() - started, 3), **stats.report()}


def _answered(stats: LoadStats, n: int) -> Any:
    async def probe() -> bool:
        return stats.ok >= n

    return probe


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'process':<12} {'back after':>11} {'serving after':>14}"]
    lines += [f"{r['name']:<12} {r['back_after_s']:>10.2f}s {r['serving_after_s']:>13.2f}s" for r in report["restarts"]]
    lat = report["latency_ms"]
    lines.append(f"requests sent {report['sent']}, ok {report['ok']}, failed {report['failed']} "
                 f"{report['failures'] or ''} in {report['duration_s']:.1f}s")
    lines.append(f"latency ms: p50 {lat.get('p50')} p99 {lat.get('p99')} max {lat.get('max')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgtools.roll", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster-json", type=Path, default=Path(".shardgate-data/cluster.json"))
    parser.add_argument("--path", default=RollConfig.path, help="what the callers POST (default %(default)s)")
    parser.add_argument("--body", default='"roll"', help="JSON body of every request (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=RollConfig.concurrency)
    parser.add_argument("--settle", type=float, default=RollConfig.settle_s,
                        help="seconds of load between two restarts (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    cfg = RollConfig(args.cluster_json, args.path, args.body.encode(), args.concurrency, args.settle)
    try:
        report = asyncio.run(roll(cfg))
    except RollError as exc:
        print(f"roll: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
