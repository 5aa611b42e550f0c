"""Side-by-side comparison of shardgate and the real Restate server on this machine. Not a test.

It installs (once, into `.cache/compare/`) Restate 1.7.12 from npm (`@restatedev/restate-server`) and
the TypeScript SDK (`@restatedev/restate-sdk` 1.17.2, or the nearest version npm has), then starts,
all on free 127.0.0.1 ports with fresh data dirs:

  * the real Restate server (one process),
  * a `shardgate dev` cluster (2 workers, 1 ingress, Redis),
  * the deployments: `deploy/bench/ts/service.js` under node (HTTP/1.1 request-response, or with
    `--transport h2c` h2c only) and/or the Python SDK app `tests.services.conformance_service:app`
    under hypercorn,

registers each deployment with both servers (with `use_http_11`, or for h2c), and runs the same `shardgate bench` closed
loop against each server in alternating rounds (shardgate, Restate, shardgate, Restate ...). Per round
it records req/s, p50/p99 and the server CPU per request: utime+stime from /proc of every server
process (Restate's one process; shardgate's workers, ingress and Redis from cluster.json), read
before and after the round and divided by the requests the bench completed, plus the servers' RSS.
For sends the "after" reading waits until the servers are idle again, so the CPU counts executing
what was accepted; "executed/s" is accepted / (bench time + time to drain).

    .venv/bin/python deploy/bench/compare.py --deployment both --rounds 2 --duration 8 --connections 32
    make compare ARGS="--scenario both --json compare.json"

Every process it starts is stopped on success, on error and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
TS_SOURCE_DIR = Path(__file__).resolve().parent / "ts"
CACHE_DIR = REPO_ROOT / ".cache" / "compare"
RESTATE_VERSION = "1.7.12"
TS_SDK_SPECS = ("1.17.2", "~1.17.0", "^1.17.0", "^1")
"""npm specs of @restatedev/restate-sdk tried in order: the measured version, then the nearest ones."""
PY_APP = "tests.services.conformance_service:app"
TARGET = "Greeter/greet"
SERVERS = ("shardgate", "restate")
ALL_SERVERS = ("shardgate", "baseline", "restate")  # the order of a table's columns
SERVER_TITLES = {"shardgate": "shardgate (2 workers, 1 ingress, Redis)", "restate": f"Restate {RESTATE_VERSION}"}
DEPLOYMENT_TITLES = {"ts": "TypeScript SDK deployment (node)", "py": "Python SDK deployment (hypercorn)"}
TRANSPORT_TITLES = {"http1": "registered with use_http_11: HTTP/1.1 request-response",
                    "h2c": "registered for h2c: both bidirectional where the SDK says BIDI_STREAM (shardgate: "
                           "SHARDGATE_BIDI=auto, decision 41)"}

START_TIMEOUT_S = 90.0
REGISTER_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 45.0
NPM_TIMEOUT_S = 600.0
BENCH_GRACE_S = 90.0
QUIET_WINDOW_S = 0.5
QUIET_CPU_FRACTION = 0.10
"""The servers count as idle when they used under this fraction of one core over QUIET_WINDOW_S."""
DRAIN_TIMEOUT_S = 180.0
WARMUP_S = 2.0
PR_SET_PDEATHSIG = 1


T = TypeVar("T")


class CompareError(RuntimeError):
    """Something the comparison needs failed (install, start, register, bench)."""


# ---------------------------------------------------------------------------------- pure: /proc


def parse_stat_cpu_ticks(stat_line: str) -> int:
    """utime + stime (clock ticks) of one `/proc/<pid>/stat` line; raises ValueError if malformed.

    The command name (field 2) is in parentheses and may contain spaces or ')', so the fields are
    counted after the last ')': state is field 3, utime field 14, stime field 15.
    """
    close = stat_line.rfind(")")
    if close < 0:
        raise ValueError(f"not a /proc/<pid>/stat line: {stat_line[:80]!r}")
    rest = stat_line[close + 1:].split()
    if len(rest) < 13:
        raise ValueError(f"/proc/<pid>/stat line too short: {stat_line[:80]!r}")
    return int(rest[11]) + int(rest[12])


def read_cpu_ticks(proc_root: Path, pid: int) -> int:
    """utime + stime of process `pid` (all its threads) from `<proc_root>/<pid>/stat`; 0 if it is gone."""
    try:
        return parse_stat_cpu_ticks((proc_root / str(pid) / "stat").read_text())
    except FileNotFoundError:
        return 0


def cpu_seconds(pids: Sequence[int], proc_root: Path = Path("/proc"), ticks_per_s: int | None = None) -> float:
    """CPU seconds (user + system) used so far by all `pids` together."""
    hz = ticks_per_s or os.sysconf("SC_CLK_TCK")
    return sum(read_cpu_ticks(proc_root, pid) for pid in pids) / hz


def read_ppid(proc_root: Path, pid: int) -> int | None:
    """The parent pid of `pid` (field 4 of its stat line), None if it is gone or unreadable."""
    try:
        line = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    rest = line[line.rfind(")") + 1:].split()
    return int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else None


def process_tree(pid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """`pid` and all its descendants (found by the parent pid of every process under `proc_root`)."""
    parents: dict[int, list[int]] = {}
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            ppid = read_ppid(proc_root, int(entry.name))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry.name))
    tree: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(sorted(parents.get(current, [])))
    return tree


def read_rss_bytes(proc_root: Path, pid: int) -> int:
    """Resident set size of `pid` from the VmRSS line of `<proc_root>/<pid>/status`; 0 if gone."""
    try:
        text = (proc_root / str(pid) / "status").read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            return int(value) * (1024 if unit.lower() == "kb" else 1)
    return 0


def rss_bytes(pids: Sequence[int], proc_root: Path = Path("/proc")) -> int:
    """RSS of all `pids` together, in bytes."""
    return sum(read_rss_bytes(proc_root, pid) for pid in pids)


def cluster_server_pids(cluster: Mapping[str, Any]) -> list[int]:
    """The pids of every live process of a `shardgate dev` cluster.json (workers, ingress, Redis...);
    the supervisor itself serves nothing and is not included."""
    return [int(p["pid"]) for p in cluster.get("processes", []) if p.get("pid") is not None]


def cpu_ms_per_request(cpu_before_s: float, cpu_after_s: float, requests: int) -> float | None:
    """Milliseconds of CPU per completed request; None when nothing completed."""
    if requests <= 0:
        return None
    return round((cpu_after_s - cpu_before_s) * 1000.0 / requests, 3)


# --------------------------------------------------------------------------------- pure: results


@dataclass
class RoundResult:
    """One bench run of one scenario against one server."""

    deployment: str
    scenario: str
    server: str
    round: int
    requests: int
    ok: int
    elapsed_s: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_ms_per_request: float | None
    deployment_cpu_ms_per_request: float | None
    rss_mb: float
    drain_s: float = 0.0
    executed_rps: float | None = None
    bench: dict[str, Any] = field(default_factory=dict)


def result_from_bench(summary: Mapping[str, Any], *, deployment: str, scenario: str, server: str,
                      round_no: int, server_cpu_s: float, deployment_cpu_s: float, rss: int,
                      drain_s: float = 0.0) -> RoundResult:
    """A RoundResult from a `shardgate bench --json` summary and the /proc deltas of that round."""
    ok = int(summary.get("ok", 0))
    elapsed_s = float(summary.get("elapsed_s", 0.0))
    lat = summary.get("latency_ms", {})
    executed = round(ok / (elapsed_s + drain_s), 1) if scenario == "send" and elapsed_s + drain_s > 0 else None
    return RoundResult(
        deployment=deployment, scenario=scenario, server=server, round=round_no,
        requests=int(summary.get("requests", 0)), ok=ok, elapsed_s=elapsed_s,
        rps=float(summary.get("ok_rps", 0.0)), p50_ms=lat.get("p50"), p99_ms=lat.get("p99"),
        errors=int(summary.get("errors", {}).get("total", 0)),
        cpu_ms_per_request=cpu_ms_per_request(0.0, server_cpu_s, ok),
        deployment_cpu_ms_per_request=cpu_ms_per_request(0.0, deployment_cpu_s, ok),
        rss_mb=round(rss / 2**20, 1), drain_s=round(drain_s, 2), executed_rps=executed, bench=dict(summary),
    )


def _number(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def format_range(values: Sequence[float | None], unit: str = "", decimals: int = 0) -> str:
    """`528-890 req/s` over the rounds (`890 req/s` when all equal, `-` when none; `861/s` for a unit
    that starts with '/')."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high = min(present), max(present)
    text = _number(low, decimals) if _number(low, decimals) == _number(high, decimals) else \
        f"{_number(low, decimals)}-{_number(high, decimals)}"
    return f"{text}{unit}" if unit.startswith("/") else f"{text} {unit}".rstrip()


