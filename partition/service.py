"""Partition RPC logic: invoke / attach / get_output / deliver, and what a partition owner runs.

Every durable change is one Lua transition (`scripts.py`). In-memory state is only what can be
rebuilt from Redis: callers waiting for a result (answered by this process when the invocation
completes here), the per-partition timer and outbox loops, and the driver (`driver.py`) that
takes accepted invocations to completion. When a partition is (re)acquired, its invoked
invocations are resumed, its timers re-armed and its outbox drained.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from partition import keys, protocol
from partition.driver import Driver, now_ms, result
from partition.errors import InvocationNotFound, NotLeader
from partition.invoker import Invoker
from partition.metrics import INVOCATIONS
from partition.outbox import PartitionOutbox
from partition.scripts import Accepted, Scripts, Target
from partition.timers import PartitionTimers
from sgproto.partition.v1 import partition_service_pb2 as pb

KIND_NAMES = {
    pb.HANDLER_KIND_SERVICE: "service",
    pb.HANDLER_KIND_EXCLUSIVE: "exclusive",
    pb.HANDLER_KIND_SHARED: "shared",
    pb.HANDLER_KIND_WORKFLOW: "workflow",
}
WORKFLOW_ALREADY_INVOKED = "the workflow method was already invoked"


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[pb.Result]
    partition: int


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


def _hash_fields(req: pb.InvokeRequest, kind: str, key: str | None, input_frame: bytes, now: int) -> list[Any]:
    """The new invocation's status hash, as field/value pairs for `accept.lua`."""
    fields: list[Any] = [
        "svc", req.service, "hdl", req.handler, "kind", kind, "in", input_frame,
        "cret", req.completion_retention_ms, "jret", req.journal_retention_ms, "ct", now, "mt", now,
        "lg", now, "att", 0,
    ]
    if key is not None:
        fields += ("key", key)
    if req.HasField("idempotency_key"):
        fields += ("idem", req.idempotency_key)
    if req.request_nonce:
        fields += ("rq", req.request_nonce)
    return fields


def _parent(req: pb.InvokeRequest) -> str:
    """`<id>|<partition>|<completion id>,` of the invocation waiting for this one's result, or ""."""
    if not req.HasField("parent"):
        return ""
    return f"{req.parent.invocation_id}|{req.parent.partition}|{req.parent.result_completion_id},"


def _driver_fields(req: pb.InvokeRequest, kind: str, key: str | None, input_frame: bytes,
                   now: int) -> dict[bytes, bytes]:
    """The part of a just-accepted invocation's hash that its first attempt reads."""
    base = {b"svc": req.service.encode(), b"hdl": req.handler.encode(), b"kind": kind.encode(),
            b"in": input_frame, b"ct": str(now).encode(), b"lg": str(now).encode(), b"att": b"0"}
    if key is not None:
        base[b"key"] = key.encode()
    return base


