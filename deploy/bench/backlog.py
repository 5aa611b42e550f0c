"""Backlog benchmark: memory and Redis keys of a cluster while a slow deployment has a huge queue.

Starts a `shardgate dev`-style cluster (`sgtools.dev.DevCluster`) and the slow deployment of
`backlog_service.py` (every attempt holds `--hold-s` seconds), sends `--sends` one-way sends as
fast as `--connections` concurrent connections allow, and samples the RSS of every process (from
/proc) and the Redis key count every `--sample-s` until the backlog drained and the results'
retention (`--retention-s`) let the key count fall back to its baseline. Optionally probes with a
few calls while the workers are saturated (what they answer: 200 or 429). Not a test; prints a
table (and `--json`).

    .venv/bin/python deploy/bench/backlog.py --sends 100000
    .venv/bin/python deploy/bench/backlog.py --sends 100000 --worker-env SHARDGATE_MAX_CONCURRENT_INVOCATIONS=1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from sgtools.dev.cluster import DevCluster
from sgtools.dev.spec import ClusterSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return round(kb / 1024, 1)


def children(pid: int) -> list[int]:
    """Child pids of `pid` (hypercorn serves from a worker process)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    out: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


@dataclass
class Samples:
    """RSS (MB) per process and the Redis key count over time; peaks kept separately."""

    series: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    peak_keys: int = 0

    def add(self, t_s: float, rss: dict[str, float], keys: int, pending: int) -> None:
        self.series.append({"t_s": round(t_s, 1), "keys": keys, "pending": pending, **rss})
        for name, mb in rss.items():
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), mb)
        self.peak_keys = max(self.peak_keys, keys)


