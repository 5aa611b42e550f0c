"""`shardgate dev`: Redis, N partition workers and one ingress node under one foreground supervisor.

The supervisor starts, in order, redis-server (unless an existing Redis is given), the partition
workers (`python -m partition`) and the ingress node (`python -m ingress`), waits for each to be
healthy, writes `<data-dir>/cluster.json`, prints one ready line on stdout and then watches the
children. Ctrl-C / SIGTERM stops ingress, then the workers, then Redis.

`DevCluster` is the same machinery as a reusable async context manager; integration tests use it to
run real multi-process clusters and to kill and restart workers.

Children run in their own session (process group) so a terminal Ctrl-C reaches only the supervisor,
which then stops them in order; on Linux each child also gets SIGTERM if the supervisor dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shardgate.envconfig import mask_url
from shardgate.redis_bin import RedisServerNotFound, find_redis_server

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PYTHONPATH_ENV = "SHARDGATE_DEV_PYTHONPATH"
"""Extra import path prepended to the children's PYTHONPATH (stand-in entry points for testing)."""
HEALTH_POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 20
APPENDFSYNC_CHOICES = ("always", "everysec")

# Run as `python -c SHIM <parent-pid> <argv...>`: ask the kernel to SIGTERM the child when the
# supervisor dies (PR_SET_PDEATHSIG = 1), then exec the real program in place (same pid).
_PDEATHSIG_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

Probe = Callable[[], Awaitable[bool]]


class DevError(RuntimeError):
    """Start-up or supervision of the dev cluster failed; the message says what and where to look."""


@dataclass
class ClusterSpec:
    """Everything `shardgate dev` / `DevCluster` is configured with (0 ports = pick a free one)."""

    workers: int = 2
    ingress_port: int = 8080
    admin_port: int = 9070
    partitions: int = 64
    data_dir: Path = Path(".shardgate-data")
    redis_url: str | None = None
    """Use this existing Redis instead of starting redis-server."""
    redis_port: int = 0
    worker_grpc_ports: list[int] = field(default_factory=list)
    worker_metrics_ports: list[int] = field(default_factory=list)
    lease_ttl_ms: int | None = None
    """SHARDGATE_LEASE_TTL_MS for the workers; None keeps the worker default."""
    log_level: str = "INFO"
    appendfsync: str = "always"
    restart: bool = False
    """Restart workers that die after start-up instead of stopping the cluster."""
    start_timeout_s: float = 30.0
    """How long each process (group) may take to become healthy."""
    stop_timeout_s: float = 10.0
    """How long a process may take to exit after SIGTERM before it gets SIGKILL."""
    pythonpath: str = field(default_factory=lambda: os.environ.get(PYTHONPATH_ENV, ""))
    """Prepended to the children's PYTHONPATH (defaults to $SHARDGATE_DEV_PYTHONPATH)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Additional environment for workers and ingress (e.g. SHARDGATE_HEARTBEAT_INTERVAL_MS)."""

    def validate(self) -> None:
        """Raise `DevError` for values that cannot describe a cluster."""
        if self.workers < 1:
            raise DevError("--workers must be at least 1")
        if self.partitions < 1:
            raise DevError("--partitions must be at least 1")
        if self.appendfsync not in APPENDFSYNC_CHOICES:
            raise DevError(f"--appendfsync must be one of {', '.join(APPENDFSYNC_CHOICES)}")
        for label, ports in (("grpc", self.worker_grpc_ports), ("metrics", self.worker_metrics_ports)):
            if ports and len(ports) != self.workers:
                raise DevError(f"--worker-{label}-ports lists {len(ports)} ports for {self.workers} workers")
        for port in (self.ingress_port, self.admin_port, self.redis_port,
                     *self.worker_grpc_ports, *self.worker_metrics_ports):
            if not 0 <= port <= 65535:
                raise DevError(f"port {port} is out of range")


@dataclass
class ChildProcess:
    """One supervised process: how to start it, where it logs, and its current OS process."""

    role: str
    """"redis", "worker" or "ingress"."""
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    expected_exit: bool = False
    """Set when the supervisor (or a test) stops it on purpose, so its exit is not a failure."""
    restarts: int = 0
    """Automatic restarts so far (`--restart`)."""
    healthy: bool = False
    """The current process passed its health check (False again once it exits)."""
    log_offset: int = 0

    @property
    def pid(self) -> int | None:
        """OS pid of the current (or last) process, None before the first start."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the current process has not been reaped."""
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    @property
    def worker_id(self) -> str:
        return self.env.get("SHARDGATE_WORKER_ID", "")

    def describe(self) -> dict[str, Any]:
        """The cluster.json entry of this process."""
        return {"role": self.role, "name": self.name, "pid": self.pid if self.running else None,
                "ports": dict(self.ports), "log": str(self.log_path)}


