"""Memory per in-flight invocation, shardgate next to the real Restate server. Not a test.

Starts what `compare.py` starts (Restate 1.7.12, a `shardgate dev` cluster of 2 workers, 1 ingress
and Redis, and the TypeScript SDK deployment of `deploy/bench/ts/service.js`, registered with
both), then for each server in turn, the other one idle:

  1. waits until the server is idle and reads its memory: the RSS of every server process (for
     shardgate also Redis's `used_memory`), and the bytes under its data dir;
  2. sends `--invocations` one-way sends of `Greeter/park` (a handler that sleeps an hour, so each
     invocation suspends on a durable timer and stays in flight) over `--connections` connections;
  3. waits until the server is idle again, checks with the admin `/query` endpoint (the same SQL
     for both) that every one of them is in flight and none completed, and reads the memory again.

It prints the differences scaled to 10,000 in-flight invocations, side by side.

    .venv/bin/python deploy/bench/inflight.py --invocations 10000
    make inflight ARGS="--invocations 20000 --json inflight.json"

Every process it starts is stopped on success, on error and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

# After the path set-up, so that it also runs as a script.
from deploy.bench import compare
from deploy.bench.compare import CompareError, Processes, Server

PARK_TARGET = "Greeter/park"
PER = 10_000
"""The figures are scaled to this many in-flight invocations."""
SEND_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 300.0
IN_FLIGHT_SQL = "SELECT status, count(*) AS n FROM sys_invocation GROUP BY status"


@dataclass
class Memory:
    """One reading of a server's memory."""

    rss_bytes: int
    redis_used_bytes: int | None
    data_dir_bytes: int


@dataclass
class InflightResult:
    """One server: its readings before and after, and what the sends and the query said."""

    server: str
    invocations: int
    accepted: int
    send_s: float
    settle_s: float
    statuses: dict[str, int]
    before: Memory
    after: Memory

    def per(self, before: int | None, after: int | None) -> float | None:
        """`after - before` in MB per PER in-flight invocations (None without both readings)."""
        if before is None or after is None or self.accepted <= 0:
            return None
        return round((after - before) * PER / self.accepted / 1e6, 1)


# ---------------------------------------------------------------------------------- pure parts


def dir_bytes(root: Path) -> int:
    """Bytes of every regular file under `root` (0 when it does not exist)."""
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue  # removed while walking (compaction, a rotated log)
    return total


