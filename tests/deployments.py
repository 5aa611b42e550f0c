"""Serving real restate-sdk apps for tests: hypercorn subprocesses on free loopback ports."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def _serve(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, url: str,
           ready: Callable[[], bool], what: str) -> Iterator[str]:
    """Run `argv` until the block ends (SIGTERM, then SIGKILL after 10 s); yields `url` once
    `ready()`. Raises RuntimeError when it exits or is not ready within the startup timeout."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + SDK_STARTUP_TIMEOUT_S
        try:
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start, see {log_path}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serve_sdk_app(app: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Serve `module:attr` (a restate-sdk app) with hypercorn (HTTP/1.1 and h2c); yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _serve([sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"], REPO_ROOT,
                {**os.environ, **(env or {})}, log_path, url, lambda: healthy(url), f"SDK deployment {app}") as served:
        yield served

TS_SOURCE_DIR = REPO_ROOT / "deploy" / "bench" / "ts"  # service.js and the pinned package.json
TS_CACHE_DIR = REPO_ROOT / ".cache" / "tools" / "ts-deployment"
TS_INSTALL_TIMEOUT_S = 300.0


def ensure_ts_sdk(cache_dir: Path = TS_CACHE_DIR) -> Path:
    """A directory holding `service.js` beside a `node_modules` with the pinned TypeScript SDK,
    installed from npm on first use (under a lock). Raises RuntimeError when node or npm fail."""
    package = json.loads((TS_SOURCE_DIR / "package.json").read_text())
    version = package["dependencies"]["@restatedev/restate-sdk"]
    installed = cache_dir / "node_modules" / "@restatedev" / "restate-sdk" / "package.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not installed.is_file() or json.loads(installed.read_text())["version"] != version:
                shutil.copyfile(TS_SOURCE_DIR / "package.json", cache_dir / "package.json")
                done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                                      cwd=cache_dir, capture_output=True, text=True, timeout=TS_INSTALL_TIMEOUT_S,
                                      check=False)
                if done.returncode != 0 or not installed.is_file():
                    raise RuntimeError(f"npm install of @restatedev/restate-sdk@{version} failed: "
                                       f"{(done.stderr or done.stdout).strip()[-800:]}")
            shutil.copyfile(TS_SOURCE_DIR / "service.js", cache_dir / "service.js")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return cache_dir


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def serve_ts_app(root: Path, log_path: Path, h2c: bool) -> Iterator[str]:
    """Serve the TypeScript SDK deployment of `deploy/bench/ts/service.js` (Greeter: greet,
    with_run, noop, park) from `root` (see `ensure_ts_sdk`) under node: over h2c only, as the
    SDK's `endpoint().listen()` serves, or over HTTP/1.1 only. Yields its base URL."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "SERVE": "h2c" if h2c else "http1"}
    with _serve(["node", str(root / "service.js")], root, env, log_path, f"http://127.0.0.1:{port}",
                lambda: _listening(port), "the TypeScript deployment") as served:
        yield served