@dataclass
class PortPlan:
    """Every port of a cluster, resolved (explicit ones checked free, zeros picked)."""

    redis: int
    ingress: int
    admin: int
    grpc: list[int]
    metrics: list[int]


# ---------------------------------------------------------------------------------------- ports


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if a listener already holds host:port (checked the way servers bind, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def pick_free_port(taken: set[int]) -> int:
    """A port the kernel considers free right now on 127.0.0.1, not already in `taken`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise DevError("could not pick a free port")


def _explicit_ports(spec: ClusterSpec) -> list[tuple[str, int]]:
    ports = [("ingress", spec.ingress_port), ("admin", spec.admin_port)]
    if spec.redis_url is None:
        ports.append(("redis", spec.redis_port))
    ports += [(f"worker-{i} grpc", p) for i, p in enumerate(spec.worker_grpc_ports)]
    ports += [(f"worker-{i} metrics", p) for i, p in enumerate(spec.worker_metrics_ports)]
    return [(label, port) for label, port in ports if port]


def check_explicit_ports(spec: ClusterSpec) -> set[int]:
    """Fail fast on duplicate or busy explicit ports; return them."""
    seen: dict[int, str] = {}
    for label, port in _explicit_ports(spec):
        if port in seen:
            raise DevError(f"port {port} is given twice ({seen[port]} and {label})")
        seen[port] = label
        if port_in_use(port):
            raise DevError(f"port {port} ({label}) is already in use on {LOOPBACK}; pick another one")
    return set(seen)


def plan_ports(spec: ClusterSpec) -> PortPlan:
    """Resolve every port of the cluster."""
    taken = check_explicit_ports(spec)

    def resolve(port: int) -> int:
        return port or pick_free_port(taken)

    grpc = spec.worker_grpc_ports or [0] * spec.workers
    metrics = spec.worker_metrics_ports or [0] * spec.workers
    return PortPlan(
        redis=0 if spec.redis_url is not None else resolve(spec.redis_port),
        ingress=resolve(spec.ingress_port),
        admin=resolve(spec.admin_port),
        grpc=[resolve(p) for p in grpc],
        metrics=[resolve(p) for p in metrics],
    )


# ---------------------------------------------------------------------------- data dir and files


def acquire_data_dir_lock(data_dir: Path) -> int:
    """Take an exclusive lock on `<data-dir>/.lock` so two clusters never share a data dir."""
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise DevError(f"data dir {data_dir} is in use by another shardgate dev (pid {holder})") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file and rename it over `path`, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def read_log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset` (small, bounded read)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 16384))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------ children


def project_root() -> Path | None:
    """The source checkout holding `partition/` and `ingress/` next to `shardgate/`, if any."""
    root = Path(__file__).resolve().parent.parent
    if (root / "partition").is_dir() and (root / "ingress").is_dir():
        return root
    return None


def child_env(spec: ClusterSpec, overrides: dict[str, str]) -> dict[str, str]:
    """The supervisor's environment plus import path, `spec.extra_env` and `overrides`."""
    env = dict(os.environ)
    root = project_root()
    parts = [spec.pythonpath, str(root) if root else "", env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec.extra_env)
    env.update(overrides)
    return env


def redis_child(spec: ClusterSpec, data_dir: Path, port: int, binary: str) -> ChildProcess:
    """redis-server on 127.0.0.1:port, AOF in `<data-dir>/redis`, no RDB snapshots."""
    argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(data_dir / "redis"),
            "--appendonly", "yes", "--appendfsync", spec.appendfsync, "--save", "",
            "--daemonize", "no"]
    return ChildProcess("redis", "redis", argv, dict(os.environ), {"redis": port},
                        data_dir / "logs" / "redis.log")


def worker_child(spec: ClusterSpec, data_dir: Path, index: int, grpc: int, metrics: int,
                 redis_url: str) -> ChildProcess:
    """`python -m partition` as worker-<index>."""
    name = f"worker-{index}"
    overrides = {
        "SHARDGATE_REDIS_URL": redis_url,
        "SHARDGATE_PARTITIONS": str(spec.partitions),
        "SHARDGATE_WORKER_ID": name,
        "SHARDGATE_GRPC_PORT": str(grpc),
        "SHARDGATE_METRICS_PORT": str(metrics),
        "SHARDGATE_LOG_LEVEL": spec.log_level,
    }
    if spec.lease_ttl_ms is not None:
        overrides["SHARDGATE_LEASE_TTL_MS"] = str(spec.lease_ttl_ms)
    return ChildProcess("worker", name, [sys.executable, "-m", "partition"], child_env(spec, overrides),
                        {"grpc": grpc, "metrics": metrics}, data_dir / "logs" / f"{name}.log")


