"""Invocation lifecycle commands end to end: a real multi-process cluster (`DevCluster`: Redis, 2
workers, ingress) and a real restate-sdk deployment (`tests/services/lifecycle_service.py`).

The admin routes are served by an admin app built in this process with `build_admin_app` and an
`InvocationControl` over a real `GrpcDispatcher` to the cluster's workers (the ingress process
serves them too once `ingress/app.py` passes its dispatcher to `build_admin_app`); everything
else goes to the cluster's own ingress and admin API.

* kill of a running call answers its caller 409 `killed` and the next call on the key runs;
* cancel of a delayed send removes it: it never runs, whether the cancel comes from the admin
  API or from a handler (`ctx.cancel_invocation`); kill of one answers its attached caller 409
  `killed` and removes it too;
* cancel of a running handler lets it compensate (it catches the cancellation, records it in a
  ctx.run and lets it propagate): its caller gets 409 `cancelled`;
* purge, then attach / output answer 404 and the idempotency key runs again;
* pause / resume of an invocation paused by its retry policy;
* the answers to bad ids, unknown ids and commands the status does not allow;
* every command sent while the owner of the invocation's partition is SIGKILLed, in two timings:
  with the request (the command waits for the takeover and lands on the new owner) and once Redis
  shows its effect (the old owner applied it and died before answering, so the dispatcher re-sends
  it to the new owner, which finds it done). The admin answers the command's success either way
  and the invocation ends in one consistent state: kill / cancel answer the caller and free the
  key, and remove a never-started one; pause stays paused across the takeover (its sleep's timer
  fires and wakes nothing) and runs again only on resume; a resumed invocation runs to its end
  once (a side-effect counter); purge leaves no key or member mentioning the id and frees its
  idempotency key; purge-journal keeps the result and drops the journal (restart-as-new then
  410); restart-as-new creates exactly one new invocation, which runs once;
* kill, purge and restart-as-new under concurrent attaches: every waiting attach is answered 409
  `killed` by a kill; a refused purge leaves them waiting, a purge racing attaches answers each
  the result or 404; attaches racing a restart-as-new get the original's result, and attaches
  waiting on the new invocation get its own;
* a state edit of a locked key sent while the owner of the key's partition is SIGKILLed: it waits
  behind the lock whichever owner took it, and lands once the lock is released.

Nothing sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ingress.admin import AdminSettings, InvocationControl, build_admin_app
from ingress.grpc_dispatcher import GrpcDispatcher
from partition import keys
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.registry import RegistryCache, RegistryStore
from shardgate.routing import Router
from shardgate.sharding import InvocationId, partition_key_for_key, partition_of
from tests.clusters import partition_owners, poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTITIONS = 8
DEADLINE_S = 20.0
UNKNOWN_ID = "inv_19qmpqSOYavs3m8NBJV7rgq0RAIyAAAAAA"
# when a test SIGKILLs the owner of the partition: as the request is sent, or once Redis shows its effect
WITH_REQUEST, ONCE_APPLIED = "with-the-request", "once-applied"
TIMINGS = pytest.mark.parametrize("timing", [WITH_REQUEST, ONCE_APPLIED])
MODE_ERROR = ("Failed to deserialize query string: mode: unknown variant `KILL`, "
              "expected one of `Cancel`, `cancel`, `Kill`, `kill`, `Purge`, `purge`")


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession, admin_url: str, redis: Redis,
                 counter_dir: Path) -> None:
        self.cluster, self.http, self.admin_url, self.redis = cluster, http, admin_url, redis
        self.counter_dir = counter_dir

    async def _request(self, method: str, url: str, body: Any, headers: dict[str, str] | None,
                       timeout_s: float) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            return r.status, (await r.json(content_type=None)) if raw else None

    async def ingress(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      timeout_s: float = DEADLINE_S) -> tuple[int, Any]:
        return await self._request(method, f"{self.cluster.ingress_url}{path}", body, headers, timeout_s)

    async def admin(self, method: str, path: str) -> tuple[int, Any]:
        return await self._request(method, f"{self.admin_url}{path}", None, None, DEADLINE_S)

    async def lookup(self, service: str, key: str | None, handler: str, ik: str) -> str:
        target = {"target": "idempotentInvocation", "service": service, "handler": handler, "idempotencyKey": ik}
        if key is not None:
            target["key"] = key
        status, body = await self.ingress("POST", "/restate/lookup", target)
        assert status == 200, body
        return str(body["invocationId"])

    async def status_of(self, inv_id: str) -> str | None:
        p = partition_of(InvocationId.parse(inv_id).partition_key, PARTITIONS)
        raw = await self.redis.hget(keys.invocation(p, inv_id), "st")
        return None if raw is None else raw.decode()

    async def wait_status(self, inv_id: str, wanted: str) -> None:
        async def probe() -> bool | None:
            return True if await self.status_of(inv_id) == wanted else None

        await poll(f"{inv_id} to be {wanted}", DEADLINE_S, probe)

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)

    async def waiting_callers(self) -> float:
        """Callers the workers hold waiting for a result (their `waiting_callers` gauges, summed)."""
        total = 0.0
        for worker in self.cluster.workers:
            async with self.http.get(f"http://127.0.0.1:{worker.metrics_port}/metrics",
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("shardgate_partition_waiting_callers "):
                        total += float(line.split()[1])
        return total


@pytest.fixture(scope="module")
def lifecycle_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("lifecycle")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    with serve_sdk_app("tests.services.lifecycle_service:app", base / "hypercorn.log",
                       {COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url, counter_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory,
              lifecycle_deployment: tuple[str, Path]) -> AsyncIterator[Env]:
    url, counter_dir = lifecycle_deployment
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("lifecycle-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO", lease_ttl_ms=2000,
                       extra_env={"SHARDGATE_LEASE_TTL_MS": "2000", "SHARDGATE_HEARTBEAT_INTERVAL_MS": "300"})
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        redis = Redis.from_url(cluster.redis_url)
        router = Router(redis, PARTITIONS)
        dispatcher = GrpcDispatcher(router, routing_deadline_s=15.0, rpc_timeout_s=5.0, call_timeout_s=30.0)
        store = RegistryStore(redis)
        app = build_admin_app(store, RegistryCache(store), http,
                              AdminSettings(advertised_ingress_url=cluster.ingress_url),
                              InvocationControl(dispatcher, PARTITIONS))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            await router.refresh()
            e = Env(cluster, http, str(server.make_url("")).rstrip("/"), redis, counter_dir)
            async with http.post(f"{cluster.admin_url}/deployments", json={"uri": url, "force": True},
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status in (200, 201), await r.text()

            async def ready() -> bool | None:
                status, _ = await e.ingress("POST", "/restate/call/Greet/hello", unique("probe"), timeout_s=5)
                return True if status == 200 else None

            await poll("the ingress to serve the lifecycle deployment", 30.0, ready)
            yield e
        finally:
            await server.close()
            await router.close()
            await redis.aclose()


async def _started(env: Env, inv_id: str) -> None:
    """Wait until the invocation exists and has not completed (output 470)."""
    async def probe() -> bool | None:
        status, _ = await env.ingress("GET", f"/restate/output/{inv_id}")
        return True if status == 470 else None

    await poll(f"{inv_id} to exist", DEADLINE_S, probe)


@pytest.mark.timeout(90)
async def test_kill_of_a_running_call_answers_409_and_unblocks_the_key(env: Env) -> None:
    key, ik, name = unique("job"), unique("ik"), unique("next")
    caller = asyncio.ensure_future(env.ingress("POST", f"/restate/call/Job/{key}/hold", 60_000,
                                               {"idempotency-key": ik}, timeout_s=60))
    inv = await env.lookup("Job", key, "hold", ik)
    await _started(env, inv)
    behind = asyncio.ensure_future(env.ingress("POST", f"/restate/call/Job/{key}/after", name, timeout_s=60))
    assert await env.admin("PATCH", f"/invocations/{inv}/kill") == (200, None)
    status, body = await asyncio.wait_for(caller, DEADLINE_S)
    assert (status, body) == (409, {"code": 409, "message": "killed", "source": "invocation"})
    # the key's lock went to the call waiting behind it, which runs at once
    assert await asyncio.wait_for(behind, DEADLINE_S) == (200, 1)
    assert await env.ingress("GET", f"/restate/output/{inv}") == (
        409, {"code": 409, "message": "killed", "source": "invocation"})
    status, body = await env.admin("PATCH", f"/v4/invocations/{inv}/kill")
    assert (status, body["message"]) == (409, f"The invocation '{inv}' was already completed.")


@pytest.mark.timeout(90)
async def test_cancel_of_a_delayed_send_removes_it(env: Env) -> None:
    cancelled, sentinel = unique("cancelled"), unique("sentinel")
    sent_at = time.monotonic()
    status, ack = await env.ingress("POST", "/restate/send/Greet/hello?delay=6s", cancelled)
    assert status == 202, ack
    inv = ack["invocationId"]
    assert await env.admin("PATCH", f"/invocations/{inv}/cancel") == (200, None)
    assert time.monotonic() - sent_at < 6.0, "the cancel came after the send was due"
    # Sent after the cancel with a longer delay: due after the cancelled one would have run.
    status, later = await env.ingress("POST", "/restate/send/Greet/hello?delay=7s", sentinel)
    assert status == 202, later
    status, body = await env.ingress("GET", f"/restate/output/{inv}")
    assert (status, body["message"]) == (404, "invocation not found")

    async def sentinel_ran() -> bool | None:
        return True if env.counter(sentinel) == 1 else None

    await poll("the later delayed send to run", DEADLINE_S, sentinel_ran)
    assert env.counter(cancelled) == 0  # due before the sentinel, and never ran
    status, body = await env.admin("PATCH", f"/invocations/{inv}/cancel")
    assert (status, body["message"]) == (404, f"The requested invocation '{inv}' does not exist")


@pytest.mark.timeout(90)
async def test_kill_of_a_delayed_send_answers_its_attached_caller_and_removes_it(env: Env) -> None:
    status, ack = await env.ingress("POST", "/restate/send/Greet/hello?delay=60s", unique("killed"))
    assert status == 202, ack
    inv = ack["invocationId"]
    attached = asyncio.ensure_future(env.ingress("GET", f"/restate/attach/{inv}", timeout_s=60))

    async def attached_waits() -> bool | None:  # the attach reached the worker: it waits there
        return True if not attached.done() and await env.waiting_callers() >= 1 else None

    await poll("the attach to wait", DEADLINE_S, attached_waits)
    assert await env.admin("PATCH", f"/invocations/{inv}/kill") == (200, None)
    assert await asyncio.wait_for(attached, DEADLINE_S) == (
        409, {"code": 409, "message": "killed", "source": "invocation"})
    status, body = await env.ingress("GET", f"/restate/output/{inv}")
    assert (status, body["message"]) == (404, "invocation not found")


@pytest.mark.timeout(90)
async def test_a_handler_cancelling_its_delayed_send_removes_it(env: Env) -> None:
    cancelled, sentinel = unique("cancelled"), unique("sentinel")
    status, inv = await env.ingress("POST", "/restate/call/Greet/send_and_cancel", {"name": cancelled, "ms": 5000})
    assert status == 200, inv
    # Sent after the handler returned with a longer delay: due after the cancelled one would have run.
    status, later = await env.ingress("POST", "/restate/send/Greet/hello?delay=6s", sentinel)
    assert status == 202, later

    async def removed() -> bool | None:
        return True if await env.status_of(inv) is None else None

    await poll("the cancelled send to be removed", DEADLINE_S, removed)

    async def sentinel_ran() -> bool | None:
        return True if env.counter(sentinel) == 1 else None

    await poll("the later delayed send to run", DEADLINE_S, sentinel_ran)
    assert env.counter(cancelled) == 0  # due before the sentinel, and never ran


@pytest.mark.timeout(90)
async def test_cancel_of_a_running_handler_lets_it_compensate(env: Env) -> None:
    key, ik, name = unique("job"), unique("ik"), unique("compensated")
    caller = asyncio.ensure_future(env.ingress("POST", f"/restate/call/Job/{key}/compensating", name,
                                               {"idempotency-key": ik}, timeout_s=60))
    inv = await env.lookup("Job", key, "compensating", ik)
    await env.wait_status(inv, "suspended")  # in its 60 s durable sleep
    assert await env.admin("PATCH", f"/invocations/{inv}/cancel") == (202, None)
    status, body = await asyncio.wait_for(caller, DEADLINE_S)
    assert (status, body) == (409, {"code": 409, "message": "cancelled", "source": "invocation"})
    assert env.counter(name) == 1  # the compensation ran, once


@pytest.mark.timeout(90)
async def test_purge_then_attach_and_output_are_404_and_the_key_runs_again(env: Env) -> None:
    ik, name = unique("ik"), unique("hello")
    headers = {"idempotency-key": ik}
    assert await env.ingress("POST", "/restate/call/Greet/hello", name, headers) == (200, f"hello {name}")
    inv = await env.lookup("Greet", None, "hello", ik)
    assert await env.admin("PATCH", f"/invocations/{inv}/purge") == (200, None)
    await _check_purged(env, inv, name, headers)
    status, body = await env.admin("PATCH", f"/invocations/{inv}/purge")
    assert status == 200, body


@pytest.mark.timeout(90)
async def test_purge_of_a_running_invocation_is_409(env: Env) -> None:
    key = unique("job")
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/hold", 60_000)
    assert status == 202, ack
    inv = ack["invocationId"]
    status, body = await env.admin("PATCH", f"/invocations/{inv}/purge")
    assert (status, body["message"]) == (409, f"The invocation '{inv}' is not yet completed.")
    assert await env.admin("DELETE", f"/invocations/{inv}?mode=Kill") == (202, None)
    assert (await env.ingress("GET", f"/restate/output/{inv}"))[0] == 409


@pytest.mark.timeout(90)
async def test_resume_of_a_scheduled_invocation_is_too_early(env: Env) -> None:
    status, ack = await env.ingress("POST", "/restate/send/Greet/hello?delay=60s", unique("early"))
    assert status == 202, ack
    inv = ack["invocationId"]
    status, body = await env.admin("PATCH", f"/invocations/{inv}/resume")
    message = f"The invocation '{inv}' is either inboxed or scheduled, cannot be resumed."
    assert (status, body["message"]) == (425, message)
    assert await env.admin("DELETE", f"/invocations/{inv}?mode=Kill") == (202, None)


@pytest.mark.timeout(90)
async def test_pause_and_resume_of_an_invocation_paused_by_its_retry_policy(env: Env) -> None:
    key, name = unique("job"), unique("flaky")
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/flaky", name)
    assert status == 202, ack
    inv = ack["invocationId"]
    await env.wait_status(inv, "paused")
    assert env.counter(name) == 2  # PAUSE_AFTER_ATTEMPTS, then nothing restarts it
    assert await env.admin("PATCH", f"/invocations/{inv}/pause") == (200, None)  # already paused
    assert (await env.ingress("GET", f"/restate/output/{inv}"))[0] == 470
    (env.counter_dir / f"{name}.ok.count").write_text("1")
    assert await env.admin("PATCH", f"/invocations/{inv}/resume") == (200, None)

    async def completed() -> tuple[int, Any] | None:
        answer = await env.ingress("GET", f"/restate/output/{inv}")
        return answer if answer[0] != 470 else None

    assert await poll("the resumed invocation to complete", DEADLINE_S, completed) == (200, 3)
    status, body = await env.admin("PATCH", f"/invocations/{inv}/resume")
    assert (status, body["message"]) == (409, f"The invocation '{inv}' is completed, cannot be resumed.")
    status, body = await env.admin("PATCH", f"/invocations/{inv}/pause")
    assert (status, body["message"]) == (409, f"The invocation '{inv}' is not running, cannot be paused.")


@pytest.mark.timeout(90)
async def test_pause_of_a_suspended_invocation_then_resume_runs_it_to_the_end(env: Env) -> None:
    key = unique("job")
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/hold", 1500)
    assert status == 202, ack
    inv = ack["invocationId"]
    await env.wait_status(inv, "suspended")
    assert await env.admin("PATCH", f"/invocations/{inv}/pause") == (202, None)
    await env.wait_status(inv, "paused")
    assert await env.admin("PATCH", f"/invocations/{inv}/resume") == (200, None)  # replays its sleep

    async def completed() -> tuple[int, Any] | None:
        answer = await env.ingress("GET", f"/restate/output/{inv}")
        return answer if answer[0] != 470 else None

    assert await poll("the invocation to complete", DEADLINE_S, completed) == (200, "held")


@pytest.mark.timeout(60)
async def test_malformed_and_unknown_ids_and_methods(env: Env) -> None:
    status, body = await env.admin("PATCH", "/invocations/garbage/cancel")
    assert (status, body["message"]) == (400, "The request field 'invocation_id' is invalid. Reason: bad format")
    for command in ("cancel", "kill", "purge", "purge-journal", "pause", "resume"):
        status, body = await env.admin("PATCH", f"/v2/invocations/{UNKNOWN_ID}/{command}")
        assert (status, body["message"]) == (404, f"The requested invocation '{UNKNOWN_ID}' does not exist")
    async with env.http.post(f"{env.admin_url}/invocations/{UNKNOWN_ID}/cancel",
                             timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
        assert (r.status, r.headers.get("allow")) == (405, "PATCH")
    status, body = await env.admin("DELETE", f"/invocations/{UNKNOWN_ID}?mode=KILL")
    assert (status, body["message"]) == (400, MODE_ERROR)
    assert (await env.admin("PATCH", f"/invocations/{UNKNOWN_ID}/restart-as-new"))[0] == 404  # unknown id


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "status", "message", "effect"),
                         [("kill", 200, "killed", "completed"), ("cancel", 202, "cancelled", "invoked")])
@TIMINGS
async def test_command_while_the_partition_owner_is_sigkilled(revive: Env, command: str, status: int,
                                                              message: str, effect: str, timing: str) -> None:
    env = revive
    key, inv, caller = await _suspended_hold(env)
    name = unique("after")

    async def took_effect() -> bool:  # kill: completed; cancel: the signal appended, woken
        return await env.status_of(inv) == effect

    sent = env.admin("PATCH", f"/invocations/{inv}/{command}")
    answer = await _command_killing_owner(env, timing, inv, sent, took_effect)
    assert answer == (status, None)  # run by the old owner before it died, or by the new one
    assert await asyncio.wait_for(caller, 60) == (409, {"code": 409, "message": message, "source": "invocation"})
    assert await env.status_of(inv) == "completed"
    assert await env.ingress("POST", f"/restate/call/Job/{key}/after", name, timeout_s=60) == (200, 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["kill", "cancel"])
@TIMINGS
async def test_removal_of_a_delayed_send_while_the_partition_owner_is_sigkilled(
        revive: Env, command: str, timing: str) -> None:
    env = revive
    name = unique("removed")
    status, ack = await env.ingress("POST", "/restate/send/Greet/hello?delay=60s", name)
    assert status == 202, ack
    inv = ack["invocationId"]

    async def removed() -> bool:
        return await env.status_of(inv) is None

    sent = env.admin("PATCH", f"/invocations/{inv}/{command}")
    answer = await _command_killing_owner(env, timing, inv, sent, removed)
    assert answer == (200, None)  # a never-started invocation removed, by whichever owner
    assert await removed()
    # nothing left, its query index entry included (dropped by the removing script)
    assert await _traces_of(env, inv) == []
    status, body = await env.ingress("GET", f"/restate/output/{inv}")
    assert (status, body["message"]) == (404, "invocation not found")
    # (No second command here: the admin's route to the dead owner may still be cached, and a
    # command whose first try failed to connect is taken as re-sent, so it would answer 200, not 404.)


@pytest.mark.timeout(120)
async def test_state_edit_while_the_partition_owner_is_sigkilled(env: Env) -> None:
    key, inv, holder = await _suspended_hold(env)
    owners = await poll("partition ownership to settle", DEADLINE_S,
                        lambda: partition_owners(env.cluster, env.redis, PARTITIONS))
    p = partition_of(InvocationId.parse(inv).partition_key, PARTITIONS)
    edit = {"object_key": key, "new_state": {"step": list(b"2")}}

    async def post_edit() -> int:
        async with env.http.post(f"{env.admin_url}/services/Job/state", json=edit,
                                 timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            await r.read()
            return r.status

    answer, code = await asyncio.gather(post_edit(), env.cluster.kill_worker(owners[p], signal.SIGKILL))
    assert (answer, code) == (202, -signal.SIGKILL)  # taken by the old owner before it died, or by the new one
    state = keys.state(p, "Job", key)
    assert await env.redis.hgetall(state) == {}  # queued behind the lock, whoever took it
    assert await env.admin("PATCH", f"/invocations/{inv}/kill") == (200, None)
    assert (await asyncio.wait_for(holder, 60))[0] == 409
    assert await env.redis.hgetall(state) == {b"step": b"2"}  # applied at the hand-over, in one piece
    assert await env.ingress("POST", f"/restate/call/Job/{key}/after", unique("after"), timeout_s=60) == (200, 1)
    await env.cluster.restart_worker(owners[p])
    await poll("partition ownership to settle", DEADLINE_S,
               lambda: partition_owners(env.cluster, env.redis, PARTITIONS))


# ---- a worker SIGKILLed during each lifecycle command ---------------------------------------------

KILLED_ANSWER = (409, {"code": 409, "message": "killed", "source": "invocation"})
# Longer than a takeover (the 2 s lease TTL plus a heartbeat) by 3x and more, so the nap is still
# pending when a command that the SIGKILL delayed by a takeover lands.
NAP_MS = 10_000
ATTACHES = 3


def _partition(inv: str) -> int:
    return partition_of(InvocationId.parse(inv).partition_key, PARTITIONS)


@pytest_asyncio.fixture(loop_scope="module")
async def revive(env: Env) -> AsyncIterator[Env]:
    """The module's env; after the test every killed worker is started again (also when the test
    failed, so the next one gets two workers) and ownership has settled."""
    yield env
    for index, worker in enumerate(env.cluster.workers):
        if not worker.running:
            await env.cluster.restart_worker(index)
    await poll("partition ownership to settle", DEADLINE_S,
               lambda: partition_owners(env.cluster, env.redis, PARTITIONS))


async def _during_owner_kill(env: Env, inv: str, request: Any) -> Any:
    """Send `request` (an admin coroutine) while SIGKILLing the owner of `inv`'s partition; its answer."""
    owners = await poll("partition ownership to settle", DEADLINE_S,
                        lambda: partition_owners(env.cluster, env.redis, PARTITIONS))
    owner = owners[_partition(inv)]
    answer, code = await asyncio.gather(request, env.cluster.kill_worker(owner, signal.SIGKILL))
    assert code == -signal.SIGKILL
    return answer


