"""InvokeStream: many Invokes on one long-lived gRPC stream keep every meaning of the unary Invoke.

Real grpc.aio servers on loopback serve the real `PartitionServicer`; behind it stands a
partition service that answers as a real one can (results, NOT_LEADER, Redis failures, hangs).
The ingress side is the real `GrpcDispatcher` with the real `Router` over a real redis-server,
so re-routing follows the routes written to Redis exactly as workers publish them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ingress import stream as ingress_stream
from ingress.dispatcher import HandlerKind, InvocationRequest
from ingress.errors import InvocationNotFound, PartitionUnavailable
from ingress.grpc_dispatcher import GrpcDispatcher
from ingress.stream import InvokeStream, StreamItemError
from partition.errors import InvocationNotFound as WorkerNotFound
from partition.errors import NotLeader
from partition.server import PartitionServicer
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate import keys
from shardgate.linger import Linger
from shardgate.routing import Router

PARTITIONS = 4
WAIT_S = 10.0

Behaviour = Callable[[pb.InvokeRequest], Awaitable[pb.InvokeResponse]]


async def _greet(req: pb.InvokeRequest) -> pb.InvokeResponse:
    return pb.InvokeResponse(invocation_id=req.invocation_id, result=pb.Result(value=b"hi " + req.body))


@dataclass
class StandIn:
    """The partition service behind a servicer: runs `behaviour`, records what it saw."""

    behaviour: Behaviour = _greet
    seen: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    running: int = 0

    async def invoke(self, req: pb.InvokeRequest) -> pb.InvokeResponse:
        self.seen.append(req.invocation_id)
        self.running += 1
        try:
            return await self.behaviour(req)
        except asyncio.CancelledError:
            self.cancelled.append(req.invocation_id)
            raise
        finally:
            self.running -= 1


class CountingServicer(PartitionServicer):
    """The real servicer, counting how its Invokes arrive."""

    def __init__(self, service: StandIn) -> None:
        super().__init__(service)  # type: ignore[arg-type]  # stand-in for PartitionService
        self.streams = 0
        self.unary = 0

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> pb.InvokeResponse:
        self.unary += 1
        return await super().Invoke(request, context)

    async def InvokeStream(self, requests: Any, context: Any) -> None:
        self.streams += 1
        await super().InvokeStream(requests, context)


class OldServicer(CountingServicer):
    """A worker of a version without InvokeStream (the generated default: UNIMPLEMENTED)."""

    async def InvokeStream(self, requests: Any, context: Any) -> None:
        self.streams += 1
        pb_grpc.PartitionServiceServicer.InvokeStream(self, requests, context)


@dataclass
class Worker:
    server: grpc.aio.Server
    address: str
    service: StandIn
    servicer: CountingServicer


async def _start(servicer_type: type[CountingServicer] = CountingServicer) -> Worker:
    service = StandIn()
    servicer = servicer_type(service)
    server = grpc.aio.server()
    pb_grpc.add_PartitionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Worker(server, f"127.0.0.1:{port}", service, servicer)


async def _route(redis: Redis, address: str) -> None:
    for p in range(PARTITIONS):
        await redis.set(keys.route(p), f"{address}|t1")


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = await _start()
    yield w
    await w.server.stop(None)


@pytest.fixture
async def dispatcher(redis: Redis, worker: Worker) -> AsyncIterator[GrpcDispatcher]:
    await _route(redis, worker.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    d = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=5.0)
    yield d
    await d.aclose()
    await router.close()


def _req(n: int, partition: int = 0) -> InvocationRequest:
    return InvocationRequest(f"inv_{n}", partition, "Greeter", "greet", None, HandlerKind.SERVICE,
                             f"{n}".encode(), (("k", "v"),), idempotency_key=f"ik{n}")


async def _poll(what: str, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_concurrent_calls_share_one_stream_and_get_their_own_answers(
        dispatcher: GrpcDispatcher, worker: Worker) -> None:
    outcomes = await asyncio.wait_for(asyncio.gather(*(dispatcher.call(_req(n)) for n in range(300))), WAIT_S)
    assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(300)]
    assert [o.invocation_id for o in outcomes] == [f"inv_{n}" for n in range(300)]
    assert worker.servicer.streams == 1 and worker.servicer.unary == 0
    receipt = await asyncio.wait_for(dispatcher.send(_req(1000)), WAIT_S)
    assert receipt.invocation_id == "inv_1000" and worker.servicer.streams == 1


async def test_the_request_message_arrives_as_the_unary_call_sends_it(
        dispatcher: GrpcDispatcher, worker: Worker) -> None:
    got: list[pb.InvokeRequest] = []

    async def keep(req: pb.InvokeRequest) -> pb.InvokeResponse:
        got.append(pb.InvokeRequest.FromString(req.SerializeToString()))
        return await _greet(req)

    worker.service.behaviour = keep
    req = _req(7)
    await asyncio.wait_for(dispatcher.call(req), WAIT_S)
    expected = dispatcher._invoke_request(req, True)
    expected.request_nonce = got[0].request_nonce
    assert got[0] == expected and len(got[0].request_nonce) == 8
    sent = got[0]  # and what the caller asked for, not only what the one builder made of it
    assert (sent.invocation_id, sent.service, sent.handler, sent.body, sent.idempotency_key,
            [(h.key, h.value) for h in sent.headers]) == ("inv_7", "Greeter", "greet", b"7", "ik7", [("k", "v")])


async def test_answers_leave_in_batches_split_by_size(
        dispatcher: GrpcDispatcher, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batch limits and little buffer room: every request still gets its own answer."""
    monkeypatch.setattr(ingress_stream, "MAX_INVOKES_PER_BATCH", 3)
    monkeypatch.setattr(ingress_stream, "MAX_BUFFERED", 5)
    gate = asyncio.Event()

    async def held(req: pb.InvokeRequest) -> pb.InvokeResponse:
        await gate.wait()
        return await _greet(req)

    worker.service.behaviour = held
    calls = [asyncio.ensure_future(dispatcher.call(_req(n))) for n in range(40)]
    await _poll("every request to reach the worker", lambda: worker.service.running == 40)
    gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(40)]


