"""Test deployment for the chaos suite (`tests/chaos/`): side effects written to a crash-safe ledger.

Served with:  CHAOS_LEDGER_DIR=/some/dir hypercorn tests.services.ledger_service:app --bind 127.0.0.1:9083
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11)

Every side effect appends one line to `<CHAOS_LEDGER_DIR>/ledger.log` inside a `ctx.run`, under an
exclusive `flock` and followed by `fsync`, so a line that is there survived any crash of the
deployment's caller and a line is never torn. A line is
`<tag>\t<key>\t<seq>\t<invocation id>\t<wall time, ms since the epoch>\n`.
The chaos checks count lines per tag: exactly one per acknowledged invocation, and for each key the
sequence numbers in file order must be the order the client sent them in.

Services
  ChaosKey (VirtualObject)
      append(req)   req = {"tag", "seq"}: ctx.run appends (tag, object key, seq, invocation id);
                    returns seq. Exclusive handler: one at a time per key, in inbox order.
  ChaosPlain (Service)
      record(tag)   ctx.run appends (tag, "-", -1, invocation id); returns the tag (for calls).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import restate
from restate import Context, ObjectContext, RunOptions

LEDGER_DIR_ENV = "CHAOS_LEDGER_DIR"
LEDGER_FILE = "ledger.log"


def ledger_path(directory: str | os.PathLike[str] | None = None) -> Path:
    """The ledger file in `directory` (default: $CHAOS_LEDGER_DIR); raises KeyError if neither is set."""
    return Path(directory if directory is not None else os.environ[LEDGER_DIR_ENV]) / LEDGER_FILE


def append_line(tag: str, key: str, seq: int, invocation_id: str) -> bool:
    """Append one ledger line durably (flock + O_APPEND + fsync); returns True. Raises OSError."""
    line = f"{tag}\t{key}\t{seq}\t{invocation_id}\t{int(time.time() * 1000)}\n".encode()
    fd = os.open(ledger_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return True


def read_ledger(directory: str | os.PathLike[str]) -> list[tuple[str, str, int, str, int]]:
    """Every complete line of the ledger in `directory`, in file order:
    (tag, key, seq, invocation id, wall time in ms)."""
    try:
        text = ledger_path(directory).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            rows.append((parts[0], parts[1], int(parts[2]), parts[3], int(parts[4])))
    return rows


chaos_key = restate.VirtualObject("ChaosKey")


@chaos_key.handler()
async def append(ctx: ObjectContext, req: dict[str, Any]) -> int:
    seq = int(req["seq"])
    await ctx.run_typed("ledger", append_line, RunOptions(type_hint=bool),
                        tag=str(req["tag"]), key=ctx.key(), seq=seq, invocation_id=ctx.request().id)
    return seq


chaos_plain = restate.Service("ChaosPlain")


@chaos_plain.handler()
async def record(ctx: Context, tag: str) -> str:
    await ctx.run_typed("ledger", append_line, RunOptions(type_hint=bool),
                        tag=tag, key="-", seq=-1, invocation_id=ctx.request().id)
    return tag


app = restate.app(services=[chaos_key, chaos_plain])
