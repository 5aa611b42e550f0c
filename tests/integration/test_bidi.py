"""Bidirectional attempts (`partition/bidi.py`) against a real Redis and real restate-sdk 1.2.0
deployments under hypercorn, reached over h2c as a deployment registered without `use_http_11`.

What the scripts and the attempts cost (counted on the test's own client and the in-process
attempt counter): a plain call streamed is still accept + apply; a `ctx.run` is accept + append +
apply in one attempt instead of two; lazy state is answered on the stream; a run followed by a
sleep ends the stream and resumes from the timer; `auto` streams only what was seen to go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from partition import keys
from partition.invoker import Invoker
from partition.metrics import DEPLOYMENT_ATTEMPTS
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate import http2
from shardgate.schema import Deployment, HandlerMeta, HandlerType, SchemaSnapshot, ServiceMeta, ServiceType
from shardgate.sharding import idempotent_invocation_id, partition_of
from tests.deployments import serve_sdk_app
from tests.integration.conftest import own_partitions
from tests.integration.counting import CountingRedis, counted_scripts
from tests.services.durable_service import COUNTER_DIR_ENV, read_counter

pytestmark = pytest.mark.timeout(60)

P = 4
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def counter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bidi-counters")


@pytest.fixture(scope="module")
def durable_deployment(tmp_path_factory: pytest.TempPathFactory, counter_dir: Path) -> Iterator[str]:
    with serve_sdk_app("tests.services.durable_service:app", tmp_path_factory.mktemp("bidi") / "sdk.log",
                       env={COUNTER_DIR_ENV: str(counter_dir)}) as url:
        yield url


def _schema(conformance_uri: str, durable_uri: str, http_11_attempts: bool) -> SchemaSnapshot:
    greet_dep = Deployment(id="dp_bidi_greet", uri=conformance_uri, protocol_mode="BIDI_STREAM",
                           min_protocol_version=5, max_protocol_version=6, use_http_11=False,
                           http_11_attempts=http_11_attempts)
    durable_dep = Deployment(id="dp_bidi_durable", uri=durable_uri, protocol_mode="BIDI_STREAM",
                             min_protocol_version=5, max_protocol_version=6, use_http_11=False,
                             http_11_attempts=http_11_attempts)
    greeter = ServiceMeta(name="Greeter", ty=ServiceType.SERVICE, deployment_id=greet_dep.id,
                          handlers={h: HandlerMeta(name=h, ty=None) for h in ("greet", "with_run")})
    durable = ServiceMeta(name="Durable", ty=ServiceType.SERVICE, deployment_id=durable_dep.id,
                          handlers={h: HandlerMeta(name=h, ty=None) for h in ("run_once", "sleep_ms")})
    middle = ServiceMeta(name="Middle", ty=ServiceType.SERVICE, deployment_id=durable_dep.id,
                         handlers={"step": HandlerMeta(name="step", ty=None)})
    leaf = ServiceMeta(name="Leaf", ty=ServiceType.SERVICE, deployment_id=durable_dep.id,
                       handlers={"double": HandlerMeta(name="double", ty=None)})
    lazy = ServiceMeta(name="LazyLedger", ty=ServiceType.VIRTUAL_OBJECT, deployment_id=durable_dep.id,
                       handlers={"add": HandlerMeta(name="add", ty=HandlerType.EXCLUSIVE)}, enable_lazy_state=True)
    return SchemaSnapshot(version=1, services={"Greeter": greeter, "Durable": durable, "LazyLedger": lazy,
                                               "Middle": middle, "Leaf": leaf},
                          deployments={greet_dep.id: greet_dep, durable_dep.id: durable_dep})


def _request(service: str, key: str | None, handler: str, body: object, idem: str) -> pb.InvokeRequest:
    inv = idempotent_invocation_id(service, key, handler, idem)
    req = pb.InvokeRequest(partition=partition_of(inv.partition_key, P), invocation_id=str(inv), service=service,
                           handler=handler, body=json.dumps(body).encode(),
                           kind=pb.HANDLER_KIND_SERVICE if key is None else pb.HANDLER_KIND_EXCLUSIVE,
                           idempotency_key=idem, completion_retention_ms=60_000, wait=True)
    if key is not None:
        req.key = key
    return req


class Worker:
    def __init__(self, redis: CountingRedis, schema: SchemaSnapshot, mode: str) -> None:
        self.redis = redis
        self.scripts = counted_scripts(redis)
        self.invoker = Invoker(connect_timeout_s=5.0)
        self.service = PartitionService(redis, self.scripts, self.invoker, lambda: schema, P, 8)
        self.service.stream_attempts(mode)

    async def start(self) -> None:
        await self.invoker.start()
        await own_partitions(self.service, self.scripts, P)

    async def stop(self) -> None:
        await self.service.shutdown()
        await self.invoker.close()

    async def call(self, req: pb.InvokeRequest) -> tuple[pb.Result, dict[str, int], dict[str, int]]:
        """The result, the scripts it sent (by name) and the attempts it took (by transport)."""
        before = dict(self.redis.sent)
        attempts = {t: DEPLOYMENT_ATTEMPTS.labels(t)._value.get() for t in ("http1", "h2c", "h2c_bidi")}
        async with asyncio.timeout(DEADLINE_S):
            result = (await self.service.invoke(req)).result
        sent = {k: v - before.get(k, 0) for k, v in self.redis.sent.items() if v - before.get(k, 0)}
        took = {t: int(DEPLOYMENT_ATTEMPTS.labels(t)._value.get() - n) for t, n in attempts.items()}
        return result, sent, {t: n for t, n in took.items() if n}


@pytest.fixture
async def worker(redis_url: str, sdk_deployment: str, durable_deployment: str,
                 request: pytest.FixtureRequest) -> AsyncIterator[Worker]:
    mode, http_11_attempts = getattr(request, "param", ("always", False))
    redis = CountingRedis.from_url(redis_url, socket_timeout=5)
    w = Worker(redis, _schema(sdk_deployment, durable_deployment, http_11_attempts), mode)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await redis.aclose()


async def test_a_plain_call_streamed_still_costs_two_scripts(worker: Worker) -> None:
    await worker.call(_request("Greeter", None, "greet", "warm", "bidi-greet-warm"))  # loads the scripts
    result, sent, took = await worker.call(_request("Greeter", None, "greet", "Ann", "bidi-greet"))
    assert (result.failure_code, result.value) == (0, b'"Hello, Ann!"')
    assert sent == {"accept": 1, "apply": 1}
    assert took == {"h2c_bidi": 1}


async def test_a_run_goes_on_in_the_same_attempt(worker: Worker) -> None:
    result, sent, took = await worker.call(_request("Greeter", None, "with_run", "Bo", "bidi-run"))
    assert (result.failure_code, result.value) == (0, b'"side-effect for Bo"')
    assert sent == {"accept": 1, "append": 1, "apply": 1}
    assert took == {"h2c_bidi": 1}


async def test_lazy_state_is_answered_on_the_stream(worker: Worker, redis_url: str) -> None:
    key = "lazy-bidi"
    first, sent, took = await worker.call(_request("LazyLedger", key, "add", 5, "bidi-lazy-1"))
    assert (first.failure_code, first.value) == (0, b"5")
    assert took == {"h2c_bidi": 1} and sent["append"] == 2  # total, then count: one append each
    second, _, took = await worker.call(_request("LazyLedger", key, "add", 2, "bidi-lazy-2"))
    assert (second.failure_code, second.value) == (0, b"7")
    assert took == {"h2c_bidi": 1}
    p = partition_of(idempotent_invocation_id("LazyLedger", key, "add", "x").partition_key, P)
    assert await worker.redis.hgetall(keys.state(p, "LazyLedger", key)) == {b"total": b"7", b"count": b"2"}


async def test_a_run_then_a_short_sleep_go_on_in_the_same_attempt(worker: Worker, counter_dir: Path) -> None:
    """Durable/run_once: the run's result comes back on the stream; the 50 ms sleep after it is
    stored by an append and waited for on the open stream; the timer's notify pokes the stream
    with the completion and its journal index, which follows what the attempt knows: it is
    written back without another script."""
    result, sent, took = await worker.call(_request("Durable", None, "run_once", "r1", "bidi-once"))
    assert (result.failure_code, result.value) == (0, b"1")
    assert read_counter("r1", counter_dir) == 1
    assert sent == {"accept": 1, "append": 2, "notify": 1, "apply": 1}
    assert took == {"h2c_bidi": 1}


async def test_a_long_sleep_ends_the_stream_and_the_timer_resumes_it(worker: Worker) -> None:
    result, sent, took = await worker.call(_request("Durable", None, "sleep_ms", 1500, "bidi-long-sleep"))
    assert (result.failure_code, result.value) == (0, b"1500")
    assert took == {"h2c_bidi": 2} and "append" not in sent  # ended at once: stored by the suspension


async def test_a_call_result_reaches_the_open_stream(worker: Worker) -> None:
    """Middle/step calls Leaf/double: the callee's result comes through the outbox and the notify
    pokes the caller's stream. One attempt each."""
    result, _, took = await worker.call(_request("Middle", None, "step", 20, "bidi-step"))
    assert (result.failure_code, result.value) == (0, b"41")
    assert took == {"h2c_bidi": 2}