@pytest.mark.parametrize(("exc", "raised", "message"), [
    (WorkerNotFound("inv_1"), InvocationNotFound, "invocation not found"),
    (KeyError("bug"), PartitionUnavailable, "internal error in the partition worker"),
])
async def test_a_failed_request_fails_as_the_unary_call_failed(
        dispatcher: GrpcDispatcher, worker: Worker, exc: Exception, raised: type[Exception], message: str) -> None:
    async def fail(_: pb.InvokeRequest) -> pb.InvokeResponse:
        raise exc

    worker.service.behaviour = fail
    with pytest.raises(raised) as info:
        await asyncio.wait_for(dispatcher.call(_req(1)), WAIT_S)
    assert message in str(info.value)
    # the failure was the request's own: the stream goes on serving the others
    worker.service.behaviour = _greet
    assert (await asyncio.wait_for(dispatcher.call(_req(2)), WAIT_S)).value == b"hi 2"
    assert worker.servicer.streams == 1


async def test_codes_of_failures_are_those_of_the_unary_call(worker: Worker) -> None:
    failures: list[Exception] = [NotLeader(0), RedisConnectionError("Error 111 connecting to 10.0.0.9:6379"),
                                 WorkerNotFound("inv_1"), KeyError("bug")]

    async def fail(req: pb.InvokeRequest) -> pb.InvokeResponse:
        raise failures[int(req.invocation_id)]

    worker.service.behaviour = fail
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.PartitionServiceStub(channel)
        stream = InvokeStream(stub, lambda _: None, Linger(0.0))
        for n, exc in enumerate(failures):
            req = pb.InvokeRequest(partition=0, invocation_id=str(n))
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Invoke(req, timeout=5)
            with pytest.raises(StreamItemError) as streamed:
                await stream.invoke(req, 5)
            assert (streamed.value.code(), streamed.value.details()) == (unary.value.code(), unary.value.details()), exc
            assert "10.0.0.9" not in streamed.value.details()
        await stream.aclose()


