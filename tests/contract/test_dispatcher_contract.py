"""The Dispatcher contract: what the ingress relies on, checked against every implementation.

Each test runs twice (see `conftest.py`): against `tests.fakes.InMemoryDispatcher` (scripted like
the conformance deployment) and against `GrpcDispatcher` talking to a real cluster with the real
restate-sdk deployment. A test that passes for one and fails for the other means the fake no
longer describes the system, so HTTP-level tests built on the fake would be testing fiction.

Only behaviour the real system implements is covered: no durable sleep, ctx.run, promises or
awakeables (Greeter.slow_asyncio keeps an invocation running with a plain asyncio.sleep). The
lifecycle commands are covered where the fake and the system agree without a handler's help: kill,
cancel of a never-started invocation, purge, pause / resume (cancel of a running handler is in
tests/e2e/test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from ingress.dispatcher import (
    Command,
    CommandOutcome,
    Dispatcher,
    HandlerKind,
    InvocationRequest,
    Outcome,
    SendStatus,
)
from ingress.errors import InvocationNotFound, InvocationNotReady
from shardgate.sharding import (
    InvocationId,
    idempotent_invocation_id,
    new_invocation_id,
    partition_key_for_service,
    partition_of,
    workflow_invocation_id,
)

from .conftest import PARTITIONS

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

RETAIN_MS = 60_000
WORKFLOW_ALREADY_INVOKED = "the workflow method was already invoked"
UNKNOWN_ID = "inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAAA"
DEADLINE_S = 20.0


# ---- building requests the way the ingress does -------------------------------------------------


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def greeter(handler: str, body: bytes, *, idempotent: bool = True, retention_ms: int = RETAIN_MS,
            execution_time_ms: int | None = None) -> InvocationRequest:
    """A Greeter (plain service) request; idempotent ones get a fresh user idempotency key."""
    if idempotent:
        ik: str | None = _unique("ik")
        inv = idempotent_invocation_id("Greeter", None, handler, ik)  # type: ignore[arg-type]
    else:
        ik, retention_ms = None, 0
        inv = new_invocation_id(partition_key_for_service("Greeter", None))
    return InvocationRequest(
        invocation_id=str(inv), partition=partition_of(inv.partition_key, PARTITIONS), service="Greeter",
        handler=handler, key=None, kind=HandlerKind.SERVICE, body=body, headers=(("x-test", "contract"),),
        idempotency_key=ik, completion_retention_ms=retention_ms, journal_retention_ms=retention_ms,
        execution_time_ms=execution_time_ms,
    )


def counter(key: str, handler: str, body: bytes = b"") -> InvocationRequest:
    """A Counter (virtual object) request with a generated idempotency key, as the ingress sends it."""
    ik = _unique("gen")
    inv = idempotent_invocation_id("Counter", key, handler, ik)
    kind = HandlerKind.EXCLUSIVE if handler == "add" else HandlerKind.SHARED
    return InvocationRequest(
        invocation_id=str(inv), partition=partition_of(inv.partition_key, PARTITIONS), service="Counter",
        handler=handler, key=key, kind=kind, body=body, headers=(), idempotency_key=ik,
        completion_retention_ms=RETAIN_MS, journal_retention_ms=RETAIN_MS,
    )


def signup_run(key: str) -> InvocationRequest:
    inv = workflow_invocation_id("Signup", key)
    return InvocationRequest(
        invocation_id=str(inv), partition=partition_of(inv.partition_key, PARTITIONS), service="Signup",
        handler="run", key=key, kind=HandlerKind.WORKFLOW, body=b'"a@b.c"', headers=(),
        completion_retention_ms=RETAIN_MS, journal_retention_ms=RETAIN_MS,
    )


async def wait_output(d: Dispatcher, req: InvocationRequest, deadline_s: float = DEADLINE_S) -> Outcome:
    """Poll get_output until the invocation has completed."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await d.get_output(req.invocation_id, req.partition)
        except InvocationNotReady:
            if time.monotonic() > end:
                pytest.fail(f"{req.service}/{req.handler} {req.invocation_id} not completed after {deadline_s}s")
        await asyncio.sleep(0.05)


