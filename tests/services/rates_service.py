"""Test deployment for the rate-limit tests (`tests/e2e/test_scope_rates.py`).

Served with:  RATES_LOG_DIR=/some/dir hypercorn tests.services.rates_service:app --bind 127.0.0.1:9083
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11); one hypercorn process (one event loop).

Services
  Paced  (Service)
      work(req)   req = {"token", "ms"}: appends "<token> <wall-clock ms>" to `<RATES_LOG_DIR>/starts`
                  the moment an attempt starts (one line, O_APPEND), waits `ms` milliseconds (plain
                  asyncio sleep, no journal entry) and returns the token, so a test sees from outside
                  when each invocation began to run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import restate
from restate import Context

LOG_DIR_ENV = "RATES_LOG_DIR"


def read_starts(directory: Path) -> list[tuple[str, float]]:
    """(token, wall-clock ms) of every attempt start, in the order they were written."""
    path = directory / "starts"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        token, _, at_ms = line.partition(" ")
        out.append((token, float(at_ms)))
    return out


def _append_start(token: str) -> None:
    line = f"{token} {time.time() * 1000:.3f}\n"
    fd = os.open(Path(os.environ[LOG_DIR_ENV]) / "starts", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


paced = restate.Service("Paced")


@paced.handler()
async def work(ctx: Context, req: dict[str, Any]) -> str:
    _append_start(str(req["token"]))
    await asyncio.sleep(int(req["ms"]) / 1000)
    return str(req["token"])


app = restate.app(services=[paced])
