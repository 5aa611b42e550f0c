"""`DevCluster`: start, supervise and stop Redis, the workers, the ingress node(s) and the optional
load balancer in front of them; cluster.json."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from sgtools.dev.children import ingress_child, ingress_node_child, redis_child, worker_child
from sgtools.dev.datadir import acquire_data_dir_lock, write_json_atomic
from sgtools.dev.errors import DevError
from sgtools.dev.health import (
    Probe,
    gather_or_cancel,
    http_ok,
    redis_ping,
    wait_external_redis,
    wait_healthy,
)
from sgtools.dev.loadbalancer import Backend, find_haproxy, load_balancer_child
from sgtools.dev.ports import PortPlan, pick_free_port, plan_ports
from sgtools.dev.process import (
    ChildProcess,
    exited_error,
    signal_child,
    spawn_child,
    stop_child,
    sweep_group,
)
from sgtools.dev.spec import LOOPBACK, ClusterSpec
from sgtools.redis_bin import RedisServerNotFound, find_redis_server
from shardgate.envconfig import mask_url

logger = logging.getLogger(__name__)


class DevCluster:
    """A supervised Redis + workers + ingress cluster (async context manager).

    `start()` brings everything up (stopping what it started if anything fails), `stop()` stops
    the load balancer, the ingress node(s), workers, then Redis and never leaves a process behind.
    With `spec.load_balancer`, haproxy listens on the ingress and admin ports in front of
    `spec.ingress_nodes` ingress nodes on free ports. With `spec.restart` a child (Redis, a worker,
    an ingress node or the load balancer) that dies after start-up is restarted with the same argv, ports
    and worker id after a back-off (`RestartBackoff`: 1 s doubling to 30 s, reset after a minute
    healthy) while the others keep running; without it the child stays down. `kill_worker` /
    `restart_worker` / `add_worker` drive crash tests (what they kill is never restarted on its
    own). `failed` is set when a child dies during start-up, or dies later and is not restarted;
    `failure_reason` says which.
    """

    def __init__(self, spec: ClusterSpec) -> None:
        spec.validate()
        self.spec = spec
        self.data_dir = Path(spec.data_dir).resolve()
        self.redis: ChildProcess | None = None
        self.workers: list[ChildProcess] = []
        self.ingress_nodes: list[ChildProcess] = []
        self.load_balancer: ChildProcess | None = None
        self.redis_url = spec.redis_url or ""
        self.ingress_url = ""
        self.admin_url = ""
        self.failed = asyncio.Event()
        self.failure_reason = ""
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock_fd: int | None = None
        self._stopping = False
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def ingress(self) -> ChildProcess | None:
        """The (first) ingress node, None before start."""
        return self.ingress_nodes[0] if self.ingress_nodes else None

    @property
    def children(self) -> list[ChildProcess]:
        """Every supervised process, in start order."""
        return [c for c in (self.redis, *self.workers, *self.ingress_nodes, self.load_balancer) if c is not None]

    @property
    def cluster_json_path(self) -> Path:
        return self.data_dir / "cluster.json"

    # ----------------------------------------------------------------------------- start / stop

    async def start(self) -> None:
        """Start Redis, the workers, the ingress node(s) and the load balancer, each once the ones
        before are healthy; raises DevError (after stopping what it started) when one is not."""
        if self._started:
            raise DevError("cluster already started")
        try:
            await self._start()
            if self.failed.is_set():
                raise DevError(self.failure_reason)
        except BaseException as exc:
            if isinstance(exc, DevError):
                logger.error("start-up failed: %s", exc)
            await self.stop()
            raise
        self._started = True

    async def _start(self) -> None:
        self._stopping = False
        for sub in ("logs", "redis"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._lock_fd = acquire_data_dir_lock(self.data_dir)
        haproxy = find_haproxy() if self.spec.load_balancer else ""  # fail fast, before starting anything
        ports = plan_ports(self.spec)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        await self._start_redis(ports.redis)
        await self._start_workers(ports)
        if self.spec.load_balancer:
            await self._start_behind_load_balancer(ports, haproxy)
        else:
            await self._start_ingress(ports)

    async def _start_redis(self, port: int) -> None:
        if self.spec.redis_url is not None:
            await wait_external_redis(self.spec.redis_url, self.spec.start_timeout_s)
            return
        try:
            binary = find_redis_server()
        except RedisServerNotFound as exc:
            raise DevError(str(exc)) from None
        self.redis = redis_child(self.spec, self.data_dir, port, binary)
        self.redis_url = f"redis://{LOOPBACK}:{port}/0"
        await self._launch(self.redis)
        await self._wait_healthy(self.redis)

    async def _start_workers(self, ports: PortPlan) -> None:
        for i in range(self.spec.workers):
            self.workers.append(worker_child(self.spec, self.data_dir, i, ports.grpc[i], ports.metrics[i],
                                             self.redis_url))
        for worker in self.workers:
            await self._launch(worker)
        await gather_or_cancel(*(self._wait_healthy(w) for w in self.workers))

    async def _start_ingress(self, ports: PortPlan) -> None:
        node = ingress_child(self.spec, self.data_dir, ports, self.redis_url)
        self.ingress_nodes.append(node)
        self.ingress_url = f"http://{LOOPBACK}:{ports.ingress}"
        self.admin_url = f"http://{LOOPBACK}:{ports.admin}"
        await self._launch(node)
        await self._wait_healthy(node)

    async def _start_behind_load_balancer(self, ports: PortPlan, haproxy: str) -> None:
        """Start the ingress nodes on their own ports, then haproxy on the cluster's ports."""
        self.ingress_url = f"http://{LOOPBACK}:{ports.ingress}"
        self.admin_url = f"http://{LOOPBACK}:{ports.admin}"
        for i, (ingress_port, admin_port) in enumerate(zip(ports.node_ingress, ports.node_admin, strict=True)):
            self.ingress_nodes.append(ingress_node_child(self.spec, self.data_dir, f"ingress-{i}", ingress_port,
                                                         admin_port, self.redis_url, self.ingress_url))
        for node in self.ingress_nodes:
            await self._launch(node)
        await gather_or_cancel(*(self._wait_healthy(n) for n in self.ingress_nodes))
        backends = [Backend(n.name, n.ports["ingress"], n.ports["admin"]) for n in self.ingress_nodes]
        self.load_balancer = load_balancer_child(self.data_dir, haproxy, ports.ingress, ports.admin, backends)
        await self._launch(self.load_balancer)
        await self._wait_healthy(self.load_balancer)

    def _probe(self, child: ChildProcess) -> Probe:
        assert self._session is not None
        if child.role == "redis":
            return functools.partial(redis_ping, self.redis_url)
        if child.role == "worker":
            urls = [f"http://{LOOPBACK}:{child.metrics_port}/health"]
        else:  # an ingress node or the load balancer in front of them: both serve both APIs
            urls = [f"http://{LOOPBACK}:{child.ports['ingress']}/restate/health",
                    f"http://{LOOPBACK}:{child.ports['admin']}/health"]
        return functools.partial(http_ok, self._session, urls)

    async def _wait_healthy(self, child: ChildProcess) -> None:
        """Wait until the child passes its health check (raises DevError if it exits or times out)."""
        await wait_healthy(child, self._probe(child), self.spec.start_timeout_s)
        child.backoff.on_healthy()

    async def stop(self) -> None:
        """Stop the load balancer, the ingress node(s), the workers, then Redis; safe to call twice and
        after a failed start."""
        self._stopping = True
        await self._cancel_tasks()
        groups: list[Sequence[ChildProcess | None]] = [[self.load_balancer], self.ingress_nodes, self.workers,
                                                       [self.redis]]
        for group in groups:
            results = await asyncio.gather(
                *(stop_child(c, self.spec.stop_timeout_s) for c in group if c is not None),
                return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    logger.error("error while stopping a child: %r", result)
        self._kill_leftovers()
        if self.children:
            with contextlib.suppress(OSError):
                self.write_cluster_json()  # pids now null: nothing stale for readers
        await self._close_resources()

    def kill_all(self) -> None:
        """SIGKILL every running child right away (second Ctrl-C); `stop()` still reaps them."""
        for child in self.children:
            child.expected_exit = True
            signal_child(child, signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        for child in self.children:
            if child.running:
                logger.error("%s (pid %s) survived stop; sending SIGKILL", child.name, child.pid)
                signal_child(child, signal.SIGKILL)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _close_resources(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -------------------------------------------------------------------------- supervision

    async def _launch(self, child: ChildProcess) -> None:
        """Spawn the child, watch it, and rewrite cluster.json."""
        await spawn_child(child, self.data_dir)
        assert child.proc is not None
        self._track(asyncio.create_task(self._watch(child, child.proc)))
        self.write_cluster_json()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, child: ChildProcess, proc: asyncio.subprocess.Process) -> None:
        """Wait for the child's process to exit; then restart it with back-off or leave it down.

        Exits the supervisor or a test asked for (`expected_exit`, stopping) are not deaths, and a
        process some test hook already replaced is not watched any more.
        """
        while True:
            code = await proc.wait()
            child.healthy = False
            if self._stopping or child.expected_exit or child.proc is not proc:
                return
            if not self._started:  # start() reports it, with the log tail
                self._fail(str(exited_error(child, "during start-up")))
                return
            sweep_group(child)
            self.write_cluster_json()  # its pid is null now
            if not self.spec.restart:
                logger.warning("%s (pid %s) died with code %s; left down (--no-restart), the other processes "
                               "keep running; see %s", child.name, proc.pid, code, child.log_path)
                self._fail(str(exited_error(child, "unexpectedly")))
                return
            restarted = await self._restart(child, proc, f"died with code {code}")
            if restarted is None:
                return
            proc = restarted

    async def _restart(self, child: ChildProcess, dead: asyncio.subprocess.Process,
                       what: str) -> asyncio.subprocess.Process | None:
        """Restart the child after `dead` exited, backing off until one start gets healthy.

        Returns the healthy new process, or None when the cluster stops or the child was taken
        over (killed or restarted on purpose) meanwhile.
        """
        while True:
            delay_s = child.backoff.on_exit()
            logger.warning("%s (pid %s) %s; restarting it in %.0fs (restart #%d); see %s",
                           child.name, dead.pid, what, delay_s, child.restarts + 1, child.log_path)
            await asyncio.sleep(delay_s)
            async with child.lock:
                if self._stopping or child.expected_exit or child.proc is not dead:
                    return None
                child.restarts += 1
                proc = await self._try_restart(child)
            if proc is not None:
                logger.info("%s restarted (pid %s, restart #%d) and healthy", child.name, proc.pid, child.restarts)
                return proc
            if self._stopping or child.expected_exit or child.proc is None:
                return None
            dead = child.proc
            what = f"did not come back (exit code {dead.returncode})"

    async def _try_restart(self, child: ChildProcess) -> asyncio.subprocess.Process | None:
        """Start the child's process again (same argv, ports and id) and wait until it is healthy.

        Returns the process, or None when it could not be started or did not get healthy (what is
        left of it is killed). Raises nothing but CancelledError.
        """
        try:
            await spawn_child(child, self.data_dir)
        except OSError as exc:
            logger.warning("could not start %s again: %s", child.name, exc)
            return None
        proc = child.proc
        assert proc is not None
        self.write_cluster_json()
        try:
            await self._wait_healthy(child)
        except DevError as exc:
            logger.warning("restart of %s failed: %s", child.name, exc)
            signal_child(child, signal.SIGKILL)  # not stop_child: an intended exit stays distinguishable
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.spec.stop_timeout_s)
            sweep_group(child)
            self.write_cluster_json()
            return None
        return proc

    async def _relaunch(self, child: ChildProcess) -> None:
        await self._launch(child)
        try:
            await self._wait_healthy(child)
        except BaseException:
            await stop_child(child, self.spec.stop_timeout_s)
            raise

    def _fail(self, reason: str) -> None:
        if not self.failed.is_set():
            self.failure_reason = reason
            self.failed.set()

    def write_cluster_json(self) -> None:
        """(Re)write `<data-dir>/cluster.json` describing every process."""
        write_json_atomic(self.cluster_json_path, {
            "partitions": self.spec.partitions,
            "redis_url": mask_url(self.redis_url),
            "ingress_url": self.ingress_url,
            "admin_url": self.admin_url,
            "load_balancer": self.load_balancer is not None,
            "data_dir": str(self.data_dir),
            "supervisor_pid": os.getpid(),
            "processes": [c.describe() for c in self.children],
        })

    # ---------------------------------------------------------------------------- test hooks

    async def kill_worker(self, index: int, sig: int = signal.SIGKILL, *, wait: bool = True) -> int | None:
        """Send `sig` to worker `index` (not restarted automatically); return its exit code.

        SIGSTOP/SIGCONT just freeze/thaw it (returns None). Otherwise, with `wait`, waits up to
        `stop_timeout_s` for the exit and raises TimeoutError if it is still running.
        """
        child = self.workers[index]
        if not child.running:
            return child.returncode
        freezes = sig in (signal.SIGSTOP, signal.SIGCONT)
        if not freezes:
            child.expected_exit = True
        signal_child(child, sig)
        if freezes or not wait:
            return None
        assert child.proc is not None
        return await asyncio.wait_for(child.proc.wait(), self.spec.stop_timeout_s)

    async def restart_worker(self, index: int) -> ChildProcess:
        """Stop worker `index` if it runs, start it again (same id and ports) and wait until healthy."""
        child = self.workers[index]
        async with child.lock:
            if child.running:
                await stop_child(child, self.spec.stop_timeout_s)
            await self._relaunch(child)
        return child

    async def add_worker(self, grpc_port: int = 0, metrics_port: int = 0) -> ChildProcess:
        """Start one more worker (free ports unless given) and wait until it is healthy."""
        taken = {p for c in self.children for p in c.ports.values()}
        child = worker_child(self.spec, self.data_dir, len(self.workers),
                             grpc_port or pick_free_port(taken), metrics_port or pick_free_port(taken),
                             self.redis_url)
        self.workers.append(child)
        await self._relaunch(child)
        return child