async def _once_it_took_effect_owner_kill(env: Env, inv: str, request: Any,
                                          took_effect: Callable[[], Awaitable[bool]]) -> Any:
    """Send `request` and SIGKILL the owner of `inv`'s partition as soon as Redis shows the
    command's effect: racing the worker's reply, so the dispatcher may have to re-send a command
    that was already applied (to the new owner, which must answer it as a success)."""
    owners = await poll("partition ownership to settle", DEADLINE_S,
                        lambda: partition_owners(env.cluster, env.redis, PARTITIONS))
    sent = asyncio.ensure_future(request)

    async def effect_or_answer() -> bool | None:
        return True if sent.done() or await took_effect() else None

    await poll("the command to take effect", DEADLINE_S, effect_or_answer, interval_s=0.0)
    assert await env.cluster.kill_worker(owners[_partition(inv)], signal.SIGKILL) == -signal.SIGKILL
    return await asyncio.wait_for(sent, DEADLINE_S)


async def _command_killing_owner(env: Env, timing: str, inv: str, request: Any,
                                 took_effect: Callable[[], Awaitable[bool]]) -> Any:
    """`request`'s answer, the owner SIGKILLed `with the request` or `once it took effect`."""
    if timing == WITH_REQUEST:
        return await _during_owner_kill(env, inv, request)
    return await _once_it_took_effect_owner_kill(env, inv, request, took_effect)


