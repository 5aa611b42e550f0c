"""Where a shardgate call's CPU goes, process by process. Not a test.

Starts a `shardgate dev` cluster (2 workers, 1 ingress, Redis; the tree at `--root`, this one by
default) and the TypeScript SDK deployment of `compare.py`, warms up, then runs one closed-loop
`shardgate bench` of calls (`--target`, `Greeter/greet` by default) and prints, per process, the
CPU per completed call and its share of a core (from /proc, read before and after), each worker's script pipeline batch
size (`shardgate_partition_script_batch*`) and Redis's per-command statistics for the run
(`INFO commandstats`, reset before it). Alternate `--root` trees (or environment settings) over
several runs to compare them; the machine's noise is large.

    .venv/bin/python deploy/bench/roles.py --connections 32 --duration 8
    GRPC_EXPERIMENTS= .venv/bin/python deploy/bench/roles.py --root /tmp/before
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

# After the path set-up, so that it also runs as a script.
from deploy.bench import compare
from deploy.bench.compare import CompareError, Processes

BATCH_METRICS = ("shardgate_partition_script_batches_total", "shardgate_partition_script_batched_calls_total")


def metric_values(text: str, names: Sequence[str]) -> dict[str, float]:
    """The unlabelled samples of `names` in a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            values[parts[0]] = float(parts[1])
    return values


def per_call_lines(cpu_s: Mapping[str, float], calls: int, elapsed_s: float) -> list[str]:
    """One line per process: ms of CPU per call and % of one core over the run."""
    lines = [f"  {name:12s} {s * 1000 / calls:6.3f} ms/call  {s / elapsed_s * 100:4.0f} % of a core"
             for name, s in cpu_s.items()]
    servers_ms = sum(s for n, s in cpu_s.items() if n != "deployment") * 1000 / calls
    return [*lines, f"  {'servers':12s} {servers_ms:6.3f} ms/call (workers, ingress, Redis)"]