def ingress_child(spec: ClusterSpec, data_dir: Path, ports: PortPlan, redis_url: str) -> ChildProcess:
    """`python -m ingress`."""
    overrides = {
        "SHARDGATE_REDIS_URL": redis_url,
        "SHARDGATE_PARTITIONS": str(spec.partitions),
        "SHARDGATE_INGRESS_PORT": str(ports.ingress),
        "SHARDGATE_ADMIN_PORT": str(ports.admin),
        "SHARDGATE_LOG_LEVEL": spec.log_level,
    }
    return ChildProcess("ingress", "ingress", [sys.executable, "-m", "ingress"], child_env(spec, overrides),
                        {"ingress": ports.ingress, "admin": ports.admin}, data_dir / "logs" / "ingress.log")


def _exec_argv(argv: list[str]) -> list[str]:
    """Wrap argv in the parent-death shim on Linux; run it directly elsewhere."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *argv]


async def spawn_child(child: ChildProcess, cwd: Path) -> None:
    """Start the child's process in its own session, stdout+stderr appended to its log file."""
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with child.log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {stamp} shardgate dev: starting {child.name}: {' '.join(child.argv)}\n".encode())
        log.flush()
        child.log_offset = log.tell()
        child.proc = await asyncio.create_subprocess_exec(
            *_exec_argv(child.argv), env=child.env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    child.expected_exit = False
    child.healthy = False
    logger.info("started %s (pid %s), log %s", child.name, child.pid, child.log_path)


def signal_child(child: ChildProcess, sig: int) -> None:
    """Send `sig` to the child's process group (the child and anything it started)."""
    if not child.running or child.pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def _sweep_group(child: ChildProcess) -> None:
    """SIGKILL what is left of the child's process group after the child itself was reaped."""
    if child.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


async def stop_child(child: ChildProcess, timeout_s: float) -> int | None:
    """SIGTERM (and SIGCONT, in case it is stopped), wait up to `timeout_s`, then SIGKILL."""
    proc = child.proc
    if proc is None:
        return None
    child.expected_exit = True
    if proc.returncode is None:
        signal_child(child, signal.SIGTERM)
        signal_child(child, signal.SIGCONT)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            logger.warning("%s (pid %s) still running %.0fs after SIGTERM; sending SIGKILL",
                           child.name, child.pid, timeout_s)
            signal_child(child, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), timeout_s)
        logger.info("%s (pid %s) stopped with code %s", child.name, child.pid, proc.returncode)
    _sweep_group(child)
    return proc.returncode


# ------------------------------------------------------------------------------------- health


async def http_ok(session: aiohttp.ClientSession, urls: list[str]) -> bool:
    """True if every URL answers GET with 200."""
    for url in urls:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
    return True


async def redis_ping(url: str) -> bool:
    """True if the Redis at `url` answers PING."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S,
                                     socket_timeout=PROBE_TIMEOUT_S)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


def _exited_error(child: ChildProcess, when: str) -> DevError:
    tail = read_log_tail(child.log_path, child.log_offset)
    shown = f"; last lines of {child.log_path}:\n{tail}" if tail else f"; see {child.log_path}"
    return DevError(f"{child.name} (pid {child.pid}) exited with code {child.returncode} {when}{shown}")


async def wait_healthy(child: ChildProcess, probe: Probe, timeout_s: float) -> None:
    """Poll `probe` until it passes; fail fast if the child exits, or after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if not child.running:
            raise _exited_error(child, "during start-up")
        if await probe():
            child.healthy = True
            logger.info("%s is healthy", child.name)
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise DevError(f"{child.name} (pid {child.pid}) not healthy within {timeout_s:.0f}s; "
                           f"see {child.log_path}")
        await asyncio.sleep(HEALTH_POLL_INTERVAL_S)


async def wait_external_redis(url: str, timeout_s: float) -> None:
    """Wait for an existing Redis (--redis-url) to answer PING."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await redis_ping(url):
        if asyncio.get_running_loop().time() >= deadline:
            raise DevError(f"Redis at {mask_url(url)} does not answer PING")
        await asyncio.sleep(HEALTH_POLL_INTERVAL_S)


async def gather_or_cancel(*aws: Awaitable[Any]) -> list[Any]:
    """Like `asyncio.gather`, but the first failure cancels (and awaits) the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --------------------------------------------------------------------------------- DevCluster


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
            self._fail(str(_exited_error(child, "during start-up")))
            return
        logger.error("%s (pid %s) exited unexpectedly with code %s; see %s",
                     child.name, proc.pid, code, child.log_path)
        self.write_cluster_json()
        if self.spec.restart and child.role == "worker":
            await self._auto_restart(child)
        else:
            self._fail(str(_exited_error(child, "unexpectedly")))

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


