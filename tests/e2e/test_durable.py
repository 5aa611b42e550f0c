"""Acceptance tests of durable execution over the ingress HTTP API (`tests/services/durable_service.py`).

ctx.run (exactly-once side effects, run retries, exhausted runs), durable sleeps, service-to-service
calls, delayed one-way sends (from a handler and from the ingress), deterministic randomness across
replays, awakeables (resolved / rejected from the ingress and from another handler), workflows and
durable promises, eager and lazy state, state_keys / clear_all, the exclusive lock of a virtual object
held across a suspension, cancellation, and retries of failing attempts.

Targets
  * default: a real multi-process shardgate cluster (`DevCluster`: Redis + 2 workers + ingress,
    8 partitions), once per invocation protocol version (SHARDGATE_MAX_PROTOCOL_VERSION=6 and 7),
    v7 with every attempt bidirectional (SHARDGATE_BIDI=always), v6 with the default (auto);
  * `SHARDGATE_E2E_REFERENCE=<ingress-url>,<admin-url>`: an already running Restate server instead
    (the durable deployment is registered there with force=true; add SHARDGATE_E2E_REFERENCE_HTTP11=1
    to register it with use_http_11, i.e. request/response mode instead of HTTP/2 bidi streams).
    Every expectation below, including the exact failure bodies, was observed on Restate 1.7.12 in
    both modes.

The deployment is the restate-sdk 1.2.0 app in `tests/services/durable_service.py`, served by
hypercorn with `DURABLE_COUNTER_DIR` pointing at a temporary directory: its file counters tell the
tests how often code really ran (as opposed to being replayed).

Nothing sleeps to synchronise: every wait polls a condition against a deadline. Keys and counter
names are unique per test (uuid), so tests do not depend on each other or on earlier runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import attempts_by_transport, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFERENCE_ENV = "SHARDGATE_E2E_REFERENCE"
REFERENCE = os.environ.get(REFERENCE_ENV, "").strip()
# Reference only: register with use_http_11 so Restate talks request/response instead of HTTP/2 bidi.
REFERENCE_HTTP11 = os.environ.get("SHARDGATE_E2E_REFERENCE_HTTP11", "") == "1"
PROTOCOLS = ["reference"] if REFERENCE else ["v6", "v7"]
PARTITIONS = 8
DEADLINE_S = 15.0  # generous bound for things that take milliseconds on the reference
TIMER_SLACK_S = 0.05  # a timer may fire this much "early" as seen from the client clock
NO_BODY = object()


# ---- target plumbing -----------------------------------------------------------------------------


@dataclass
class Target:
    """A server (shardgate cluster or reference) with the durable deployment registered."""

    label: str
    ingress: str
    admin: str
    http: aiohttp.ClientSession
    counter_dir: Path
    metrics: tuple[str, ...] = ()  # the workers' /metrics URLs (shardgate only)

    async def request(self, method: str, path: str, body: Any = NO_BODY, *, text: str | None = None,
                      timeout_s: float = DEADLINE_S) -> tuple[int, Any]:
        """`body` is sent as JSON; NO_BODY sends no body and no content-type (no-argument handlers)."""
        kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=timeout_s)}
        if text is not None:
            kwargs["data"] = text.encode()
            kwargs["headers"] = {"content-type": "text/plain"}
        elif body is not NO_BODY:
            kwargs["json"] = body
        else:
            kwargs["skip_auto_headers"] = ("Content-Type",)  # aiohttp would add application/octet-stream
        async with self.http.request(method, f"{self.ingress}{path}", **kwargs) as r:
            return r.status, await decode(r)

    async def call(self, path: str, body: Any = NO_BODY, **kw: Any) -> tuple[int, Any]:
        """POST /restate/call/{path}."""
        return await self.request("POST", f"/restate/call/{path}", body, **kw)

    async def send(self, path: str, body: Any = NO_BODY) -> str:
        """POST /restate/send/{path}, expect 202 Accepted; returns the invocation id."""
        status, ack = await self.request("POST", f"/restate/send/{path}", body)
        assert status == 202, ack
        assert ack["status"] == "Accepted", ack
        return ack["invocationId"]

    async def output(self, invocation_id: str) -> tuple[int, Any]:
        return await self.request("GET", f"/restate/output/{invocation_id}")

    async def result(self, invocation_id: str, deadline_s: float = DEADLINE_S) -> tuple[int, Any]:
        """Poll GET /restate/output/{id} until it is no longer 470 (not ready)."""
        async def probe() -> tuple[int, Any] | None:
            status, body = await self.output(invocation_id)
            return None if status == 470 else (status, body)

        return await poll(f"the output of {invocation_id}", deadline_s, probe)

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)


async def decode(r: aiohttp.ClientResponse) -> Any:
    """JSON body, None for an empty body (a handler returning None), else the text."""
    raw = await r.read()
    if not raw:
        return None
    try:
        return await r.json(content_type=None)
    except ValueError:
        return raw.decode(errors="replace")


@pytest.fixture(scope="module")
def durable_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Serve `tests/services/durable_service.py` with hypercorn; yields (url, counter dir)."""
    base = tmp_path_factory.mktemp("durable")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    with serve_sdk_app("tests.services.durable_service:app", base / "hypercorn.log",
                       {COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url, counter_dir


async def register(target: Target, deployment_url: str, **extra: Any) -> str:
    """Register the deployment (force: replaces an earlier registration of the same services).

    Returns the deployment id once the ingress serves it.
    """
    body = {"uri": deployment_url, "force": True, **extra}
    async with target.http.post(f"{target.admin}/deployments", json=body,
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
        assert r.status in (200, 201), await r.text()
        deployment_id = (await r.json())["id"]

    async def ready() -> bool | None:
        status, value = await target.call("Leaf/double", 21, timeout_s=5)
        return True if (status, value) == (200, 42) else None

    await poll("the ingress to serve the durable deployment", 30.0, ready)
    return deployment_id


async def kill_unfinished(target: Target, deployment_id: str) -> None:
    """Reference only: kill invocations pinned to our deployment that a failed test left running."""
    query = ("SELECT id FROM sys_invocation WHERE status != 'completed' "
             f"AND pinned_deployment_id = '{deployment_id}'")
    async with target.http.post(f"{target.admin}/query", json={"query": query},
                                headers={"accept": "application/json"}) as r:
        rows = (await r.json())["rows"] if r.status == 200 else []
    for row in rows:
        async with target.http.patch(f"{target.admin}/invocations/{row['id']}/kill") as r:
            await r.read()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=PROTOCOLS)
async def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 durable_deployment: tuple[str, Path]) -> AsyncIterator[Target]:
    """The server under test, with the durable deployment registered."""
    deployment_url, counter_dir = durable_deployment
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        if REFERENCE:
            ingress, admin = (u.strip().rstrip("/") for u in REFERENCE.split(","))
            t = Target("reference", ingress, admin, http, counter_dir)
            deployment_id = await register(t, deployment_url,
                                           **({"use_http_11": True} if REFERENCE_HTTP11 else {}))
            try:
                yield t
            finally:  # leave nothing of this run behind on the shared reference server
                await kill_unfinished(t, deployment_id)
                async with http.delete(f"{admin}/deployments/{deployment_id}?force=true") as r:
                    assert r.status in (200, 202), await r.text()
            return
        version = request.param.removeprefix("v")
        spec = ClusterSpec(
            workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
            data_dir=tmp_path_factory.mktemp(f"cluster-{request.param}") / "data",
            start_timeout_s=45.0, log_level="INFO",
            # v7 streams every attempt (bidirectional, `partition/bidi.py`); v6 streams only the
            # handlers seen to go on at once (`auto`); the others stay request-response
            extra_env={"SHARDGATE_MAX_PROTOCOL_VERSION": version,
                       "SHARDGATE_BIDI": "always" if version == "7" else "auto"},
        )
        async with DevCluster(spec) as cluster:
            t = Target(request.param, cluster.ingress_url, cluster.admin_url, http, counter_dir,
                       tuple(f"http://127.0.0.1:{w.metrics_port}/metrics" for w in cluster.workers))
            await register(t, deployment_url)
            yield t
    finally:
        await http.close()


# ---- ctx.run -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)  # the first test of each protocol version also pays for its cluster's start
async def test_run_result_is_journaled_and_side_effect_runs_once(target: Target) -> None:
    name = unique("once")
    # run_once sleeps after the run, so (in request/response mode) the result comes from a replay.
    assert await target.call("Durable/run_once", name) == (200, 1)
    assert target.counter(name) == 1


@pytest.mark.timeout(30)
async def test_stalled_attempt_is_aborted_after_the_manifest_timeouts(target: Target) -> None:
    name = unique("stall")
    started = time.monotonic()
    # inactivity 300 ms + abort 300 ms from the manifest: the hanging first attempt is aborted
    # long before its 30 s sleep ends, and the retry answers.
    assert await target.call("Stalling/stall_once", name) == (200, 2)
    assert time.monotonic() - started < 15
    assert target.counter(name) == 2


@pytest.mark.timeout(30)
async def test_run_is_retried_until_it_succeeds(target: Target) -> None:
    name = unique("flaky")
    # The closure fails on its 1st and 2nd execution; max_attempts=5 lets the 3rd one succeed.
    assert await target.call("Durable/run_flaky", name) == (200, 3)
    assert target.counter(name) == 3


@pytest.mark.timeout(30)
async def test_exhausted_run_fails_the_invocation_terminally(target: Target) -> None:
    name = unique("exhausted")
    # max_attempts=3: after the 3rd failed execution the SDK proposes a terminal failure carrying
    # the last error; the invocation completes with it (reference: 500, "RuntimeError('boom #3')").
    expected = (500, {"code": 500, "message": "RuntimeError('boom #3')", "source": "invocation"})
    assert await target.call("Durable/run_exhausted", name) == expected
    assert target.counter(name) == 3
    # Terminal: it is not retried any further.
    id_ = await target.send("Durable/run_exhausted", unique("exhausted"))
    assert await target.result(id_) == (500, {"code": 500, "message": "RuntimeError('boom #3')",
                                              "source": "invocation"})


@pytest.mark.timeout(30)
async def test_failing_attempts_are_retried_and_journaled_runs_replayed(target: Target) -> None:
    name = unique("retry")
    # Attempts 1 and 2 raise a retryable error after a ctx.run; attempt 3 returns. The run was
    # journaled by attempt 1, so later attempts replay its result instead of executing it again.
    assert await target.call("Durable/fail_retry_then_ok", name) == (200, {"attempts": 3, "run_count": 1})
    assert target.counter(name) == 3
    assert target.counter(f"{name}.run") == 1


@pytest.mark.timeout(30)
async def test_random_is_deterministic_across_replays(target: Target) -> None:
    name = unique("rnd")
    status, got = await target.call("Durable/rnd", name)
    assert status == 200, got
    # Attempt 1 journaled what it drew and then failed; attempt 2 re-drew after replaying the runs.
    assert got["attempt"] == 2
    assert got["a"] == got["journaled_a"]
    assert got["b"] == got["journaled_b"]
    assert got["uuid"] == got["journaled_uuid"]
    assert 0.0 <= got["a"] < 1.0
    assert target.counter(name) == 2


# ---- timers and calls ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_durable_sleep_lasts_at_least_its_duration(target: Target) -> None:
    started = time.monotonic()
    assert await target.call("Durable/sleep_ms", 300) == (200, 300)
    assert time.monotonic() - started >= 0.3 - TIMER_SLACK_S


@pytest.mark.timeout(30)
async def test_call_chain_across_three_services(target: Target) -> None:
    # Durable.call_chain -> Middle.step -> Leaf.double: 2 * 20 + 1
    assert await target.call("Durable/call_chain", 20) == (200, 41)
    assert await target.call("Middle/step", 5) == (200, 11)


@pytest.mark.timeout(30)
async def test_delayed_one_way_send_from_a_handler(target: Target) -> None:
    key = unique("later")
    started = time.monotonic()
    status, send_id = await target.call("Durable/send_later", {"key": key, "item": "later", "ms": 3000})
    assert status == 200, send_id
    assert isinstance(send_id, str) and send_id.startswith("inv_"), send_id
    assert await target.call(f"Ledger/{key}/items") == (200, [])  # not before the delay

    async def appended() -> float | None:
        status, items = await target.call(f"Ledger/{key}/items")
        assert status == 200, items
        return time.monotonic() if items == ["later"] else None

    assert await poll("the delayed append", DEADLINE_S, appended) - started >= 3.0 - TIMER_SLACK_S
    # The id the handler got for its send is the id of the append invocation.
    assert await target.result(send_id) == (200, 1)


@pytest.mark.timeout(30)
async def test_delayed_ingress_send(target: Target) -> None:
    key = unique("delayed")
    started = time.monotonic()
    status, ack = await target.request("POST", f"/restate/send/Ledger/{key}/append?delay=3s", "delayed")
    assert status == 202, ack
    assert ack["status"] == "Accepted"
    assert ack["invocationId"].startswith("inv_")
    assert "executionTime" in ack  # reference: RFC 3339, e.g. "2026-11-29T06:37:12.057000000Z"
    assert (await target.output(ack["invocationId"]))[0] == 470
    status, value = await target.result(ack["invocationId"])
    assert (status, value) == (200, 1)
    assert time.monotonic() - started >= 3.0 - TIMER_SLACK_S
    assert await target.call(f"Ledger/{key}/items") == (200, ["delayed"])


# ---- awakeables ----------------------------------------------------------------------------------


async def start_awake(target: Target) -> tuple[str, str]:
    """Start Durable/awake; returns (its invocation id, the awakeable id it published in the Ledger)."""
    key = unique("awk")
    invocation_id = await target.send("Durable/awake", key)

    async def published() -> str | None:
        status, items = await target.call(f"Ledger/{key}/items")
        assert status == 200, items
        return items[0] if items else None

    awakeable_id = await poll("the awakeable id in the Ledger", DEADLINE_S, published)
    assert awakeable_id.startswith("sign_1"), awakeable_id
    return invocation_id, awakeable_id


@pytest.mark.timeout(30)
async def test_awakeable_resolved_through_the_ingress(target: Target) -> None:
    invocation_id, awakeable_id = await start_awake(target)
    assert (await target.output(invocation_id))[0] == 470
    value = {"v": [1, 2], "s": "ok"}
    assert await target.request("POST", f"/restate/awakeables/{awakeable_id}/resolve", value) == (202, None)
    assert await target.result(invocation_id) == (200, value)
    # Completing it again is accepted (202) and changes nothing.
    again = await target.request("POST", f"/restate/awakeables/{awakeable_id}/resolve", {"v": 3})
    assert again == (202, None)
    assert await target.output(invocation_id) == (200, value)


@pytest.mark.timeout(30)
async def test_awakeable_resolved_by_another_handler(target: Target) -> None:
    invocation_id, awakeable_id = await start_awake(target)
    resolved = await target.call("Durable/resolve_awk", {"id": awakeable_id, "value": "from-handler"})
    assert resolved == (200, None)
    assert await target.result(invocation_id) == (200, "from-handler")


@pytest.mark.timeout(30)
async def test_awakeable_rejected(target: Target) -> None:
    via_ingress, ingress_awk = await start_awake(target)
    via_handler, handler_awk = await start_awake(target)
    rejected = await target.request("POST", f"/restate/awakeables/{ingress_awk}/reject", text="go away")
    assert rejected == (202, None)
    assert await target.call("Durable/reject_awk", {"id": handler_awk, "message": "denied"}) == (200, None)
    # A rejection is a terminal failure of the awaiting invocation, code 500 with the given message.
    assert await target.result(via_ingress) == (500, {"code": 500, "message": "go away",
                                                      "source": "invocation"})
    assert await target.result(via_handler) == (500, {"code": 500, "message": "denied",
                                                      "source": "invocation"})


@pytest.mark.timeout(30)
async def test_malformed_awakeable_id_is_rejected_by_the_ingress(target: Target) -> None:
    status, body = await target.request("POST", "/restate/awakeables/sign_1bogus/resolve", 1)
    assert status == 400, body
    assert body["message"] == "bad awakeable id 'sign_1bogus': id doesn't match the expected type"
    assert body["source"] == "ingress"


# ---- workflows and durable promises --------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_workflow_run_waits_for_its_promise(target: Target) -> None:
    key = unique("wf")
    assert await target.call(f"Approval/{key}/peek") == (200, None)
    assert await target.call(f"Approval/{key}/state") == (200, {"x": None, "stage": None})
    run_call = asyncio.create_task(target.call(f"Approval/{key}/run", "doc", timeout_s=DEADLINE_S + 10))
    try:
        async def waiting() -> bool | None:
            status, st = await target.call(f"Approval/{key}/state")
            assert status == 200, st
            return True if st == {"x": "doc", "stage": "waiting"} else None

        # The shared `state` handler sees what the running workflow handler wrote.
        await poll("the workflow to wait on its promise", DEADLINE_S, waiting)
        assert await target.call(f"Approval/{key}/peek") == (200, None)
        status, body = await target.request("GET", f"/restate/workflow/Approval/{key}/output")
        assert status == 470, body
        assert not run_call.done()

        assert await target.call(f"Approval/{key}/approve", "yes") == (200, None)
        assert await asyncio.wait_for(run_call, DEADLINE_S) == (200, "doc:yes")
    finally:
        run_call.cancel()
    assert await target.call(f"Approval/{key}/peek") == (200, "yes")
    assert await target.call(f"Approval/{key}/state") == (200, {"x": "doc", "stage": "approved"})
    assert await target.request("GET", f"/restate/workflow/Approval/{key}/output") == (200, "doc:yes")

    # A completed promise cannot be completed again: the shared handler fails with the reference's 409.
    assert await target.call(f"Approval/{key}/approve", "again") == (
        409, {"code": 409, "message": "promise was already completed", "source": "invocation"})
    assert await target.call(f"Approval/{key}/peek") == (200, "yes")
    # The workflow handler runs once per key.
    assert await target.call(f"Approval/{key}/run", "doc2") == (
        409, {"code": 409, "message": "the workflow method was already invoked", "source": "invocation"})
    status, ack = await target.request("POST", f"/restate/send/Approval/{key}/run", "doc3")
    assert status == 202, ack
    assert ack["status"] == "PreviouslyAccepted"


@pytest.mark.timeout(30)
async def test_promise_resolves_only_once(target: Target) -> None:
    key = unique("twice")
    # Inside one shared handler: the first resolve succeeds, the second gets a TerminalError.
    assert await target.call(f"Approval/{key}/approve_twice", "z") == (200, [
        {"ok": True},
        {"ok": False, "code": 409, "message": "promise was already completed"},
    ])
    assert await target.call(f"Approval/{key}/peek") == (200, "z#1")
    # The promise was completed before the workflow ran: run does not block.
    assert await target.call(f"Approval/{key}/run", "late") == (200, "late:z#1")
    # Once completed, every resolve attempt fails the same way.
    assert await target.call(f"Approval/{key}/approve_twice", "y") == (200, [
        {"ok": False, "code": 409, "message": "promise was already completed"},
        {"ok": False, "code": 409, "message": "promise was already completed"},
    ])


# ---- state ---------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_state_keys_and_clear_all(target: Target) -> None:
    key = unique("keys")
    assert await target.call(f"Ledger/{key}/keys") == (200, [])
    assert await target.call(f"Ledger/{key}/put", {"name": "a", "value": 1}) == (200, None)
    assert await target.call(f"Ledger/{key}/put", {"name": "b", "value": [2]}) == (200, None)
    assert await target.call(f"Ledger/{key}/append", "x") == (200, 1)
    assert await target.call(f"Ledger/{key}/keys") == (200, ["a", "b", "items"])
    assert await target.call(f"Ledger/{key}/clear") == (200, None)
    assert await target.call(f"Ledger/{key}/keys") == (200, [])
    assert await target.call(f"Ledger/{key}/items") == (200, [])
    assert await target.call(f"Ledger/{key}/append", "y") == (200, 1)


@pytest.mark.timeout(30)
async def test_lazy_state(target: Target) -> None:
    key = unique("lazy")
    totals = [await target.call(f"LazyLedger/{key}/add", n) for n in (1, 2, 3)]
    assert totals == [(200, 1), (200, 3), (200, 6)]
    assert await target.call(f"LazyLedger/{key}/total") == (200, {"total": 6, "count": 3})
    assert await target.call(f"LazyLedger/{key}/keys") == (200, ["count", "total"])
    assert await target.call(f"LazyLedger/{key}/reset") == (200, None)
    assert await target.call(f"LazyLedger/{key}/keys") == (200, [])
    assert await target.call(f"LazyLedger/{key}/total") == (200, {"total": 0, "count": 0})
    assert await target.call(f"LazyLedger/{key}/add", 10) == (200, 10)


@pytest.mark.timeout(30)
async def test_exclusive_handler_keeps_the_lock_while_sleeping(target: Target) -> None:
    key = unique("nap")
    nap_ms = 4000  # long enough for the four requests below to come while it sleeps
    started = time.monotonic()
    nap_id = await target.send(f"Ledger/{key}/nap", nap_ms)

    async def napping() -> bool | None:
        status, keys = await target.call(f"Ledger/{key}/keys")  # shared: not blocked by the lock
        assert status == 200, keys
        return True if "napping" in keys else None

    await poll("the nap to start", DEADLINE_S, napping)
    assert await target.call(f"Ledger/{key}/items") == (200, ["nap-start"])
    append_id = await target.send(f"Ledger/{key}/append", "during")
    assert (await target.output(append_id))[0] == 470  # queued behind the sleeping nap
    assert await target.result(append_id) == (200, 3)
    assert time.monotonic() - started >= nap_ms / 1000 - TIMER_SLACK_S
    assert await target.output(nap_id) == (200, "rested")
    assert await target.call(f"Ledger/{key}/items") == (200, ["nap-start", "nap-end", "during"])
    assert await target.call(f"Ledger/{key}/keys") == (200, ["items"])


# ---- cancellation --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_cancel_a_sleeping_invocation(target: Target) -> None:
    victim = await target.send("Sleepy/long", 60_000)
    assert (await target.output(victim))[0] == 470
    assert await target.call("Durable/cancel_other", victim) == (200, None)
    cancelled = (409, {"code": 409, "message": "cancelled", "source": "invocation"})
    assert await target.result(victim) == cancelled
    # Cancelling a completed invocation is a no-op.
    assert await target.call("Durable/cancel_other", victim) == (200, None)
    assert await target.output(victim) == cancelled


# ---- transports ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_the_attempts_took_the_transports_of_the_bidi_mode(target: Target) -> None:
    """Last in the module: with SHARDGATE_BIDI=always (v7) every attempt above was bidirectional;
    with auto (v6) the handlers replayed soon after their journal grew streamed, the rest stayed
    request-response over HTTP/1.1."""
    if not target.metrics:
        pytest.skip("the transport counters are shardgate's")
    totals = await attempts_by_transport(target.http, target.metrics)
    if target.label == "v7":
        assert totals.get("h2c_bidi", 0) > 0 and totals.get("http1", 0) == 0, totals
    else:
        assert totals.get("h2c_bidi", 0) > 0 and totals.get("http1", 0) > 0, totals
