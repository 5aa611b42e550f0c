"""HTTP-shape tests of the ingress API (conformance groups A, B, C, D, E, G, H) over aiohttp.

The app from `build_ingress_app` runs against `tests.fakes.InMemoryDispatcher`; `FakeServices`
scripts it to behave like the conformance deployment (`tests/services/conformance_service.py`),
and `SCHEMA` mirrors what restate-sdk 1.2.0 registers for it.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from ingress.api import IngressApiSettings, build_ingress_app
from ingress.dispatcher import HandlerKind, InvocationRequest, Outcome
from ingress.errors import PartitionUnavailable
from shardgate.schema import HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import (
    InvocationId,
    idempotent_invocation_id,
    partition_key_for_key,
    partition_of,
    workflow_invocation_id,
)
from tests.fakes import InMemoryDispatcher

INV_ID_RE = re.compile(r"^inv_1[0-9A-Za-z]{33}$")
EXEC_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")
EXPIRES_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")
BAD_PATH = (
    "bad path, expected /restate/call/:service/:handler, /restate/send/:service/:handler, "
    "/restate/scope/:scope/call/:service/:handler, /restate/attach/:invocation_id, "
    "/restate/output/:invocation_id, or /restate/lookup"
)
NOT_READY = "the invocation exists but has not completed yet"
DAY_MS = 86_400_000
PARTITIONS = 8
UNKNOWN_ID = "inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAAA"


# ---- schema mirroring the conformance deployment ----------------------------------------------


def _json_in(name: str, schema: Any, ty: HandlerType | None = None, **kw: Any) -> HandlerMeta:
    return HandlerMeta(name, ty, input_content_type="application/json", input_json_schema=schema, **kw)


def _no_in(name: str, ty: HandlerType | None = None, **kw: Any) -> HandlerMeta:
    return HandlerMeta(name, ty, input_content_type=None, **kw)


def _service(name: str, ty: ServiceType, *handlers: HandlerMeta) -> ServiceMeta:
    return ServiceMeta(name, ty, {h.name: h for h in handlers}, "dp_test")


STR, INT = {"type": "string"}, {"type": "integer"}
SCHEMA = SchemaSnapshot(
    version=1,
    services={
        "Greeter": _service(
            "Greeter",
            ServiceType.SERVICE,
            _json_in("greet", STR),
            _json_in("greet_model", {"type": "object"}),
            _json_in("sleepy", INT),
            _json_in("fail", STR),
            _json_in("slow", INT),
            _no_in("headers"),
            _no_in("noop", output_content_type=None),
            _json_in("private", STR, public=False),
        ),
        "Counter": _service(
            "Counter",
            ServiceType.VIRTUAL_OBJECT,
            _json_in("add", INT, HandlerType.EXCLUSIVE),
            _no_in("get", HandlerType.SHARED),
        ),
        "Signup": _service(
            "Signup",
            ServiceType.WORKFLOW,
            _json_in("run", STR, HandlerType.WORKFLOW),
            _json_in("confirm", STR, HandlerType.SHARED, output_content_type=None),
            _no_in("status", HandlerType.SHARED),
        ),
    },
    deployments={},
)


def _arg(req: InvocationRequest) -> Any:
    return json.loads(req.body) if req.body else None


def _out(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class FakeServices:
    """Responders reproducing service.py's behaviour on top of the in-memory dispatcher."""

    counters: dict[str, int] = field(default_factory=dict)
    promises: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def install(self, d: InMemoryDispatcher) -> None:
        d.script("Greeter", "greet", lambda r: _out(f"Hello, {_arg(r)}!"))
        d.script("Greeter", "greet_model", self._greet_model)
        d.script(
            "Greeter",
            "fail",
            lambda r: Outcome("", failure_code=409, failure_message=f"failed on purpose: {_arg(r)}"),
        )
        d.script("Greeter", "noop", lambda r: b"")
        d.script("Greeter", "headers", lambda r: _out(dict(r.headers)))
        d.script("Greeter", "slow", self._slow)
        d.script("Counter", "add", self._add)
        d.script("Counter", "get", lambda r: _out(self.counters.get(r.key or "", 0)))
        d.script("Signup", "run", self._run)
        d.script("Signup", "confirm", self._confirm)
        d.script("Signup", "status", self._status)

    def _greet_model(self, r: InvocationRequest) -> bytes:
        req = _arg(r)
        msg = " ".join([f"Hello, {req['name']}!"] * req.get("times", 1))
        return _out({"message": msg, "length": len(msg)})

    async def _slow(self, r: InvocationRequest) -> bytes:
        await self.release_slow.wait()
        return _out(f"slow done after {_arg(r)}s")

    def _add(self, r: InvocationRequest) -> bytes:
        self.counters[r.key or ""] = self.counters.get(r.key or "", 0) + _arg(r)
        return _out(self.counters[r.key or ""])

    def _promise(self, key: str) -> asyncio.Future[str]:
        return self.promises.setdefault(key, asyncio.get_running_loop().create_future())

    async def _run(self, r: InvocationRequest) -> bytes:
        return _out(f"{_arg(r)} confirmed with {await self._promise(r.key or '')}")

    def _confirm(self, r: InvocationRequest) -> bytes:
        self._promise(r.key or "").set_result(_arg(r))
        return b""

    def _status(self, r: InvocationRequest) -> bytes:
        p = self._promise(r.key or "")
        return _out(p.result()) if p.done() else b""


# ---- harness ----------------------------------------------------------------------------------


