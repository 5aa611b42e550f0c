"""Test deployment for the durable-execution acceptance tests (`tests/e2e/test_durable.py`).

Served with:  DURABLE_COUNTER_DIR=/some/dir hypercorn tests.services.durable_service:app --bind 127.0.0.1:9081
Requires:     restate-sdk==1.2.0 hypercorn  (Python >= 3.11)

It is test data for shardgate *and* for the reference Restate server: every behaviour the tests
assert was first observed against Restate 1.7.12 with exactly this file.

External counter
    Several handlers count how often a piece of code really ran (as opposed to being replayed)
    with a crash-safe file counter: `<DURABLE_COUNTER_DIR>/<name>.count`, read-modify-written
    under an fcntl lock on `<name>.lock` and replaced atomically (write temp file, fsync, rename),
    so a reader never sees half a number. `bump_counter` / `read_counter` are imported by the
    tests, which run on the same machine.

Services
  Durable  (Service)
      run_once(name)          ctx.run bumps counter `name` once; a durable sleep afterwards forces a
                              replay in request/response mode; returns the count the run journaled.
      run_flaky(name)         ctx.run whose closure bumps `name` and raises until the count is 3
                              (RunOptions max_attempts=5, 50 ms initial interval) -> returns 3.
      run_exhausted(name)     ctx.run whose closure bumps `name` and always raises (max_attempts=3)
                              -> the SDK turns exhaustion into a TerminalError: invocation fails.
      sleep_ms(ms)            durable sleep; returns ms.
      call_chain(x)           Durable -> Middle.step -> Leaf.double: returns 2*x + 1.
      send_later(req)         req = {"key", "item", "ms"}: one-way object_send of Ledger/{key}/append(item)
                              with send_delay=ms; returns the invocation id of that send.
      rnd(name)               draws ctx.random() values and a ctx.uuid(), journals them with ctx.run,
                              then fails the first attempt on purpose (counter `name`) so the second
                              attempt replays the journal and re-draws: returns both the re-drawn and
                              the journaled values (they must be equal) and the attempt number.
      awake(key)              creates an awakeable, sends its id to Ledger/{key}/append, awaits it and
                              returns the value it was resolved with.
      resolve_awk(req)        req = {"id", "value"}: ctx.resolve_awakeable.
      reject_awk(req)         req = {"id", "message"}: ctx.reject_awakeable (code 500).
      cancel_other(id)        ctx.cancel_invocation(id).
      fail_retry_then_ok(name) first bumps counter `name.run` inside a ctx.run, then raises a
                              retryable error while the per-attempt counter `name` (bumped OUTSIDE
                              ctx.run, so it counts attempts) is < 3; returns
                              {"attempts": 3, "run_count": 1} (the run is replayed, not re-run).
  Middle, Leaf  (Services)    step(x) = Leaf.double(x) + 1, double(x) = 2*x.
  Ledger   (VirtualObject)
      append(item)  exclusive  appends to the list state "items"; returns the new length.
      items()       shared     the list ([] when empty).
      put(req)      exclusive  req = {"name", "value"}: sets an arbitrary state entry.
      keys()        shared     sorted ctx.state_keys().
      clear()       exclusive  ctx.clear_all().
      nap(ms)       exclusive  appends "nap-start", sets "napping", durable sleep (keeps the object's
                               lock while suspended), clears "napping", appends "nap-end".
  LazyLedger (VirtualObject, enable_lazy_state=True: state is fetched with GetLazyState round trips)
      add(n)        exclusive  total += n, count += 1; returns the new total.
      total()       shared     {"total", "count"} (0 when unset).
      keys()        shared     sorted ctx.state_keys().
      reset()       exclusive  ctx.clear_all().
  Approval (Workflow)
      run(x)        workflow   sets state x/stage="waiting", awaits promise "ok", sets stage="approved",
                               returns f"{x}:{value}".
      approve(v)    shared     resolves promise "ok" (TerminalError if it is already completed).
      peek()        shared     peeks promise "ok" (null while pending).
      state()       shared     {"x", "stage"} as written by run.
      approve_twice(v) shared  resolves "ok" twice in a row and reports each outcome as
                               {"ok": true} or {"ok": false, "code", "message"}.
  Sleepy   (Service)
      long(ms)      durable sleep, for the cancellation tests; returns "woke".
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
from datetime import timedelta
from pathlib import Path
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
from restate.retry_policy import InvocationRetryPolicy

COUNTER_DIR_ENV = "DURABLE_COUNTER_DIR"

# ---- external counter ----------------------------------------------------------------------------


def _counter_paths(name: str, directory: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    directory = Path(directory if directory is not None else os.environ[COUNTER_DIR_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return directory / f"{safe}.count", directory / f"{safe}.lock"


def read_counter(name: str, directory: str | os.PathLike[str] | None = None) -> int:
    """Current value of counter `name` (0 if it was never bumped); `directory` defaults to the env var."""
    path, _ = _counter_paths(name, directory)
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


def bump_counter(name: str) -> int:
    """Atomically add 1 to counter `name` and return the new value (safe across processes)."""
    path, lock_path = _counter_paths(name)
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        value = read_counter(name, path.parent) + 1
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as fh:
            fh.write(str(value))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return value


# Retries of whole attempts (fail_retry_then_ok, rnd) should not wait the default 500 ms+.
FAST_RETRIES = InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    exponentiation_factor=2.0,
    max_interval=timedelta(seconds=1),
)

# ---- Leaf / Middle: the A -> B -> C call chain ---------------------------------------------------

leaf = restate.Service("Leaf")


@leaf.handler()
async def double(ctx: Context, x: int) -> int:
    return 2 * x


middle = restate.Service("Middle")


@middle.handler()
async def step(ctx: Context, x: int) -> int:
    return await ctx.service_call(double, x) + 1


# ---- Ledger: a virtual object with list state ----------------------------------------------------

ledger = restate.VirtualObject("Ledger")


async def _append(ctx: ObjectContext, item: Any) -> int:
    items = await ctx.get("items", type_hint=list) or []
    items.append(item)
    ctx.set("items", items)
    return len(items)


@ledger.handler()
async def append(ctx: ObjectContext, item: Any) -> int:
    return await _append(ctx, item)


@ledger.handler(kind="shared")
async def items(ctx: ObjectSharedContext) -> list:
    return await ctx.get("items", type_hint=list) or []


@ledger.handler()
async def put(ctx: ObjectContext, req: dict) -> None:
    ctx.set(req["name"], req["value"])


@ledger.handler(kind="shared")
async def keys(ctx: ObjectSharedContext) -> list:
    return sorted(await ctx.state_keys())


@ledger.handler()
async def clear(ctx: ObjectContext) -> None:
    ctx.clear_all()


@ledger.handler()
async def nap(ctx: ObjectContext, ms: int) -> str:
    await _append(ctx, "nap-start")
    ctx.set("napping", True)
    await ctx.sleep(timedelta(milliseconds=ms))
    ctx.clear("napping")
    await _append(ctx, "nap-end")
    return "rested"


# ---- LazyLedger: the same kind of object with lazy state ----------------------------------------

lazy_ledger = restate.VirtualObject("LazyLedger", enable_lazy_state=True)


@lazy_ledger.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    total = (await ctx.get("total", type_hint=int) or 0) + n
    count = (await ctx.get("count", type_hint=int) or 0) + 1
    ctx.set("total", total)
    ctx.set("count", count)
    return total


@lazy_ledger.handler(kind="shared")
async def total(ctx: ObjectSharedContext) -> dict:
    return {"total": await ctx.get("total", type_hint=int) or 0,
            "count": await ctx.get("count", type_hint=int) or 0}


@lazy_ledger.handler(name="keys", kind="shared")
async def lazy_keys(ctx: ObjectSharedContext) -> list:
    return sorted(await ctx.state_keys())


@lazy_ledger.handler()
async def reset(ctx: ObjectContext) -> None:
    ctx.clear_all()


# ---- Durable: ctx.run, sleeps, calls, sends, random, awakeables, cancellation, retries ------------

durable = restate.Service("Durable", invocation_retry_policy=FAST_RETRIES)


@durable.handler()
async def run_once(ctx: Context, name: str) -> int:
    count = await ctx.run_typed("bump", bump_counter, RunOptions(type_hint=int), name=name)
    # A durable wait after the run: in request/response mode the rest of the handler runs in a new
    # attempt that replays the run's journaled result instead of executing the closure again.
    await ctx.sleep(timedelta(milliseconds=50))
    return count


@durable.handler()
async def run_flaky(ctx: Context, name: str) -> int:
    def flaky() -> int:
        count = bump_counter(name)
        if count < 3:
            raise RuntimeError(f"flaky failure #{count}")
        return count

    opts: RunOptions[int] = RunOptions(type_hint=int, max_attempts=5,
                                       initial_retry_interval=timedelta(milliseconds=50))
    return await ctx.run_typed("flaky", flaky, opts)


@durable.handler()
async def run_exhausted(ctx: Context, name: str) -> int:
    def always_fails() -> int:
        count = bump_counter(name)
        raise RuntimeError(f"boom #{count}")

    opts: RunOptions[int] = RunOptions(type_hint=int, max_attempts=3,
                                       initial_retry_interval=timedelta(milliseconds=50))
    return await ctx.run_typed("doomed", always_fails, opts)


@durable.handler()
async def sleep_ms(ctx: Context, ms: int) -> int:
    await ctx.sleep(timedelta(milliseconds=ms))
    return ms


@durable.handler()
async def call_chain(ctx: Context, x: int) -> int:
    return await ctx.service_call(step, x)


@durable.handler()
async def send_later(ctx: Context, req: dict) -> str:
    handle = ctx.object_send(append, req["key"], req["item"], send_delay=timedelta(milliseconds=req["ms"]))
    return await handle.invocation_id()


@durable.handler()
async def rnd(ctx: Context, name: str) -> dict:
    rand = ctx.random()
    a = rand.random()
    journaled_a = await ctx.run_typed("a", lambda: a, RunOptions(type_hint=float))
    b = rand.randint(0, 2**62)
    u = str(ctx.uuid())
    journaled_bu = await ctx.run_typed("bu", lambda: [b, u], RunOptions(type_hint=list))
    attempt = bump_counter(name)  # outside ctx.run: counts attempts
    if attempt == 1:
        raise RuntimeError("fail the first attempt so that the next one replays the journal")
    return {"a": a, "journaled_a": journaled_a, "b": b, "uuid": u,
            "journaled_b": journaled_bu[0], "journaled_uuid": journaled_bu[1], "attempt": attempt}


@durable.handler()
async def awake(ctx: Context, key: str) -> Any:
    awakeable_id, promise = ctx.awakeable(type_hint=object)
    ctx.object_send(append, key, awakeable_id)
    return await promise


@durable.handler()
async def resolve_awk(ctx: Context, req: dict) -> None:
    ctx.resolve_awakeable(req["id"], req["value"])


@durable.handler()
async def reject_awk(ctx: Context, req: dict) -> None:
    ctx.reject_awakeable(req["id"], req["message"])


@durable.handler()
async def cancel_other(ctx: Context, invocation_id: str) -> None:
    ctx.cancel_invocation(invocation_id)


@durable.handler()
async def fail_retry_then_ok(ctx: Context, name: str) -> dict:
    # Journaled before the failures: later attempts replay it instead of running it again.
    run_count = await ctx.run_typed("before", bump_counter, RunOptions(type_hint=int), name=f"{name}.run")
    attempt = bump_counter(name)  # outside ctx.run: counts attempts
    if attempt < 3:
        raise RuntimeError(f"retryable failure on attempt {attempt}")
    return {"attempts": attempt, "run_count": run_count}


# ---- Approval: a workflow with a durable promise -------------------------------------------------

approval = restate.Workflow("Approval")


@approval.main()
async def run(ctx: WorkflowContext, x: str) -> str:
    ctx.set("x", x)
    ctx.set("stage", "waiting")
    value = await ctx.promise("ok", type_hint=str).value()
    ctx.set("stage", "approved")
    return f"{x}:{value}"


@approval.handler()
async def approve(ctx: WorkflowSharedContext, v: str) -> None:
    await ctx.promise("ok", type_hint=str).resolve(v)


@approval.handler()
async def peek(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.promise("ok", type_hint=str).peek()


@approval.handler()
async def state(ctx: WorkflowSharedContext) -> dict:
    return {"x": await ctx.get("x", type_hint=str), "stage": await ctx.get("stage", type_hint=str)}


@approval.handler()
async def approve_twice(ctx: WorkflowSharedContext, v: str) -> list:
    outcomes: list[dict] = []
    for i in range(2):
        try:
            await ctx.promise("ok", type_hint=str).resolve(f"{v}#{i + 1}")
            outcomes.append({"ok": True})
        except TerminalError as e:
            outcomes.append({"ok": False, "code": e.status_code, "message": e.message})
    return outcomes


# ---- Sleepy: something long-running to cancel ----------------------------------------------------

sleepy = restate.Service("Sleepy")


@sleepy.handler()
async def long(ctx: Context, ms: int) -> str:
    await ctx.sleep(timedelta(milliseconds=ms))
    return "woke"


# Per-service time limits from the manifest: an attempt that stalls past the inactivity plus
# abort timeouts is aborted and retried.
stalling = restate.Service("Stalling", inactivity_timeout=timedelta(milliseconds=300),
                           abort_timeout=timedelta(milliseconds=300), invocation_retry_policy=FAST_RETRIES)


@stalling.handler()
async def stall_once(ctx: Context, name: str) -> int:
    """Hangs (without any durable step) on its first attempt; answers the attempt number after."""
    attempt = bump_counter(name)
    if attempt == 1:
        await asyncio.sleep(30)
    return attempt


app = restate.app(services=[durable, middle, leaf, ledger, lazy_ledger, approval, sleepy, stalling])