def _latency_cell(results: Sequence[RoundResult]) -> str:
    p50 = format_range([r.p50_ms for r in results], decimals=1)
    p99 = format_range([r.p99_ms for r in results], decimals=1)
    return "-" if p50 == p99 == "-" else f"{p50} / {p99} ms"


def _rows_for(scenario: str, by_server: Mapping[str, Sequence[RoundResult]],
              servers: Sequence[str] = SERVERS, target: str = TARGET) -> list[tuple[str, list[str]]]:
    """(label, one cell per server) rows of one scenario."""
    def cells(fn: Callable[[Sequence[RoundResult]], str]) -> list[str]:
        return [fn(by_server.get(s, [])) for s in servers]

    if scenario == "call":
        rows = [(f"call {target}", cells(lambda rs: format_range([r.rps for r in rs], "req/s")))]
    else:
        rows = [("send, accepted", cells(lambda rs: format_range([r.rps for r in rs], "/s"))),
                ("send, executed (accepted / (bench + drain))",
                 cells(lambda rs: format_range([r.executed_rps for r in rs], "/s")))]
    noun = "call" if scenario == "call" else "send (executed)"
    rows += [
        (f"{scenario} p50 / p99", cells(_latency_cell)),
        (f"server CPU per {noun} (all server processes, Redis included)",
         cells(lambda rs: format_range([r.cpu_ms_per_request for r in rs], "ms", 2))),
        (f"deployment CPU per {noun}", cells(lambda rs: format_range(
            [r.deployment_cpu_ms_per_request for r in rs], "ms", 2))),
        (f"{scenario} errors", cells(lambda rs: format_range([float(r.errors) for r in rs]))),
    ]
    return rows


