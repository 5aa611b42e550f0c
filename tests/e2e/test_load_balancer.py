"""`shardgate dev --ingress-nodes 2 --load-balancer`: real haproxy in front of two real ingress nodes.

One `shardgate dev` for the module (1 worker, 8 partitions, free ports) with the conformance
deployment registered through the load balancer's admin port. Checked through the load balancer:
cluster.json and the ready line; calls, sends, attaches, idempotent retries and the admin API;
requests reach both nodes; SIGKILL of one ingress node while calls flow (every call is answered,
and those that were in flight on the killed node succeed when retried with their idempotency key,
running once); SIGKILL of haproxy itself (the supervisor restarts it on the same port).

haproxy is a Debian package (`make lb-tools`, a prerequisite of `make test`); without it these
tests fail and say so, they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import LoadBalancerNotFound, find_haproxy
from tests.clusters import DevCommand, pid_alive, poll, shardgate_dev

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, pytest.mark.timeout(180)]

NODES = 2
RESTART_DEADLINE_S = 30.0
CALL_TIMEOUT_S = 20.0
LOOPS = 4  # concurrent callers during the kill
CALLS_AFTER_KILL = 40
FAILOVER_GRACE_S = 1.0
"""After a SIGKILL, attempts started this long after it must not fail: haproxy sends a request
whose connection is refused to the other node at once, and marks the dead one down within
2 checks (1 s)."""


def haproxy_or_fail() -> str:
    try:
        return find_haproxy()
    except LoadBalancerNotFound as exc:
        pytest.fail(f"haproxy is missing: run `make lb-tools` (apt-get install -y haproxy). {exc}")


@dataclass
class Env:
    dev: DevCommand
    http: aiohttp.ClientSession
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.dev.ingress_url

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
                   timeout_s: float = CALL_TIMEOUT_S) -> tuple[int, Any]:
        """POST to the load balancer: `body` as JSON, or no body and no content-type when it is None."""
        kwargs: dict[str, Any] = {"headers": headers or {}, "timeout": aiohttp.ClientTimeout(total=timeout_s)}
        if body is not None:
            kwargs["json"] = body
        else:  # handlers without input refuse any content-type (aiohttp would add octet-stream)
            kwargs["skip_auto_headers"] = {"Content-Type"}
        async with self.http.post(f"{self.url}{path}", **kwargs) as r:
            return r.status, await decode(r)

    async def get(self, url: str, timeout_s: float = CALL_TIMEOUT_S) -> tuple[int, Any]:
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status, await decode(r)

    async def node_requests(self, name: str) -> float:
        """shardgate_ingress_requests_total summed over routes and statuses, read from the node itself."""
        admin = self.dev.processes()[name]["ports"]["admin"]
        async with self.http.get(f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("shardgate_ingress_requests_total{"))

    async def describe(self) -> str:
        return f"cluster.json processes {self.dev.processes()}\nsupervisor log:\n{self.dev.stderr()[-4000:]}"


async def decode(r: aiohttp.ClientResponse) -> Any:
    raw = await r.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lb_env(tmp_path_factory: pytest.TempPathFactory, sdk_deployment: str) -> AsyncIterator[Env]:
    haproxy_or_fail()
    data_dir = tmp_path_factory.mktemp("load-balancer") / "data"
    args = ["--ingress-nodes", str(NODES), "--load-balancer", "--ingress-port", "0", "--admin-port", "0",
            "--workers", "1", "--partitions", "8"]
    async with shardgate_dev(data_dir, *args) as dev:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        env = Env(dev, http)
        try:
            async with http.post(f"{dev.admin_url}/deployments", json={"uri": sdk_deployment, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()
            streak = 0

            async def both_nodes_serve() -> bool | None:
                nonlocal streak
                status, _ = await env.post("/restate/call/Greeter/greet", "ready", timeout_s=10)
                streak = streak + 1 if status == 200 else 0
                return True if streak >= 2 * NODES else None  # round-robin: every node answered

            await poll("both ingress nodes to serve the deployment", 30.0, both_nodes_serve, env.describe)
            yield env
        finally:
            await http.close()


async def all_up(env: Env) -> None:
    """Every process of the cluster is running and the load balancer answers."""
    async def probe() -> bool | None:
        pids = env.dev.pids()
        if not all(pid is not None and pid_alive(pid) for pid in pids.values()):
            return None
        status, _ = await env.get(f"{env.url}/restate/health", timeout_s=2)
        return True if status == 200 else None

    await poll("every process to run", RESTART_DEADLINE_S, probe, env.describe)


async def restarted_and_healthy(env: Env, name: str, old_pid: int) -> int:
    """Wait until cluster.json names a new live pid for `name` and the supervisor logged it healthy."""
    async def probe() -> int | None:
        pid = env.dev.pids()[name]
        ok = pid is not None and pid != old_pid and pid_alive(pid)
        return pid if ok and f"{name} restarted (pid {pid}" in env.dev.stderr() else None

    return await poll(f"the supervisor to restart {name}", RESTART_DEADLINE_S, probe, env.describe)


# ---- layout --------------------------------------------------------------------------------------


async def test_cluster_json_lists_the_load_balancer_and_every_ingress_node(lb_env: Env) -> None:
    dev = lb_env.dev
    cluster = dev.cluster_json()
    processes = dev.processes()
    assert sorted(p["role"] for p in processes.values()) == ["ingress", "ingress", "load-balancer", "redis",
                                                             "worker"]
    lb = processes["load-balancer"]
    assert cluster["load_balancer"] is True
    assert cluster["ingress_url"] == f"http://127.0.0.1:{lb['ports']['ingress']}"
    assert cluster["admin_url"] == f"http://127.0.0.1:{lb['ports']['admin']}"
    assert f"ingress {cluster['ingress_url']} (haproxy in front of 2 ingress nodes) " \
           f"admin {cluster['admin_url']}" in dev.ready_line
    assert os.path.basename(os.readlink(f"/proc/{lb['pid']}/exe")) == "haproxy"
    nodes = [processes[f"ingress-{i}"] for i in range(NODES)]
    ports = {lb["ports"]["ingress"], lb["ports"]["admin"]}
    for node in nodes:
        assert node["role"] == "ingress" and pid_alive(node["pid"])
        assert not ports & set(node["ports"].values())  # every node on its own free ports
        ports |= set(node["ports"].values())
        assert (await lb_env.get(f"http://127.0.0.1:{node['ports']['ingress']}/restate/health"))[0] == 200
        assert (await lb_env.get(f"http://127.0.0.1:{node['ports']['admin']}/health"))[0] == 200
    # the rendered configuration is one haproxy itself accepts
    config = dev.data_dir / "haproxy.cfg"
    check = await asyncio.create_subprocess_exec(haproxy_or_fail(), "-c", "-f", str(config),
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(check.communicate(), 30)
    assert check.returncode == 0, output.decode(errors="replace")
    text = config.read_text()
    assert "option httpchk GET /restate/health" in text and "option httpchk GET /health" in text
    for node in nodes:
        assert f"127.0.0.1:{node['ports']['ingress']} check" in text


# ---- the APIs through the load balancer -----------------------------------------------------------


async def test_calls_sends_attach_and_idempotent_retries_go_through_the_load_balancer(lb_env: Env) -> None:
    await all_up(lb_env)
    before = {f"ingress-{i}": await lb_env.node_requests(f"ingress-{i}") for i in range(NODES)}
    for i in range(6):
        assert await lb_env.post("/restate/call/Greeter/greet", f"Ada-{i}") == (200, f"Hello, Ada-{i}!")
    after = {name: await lb_env.node_requests(name) for name in before}
    assert all(after[name] >= before[name] + 2 for name in before), (before, after)  # spread over both

    status, ack = await lb_env.post("/restate/send/Greeter/greet", "Bob")
    assert status == 202 and ack["status"] == "Accepted", ack
    assert await lb_env.get(f"{lb_env.url}/restate/invocation/{ack['invocationId']}/attach") == (200, "Hello, Bob!")

    key, idem = f"lb-{uuid.uuid4().hex[:8]}", {"idempotency-key": uuid.uuid4().hex}
    first = await lb_env.post(f"/restate/call/Counter/{key}/add", 5, idem)
    again = [await lb_env.post(f"/restate/call/Counter/{key}/add", 5, idem) for _ in range(3)]
    assert first == (200, 5) and again == [(200, 5)] * 3  # answered from the first run, by any node
    assert await lb_env.post(f"/restate/call/Counter/{key}/get", None) == (200, 5)

    status, deployments = await lb_env.get(f"{lb_env.dev.admin_url}/deployments")
    assert status == 200 and deployments["deployments"], deployments
    status, _ = await lb_env.get(f"{lb_env.dev.admin_url}/health")
    assert status == 200


# ---- failures behind the load balancer ------------------------------------------------------------


@dataclass
class Attempt:
    started_s: float
    status: int | str


@dataclass
class Caller:
    """Logical calls `Counter/<key>/add 1`, each retried with its idempotency key until answered 200."""

    env: Env
    key: str
    answered: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one_call(self) -> None:
        headers = {"idempotency-key": uuid.uuid4().hex}
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            started = time.monotonic()
            try:
                status, body = await self.env.post(f"/restate/call/Counter/{self.key}/add", 1, headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, body = type(exc).__name__, None  # type: ignore[assignment]
            self.attempts.append(Attempt(started, status))
            if status == 200:
                self.answered += 1
                assert body == self.answered, (self.key, body, self.answered)  # every add ran exactly once
                return
            assert time.monotonic() < deadline, f"call to {self.key} not answered: {self.attempts[-5:]}"
            await asyncio.sleep(0.05)  # the retry pace, not synchronisation

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.one_call()


async def test_sigkill_of_an_ingress_node_under_load_keeps_requests_answered(lb_env: Env) -> None:
    await all_up(lb_env)
    callers = [Caller(lb_env, f"lb-kill-{uuid.uuid4().hex[:8]}") for _ in range(LOOPS)]
    tasks = [asyncio.create_task(c.run()) for c in callers]
    try:
        async def answered(n: int) -> bool | None:
            for task in tasks:
                if task.done():
                    task.result()
            return True if sum(c.answered for c in callers) >= n else None

        await poll("calls to flow", 20.0, lambda: answered(20), lb_env.describe)
        victim = lb_env.dev.pids()["ingress-0"]
        assert victim is not None
        before_kill = sum(c.answered for c in callers)
        killed_s = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        await poll("calls to go on after the kill", 30.0,
                   lambda: answered(before_kill + CALLS_AFTER_KILL), lb_env.describe)

        await restarted_and_healthy(lb_env, "ingress-0", victim)
        served = await lb_env.node_requests("ingress-0")

        async def back_in_rotation() -> bool | None:
            return True if await lb_env.node_requests("ingress-0") >= served + 3 else None

        await poll("haproxy to send requests to the restarted ingress-0", 20.0, back_in_rotation, lb_env.describe)
    finally:
        for caller in callers:
            caller.stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * CALL_TIMEOUT_S)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    attempts = [a for c in callers for a in c.attempts]
    failed = [(round(a.started_s - killed_s, 3), a.status) for a in attempts if a.status != 200]
    print(f"{len(attempts)} attempts, failed (start relative to the kill, status): {failed}")
    late_failures = [a for a in attempts if a.status != 200 and a.started_s > killed_s + FAILOVER_GRACE_S]
    assert not late_failures, late_failures
    assert sum(1 for a in attempts if a.status == 200 and a.started_s > killed_s) >= CALLS_AFTER_KILL
    for caller in callers:  # the counter holds one add per answered call: no retry ran twice
        assert await lb_env.post(f"/restate/call/Counter/{caller.key}/get", None) == (200, caller.answered)


async def test_sigkill_of_the_load_balancer_is_restarted_on_its_port(lb_env: Env) -> None:
    await all_up(lb_env)
    entry = lb_env.dev.processes()["load-balancer"]
    old_pid = entry["pid"]
    os.kill(old_pid, signal.SIGKILL)
    await restarted_and_healthy(lb_env, "load-balancer", old_pid)
    after = lb_env.dev.processes()["load-balancer"]
    assert after["ports"] == entry["ports"]
    assert urlsplit(lb_env.url).port == entry["ports"]["ingress"]

    async def serves() -> bool | None:
        return True if await lb_env.post("/restate/call/Greeter/greet", "again", timeout_s=5) == \
            (200, "Hello, again!") else None

    await poll("calls through the restarted load balancer", 20.0, serves, lb_env.describe)
    assert f"load-balancer (pid {old_pid}) died with code -9; restarting it in 1s" in lb_env.dev.stderr()


@dataclass
class SleepyCaller:
    """Calls `Greeter/sleepy 1` back to back (each holds its call open for a second), no retries."""

    env: Env
    answered: int = 0
    failures: list[tuple[float, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = await self.env.post("/restate/call/Greeter/sleepy", 1)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                answer = (0, type(exc).__name__)
            if answer == (200, "slept 1s"):
                self.answered += 1
            else:
                self.failures.append((started, answer))


async def test_sigterm_of_an_ingress_node_under_load_drains_it_without_losing_a_request(lb_env: Env) -> None:
    """SIGTERM: the node turns unready (503 on /restate/health) while it still serves, haproxy
    takes it out, it stops accepting, its open calls finish, it exits 0; no request fails."""
    await all_up(lb_env)
    callers = [Caller(lb_env, f"lb-drain-{uuid.uuid4().hex[:8]}") for _ in range(LOOPS)]
    sleepers = [SleepyCaller(lb_env) for _ in range(6)]
    tasks = [asyncio.create_task(c.run()) for c in callers] + [asyncio.create_task(s.run()) for s in sleepers]
    node = lb_env.dev.processes()["ingress-0"]
    health = f"http://127.0.0.1:{node['ports']['ingress']}/restate/health"
    try:
        async def answered(n: int) -> bool | None:
            for task in tasks:
                if task.done():
                    task.result()
            return True if sum(c.answered for c in callers) >= n and all(s.answered for s in sleepers) else None

        await poll("calls to flow", 30.0, lambda: answered(20), lb_env.describe)
        before = sum(c.answered for c in callers)
        os.kill(node["pid"], signal.SIGTERM)

        async def unready() -> bool | None:
            return True if (await lb_env.get(health, timeout_s=2))[0] == 503 else None

        await poll("the draining node to answer 503 on /restate/health", 5.0, unready, lb_env.describe)
        await restarted_and_healthy(lb_env, "ingress-0", node["pid"])
        await poll("calls to go on after the drain", 30.0, lambda: answered(before + CALLS_AFTER_KILL),
                   lb_env.describe)
    finally:
        for event in [c.stop for c in callers] + [s.stop for s in sleepers]:
            event.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * CALL_TIMEOUT_S)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    failed = [(a.started_s, a.status) for c in callers for a in c.attempts if a.status != 200]
    failed += [f for s in sleepers for f in s.failures]
    assert not failed, failed
    assert f"ingress-0 (pid {node['pid']}) died with code 0" in lb_env.dev.stderr()  # it exited on its own
    log = (lb_env.dev.data_dir / "logs" / "ingress-0.log").read_text(errors="replace")
    assert "ingress node draining" in log and "ingress node stopped" in log
