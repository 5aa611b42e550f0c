"""Test deployments for `tests/e2e/test_behaviour_fixes.py` (restate-sdk 1.2.0, served by hypercorn).

Served with:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.behaviour_service:app --bind 127.0.0.1:9083
        and:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.behaviour_service:late_app --bind ...

The handlers mirror the probes the reference facts were measured with (Restate 1.7.12,
/tmp/reffacts/FACTS.md §1-§3).

`app` (registered first)
  Thrower  (Service)
      boom(x)          TerminalError("boom", 422, metadata={"k": "v"})
      boom_multi(x)    TerminalError("boom", 409, metadata={"k": "v", "other": "two"})
      boom_nometa(x)   TerminalError("boom", 422)
      boom_sorted(x)   TerminalError("boom", 400, metadata={"z": "1", "a": "2", "m": "3"})
      boom_empty(x)    TerminalError("boom", 400, metadata={})
      run_boom(x)      a ctx.run whose closure raises TerminalError("boom", 422, metadata={"k": "v"});
                       not caught, so the invocation fails with what the run journaled.
  Caller   (Service; every handler retries fast: 50 ms doubling to 400 ms, practically unbounded)
      call_boom(which)         ctx.generic_call("Thrower", which, '"x"'), catching the TerminalError:
                               {"caught": {"message", "status_code", "metadata"}}.
      call_boom_rethrow(which) the same call, not caught: the caller fails with the callee's error.
      send_to(spec)            spec = {"service", "handler", "arg"[, "delay_ms"]}: ctx.generic_send
                               (with send_delay when delay_ms is given); returns "sent".
      call_to(spec)            spec = {"service", "handler", "arg"}: awaits ctx.generic_call;
                               {"result": <callee output as text>} or {"caught": ...}.
  Partial  (Service)
      present(x)       returns "present got <x>".

`late_app` (registered later by the tests, so that a target appears)
  Ghost    (Service)   hello(x): bumps counter "Ghost/hello:<x>", returns "ghost got <x>".
  Partial  (Service)   present(x) as above, and added(x): bumps counter "Partial/added:<x>",
                       returns "added got <x>".

The counters are the crash-safe file counters of `durable_service.py` (`DURABLE_COUNTER_DIR`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import restate
from restate import Context, TerminalError
from restate.retry_policy import InvocationRetryPolicy

from tests.services.durable_service import bump_counter

FAST_RETRY = InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=50),
    exponentiation_factor=2.0,
    max_interval=timedelta(milliseconds=400),
    max_attempts=100_000,
    on_max_attempts="pause",
)
BOOMS: dict[str, tuple[int, dict[str, str] | None]] = {
    "boom": (422, {"k": "v"}),
    "boom_multi": (409, {"k": "v", "other": "two"}),
    "boom_nometa": (422, None),
    "boom_sorted": (400, {"z": "1", "a": "2", "m": "3"}),
    "boom_empty": (400, {}),
}

# ---- app: registered first -----------------------------------------------------------------------

thrower = restate.Service("Thrower")


def _raise(which: str) -> None:
    code, metadata = BOOMS[which]
    raise TerminalError("boom", status_code=code, metadata=metadata)


@thrower.handler()
async def boom(ctx: Context, x: str) -> str:
    _raise("boom")
    return x


@thrower.handler()
async def boom_multi(ctx: Context, x: str) -> str:
    _raise("boom_multi")
    return x


@thrower.handler()
async def boom_nometa(ctx: Context, x: str) -> str:
    _raise("boom_nometa")
    return x


@thrower.handler()
async def boom_sorted(ctx: Context, x: str) -> str:
    _raise("boom_sorted")
    return x


@thrower.handler()
async def boom_empty(ctx: Context, x: str) -> str:
    _raise("boom_empty")
    return x


@thrower.handler()
async def run_boom(ctx: Context, x: str) -> str:
    async def fail() -> str:
        raise TerminalError("boom", status_code=422, metadata={"k": "v"})

    return await ctx.run_typed("fail", fail)


caller = restate.Service("Caller")


def _caught(e: TerminalError) -> dict[str, Any]:
    return {"caught": {"message": e.message, "status_code": e.status_code, "metadata": e.metadata}}


@caller.handler(invocation_retry_policy=FAST_RETRY)
async def call_boom(ctx: Context, which: str) -> dict[str, Any]:
    try:
        await ctx.generic_call("Thrower", which, b'"x"')
    except TerminalError as e:
        return _caught(e)
    return {"caught": None}


@caller.handler(invocation_retry_policy=FAST_RETRY)
async def call_boom_rethrow(ctx: Context, which: str) -> str:
    out = await ctx.generic_call("Thrower", which, b'"x"')
    return out.decode()


@caller.handler(invocation_retry_policy=FAST_RETRY)
async def send_to(ctx: Context, spec: dict[str, Any]) -> str:
    delay_ms = spec.get("delay_ms")
    ctx.generic_send(spec["service"], spec["handler"], json.dumps(spec["arg"]).encode(),
                     send_delay=timedelta(milliseconds=delay_ms) if delay_ms is not None else None)
    return "sent"


@caller.handler(invocation_retry_policy=FAST_RETRY)
async def call_to(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        out = await ctx.generic_call(spec["service"], spec["handler"], json.dumps(spec["arg"]).encode())
    except TerminalError as e:
        return _caught(e)
    return {"result": out.decode()}


partial = restate.Service("Partial")


@partial.handler("present")
async def partial_present(ctx: Context, x: str) -> str:
    return f"present got {x}"


app = restate.app(services=[thrower, caller, partial])

# ---- late_app: registered later ------------------------------------------------------------------

ghost = restate.Service("Ghost")


@ghost.handler()
async def hello(ctx: Context, x: str) -> str:
    bump_counter(f"Ghost/hello:{x}")
    return f"ghost got {x}"


partial_v2 = restate.Service("Partial")


@partial_v2.handler("present")
async def partial_v2_present(ctx: Context, x: str) -> str:
    return f"present got {x}"


@partial_v2.handler()
async def added(ctx: Context, x: str) -> str:
    bump_counter(f"Partial/added:{x}")
    return f"added got {x}"


late_app = restate.app(services=[ghost, partial_v2])