def format_table(results: Sequence[RoundResult], settings: Mapping[str, Any]) -> str:
    """One markdown table per deployment: shardgate vs Restate (and the baseline tree, when one
    ran) per scenario, ranges over rounds."""
    servers = [s for s in ALL_SERVERS if s in SERVERS or any(r.server == s for r in results)]
    titles = {**SERVER_TITLES, "baseline": f"shardgate baseline ({settings.get('baseline', '?')})"}
    out: list[str] = []
    for deployment in dict.fromkeys(r.deployment for r in results):
        mine = [r for r in results if r.deployment == deployment]
        rounds = max(r.round for r in mine)
        described = settings.get("deployments", {}).get(deployment)
        title = DEPLOYMENT_TITLES.get(deployment, deployment) + (f", {described}" if described else "")
        title += f"; {TRANSPORT_TITLES.get(settings.get('transport', 'http1'), '?')}"
        out.append(f"{title}: {rounds} alternating rounds, "
                   f"{settings.get('duration_s', '?')} s each, {settings.get('connections', '?')} connections "
                   f"(ranges are min-max over rounds)")
        out.append("")
        out.append("| | " + " | ".join(titles[s] for s in servers) + " |")
        out.append("|---|" + "---|" * len(servers))
        for scenario in dict.fromkeys(r.scenario for r in mine):
            by_server: dict[str, list[RoundResult]] = {}
            for r in mine:
                if r.scenario == scenario:
                    by_server.setdefault(r.server, []).append(r)
            for label, cells in _rows_for(scenario, by_server, servers, settings.get("target", TARGET)):
                out.append(f"| {label} | " + " | ".join(cells) + " |")
        rss = [format_range([r.rss_mb for r in mine if r.server == s], "MB") for s in servers]
        out.append("| RSS of the server processes | " + " | ".join(rss) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def round_plan(deployments: Sequence[str], rounds: int, scenarios: Sequence[str],
               servers: Sequence[str] = SERVERS) -> list[tuple[str, int, str, str]]:
    """(deployment, round, scenario, server) in run order: per deployment and round, each scenario
    against shardgate then Restate (then the baseline), so the servers alternate (A, B, A, B ...)."""
    return [(d, n, sc, server) for d in deployments for n in range(1, rounds + 1) for sc in scenarios
            for server in servers]


# ---------------------------------------------------------------------------------- processes


_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""`python -c` program: have the kernel SIGTERM this process when its parent (this script) dies, then
exec the real argv in place (same pid), so nothing outlives a killed comparison."""


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so it gets SIGTERM if this script dies (Linux); unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


@dataclass
class Started:
    """A process this script started: its Popen, name and log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        """The last `chars` characters of its log ('' if unreadable)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Processes:
    """Starts children in their own sessions and stops every one of them, newest first."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], log_path: Path, *, cwd: Path = REPO_ROOT,
              env: Mapping[str, str] | None = None) -> Started:
        """Spawn `argv` with stdout+stderr to `log_path`; raises CompareError if it cannot be run."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen(die_with_parent(argv), cwd=cwd, env=dict(env or os.environ),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                raise CompareError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        started = Started(name, proc, log_path)
        self.started.append(started)
        return started

    def stop(self, child: Started, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM its process group, wait up to `timeout_s`, then SIGKILL."""
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.proc.wait()
        if child in self.started:
            self.started.remove(child)

    def stop_all(self) -> None:
        """Stop every child still registered, the last started first."""
        for child in reversed(list(self.started)):
            self.stop(child)


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def http_json(url: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """GET (body None) or POST JSON; (status, decoded body or text). Raises OSError on transport errors."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"accept": "application/json"}  # Restate's /query answers Arrow without it
    if data is not None:
        headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, status = resp.read(), int(resp.status)
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), int(exc.code)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def tcp_open(port: int) -> bool:
    """True if something accepts connections on 127.0.0.1:port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True
    return False


def wait_until(what: str, probe: Callable[[], bool], timeout_s: float, child: Started | None = None) -> None:
    """Poll `probe` until true; raises CompareError on timeout or when `child` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            if probe():
                return
        if child is not None and child.proc.poll() is not None:
            raise CompareError(f"{child.name} exited with {child.proc.returncode} while waiting for {what}; "
                               f"log {child.log_path}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"; log {child.log_path}:\n{child.log_tail()}" if child else ""
            raise CompareError(f"timed out after {timeout_s:.0f}s waiting for {what}{tail}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------- installing


def run_npm(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`npm <args>` in `cwd`; raises CompareError when npm is missing."""
    npm = shutil.which("npm")
    if npm is None:
        raise CompareError("npm is not on PATH (install nodejs and npm, e.g. apt-get install nodejs npm)")
    return subprocess.run([npm, *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd,
                          capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)


def installed_version(node_modules: Path, package: str) -> str | None:
    """The version of `package` under `node_modules`, None if not installed."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return str(json.loads((node_modules / package / "package.json").read_text())["version"])
    return None


def restate_platform() -> str:
    """The npm platform suffix of the restate-server binary package; raises CompareError."""
    machine = os.uname().machine
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if arch is None or not sys.platform.startswith("linux"):
        raise CompareError(f"no restate-server npm binary for {sys.platform}/{machine}")
    return f"linux-{arch}"


def install_restate(cache: Path) -> Path:
    """Install @restatedev/restate-server@RESTATE_VERSION under `cache/restate`; the binary's path."""
    root = cache / "restate"
    root.mkdir(parents=True, exist_ok=True)
    binary = root / "node_modules" / "@restatedev" / f"restate-server-{restate_platform()}" / "bin" / "restate-server"
    if binary.exists() and installed_version(root / "node_modules", "@restatedev/restate-server") == RESTATE_VERSION:
        return binary
    if not (root / "package.json").exists():
        (root / "package.json").write_text('{"name": "compare-restate-server", "private": true}\n')
    print(f"compare: installing @restatedev/restate-server@{RESTATE_VERSION} into {root}", file=sys.stderr)
    done = run_npm(["install", f"@restatedev/restate-server@{RESTATE_VERSION}"], root)
    if done.returncode != 0 or not binary.exists():
        raise CompareError(f"npm install @restatedev/restate-server@{RESTATE_VERSION} failed "
                           f"({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return binary


def install_ts_deployment(cache: Path) -> tuple[Path, str]:
    """Copy deploy/bench/ts into `cache/ts` and install the TypeScript SDK there (the first of
    TS_SDK_SPECS that npm accepts); returns (service.js in the cache, installed SDK version)."""
    root = cache / "ts"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TS_SOURCE_DIR / "service.js", root / "service.js")
    package = "@restatedev/restate-sdk"
    version = installed_version(root / "node_modules", package)
    if version is not None:
        return root / "service.js", version
    manifest = json.loads((TS_SOURCE_DIR / "package.json").read_text())
    refusals: list[str] = []
    for spec in TS_SDK_SPECS:
        print(f"compare: installing {package}@{spec} into {root}", file=sys.stderr)
        manifest["dependencies"][package] = spec  # the cache's copy; deploy/bench/ts keeps the pinned one
        (root / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        done = run_npm(["install"], root)
        version = installed_version(root / "node_modules", package)
        if done.returncode == 0 and version is not None:
            if spec != TS_SDK_SPECS[0]:
                print(f"compare: npm refused {package}@{TS_SDK_SPECS[0]}; using {version}: "
                      + " | ".join(refusals), file=sys.stderr)
            return root / "service.js", version
        refusals.append(f"{spec}: {(done.stderr or done.stdout).strip()[-500:]}")
    raise CompareError(f"npm installed no {package}: " + " | ".join(refusals))


# ---------------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server under test: URLs and the pids whose CPU and RSS count as its own."""

    name: str
    ingress_url: str
    admin_url: str
    pids: list[int]


def restate_config(data_dir: Path, ingress_port: int, admin_port: int, node_port: int) -> str:
    """restate-server TOML: everything on 127.0.0.1, TCP only, no telemetry, data in `data_dir`."""
    return "\n".join([
        'node-name = "compare-node"',
        f'base-dir = "{data_dir}"',
        f'bind-address = "127.0.0.1:{node_port}"',
        f'advertised-address = "http://127.0.0.1:{node_port}/"',
        'listen-mode = "tcp"',
        "disable-telemetry = true",
        "",
        "[ingress]",
        f'bind-address = "127.0.0.1:{ingress_port}"',
        f'advertised-ingress-endpoint = "http://127.0.0.1:{ingress_port}/"',
        "",
        "[admin]",
        f'bind-address = "127.0.0.1:{admin_port}"',
        f'advertised-admin-endpoint = "http://127.0.0.1:{admin_port}/"',
        "",
    ])


def start_restate(procs: Processes, binary: Path, work: Path) -> Server:
    """Start restate-server with a fresh data dir; returns once admin and ingress answer."""
    ingress_port, admin_port, node_port = free_ports(3)
    conf = work / "restate.toml"
    conf.write_text(restate_config(work / "restate-data", ingress_port, admin_port, node_port))
    child = procs.start("restate-server", [str(binary), "-c", str(conf), "--no-logo"], work / "restate-server.log",
                        cwd=work)
    admin, ingress = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{ingress_port}"
    wait_until("restate admin /health", lambda: http_json(f"{admin}/health")[0] == 200, START_TIMEOUT_S, child)
    wait_until("restate ingress /restate/health", lambda: http_json(f"{ingress}/restate/health")[0] == 200,
               START_TIMEOUT_S, child)
    return Server("restate", ingress, admin, process_tree(child.pid))


def _python_env(root: Path = REPO_ROOT) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def start_shardgate(procs: Processes, work: Path, root: Path = REPO_ROOT, name: str = "shardgate") -> Server:
    """Start `shardgate dev` of the tree at `root` (this one by default; its modules go first on
    PYTHONPATH, this venv's packages serve both) on free ports with a fresh data dir; returns after
    its ready line."""
    data_dir = work / f"{name}-data"
    argv = [sys.executable, "-m", "sgtools.cli", "dev", "--data-dir", str(data_dir), "--ingress-port", "0",
            "--admin-port", "0", "--workers", "2", "--log-level", "WARNING"]
    child = procs.start(f"{name} dev", argv, work / f"{name}-dev.log", env=_python_env(root), cwd=root)
    wait_until(f"the {name} dev ready line", lambda: "shardgate dev ready:" in child.log_tail(100_000),
               START_TIMEOUT_S, child)
    cluster = json.loads((data_dir / "cluster.json").read_text())
    return Server(name, str(cluster["ingress_url"]), str(cluster["admin_url"]), cluster_server_pids(cluster))


@dataclass
class Deployment:
    """A running SDK deployment."""

    name: str
    url: str
    child: Started
    description: str

    @property
    def pid(self) -> int:
        return self.child.pid


def start_ts_deployment(procs: Processes, service_js: Path, sdk_version: str, work: Path,
                        h2c: bool = False) -> Deployment:
    """node service.js (from the cache, next to its node_modules) on a free port: over HTTP/1.1, or
    with `h2c` over h2c only (as the SDK's `endpoint().listen()`)."""
    node = shutil.which("node")
    if node is None:
        raise CompareError("node is not on PATH (install nodejs)")
    port = free_port()
    child = procs.start("ts deployment", [node, str(service_js)], work / "ts-deployment.log", cwd=service_js.parent,
                        env={**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "SERVE": "h2c" if h2c else "http1"})
    wait_until("the TypeScript deployment", lambda: tcp_open(port), START_TIMEOUT_S, child)
    transport = "h2c" if h2c else "HTTP/1.1"
    return Deployment("ts", f"http://127.0.0.1:{port}", child, f"@restatedev/restate-sdk {sdk_version} ({transport})")


def start_py_deployment(procs: Processes, work: Path) -> Deployment:
    """hypercorn serving the Python SDK conformance app on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = procs.start("py deployment", [sys.executable, "-m", "hypercorn", PY_APP, "--bind", f"127.0.0.1:{port}"],
                        work / "py-deployment.log", env=_python_env())
    wait_until("the Python deployment", lambda: http_json(f"{url}/health")[0] == 200, START_TIMEOUT_S, child)
    return Deployment("py", url, child, "restate-sdk (Python) under hypercorn")


def register(server: Server, deployment: Deployment, use_http_11: bool = True) -> None:
    """Register `deployment` with `server` (over HTTP/1.1, else h2c) and wait until Greeter/greet
    answers 200."""
    body: dict[str, Any] = {"uri": deployment.url, "force": True, "use_http_11": use_http_11}
    status, answer = http_json(f"{server.admin_url}/deployments", body, timeout_s=30.0)
    if status in (400, 409, 422):  # e.g. the new Greeter lacks handlers an earlier deployment had
        status, answer = http_json(f"{server.admin_url}/deployments", {**body, "breaking": True}, timeout_s=30.0)
    if status not in (200, 201):
        raise CompareError(f"{server.name}: registering {deployment.url} answered {status}: {answer}")
    wait_until(f"{server.name} to serve {TARGET}",
               lambda: http_json(f"{server.ingress_url}/restate/call/{TARGET}", "ready")[0] == 200,
               REGISTER_TIMEOUT_S)


# ------------------------------------------------------------------------------------- rounds


def wait_quiet(pids: Sequence[int], timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until `pids` use under QUIET_CPU_FRACTION of a core over QUIET_WINDOW_S (the backlog is
    done); returns the seconds until the busy time ended (not counting the final quiet window)."""
    started = time.monotonic()
    before = cpu_seconds(pids)
    while time.monotonic() - started < timeout_s:
        time.sleep(QUIET_WINDOW_S)
        after = cpu_seconds(pids)
        if after - before < QUIET_CPU_FRACTION * QUIET_WINDOW_S:
            return max(time.monotonic() - started - QUIET_WINDOW_S, 0.0)
        before = after
    return time.monotonic() - started


def run_bench(procs: Processes, server: Server, scenario: str, args: argparse.Namespace, log_path: Path,
              duration_s: float) -> dict[str, Any]:
    """`shardgate bench --json` against `server` (closed loop); its summary. Raises CompareError."""
    argv = [sys.executable, "-m", "sgtools.cli", "bench", "--url", server.ingress_url, "--target", args.target,
            "--mode", scenario, "--connections", str(args.connections), "--duration", str(duration_s), "--json"]
    out_path = log_path.with_suffix(".json")
    with out_path.open("wb") as out, log_path.open("wb") as err:
        try:
            proc = subprocess.Popen(die_with_parent(argv), cwd=REPO_ROOT, env=_python_env(), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as exc:
            raise CompareError(f"cannot run shardgate bench: {exc}") from exc
    child = Started(f"bench {server.name} {scenario}", proc, log_path)
    procs.started.append(child)
    try:
        proc.wait(duration_s + BENCH_GRACE_S)
    except subprocess.TimeoutExpired:
        raise CompareError(f"shardgate bench against {server.name} did not finish; see {log_path}") from None
    finally:
        procs.stop(child)
    try:
        return dict(json.loads(out_path.read_text()))
    except ValueError:
        raise CompareError(f"shardgate bench against {server.name} failed ({proc.returncode}): "
                           f"{child.log_tail()}") from None


def one_round(procs: Processes, server: Server, deployment: Deployment, scenario: str, round_no: int,
              args: argparse.Namespace, logs: Path) -> RoundResult:
    """Measure one bench run: /proc CPU of the server and the deployment before and after, RSS after."""
    wait_quiet(server.pids)
    deploy_pids = process_tree(deployment.pid)
    server_before, deploy_before = cpu_seconds(server.pids), cpu_seconds(deploy_pids)
    summary = run_bench(procs, server, scenario, args,
                        logs / f"bench-{deployment.name}-{scenario}-{server.name}-{round_no}.log", args.duration)
    drain_s = wait_quiet(server.pids) if scenario == "send" else 0.0
    server_after, deploy_after = cpu_seconds(server.pids), cpu_seconds(deploy_pids)
    return result_from_bench(summary, deployment=deployment.name, scenario=scenario, server=server.name,
                             round_no=round_no, server_cpu_s=server_after - server_before,
                             deployment_cpu_s=deploy_after - deploy_before, rss=rss_bytes(server.pids),
                             drain_s=drain_s)


def format_round(r: RoundResult) -> str:
    """One progress line on stderr per round."""
    extra = f" executed {r.executed_rps}/s (drain {r.drain_s}s)" if r.scenario == "send" else ""
    return (f"compare: {r.deployment} {r.scenario} round {r.round} {r.server:9s} {r.rps:8.1f} req/s "
            f"p50 {r.p50_ms} p99 {r.p99_ms} ms  cpu {r.cpu_ms_per_request} ms/req  deploy cpu "
            f"{r.deployment_cpu_ms_per_request} ms/req  rss {r.rss_mb} MB  errors {r.errors}{extra}")


def compare(args: argparse.Namespace, procs: Processes, work: Path, settings: dict[str, Any]) -> list[RoundResult]:
    """Install, start everything, register, run the alternating rounds; every RoundResult. Notes each
    deployment's description in `settings["deployments"]`."""
    cache = Path(args.cache_dir)
    deployments = ["ts", "py"] if args.deployment == "both" else [args.deployment]
    scenarios = ["call", "send"] if args.scenario == "both" else [args.scenario]
    binary = install_restate(cache)
    ts = install_ts_deployment(cache) if "ts" in deployments else None
    servers = {"shardgate": start_shardgate(procs, work), "restate": start_restate(procs, binary, work)}
    if args.baseline is not None:  # the same load against another tree (before / after a change)
        servers["baseline"] = start_shardgate(procs, work, args.baseline.resolve(), "baseline")
        settings["baseline"] = str(args.baseline)
    results: list[RoundResult] = []
    for name in deployments:
        h2c = args.transport == "h2c"
        deployment = (start_ts_deployment(procs, ts[0], ts[1], work, h2c) if name == "ts" and ts is not None
                      else start_py_deployment(procs, work))
        for server in servers.values():
            register(server, deployment, use_http_11=not h2c)
            run_bench(procs, server, "call", args, work / f"warmup-{name}-{server.name}.log", WARMUP_S)
        settings.setdefault("deployments", {})[name] = deployment.description
        for _, round_no, scenario, server_name in round_plan([name], args.rounds, scenarios, list(servers)):
            result = one_round(procs, servers[server_name], deployment, scenario, round_no, args, work)
            results.append(result)
            print(format_round(result), file=sys.stderr, flush=True)
        procs.stop(deployment.child)  # idle from now on: keep it off the next deployment's machine
    return results


# ----------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deployment", choices=("ts", "py", "both"), default="ts",
                    help="which SDK deployment to serve and register (default ts)")
    ap.add_argument("--transport", choices=("http1", "h2c"), default="http1",
                    help="how the servers reach the deployments: HTTP/1.1 request-response (use_http_11, the "
                         "default), or h2c, Restate's default (the TypeScript one then serves h2c only, and "
                         "Restate streams bidirectionally where the SDK says BIDI_STREAM)")
    ap.add_argument("--target", default=TARGET,
                    help=f"the handler called (default {TARGET}; both deployments also serve Greeter/with_run, "
                         "one ctx.run step; the TypeScript one Greeter/nap, a 100 ms sleep, and Greeter/relay, "
                         "a call to Greeter/greet)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario (default 3)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per bench run (default 10)")
    ap.add_argument("--connections", type=int, default=32, help="closed-loop connections (default 32)")
    ap.add_argument("--scenario", choices=("call", "send", "both"), default="both",
                    help="call (wait for the result), send (202) or both (default both)")
    ap.add_argument("--json", type=Path, default=None, help="also write every round's figures here")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help=f"install dir (default {CACHE_DIR})")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (data dirs and logs) afterwards")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also run shardgate from this checkout (e.g. `git worktree add DIR <rev>`), alternating "
                         "with the other two, for a before / after of a change")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        ap.error("--rounds and --connections must be >= 1, --duration > 0")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def run_dir(cache: Path, keep: bool) -> Iterator[Path]:
    """A fresh dir for data and logs, removed afterwards unless `keep` or the run failed."""
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / time.strftime("run-%Y%m%d-%H%M%S")
    work.mkdir()
    ok = False
    try:
        yield work
        ok = True
    finally:
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"compare: data and logs kept in {work}", file=sys.stderr)