async def test_not_leader_reroutes_to_the_new_owner(redis: Redis, dispatcher: GrpcDispatcher, worker: Worker) -> None:
    other = await _start()
    try:
        async def moved(_: pb.InvokeRequest) -> pb.InvokeResponse:
            await _route(redis, other.address)
            raise NotLeader(0)

        worker.service.behaviour = moved
        outcome = await asyncio.wait_for(dispatcher.call(_req(5)), WAIT_S)
        assert outcome.value == b"hi 5"
        assert worker.service.seen == ["inv_5"] and other.service.seen == ["inv_5"]
    finally:
        await other.server.stop(None)


async def test_a_worker_dying_mid_batch_reroutes_every_unanswered_caller(
        redis: Redis, dispatcher: GrpcDispatcher, worker: Worker) -> None:
    other = await _start()
    try:
        hang = asyncio.Event()

        async def stuck(_: pb.InvokeRequest) -> pb.InvokeResponse:
            await hang.wait()
            raise AssertionError("unreachable")

        async def first_ok_then_stuck(req: pb.InvokeRequest) -> pb.InvokeResponse:
            return await (_greet(req) if req.invocation_id == "inv_0" else stuck(req))

        worker.service.behaviour = first_ok_then_stuck
        calls = [asyncio.ensure_future(dispatcher.call(_req(n))) for n in range(50)]
        await _poll("every request to reach the first worker", lambda: len(worker.service.seen) == 50)
        await _route(redis, other.address)
        await worker.server.stop(None)  # the worker goes away with 49 requests unanswered
        outcomes = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
        assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(50)]
        assert sorted(other.service.seen) == sorted(f"inv_{n}" for n in range(1, 50))
    finally:
        await other.server.stop(None)


class BreakingServicer(CountingServicer):
    """A worker whose stream breaks the way grpc.aio reports a write racing a dead peer: INTERNAL."""

    async def InvokeStream(self, requests: Any, context: Any) -> None:
        self.streams += 1
        await requests.__anext__()  # the first batch arrived
        await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")


async def test_a_stream_broken_with_internal_reroutes_like_a_dead_worker(redis: Redis, worker: Worker) -> None:
    broken = await _start(BreakingServicer)
    await _route(redis, broken.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=5.0)
    try:
        call = asyncio.ensure_future(dispatcher.call(_req(7)))
        await _poll("the request to reach the breaking worker", lambda: broken.servicer.streams >= 1)
        await _route(redis, worker.address)
        assert (await asyncio.wait_for(call, WAIT_S)).value == b"hi 7"
        assert worker.service.seen == ["inv_7"]
    finally:
        await dispatcher.aclose()
        await router.close()
        await broken.server.stop(None)


async def test_a_call_longer_than_the_routing_deadline_is_still_rerouted_when_its_owner_dies(
        redis: Redis, worker: Worker) -> None:
    dying = await _start()
    other = worker
    await _route(redis, dying.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=0.5, rpc_timeout_s=5.0, call_timeout_s=10.0)
    forever = asyncio.Event()

    async def hang(_: pb.InvokeRequest) -> pb.InvokeResponse:
        await forever.wait()
        raise AssertionError("unreachable")

    dying.service.behaviour = hang
    try:
        call = asyncio.ensure_future(dispatcher.call(_req(3)))
        await _poll("the call to reach its first owner", lambda: dying.service.running == 1)
        await asyncio.sleep(1.0)  # the call has now run twice the routing deadline
        await _route(redis, other.address)
        await dying.server.stop(None)
        assert (await asyncio.wait_for(call, WAIT_S)).value == b"hi 3"
    finally:
        await dispatcher.aclose()
        await router.close()
        await dying.server.stop(None)


