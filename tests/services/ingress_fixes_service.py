"""Test deployment for tests/e2e/test_ingress_fixes.py: handlers whose manifests declare different
output content types (restate-sdk 1.2.0 derives `output` from the return annotation).

Served with:  hypercorn tests.services.ingress_fixes_service:app

Service `Outputs`:
  unannotated  no return annotation: manifest output has no contentType; returns "hi" (JSON-encoded)
  void         `-> None`: no contentType; returns nothing (empty body)
  json_str     `-> str`: contentType application/json; returns "hi"
  text         content_type="text/plain" with a pass-through serde; returns b"plain text"
  greet        takes a JSON string, returns "Hello, <name>!" (for sends with a delay)
"""
# No `from __future__ import annotations`: the SDK reads the annotations as objects.

import restate
from restate import Context
from restate.serde import BytesSerde

outputs = restate.Service("Outputs")


@outputs.handler()
async def unannotated(ctx: Context):  # type: ignore[no-untyped-def]  # no annotation on purpose
    return "hi"


@outputs.handler()
async def void(ctx: Context) -> None:
    return None


@outputs.handler()
async def json_str(ctx: Context) -> str:
    return "hi"


@outputs.handler(content_type="text/plain", output_serde=BytesSerde())
async def text(ctx: Context) -> bytes:
    return b"plain text"


@outputs.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello, {name}!"


app = restate.app(services=[outputs])
