"""Recording deployment for the schedule tests (`tests/e2e/test_schedules.py`, `deploy/bench/schedules.py`).

Served with:  SCHEDULE_RECORD_FILE=/some/file hypercorn tests.services.schedule_service:app --bind 127.0.0.1:9082
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11)

Services
  Recorder  (Service)
      tick(body)   appends one JSON line per attempt to $SCHEDULE_RECORD_FILE: the schedule id and
                   the tick's nominal time (the `x-shardgate-schedule-id` / `-tick` headers the
                   schedule loop adds), the invocation id, the wall-clock ms of the attempt and the
                   body; returns "ok". One `write` of an O_APPEND file per line, so concurrent
                   attempts never interleave. A tick whose attempt is retried after a crash appears
                   twice with the same invocation id (an attempt, not a second start).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import restate
from restate import Context

RECORD_FILE_ENV = "SCHEDULE_RECORD_FILE"
SCHEDULE_ID_HEADER = "x-shardgate-schedule-id"
SCHEDULE_TICK_HEADER = "x-shardgate-schedule-tick"

recorder = restate.Service("Recorder")


def _record(line: dict[str, Any]) -> None:
    fd = os.open(os.environ[RECORD_FILE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


@recorder.handler()
async def tick(ctx: Context, body: Any = None) -> str:
    req = ctx.request()
    _record({"schedule": req.headers.get(SCHEDULE_ID_HEADER), "tick": req.headers.get(SCHEDULE_TICK_HEADER),
             "id": req.id, "at_ms": time.time_ns() // 1_000_000, "body": body})
    return "ok"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every line recorded so far (a line still being written is left out)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line]


app = restate.app(services=[recorder])