def write_json(path: Path, results: Sequence[RoundResult], settings: Mapping[str, Any]) -> None:
    """Every round's figures (with the bench summaries) and the settings."""
    path.write_text(json.dumps({"settings": dict(settings), "rounds": [asdict(r) for r in results]}, indent=2))


def run_tool(tool: str, cache_dir: Path, keep: bool, body: Callable[[Processes, Path], T]) -> tuple[int, T | None]:
    """`body(procs, work)` in a fresh run dir (`run_dir`), every process it started stopped afterwards,
    also on SIGTERM and Ctrl-C; (0, its result), or (1, None) after a CompareError, (130, None)
    when interrupted, the reason printed on stderr as `<tool>: ...`."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    procs = Processes()
    try:
        with run_dir(cache_dir, keep) as work:
            try:
                return 0, body(procs, work)
            finally:
                procs.stop_all()
    except CompareError as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; every started process was stopped", file=sys.stderr)
        return 130, None
    finally:
        procs.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 on success, 1 on a CompareError, 130 on Ctrl-C / SIGTERM."""
    args = parse_args(argv)
    settings: dict[str, Any] = {"duration_s": args.duration, "connections": args.connections, "rounds": args.rounds,
                "transport": args.transport,
                "restate_version": RESTATE_VERSION, "target": args.target}
    code, results = run_tool("compare", Path(args.cache_dir), args.keep,
                             lambda procs, work: compare(args, procs, work, settings))
    if results is None:
        return code
    print(format_table(results, settings), end="", flush=True)
    if args.json is not None:
        write_json(args.json, results, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