def statuses_from_query(answer: Any) -> dict[str, int]:
    """`{status: count}` from a `/query` JSON answer of IN_FLIGHT_SQL. Raises CompareError."""
    try:
        return {str(row["status"]): int(row["n"]) for row in answer["rows"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise CompareError(f"unexpected /query answer: {str(answer)[:300]}") from exc


def in_flight(statuses: Mapping[str, int]) -> int:
    """How many invocations are accepted and not completed."""
    return sum(n for status, n in statuses.items() if status != "completed")


def format_table(results: Sequence[InflightResult]) -> str:
    """The side-by-side table (markdown), one column per server."""
    by = {r.server: r for r in results}
    names = [n for n in compare.ALL_SERVERS if n in by]

    def cell(name: str, pick: str) -> str:
        r = by[name]
        value = r.per(getattr(r.before, pick), getattr(r.after, pick))
        return "-" if value is None else f"{value:,.1f} MB"

    title = [compare.SERVER_TITLES.get(n, n) for n in names]
    lines = [f"Memory per {PER:,} in-flight invocations (suspended on a durable timer: {PARK_TARGET})", "",
             "| | " + " | ".join(title) + " |", "|---|" + "---|" * len(names)]
    lines.append("| in flight (accepted, not completed) | "
                 + " | ".join(f"{in_flight(by[n].statuses):,} of {by[n].invocations:,}" for n in names) + " |")
    lines.append("| RSS of the server processes, growth | " + " | ".join(cell(n, "rss_bytes") for n in names) + " |")
    lines.append("| Redis `used_memory`, growth | " + " | ".join(cell(n, "redis_used_bytes") for n in names) + " |")
    lines.append("| bytes on disk under the data dir, growth | "
                 + " | ".join(cell(n, "data_dir_bytes") for n in names) + " |")
    lines.append("| RSS before → after | " + " | ".join(
        f"{by[n].before.rss_bytes / 1e6:,.0f} → {by[n].after.rss_bytes / 1e6:,.0f} MB" for n in names) + " |")
    lines.append("| sends accepted per s | " + " | ".join(
        f"{by[n].accepted / by[n].send_s:,.0f}" if by[n].send_s > 0 else "-" for n in names) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ measuring


def redis_used_bytes(redis_url: str) -> int:
    """`used_memory` from INFO memory of the shardgate cluster's Redis."""
    from redis import Redis  # the project's venv has it; only shardgate needs it

    client = Redis.from_url(redis_url, socket_timeout=10)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def read_memory(server: Server, data_dir: Path, redis_url: str | None) -> Memory:
    return Memory(compare.rss_bytes(server.pids), redis_used_bytes(redis_url) if redis_url else None,
                  dir_bytes(data_dir))


async def send_all(ingress_url: str, count: int, connections: int) -> tuple[int, float]:
    """`count` sends of PARK_TARGET over `connections` connections; (accepted with 202, seconds)."""
    import aiohttp

    url = f"{ingress_url}/restate/send/{PARK_TARGET}"
    todo = iter(range(count))
    accepted = 0
    refused: dict[int, int] = {}

    async def one_connection(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        for n in todo:
            async with session.post(url, json=f"park-{n}") as resp:
                await resp.read()
                if resp.status == 202:
                    accepted += 1
                else:
                    refused[resp.status] = refused.get(resp.status, 0) + 1

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=SEND_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(one_connection(session) for _ in range(connections)))
    if refused:
        print(f"inflight: sends not accepted: {refused}", file=sys.stderr)
    return accepted, time.monotonic() - started


def query_statuses(server: Server) -> dict[str, int]:
    status, answer = compare.http_json(f"{server.admin_url}/query", {"query": IN_FLIGHT_SQL}, timeout_s=60.0)
    if status != 200:
        raise CompareError(f"{server.name}: /query answered {status}: {str(answer)[:300]}")
    return statuses_from_query(answer)


def settle(server: Server, expected: int) -> tuple[dict[str, int], float]:
    """Wait until the server is idle and `expected` invocations are in flight; (statuses, seconds)."""
    started = time.monotonic()
    statuses: dict[str, int] = {}
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        compare.wait_quiet(server.pids)
        statuses = query_statuses(server)
        if in_flight(statuses) >= expected and set(statuses) <= {"suspended", "completed"}:
            return statuses, time.monotonic() - started
    raise CompareError(f"{server.name}: after {SETTLE_TIMEOUT_S:.0f} s the statuses are {statuses}, "
                       f"not {expected} suspended")


def measure(server: Server, data_dir: Path, redis_url: str | None, args: argparse.Namespace) -> InflightResult:
    compare.wait_quiet(server.pids)
    before_statuses = query_statuses(server)
    before = read_memory(server, data_dir, redis_url)
    accepted, send_s = asyncio.run(send_all(server.ingress_url, args.invocations, args.connections))
    statuses, settle_s = settle(server, in_flight(before_statuses) + accepted)
    after = read_memory(server, data_dir, redis_url)
    result = InflightResult(server.name, args.invocations, accepted, round(send_s, 2), round(settle_s, 2),
                            statuses, before, after)
    print(f"inflight: {server.name}: {accepted} accepted in {send_s:.1f} s, settled in {settle_s:.1f} s, "
          f"statuses {statuses}, rss {before.rss_bytes / 1e6:.0f} -> {after.rss_bytes / 1e6:.0f} MB",
          file=sys.stderr, flush=True)
    return result


def run(args: argparse.Namespace, procs: Processes, work: Path) -> list[InflightResult]:
    cache = Path(args.cache_dir)
    binary = compare.install_restate(cache)
    service_js, sdk_version = compare.install_ts_deployment(cache)
    shardgate = compare.start_shardgate(procs, work)
    restate = compare.start_restate(procs, binary, work)
    deployment = compare.start_ts_deployment(procs, service_js, sdk_version, work)
    cluster = json.loads((work / "shardgate-data" / "cluster.json").read_text())
    targets = [(shardgate, work / "shardgate-data", str(cluster["redis_url"])), (restate, work / "restate-data", None)]
    for server, _, _ in targets:
        compare.register(server, deployment)
    return [measure(server, data_dir, redis_url, args) for server, data_dir, redis_url in targets]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--invocations", type=int, default=PER, help=f"sends to keep in flight (default {PER})")
    ap.add_argument("--connections", type=int, default=32, help="concurrent send connections (default 32)")
    ap.add_argument("--json", type=Path, default=None, help="also write the readings here")
    ap.add_argument("--cache-dir", type=Path, default=compare.CACHE_DIR, help="install dir (as compare.py)")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (data dirs and logs) afterwards")
    args = ap.parse_args(argv)
    if args.invocations < 1 or args.connections < 1:
        ap.error("--invocations and --connections must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 1 on a CompareError, 130 on Ctrl-C / SIGTERM."""
    args = parse_args(argv)
    code, results = compare.run_tool("inflight", Path(args.cache_dir), args.keep,
                                     lambda procs, work: run(args, procs, work))
    if results is None:
        return code
    print(format_table(results), end="", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
