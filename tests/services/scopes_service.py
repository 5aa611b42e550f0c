"""Test deployment for the flow-control tests (`tests/e2e/test_scopes.py`).

Served with:  SCOPES_LOG_DIR=/some/dir hypercorn tests.services.scopes_service:app --bind 127.0.0.1:9082
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11); one hypercorn process (one event loop).

Services
  Gate  (Service)
      work(req)   req = {"token", "ms"}: counts itself running for `ms` milliseconds (plain asyncio
                  sleep, no journal entry), then returns the token. The deployment keeps how many
                  `work` calls run at once; every time that number reaches a new high it writes it to
                  `<SCOPES_LOG_DIR>/peak`, and every finished call appends its token to
                  `<SCOPES_LOG_DIR>/done` (one line, O_APPEND), so the tests see from outside the
                  highest concurrency the deployment saw and how often each token ran.
  Tally (VirtualObject)
      add(n)      exclusive  count += n; returns the new count (state per object key, and per scope).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import restate
from restate import Context, ObjectContext

LOG_DIR_ENV = "SCOPES_LOG_DIR"


class _Gauge:
    """How many `work` calls run now, and the highest that ever was (written to `peak`)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    def enter(self) -> None:
        self.running += 1
        if self.running > self.peak:
            self.peak = self.running
            _write(log_dir() / "peak", str(self.peak))

    def leave(self) -> None:
        self.running -= 1


def log_dir() -> Path:
    return Path(os.environ[LOG_DIR_ENV])


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _append_done(token: str) -> None:
    fd = os.open(log_dir() / "done", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)


def read_peak(directory: Path) -> int:
    """The highest number of `work` calls that ran at once (0 before the first)."""
    path = directory / "peak"
    return int(path.read_text()) if path.exists() else 0


def read_done(directory: Path) -> list[str]:
    """Every finished `work` call's token, in finishing order."""
    path = directory / "done"
    return path.read_text().split() if path.exists() else []


GAUGE = _Gauge()
gate = restate.Service("Gate")
tally = restate.VirtualObject("Tally")


@gate.handler()
async def work(ctx: Context, req: dict[str, Any]) -> str:
    GAUGE.enter()
    try:
        await asyncio.sleep(int(req["ms"]) / 1000)
    finally:
        GAUGE.leave()
    _append_done(str(req["token"]))
    return str(req["token"])


@tally.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int) or 0) + n
    ctx.set("count", count)
    return int(count)


app = restate.app(services=[gate, tally])
