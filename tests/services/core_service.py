"""Test deployment for `tests/e2e/test_core_fixes.py` (restate-sdk 1.2.0, served by hypercorn).

Served with:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.core_service:app --bind 127.0.0.1:9082

Services
  Wedge  (VirtualObject)
      fail_always(name)  exclusive; bumps counter `name` (one per attempt, outside any ctx.run) and
                         raises a retryable error. Its retry policy gives up after 3 attempts with
                         on_max_attempts="kill", so the invocation completes with the failure.
      ok(name)           exclusive; returns counter `name`: how many attempts of fail_always ran
                         before it (it waits for the key's lock like any exclusive handler).

The counters are the crash-safe file counters of `durable_service.py`.
"""

from __future__ import annotations

from datetime import timedelta

import restate
from restate import ObjectContext
from restate.retry_policy import InvocationRetryPolicy

from tests.services.durable_service import bump_counter, read_counter

KILL_AFTER_ATTEMPTS = 3
KILL_POLICY = InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=300),
    exponentiation_factor=2.0,
    max_interval=timedelta(seconds=1),
    max_attempts=KILL_AFTER_ATTEMPTS,
    on_max_attempts="kill",
)

wedge = restate.VirtualObject("Wedge")


@wedge.handler(invocation_retry_policy=KILL_POLICY)
async def fail_always(ctx: ObjectContext, name: str) -> str:
    attempt = bump_counter(name)
    raise RuntimeError(f"failing attempt {attempt}")


@wedge.handler()
async def ok(ctx: ObjectContext, name: str) -> int:
    return read_counter(name)


app = restate.app(services=[wedge])