async def _output(env: Env, inv: str, deadline_s: float = DEADLINE_S) -> tuple[int, Any]:
    """The invocation's output once it completed."""
    async def completed() -> tuple[int, Any] | None:
        answer = await env.ingress("GET", f"/restate/output/{inv}")
        return answer if answer[0] != 470 else None

    return await poll(f"{inv} to complete", deadline_s, completed)


async def _sleep_members(env: Env, inv: str) -> list[str]:
    members = await env.redis.zrange(keys.timers(_partition(inv)), 0, -1)
    return [m.decode() for m in members if m.decode().startswith(f"w|{inv}|")]


async def _traces_of(env: Env, inv: str) -> list[str]:
    """Every key of the invocation's partition whose name or content mentions its id."""
    needle, found = inv.encode(), []
    async for raw in env.redis.scan_iter(match=f"sg:{{p{_partition(inv)}}}:*", count=1000):
        name = raw.decode()
        kind = (await env.redis.type(raw)).decode()
        if kind == "zset":
            content = [m for m, _ in await env.redis.zrange(raw, 0, -1, withscores=True)]
        elif kind == "set":
            content = list(await env.redis.smembers(raw))
        elif kind == "list":
            content = await env.redis.lrange(raw, 0, -1)
        elif kind == "hash":
            content = [b for pair in (await env.redis.hgetall(raw)).items() for b in pair]
        else:
            content = [await env.redis.get(raw) or b""]
        if inv in name or any(needle in item for item in content):
            found.append(name)
    return found