@dataclass
class Env:
    client: TestClient
    dispatcher: InMemoryDispatcher
    services: FakeServices
    observed: list[tuple[str, int, float]]

    async def req(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = ...,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> ClientResponse:
        """Send `path` verbatim (no URL re-encoding); `json_body` sets a JSON body + content-type."""
        hdrs = dict(headers or {})
        if json_body is not ...:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("content-type", "application/json")
        url = URL(f"http://{self.client.host}:{self.client.port}{path}", encoded=True)
        skip = () if any(k.lower() == "content-type" for k in hdrs) else ("Content-Type",)
        resp = await self.client.session.request(method, url, data=data, headers=hdrs, skip_auto_headers=skip)
        await resp.read()
        return resp

    async def call(self, target: str, body: Any = ..., **kw: Any) -> ClientResponse:
        query = kw.pop("query", "")
        return await self.req("POST", f"/restate/call/{target}{query}", json_body=body, **kw)

    async def send(self, target: str, body: Any = ..., **kw: Any) -> ClientResponse:
        query = kw.pop("query", "")
        return await self.req("POST", f"/restate/send/{target}{query}", json_body=body, **kw)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with make_env() as e:
        yield e


class make_env:
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    async def __aenter__(self) -> Env:
        self.dispatcher = InMemoryDispatcher()
        services = FakeServices()
        services.install(self.dispatcher)
        observed: list[tuple[str, int, float]] = []
        config = IngressApiSettings(
            partitions=PARTITIONS, metrics=lambda *a: observed.append(a), **self.settings
        )
        self.client = TestClient(TestServer(build_ingress_app(lambda: SCHEMA, self.dispatcher, config)))
        await self.client.start_server()
        return Env(self.client, self.dispatcher, services, observed)

    async def __aexit__(self, *exc: object) -> None:
        await self.dispatcher.close()
        await self.client.close()


def inv_id(r: ClientResponse) -> str:
    value = r.headers.get("x-restate-id")
    assert value is not None and INV_ID_RE.match(value), f"bad x-restate-id {value!r}"
    return value


async def ok(r: ClientResponse, expected: Any = ..., status: int = 200) -> str:
    """Conformance `T.ok`: status, x-restate-id, JSON body (None = empty body, no content-type)."""
    assert r.status == status, (r.status, await r.text())
    inv = inv_id(r)
    if expected is None:
        assert await r.read() == b""
        assert "content-type" not in r.headers
    elif expected is not ...:
        assert r.headers["content-type"] == "application/json"
        assert json.loads(await r.read()) == expected
    return inv


async def error(
    r: ClientResponse,
    code: int,
    message: str | re.Pattern[str],
    source: str = "ingress",
    has_id: bool | None = None,
) -> str | None:
    """Conformance `T.error`: exact JSON error shape, source header, x-restate-id presence."""
    assert r.status == code, (r.status, await r.text())
    assert r.headers["x-restate-error-source"] == source
    assert r.headers["content-type"] == "application/json"
    body = json.loads(await r.read())
    assert set(body) == {"code", "message", "source"}, body
    assert (body["code"], body["source"]) == (code, source)
    if isinstance(message, re.Pattern):
        assert message.search(body["message"]), body["message"]
    else:
        assert body["message"] == message
    if has_id is True:
        return inv_id(r)
    if has_id is False:
        assert "x-restate-id" not in r.headers
    return r.headers.get("x-restate-id")


async def accepted(
    r: ClientResponse, status: str = "Accepted", delay_s: float | None = None
) -> dict[str, str]:
    """Conformance `T.accepted`: 202 JSON {invocationId, status[, executionTime]}."""
    assert r.status == 202, (r.status, await r.text())
    assert r.headers["content-type"] == "application/json"
    body = json.loads(await r.read())
    assert body["status"] == status
    assert body["invocationId"] == inv_id(r)
    if delay_s is None:
        assert set(body) == {"invocationId", "status"}, body
    else:
        assert set(body) == {"invocationId", "status", "executionTime"}, body
        assert EXEC_TIME_RE.match(body["executionTime"]), body
        t = time.strptime(body["executionTime"][:19], "%Y-%m-%dT%H:%M:%S")
        at = calendar.timegm(t) + int(body["executionTime"][20:23]) / 1000
        assert abs(at - (time.time() + delay_s)) < 2.0, body
    return body


def expires(r: ClientResponse) -> str:
    value = r.headers.get("idempotency-expires")
    assert value is not None and EXPIRES_RE.match(value), value
    return value


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ---- A. calls ---------------------------------------------------------------------------------


async def test_service_call_returns_output(env: Env) -> None:
    r = await env.call("Greeter/greet", "Alice")
    await ok(r, "Hello, Alice!")
    assert "idempotency-expires" not in r.headers  # only replays announce it
    assert r.headers["access-control-allow-credentials"] == "true"


async def test_call_without_content_type_is_400(env: Env) -> None:
    r = await env.req("POST", "/restate/call/Greeter/greet", data=b'"Alice"')
    await error(r, 400, "input validation error: Empty content-type", has_id=False)
    assert env.dispatcher.requests == []


async def test_content_type_with_parameters_and_empty_json_body(env: Env) -> None:
    r = await env.req(
        "POST",
        "/restate/call/Greeter/greet",
        data=b'"x"',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    await ok(r, "Hello, x!")
    r = await env.req("POST", "/restate/call/Greeter/greet", headers={"content-type": "application/json"})
    await error(r, 400, "input validation error: Empty body not allowed")
    r = await env.req(
        "POST", "/restate/call/Greeter/greet", data=b'"x"', headers={"content-type": "application/*"}
    )
    await error(
        r, 400, "input validation error: Content-type 'application/*' does not match 'application/json'"
    )


async def test_pydantic_model_roundtrip(env: Env) -> None:
    r = await env.call("Greeter/greet_model", {"name": "Bob", "times": 2})
    await ok(r, {"message": "Hello, Bob! Hello, Bob!", "length": 23})


async def test_virtual_object_state_and_get_method(env: Env) -> None:
    await ok(await env.call("Counter/c1/add", 5), 5)
    await ok(await env.call("Counter/c1/add", 10), 15)
    await ok(await env.call("Counter/c1/get"), 15)
    await ok(await env.req("GET", "/restate/call/Counter/c1/get"), 15)
    await ok(await env.call("Counter/c2/get"), 0)


async def test_none_result_has_empty_body_and_no_content_type(env: Env) -> None:
    r = await env.call("Greeter/noop")
    await ok(r, None)
    assert r.headers["content-length"] == "0"


async def test_request_headers_are_forwarded(env: Env) -> None:
    r = await env.req(
        "POST",
        "/restate/call/Greeter/headers/?x=1",
        headers={
            "X-Foo": "bar",
            "authorization": "Bearer t",
            "Idempotency-Expires": "x",
            "Connection": "keep-alive",
        },
    )
    await ok(r)
    seen = json.loads(await r.read())
    assert seen["x-foo"] == "bar" and seen["authorization"] == "Bearer t"
    assert seen["x-restate-ingress-path"] == "/restate/call/Greeter/headers?x=1"
    assert not {"host", "connection", "idempotency-expires", "idempotency-key"} & set(seen)
    assert env.dispatcher.requests[-1].headers[0] == (
        "x-restate-ingress-path",
        "/restate/call/Greeter/headers?x=1",
    )


async def test_non_ascii_header_is_400(env: Env) -> None:
    for name in ("x-foo", "idempotency-key", "content-type"):
        hdrs = {name: "b\u00e9r"}
        r = await env.req("POST", "/restate/call/Greeter/headers", headers=hdrs)
        await error(r, 400, f"bad header {name}: ToStrError {{ _priv: () }}")


async def test_workflow_run_blocks_until_promise_resolved(env: Env) -> None:
    run = asyncio.create_task(env.call("Signup/w1/run", "a@b.c"))
    await wait_for(lambda: len(env.dispatcher.requests) == 1)
    await ok(await env.call("Signup/w1/status"), None)
    await ok(await env.call("Signup/w1/confirm", "s3cr3t"), None)
    r = await run
    assert await ok(r, "a@b.c confirmed with s3cr3t") == str(workflow_invocation_id("Signup", "w1"))
    await ok(await env.call("Signup/w1/status"), "s3cr3t")


async def test_workflow_run_twice_is_409_and_output_after_completion(env: Env) -> None:
    run_id = (await accepted(await env.send("Signup/w2/run", "x@y")))["invocationId"]
    await ok(await env.call("Signup/w2/confirm", "yes"), None)
    await env.settle()
    for suffix in ("output", "attach"):
        r = await env.req("GET", f"/restate/workflow/Signup/w2/{suffix}")
        assert await ok(r, "x@y confirmed with yes") == run_id
        expires(r)
    r = await env.call("Signup/w2/run", "again@b.c")
    assert await error(r, 409, "the workflow method was already invoked", "invocation", has_id=True) == run_id


async def test_workflow_output_never_started_is_404(env: Env) -> None:
    r = await env.req("GET", "/restate/workflow/Signup/never/output")
    await error(r, 404, "invocation not found", has_id=False)


async def test_percent_encoded_slash_in_key(env: Env) -> None:
    await ok(await env.call("Counter/a%2Fb/add", 1), 1)
    await ok(await env.call("Counter/a%2Fb/get"), 1)
    assert env.dispatcher.requests[0].key == "a/b"


async def test_trailing_slash_unknown_query_and_missing_body(env: Env) -> None:
    await ok(await env.call("Greeter/greet/", "Alice"), "Hello, Alice!")
    await ok(await env.call("Greeter/greet", "Alice", query="?foo=bar"), "Hello, Alice!")
    await ok(await env.req("POST", "/restate/call/Greeter/greet"), "Hello, None!")


async def test_plain_calls_get_distinct_ids_and_large_inputs(env: Env) -> None:
    a = await ok(await env.call("Greeter/greet", "a"))
    b = await ok(await env.call("Greeter/greet", "a"))
    assert a != b
    await ok(await env.call("Counter/" + "k" * 5000 + "/add", 1), 1)
    big = "a" * (2 * 1024 * 1024)
    r = await env.call("Greeter/greet", big)
    assert r.status == 200 and len(await r.read()) == len(big) + 10


# ---- invocation request contents (ids, partitions, retention) --------------------------------


async def test_invocation_request_fields(env: Env) -> None:
    await ok(await env.call("Greeter/greet", "x", headers={"Idempotency-Key": "ik1"}))
    await ok(await env.call("Greeter/greet", "x"))
    await ok(await env.call("Counter/k1/add", 1))
    await ok(await env.call("Signup/w9/status"))
    await accepted(await env.send("Signup/w9/run", "e"))
    user, generated, vo, shared, run = env.dispatcher.requests

    expected = idempotent_invocation_id("Greeter", None, "greet", "ik1")
    assert user.invocation_id == str(expected) and user.idempotency_key == "ik1"
    assert not user.idempotency_key_generated  # the client's key: recorded (sys_idempotency)
    assert user.partition == partition_of(expected.partition_key, PARTITIONS)
    assert (user.kind, user.completion_retention_ms, user.journal_retention_ms) == (
        HandlerKind.SERVICE,
        DAY_MS,
        DAY_MS,
    )
    assert user.body == b'"x"' and user.execution_time_ms is None

    assert generated.idempotency_key is not None and len(generated.idempotency_key) == 26  # ULID
    assert generated.idempotency_key_generated  # not recorded, and no request nonce needed
    assert generated.invocation_id == str(
        idempotent_invocation_id("Greeter", None, "greet", generated.idempotency_key)
    )

    assert vo.kind is HandlerKind.EXCLUSIVE and vo.key == "k1" and vo.idempotency_key is not None
    assert InvocationId.parse(vo.invocation_id).partition_key == partition_key_for_key("k1")

    assert shared.kind is HandlerKind.SHARED and shared.idempotency_key is None
    assert InvocationId.parse(shared.invocation_id).partition_key == partition_key_for_key("w9")
    assert (shared.completion_retention_ms, shared.journal_retention_ms) == (DAY_MS, DAY_MS)

    assert run.kind is HandlerKind.WORKFLOW and run.idempotency_key is None
    assert run.invocation_id == str(workflow_invocation_id("Signup", "w9"))
    assert run.completion_retention_ms == DAY_MS


async def test_retention_and_sharding_settings() -> None:
    async with make_env(default_journal_retention_ms=0, controlled_idempotent_sharding=False) as e:
        await ok(await e.call("Greeter/greet", "x"))
        await ok(await e.call("Greeter/greet", "x", headers={"Idempotency-Key": "k"}))
        plain, idem = e.dispatcher.requests
        assert plain.idempotency_key is None and plain.completion_retention_ms == 0
        assert (idem.completion_retention_ms, idem.journal_retention_ms) == (DAY_MS, 0)
        r = await e.req("GET", f"/restate/output/{plain.invocation_id}")
        await error(r, 404, "invocation not found", has_id=False)  # not retained


# ---- B. sends and delays ------------------------------------------------------------------------


async def test_send_is_202_and_output_is_retrievable(env: Env) -> None:
    inv = (await accepted(await env.send("Greeter/greet", "Carol")))["invocationId"]
    await accepted(await env.send("Counter/c1/add", 1))
    await env.settle()
    r = await env.req("GET", f"/restate/output/{inv}")
    assert await ok(r, "Hello, Carol!") == inv
    expires(r)


@pytest.mark.parametrize(
    ("query", "delay_s"),
    [
        ("?delay=PT5S", 5),
        ("?delay=5s", 5),
        ("?delay=1m%2030s", 90),
        ("?delay=500ms", 0.5),
        ("?delay=5000", 5),
        ("?DELAY=0", 0),
        ("?delay=60+sec", 60),
    ],
)
async def test_delayed_sends(env: Env, query: str, delay_s: float) -> None:
    body = await accepted(await env.send("Greeter/greet", "d", query=query), delay_s=delay_s)
    req = env.dispatcher.requests[-1]
    assert req.execution_time_ms is not None
    assert abs(req.execution_time_ms / 1000 - (time.time() + delay_s)) < 2
    assert body["executionTime"].startswith(time.strftime("%Y-", time.gmtime(req.execution_time_ms / 1000)))


async def test_delay_errors(env: Env) -> None:
    r = await env.send("Greeter/greet", "d", query="?delay=abc")
    await error(r, 400, re.compile(r"^bad delay query parameter, must be a ISO8601 duration: "))
    r = await env.send("Greeter/greet", "d", query="?delay=-5s")
    await error(r, 400, re.compile(r"^bad delay query parameter, must be a ISO8601 duration: negative"))
    r = await env.call("Greeter/greet", "d", query="?delay=5s")
    await error(
        r, 400, "cannot use the delay query parameter with calls. The delay is supported only with sends"
    )
    assert env.dispatcher.requests == []


async def test_delayed_workflow_sends_and_previously_accepted(env: Env) -> None:
    await accepted(await env.send("Signup/w1/run", "x", query="?delay=5s"), delay_s=5)
    await accepted(await env.send("Signup/w2/confirm", "x", query="?delay=5s"), delay_s=5)
    first = await accepted(await env.send("Signup/w3/run", "x@y.z"))
    again = await accepted(await env.send("Signup/w3/run", "x@y.z"), "PreviouslyAccepted")
    assert again["invocationId"] == first["invocationId"]


async def test_scheduled_invocation_output_is_470_until_due(env: Env) -> None:
    b = await accepted(await env.send("Greeter/greet", "later", query="?delay=10s"), delay_s=10)
    r = await env.req("GET", f"/restate/output/{b['invocationId']}")
    await error(r, 470, NOT_READY, has_id=False)
    env.dispatcher.fire_due(env.dispatcher.now_ms() + 11_000)
    await env.settle()
    await ok(await env.req("GET", f"/restate/output/{b['invocationId']}"), "Hello, later!")


# ---- C. idempotency ---------------------------------------------------------------------------


async def test_idempotent_call_replay(env: Env) -> None:
    h = {"Idempotency-Key": "idem-1"}
    r1 = await env.call("Greeter/greet", "Idem", headers=h)
    id1 = await ok(r1, "Hello, Idem!")
    assert "idempotency-expires" not in r1.headers
    r2 = await env.call("Greeter/greet", "DIFFERENT", headers=h)
    assert await ok(r2, "Hello, Idem!") == id1
    expires(r2)
    for suffix in ("output", "attach"):
        r = await env.req("GET", f"/restate/invocation/Greeter/greet/idem-1/{suffix}")
        assert await ok(r, "Hello, Idem!") == id1
        expires(r)


async def test_idempotent_send_and_failure_replay(env: Env) -> None:
    h = {"Idempotency-Key": "idem-2"}
    a = await accepted(await env.send("Greeter/greet", "S", headers=h))
    b = await accepted(await env.send("Greeter/greet", "S", headers=h), "PreviouslyAccepted")
    assert a["invocationId"] == b["invocationId"]
    h = {"Idempotency-Key": "idem-3"}
    id1 = await error(
        await env.call("Greeter/fail", "idem", headers=h),
        409,
        "failed on purpose: idem",
        "invocation",
        has_id=True,
    )
    r2 = await env.call("Greeter/fail", "idem", headers=h)
    assert await error(r2, 409, "failed on purpose: idem", "invocation", has_id=True) == id1
    expires(r2)


async def test_idempotency_key_on_workflow_run_is_400(env: Env) -> None:
    r = await env.call("Signup/w/run", "a", headers={"Idempotency-Key": "k"})
    await error(
        r,
        400,
        "cannot use the idempotency key with workflow handlers. The handler invocation will "
        "already be idempotent by the workflow key itself.",
        has_id=False,
    )
    r = await env.call("Signup/w/confirm", "a", headers={"Idempotency-Key": "k"})
    await ok(r, None)  # shared workflow handlers accept keys


# ---- D. attach / output by id -------------------------------------------------------------------


async def test_output_while_running_is_470_and_attach_blocks(env: Env) -> None:
    inv = (await accepted(await env.send("Greeter/slow", 3)))["invocationId"]
    for path in (f"/restate/invocation/{inv}/output", f"/restate/output/{inv}"):
        await error(await env.req("GET", path), 470, NOT_READY, has_id=False)
    old = asyncio.create_task(env.req("GET", f"/restate/invocation/{inv}/attach"))
    new = asyncio.create_task(env.req("GET", f"/restate/attach/{inv}"))
    await asyncio.sleep(0.05)
    assert not old.done() and not new.done()
    env.services.release_slow.set()
    for task in (old, new):
        r = await task
        assert await ok(r, "slow done after 3s") == inv
        assert "idempotency-expires" not in r.headers


async def test_output_and_attach_after_completion(env: Env) -> None:
    inv = (await accepted(await env.send("Greeter/greet", "done")))["invocationId"]
    await env.settle()
    for p in (
        f"/restate/invocation/{inv}/output",
        f"/restate/invocation/{inv}/attach",
        f"/restate/output/{inv}",
        f"/restate/attach/{inv}",
    ):
        r = await env.req("GET", p)
        assert await ok(r, "Hello, done!") == inv
        expires(r)


async def test_unknown_and_malformed_ids(env: Env) -> None:
    for p in (f"/restate/invocation/{UNKNOWN_ID}/output", f"/restate/output/{UNKNOWN_ID}"):
        await error(await env.req("GET", p), 404, "invocation not found", has_id=False)
    # attach to an unknown id: the invocation-style 404 Restate answers
    r = await env.req("GET", f"/restate/attach/{UNKNOWN_ID}")
    assert await error(r, 404, "not found", "invocation", has_id=True) == UNKNOWN_ID
    r = await env.req("GET", "/restate/invocation/not-an-id/output")
    await error(r, 400, "bad invocation id 'not-an-id': bad format")
    await error(await env.req("GET", "/restate/attach/xyz"), 400, "bad invocation id 'xyz': bad format")


async def test_invocation_path_without_suffix_and_wrong_method(env: Env) -> None:
    inv = "inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v"
    r = await env.req("GET", f"/restate/invocation/{inv}")
    await error(
        r,
        400,
        "bad path, expected either /restate/invocation/:invocation_id/output or "
        "/restate/invocation/:invocation_id/attach or "
        "/restate/invocation/:invocation_target/:idempotency_key/output or "
        "/restate/invocation/:invocation_target/:idempotency_key/attach",
    )
    await error(await env.req("POST", f"/restate/invocation/{inv}/output"), 405, "method not allowed")
    await error(await env.req("POST", f"/restate/attach/{inv}"), 405, "method not allowed")


async def test_output_of_failed_invocation_replays_error(env: Env) -> None:
    inv = await error(
        await env.call("Greeter/fail", "x"), 409, "failed on purpose: x", "invocation", has_id=True
    )
    for p in (f"/restate/invocation/{inv}/output", f"/restate/attach/{inv}"):
        r = await env.req("GET", p)
        assert await error(r, 409, "failed on purpose: x", "invocation", has_id=True) == inv
        expires(r)


async def test_plain_call_output_is_retained(env: Env) -> None:
    inv = await ok(await env.call("Greeter/greet", "ForOutput"))
    r = await env.req("GET", f"/restate/output/{inv}")
    assert await ok(r, "Hello, ForOutput!") == inv
    expires(r)


# ---- E. targets: lookup / attach / output -------------------------------------------------------


def wf(name: str, key: str) -> dict[str, str]:
    return {"target": "workflow", "workflowName": name, "workflowKey": key}


def idem(service: str, handler: str, ikey: str, key: str | None = None) -> dict[str, str]:
    body = {"target": "idempotentInvocation", "service": service, "handler": handler, "idempotencyKey": ikey}
    return body if key is None else {**body, "key": key}


async def test_workflow_target_lookup_output_attach(env: Env) -> None:
    run = (await accepted(await env.send("Signup/wt/run", "e@x")))["invocationId"]
    r = await env.req("POST", "/restate/lookup", json_body=wf("Signup", "wt"))
    assert (r.status, json.loads(await r.read())) == (200, {"invocationId": run})
    assert r.headers["content-type"] == "application/json"
    await error(
        await env.req("POST", "/restate/output", json_body=wf("Signup", "wt")), 470, NOT_READY, has_id=False
    )
    attach = asyncio.create_task(env.req("POST", "/restate/attach", json_body=wf("Signup", "wt")))
    await asyncio.sleep(0.05)
    await ok(await env.call("Signup/wt/confirm", "yes"), None)
    assert await ok(await attach, "e@x confirmed with yes") == run
    r = await env.req("POST", "/restate/output", json_body=wf("Signup", "wt"))
    assert await ok(r, "e@x confirmed with yes") == run
    expires(r)


async def test_idempotent_and_invocation_targets(env: Env) -> None:
    inv = await ok(await env.call("Greeter/greet", "IdemE", headers={"Idempotency-Key": "ik"}))
    r = await env.req("POST", "/restate/lookup", json_body=idem("Greeter", "greet", "ik"))
    assert json.loads(await r.read()) == {"invocationId": inv}
    for p in ("/restate/output", "/restate/attach"):
        r = await env.req("POST", p, json_body=idem("Greeter", "greet", "ik"))
        assert await ok(r, "Hello, IdemE!") == inv
        expires(r)
    vo = await ok(await env.call("Counter/k/add", 3, headers={"Idempotency-Key": "ik"}), 3)
    assert (
        await ok(await env.req("POST", "/restate/output", json_body=idem("Counter", "add", "ik", key="k")), 3)
        == vo
    )
    target = {"target": "invocation", "invocationId": inv}
    assert await ok(await env.req("POST", "/restate/output", json_body=target), "Hello, IdemE!") == inv
    r = await env.req("POST", "/restate/lookup", json_body=target)
    assert json.loads(await r.read()) == {"invocationId": inv}


async def test_lookup_is_pure(env: Env) -> None:
    for name in ("Signup", "NoSuch", "Greeter"):
        r = await env.req("POST", "/restate/lookup", json_body=wf(name, "never"))
        assert r.status == 200
        assert json.loads(await r.read()) == {"invocationId": str(workflow_invocation_id(name, "never"))}
    await error(
        await env.req("POST", "/restate/output", json_body=wf("Signup", "never")),
        404,
        "invocation not found",
        has_id=False,
    )
    await error(
        await env.req("POST", "/restate/output", json_body=idem("Greeter", "greet", "nope")),
        404,
        "invocation not found",
        has_id=False,
    )
    r = await env.req("POST", "/restate/attach", json_body=wf("Signup", "never"))
    await error(r, 404, "not found", "invocation", has_id=True)
    assert env.dispatcher.requests == []


async def test_target_body_errors(env: Env) -> None:
    await error(await env.req("GET", "/restate/lookup"), 405, "method not allowed")
    await error(await env.req("GET", "/restate/attach"), 405, "method not allowed")
    r = await env.req("POST", "/restate/lookup", json_body={})
    await error(r, 400, re.compile("target"))
    r = await env.req(
        "POST",
        "/restate/output",
        data=b'{"target": "workflow", ',
        headers={"content-type": "application/json"},
    )
    await error(r, 400, re.compile("body"))
    r = await env.req("POST", "/restate/attach", json_body={"target": "x"})
    await error(r, 400, re.compile("workflow.*idempotentInvocation.*invocation"))
    r = await env.req("POST", "/restate/lookup", json_body={"target": "workflow", "workflowName": "S"})
    await error(r, 400, re.compile("missing field `workflowKey`"))
    r = await env.req("POST", "/restate/lookup", json_body={"target": "invocation", "invocationId": "xx"})
    await error(r, 400, "bad invocation id 'xx': bad format")
    r = await env.req("POST", "/restate/lookup", json_body={**wf("S", "k"), "scope": "bad scope"})
    await error(r, 400, "bad scope value: value contains characters outside the allowed set [a-zA-Z0-9_.-]")


# ---- G. legacy paths, health, CORS ---------------------------------------------------------------


async def test_legacy_calls_and_sends(env: Env) -> None:
    await ok(await env.req("POST", "/Greeter/greet", json_body="Legacy"), "Hello, Legacy!")
    await ok(await env.req("POST", "/Counter/lk/add", json_body=2), 2)
    await ok(await env.req("POST", "/Counter/lk/add", json_body=3), 5)
    await accepted(await env.req("POST", "/Greeter/greet/send", json_body="LegacySend"))
    await accepted(await env.req("POST", "/Counter/lk/add/send", json_body=3))
    await accepted(await env.req("POST", "/Greeter/greet/send?delay=2s", json_body="L"), delay_s=2)
    h = {"Idempotency-Key": "leg"}
    a = await ok(await env.req("POST", "/Greeter/greet", json_body="LI", headers=h), "Hello, LI!")
    r = await env.req("POST", "/Greeter/greet", json_body="LI", headers=h)
    assert await ok(r, "Hello, LI!") == a
    expires(r)


async def test_legacy_workflow(env: Env) -> None:
    run = (await accepted(await env.req("POST", "/Signup/lw/run/send", json_body="leg@x")))["invocationId"]
    await ok(await env.req("POST", "/Signup/lw/confirm", json_body="ok"), None)
    await env.settle()
    r = await env.req("GET", "/restate/workflow/Signup/lw/output")
    assert await ok(r, "leg@x confirmed with ok") == run


async def test_legacy_path_errors(env: Env) -> None:
    await error(await env.req("POST", "/Greeter", json_body="x"), 400, "bad path: /Greeter")
    await error(
        await env.req("POST", "/Counter/k/add/extra/segment", json_body=1),
        400,
        "bad path, expected either /:service-name/:handler or /:object-name/:object-key/:handler",
    )


async def test_health(env: Env) -> None:
    r = await env.req("GET", "/restate/health")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert sorted(json.loads(await r.read())["services"]) == ["Counter", "Greeter", "Signup"]
    await error(await env.req("POST", "/restate/health"), 405, "method not allowed")


async def test_cors(env: Env) -> None:
    r = await env.req(
        "OPTIONS",
        "/restate/call/Greeter/greet",
        headers={
            "Origin": "http://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-foo, content-type",
        },
    )
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "http://example.com"
    assert re.fullmatch(r".*\bPOST\b.*", r.headers["access-control-allow-methods"])
    assert r.headers["access-control-allow-headers"] == "x-foo, content-type"
    assert r.headers["access-control-allow-credentials"] == "true"
    r = await env.call("Greeter/greet", "cors", headers={"Origin": "http://example.com"})
    await ok(r, "Hello, cors!")
    assert r.headers["access-control-allow-origin"] == "http://example.com"
    r = await env.call("NoSuch/greet", "x", headers={"Origin": "http://example.com"})
    assert r.status == 404 and r.headers["access-control-allow-origin"] == "http://example.com"


# ---- H. errors --------------------------------------------------------------------------------------


async def test_unknown_service_and_handler(env: Env) -> None:
    msg = "service 'NoSuch' not found, make sure to register the service before calling it."
    await error(await env.call("NoSuch/greet", "x"), 404, msg, has_id=False)
    await error(await env.send("NoSuch/greet", "x"), 404, msg, has_id=False)
    await error(await env.req("PUT", "/restate/call/NoSuch/greet"), 404, msg)  # 404 before 405
    await error(
        await env.call("greeter/greet", "x"),
        404,
        "service 'greeter' not found, make sure to register the service before calling it.",
    )
    await error(
        await env.call("Greeter/nosuch", "x"),
        404,
        "the service 'Greeter' exists, but the handler 'nosuch' was not found, check that the handler "
        "exists in the latest registered service version.",
    )


async def test_path_shape_errors(env: Env) -> None:
    await error(await env.call("Counter/add", 1), 400, BAD_PATH)
    await error(await env.call("Greeter/somekey/greet", "x"), 400, BAD_PATH)
    await error(await env.call("Greeter", "x"), 400, BAD_PATH)
    await error(await env.req("POST", "/"), 400, "bad path: /")
    await error(await env.req("GET", "//"), 400, "bad path: /")
    await error(await env.req("POST", "/restate/unknown/Greeter/greet", json_body="x"), 404, "not found")
    await error(await env.req("GET", "/openapi/x"), 404, "not found")
    await error(
        await env.call("Counter/%FF/get"), 400, re.compile(r"^bad path, cannot decode key: FromUtf8Error")
    )
    await error(
        await env.req("POST", "/restate/awakeables/x"),
        400,
        re.compile("^bad path, expected either /restate/awakeables"),
    )


async def test_wrong_methods_are_405(env: Env) -> None:
    await error(await env.req("PUT", "/restate/call/Greeter/greet", json_body="x"), 405, "method not allowed")
    await error(await env.req("DELETE", "/restate/send/Greeter/greet"), 405, "method not allowed")
    await error(
        await env.req("PUT", "/restate/call/Greeter/private"), 400, "the invoked service is not public"
    )


async def test_input_validation_and_private(env: Env) -> None:
    r = await env.req(
        "POST", "/restate/call/Greeter/greet", data=b'"x"', headers={"content-type": "text/plain"}
    )
    await error(
        r,
        400,
        "input validation error: Content-type 'text/plain' does not match 'application/json'",
        has_id=False,
    )
    await error(
        await env.call("Greeter/noop", "unexpected"),
        400,
        "input validation error: Expected body and content-type to be empty, but wasn't with "
        "content-type 'Some(\"application/json\")'",
    )
    r = await env.req("POST", "/restate/call/Greeter/noop", data=b"x", headers={"x": "y"})
    await error(
        r,
        400,
        "input validation error: Expected body and content-type to be empty, but wasn't with "
        "content-type 'None'",
    )
    await error(await env.call("Greeter/private", "x"), 400, "the invoked service is not public")


async def test_terminal_errors(env: Env) -> None:
    await error(
        await env.call("Greeter/fail", "boom"), 409, "failed on purpose: boom", "invocation", has_id=True
    )
    inv = (await accepted(await env.send("Greeter/fail", "boom")))["invocationId"]
    await env.settle()
    r = await env.req("GET", f"/restate/output/{inv}")
    await error(r, 409, "failed on purpose: boom", "invocation", has_id=True)
    env.dispatcher.script(
        "Greeter", "greet", lambda req: Outcome("", failure_code=1000, failure_message="odd")
    )
    r = await env.call("Greeter/greet", "x")
    assert r.status == 500 and json.loads(await r.read()) == {
        "code": 1000,
        "message": "odd",
        "source": "invocation",
    }


async def test_with_scopes_off_a_scoped_request_gets_restates_400() -> None:
    async with make_env(scopes_enabled=False) as env:
        r = await env.req("POST", "/restate/scope/abc/call/Greeter/greet", json_body="x")
        await error(r, 400, "scoped invocations require vqueues to be enabled", has_id=False)
        assert env.dispatcher.requests == []


async def test_scope_and_limit_key(env: Env) -> None:
    r = await env.req("POST", "/restate/scope/bad%20scope!/call/Greeter/greet", json_body="x")
    await error(r, 400, "bad scope value: value contains characters outside the allowed set [a-zA-Z0-9_.-]")
    r = await env.req("POST", "/restate/scope/abc/call/NoSuch/greet", json_body="x")
    assert r.status == 404
    r = await env.call("Greeter/greet", "x", headers={"x-restate-limit-key": "user1"})
    await error(r, 400, "limit-key requires a scope to be set")
    r = await env.call("Greeter/greet", "x", query="?limit-key=a/b/c")
    await error(r, 400, "invalid limit-key: too many path components in the given limit-key (max 2)")
    r = await env.call("Greeter/greet", "x", headers={"x-restate-limit-key": "a/b!"})
    await error(
        r,
        400,
        "invalid limit-key: invalid limit-key component: value contains characters outside "
        "the allowed set [a-zA-Z0-9_.-]",
    )
    assert env.dispatcher.requests == []


async def _raw_request(env: Env, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(env.client.host, env.client.port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, payload
    finally:
        writer.close()


async def test_oversized_body_is_413_before_reading(env: Env) -> None:
    head = (
        b"POST /restate/call/Greeter/greet HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(33 * 1024 * 1024 + 2).encode() + b"\r\n\r\n"
    )
    status, headers, body = await _raw_request(env, head, b'"' + b"a" * 65536)
    assert status == 413 and headers["content-type"] == "application/json"
    assert headers["x-restate-error-source"] == "ingress"
    parsed = json.loads(body)
    assert parsed["code"] == 413 and parsed["source"] == "ingress" and "limit" in parsed["message"]
    # with Expect: 100-continue the answer comes before any body byte
    status, _, _ = await _raw_request(
        env, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"), b""
    )
    assert status == 413
    assert env.dispatcher.requests == []


async def test_streamed_oversized_body_is_413() -> None:
    async with make_env(max_body_bytes=1024) as e:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"a" * 512

        url = URL(f"http://{e.client.host}:{e.client.port}/restate/call/Greeter/greet", encoded=True)
        r = await e.client.session.post(url, data=chunks(), headers={"content-type": "application/json"})
        await error(r, 413, re.compile("limit"))
        await ok(await e.call("Greeter/greet", "a" * 100), "Hello, " + "a" * 100 + "!")


async def test_load_shedding_is_429() -> None:
    async with make_env(concurrency_limit=1) as e:
        slow = asyncio.create_task(e.call("Greeter/slow", 1))
        await wait_for(lambda: len(e.dispatcher.requests) == 1)
        r = await e.call("Greeter/greet", "x")
        await error(r, 429, "too many requests, the ingress is overloaded. Retry later.")
        e.services.release_slow.set()
        await ok(await slow, "slow done after 1s")
        await ok(await e.call("Greeter/greet", "x"), "Hello, x!")


async def test_dispatcher_errors_and_unexpected_exceptions(env: Env) -> None:
    env.dispatcher.fail_with = PartitionUnavailable(
        "internal routing error: not leader. You may safely retry the request."
    )
    r = await env.call("Greeter/greet", "x")
    await error(r, 503, re.compile("^internal routing error: not leader"))
    assert r.headers["retry-after"] == "1"
    env.dispatcher.fail_with = RuntimeError("boom")  # type: ignore[assignment]
    r = await env.req("GET", f"/restate/output/{UNKNOWN_ID}")
    await error(r, 500, "internal error")


async def test_a_503_names_the_invocation_the_call_may_have_started(env: Env) -> None:
    def fail_next() -> None:
        env.dispatcher.fail_with = PartitionUnavailable(
            "internal routing error: unavailable. The request may be retried safely.")

    fail_next()
    r = await env.call("Greeter/greet", "x")  # the ingress made up its idempotency key
    first = await error(r, 503, re.compile(r"^internal routing error: unavailable\. The invocation may have "
                                           r"been accepted: attach to it by its id \(x-restate-id\)\.$"))
    assert first is not None and first.startswith("inv_")
    fail_next()
    r = await env.call("Greeter/greet", "x", headers={"idempotency-key": "k1"})
    keyed = await error(r, 503, "internal routing error: unavailable. The request may be retried safely.")
    fail_next()
    r = await env.call("Greeter/greet", "x", headers={"idempotency-key": "k1"})
    assert keyed is not None and await error(r, 503, re.compile("retried safely")) == keyed != first


async def test_metrics_hook(env: Env) -> None:
    await ok(await env.call("Greeter/greet", "x"))
    await accepted(await env.send("Greeter/greet", "x"))
    await error(await env.req("POST", "/"), 400, "bad path: /")
    await env.req("GET", "/restate/health")
    assert [(route, status) for route, status, _ in env.observed] == [
        ("call", 200),
        ("send", 202),
        ("invalid", 400),
        ("health", 200),
    ]
    assert all(seconds >= 0 for *_, seconds in env.observed)


# ---- awakeables --------------------------------------------------------------------------------

async def test_awakeable_resolve_appends_a_signal_and_answers_202(env: Env) -> None:
    from shardgate import protocol
    from shardgate.sharding import InvocationId, awakeable_id, partition_of

    target = InvocationId(0x1234 << 40, 0x42)
    awk = awakeable_id(target, 17)
    r = await env.req("POST", f"/restate/awakeables/{awk}/resolve", json_body="v")
    assert r.status == 202 and await r.read() == b""
    inv, partition, key, frame = env.dispatcher.signals[-1]
    assert (inv, partition, key) == (str(target), partition_of(0x1234 << 40, PARTITIONS), "s17")
    assert frame == protocol.notification(protocol.MessageType.SIGNAL_NOTIFICATION, signal_id=17, value=b'"v"')
    r = await env.req("POST", f"/restate/a/{awk}/reject", data=b"boom")
    assert r.status == 202
    assert env.dispatcher.signals[-1][3] == protocol.notification(
        protocol.MessageType.SIGNAL_NOTIFICATION, signal_id=17, failure=(500, "boom"))


async def test_malformed_awakeable_id_is_400(env: Env) -> None:
    r = await env.req("POST", "/restate/awakeables/garbage/resolve", json_body="x")
    assert r.status == 400
    assert await r.json() == {"code": 400, "message": "bad awakeable id 'garbage': bad format", "source": "ingress"}
