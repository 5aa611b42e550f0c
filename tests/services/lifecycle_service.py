"""Test deployment for `tests/e2e/test_lifecycle.py` (restate-sdk 1.2.0, served by hypercorn).

Served with:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.lifecycle_service:app --bind 127.0.0.1:9083

Services
  Job  (VirtualObject)
      hold(ms)           exclusive; durable sleep of `ms` (keeps the key's lock), returns "held".
      after(name)        exclusive; bumps counter `name` and returns it (runs once the lock is free).
      compensating(name) exclusive; durable sleep of 60 s; when cancelled, bumps counter `name` in a
                         ctx.run (the compensation) and lets the cancellation propagate.
      flaky(name)        exclusive; bumps counter `name` (one per attempt) and fails until the
                         counter file `<name>.ok` exists; its retry policy pauses after 2 attempts.
                         Returns the attempt that succeeded.
      nap_then_count(req) exclusive; req = {"name", "ms"}: durable sleep of `ms`, then bumps counter
                         `name` in a ctx.run and returns the count (the side effect of a run that
                         reached its end; never bumped by an attempt that only replays the sleep).
      await_word(label)  exclusive (label unused); creates an awakeable, keeps its id in the state
                         key "awakeable" (stored when the invocation suspends) and returns what
                         it is resolved with.
  Greet (Service)
      hello(name)        bumps counter `name` and returns "hello <name>".
      send_and_cancel(req)  req = {"name", "ms"}: sends hello(name) with a delay of `ms`, then
                         cancels it with ctx.cancel_invocation; returns the cancelled send's id.

The counters are the crash-safe file counters of `durable_service.py`.
"""

from __future__ import annotations

from datetime import timedelta

import restate
from restate import Context, ObjectContext, TerminalError
from restate.retry_policy import InvocationRetryPolicy

from tests.services.durable_service import bump_counter, read_counter

PAUSE_AFTER_ATTEMPTS = 2
PAUSE_POLICY = InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    exponentiation_factor=2.0,
    max_interval=timedelta(milliseconds=200),
    max_attempts=PAUSE_AFTER_ATTEMPTS,
    on_max_attempts="pause",
)

job = restate.VirtualObject("Job")
greet = restate.Service("Greet")


@job.handler()
async def hold(ctx: ObjectContext, ms: int) -> str:
    await ctx.sleep(timedelta(milliseconds=ms))
    return "held"


@job.handler()
async def after(ctx: ObjectContext, name: str) -> int:
    return bump_counter(name)


@job.handler()
async def compensating(ctx: ObjectContext, name: str) -> str:
    try:
        await ctx.sleep(timedelta(seconds=60))
    except TerminalError:
        await ctx.run("compensate", lambda: bump_counter(name))
        raise
    return "slept"


@job.handler(invocation_retry_policy=PAUSE_POLICY)
async def flaky(ctx: ObjectContext, name: str) -> int:
    attempt = bump_counter(name)
    if read_counter(f"{name}.ok") == 0:
        raise RuntimeError(f"failing attempt {attempt}")
    return attempt


@job.handler()
async def nap_then_count(ctx: ObjectContext, req: dict) -> int:
    await ctx.sleep(timedelta(milliseconds=req["ms"]))
    return await ctx.run("count", lambda: bump_counter(req["name"]))


@job.handler()
async def await_word(ctx: ObjectContext, label: str) -> str:
    awakeable_id, word = ctx.awakeable(type_hint=str)
    ctx.set("awakeable", awakeable_id)
    return await word


@greet.handler()
async def hello(ctx: Context, name: str) -> str:
    bump_counter(name)
    return f"hello {name}"


@greet.handler()
async def send_and_cancel(ctx: Context, req: dict) -> str:
    handle = ctx.service_send(hello, req["name"], send_delay=timedelta(milliseconds=req["ms"]))
    inv_id = await handle.invocation_id()
    ctx.cancel_invocation(inv_id)
    return inv_id


app = restate.app(services=[job, greet])
