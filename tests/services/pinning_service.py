"""Test deployment for `tests/e2e/test_pinning.py` (restate-sdk 1.2.0, served by hypercorn): the
same service served twice, as two deployments of it, each telling which one it is.

Served with:  PINNING_DEPLOYMENT_NAME=a DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.pinning_service:app

Services
  Pin (VirtualObject)
      run_then_wait(label)  exclusive; bumps counter `<label>.attempt.<name>` on every attempt (outside
                         any ctx.run: which deployment got attempts), then counter `<label>.run` in a
                         ctx.run (the side effect that must run once), then creates an awakeable,
                         keeps its id in the state key "awakeable" and waits for it. Returns
                         {"run": the ctx.run's count, "word": what the awakeable was resolved with,
                         "served_by": the name of the deployment that ran the final attempt,
                         "rnd": a number drawn from ctx.random() (the invocation's random seed)}.

`<name>` is the deployment's `PINNING_DEPLOYMENT_NAME`; the counters are `durable_service.py`'s.
"""

from __future__ import annotations

import os
from typing import Any

import restate
from restate import ObjectContext

from tests.services.durable_service import bump_counter

NAME_ENV = "PINNING_DEPLOYMENT_NAME"

pin = restate.VirtualObject("Pin")


@pin.handler()
async def run_then_wait(ctx: ObjectContext, label: str) -> dict[str, Any]:
    name = os.environ.get(NAME_ENV, "?")
    bump_counter(f"{label}.attempt.{name}")
    ran = await ctx.run("first", lambda: bump_counter(f"{label}.run"))
    awakeable_id, word = ctx.awakeable(type_hint=str)
    ctx.set("awakeable", awakeable_id)
    return {"run": ran, "word": await word, "served_by": name, "rnd": ctx.random().randint(0, 2**62)}


app = restate.app(services=[pin])