# ---------------------------------------------------------------------------------- run_dev


def ready_line(cluster: DevCluster) -> str:
    """The one line printed on stdout once the whole cluster is healthy."""
    spec = cluster.spec
    return (f"shardgate dev ready: ingress {cluster.ingress_url} admin {cluster.admin_url} "
            f"redis {mask_url(cluster.redis_url)} workers {len(cluster.workers)} "
            f"partitions {spec.partitions} (data {spec.data_dir}, logs {spec.data_dir / 'logs'})")


def _install_signal_handlers(stop: asyncio.Event, cluster: DevCluster) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            logger.warning("%s again: killing all children", signame)
            cluster.kill_all()
            return
        logger.info("%s received: stopping the cluster", signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)


def _remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


async def _first(*aws: Awaitable[Any]) -> int:
    """Run the awaitables concurrently; return the index of the first to finish, cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(i for i, t in enumerate(tasks) if t in done)
    tasks[first].result()
    return first


async def run_dev(spec: ClusterSpec) -> int:
    """Run the cluster in the foreground until Ctrl-C/SIGTERM (0) or a failure (1)."""
    try:
        cluster = DevCluster(spec)
    except DevError as exc:
        logger.error("%s", exc)
        return 2
    stop = asyncio.Event()
    _install_signal_handlers(stop, cluster)
    try:
        if await _first(stop.wait(), cluster.start()) == 0:
            return 0
        print(ready_line(cluster), flush=True)
        if await _first(stop.wait(), cluster.failed.wait()) == 1:
            logger.error("stopping the cluster: %s", cluster.failure_reason)
            return 1
        return 0
    except DevError:
        return 1  # logged by DevCluster.start before it stopped the children
    except OSError as exc:
        logger.error("shardgate dev failed: %s", exc)
        return 1
    finally:
        await cluster.stop()
        _remove_signal_handlers()


# ------------------------------------------------------------------------------------- CLI


def _port_list(value: str) -> list[int]:
    try:
        return [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of ports, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shardgate dev` options."""
    add = parser.add_argument
    add("--workers", type=int, default=2, help="partition workers to start (default 2)")
    add("--ingress-port", type=int, default=8080, help="ingress API port (default 8080; 0 = free)")
    add("--admin-port", type=int, default=9070, help="admin API port (default 9070; 0 = free)")
    add("--partitions", type=int, default=64, help="partition count (default 64)")
    add("--data-dir", type=Path, default=Path(".shardgate-data"),
        help="Redis AOF, logs and cluster.json (default ./.shardgate-data)")
    add("--redis-url", default=None, help="use this existing Redis instead of starting redis-server")
    add("--redis-port", type=int, default=0, help="port of the started redis-server (default: free)")
    add("--worker-grpc-ports", type=_port_list, default=[], help="comma list, one per worker (default: free)")
    add("--worker-metrics-ports", type=_port_list, default=[],
        help="comma list, one per worker (default: free)")
    add("--lease-ttl-ms", type=int, default=None, help="SHARDGATE_LEASE_TTL_MS for the workers")
    add("--log-level", default="INFO", type=str.upper, help="log level of supervisor and children")
    add("--appendfsync", choices=APPENDFSYNC_CHOICES, default="always", help="Redis AOF fsync policy")
    add("--restart", action="store_true", help="restart workers that die instead of stopping")
    add("--start-timeout", type=float, default=30.0, help="seconds each process may take to be healthy")
    add("--pythonpath", default=os.environ.get(PYTHONPATH_ENV, ""), help=argparse.SUPPRESS)


def spec_from_args(args: argparse.Namespace) -> ClusterSpec:
    """Build a ClusterSpec from parsed `shardgate dev` arguments."""
    return ClusterSpec(
        workers=args.workers, ingress_port=args.ingress_port, admin_port=args.admin_port,
        partitions=args.partitions, data_dir=args.data_dir, redis_url=args.redis_url,
        redis_port=args.redis_port, worker_grpc_ports=args.worker_grpc_ports,
        worker_metrics_ports=args.worker_metrics_ports, lease_ttl_ms=args.lease_ttl_ms,
        log_level=args.log_level, appendfsync=args.appendfsync, restart=args.restart,
        start_timeout_s=args.start_timeout, pythonpath=args.pythonpath,
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of `shardgate dev` (arguments parsed by shardgate.cli)."""
    return asyncio.run(run_dev(spec_from_args(args)))