def run(args: argparse.Namespace, procs: Processes, work: Path) -> None:
    from redis import Redis

    service_js, sdk_version = compare.install_ts_deployment(Path(args.cache_dir))
    server = compare.start_shardgate(procs, work, Path(args.root).resolve())
    h2c = args.transport == "h2c"
    deployment = compare.start_ts_deployment(procs, service_js, sdk_version, work, h2c)
    compare.register(server, deployment, use_http_11=not h2c)
    cluster = json.loads((work / "shardgate-data" / "cluster.json").read_text())
    pids = {str(p["name"]): int(p["pid"]) for p in cluster["processes"]}
    pids["deployment"] = deployment.pid
    compare.run_bench(procs, server, "call", args, work / "warmup.log", compare.WARMUP_S)
    compare.wait_quiet(server.pids)
    redis = Redis.from_url(str(cluster["redis_url"]), socket_timeout=10)
    redis.config_resetstat()
    workers = [p for p in cluster["processes"] if p["role"] == "worker"]
    batches_before = {str(w["name"]): _batches(w) for w in workers}
    before = {name: compare.cpu_seconds([pid]) for name, pid in pids.items()}
    profilers = start_profiles(procs, pids, work, args) if args.profile else {}
    started = time.monotonic()
    summary = compare.run_bench(procs, server, "call", args, work / "bench.log", args.duration)
    elapsed_s = time.monotonic() - started
    cpu_s = {name: compare.cpu_seconds([pid]) - before[name] for name, pid in pids.items()}
    calls = int(summary.get("ok", 0))
    if calls <= 0:
        raise CompareError(f"the bench completed no call: {summary}")
    lat = summary.get("latency_ms", {})
    print(f"{args.connections} connections: {calls} calls, {calls / float(summary['elapsed_s']):.0f}/s, "
          f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms")
    for line in per_call_lines(cpu_s, calls, elapsed_s):
        print(line)
    for w in workers:
        b0, c0 = batches_before[str(w["name"])]
        b1, c1 = _batches(w)
        if b1 > b0:
            print(f"  {w['name']}: {b1 - b0:.0f} script batches, {c1 - c0:.0f} calls, mean {(c1 - c0) / (b1 - b0):.2f}")
    stats = redis.info("commandstats")
    for name, stat in sorted(stats.items(), key=lambda kv: -float(kv[1]["usec"])):
        if int(stat["calls"]) >= calls // 10:
            print(f"  redis {name.removeprefix('cmdstat_'):14s} {int(stat['calls']) / calls:5.2f} per call, "
                  f"{float(stat['usec_per_call']):7.2f} µs each")
    redis.close()
    for name, (child, out) in profilers.items():
        try:
            child.proc.wait(PROFILE_GRACE_S)
        except subprocess.TimeoutExpired:
            raise CompareError(f"py-spy on {name} did not finish; see {child.log_path}") from None
        stacks = read_collapsed(out.read_text()) if out.exists() else {}
        print(f"  profile {name} ({sum(stacks.values())} samples):")
        for line in profile_lines(stacks, args.profile_top):
            print(line)


PROFILE_GRACE_S = 30.0


def start_profiles(procs: Processes, pids: Mapping[str, int], work: Path,
                   args: argparse.Namespace) -> dict[str, tuple[compare.Started, Path]]:
    """`py-spy record` (raw collapsed stacks, without stopping the target) of every Python server
    process over the measured run, started just before it."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise CompareError(f"--profile needs py-spy next to {sys.executable}")
    started: dict[str, tuple[compare.Started, Path]] = {}
    for name, pid in pids.items():
        if name in ("redis", "deployment"):
            continue
        out = work / f"profile-{name}.txt"
        argv = [str(spy), "record", "-p", str(pid), "-d", str(max(int(args.duration) - 1, 1)), "-r", "200",
                "-f", "raw", "--nonblocking", "-o", str(out)]
        started[name] = (procs.start(f"py-spy {name}", argv, work / f"py-spy-{name}.log"), out)
    return started


def read_collapsed(text: str) -> dict[tuple[str, ...], int]:
    """py-spy's raw output (`frame;frame;... count` per line, outermost first) as stack -> samples."""
    stacks: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            key = tuple(frames.split(";"))
            stacks[key] = stacks.get(key, 0) + int(count)
    return stacks


def profile_lines(stacks: Mapping[tuple[str, ...], int], top: int) -> list[str]:
    """The `top` frames by self share (innermost frame) and by inclusive share (anywhere on the
    stack, counted once per sample)."""
    total = sum(stacks.values())
    if total == 0:
        return ["    no samples"]
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    for frames, n in stacks.items():
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in dict.fromkeys(frames):  # once per sample, outermost first (ties keep that order)
            anywhere[frame] = anywhere.get(frame, 0) + n
    lines = []
    for title, counts in (("self", own), ("inclusive", anywhere)):
        for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {title:9s} {n * 100 / total:5.1f} %  {frame}")
    return lines


def _batches(worker: Mapping[str, Any]) -> tuple[float, float]:
    url = f"http://127.0.0.1:{worker['ports']['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        values = metric_values(resp.read().decode(), BATCH_METRICS)
    return values.get(BATCH_METRICS[0], 0.0), values.get(BATCH_METRICS[1], 0.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=32, help="closed-loop connections (default 32)")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds (default 8)")
    ap.add_argument("--transport", choices=("http1", "h2c"), default="http1",
                    help="HTTP/1.1 (use_http_11, default) or h2c to the TypeScript deployment (as compare.py)")
    ap.add_argument("--target", default=compare.TARGET,
                    help=f"the handler called (default {compare.TARGET}; also Greeter/with_run, Greeter/nap, "
                         "Greeter/relay, as compare.py)")
    ap.add_argument("--root", type=Path, default=compare.REPO_ROOT, help="the shardgate tree to run (default: this)")
    ap.add_argument("--profile", action="store_true",
                    help="also run py-spy on the workers and the ingress over the measured run and print their "
                         "top frames (py-spy then samples beside them on the same cores, which moves the CPU figures)")
    ap.add_argument("--profile-top", type=int, default=15, help="frames listed per kind with --profile")
    ap.add_argument("--cache-dir", type=Path, default=compare.CACHE_DIR, help="install dir (as compare.py)")
    args = ap.parse_args(argv)
    if args.connections < 1 or args.duration <= 0:
        ap.error("--connections must be >= 1 and --duration > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 1 on a CompareError, 130 on Ctrl-C / SIGTERM."""
    args = parse_args(argv)
    return compare.run_tool("roles", Path(args.cache_dir), False, lambda procs, work: run(args, procs, work))[0]


if __name__ == "__main__":
    sys.exit(main())
