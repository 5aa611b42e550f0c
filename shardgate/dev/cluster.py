"""`DevCluster`: start, supervise and stop Redis, the workers and the ingress; cluster.json."""

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

from shardgate.dev.children import ingress_child, redis_child, worker_child
from shardgate.dev.datadir import acquire_data_dir_lock, write_json_atomic
from shardgate.dev.errors import DevError
from shardgate.dev.health import (
    Probe,
    gather_or_cancel,
    http_ok,
    redis_ping,
    wait_external_redis,
    wait_healthy,
)
from shardgate.dev.ports import PortPlan, pick_free_port, plan_ports
from shardgate.dev.process import ChildProcess, exited_error, signal_child, spawn_child, stop_child
from shardgate.dev.spec import LOOPBACK, ClusterSpec
from shardgate.envconfig import mask_url
from shardgate.redis_bin import RedisServerNotFound, find_redis_server

logger = logging.getLogger(__name__)


class DevCluster:
    """A supervised Redis + workers + ingress cluster (async context manager).

    `start()` brings everything up (stopping what it started if anything fails), `stop()` stops
    ingress, workers, then Redis and never leaves a process behind. `kill_worker` / `restart_worker`
    / `add_worker` drive crash tests. `failed` is set when a child dies unexpectedly (and is not
    restarted); `failure_reason` says which.
    """

    def __init__(self, spec: ClusterSpec) -> None:
        spec.validate()
        self.spec = spec
        self.data_dir = Path(spec.data_dir).resolve()
        self.redis: ChildProcess | None = None
        self.workers: list[ChildProcess] = []
        self.ingress: ChildProcess | None = None
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
    def children(self) -> list[ChildProcess]:
        """Every supervised process, in start order."""
        return [c for c in (self.redis, *self.workers, self.ingress) if c is not None]

    @property
    def cluster_json_path(self) -> Path:
        return self.data_dir / "cluster.json"

    # ----------------------------------------------------------------------------- start / stop

    async def start(self) -> None:
        """Start Redis, the workers and the ingress and wait for each to be healthy."""
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
        ports = plan_ports(self.spec)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        await self._start_redis(ports.redis)
        await self._start_workers(ports)
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
        await wait_healthy(self.redis, functools.partial(redis_ping, self.redis_url),
                           self.spec.start_timeout_s)

    async def _start_workers(self, ports: PortPlan) -> None:
        for i in range(self.spec.workers):
            self.workers.append(worker_child(self.spec, self.data_dir, i, ports.grpc[i], ports.metrics[i],
                                             self.redis_url))
        for worker in self.workers:
            await self._launch(worker)
        await gather_or_cancel(*(self._wait_healthy(w) for w in self.workers))

    async def _start_ingress(self, ports: PortPlan) -> None:
        self.ingress = ingress_child(self.spec, self.data_dir, ports, self.redis_url)
        self.ingress_url = f"http://{LOOPBACK}:{ports.ingress}"
        self.admin_url = f"http://{LOOPBACK}:{ports.admin}"
        await self._launch(self.ingress)
        await self._wait_healthy(self.ingress)

    def _probe(self, child: ChildProcess) -> Probe:
        assert self._session is not None
        if child.role == "worker":
            urls = [f"http://{LOOPBACK}:{child.metrics_port}/health"]
        else:
            urls = [f"{self.ingress_url}/restate/health", f"{self.admin_url}/health"]
        return functools.partial(http_ok, self._session, urls)

    async def _wait_healthy(self, child: ChildProcess) -> None:
        await wait_healthy(child, self._probe(child), self.spec.start_timeout_s)

    async def stop(self) -> None:
        """Stop ingress, then workers, then Redis; safe to call twice and after a failed start."""
        self._stopping = True
        await self._cancel_tasks()
        groups: list[Sequence[ChildProcess | None]] = [[self.ingress], self.workers, [self.redis]]
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
        code = await proc.wait()
        child.healthy = False
        if self._stopping or child.expected_exit or child.proc is not proc:
            return
        if not self._started:  # start() reports it, with the log tail
            self._fail(str(exited_error(child, "during start-up")))
            return
        logger.error("%s (pid %s) exited unexpectedly with code %s; see %s",
                     child.name, proc.pid, code, child.log_path)
        self.write_cluster_json()
        if self.spec.restart and child.role == "worker":
            await self._auto_restart(child)
        else:
            self._fail(str(exited_error(child, "unexpectedly")))

    async def _auto_restart(self, child: ChildProcess) -> None:
        delay = min(0.5 * 2 ** child.restarts, 5.0)
        child.restarts += 1
        logger.warning("restarting %s in %.1fs (restart #%d)", child.name, delay, child.restarts)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._relaunch(child)
        except DevError as exc:
            self._fail(f"restart of {child.name} failed: {exc}")

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
