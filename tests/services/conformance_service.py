# ruff: noqa
# Verbatim copy of the conformance suite's service.py (test data); keep in sync, do not restyle.
"""Test deployment for the conformance suite (same services as the reference measurements).

Served with:  hypercorn service:app --bind 127.0.0.1:9080
Requires:     restate-sdk==1.2.0 hypercorn pydantic  (Python >= 3.10)

Services:
  Greeter  (Service)        greet, greet_model (Pydantic), sleepy (ctx.sleep), with_run (ctx.run),
                            fail (TerminalError 409), slow (ctx.sleep ~5 s), slow_asyncio (asyncio.sleep),
                            headers (echo request headers), noop (returns None), private (ingress_private)
  Counter  (VirtualObject)  add (exclusive, ctx.get/ctx.set), get (shared), slow_add (exclusive, sleeps)
  Signup   (Workflow)       run (waits on durable promise "confirmed"), confirm (shared, resolves it),
                            status (shared, peeks the promise)
"""
import asyncio
from datetime import timedelta
from typing import Optional

import restate
from pydantic import BaseModel, Field
from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    TerminalError,
    WorkflowContext,
    WorkflowSharedContext,
)


class GreetRequest(BaseModel):
    name: str = Field(min_length=1, description="who to greet")
    times: int = Field(default=1, ge=1, le=10)


class GreetResponse(BaseModel):
    message: str
    length: int


greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello, {name}!"


@greeter.handler()
async def greet_model(ctx: Context, req: GreetRequest) -> GreetResponse:
    msg = " ".join([f"Hello, {req.name}!"] * req.times)
    return GreetResponse(message=msg, length=len(msg))


@greeter.handler()
async def sleepy(ctx: Context, seconds: int) -> str:
    await ctx.sleep(timedelta(seconds=seconds))
    return f"slept {seconds}s"


@greeter.handler()
async def with_run(ctx: Context, name: str) -> str:
    async def side_effect() -> str:
        return f"side-effect for {name}"

    v = await ctx.run_typed("side_effect", side_effect)
    return v


@greeter.handler()
async def fail(ctx: Context, msg: str) -> str:
    raise TerminalError(f"failed on purpose: {msg}", status_code=409)


@greeter.handler()
async def slow(ctx: Context, seconds: int) -> str:
    # durable sleep: can be cancelled while suspended
    await ctx.sleep(timedelta(seconds=seconds))
    return f"slow done after {seconds}s"


@greeter.handler()
async def slow_asyncio(ctx: Context, seconds: int) -> str:
    # non-durable wait inside the handler (keeps the deployment connection open)
    await asyncio.sleep(seconds)
    return f"slow_asyncio done after {seconds}s"


@greeter.handler()
async def headers(ctx: Context) -> dict:
    return dict(ctx.request().headers)


@greeter.handler()
async def noop(ctx: Context) -> None:
    return None


@greeter.handler(ingress_private=True)
async def private(ctx: Context, name: str) -> str:
    return f"private {name}"


counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    cur: Optional[int] = await ctx.get("count", type_hint=int)
    new = (cur or 0) + delta
    ctx.set("count", new)
    return new


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    cur: Optional[int] = await ctx.get("count", type_hint=int)
    return cur or 0


@counter.handler()
async def slow_add(ctx: ObjectContext, delta: int) -> int:
    await ctx.sleep(timedelta(seconds=5))
    cur: Optional[int] = await ctx.get("count", type_hint=int)
    new = (cur or 0) + delta
    ctx.set("count", new)
    return new


signup = restate.Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    ctx.set("email", email)
    confirmed = await ctx.promise("confirmed", type_hint=str).value()
    return f"{email} confirmed with {confirmed}"


@signup.handler()
async def confirm(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("confirmed", type_hint=str).resolve(secret)


@signup.handler()
async def status(ctx: WorkflowSharedContext) -> Optional[str]:
    return await ctx.promise("confirmed", type_hint=str).peek()


app = restate.app(services=[greeter, counter, signup])