async def test_a_lost_poke_costs_time_not_the_result(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the poke the stream waits for the sleep's hold to run out, ends, and the SDK
    suspends: the suspension finds the completion stored and the next attempt ends it."""
    for p in range(P):
        monkeypatch.setattr(worker.service.leader(p), "_poke_live", lambda inv_id: None)
    result, _, took = await worker.call(_request("Durable", None, "sleep_ms", 100, "bidi-no-poke"))
    assert (result.failure_code, result.value) == (0, b"100")
    assert took == {"h2c_bidi": 2}


@pytest.mark.parametrize("worker", [("auto", True)], indirect=True)
async def test_auto_streams_a_handler_once_an_attempt_of_it_went_on_at_once(worker: Worker) -> None:
    """Registered for h2c but answering HTTP/1.1 too: plain calls stay request-response over
    HTTP/1.1; a handler whose next attempt replays a journal that just grew (a run, a short
    sleep) streams from that attempt on."""
    _, _, took = await worker.call(_request("Greeter", None, "greet", "Cy", "auto-greet-1"))
    assert took == {"http1": 1}
    _, _, took = await worker.call(_request("Greeter", None, "with_run", "Cy", "auto-run-1"))
    assert took == {"http1": 1, "h2c_bidi": 1}  # the resumed attempt already streams
    result, sent, took = await worker.call(_request("Greeter", None, "with_run", "Di", "auto-run-2"))
    assert (result.value, took) == (b'"side-effect for Di"', {"h2c_bidi": 1})
    assert sent == {"accept": 1, "append": 1, "apply": 1}
    _, _, took = await worker.call(_request("Greeter", None, "greet", "Ed", "auto-greet-2"))
    assert took == {"http1": 1}
    # a 100 ms sleep: the timer's resume replays a journal that just grew, so the handler streams
    _, _, took = await worker.call(_request("Durable", None, "sleep_ms", 100, "auto-sleep-1"))
    assert took == {"http1": 1, "h2c_bidi": 1}
    result, _, took = await worker.call(_request("Durable", None, "sleep_ms", 100, "auto-sleep-2"))
    assert (result.value, took) == (b"100", {"h2c_bidi": 1})


@pytest.mark.parametrize("worker", [("auto", False)], indirect=True)
async def test_auto_keeps_a_plain_call_request_response_on_an_h2c_only_deployment(worker: Worker) -> None:
    _, _, took = await worker.call(_request("Greeter", None, "greet", "Ho", "auto-h2c-greet"))
    assert took == {"h2c": 1}
    _, _, took = await worker.call(_request("Greeter", None, "with_run", "Ho", "auto-h2c-run-1"))
    assert took == {"h2c": 1, "h2c_bidi": 1}
    _, _, took = await worker.call(_request("Greeter", None, "with_run", "Io", "auto-h2c-run-2"))
    assert took == {"h2c_bidi": 1}


@pytest.mark.parametrize("worker", [("off", False)], indirect=True)
async def test_off_keeps_every_attempt_request_response(worker: Worker) -> None:
    result, _, took = await worker.call(_request("Greeter", None, "with_run", "Fa", "off-run"))
    assert result.value == b'"side-effect for Fa"' and took == {"h2c": 2}


async def test_an_invocation_killed_while_its_stream_is_open_stops_the_attempt(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill lands between the run's proposal and its append: the append finds the invocation
    completed (BAD_STATE), stores nothing, the stream is given up and the caller gets the kill."""
    scripts = worker.scripts
    real_append = scripts.append
    appended: list[str] = []

    async def killed_first(t: Any, token: str, now_ms: int, *args: Any, **kw: Any) -> Any:
        assert (await scripts.kill(t, token, now_ms)).outcome.value == "DONE"
        reply = await real_append(t, token, now_ms, *args, **kw)
        appended.append(reply.outcome.value)
        return reply

    monkeypatch.setattr(scripts, "append", killed_first)
    result, sent, took = await worker.call(_request("Greeter", None, "with_run", "Gu", "bidi-killed"))
    assert appended == ["BAD_STATE"] and "apply" not in sent and took == {"h2c_bidi": 1}
    assert result.failure_code == 409 and "killed" in result.failure_message


async def test_a_stream_refused_before_any_answer_is_opened_once_more(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a request-response attempt refused by the peer (or cut on a reused connection) is sent
    again: the first stream fails retryably before anything came back, the second carries it."""
    real_open = worker.invoker.open_stream
    opened: list[str] = []

    async def refused_first(deployment: Any, inp: Any) -> Any:
        stream = await real_open(deployment, inp)
        opened.append(inp.handler)
        if len(opened) == 1:
            stream._duplex._stream.fail(http2.Http2Error("the deployment reset the stream (REFUSED_STREAM)",
                                                         retryable=True))
        return stream

    monkeypatch.setattr(worker.invoker, "open_stream", refused_first)
    result, sent, took = await worker.call(_request("Greeter", None, "with_run", "Jo", "bidi-refused"))
    assert (result.failure_code, result.value) == (0, b'"side-effect for Jo"')
    assert opened == ["with_run", "with_run"] and took == {"h2c_bidi": 2}
    assert sent == {"accept": 1, "append": 1, "apply": 1}  # no failed attempt was recorded


async def test_a_cancel_while_the_stream_waits_is_fetched_and_written_back(worker: Worker) -> None:
    """A cancel appends its signal without a frame for the poke: the stream fetches it with an
    (empty) append and the SDK ends the invocation as cancelled, in the same attempt."""
    req = _request("Durable", None, "sleep_ms", 900, "bidi-cancel")
    call = asyncio.ensure_future(worker.call(req))
    leader = worker.service.leader(req.partition)
    async with asyncio.timeout(DEADLINE_S):
        while req.invocation_id not in leader.live or not await worker.redis.zcard(keys.timers(req.partition)):
            await asyncio.sleep(0.01)
    assert (await leader._cancel(req.invocation_id)).outcome.value == "APPENDED"
    result, sent, took = await call
    assert result.failure_code == 409, result
    assert took == {"h2c_bidi": 1} and sent["append"] == 2  # the sleep, then the fetch
