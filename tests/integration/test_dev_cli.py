"""`shardgate dev` and DevCluster against the real processes (`python -m partition` / `-m ingress`).

Set SHARDGATE_DEV_PYTHONPATH to a directory with stand-in `partition` / `ingress` packages to run
these against stand-ins; the variable is passed through to the supervisor and its children.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shardgate.dev import ClusterSpec, DevCluster

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(predicate: object, deadline_s: float, what: str) -> None:
    """Poll `predicate()` until true or fail after `deadline_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not predicate():  # type: ignore[operator]
        if loop.time() > end:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status


def supervisor_env() -> dict[str, str]:
    env = dict(os.environ)  # passes SHARDGATE_DEV_PYTHONPATH through when set
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


async def read_ready_line(proc: asyncio.subprocess.Process, stderr_path: Path) -> str:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + READY_DEADLINE_S
    while True:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), max(end - loop.time(), 0.01))
        except TimeoutError:
            pytest.fail(f"no ready line within {READY_DEADLINE_S}s:\n{stderr_path.read_text()}")
        if not line:
            pytest.fail(f"shardgate dev exited ({await proc.wait()}) before ready:\n{stderr_path.read_text()}")
        if line.startswith(b"shardgate dev ready:"):
            return line.decode()


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_shardgate_dev_starts_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    ingress_port, admin_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    stderr_path = tmp_path / "dev.stderr"
    argv = [sys.executable, "-m", "shardgate.cli", "dev", "--ingress-port", str(ingress_port),
            "--admin-port", str(admin_port), "--data-dir", str(data_dir), "--workers", "2", "--partitions", "8"]
    pids: list[int] = []
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=supervisor_env(),
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        line = await read_ready_line(proc, stderr_path)
        assert f"ingress http://127.0.0.1:{ingress_port}" in line
        assert f"admin http://127.0.0.1:{admin_port}" in line
        assert "workers 2 partitions 8" in line and str(data_dir / "logs") in line

        assert await http_status(f"http://127.0.0.1:{ingress_port}/restate/health") == 200
        assert await http_status(f"http://127.0.0.1:{admin_port}/health") == 200

        cluster = json.loads((data_dir / "cluster.json").read_text())
        assert cluster["partitions"] == 8
        assert cluster["redis_url"].startswith("redis://127.0.0.1:")
        processes = cluster["processes"]
        assert len(processes) >= 3
        assert sorted(p["role"] for p in processes) == ["ingress", "redis", "worker", "worker"]
        pids = [p["pid"] for p in processes]
        assert all(isinstance(pid, int) and pid_alive(pid) for pid in pids)
        assert {p["name"] for p in processes if p["role"] == "worker"} == {"worker-0", "worker-1"}

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), EXIT_DEADLINE_S) == 0
        await wait_until(lambda: not any(pid_alive(pid) for pid in pids), EXIT_DEADLINE_S, "children to exit")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        kill_leftovers(pids)


async def test_shardgate_dev_fails_fast_when_a_port_is_busy(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [sys.executable, "-m", "shardgate.cli", "dev", "--ingress-port", str(port),
                "--admin-port", str(free_port()), "--data-dir", str(tmp_path / "data")]
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=supervisor_env(),
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), EXIT_DEADLINE_S)
    assert proc.returncode != 0
    assert f"port {port}" in stderr.decode() and "in use" in stderr.decode()
    assert b"ready" not in stdout


@pytest.fixture
async def dev_cluster(tmp_path: Path) -> AsyncIterator[DevCluster]:
    spec = ClusterSpec(workers=2, partitions=8, ingress_port=0, admin_port=0, data_dir=tmp_path / "data",
                       lease_ttl_ms=1000, start_timeout_s=45.0)
    async with DevCluster(spec) as cluster:
        yield cluster


async def test_dev_cluster_kill_and_restart_worker(dev_cluster: DevCluster) -> None:
    assert await http_status(f"{dev_cluster.ingress_url}/restate/health") == 200
    worker = dev_cluster.workers[0]
    old_pid = worker.pid
    assert old_pid is not None

    assert await dev_cluster.kill_worker(0, signal.SIGKILL) == -signal.SIGKILL
    assert not worker.running and not pid_alive(old_pid)
    assert not dev_cluster.failed.is_set()  # an intended kill is not a failure

    await dev_cluster.restart_worker(0)
    assert worker.running and worker.pid != old_pid
    assert await http_status(f"http://127.0.0.1:{worker.metrics_port}/health") == 200
    described = json.loads(dev_cluster.cluster_json_path.read_text())["processes"]
    assert worker.pid in [p["pid"] for p in described]

    pids = [c.pid for c in dev_cluster.children if c.pid is not None]
    await dev_cluster.stop()
    assert not any(pid_alive(pid) for pid in pids)


async def test_dev_cluster_with_restart_replaces_a_crashed_worker(tmp_path: Path) -> None:
    spec = ClusterSpec(workers=2, partitions=8, ingress_port=0, admin_port=0, data_dir=tmp_path / "data",
                       restart=True, start_timeout_s=45.0)
    async with DevCluster(spec) as cluster:
        worker = cluster.workers[1]
        old_pid = worker.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)  # behind the supervisor's back: a crash
        await wait_until(lambda: worker.healthy and worker.pid != old_pid, 60.0, "a healthy restarted worker")
        assert worker.restarts == 1
        assert await http_status(f"http://127.0.0.1:{worker.metrics_port}/health") == 200
        assert not cluster.failed.is_set()
        pids = [c.pid for c in cluster.children]
    assert not any(pid is not None and pid_alive(pid) for pid in pids)
