"""Test deployment for the crash tests (`tests/e2e/test_crash.py`).

Served with:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.crash_service:app --bind 127.0.0.1:9082
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11)

`app` serves every service of `tests/services/durable_service.py` (Durable, Ledger, ...) plus the
handlers below, which hold an attempt open with a plain `asyncio.sleep` (NOT a durable sleep) after a
journaled `ctx.run`, so that a test can SIGKILL the partition worker after the run's result was
stored but before the handler finished. Counters are the crash-safe file counters of the durable
service (`<DURABLE_COUNTER_DIR>/<name>.count`): they count how often a side effect really ran.

Services
  Crash (Service)
      bump_then_hold(req)  req = {"name", "hold_ms"}: bumps counter `name` OUTSIDE any ctx.run (a call to
                           an external system the journal does not record), then holds the attempt
                           `hold_ms`; returns the count. Re-running the attempt bumps it again.
      run_then_hold(req)   req = {"name", "hold_ms"}: ctx.run bumps counter `name`, then the attempt
                           sleeps `hold_ms` in asyncio (every attempt that gets this far does); returns
                           the count the run journaled.
  ChainA / ChainB / ChainC (VirtualObjects: the object key pins each hop to a chosen partition)
      ChainA.start(req)    req = {"b", "c", "x", "name", "hold_ms"}: ctx.run bumps `name.A`, then calls
                           ChainB/{b}/step(req); returns {"hop": "A", "key", "runs", "inner"}.
      ChainB.step(req)     ctx.run bumps `name.B`, then calls ChainC/{c}/leaf(req);
                           returns {"hop": "B", "key", "runs", "inner"}.
      ChainC.leaf(req)     ctx.run bumps `name.C`, then holds the attempt `hold_ms` in asyncio;
                           returns {"hop": "C", "key", "runs", "x"}.
      "runs" is the counter value the hop's ctx.run journaled: 1 when each side effect ran once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import restate
from restate import Context, ObjectContext, RunOptions

from tests.services.durable_service import (
    approval,
    bump_counter,
    durable,
    lazy_ledger,
    leaf,
    ledger,
    middle,
    sleepy,
)

# ---- Crash: a journaled side effect, then an attempt held open ----------------------------------

crash = restate.Service("Crash")


@crash.handler()
async def run_then_hold(ctx: Context, req: dict) -> int:
    count = await ctx.run_typed("bump", bump_counter, RunOptions(type_hint=int), name=req["name"])
    await asyncio.sleep(req["hold_ms"] / 1000)  # not durable: keeps this attempt in flight
    return count


@crash.handler()
async def bump_then_hold(ctx: Context, req: dict) -> int:
    count = bump_counter(req["name"])  # not journaled: runs again in every attempt
    await asyncio.sleep(req["hold_ms"] / 1000)
    return count


# ---- ChainA -> ChainB -> ChainC: one hop per chosen partition ------------------------------------

chain_c = restate.VirtualObject("ChainC")


@chain_c.handler(name="leaf")
async def leaf_hop(ctx: ObjectContext, req: dict) -> dict[str, Any]:
    runs = await ctx.run_typed("bump", bump_counter, RunOptions(type_hint=int), name=f"{req['name']}.C")
    await asyncio.sleep(req["hold_ms"] / 1000)  # not durable: keeps this attempt in flight
    return {"hop": "C", "key": ctx.key(), "runs": runs, "x": req["x"]}


chain_b = restate.VirtualObject("ChainB")


@chain_b.handler(name="step")
async def step_hop(ctx: ObjectContext, req: dict) -> dict[str, Any]:
    runs = await ctx.run_typed("bump", bump_counter, RunOptions(type_hint=int), name=f"{req['name']}.B")
    inner = await ctx.object_call(leaf_hop, req["c"], req)
    return {"hop": "B", "key": ctx.key(), "runs": runs, "inner": inner}


chain_a = restate.VirtualObject("ChainA")


@chain_a.handler(name="start")
async def start_hop(ctx: ObjectContext, req: dict) -> dict[str, Any]:
    runs = await ctx.run_typed("bump", bump_counter, RunOptions(type_hint=int), name=f"{req['name']}.A")
    inner = await ctx.object_call(step_hop, req["b"], req)
    return {"hop": "A", "key": ctx.key(), "runs": runs, "inner": inner}


app = restate.app(services=[durable, middle, leaf, ledger, lazy_ledger, approval, sleepy,
                            crash, chain_a, chain_b, chain_c])
