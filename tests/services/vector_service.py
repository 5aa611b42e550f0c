"""The deployment behind the captured protocol vectors (`tests/data/vectors`, restate-sdk 1.2.0).

`sgtools.vectors` serves it to re-capture the vectors. Its services are the ones the vectors'
README describes, in the order (and with the type hints) of the captured manifest, so that
discovery answers the committed `manifest_*.json` byte for byte:

  Greeter  (service)         greet, fail_terminal, fail_retry, with_run
  Counter  (virtual object)  add, nap, peek (shared), keys
  Signup   (workflow)        run (awaits promise "approval"), approve (shared, resolves it)
  Extra    (service)         call_other, send_other, awk, resolve_awk, cancel_other, rnd

Two more deployments are mounted under path prefixes of the same ASGI app (the SDK accepts any
mount point before `/invoke` and `/discover`), so that they stay out of the manifest above:

  /retry/...     Extra.flaky, the failing `ctx.run` of the `s_run_retry_*` vectors
  /identity/...  Greeter.greet, accepting only requests signed with the keys in the environment
                 variable IDENTITY_KEYS (comma-separated `publickeyv1_...`), as in
                 `k_request_identity`; unset or empty means no check

Served with:  IDENTITY_KEYS=publickeyv1_... hypercorn tests.services.vector_service:app
"""

# No `from __future__ import annotations`: the SDK derives the manifest's JSON schemas from the
# handlers' annotations, which must be real types.

import os
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

import restate
from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    RunOptions,
    TerminalError,
    WorkflowContext,
    WorkflowSharedContext,
)

RETRY_PREFIX = "/retry"
IDENTITY_PREFIX = "/identity"
SEND_DELAY = timedelta(seconds=5)

# ---- Greeter -------------------------------------------------------------------------------------

greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@greeter.handler()
async def fail_terminal(ctx: Context, name: str) -> str:
    raise TerminalError("nope", 409)


@greeter.handler()
async def fail_retry(ctx: Context, name: str) -> str:
    raise ValueError("transient boom")


@greeter.handler()
async def with_run(ctx: Context, name: str) -> str:
    async def side() -> str:
        return f"rnd-{name}"

    value = await ctx.run_typed("side", side)
    return f"run said {value}"


# ---- Counter -------------------------------------------------------------------------------------

counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += delta
    ctx.set("count", count)
    return count


@counter.handler()
async def nap(ctx: ObjectContext, millis: int) -> str:
    ctx.set("napping", True)
    await ctx.sleep(timedelta(milliseconds=millis))
    ctx.clear("napping")
    return "rested"


@counter.handler(kind="shared")
async def peek(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


@counter.handler()
async def keys(ctx: ObjectContext) -> list:  # a bare `list`: the manifest says `"items": true`
    names = await ctx.state_keys()
    ctx.clear_all()
    return names


# ---- Signup --------------------------------------------------------------------------------------

signup = restate.Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    value = await ctx.promise("approval", type_hint=str).value()
    return f"{email}:{value}"


@signup.handler()
async def approve(ctx: WorkflowSharedContext, value: str) -> None:
    await ctx.promise("approval", type_hint=str).resolve(value)


# ---- Extra ---------------------------------------------------------------------------------------

extra = restate.Service("Extra")


@extra.handler()
async def call_other(ctx: Context, name: str) -> str:
    reply = await ctx.service_call(greet, name)
    return f"got {reply}"


@extra.handler()
async def send_other(ctx: Context, name: str) -> str:
    ctx.service_send(greet, name, send_delay=SEND_DELAY)
    return "sent"


@extra.handler()
async def awk(ctx: Context, name: str) -> str:
    awakeable_id, future = ctx.awakeable(type_hint=str)
    value = await future
    return f"{awakeable_id}|{value}"


@extra.handler()
async def resolve_awk(ctx: Context, awakeable_id: str) -> None:
    ctx.resolve_awakeable(awakeable_id, "hi")


@extra.handler()
async def cancel_other(ctx: Context, invocation_id: str) -> None:
    ctx.cancel_invocation(invocation_id)


@extra.handler()
async def rnd(ctx: Context, name: str) -> str:
    return f"{ctx.random().random()}|{ctx.uuid()}"


# ---- /retry: Extra.flaky -------------------------------------------------------------------------

retry_extra = restate.Service("Extra")
FLAKY_OPTIONS: RunOptions[str] = RunOptions(
    max_attempts=3, initial_retry_interval=timedelta(milliseconds=100))


@retry_extra.handler()
async def flaky(ctx: Context, name: str) -> str:
    def fail() -> str:
        raise ValueError("flaky")

    return await ctx.run_typed("flaky", fail, FLAKY_OPTIONS)


# ---- /identity: Greeter.greet behind request signing ---------------------------------------------

identity_greeter = restate.Service("Greeter")


@identity_greeter.handler(name="greet")
async def identity_greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


IDENTITY_KEYS = [k.strip() for k in os.environ.get("IDENTITY_KEYS", "").split(",") if k.strip()]

# ---- the ASGI app --------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

main_app = restate.app(services=[greeter, counter, signup, extra])
retry_app = restate.app(services=[retry_extra])
identity_app = restate.app(services=[identity_greeter], identity_keys=IDENTITY_KEYS or None)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Route `/retry/...` and `/identity/...` to their deployments, everything else to the main one."""
    path = scope.get("path", "")
    if path.startswith(RETRY_PREFIX + "/"):
        await retry_app(scope, receive, send)
    elif path.startswith(IDENTITY_PREFIX + "/"):
        await identity_app(scope, receive, send)
    else:
        await main_app(scope, receive, send)