async def _waiting_for(env: Env, inv: str, n: int, baseline: float) -> list[asyncio.Future[tuple[int, Any]]]:
    """`n` attaches to `inv`, once all of them wait on a worker."""
    attaches = [asyncio.ensure_future(env.ingress("GET", f"/restate/attach/{inv}", timeout_s=60))
                for _ in range(n)]

    async def all_wait() -> bool | None:
        waiting = not any(a.done() for a in attaches) and await env.waiting_callers() >= baseline + n
        return True if waiting else None

    await poll(f"{n} attaches to {inv} to wait", DEADLINE_S, all_wait)
    return attaches


async def _check_purged(env: Env, inv: str, name: str, headers: dict[str, str]) -> None:
    """After the purge of the completed `Greet/hello(name)` `inv`: output and attach answer 404 and
    its idempotency key runs the handler again."""
    status, body = await env.ingress("GET", f"/restate/output/{inv}")
    assert (status, body["message"]) == (404, "invocation not found")
    status, body = await env.ingress("GET", f"/restate/attach/{inv}")
    assert (status, body["message"]) == (404, "not found")
    assert await env.ingress("POST", "/restate/call/Greet/hello", name, headers) == (200, f"hello {name}")
    assert env.counter(name) == 2  # the freed idempotency key ran again


