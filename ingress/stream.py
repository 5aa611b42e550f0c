"""The ingress's end of `InvokeStream`: many Invokes to one worker on one long-lived gRPC stream.

`InvokeStream.invoke` has the unary `Invoke`'s meaning and failures, but costs no gRPC call of
its own. The request goes into the stream's outgoing buffer; the one writer task sends everything
buffered as one `InvokeBatch` (so the requests of one event-loop iteration, and those that arrive
while a write waits for gRPC flow control, share a message); the one reader task takes each
`InvokeResultBatch` apart and completes the callers' futures directly — no queue and no task per
answer. Each caller owns one future and one deadline timer.

Semantics kept from the unary call:
- a request's failure is raised as `StreamItemError` carrying the status code and details the
  unary call would have failed with (NOT_LEADER is FAILED_PRECONDITION, and so on);
- the deadline: past `timeout_s` the caller gets DEADLINE_EXCEEDED and the worker is told to stop
  waiting (a cancel in the next batch), as gRPC cancels an expired call;
- a caller cancelled while waiting: the worker is told, as for a cancelled unary call;
- a broken stream (worker died, restarted, shut down, channel closed) fails every unanswered
  request with the stream's status (UNAVAILABLE, CANCELLED ...; INTERNAL and UNKNOWN, which only
  the transport ends a stream with, become UNAVAILABLE), which the dispatcher re-routes exactly as
  it re-routes a broken unary call.

A busy stream's writer waits `SHARDGATE_STREAM_LINGER_MS` (2 ms) before taking the batch, so more
requests share a message (`shardgate/linger.py`, decision 42); a lone caller never waits.

Back-pressure: at most `MAX_BUFFERED` requests wait unwritten; further callers wait for room,
within their deadline (past it they fail DEADLINE_EXCEEDED without having been sent).
A stream with nothing in flight for `IDLE_CLOSE_S` is closed (half-closed, then ended by the
worker), so a worker that stops is not held for its gRPC grace period by an idle stream; the next
request opens a new one. A worker that does not serve `InvokeStream` fails the requests with
`StreamUnsupported`, and the dispatcher falls back to unary calls for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.linger import Linger

log = logging.getLogger(__name__)

MAX_BUFFERED = 4096
"""Requests waiting unwritten on one stream before callers wait for room (back-pressure)."""
MAX_INVOKES_PER_BATCH = 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""One batch carries at most this many requests, or about this many bytes of request bodies."""
IDLE_CLOSE_S = 0.5
"""A stream without requests in flight for this long (checked every IDLE_CLOSE_S) is closed."""
_ENVELOPE_BYTES = 256
"""Estimated encoded size of a request or answer apart from its body / value."""

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_BROKEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class StreamItemError(Exception):
    """One request's failure: the status the unary `Invoke` would have failed with. Has the
    `code()` / `details()` of `grpc.aio.AioRpcError`, so both are handled alike."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class StreamUnsupported(Exception):
    """The worker does not serve `InvokeStream` (an older version): use the unary `Invoke`."""


_Pending = tuple["asyncio.Future[pb.InvokeResponse]", asyncio.TimerHandle]


class InvokeStream:
    """One `InvokeStream` call on one channel. Create it in the running loop; it closes itself
    when the call ends or it stays idle, and then calls `on_closed(self)` once."""

    def __init__(self, stub: pb_grpc.PartitionServiceStub, on_closed: Callable[[InvokeStream], None],
                 linger: Linger) -> None:
        self.stub = stub
        self._linger = linger
        self.closed = False
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._call = stub.InvokeStream()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._out: list[tuple[int, pb.InvokeRequest]] = []
        self._out_bytes = 0
        self._cancels: list[int] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ending = False
        self._seen_id = 0  # _next_id at the last idle check
        self._idle = self._loop.call_later(IDLE_CLOSE_S, self._idle_check)
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    async def invoke(self, req: pb.InvokeRequest, timeout_s: float) -> pb.InvokeResponse:
        """The unary `Invoke(req, timeout=timeout_s)` over the stream. Raises StreamItemError
        (the status the unary call would have failed with) or StreamUnsupported."""
        if len(self._out) >= MAX_BUFFERED and not self.closed:
            timeout_s = await self._wait_for_room(timeout_s)
        if self.closed:
            raise StreamItemError(grpc.StatusCode.UNAVAILABLE, "stream closed")
        rid = self._next_id
        self._next_id = rid + 1
        fut: asyncio.Future[pb.InvokeResponse] = self._loop.create_future()
        self._pending[rid] = (fut, self._loop.call_later(timeout_s, self._expire, rid))
        self._out.append((rid, req))
        self._out_bytes += len(req.body)
        self._wake.set()
        try:
            return await fut
        except asyncio.CancelledError:
            self._drop(rid)
            raise

    async def _wait_for_room(self, timeout_s: float) -> float:
        """Wait until the buffer has room; returns what is left of `timeout_s`. Raises
        StreamItemError DEADLINE_EXCEEDED when the deadline passes first (the request never left)."""
        started = self._loop.time()
        while len(self._out) >= MAX_BUFFERED and not self.closed:
            left_s = timeout_s - (self._loop.time() - started)
            if left_s <= 0:
                raise StreamItemError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), left_s)
        return max(timeout_s - (self._loop.time() - started), 0.001)

    # ---- answers ------------------------------------------------------------------------------
    def _drop(self, rid: int) -> None:
        """The caller went away: forget the request, tell the worker to stop waiting for it."""
        entry = self._pending.pop(rid, None)
        if entry is not None:
            entry[1].cancel()
            self._cancel(rid)

    def _expire(self, rid: int) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(StreamItemError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            self._cancel(rid)

    def _cancel(self, rid: int) -> None:
        if not self.closed:
            self._cancels.append(rid)
            self._wake.set()

    async def _read_loop(self) -> None:
        """Complete the callers' futures from the answer batches until the call ends."""
        pending = self._pending
        code, details = grpc.StatusCode.UNAVAILABLE, "stream ended"
        try:
            while True:
                batch = await self._call.read()
                if batch is grpc.aio.EOF:
                    break
                for r in batch.results:
                    entry = pending.pop(r.id, None)
                    if entry is None:
                        continue
                    fut, timer = entry
                    timer.cancel()
                    if fut.done():
                        continue
                    if r.HasField("error"):
                        fut.set_exception(StreamItemError(_CODES.get(r.error.code, grpc.StatusCode.UNKNOWN),
                                                          r.error.details))
                    else:
                        fut.set_result(r.response)
            code, details = await self._call.code(), await self._call.details() or "stream ended"
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
            if code in _BROKEN:
                # The worker answers each request's failure in its own result, never by ending the
                # stream, so the stream ending INTERNAL / UNKNOWN is the transport breaking; grpc.aio
                # even reports a write racing a dead peer as INTERNAL (grpc/grpc#36066).
                code, details = grpc.StatusCode.UNAVAILABLE, f"invoke stream broke ({code.name.lower()})"
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "stream cancelled"
            raise
        finally:
            self._close(code, details)

    # ---- requests -----------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        """Send what is buffered, one batch per write, until the stream closes."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(0)  # one more loop iteration: what else became ready joins the batch
                if delay_s := self._linger.delay(len(self._pending), self._loop.time()):
                    await asyncio.sleep(delay_s)  # a busy stream: what arrives meanwhile joins the batch
                while self._out or self._cancels:
                    batch = self._take()
                    await self._call.write(batch)
                    self._linger.wrote(self._loop.time())
                if self._ending:
                    await self._call.done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  a failed write means a broken call: the reader reports it
            log.debug("invoke stream write failed: %s", e)
            self._call.cancel()

    def _take(self) -> pb.InvokeBatch:
        """The next batch: cancellations, and the oldest buffered requests still awaited."""
        out, pending = self._out, self._pending
        if len(out) <= MAX_INVOKES_PER_BATCH and self._out_bytes <= MAX_BATCH_BYTES:
            taken, self._out, self._out_bytes = out, [], 0
        else:
            count, size = 0, 0
            for _, req in out:
                size += len(req.body) + _ENVELOPE_BYTES
                count += 1
                if count >= MAX_INVOKES_PER_BATCH or size >= MAX_BATCH_BYTES:
                    break
            taken, self._out = out[:count], out[count:]
            self._out_bytes = sum(len(req.body) for _, req in self._out)
        if not self._room.is_set():
            self._room.set()
        batch = pb.InvokeBatch(invokes=[pb.StreamInvoke(id=rid, request=req) for rid, req in taken if rid in pending],
                               cancels=self._cancels)
        self._cancels = []
        return batch

    # ---- closing ------------------------------------------------------------------------------
    def _idle_check(self) -> None:
        """Close the stream when nothing was sent since the last check and nothing is in flight."""
        if self.closed:
            return
        if self._pending or self._out or self._next_id != self._seen_id:
            self._seen_id = self._next_id
            self._idle = self._loop.call_later(IDLE_CLOSE_S, self._idle_check)
            return
        self._detach()
        self._ending = True
        self._wake.set()

    def _detach(self) -> None:
        """Take no new requests (the dispatcher opens a new stream for the next one)."""
        if not self.closed:
            self.closed = True
            self._idle.cancel()
            self._room.set()
            self._on_closed(self)

    def _close(self, code: grpc.StatusCode, details: str) -> None:
        """The call ended: every unanswered request fails with its status; the writer stops."""
        self._detach()
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.UNAVAILABLE
        unsupported = code == grpc.StatusCode.UNIMPLEMENTED
        pending, self._pending = self._pending, {}
        self._out, self._cancels = [], []
        for fut, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(StreamUnsupported() if unsupported else StreamItemError(code, details))
        if not self._writer.done():
            self._writer.cancel()

    async def aclose(self) -> None:
        """Cancel the call and wait for its tasks (tests and shutdown)."""
        self._call.cancel()
        for task in (self._reader, self._writer):
            with contextlib.suppress(BaseException):
                await task
