"""`ChildProcess`: one supervised OS process, spawned in its own process group, and its log.

Children run in their own session (process group); on Linux each child also gets SIGTERM if the
supervisor dies (a small `prctl(PR_SET_PDEATHSIG)` shim that then execs the real program).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgtools.dev.backoff import RestartBackoff
from sgtools.dev.errors import DevError

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20

# Run as `python -c SHIM <parent-pid> <argv...>`: ask the kernel to SIGTERM the child when the
# supervisor dies (PR_SET_PDEATHSIG = 1), then exec the real program in place (same pid).
_PDEATHSIG_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@dataclass
class ChildProcess:
    """One supervised process: how to start it, where it logs, and its current OS process."""

    role: str
    """"redis", "worker", "ingress" or "load-balancer"."""
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    expected_exit: bool = False
    """Set when the supervisor (or a test) stops it on purpose, so its exit is not a failure."""
    restarts: int = 0
    """Automatic restarts so far (attempts, counting ones that did not get healthy)."""
    healthy: bool = False
    """The current process passed its health check (False again once it exits)."""
    log_offset: int = 0
    backoff: RestartBackoff = field(default_factory=RestartBackoff, repr=False, compare=False)
    """When to restart it after it dies."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    """Held while the supervisor or a test hook replaces the process, so two never race."""

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


def sweep_group(child: ChildProcess) -> None:
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
    sweep_group(child)
    return proc.returncode


def exited_error(child: ChildProcess, when: str) -> DevError:
    tail = read_log_tail(child.log_path, child.log_offset)
    shown = f"; last lines of {child.log_path}:\n{tail}" if tail else f"; see {child.log_path}"
    return DevError(f"{child.name} (pid {child.pid}) exited with code {child.returncode} {when}{shown}")