async def _suspended_hold(env: Env) -> tuple[str, str, asyncio.Future[tuple[int, Any]]]:
    """A `Job/hold` call (idempotency key, a minute's durable sleep) suspended and holding its key's
    lock: (key, invocation id, the waiting caller)."""
    key, ik = unique("job"), unique("ik")
    caller = asyncio.ensure_future(env.ingress("POST", f"/restate/call/Job/{key}/hold", 60_000,
                                               {"idempotency-key": ik}, timeout_s=90))
    inv = await env.lookup("Job", key, "hold", ik)
    await env.wait_status(inv, "suspended")
    return key, inv, caller


async def _awaiting_word_with_attaches(
        env: Env) -> tuple[str, str, str, list[asyncio.Future[tuple[int, Any]]]]:
    """A `Job/await_word` invocation suspended on its awakeable with ATTACHES attaches waiting:
    (key, invocation id, awakeable id, the attaches)."""
    key = unique("job")
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/await_word", "w")
    assert status == 202, ack
    inv = ack["invocationId"]
    await env.wait_status(inv, "suspended")
    awakeable = await _awakeable_of(env, key)
    return key, inv, awakeable, await _waiting_for(env, inv, ATTACHES, await env.waiting_callers())


async def _awakeable_of(env: Env, key: str, other_than: str | None = None) -> str:
    """The awakeable id `Job/await_word` keeps in its key's state (a new one when `other_than`)."""
    state = keys.state(_partition_of_key(key), "Job", key)

    async def stored() -> str | None:
        raw = await env.redis.hget(state, "awakeable")
        found = None if raw is None else str(json.loads(raw))
        return found if found is not None and found != other_than else None

    return await poll(f"the awakeable of {key}", DEADLINE_S, stored)


