"""Helpers shared by the multi-process e2e tests: polling with a deadline, partition ownership."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from redis.asyncio import Redis

from partition import keys
from partition.leases import rendezvous_winner
from shardgate.routing import read_routes

T = TypeVar("T")
POLL_S = 0.05


async def poll(what: str, deadline_s: float, probe: Callable[[], Awaitable[T | None]],
               diag: Callable[[], Awaitable[str]] | None = None, interval_s: float = POLL_S) -> T:
    """Call `probe()` until it returns something other than None; fail after `deadline_s`
    (with `diag()`'s text, when given, to explain the state at that moment)."""
    end = time.monotonic() + deadline_s
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            result, last = None, e
        if result is not None:
            return result
        if time.monotonic() > end:
            detail = await diag() if diag is not None else ""
            pytest.fail(f"timed out after {deadline_s}s waiting for {what} (last error: {last!r})\n{detail}")
        await asyncio.sleep(interval_s)


async def attempts_by_transport(http: aiohttp.ClientSession, metrics_urls: Iterable[str]) -> dict[str, float]:
    """Attempts the workers sent to deployments so far, per transport, summed over their
    `/metrics` (`shardgate_partition_deployment_attempts_total{transport}`)."""
    totals: dict[str, float] = {}
    for url in metrics_urls:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("shardgate_partition_deployment_attempts_total{"):
                labels, value = line.rsplit(" ", 1)
                transport = labels.split('transport="', 1)[1].split('"', 1)[0]
                totals[transport] = totals.get(transport, 0.0) + float(value)
    return totals


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def partition_owners(cluster: Any, redis: Redis, partitions: int) -> dict[int, int] | None:
    """Partition -> index of the owning worker once ownership has settled, else None.

    Settled: every partition has a live lease whose token is the one in its route key, and the
    routed address (host:port) is the gRPC port of the running worker that wins the partition
    by rendezvous over the running workers.
    """
    workers = cluster.workers
    live = [w.worker_id for w in workers if w.running]
    by_port = {w.grpc_port: i for i, w in enumerate(workers)}
    routes = await read_routes(redis, partitions)
    leases = await redis.mget([keys.lease(p) for p in range(partitions)])
    result: dict[int, int] = {}
    for p in range(partitions):
        raw = routes[p]
        if raw is None or leases[p] is None:
            return None
        address, token = raw.split("|", 1)
        index = by_port.get(int(address.rsplit(":", 1)[1]))
        if token != leases[p].decode() or index is None or not workers[index].running:
            return None
        if workers[index].worker_id != rendezvous_winner(live, p):
            return None
        result[p] = index
    return result


# ---- a running `shardgate dev` command (the real CLI, as a subprocess) -----------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_READY_DEADLINE_S = 60.0
DEV_EXIT_DEADLINE_S = 30.0


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (it may be a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def dev_command_env() -> dict[str, str]:
    """Environment for `python -m sgtools.cli dev`: ours plus the checkout on PYTHONPATH
    (SHARDGATE_DEV_PYTHONPATH passes through when set)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class DevWorker:
    """A worker as `cluster.json` describes it; duck-types a ChildProcess for `partition_owners`."""

    worker_id: str
    pid: int | None
    grpc_port: int
    metrics_port: int

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)


@dataclass
class DevCommand:
    """A `shardgate dev` supervisor started by `shardgate_dev`, and what its cluster.json says."""

    proc: asyncio.subprocess.Process
    data_dir: Path
    stderr_path: Path
    ready_line: str

    def cluster_json(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "cluster.json").read_text()))

    def processes(self) -> dict[str, dict[str, Any]]:
        """Process name (redis, worker-<i>, ingress) -> its cluster.json entry."""
        return {p["name"]: p for p in self.cluster_json()["processes"]}

    def pids(self) -> dict[str, int | None]:
        """Process name -> live pid (None while it is down), as cluster.json says now."""
        return {name: p["pid"] for name, p in self.processes().items()}

    @property
    def workers(self) -> list[DevWorker]:
        entries = [p for p in self.cluster_json()["processes"] if p["role"] == "worker"]
        return [DevWorker(p["name"], p["pid"], p["ports"]["grpc"], p["ports"]["metrics"]) for p in entries]

    @property
    def ingress_url(self) -> str:
        return str(self.cluster_json()["ingress_url"])

    @property
    def admin_url(self) -> str:
        return str(self.cluster_json()["admin_url"])

    @property
    def redis_url(self) -> str:
        return str(self.cluster_json()["redis_url"])

    def stderr(self) -> str:
        """What the supervisor logged so far."""
        return self.stderr_path.read_text(errors="replace")


async def _read_dev_ready_line(proc: asyncio.subprocess.Process, stderr_path: Path) -> str:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + DEV_READY_DEADLINE_S
    while True:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), max(end - loop.time(), 0.01))
        except TimeoutError:
            pytest.fail(f"no ready line within {DEV_READY_DEADLINE_S}s:\n{stderr_path.read_text()}")
        if not line:
            pytest.fail(f"shardgate dev exited ({await proc.wait()}) before ready:\n{stderr_path.read_text()}")
        if line.startswith(b"shardgate dev ready:"):
            return line.decode()


async def stop_dev_command(dev: DevCommand) -> int:
    """SIGTERM the supervisor, wait for its exit code (SIGKILL after the deadline) and make sure no
    child it named is left running."""
    pids = [pid for pid in dev.pids().values() if pid is not None]
    proc = dev.proc
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), DEV_EXIT_DEADLINE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode is not None
    return proc.returncode


@contextlib.asynccontextmanager
async def shardgate_dev(data_dir: Path, *args: str) -> AsyncIterator[DevCommand]:
    """Run `python -m sgtools.cli dev --data-dir <data_dir> <args>` until it printed its ready line;
    stop it (and anything it left) on exit. Its stderr goes to `<data_dir>.stderr`."""
    stderr_path = data_dir.with_name(data_dir.name + ".stderr")
    argv = [sys.executable, "-m", "sgtools.cli", "dev", "--data-dir", str(data_dir), *args]
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=dev_command_env(),
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
    dev = DevCommand(proc, data_dir, stderr_path, "")
    try:
        dev.ready_line = await _read_dev_ready_line(proc, stderr_path)
        yield dev
    finally:
        if (data_dir / "cluster.json").exists():
            await stop_dev_command(dev)
        elif proc.returncode is None:
            proc.kill()
            await proc.wait()
