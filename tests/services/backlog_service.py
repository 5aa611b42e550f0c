"""Test deployment for the worker's memory bound (`tests/integration/test_backlog.py`).

Served with:  BACKLOG_GATE_DIR=/some/dir hypercorn tests.services.backlog_service:app --bind 127.0.0.1:9086

Gate (Service)
    hold(req)   req = an int: appends it to `<dir>/started`, holds the attempt (plain asyncio, not a
                durable sleep) until the file `<dir>/open` exists, appends it to `<dir>/done` and
                returns it. Every line of `done` is one real execution.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import restate
from restate import Context

GATE_DIR_ENV = "BACKLOG_GATE_DIR"
POLL_S = 0.02

gate = restate.Service("Gate")


def _append(name: str, value: int) -> None:
    with open(Path(os.environ[GATE_DIR_ENV]) / name, "a") as f:
        f.write(f"{value}\n")


@gate.handler()
async def hold(ctx: Context, req: int) -> int:
    _append("started", req)
    opened = Path(os.environ[GATE_DIR_ENV]) / "open"
    while not opened.exists():
        await asyncio.sleep(POLL_S)
    _append("done", req)
    return req


app = restate.app(services=[gate])


def lines(gate_dir: Path, name: str) -> list[int]:
    """The ints appended to `<gate_dir>/<name>` so far."""
    path = gate_dir / name
    return [int(x) for x in path.read_text().split()] if path.exists() else []