def _partition_of_key(key: str) -> int:
    return partition_of(partition_key_for_key(key), PARTITIONS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("killed_during", ["pause", "resume"])
@TIMINGS
async def test_pause_or_resume_while_the_partition_owner_is_sigkilled(revive: Env, killed_during: str,
                                                                      timing: str) -> None:
    env = revive
    key, name = unique("job"), unique("nap")
    nap = {"name": name, "ms": NAP_MS}
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/nap_then_count", nap)
    assert status == 202, ack
    inv = ack["invocationId"]
    await env.wait_status(inv, "suspended")  # in its nap

    async def is_(status: str) -> bool:
        return await env.status_of(inv) == status

    pause = env.admin("PATCH", f"/invocations/{inv}/pause")
    if killed_during == "pause":
        pause = _command_killing_owner(env, timing, inv, pause, lambda: is_("paused"))
    assert await pause == (202, None)
    assert await env.status_of(inv) == "paused"
    if killed_during == "pause":
        assert await _sleep_members(env, inv), "the nap ended before the pause"
        # The new owner fires the nap's timer: the completion is stored and wakes nothing.
        await poll("the nap's timer to fire", NAP_MS / 1000 + DEADLINE_S,
                   lambda: _none_left(_sleep_members(env, inv)))
        assert await env.status_of(inv) == "paused"
        assert env.counter(name) == 0
    resume = env.admin("PATCH", f"/invocations/{inv}/resume")
    if killed_during == "resume":
        resume = _command_killing_owner(env, timing, inv, resume, lambda: is_("invoked"))
    assert await resume == (200, None)
    assert await _output(env, inv, NAP_MS / 1000 + DEADLINE_S) == (200, 1)
    assert env.counter(name) == 1  # ran to its end once


@pytest.mark.timeout(120)
@TIMINGS
async def test_resume_of_a_retry_paused_invocation_while_the_partition_owner_is_sigkilled(
        revive: Env, timing: str) -> None:
    env = revive
    key, name = unique("job"), unique("flaky")
    status, ack = await env.ingress("POST", f"/restate/send/Job/{key}/flaky", name)
    assert status == 202, ack
    inv = ack["invocationId"]
    await env.wait_status(inv, "paused")
    # PAUSE_AFTER_ATTEMPTS counts attempts an ownership move cut short too (before the deployment ran)
    ran = env.counter(name)
    assert 1 <= ran <= 2
    (env.counter_dir / f"{name}.ok.count").write_text("1")

    async def invoked() -> bool:
        return await env.status_of(inv) != "paused"

    resume = env.admin("PATCH", f"/invocations/{inv}/resume")
    assert await _command_killing_owner(env, timing, inv, resume, invoked) == (200, None)
    # an attempt the killed owner had started may have run before it died: one or two more in all
    status, attempt = await _output(env, inv)
    assert status == 200 and attempt in (ran + 1, ran + 2) and env.counter(name) == attempt


async def _none_left(members: Any) -> bool | None:
    return True if not await members else None


async def _completed_hello(env: Env) -> tuple[str, str, dict[str, str]]:
    ik, name = unique("ik"), unique("hello")
    headers = {"idempotency-key": ik}
    assert await env.ingress("POST", "/restate/call/Greet/hello", name, headers) == (200, f"hello {name}")
    inv = await env.lookup("Greet", None, "hello", ik)
    assert await env.redis.exists(keys.journal(_partition(inv), inv)) == 1  # retained for 24 h
    return inv, name, headers


@pytest.mark.timeout(120)
@TIMINGS
async def test_purge_while_the_partition_owner_is_sigkilled(revive: Env, timing: str) -> None:
    env = revive
    inv, name, headers = await _completed_hello(env)

    async def gone() -> bool:
        return await env.status_of(inv) is None

    request = env.admin("PATCH", f"/invocations/{inv}/purge")
    assert await _command_killing_owner(env, timing, inv, request, gone) == (200, None)
    assert await _traces_of(env, inv) == []
    await _check_purged(env, inv, name, headers)


@pytest.mark.timeout(120)
@TIMINGS
async def test_purge_journal_while_the_partition_owner_is_sigkilled(revive: Env, timing: str) -> None:
    env = revive
    inv, name, _ = await _completed_hello(env)
    journal = keys.journal(_partition(inv), inv)

    async def gone() -> bool:
        return await env.redis.exists(journal) == 0

    request = env.admin("PATCH", f"/invocations/{inv}/purge-journal")
    assert await _command_killing_owner(env, timing, inv, request, gone) == (200, None)
    assert await gone()
    assert await env.status_of(inv) == "completed"
    assert await env.ingress("GET", f"/restate/output/{inv}") == (200, f"hello {name}")
    status, body = await env.admin("PATCH", f"/invocations/{inv}/restart-as-new")
    assert status == 410, body  # its input went with the journal
    assert env.counter(name) == 1


@pytest.mark.timeout(120)
@TIMINGS
async def test_restart_as_new_while_the_partition_owner_is_sigkilled(revive: Env, timing: str) -> None:
    env = revive
    key, ik, name = unique("job"), unique("ik"), unique("restarted")
    req = {"name": name, "ms": 1000}
    headers = {"idempotency-key": ik}
    assert await env.ingress("POST", f"/restate/call/Job/{key}/nap_then_count", req, headers) == (200, 1)
    inv = await env.lookup("Job", key, "nap_then_count", ik)
    index = keys.invocation_index(_partition(inv))
    before = {m.decode() for m in await env.redis.zrange(index, 0, -1)}

    async def accepted() -> bool:
        return any(m.decode() not in before for m in await env.redis.zrange(index, 0, -1))

    request = env.admin("PATCH", f"/invocations/{inv}/restart-as-new")
    status, body = await _command_killing_owner(env, timing, inv, request, accepted)
    assert status == 200, body
    new = body["new_invocation_id"]
    assert _partition(new) == _partition(inv)  # the key's partition, whose owner was killed
    assert await env.ingress("GET", f"/restate/attach/{new}", timeout_s=60) == (200, 2)
    assert {m.decode() for m in await env.redis.zrange(index, 0, -1)} - before == {new}  # exactly one new
    assert env.counter(name) == 2  # the original's run and the new one's, once each
    assert await env.ingress("GET", f"/restate/output/{inv}") == (200, 1)


# ---- lifecycle commands under concurrent attaches ------------------------------------------------


@pytest.mark.timeout(90)
async def test_kill_answers_the_caller_and_every_waiting_attach(env: Env) -> None:
    _, inv, caller = await _suspended_hold(env)
    attaches = await _waiting_for(env, inv, ATTACHES, await env.waiting_callers())
    assert await env.admin("PATCH", f"/invocations/{inv}/kill") == (200, None)
    answers = await asyncio.wait_for(asyncio.gather(caller, *attaches), DEADLINE_S)
    assert answers == [KILLED_ANSWER] * (1 + ATTACHES)
    assert await env.ingress("GET", f"/restate/attach/{inv}") == KILLED_ANSWER


@pytest.mark.timeout(90)
async def test_purge_under_concurrent_attaches(env: Env) -> None:
    _, inv, awakeable, attaches = await _awaiting_word_with_attaches(env)
    status, body = await env.admin("PATCH", f"/invocations/{inv}/purge")
    assert (status, body["message"]) == (409, f"The invocation '{inv}' is not yet completed.")
    assert not any(a.done() for a in attaches)  # the refused purge left them waiting
    assert (await env.ingress("POST", f"/restate/awakeables/{awakeable}/resolve", "word"))[0] == 202
    assert await asyncio.wait_for(asyncio.gather(*attaches), DEADLINE_S) == [(200, "word")] * ATTACHES
    racing = [env.ingress("GET", f"/restate/attach/{inv}") for _ in range(ATTACHES)]
    purged, *answers = await asyncio.wait_for(
        asyncio.gather(env.admin("PATCH", f"/invocations/{inv}/purge"), *racing), DEADLINE_S)
    assert purged == (200, None)
    for status, body in answers:  # each saw it before the purge or after it
        assert (status, body) == (200, "word") or (status, body["message"]) == (404, "not found")
    status, body = await env.ingress("GET", f"/restate/attach/{inv}")
    assert (status, body["message"]) == (404, "not found")
    assert await _traces_of(env, inv) == []


@pytest.mark.timeout(90)
async def test_restart_as_new_under_concurrent_attaches(env: Env) -> None:
    key, inv, first, waiting = await _awaiting_word_with_attaches(env)
    assert (await env.ingress("POST", f"/restate/awakeables/{first}/resolve", "first"))[0] == 202
    assert await asyncio.wait_for(asyncio.gather(*waiting), DEADLINE_S) == [(200, "first")] * ATTACHES
    racing = [env.ingress("GET", f"/restate/attach/{inv}") for _ in range(ATTACHES)]
    (status, body), *answers = await asyncio.wait_for(
        asyncio.gather(env.admin("PATCH", f"/invocations/{inv}/restart-as-new"), *racing), DEADLINE_S)
    assert status == 200, body
    assert answers == [(200, "first")] * ATTACHES  # the original is untouched
    new = body["new_invocation_id"]
    await env.wait_status(new, "suspended")
    second = await _awakeable_of(env, key, other_than=first)
    on_new = await _waiting_for(env, new, ATTACHES, await env.waiting_callers())
    assert (await env.ingress("POST", f"/restate/awakeables/{second}/resolve", "second"))[0] == 202
    assert await asyncio.wait_for(asyncio.gather(*on_new), DEADLINE_S) == [(200, "second")] * ATTACHES
    assert await env.ingress("GET", f"/restate/attach/{inv}") == (200, "first")