class DeafServicer(CountingServicer):
    """A worker that opens the stream but never reads it: gRPC flow control stalls the writer."""

    async def InvokeStream(self, requests: Any, context: Any) -> None:
        self.streams += 1
        await asyncio.Event().wait()


async def test_a_caller_waiting_for_room_in_a_full_buffer_keeps_its_deadline(
        redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress_stream, "MAX_BUFFERED", 2)
    deaf = await _start(DeafServicer)
    await _route(redis, deaf.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=0.5)
    big = b"x" * (1024 * 1024)
    try:
        calls = [asyncio.ensure_future(dispatcher.call(dataclasses.replace(_req(n), body=big))) for n in range(40)]
        started = time.monotonic()
        for call in calls:  # each fails at its own deadline, also those that never left the buffer
            with pytest.raises(PartitionUnavailable, match="deadline exceeded"):
                await asyncio.wait_for(call, WAIT_S)
        assert time.monotonic() - started < 3.0
    finally:
        await dispatcher.aclose()
        await router.close()
        await deaf.server.stop(None)


async def test_past_the_deadline_the_caller_fails_and_the_worker_stops_waiting(
        redis: Redis, worker: Worker) -> None:
    await _route(redis, worker.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=0.3)
    forever = asyncio.Event()

    async def hang(_: pb.InvokeRequest) -> pb.InvokeResponse:
        await forever.wait()
        raise AssertionError("unreachable")

    worker.service.behaviour = hang
    try:
        started = time.monotonic()
        with pytest.raises(PartitionUnavailable, match="deadline exceeded"):
            await asyncio.wait_for(dispatcher.call(_req(1)), WAIT_S)
        assert time.monotonic() - started < 3.0
        await _poll("the worker to stop waiting", lambda: worker.service.cancelled == ["inv_1"])
    finally:
        await dispatcher.aclose()
        await router.close()


async def test_a_cancelled_caller_cancels_its_request_on_the_worker(
        dispatcher: GrpcDispatcher, worker: Worker) -> None:
    forever = asyncio.Event()

    async def hang(req: pb.InvokeRequest) -> pb.InvokeResponse:
        if req.invocation_id == "inv_1":
            await forever.wait()
        return await _greet(req)

    worker.service.behaviour = hang
    call = asyncio.ensure_future(dispatcher.call(_req(1)))
    await _poll("the request to reach the worker", lambda: worker.service.running == 1)
    call.cancel()
    await _poll("the worker to stop waiting", lambda: worker.service.cancelled == ["inv_1"])
    assert (await asyncio.wait_for(dispatcher.call(_req(2)), WAIT_S)).value == b"hi 2"


async def test_an_idle_stream_closes_so_a_stopping_worker_is_not_held(
        dispatcher: GrpcDispatcher, worker: Worker) -> None:
    await asyncio.wait_for(dispatcher.call(_req(1)), WAIT_S)
    await _poll("the idle stream to close", lambda: not dispatcher._streams)
    assert (await asyncio.wait_for(dispatcher.call(_req(2)), WAIT_S)).value == b"hi 2"
    assert worker.servicer.streams == 2
    await _poll("the idle stream to close", lambda: not dispatcher._streams)
    started = time.monotonic()
    await worker.server.stop(5.0)  # no stream left open: no wait for the grace period
    assert time.monotonic() - started < 2.0


async def test_a_worker_without_the_stream_is_called_unary(redis: Redis) -> None:
    old = await _start(OldServicer)
    await _route(redis, old.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=5.0)
    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*(dispatcher.call(_req(n)) for n in range(5))), WAIT_S)
        assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(5)]
        assert old.servicer.unary == 5
    finally:
        await dispatcher.aclose()
        await router.close()
        await old.server.stop(None)


LINGER_S = 0.3  # long against the 10 ms between the arrivals below, so the grouping is certain
STAGGER_S = 0.01


