"""Benchmark matrix for a running cluster: `shardgate bench` per scenario plus Redis commands
per request and the RSS of every process. Not a test; prints a table (and --json).

    .venv/bin/python deploy/bench/matrix.py --url http://127.0.0.1:8080 --data-dir .shardgate-data
    .venv/bin/python deploy/bench/matrix.py --url http://127.0.0.1:18080 --no-redis   # another server
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

SCENARIOS = {
    "greet-call": ["--target", "Greeter/greet"],
    "greet-send": ["--target", "Greeter/greet", "--mode", "send"],
    "add-1key-call": ["--target", "Counter/add", "--keys", "1", "--body", "1"],
    "add-1key-send": ["--target", "Counter/add", "--keys", "1", "--body", "1", "--mode", "send"],
    "add-1000keys-call": ["--target", "Counter/add", "--keys", "1000", "--body", "1"],
    "add-1000keys-send": ["--target", "Counter/add", "--keys", "1000", "--body", "1", "--mode", "send"],
    "run-call": ["--target", "Greeter/with_run"],
    "sleep100ms-call": ["--target", "Durable/sleep_ms", "--body", "100"],
    "a-to-b-call": ["--target", "Middle/step", "--body", "1"],
}


def redis_commands(client: redis.Redis) -> int:
    """Lua transitions run (EVALSHA calls): the Redis round trips of the request paths. (Commands
    run inside a script are counted by commandstats too, so the total would overstate them.)"""
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def pending_shardgate(client: redis.Redis) -> int:
    """Invocations not yet completed: running/woken (active sets), queued (inboxes), timers."""
    n = 0
    for pattern in ("sg:{p*}:active",):
        for key in client.scan_iter(pattern, count=1000):
            n += client.scard(key)
    for key in client.scan_iter("sg:{p*}:inbox:*", count=1000):
        n += client.llen(key)
    for key in client.scan_iter("sg:{p*}:timers", count=1000):
        n += client.zcard(key)
    return n


def pending_restate(admin: str) -> int:
    query = {"query": "SELECT count(*) AS n FROM sys_invocation WHERE status != 'completed'"}
    req = urllib.request.Request(f"{admin}/query", data=json.dumps(query).encode(),
                                 headers={"content-type": "application/json", "accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(json.loads(resp.read())["rows"][0]["n"])


def drain(pending, limit_s: float = 180.0) -> float:
    """Seconds until nothing is pending (bounded)."""
    started = time.monotonic()
    while pending() > 0 and time.monotonic() - started < limit_s:
        time.sleep(0.2)
    return time.monotonic() - started


def rss_mb(data_dir: Path) -> dict[str, float]:
    cluster = json.loads((data_dir / "cluster.json").read_text())
    out = {}
    for proc in cluster["processes"]:
        try:
            status = Path(f"/proc/{proc['pid']}/status").read_text()
        except (OSError, TypeError):
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        out[proc["name"]] = round(kb / 1024, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--data-dir", type=Path, default=Path(".shardgate-data"))
    ap.add_argument("--no-redis", action="store_true", help="the target is not shardgate (no Redis stats)")
    ap.add_argument("--admin", default=None, help="with --no-redis: Restate admin URL, to wait for the backlog")
    ap.add_argument("--connections", default="32")
    ap.add_argument("--duration", default="15")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    client = None
    if not args.no_redis:
        cluster = json.loads((args.data_dir / "cluster.json").read_text())
        client = redis.Redis.from_url(cluster["redis_url"])
    if client is not None:
        pending = lambda: pending_shardgate(client)
    elif args.admin:
        pending = lambda: pending_restate(args.admin)
    else:
        pending = lambda: 0
    results = {}
    for name, extra in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        before = redis_commands(client) if client else 0
        out = subprocess.run(
            [sys.executable, "-m", "sgtools.cli", "bench", "--url", args.url, "--connections",
             args.connections, "--duration", args.duration, "--key-prefix", f"bench-{name}-", "--json", *extra],
            capture_output=True, text=True, check=False)
        summary = json.loads(out.stdout)
        if client:
            summary["redis_scripts_per_request"] = round(
                (redis_commands(client) - before) / max(1, summary.get("ok", summary.get("requests", 1))), 2)
        # Everything accepted must have run before the next scenario; for sends this gives the
        # execution rate: accepted / (time from the first 202 to the last completion).
        drained_s = drain(pending)
        if "--mode" in extra:
            summary["executed_per_s"] = round(summary.get("ok", 0) / (summary["elapsed_s"] + drained_s), 1)
        summary["drain_s"] = round(drained_s, 1)
        results[name] = summary
        lat = summary.get("latency_ms", {})
        print(f"{name:20s} {summary.get('rps', 0):8.1f} req/s  p50 {lat.get('p50', 0):7.1f}  "
              f"p99 {lat.get('p99', 0):7.1f} ms  errors {summary.get('errors', {})}  "
              f"scripts/req {summary.get('redis_scripts_per_request', '-')}  drain {summary['drain_s']}s  "
              f"executed/s {summary.get('executed_per_s', '-')}", flush=True)
    if not args.no_redis:
        results["rss_mb"] = rss_mb(args.data_dir)
        print("rss MB", results["rss_mb"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