class PartitionService:
    """One per worker process; partitions come and go through `on_acquired` / `on_lost`."""

    def __init__(self, redis: Redis, scripts: Scripts, invoker: Invoker, schema: Any, partitions: int,
                 max_concurrent: int, remote_deliver: Any = None) -> None:
        self._redis = redis
        self._scripts = scripts
        self._remote_deliver = remote_deliver  # async (OutboxMessage, partition) -> None
        self._tokens: dict[int, str] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._timers: dict[int, PartitionTimers] = {}
        self._outboxes: dict[int, PartitionOutbox] = {}
        self._loops: dict[int, list[asyncio.Task[Any]]] = {}
        # `schema` is a callable -> SchemaSnapshot
        self._driver = Driver(redis, scripts, invoker, schema, partitions, max_concurrent, self._tokens,
                              self._resolve, self._awaited, self._poke)

    @property
    def tokens(self) -> dict[int, str]:
        """Partition -> fence token of the partitions owned here (the dict is shared with Ownership)."""
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: dict[int, str]) -> None:
        self._tokens = self._driver.tokens = tokens

    # ---- ownership callbacks -------------------------------------------------------------
    def on_acquired(self, partition: int, token: str) -> None:
        timers = PartitionTimers(self._redis, partition, lambda m: self._driver.fire_timer(partition, token, m))
        outbox = PartitionOutbox(self._redis, self._scripts, partition, token, self._deliver_from_outbox)
        self._timers[partition], self._outboxes[partition] = timers, outbox
        loop = asyncio.get_running_loop()
        self._loops[partition] = [loop.create_task(timers.run()), loop.create_task(outbox.run())]
        self._driver.resume_partition(partition, token)

    def on_lost(self, partition: int) -> None:
        for task in self._loops.pop(partition, []):
            task.cancel()
        # The new owner replays these invocations: stop their attempts here at once, so side
        # effects do not run twice concurrently and our slots are free for what we still own.
        self._driver.cancel_partition(partition)
        self._timers.pop(partition, None)
        self._outboxes.pop(partition, None)
        for inv_id, ws in list(self._waiters.items()):
            keep = [w for w in ws if w.partition != partition]
            for w in ws:
                if w.partition == partition and not w.future.done():
                    w.future.set_exception(NotLeader(partition))
            if keep:
                self._waiters[inv_id] = keep
            else:
                del self._waiters[inv_id]

    def _token(self, partition: int) -> str:
        tok = self._tokens.get(partition)
        if tok is None:
            raise NotLeader(partition)
        return tok

    def _poke(self, partition: int, timers: bool, outbox: bool) -> None:
        if timers and partition in self._timers:
            self._timers[partition].poke()
        if outbox and partition in self._outboxes:
            self._outboxes[partition].poke()

    # ---- RPCs ----------------------------------------------------------------------------
    async def _accept(self, req: pb.InvokeRequest, token: str) -> Accepted:
        p, inv_id = req.partition, req.invocation_id
        kind = KIND_NAMES[req.kind]
        key = req.key if req.HasField("key") else None
        now = now_ms()
        input_frame = protocol.input_command(req.body, [(h.key, h.value) for h in req.headers])
        fields = _hash_fields(req, kind, key, input_frame, now)
        exec_ms = req.execution_time_ms if req.HasField("execution_time_ms") else None
        t = Target(p, inv_id, req.service, key)
        acc = await self._scripts.accept(t, token, now, kind, exec_ms, _parent(req), fields)
        if acc.outcome == "DUP":
            INVOCATIONS.labels("duplicate").inc()
            self._poke(p, False, acc.parents_notified > 0)
            if acc.dup_status == "invoked":
                self._driver.resume(p, token, inv_id)
            return acc
        INVOCATIONS.labels("accepted").inc()
        if acc.outcome == "INVOKED":
            self._driver.start(t, token, _driver_fields(req, kind, key, input_frame, now), acc.state or {})
        elif acc.outcome == "SCHEDULED":
            self._poke(p, True, False)
        return acc

    async def invoke(self, req: pb.InvokeRequest) -> pb.InvokeResponse:
        """Accept a call or send; a call waits for the result."""
        p, inv_id = req.partition, req.invocation_id
        token = self._token(p)
        waiter = self._add_waiter(inv_id, p) if req.wait else None
        try:
            acc = await self._accept(req, token)
        except BaseException:
            self._drop_waiter(inv_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=inv_id)
        exec_ms = acc.execution_time_ms if acc.outcome == "DUP" else (
            req.execution_time_ms if acc.outcome == "SCHEDULED" else None)
        if exec_ms is not None:
            resp.execution_time_ms = exec_ms
        if acc.outcome == "DUP" and not req.wait and not (req.request_nonce and acc.request_nonce == req.request_nonce):
            resp.send_status = pb.SEND_STATUS_PREVIOUSLY_ACCEPTED
        if waiter is None:
            return resp
        resent = bool(req.request_nonce) and acc.request_nonce == req.request_nonce
        if acc.outcome == "DUP" and req.kind == pb.HANDLER_KIND_WORKFLOW and not resent:
            self._drop_waiter(inv_id, waiter)
            resp.result.CopyFrom(result(409, WORKFLOW_ALREADY_INVOKED, b"", None))
            return resp
        if acc.outcome == "DUP" and acc.dup_status == "completed":
            self._drop_waiter(inv_id, waiter)
            resp.result.CopyFrom(result(acc.rc, acc.rm, acc.rv, acc.expires_ms))
            return resp
        resp.result.CopyFrom(await self._wait(inv_id, waiter))
        return resp

    async def attach(self, ref: pb.InvocationRef) -> pb.InvokeResponse:
        """Wait for an invocation's result; NOT_FOUND if it does not exist."""
        self._token(ref.partition)
        waiter = self._add_waiter(ref.invocation_id, ref.partition)
        try:
            st, rc, rm, rv, exp = cast("list[bytes | None]", await self._redis.hmget(
                keys.invocation(ref.partition, ref.invocation_id), "st", "rc", "rm", "rv", "exp"))
        except BaseException:
            self._drop_waiter(ref.invocation_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=ref.invocation_id)
        if st is None or st == b"completed":
            self._drop_waiter(ref.invocation_id, waiter)
            if st is None:
                raise InvocationNotFound(ref.invocation_id)
            resp.result.CopyFrom(result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)))
            return resp
        resp.result.CopyFrom(await self._wait(ref.invocation_id, waiter))
        return resp

    async def get_output(self, ref: pb.InvocationRef) -> pb.OutputResponse:
        self._token(ref.partition)
        st, rc, rm, rv, exp = cast("list[bytes | None]", await self._redis.hmget(
            keys.invocation(ref.partition, ref.invocation_id), "st", "rc", "rm", "rv", "exp"))
        if st is None:
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_FOUND)
        if st != b"completed":
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_READY)
        return pb.OutputResponse(status=pb.OUTPUT_STATUS_READY,
                                 result=result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)))

    async def deliver(self, msg: pb.OutboxMessage) -> pb.DeliverResponse:
        """Apply a message from another partition's outbox (or an awakeable completion)."""
        if msg.HasField("invoke"):
            acc = await self._accept(msg.invoke, self._token(msg.invoke.partition))
            status = pb.DELIVER_STATUS_DUPLICATE if acc.outcome == "DUP" else pb.DELIVER_STATUS_APPLIED
            return pb.DeliverResponse(status=status)
        n = msg.notify
        token = self._token(n.partition)
        notified = await self._scripts.notify(n.partition, n.invocation_id, token, now_ms(), n.key, n.frame)
        self._driver.wake(notified, token)
        return pb.DeliverResponse(status={
            "GONE": pb.DELIVER_STATUS_GONE, "DUP": pb.DELIVER_STATUS_DUPLICATE,
        }.get(notified.outcome, pb.DELIVER_STATUS_APPLIED))

    async def _deliver_from_outbox(self, msg: pb.OutboxMessage) -> None:
        p = msg.invoke.partition if msg.HasField("invoke") else msg.notify.partition
        if p in self._tokens:
            await self.deliver(msg)
        elif self._remote_deliver is not None:
            await self._remote_deliver(msg, p)
        else:
            raise NotLeader(p)

    # ---- waiters -------------------------------------------------------------------------
    def _add_waiter(self, inv_id: str, partition: int) -> _Waiter:
        w = _Waiter(asyncio.get_running_loop().create_future(), partition)
        self._waiters.setdefault(inv_id, []).append(w)
        return w

    def _drop_waiter(self, inv_id: str, waiter: _Waiter | None) -> None:
        if waiter is None:
            return
        ws = self._waiters.get(inv_id)
        if ws and waiter in ws:
            ws.remove(waiter)
            if not ws:
                del self._waiters[inv_id]

    async def _wait(self, inv_id: str, waiter: _Waiter) -> pb.Result:
        try:
            return await waiter.future
        finally:
            self._drop_waiter(inv_id, waiter)

    def _resolve(self, inv_id: str, result: pb.Result) -> None:
        """Answer everyone waiting here. Waiters never get `expires_ms`: Restate announces
        `idempotency-expires` only when a stored result is replayed, not to the callers that waited."""
        result.ClearField("expires_ms")
        for w in self._waiters.pop(inv_id, []):
            if not w.future.done():
                w.future.set_result(result)

    def _awaited(self, inv_id: str) -> bool:
        return inv_id in self._waiters

    async def shutdown(self) -> None:
        loops = [t for ts in self._loops.values() for t in ts]
        for t in loops:
            t.cancel()
        await self._driver.shutdown()
        if loops:
            await asyncio.gather(*loops, return_exceptions=True)
