"""Fixtures of the chaos suite: the ledger deployment, the run mode, and one fault's run.

`make test` runs the short version (a couple of faults, small load); `make chaos` sets
SHARDGATE_CHAOS=full and runs every fault with more load and longer windows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.chaos import report
from tests.chaos.checks import Verdict, missing_acked, redis_leftovers, verdict
from tests.chaos.load import Load
from tests.clusters import poll
from tests.deployments import serve_sdk_app
from tests.services.ledger_service import LEDGER_DIR_ENV

MODE_ENV = "SHARDGATE_CHAOS"
FULL = os.environ.get(MODE_ENV, "") == "full"
QUIESCE_DEADLINE_S = 60.0


def full_only() -> pytest.MarkDecorator:
    """Skip in the short run (`make test`); `make chaos` runs it."""
    return pytest.mark.skipif(not FULL, reason=f"long fault: `make chaos` ({MODE_ENV}=full) runs it")


@dataclass(frozen=True)
class Shape:
    """How much load a fault runs under, and for how long around the fault."""

    send_keys: int
    callers: int
    before: int
    """Acknowledged invocations before the fault is injected."""
    after: int
    """Acknowledged invocations after the fault healed, before the load stops."""


SHAPE = Shape(send_keys=8, callers=6, before=200, after=200) if FULL else \
    Shape(send_keys=4, callers=3, before=40, after=40)


@pytest.fixture(scope="session")
def ledger_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Serve `tests/services/ledger_service.py` with hypercorn; yields (url, ledger dir)."""
    base = tmp_path_factory.mktemp("chaos-ledger")
    ledger_dir = base / "ledger"
    ledger_dir.mkdir()
    with serve_sdk_app("tests.services.ledger_service:app", base / "hypercorn.log",
                       {LEDGER_DIR_ENV: str(ledger_dir)}) as url:
        yield url, ledger_dir


async def acknowledged_at_least(load: Load, n: int) -> bool | None:
    load.check_alive()
    return True if load.tally.acknowledged >= n else None


async def run_fault(fault: str, http: aiohttp.ClientSession, ingress_url: str, redis: Redis, ledger_dir: Path,
                    inject: Callable[[], Awaitable[int | None]], diag: Callable[[], Awaitable[str]],
                    shape: Shape = SHAPE, heal: Callable[[], Awaitable[None]] | None = None) -> Verdict:
    """Run the load, inject the fault once `shape.before` invocations were acknowledged, go on until
    `shape.after` more were, stop, `heal()` (when given), wait for every acknowledged side effect
    and a clean Redis, record the verdict in the report and assert it is clean (returns it).

    `inject` returns the wall-clock time (ms) at which an owner was lost without a chance to
    store what its running attempts did (SIGKILL, SIGSTOP), or None: a side effect that ran before
    that moment and again on the new owner is reported apart, as the fault's own doing."""
    prefix = f"{fault}-{uuid.uuid4().hex[:6]}"
    load = Load(http, ingress_url, prefix, send_keys=shape.send_keys, callers=shape.callers)
    load.start()
    try:
        await poll(f"{shape.before} acknowledged before {fault}", 60.0,
                   lambda: acknowledged_at_least(load, shape.before), diag)
        owner_lost_at_ms = await inject()
        healed_at = load.tally.acknowledged
        await poll(f"{shape.after} more acknowledged after {fault}", 120.0,
                   lambda: acknowledged_at_least(load, healed_at + shape.after), diag)
    finally:
        tally = await load.stop()

    async def quiet() -> list[str] | None:
        if missing_acked(tally, ledger_dir):
            return None
        left = await redis_leftovers(redis)
        return None if left else []

    async def quiesce() -> list[str]:
        """[] once every acknowledged side effect ran and Redis holds nothing; else what is left."""
        try:
            return await poll(f"every acknowledged side effect and a clean Redis after {fault}",
                              QUIESCE_DEADLINE_S, quiet, diag)
        except pytest.fail.Exception:
            return await redis_leftovers(redis)

    leftovers = await quiesce()
    if heal is not None:  # only once the load's work is done: a heal (a rejoin) is a fault of its own
        await heal()
        leftovers = leftovers or await quiesce()
    result = verdict(fault, tally, ledger_dir, prefix, leftovers, owner_lost_at_ms)
    report.record(result)
    print(report.row(result))
    assert result.clean, result.explain(tally)
    return result
