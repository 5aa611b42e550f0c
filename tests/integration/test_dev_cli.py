"""`shardgate dev` and DevCluster against the real processes (`python -m partition` / `-m ingress`).

The `shardgate dev` tests run the real command (`python -m sgtools.cli dev`) and SIGKILL its
children behind its back: a dead worker or ingress comes back with a new pid (same ports) while the
other pids stay as they were, and with `--no-restart` it stays down while the rest keeps serving.
Waits poll cluster.json, the supervisor's log or an HTTP endpoint against a deadline.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from sgtools.dev import (
    HAPROXY_ENV,
    Backend,
    ClusterSpec,
    DevCluster,
    DevError,
    LoadBalancerNotFound,
    find_haproxy,
    haproxy_config,
)
from sgtools.dev.loadbalancer import write_error_pages
from tests.clusters import (
    DevCommand,
    dev_command_env,
    pid_alive,
    poll,
    shardgate_dev,
    stop_dev_command,
)

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    argv = [sys.executable, "-m", "sgtools.cli", "dev", "--ingress-port", str(ingress_port),
            "--admin-port", str(admin_port), "--data-dir", str(data_dir), "--workers", "2", "--partitions", "8"]
    pids: list[int] = []
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=dev_command_env(),
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
        argv = [sys.executable, "-m", "sgtools.cli", "dev", "--ingress-port", str(port),
                "--admin-port", str(free_port()), "--data-dir", str(tmp_path / "data")]
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=dev_command_env(),
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), EXIT_DEADLINE_S)
    assert proc.returncode != 0
    assert f"port {port}" in stderr.decode() and "in use" in stderr.decode()
    assert b"ready" not in stdout


# ---- supervision of a running `shardgate dev`: a child that dies is restarted -------------------

RESTART_DEADLINE_S = 30.0  # 1 s back-off + start-up of a Python child on a loaded 2-core machine
NO_RESTART_WINDOW_S = 2.5  # longer than the first back-off (1 s): a restart would have happened


def dev_args(*extra: str) -> list[str]:
    return ["--ingress-port", "0", "--admin-port", "0", "--workers", "2", "--partitions", "8", *extra]


async def new_pid(dev: DevCommand, name: str, old_pid: int) -> int:
    """Wait until cluster.json names a live process for `name` other than `old_pid`."""
    async def probe() -> int | None:
        pid = dev.pids()[name]
        return pid if pid is not None and pid != old_pid and pid_alive(pid) else None

    return await poll(f"cluster.json to name a restarted {name}", RESTART_DEADLINE_S, probe, diag(dev))


def diag(dev: DevCommand) -> Callable[[], Awaitable[str]]:
    async def describe() -> str:
        return f"cluster.json processes {dev.processes()}\nsupervisor log:\n{dev.stderr()}"

    return describe


async def logged(dev: DevCommand, text: str) -> bool | None:
    return True if text in dev.stderr() else None


async def http_ok(url: str) -> bool | None:
    return True if await http_status(url) == 200 else None


async def test_shardgate_dev_restarts_a_sigkilled_worker_and_leaves_the_rest_alone(tmp_path: Path) -> None:
    async with shardgate_dev(tmp_path / "data", *dev_args()) as dev:
        before = dev.pids()
        entry = dev.processes()["worker-0"]
        old_pid = before["worker-0"]
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)  # behind the supervisor's back: a crash

        pid = await new_pid(dev, "worker-0", old_pid)
        after = dev.processes()["worker-0"]
        assert after["ports"] == entry["ports"]  # same gRPC and metrics ports
        await poll("the restarted worker to be healthy", 10.0,
                   lambda: http_ok(f"http://127.0.0.1:{after['ports']['metrics']}/health"), diag(dev))
        others = {name: p for name, p in dev.pids().items() if name != "worker-0"}
        assert others == {name: p for name, p in before.items() if name != "worker-0"}
        assert all(p is not None and pid_alive(p) for p in others.values())
        assert await http_status(f"{dev.ingress_url}/restate/health") == 200
        await poll("the supervisor to log the restart", 10.0, lambda: logged(
            dev, f"worker-0 restarted (pid {pid}, restart #1) and healthy"), diag(dev))
        assert f"worker-0 (pid {old_pid}) died with code -9; restarting it in 1s (restart #1)" in dev.stderr()
        assert await stop_dev_command(dev) == 0


async def test_shardgate_dev_no_restart_leaves_a_dead_worker_down_and_keeps_serving(tmp_path: Path) -> None:
    async with shardgate_dev(tmp_path / "data", *dev_args("--no-restart")) as dev:
        before = dev.pids()
        victim = before["worker-1"]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)

        async def marked_down() -> bool | None:
            return True if dev.pids()["worker-1"] is None and "left down (--no-restart)" in dev.stderr() else None

        await poll("the supervisor to notice the death", 15.0, marked_down, diag(dev))
        # Over a window longer than the first back-off, the rest keeps serving and nothing restarts.
        loop = asyncio.get_running_loop()
        end = loop.time() + NO_RESTART_WINDOW_S
        answers = []
        while loop.time() < end:
            answers.append(await http_status(f"{dev.ingress_url}/restate/health"))
            await asyncio.sleep(0.1)  # the probing rate, not synchronisation
        assert answers and set(answers) == {200}
        assert dev.proc.returncode is None
        assert dev.pids() == {**before, "worker-1": None}
        assert all(pid_alive(p) for name, p in before.items() if name != "worker-1" and p is not None)
        assert not pid_alive(victim)
        assert "restarting it" not in dev.stderr() and "stopping the cluster" not in dev.stderr()
        assert await stop_dev_command(dev) == 0


async def test_shardgate_dev_restarts_a_sigkilled_ingress_on_its_ports(tmp_path: Path) -> None:
    async with shardgate_dev(tmp_path / "data", *dev_args()) as dev:
        before = dev.pids()
        entry = dev.processes()["ingress"]
        old_pid = before["ingress"]
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        await new_pid(dev, "ingress", old_pid)
        assert dev.processes()["ingress"]["ports"] == entry["ports"]
        await poll("the restarted ingress to answer on its port", 10.0,
                   lambda: http_ok(f"http://127.0.0.1:{entry['ports']['ingress']}/restate/health"), diag(dev))
        assert await http_status(f"http://127.0.0.1:{entry['ports']['admin']}/health") == 200
        assert {n: p for n, p in dev.pids().items() if n != "ingress"} == \
            {n: p for n, p in before.items() if n != "ingress"}
        assert f"ingress (pid {old_pid}) died with code -9; restarting it in 1s" in dev.stderr()
        assert await stop_dev_command(dev) == 0


# ---- DevCluster (the same machinery, in-process) ------------------------------------------------


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


# ---- the load balancer option (no haproxy needed: configuration and the errors) ------------------


def test_haproxy_config_fronts_both_ports_with_health_checked_nodes() -> None:
    backends = [Backend("ingress-0", 41001, 42001), Backend("ingress-1", 41002, 42002)]
    text = haproxy_config(8080, 9070, backends)
    assert "bind 127.0.0.1:8080" in text and "bind 127.0.0.1:9070" in text
    assert "option httpchk GET /restate/health" in text and "option httpchk GET /health" in text
    for backend in backends:
        assert f"server {backend.name} 127.0.0.1:{backend.ingress_port} check" in text
        assert f"server {backend.name} 127.0.0.1:{backend.admin_port} check" in text
    # Re-sent to another node: a request no node received, or one with an idempotency key whose
    # node died before answering; everything else gets a JSON error page.
    assert "retry-on conn-failure empty-response response-timeout" in text
    assert "http-request disable-l7-retry unless { req.hdr(idempotency-key) -m found }" in text
    assert "errorfile 502 haproxy-errors/502.http" in text
    with pytest.raises(ValueError):
        haproxy_config(8080, 9070, [])


def test_haproxy_error_pages_are_complete_json_responses(tmp_path: Path) -> None:
    write_error_pages(tmp_path)
    head, body = (tmp_path / "503.http").read_bytes().decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503 Service Unavailable\r\n") and "content-type: application/json" in head
    assert f"content-length: {len(body)}" in head
    answer = json.loads(body)
    assert answer["code"] == 503 and "idempotency key" in answer["message"]


def test_find_haproxy_explains_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(LoadBalancerNotFound, match="make lb-tools"):
        find_haproxy({HAPROXY_ENV: str(tmp_path / "no-haproxy")})
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_haproxy({HAPROXY_ENV: str(fake)}) == str(fake)
    assert find_haproxy({"PATH": str(tmp_path)}) == str(fake)


def test_several_ingress_nodes_need_the_load_balancer() -> None:
    with pytest.raises(DevError, match="--load-balancer"):
        ClusterSpec(ingress_nodes=2).validate()
    with pytest.raises(DevError, match="--ingress-nodes"):
        ClusterSpec(ingress_nodes=0, load_balancer=True).validate()
    ClusterSpec(ingress_nodes=3, load_balancer=True).validate()


async def test_shardgate_dev_load_balancer_without_haproxy_fails_with_the_install_hint(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "sgtools.cli", "dev", "--load-balancer", "--ingress-nodes", "2",
            "--ingress-port", "0", "--admin-port", "0", "--data-dir", str(tmp_path / "data")]
    env = {**dev_command_env(), HAPROXY_ENV: str(tmp_path / "missing-haproxy")}
    proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), EXIT_DEADLINE_S)
    assert proc.returncode == 1
    assert "make lb-tools" in stderr.decode() and b"ready" not in stdout
    assert "started redis" not in stderr.decode()  # checked before anything was started
