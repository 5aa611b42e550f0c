"""The worker's end of `InvokeStream`: many Invokes on one long-lived stream from an ingress.

The RPC's own task reads `InvokeBatch`es. Each request runs as one task of exactly what the unary
`Invoke` runs (`PartitionService.invoke`); the task itself appends its answer — the response, or
the status the unary call would have failed with (through `errors.translate`) — to the outgoing
buffer and wakes the one writer task, which sends everything ready as one `InvokeResultBatch`.
So answers that become ready in the same event-loop iteration (or while a write waits for gRPC
flow control) leave in one message, with no queue or extra task per answer.

A busy stream's writer waits `SHARDGATE_STREAM_LINGER_MS` (2 ms) before taking the batch, so more
answers share a message (`shardgate/linger.py`, decision 42).

A cancellation in the batch (its caller went away) cancels that request's task, as gRPC cancels
a unary handler, and nothing is answered for it. When the stream ends (the ingress closed or
cancelled it, the server stops), every request still running is cancelled, like the handlers of
a unary call whose connection went away; the ingress re-sends what it had not been answered.
At most `MAX_IN_FLIGHT` requests run per stream: beyond that the stream is not read, and gRPC's
flow control holds the ingress back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from partition.errors import PartitionError
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.linger import Linger

Invoke = Callable[[pb.InvokeRequest], Awaitable[pb.InvokeResponse]]
Fail = Callable[[BaseException], PartitionError]
"""Turns a request's failure into the worker error it is answered with (logs and counts it)."""

MAX_IN_FLIGHT = 65_536
"""Requests running at once on one stream; more are not read until some are answered."""
MAX_RESULTS_PER_BATCH = 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""A result batch is sent once it holds this many answers or about this many bytes of values."""


_CANCELLED_CODE: int = grpc.StatusCode.CANCELLED.value[0]


def _error(rid: int, code: int, details: str) -> pb.StreamResult:
    return pb.StreamResult(id=rid, error=pb.StreamError(code=code, details=details))


class StreamServer:
    """Serves one `InvokeStream` call; `run()` once, from the RPC's handler."""

    def __init__(self, invoke: Invoke, fail: Fail, on_ok: Callable[[], None],
                 context: grpc.aio.ServicerContext[Any, Any], linger: Linger) -> None:
        self._invoke = invoke
        self._linger = linger
        self._fail = fail
        self._on_ok = on_ok
        self._context = context
        self._running: dict[int, asyncio.Task[None]] = {}
        self._ready: list[pb.StreamResult] = []
        self._ready_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ending = False

    async def run(self) -> None:
        """Read batches until the ingress half-closes, then answer what still runs and return.
        Raises what the stream's reads or writes raise (the call is gone: nothing to answer)."""
        writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            await self._read_loop()
            while self._running:
                await self._room.wait()
                self._room.clear()
            self._ending = True
            self._wake.set()
            await writer
        finally:
            for task in list(self._running.values()):
                task.cancel()
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while len(self._running) >= MAX_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()
            batch = await self._context.read()
            if batch is grpc.aio.EOF:
                return
            for rid in batch.cancels:
                task = self._running.pop(rid, None)
                if task is not None:
                    task.cancel()
            for item in batch.invokes:
                self._running[item.id] = loop.create_task(self._one(item.id, item.request))

    async def _one(self, rid: int, req: pb.InvokeRequest) -> None:
        """Run one request and buffer its answer (none when it was cancelled)."""
        try:
            resp = await self._invoke(req)
        except asyncio.CancelledError:
            # Not cancelled by the ingress (that pops the id first): answer as gRPC answers a
            # unary handler that was cancelled, and the ingress re-sends the request.
            self._answer(rid, _error(rid, _CANCELLED_CODE, "cancelled"), 64)
            raise
        except Exception as exc:  # noqa: BLE001  the boundary: every failure is answered as a status (logged by fail)
            err = self._fail(exc)
            self._answer(rid, _error(rid, err.code.value[0], str(err)), 64)
            return
        self._on_ok()
        self._answer(rid, pb.StreamResult(id=rid, response=resp), 64 + len(resp.result.value))

    def _answer(self, rid: int, result: pb.StreamResult, size: int) -> None:
        if self._running.pop(rid, None) is None:
            return  # cancelled by the ingress meanwhile: it no longer waits
        self._ready.append(result)
        self._ready_bytes += size
        self._wake.set()
        if not self._room.is_set():
            self._room.set()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # one more loop iteration: answers ready in it join the batch
            if delay_s := self._linger.delay(len(self._running), loop.time()):
                await asyncio.sleep(delay_s)  # a busy stream: answers ready meanwhile join the batch
            while self._ready:
                batch = self._take()
                await self._context.write(batch)
                self._linger.wrote(loop.time())
            if self._ending:
                return

    def _take(self) -> pb.InvokeResultBatch:
        """Up to one batch's worth of the ready answers, oldest first."""
        if len(self._ready) <= MAX_RESULTS_PER_BATCH and self._ready_bytes <= MAX_BATCH_BYTES:
            results, self._ready, self._ready_bytes = self._ready, [], 0
            return pb.InvokeResultBatch(results=results)
        count, size = 0, 0
        for r in self._ready:
            size += 64 + (len(r.response.result.value) if r.HasField("response") else 0)
            count += 1
            if count >= MAX_RESULTS_PER_BATCH or size >= MAX_BATCH_BYTES:
                break
        results, self._ready = self._ready[:count], self._ready[count:]
        self._ready_bytes = max(0, self._ready_bytes - size)
        return pb.InvokeResultBatch(results=results)
