"""The deliberately slow deployment of `backlog.py` (served by hypercorn from this directory).

    BACKLOG_HOLD_S=5 BACKLOG_RETENTION_S=5 python -m hypercorn backlog_service:app --bind 127.0.0.1:9085

Slow (Service)
    hold(req)   holds the attempt BACKLOG_HOLD_S seconds with a plain asyncio.sleep (not a durable
                sleep: the attempt stays open, as with a slow downstream), then returns req.
Results and journals are kept BACKLOG_RETENTION_S seconds (idempotency retention) and not at all
(journal retention 0), so the Redis key count goes back to its baseline soon after the load.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import restate
from restate import Context

HOLD_S = float(os.environ.get("BACKLOG_HOLD_S", "5"))
RETENTION_S = float(os.environ.get("BACKLOG_RETENTION_S", "5"))

slow = restate.Service("Slow", idempotency_retention=timedelta(seconds=RETENTION_S),
                       journal_retention=timedelta(0), inactivity_timeout=timedelta(minutes=10),
                       abort_timeout=timedelta(minutes=10))


@slow.handler()
async def hold(ctx: Context, req: int) -> int:
    await asyncio.sleep(HOLD_S)
    return req


app = restate.app(services=[slow])
