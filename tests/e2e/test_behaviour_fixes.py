"""Two behaviour fixes found by running Restate's examples against both servers, end to end: a real
multi-process cluster (`DevCluster`: Redis, 2 workers, ingress, 4 partitions) and real restate-sdk
1.2.0 deployments (`tests/services/behaviour_service.py`). Expected answers are Restate 1.7.12's
(/tmp/reffacts/FACTS.md §1-§3).

1. A TerminalError's metadata reaches the HTTP caller (`{"code","message","metadata","source"}`,
   keys sorted, no `metadata` field without entries), also from every output / attach path, and a
   calling handler (its caught TerminalError has `.metadata`; a rethrowing caller fails with it).
2. A Call / OneWayCall (delayed or not) to a service or handler that is not registered rejects the
   caller's attempt as a whole: nothing of it is stored, no callee is created, the caller backs off
   with `[500 Internal] cannot process command Command: <Call|OneWayCall> (command index 1)
   because of a failed precondition: the service handler <svc>/<handler> was not found` (one
   WARNING naming RT0018 per attempt). Once a second deployment registers the target, a later
   retry goes through: the message is delivered exactly once and the caller completes.

Nothing sleeps to synchronise: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from partition import keys
from sgtools.dev import ClusterSpec, DevCluster
from shardgate.sharding import InvocationId, child_invocation_id, partition_of
from tests.clusters import poll, unique
from tests.deployments import serve_sdk_app
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

PARTITIONS = 4
DEADLINE_S = 20.0
MIN_REJECTED_ATTEMPTS = 2  # a caller has been seen rejected (and retried) at least this often
NO_BODY = object()


@dataclass
class Env:
    cluster: DevCluster
    http: aiohttp.ClientSession
    redis: Redis
    counter_dir: Path
    late_url: str

    async def raw(self, method: str, path: str, body: Any = NO_BODY) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, raw body) of an ingress request; `body` is sent as JSON."""
        kwargs: dict[str, Any] = {} if body is NO_BODY else {"json": body}
        async with self.http.request(method, self.cluster.ingress_url + path, **kwargs) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    async def send(self, path: str, body: Any) -> str:
        """POST /restate/send/{path}: 202 Accepted; the invocation id."""
        status, _, raw = await self.raw("POST", f"/restate/send/{path}", body)
        ack = json.loads(raw)
        assert status == 202 and ack["status"] == "Accepted", (status, raw)
        return str(ack["invocationId"])

    async def output(self, invocation_id: str, what: str, created: bool = True) -> tuple[int, bytes]:
        """Poll GET /restate/invocation/{id}/output until the invocation completed: (status, body).
        `created=False`: the invocation may not exist yet (a 404 is waited out too)."""
        waiting = {470, 503} if created else {404, 470, 503}

        async def probe() -> tuple[int, bytes] | None:
            status, _, raw = await self.raw("GET", f"/restate/invocation/{invocation_id}/output")
            return None if status in waiting else (status, raw)

        return await poll(what, DEADLINE_S, probe, lambda: self.describe(invocation_id))

    async def hash(self, invocation_id: str) -> dict[str, bytes]:
        p = partition_of(InvocationId.parse(invocation_id).partition_key, PARTITIONS)
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(keys.invocation(p, invocation_id)))
        return {k.decode(): v for k, v in raw.items()}

    async def journal_length(self, invocation_id: str) -> int:
        p = partition_of(InvocationId.parse(invocation_id).partition_key, PARTITIONS)
        return int(await self.redis.llen(keys.journal(p, invocation_id)))

    async def describe(self, *invocation_ids: str) -> str:
        lines = []
        for inv in invocation_ids:
            h = await self.hash(inv)
            lines.append(f"{inv}: {({k: v[:200] for k, v in h.items() if k not in ('in', 'rq')})}")
        return "\n".join(lines) + "\n" + "\n".join(worker_warnings(self.cluster)[-10:])

    def counter(self, name: str) -> int:
        return read_counter(name, self.counter_dir)