async def pending(redis: Redis) -> int:
    """Invocations not completed: active sets (invoked), inboxes, timers."""
    n = 0
    async for key in redis.scan_iter("sg:{p*}:active", count=1000):
        n += await redis.scard(key)
    async for key in redis.scan_iter("sg:{p*}:inbox:*", count=1000):
        n += await redis.llen(key)
    async for key in redis.scan_iter("sg:{p*}:timers", count=1000):
        n += await redis.zcard(key)
    return n


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: DevCluster, deployment_pid: int) -> None:
        self.args = args
        self.cluster = cluster
        self.deployment_pid = deployment_pid
        self.samples = Samples()
        self.started = time.monotonic()
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.probes: Counter[int] = Counter()
        self.probes_done_s = 0.0
        self.redis = Redis.from_url(cluster.redis_url)

    def rss(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for child in self.cluster.children:
            mb = rss_mb(child.pid)
            if mb is not None:
                out[child.name] = mb
        dep = [rss_mb(pid) for pid in (self.deployment_pid, *children(self.deployment_pid))]
        out["deployment"] = round(sum(mb for mb in dep if mb is not None), 1)
        return out

    async def admission(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Each worker's held / waiting invocations, from its /metrics."""
        out: dict[str, float] = {}
        for w in self.cluster.workers:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(f"http://127.0.0.1:{w.ports['metrics']}/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        for gauge in ("held", "waiting"):
                            if line.startswith(f"shardgate_partition_invocations_{gauge} "):
                                out[f"{w.name} {gauge}"] = float(line.split()[1])
        return out

    async def sample_loop(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                keys = int(await self.redis.dbsize())
                row = {**self.rss(), **await self.admission(http)}
                self.samples.add(time.monotonic() - self.started, row, keys, await pending(self.redis))
                await asyncio.sleep(self.args.sample_s)

    async def send_all(self) -> float:
        """Send `--sends` sends over `--connections` connections; seconds it took."""
        url = f"{self.cluster.ingress_url}/Slow/hold/send"
        left = iter(range(self.args.sends))
        conn = aiohttp.TCPConnector(limit=self.args.connections)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
            async def loop() -> None:
                for i in left:
                    try:
                        async with http.post(url, json=i) as resp:
                            await resp.read()
                            self.statuses[resp.status] += 1
                    except (aiohttp.ClientError, TimeoutError) as e:
                        self.errors[type(e).__name__] += 1

            await asyncio.gather(*(loop() for _ in range(self.args.connections)))
        return time.monotonic() - started

    async def probe_calls(self) -> None:
        """A few calls while the backlog is there: their statuses (200 after the backlog, or 429)."""
        url = f"{self.cluster.ingress_url}/Slow/hold"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.args.drain_timeout_s)) as http:
            async def one(i: int) -> None:
                try:
                    async with http.post(url, json=-i) as resp:
                        await resp.read()
                        self.probes[resp.status] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.errors[f"probe {type(e).__name__}"] += 1

            await asyncio.gather(*(one(i) for i in range(self.args.probe_calls)))
        self.probes_done_s = round(time.monotonic() - self.started, 1)

    async def wait_for(self, what: str, limit_s: float, done: Any) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            if await done():
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(0.5)
        print(f"  {what}: not within {limit_s} s", file=sys.stderr)
        return None


async def register(admin_url: str, url: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{admin_url}/deployments",
                                                          json={"uri": url, "force": True}) as resp:
        if resp.status >= 300:
            raise SystemExit(f"registering the deployment failed: {resp.status} {await resp.text()}")


@contextlib.contextmanager
def deployment(hold_s: float, retention_s: float, log_path: Path) -> Any:
    port = free_port()
    env = {**os.environ, "BACKLOG_HOLD_S": str(hold_s), "BACKLOG_RETENTION_S": str(retention_s)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hypercorn", "backlog_service:app", "--bind",
                                 f"127.0.0.1:{port}", "--backlog", "4096"], cwd=HERE, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the slow deployment did not start, see {log_path}") from None
                    time.sleep(0.1)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="sg-backlog-"))
    try:
        return await _run_in(args, data_dir)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _run_in(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    spec = ClusterSpec(workers=args.workers, ingress_port=0, admin_port=0, data_dir=data_dir,
                       appendfsync="everysec", log_level="WARNING", extra_env=extra_env)
    with deployment(args.hold_s, args.retention_s, data_dir / "deployment.log") as (url, dep_pid):
        async with DevCluster(spec) as cluster:
            await register(cluster.admin_url, url)
            bench = Bench(args, cluster, dep_pid)
            baseline_keys = int(await bench.redis.dbsize())
            idle_rss = bench.rss()
            sampler = asyncio.get_running_loop().create_task(bench.sample_loop())
            try:
                try:
                    send_s = await asyncio.wait_for(bench.send_all(), args.send_timeout_s)
                except TimeoutError:
                    send_s = args.send_timeout_s
                    bench.errors["sends not finished (--send-timeout-s)"] += 1
                rss_after_sends = bench.rss()
                probes = asyncio.get_running_loop().create_task(bench.probe_calls())
                drained_s = await bench.wait_for("drain", args.drain_timeout_s,
                                                 lambda: _zero(pending(bench.redis)))
                await probes
                rss_drained = bench.rss()
                retained_s = await bench.wait_for("key count back to baseline", args.retention_s + 120,
                                                  lambda: _at_most(bench.redis.dbsize(), baseline_keys))
                final_keys = int(await bench.redis.dbsize())
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            await bench.redis.aclose()
    return {
        "sends": args.sends, "connections": args.connections, "workers": args.workers, "hold_s": args.hold_s,
        "retention_s": args.retention_s, "worker_env": extra_env,
        "send_s": round(send_s, 1), "sends_per_s": round(sum(bench.statuses.values()) / send_s), "statuses": dict(bench.statuses),
        "errors": dict(bench.errors), "probe_statuses": dict(bench.probes),
        "probes_done_at_s": bench.probes_done_s,
        "drain_s_after_sends": drained_s, "keys_back_to_baseline_s_after_drain": retained_s,
        "rss_mb": {"idle": idle_rss, "after_sends": rss_after_sends, "peak": bench.samples.peak_rss_mb,
                   "drained": rss_drained},
        "keys": {"baseline": baseline_keys, "peak": bench.samples.peak_keys, "final": final_keys},
        "series": bench.samples.series,
    }


async def _zero(n: Any) -> bool:
    return int(await n) == 0


async def _at_most(n: Any, limit: int) -> bool:
    return int(await n) <= limit


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['sends']} sends over {r['connections']} connections in {r['send_s']} s ({r['sends_per_s']}/s),"
          f" statuses {r['statuses']}, errors {r['errors']}, probe calls {r['probe_statuses']}")
    print(f"drained {r['drain_s_after_sends']} s after the sends; keys back to baseline"
          f" {r['keys_back_to_baseline_s_after_drain']} s after that")
    rss = r["rss_mb"]
    names = sorted(n for n in rss["peak"] if " " not in n)
    print(f"{'RSS MB':<14}" + "".join(f"{n:>12}" for n in names))
    for phase in ("idle", "after_sends", "peak", "drained"):
        print(f"{phase:<14}" + "".join(f"{rss[phase].get(n, 0):>12}" for n in names))
    k = r["keys"]
    print(f"Redis keys: baseline {k['baseline']}, peak {k['peak']}, final {k['final']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hold-s", type=float, default=5.0, help="how long every attempt holds")
    ap.add_argument("--retention-s", type=float, default=5.0, help="the results' idempotency retention")
    ap.add_argument("--probe-calls", type=int, default=20, help="calls sent once the sends are in")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--send-timeout-s", type=float, default=600.0)
    ap.add_argument("--drain-timeout-s", type=float, default=900.0)
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of workers and ingress (repeatable)")
    ap.add_argument("--keep-data", action="store_true", help="keep the cluster's data dir (logs) in /tmp")
    ap.add_argument("--json", type=Path, help="write the full report (with the time series) here")
    args = ap.parse_args()
    report = asyncio.run(run(args))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