class _CountingContext:
    """A servicer context that records how many requests each message read carried and how many
    answers each message written carried."""

    def __init__(self, context: Any, servicer: MessageCountingServicer) -> None:
        self._context = context
        self._servicer = servicer

    async def read(self) -> Any:
        batch = await self._context.read()
        if batch is not grpc.aio.EOF:
            self._servicer.read_sizes.append(len(batch.invokes))
        return batch

    async def write(self, batch: pb.InvokeResultBatch) -> None:
        self._servicer.written_sizes.append(len(batch.results))
        await self._context.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class MessageCountingServicer(CountingServicer):
    """The real stream server with its linger set, counting the messages both ways."""

    linger_s = 0.0

    def __init__(self, service: StandIn) -> None:
        super().__init__(service)
        self._stream_linger_s = self.linger_s
        self.read_sizes: list[int] = []
        self.written_sizes: list[int] = []

    async def InvokeStream(self, requests: Any, context: Any) -> None:
        await super().InvokeStream(requests, _CountingContext(context, self))


class LingeringServicer(MessageCountingServicer):
    linger_s = LINGER_S


@contextlib.asynccontextmanager
async def _lingering_dispatcher(redis: Redis, w: Worker, linger_s: float) -> AsyncIterator[GrpcDispatcher]:
    """A dispatcher routed to `w` whose streams linger `linger_s`; stops `w` afterwards."""
    await _route(redis, w.address)
    router = Router(redis, PARTITIONS)
    await router.refresh()
    dispatcher = GrpcDispatcher(router, routing_deadline_s=WAIT_S, rpc_timeout_s=5.0, call_timeout_s=5.0,
                                stream_linger_s=linger_s)
    try:
        yield dispatcher
    finally:
        await dispatcher.aclose()
        await router.close()
        await w.server.stop(None)


@pytest.mark.parametrize(("linger_s", "messages"), [(0.0, [8, 1, 1, 1, 1]), (LINGER_S, [8, 4])])
async def test_a_busy_streams_requests_share_a_message_while_the_ingress_lingers(
        redis: Redis, linger_s: float, messages: list[int]) -> None:
    w = await _start(MessageCountingServicer)  # the worker end does not linger here
    gate = asyncio.Event()

    async def held(req: pb.InvokeRequest) -> pb.InvokeResponse:
        await gate.wait()
        return await _greet(req)

    w.service.behaviour = held
    async with _lingering_dispatcher(redis, w, linger_s) as dispatcher:
        calls = [asyncio.ensure_future(dispatcher.call(_req(n))) for n in range(8)]  # one message, at once
        await _poll("the first eight to reach the worker", lambda: w.service.running == 8)
        for n in range(8, 12):  # eight in flight, a message just sent: the stream is busy
            calls.append(asyncio.ensure_future(dispatcher.call(_req(n))))
            await asyncio.sleep(STAGGER_S)
        await _poll("every request to reach the worker", lambda: w.service.running == 12)
        gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
        assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(12)]
        assert w.servicer.read_sizes == messages


@pytest.mark.parametrize(("servicer", "messages"), [(MessageCountingServicer, [1] * 12), (LingeringServicer, [1, 11])])
async def test_a_busy_streams_answers_share_a_message_while_the_worker_lingers(
        redis: Redis, servicer: type[MessageCountingServicer], messages: list[int]) -> None:
    w = await _start(servicer)
    started = asyncio.Event()

    async def staggered(req: pb.InvokeRequest) -> pb.InvokeResponse:
        if w.service.running == 12:
            started.set()
        await started.wait()
        await asyncio.sleep(STAGGER_S * int(req.body))  # the answers become ready 10 ms apart (no sync)
        return await _greet(req)

    w.service.behaviour = staggered
    async with _lingering_dispatcher(redis, w, 0.0) as dispatcher:
        outcomes = await asyncio.wait_for(asyncio.gather(*(dispatcher.call(_req(n)) for n in range(12))), WAIT_S)
        assert [o.value for o in outcomes] == [b"hi " + f"{n}".encode() for n in range(12)]
        assert w.servicer.written_sizes == messages