def worker_warnings(cluster: DevCluster) -> list[str]:
    """The WARNING messages the workers logged so far (JSON lines or plain text)."""
    out = []
    for path in sorted((cluster.data_dir / "logs").glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if " WARNING " in line:
                    out.append(line)
                continue
            if isinstance(record, dict) and record.get("level") == "warning":
                out.append(str(record.get("msg", "")))
    return out


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The first deployment (registered at once) and the late one (registered by a test)."""
    base = tmp_path_factory.mktemp("behaviour")
    counter_dir = base / "counters"
    counter_dir.mkdir()
    env = {COUNTER_DIR_ENV: str(counter_dir)}
    with serve_sdk_app("tests.services.behaviour_service:app", base / "first.log", env) as first, \
            serve_sdk_app("tests.services.behaviour_service:late_app", base / "late.log", env) as late:
        yield first, late, counter_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, deployments: tuple[str, str, Path]) -> AsyncIterator[Env]:
    first, late, counter_dir = deployments
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("behaviour-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO")
    async with DevCluster(spec) as cluster, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as http:
        redis = Redis.from_url(cluster.redis_url)
        e = Env(cluster, http, redis, counter_dir, late)
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": first, "force": True}) as r:
            assert r.status in (200, 201), await r.text()

        async def serving() -> bool | None:
            status, _, _ = await e.raw("POST", "/restate/call/Partial/present", "probe")
            return True if status == 200 else None

        await poll("the ingress to serve the first deployment", 30.0, serving)
        try:
            yield e
        finally:
            await redis.aclose()


# ---- 1. TerminalError metadata ---------------------------------------------------------------------

FAILURES = {  # handler -> (status, exact body), as Restate 1.7.12 answers
    "boom": (422, b'{"code":422,"message":"boom","metadata":{"k":"v"},"source":"invocation"}'),
    "boom_multi": (409, b'{"code":409,"message":"boom","metadata":{"k":"v","other":"two"},"source":"invocation"}'),
    "boom_sorted": (400, b'{"code":400,"message":"boom","metadata":{"a":"2","m":"3","z":"1"},"source":"invocation"}'),
    "boom_nometa": (422, b'{"code":422,"message":"boom","source":"invocation"}'),
    "boom_empty": (400, b'{"code":400,"message":"boom","source":"invocation"}'),
    "run_boom": (422, b'{"code":422,"message":"boom","metadata":{"k":"v"},"source":"invocation"}'),
}


def assert_failure(answer: tuple[int, dict[str, str], bytes], status: int, body: bytes, inv: str) -> None:
    got_status, headers, raw = answer
    assert (got_status, raw) == (status, body), answer
    assert headers["x-restate-id"] == inv
    assert headers["x-restate-error-source"] == "invocation"
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("handler", list(FAILURES))
async def test_http_caller_gets_the_metadata_from_call_and_every_output_path(env: Env, handler: str) -> None:
    status, body = FAILURES[handler]
    answer = await env.raw("POST", f"/restate/call/Thrower/{handler}", "x")
    inv = answer[1]["x-restate-id"]
    assert_failure(answer, status, body, inv)
    for method, path, payload in (
        ("GET", f"/restate/invocation/{inv}/output", NO_BODY),
        ("GET", f"/restate/invocation/{inv}/attach", NO_BODY),
        ("GET", f"/restate/output/{inv}", NO_BODY),
        ("GET", f"/restate/attach/{inv}", NO_BODY),
        ("POST", "/restate/output", {"target": "invocation", "invocationId": inv}),
        ("POST", "/restate/attach", {"target": "invocation", "invocationId": inv}),
    ):
        assert_failure(await env.raw(method, path, payload), status, body, inv)


async def test_idempotent_call_output_by_key_carries_the_metadata(env: Env) -> None:
    key = unique("idem")
    status, body = FAILURES["boom_multi"]
    async with env.http.post(f"{env.cluster.ingress_url}/restate/call/Thrower/boom_multi", json="x",
                             headers={"idempotency-key": key}) as r:
        inv = r.headers["x-restate-id"]
        assert (r.status, await r.read()) == (status, body)
    for verb in ("output", "attach"):
        assert_failure(await env.raw("GET", f"/restate/invocation/Thrower/boom_multi/{key}/{verb}"),
                       status, body, inv)


@pytest.mark.parametrize(("which", "code", "metadata"), [
    ("boom", 422, {"k": "v"}),
    ("boom_multi", 409, {"k": "v", "other": "two"}),
    ("boom_nometa", 422, None),
    ("boom_empty", 400, None),  # the SDK sends no entries for an empty dict
])
async def test_calling_handler_catches_the_metadata(env: Env, which: str, code: int,
                                                    metadata: dict[str, str] | None) -> None:
    status, _, raw = await env.raw("POST", "/restate/call/Caller/call_boom", which)
    assert status == 200, raw
    assert json.loads(raw) == {"caught": {"message": "boom", "status_code": code, "metadata": metadata}}


async def test_rethrowing_caller_fails_with_the_metadata(env: Env) -> None:
    status, body = FAILURES["boom_multi"]
    answer = await env.raw("POST", "/restate/call/Caller/call_boom_rethrow", "boom_multi")
    inv = answer[1]["x-restate-id"]
    assert_failure(answer, status, body, inv)
    assert_failure(await env.raw("GET", f"/restate/invocation/{inv}/output"), status, body, inv)


# ---- 2. calls and sends to targets that are not registered ------------------------------------------


def rejection(command: str, service: str, handler: str) -> str:
    """What the caller's `last_failure` reads after an attempt rejected at command index 1."""
    return (f"cannot process command Command: {command} (command index 1) because of a failed "
            f"precondition: the service handler {service}/{handler} was not found")


async def backing_off(env: Env, inv: str, what: str) -> dict[str, bytes]:
    """Poll until the caller has been rejected (and retried) at least twice; its hash."""
    async def probe() -> dict[str, bytes] | None:
        h = await env.hash(inv)
        attempts = int(h.get("att", b"0"))
        return h if h.get("st") == b"backing-off" and attempts >= MIN_REJECTED_ATTEMPTS else None

    return await poll(what, DEADLINE_S, probe, lambda: env.describe(inv))


@pytest.mark.parametrize(("kind", "target"), [
    ("send", "Nowhere{u}/hello"),  # a service that is never registered
    ("delayed", "Nowhere{u}/hello"),
    ("call", "Nowhere{u}/hello"),
    ("send", "Partial/nope{u}"),  # a handler that no deployment of Partial has
    ("call", "Partial/nope{u}"),
])
async def test_rejected_attempt_records_restates_failure_and_warns(env: Env, kind: str, target: str) -> None:
    service, handler = target.format(u=unique("").strip("-").replace("-", "")).split("/")
    spec: dict[str, Any] = {"service": service, "handler": handler, "arg": "never"}
    if kind == "delayed":
        spec["delay_ms"] = 60_000  # checked when the command is processed, not when the delay expires
    inv = await env.send("Caller/call_to" if kind == "call" else "Caller/send_to", spec)
    h = await backing_off(env, inv, f"{inv} to back off")
    command = "Call" if kind == "call" else "OneWayCall"
    expected = f"[500 Internal] {rejection(command, service, handler)}"
    assert h["lerr"].decode() == expected

    # one WARNING per rejected attempt, naming RT0018 and the target
    async def warned() -> list[str] | None:
        lines = [w for w in worker_warnings(env.cluster) if f"{service}/{handler}" in w]
        return lines or None

    before = int((await env.hash(inv))["att"])
    lines = await poll("the rejection warnings", DEADLINE_S, warned)
    after = int((await env.hash(inv))["att"])
    assert all(expected in w and "RT0018" in w for w in lines), lines
    # each attempt logs before its failure is stored: no attempt unlogged, none logged twice
    assert before <= len(lines) <= after + 1, (before, len(lines), after, lines)


@dataclass(frozen=True)
class Pending:
    """A caller whose attempts are rejected until its target is registered."""

    kind: str  # send | delayed | call
    service: str
    handler: str
    arg: str
    caller: str = ""

    @property
    def command(self) -> str:
        return "Call" if self.kind == "call" else "OneWayCall"

    @property
    def callee(self) -> str:
        """The callee the first command of the caller creates, once accepted."""
        return str(child_invocation_id(self.caller, 1, self.service, None, self.handler))

    @property
    def counter(self) -> str:
        return f"{self.service}/{self.handler}:{self.arg}"


async def start_pending(env: Env, kind: str, service: str, handler: str) -> Pending:
    arg = unique(kind)
    spec: dict[str, Any] = {"service": service, "handler": handler, "arg": arg}
    if kind == "delayed":
        spec["delay_ms"] = 300
    inv = await env.send("Caller/call_to" if kind == "call" else "Caller/send_to", spec)
    return Pending(kind, service, handler, arg, inv)


async def assert_rejected(env: Env, p: Pending) -> None:
    """Backing-off, nothing of the attempts stored, nothing delivered, not completed."""
    h = await backing_off(env, p.caller, f"{p.caller} ({p.kind} to {p.service}/{p.handler}) to back off")
    assert h["lerr"].decode().endswith("] " + rejection(p.command, p.service, p.handler)), h["lerr"]
    assert "res" not in h
    assert await env.journal_length(p.caller) == 0  # the journal stays at the input entry
    assert await env.hash(p.callee) == {}  # no callee was created
    assert env.counter(p.counter) == 0
    status, _, raw = await env.raw("GET", f"/restate/invocation/{p.caller}/output")
    assert status == 470, raw


async def test_unknown_targets_are_delivered_once_after_registration(env: Env) -> None:
    pending = [await start_pending(env, kind, service, handler)
               for service, handler in (("Ghost", "hello"), ("Partial", "added"))
               for kind in ("send", "delayed", "call")]
    for p in pending:
        await assert_rejected(env, p)

    async with env.http.post(f"{env.cluster.admin_url}/deployments",
                             json={"uri": env.late_url, "force": True}) as r:
        assert r.status in (200, 201), await r.text()

    greeting = {"Ghost": "ghost got", "Partial": "added got"}
    for p in pending:
        status, raw = await env.output(p.caller, f"{p.caller} to complete")
        reply = f'"{greeting[p.service]} {p.arg}"'
        expected = {"result": reply} if p.kind == "call" else "sent"
        assert (status, json.loads(raw)) == (200, expected), raw
    for p in pending:
        status, raw = await env.output(p.callee, f"the callee {p.callee} of {p.caller} to complete", created=False)
        assert (status, raw.decode()) == (200, f'"{greeting[p.service]} {p.arg}"')
    # every caller and callee completed: the messages were delivered exactly once
    assert {p.counter: env.counter(p.counter) for p in pending} == {p.counter: 1 for p in pending}