async def wait_gone(d: Dispatcher, req: InvocationRequest, deadline_s: float = DEADLINE_S) -> None:
    """Poll get_output until the invocation is unknown (purged)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            await d.get_output(req.invocation_id, req.partition)
        except InvocationNotFound:
            return
        if time.monotonic() > end:
            pytest.fail(f"{req.invocation_id} still retained after {deadline_s}s")
        await asyncio.sleep(0.05)


# ---- call ---------------------------------------------------------------------------------------


async def test_call_returns_the_handler_output(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"Alice"')
    out = await dispatcher.call(req)
    assert out == Outcome(req.invocation_id, b'"Hello, Alice!"')
    assert out.ok and out.expires_ms is None  # a caller that waited is not told about retention


async def test_terminal_failure_is_an_outcome(dispatcher: Dispatcher) -> None:
    req = greeter("fail", b'"boom"')
    out = await dispatcher.call(req)
    assert not out.ok
    assert (out.invocation_id, out.failure_code, out.failure_message, out.value) == (
        req.invocation_id, 409, "failed on purpose: boom", b"")


async def test_repeated_idempotent_call_replays_the_retained_result(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"Bob"')
    first = await dispatcher.call(req)
    before = time.time_ns() // 1_000_000
    again = await dispatcher.call(req)
    assert (again.invocation_id, again.value, again.failure_code) == (req.invocation_id, b'"Hello, Bob!"', 0)
    assert first.expires_ms is None
    assert again.expires_ms is not None  # a replay announces when the result is purged
    assert before < again.expires_ms <= before + RETAIN_MS + 1000


async def test_concurrent_calls_with_one_id_get_the_same_result(dispatcher: Dispatcher) -> None:
    req = greeter("slow_asyncio", b"1")
    outs = await asyncio.gather(dispatcher.call(req), dispatcher.call(req))
    assert [(o.invocation_id, o.value, o.failure_code) for o in outs] == [
        (req.invocation_id, b'"slow_asyncio done after 1s"', 0)] * 2


async def test_exclusive_calls_on_one_key_run_one_at_a_time(dispatcher: Dispatcher) -> None:
    key = _unique("c")
    outs = await asyncio.gather(*(dispatcher.call(counter(key, "add", b"1")) for _ in range(10)))
    assert sorted(int(o.value) for o in outs) == list(range(1, 11))
    assert (await dispatcher.call(counter(key, "get"))).value == b"10"


async def test_unretained_invocation_is_forgotten_on_completion(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"Carol"', idempotent=False)
    assert (await dispatcher.call(req)).value == b'"Hello, Carol!"'
    with pytest.raises(InvocationNotFound):
        await dispatcher.get_output(req.invocation_id, req.partition)


async def test_retained_result_is_purged_after_the_retention(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"Dave"', retention_ms=300)
    assert (await dispatcher.call(req)).value == b'"Hello, Dave!"'
    await wait_gone(dispatcher, req, 10.0)
    # Once purged, the same id is a new invocation: it runs again and answers like a first call.
    assert await dispatcher.call(req) == Outcome(req.invocation_id, b'"Hello, Dave!"')


# ---- send ---------------------------------------------------------------------------------------


async def test_send_then_repeated_send_with_the_same_id(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"Erin"')
    first = await dispatcher.send(req)
    assert (first.invocation_id, first.status, first.execution_time_ms) == (
        req.invocation_id, SendStatus.ACCEPTED, None)
    again = await dispatcher.send(req)
    assert (again.invocation_id, again.status, again.execution_time_ms) == (
        req.invocation_id, SendStatus.PREVIOUSLY_ACCEPTED, None)
    assert (await wait_output(dispatcher, req)).value == b'"Hello, Erin!"'
    # Still a duplicate after completion, while the result is retained.
    assert (await dispatcher.send(req)).status is SendStatus.PREVIOUSLY_ACCEPTED


async def test_delayed_send_runs_when_due(dispatcher: Dispatcher) -> None:
    due = time.time_ns() // 1_000_000 + 700
    req = greeter("greet", b'"Fay"', execution_time_ms=due)
    receipt = await dispatcher.send(req)
    assert (receipt.status, receipt.execution_time_ms) == (SendStatus.ACCEPTED, due)
    again = await dispatcher.send(req)
    assert (again.status, again.execution_time_ms) == (SendStatus.PREVIOUSLY_ACCEPTED, due)
    with pytest.raises(InvocationNotReady):
        await dispatcher.get_output(req.invocation_id, req.partition)
    out = await wait_output(dispatcher, req)
    assert out.value == b'"Hello, Fay!"'
    assert time.time_ns() // 1_000_000 >= due


# ---- output and attach --------------------------------------------------------------------------


async def test_get_output_while_running_then_completed(dispatcher: Dispatcher) -> None:
    req = greeter("slow_asyncio", b"1")
    assert (await dispatcher.send(req)).status is SendStatus.ACCEPTED
    with pytest.raises(InvocationNotReady):
        await dispatcher.get_output(req.invocation_id, req.partition)
    out = await wait_output(dispatcher, req)
    assert (out.invocation_id, out.value, out.failure_code) == (
        req.invocation_id, b'"slow_asyncio done after 1s"', 0)
    assert out.expires_ms is not None


async def test_get_output_of_a_failure(dispatcher: Dispatcher) -> None:
    req = greeter("fail", b'"late"')
    await dispatcher.send(req)
    out = await wait_output(dispatcher, req)
    assert (out.failure_code, out.failure_message) == (409, "failed on purpose: late")


async def test_unknown_invocation_is_not_found(dispatcher: Dispatcher) -> None:
    partition = partition_of(InvocationId.parse(UNKNOWN_ID).partition_key, PARTITIONS)
    with pytest.raises(InvocationNotFound):
        await dispatcher.get_output(UNKNOWN_ID, partition)
    with pytest.raises(InvocationNotFound):
        await dispatcher.attach(UNKNOWN_ID, partition)


async def test_attach_waits_for_the_result(dispatcher: Dispatcher) -> None:
    req = greeter("slow_asyncio", b"1")
    await dispatcher.send(req)
    out = await asyncio.wait_for(dispatcher.attach(req.invocation_id, req.partition), DEADLINE_S)
    assert (out.invocation_id, out.value, out.failure_code) == (
        req.invocation_id, b'"slow_asyncio done after 1s"', 0)
    # Attaching to a completed, retained invocation answers at once, with the purge time.
    again = await dispatcher.attach(req.invocation_id, req.partition)
    assert again.value == out.value and again.expires_ms is not None


# ---- workflows ----------------------------------------------------------------------------------


async def test_workflow_run_twice_is_rejected(dispatcher: Dispatcher) -> None:
    req = signup_run(_unique("wf"))
    assert (await dispatcher.send(req)).status is SendStatus.ACCEPTED
    second = await asyncio.wait_for(dispatcher.call(req), DEADLINE_S)
    assert (second.invocation_id, second.failure_code, second.failure_message) == (
        req.invocation_id, 409, WORKFLOW_ALREADY_INVOKED)
    assert (await dispatcher.send(req)).status is SendStatus.PREVIOUSLY_ACCEPTED
    with pytest.raises(InvocationNotReady):  # the run waits on a promise: still running
        await dispatcher.get_output(req.invocation_id, req.partition)


# ---- lifecycle commands -------------------------------------------------------------------------

KILLED = (409, "killed")
CANCELLED = (409, "cancelled")


async def test_kill_answers_attached_callers_and_keeps_the_killed_result(dispatcher: Dispatcher) -> None:
    req = greeter("slow_asyncio", b"30")
    await dispatcher.send(req)
    attached = asyncio.ensure_future(dispatcher.attach(req.invocation_id, req.partition))
    await asyncio.sleep(0)  # let the attach reach its partition before the kill
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.KILL) is CommandOutcome.DONE
    out = await asyncio.wait_for(attached, DEADLINE_S)
    assert (out.invocation_id, out.failure_code, out.failure_message) == (req.invocation_id, *KILLED)
    stored = await dispatcher.get_output(req.invocation_id, req.partition)
    assert (stored.failure_code, stored.failure_message) == KILLED
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.KILL) is CommandOutcome.COMPLETED
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.CANCEL) is CommandOutcome.COMPLETED


async def test_cancel_of_a_scheduled_invocation_removes_it(dispatcher: Dispatcher) -> None:
    req = greeter("greet", b'"never"', execution_time_ms=time.time_ns() // 1_000_000 + 60_000)
    await dispatcher.send(req)
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.CANCEL) is CommandOutcome.DONE
    with pytest.raises(InvocationNotFound):
        await dispatcher.get_output(req.invocation_id, req.partition)
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.CANCEL) is CommandOutcome.NOT_FOUND


async def test_purge_only_after_completion_then_the_id_runs_again(dispatcher: Dispatcher) -> None:
    running = greeter("slow_asyncio", b"30")
    await dispatcher.send(running)
    assert await dispatcher.manage(running.invocation_id, running.partition,
                                   Command.PURGE) is CommandOutcome.NOT_COMPLETED
    await dispatcher.manage(running.invocation_id, running.partition, Command.KILL)
    req = greeter("greet", b'"Gus"')
    assert (await dispatcher.call(req)).value == b'"Hello, Gus!"'
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.PURGE) is CommandOutcome.DONE
    with pytest.raises(InvocationNotFound):
        await dispatcher.get_output(req.invocation_id, req.partition)
    assert (await dispatcher.send(req)).status is SendStatus.ACCEPTED  # the id is free again
    assert (await wait_output(dispatcher, req)).value == b'"Hello, Gus!"'


async def test_every_command_on_an_unknown_invocation_is_not_found(dispatcher: Dispatcher) -> None:
    partition = partition_of(InvocationId.parse(UNKNOWN_ID).partition_key, PARTITIONS)
    for command in Command:
        assert await dispatcher.manage(UNKNOWN_ID, partition, command) is CommandOutcome.NOT_FOUND


async def test_pause_then_resume_a_running_invocation(dispatcher: Dispatcher) -> None:
    req = greeter("slow_asyncio", b"1")
    await dispatcher.send(req)
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.PAUSE) is CommandOutcome.DONE
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.PAUSE) is CommandOutcome.ALREADY
    with pytest.raises(InvocationNotReady):
        await dispatcher.get_output(req.invocation_id, req.partition)
    assert await dispatcher.manage(req.invocation_id, req.partition, Command.RESUME) is CommandOutcome.DONE
    assert (await wait_output(dispatcher, req)).value == b'"slow_asyncio done after 1s"'
