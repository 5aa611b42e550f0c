"""Test deployment for request identity (spec §11): a Greeter that requires signed requests.

The accepted identity keys (``publickeyv1_…``) are read, comma-separated, from the environment
variable ``IDENTITY_KEYS`` at import time; empty or unset means the SDK checks nothing.

Served with:  IDENTITY_KEYS=publickeyv1_… hypercorn tests.services.identity_service:app
"""

from __future__ import annotations

import os

import restate
from restate import Context

greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


IDENTITY_KEYS = [k.strip() for k in os.environ.get("IDENTITY_KEYS", "").split(",") if k.strip()]

app = restate.app(services=[greeter], identity_keys=IDENTITY_KEYS or None)
