"""Shared fixtures: a real restate-sdk deployment (`tests/services/conformance_service.py`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_STARTUP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def sdk_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the conformance services (Greeter, Counter, Signup) with hypercorn over HTTP/1.1.

    Yields the deployment's base URL, e.g. `http://127.0.0.1:41234`.
    """
    port = _free_port()
    log_path = tmp_path_factory.mktemp("sdk") / "hypercorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "tests.services.conformance_service:app",
         "--bind", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SDK_STARTUP_TIMEOUT_S
    try:
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SDK deployment did not start, see {log_path}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
