"""Partition RPC logic: accept / attach / output, and driving accepted invocations to completion.

Every durable change is one Lua transition (`scripts.py`). In-memory state is only what can be
rebuilt: waiting callers (answered by this process when the invocation completes here) and
the set of invocations this process is driving. When a partition is (re)acquired, everything
in its active set is resumed from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from partition import keys, protocol
from partition.errors import DeploymentError, Fenced, InvocationNotFound, NotLeader
from partition.invoker import AttemptInput, AttemptResult, Invoker, RetryableError
from partition.metrics import IN_FLIGHT, INVOCATIONS
from partition.retry import policy_for
from partition.scripts import Scripts
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.schema import SchemaSnapshot

log = logging.getLogger(__name__)

KIND_NAMES = {
    pb.HANDLER_KIND_SERVICE: "service",
    pb.HANDLER_KIND_EXCLUSIVE: "exclusive",
    pb.HANDLER_KIND_SHARED: "shared",
    pb.HANDLER_KIND_WORKFLOW: "workflow",
}
WORKFLOW_ALREADY_INVOKED = "the workflow method was already invoked"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[pb.Result]
    partition: int


def _result(rc: int, rm: str, rv: bytes, expires_ms: int | None) -> pb.Result:
    r = pb.Result(value=rv, failure_code=rc, failure_message=rm)
    if expires_ms is not None:
        r.expires_ms = expires_ms
    return r


def _text(fields: dict[bytes, bytes], name: bytes, default: str = "") -> str:
    raw = fields.get(name)
    return default if raw is None else raw.decode()


class PartitionService:
    """One per worker process; partitions come and go through `on_acquired` / `on_lost`."""

    def __init__(
        self, redis: Redis, scripts: Scripts, invoker: Invoker, schema: Any, max_concurrent: int
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._invoker = invoker
        self._schema = schema  # callable -> SchemaSnapshot
        self._slots = asyncio.Semaphore(max_concurrent)
        self.tokens: dict[int, str] = {}  # shared with Ownership
        self._waiters: dict[str, list[_Waiter]] = {}
        self._running: dict[str, str] = {}  # invocation id -> fence token of its driver
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- ownership callbacks -------------------------------------------------------------
    def on_acquired(self, partition: int, token: str) -> None:
        self._spawn(self._resume_partition(partition, token))

    def on_lost(self, partition: int) -> None:
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
        tok = self.tokens.get(partition)
        if tok is None:
            raise NotLeader(partition)
        return tok

    # ---- RPCs ----------------------------------------------------------------------------
    async def invoke(self, req: pb.InvokeRequest) -> pb.InvokeResponse:
        """Accept a call or send; a call waits for the result."""
        p = req.partition
        token = self._token(p)
        inv_id = req.invocation_id
        kind = KIND_NAMES[req.kind]
        key = req.key if req.HasField("key") else None
        now = now_ms()
        input_frame = protocol.input_command(req.body, [(h.key, h.value) for h in req.headers])
        fields: list[Any] = [
            "svc", req.service, "hdl", req.handler, "kind", kind, "in", input_frame,
            "cret", req.completion_retention_ms, "jret", req.journal_retention_ms, "ct", now, "mt", now,
            "att", 0,
        ]
        if key is not None:
            fields += ("key", key)
        if req.HasField("idempotency_key"):
            fields += ("idem", req.idempotency_key)
        exec_ms = req.execution_time_ms if req.HasField("execution_time_ms") else None
        waiter = self._add_waiter(inv_id, p) if req.wait else None
        try:
            acc = await self._scripts.accept(p, token, now, inv_id, kind, req.service, key, exec_ms, fields)
        except BaseException:
            self._drop_waiter(inv_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=inv_id)
        if acc.outcome == "DUP":
            INVOCATIONS.labels("duplicate").inc()
            if acc.execution_time_ms is not None:
                resp.execution_time_ms = acc.execution_time_ms
            if not req.wait:
                resp.send_status = pb.SEND_STATUS_PREVIOUSLY_ACCEPTED
                return resp
            if kind == "workflow":
                self._drop_waiter(inv_id, waiter)
                resp.result.CopyFrom(_result(409, WORKFLOW_ALREADY_INVOKED, b"", None))
                return resp
            if acc.dup_status == "completed":
                self._drop_waiter(inv_id, waiter)
                resp.result.CopyFrom(_result(acc.rc, acc.rm, acc.rv, acc.expires_ms))
                return resp
        else:
            INVOCATIONS.labels("accepted").inc()
            if exec_ms is not None and acc.outcome == "SCHEDULED":
                resp.execution_time_ms = exec_ms
            if acc.outcome == "INVOKED":
                base = {b"svc": req.service.encode(), b"hdl": req.handler.encode(), b"kind": kind.encode(),
                        b"in": input_frame, b"ct": str(now).encode(), b"att": b"0"}
                if key is not None:
                    base[b"key"] = key.encode()
                self._start_driver(p, token, inv_id, base, acc.state or {})
            elif acc.outcome == "SCHEDULED":
                self._spawn(self._resume_one(p, token, inv_id))
        if waiter is None:
            return resp
        resp.result.CopyFrom(await self._wait(inv_id, waiter))
        return resp

    async def attach(self, ref: pb.InvocationRef) -> pb.InvokeResponse:
        """Wait for an invocation's result; NOT_FOUND if it does not exist."""
        self._token(ref.partition)
        waiter = self._add_waiter(ref.invocation_id, ref.partition)
        try:
            st, rc, rm, rv, exp = await self._redis.hmget(
                keys.invocation(ref.partition, ref.invocation_id), "st", "rc", "rm", "rv", "exp"
            )
        except BaseException:
            self._drop_waiter(ref.invocation_id, waiter)
            raise
        resp = pb.InvokeResponse(invocation_id=ref.invocation_id)
        if st is None or st == b"completed":
            self._drop_waiter(ref.invocation_id, waiter)
            if st is None:
                raise InvocationNotFound(ref.invocation_id)
            resp.result.CopyFrom(_result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)))
            return resp
        resp.result.CopyFrom(await self._wait(ref.invocation_id, waiter))
        return resp

    async def get_output(self, ref: pb.InvocationRef) -> pb.OutputResponse:
        self._token(ref.partition)
        st, rc, rm, rv, exp = await self._redis.hmget(
            keys.invocation(ref.partition, ref.invocation_id), "st", "rc", "rm", "rv", "exp"
        )
        if st is None:
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_FOUND)
        if st != b"completed":
            return pb.OutputResponse(status=pb.OUTPUT_STATUS_NOT_READY)
        return pb.OutputResponse(
            status=pb.OUTPUT_STATUS_READY,
            result=_result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)),
        )

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

    # ---- driving invocations -------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_driver(
        self, p: int, token: str, inv_id: str, fields: dict[bytes, bytes], state: dict[bytes, bytes]
    ) -> None:
        if self._running.get(inv_id) == token:
            return
        self._running[inv_id] = token
        self._spawn(self._drive(p, token, inv_id, fields, state))

    async def _resume_partition(self, p: int, token: str) -> None:
        try:
            ids = await self._redis.smembers(keys.active(p))
        except Exception:
            log.exception("cannot list active invocations", extra={"partition": p})
            return
        if ids:
            log.info("resuming invocations", extra={"partition": p, "count": len(ids)})
        for raw in ids:
            self._spawn(self._resume_one(p, token, raw.decode()))

    async def _resume_one(self, p: int, token: str, inv_id: str) -> None:
        """Start an active invocation when it is due (scheduled / backing-off / interrupted)."""
        if self._running.get(inv_id) == token:
            return
        fields = await self._redis.hgetall(keys.invocation(p, inv_id))
        if not fields:
            await self._redis.srem(keys.active(p), inv_id)
            return
        st = fields.get(b"st")
        due = _int(fields.get(b"exec")) if st == b"scheduled" else _int(fields.get(b"rt"))
        if st in (b"scheduled", b"backing-off") and due:
            await asyncio.sleep(max(0, due - now_ms()) / 1000)
        if self.tokens.get(p) != token:
            return
        key = fields[b"key"].decode() if b"key" in fields else None
        try:
            started = await self._scripts.attempt_start(p, token, now_ms(), inv_id, _text(fields, b"svc"), key)
        except Fenced:
            return
        if started.outcome == "INVOKED" and started.fields is not None:
            self._start_driver(p, token, inv_id, started.fields, started.state or {})

    async def _drive(
        self, p: int, token: str, inv_id: str, fields: dict[bytes, bytes], state: dict[bytes, bytes]
    ) -> None:
        try:
            while True:
                outcome = await self._attempt(inv_id, fields, state)
                if isinstance(outcome, AttemptResult):
                    await self._complete(p, token, inv_id, fields, outcome)
                    return
                nxt = await self._back_off(p, token, inv_id, fields, outcome)
                if nxt is None:
                    return
                fields, state = nxt
        except Fenced:
            INVOCATIONS.labels("fenced").inc()
            log.info("partition lost while driving invocation", extra={"invocation_id": inv_id, "partition": p})
        except Exception:
            log.exception("invocation driver failed", extra={"invocation_id": inv_id, "partition": p})
        finally:
            if self._running.get(inv_id) == token:
                del self._running[inv_id]

    async def _attempt(
        self, inv_id: str, fields: dict[bytes, bytes], state: dict[bytes, bytes]
    ) -> AttemptResult | DeploymentError:
        snapshot: SchemaSnapshot = self._schema()
        svc = _text(fields, b"svc")
        meta = snapshot.services.get(svc)
        deployment = snapshot.deployments.get(meta.deployment_id) if meta else None
        if meta is None or deployment is None:
            return DeploymentError(f"service {svc!r} is not registered")
        handler = meta.handlers.get(_text(fields, b"hdl"))
        kind = _text(fields, b"kind")
        lazy = bool(handler.enable_lazy_state if handler and handler.enable_lazy_state is not None
                    else meta.enable_lazy_state)
        inp = AttemptInput(
            invocation_id=inv_id, service=svc, handler=_text(fields, b"hdl"),
            key=fields[b"key"].decode() if b"key" in fields else None,
            keyed=kind != "service", input_frame=fields[b"in"],
            state={} if lazy else state, partial_state=lazy or kind == "service",
            retry_count=int(fields.get(b"att", b"0")),
            duration_since_last_entry_ms=max(0, now_ms() - int(fields.get(b"ct", b"0") or 0)),
        )
        async with self._slots:
            IN_FLIGHT.inc()
            try:
                return await self._invoker.attempt(deployment, inp)
            except DeploymentError as e:
                return e
            finally:
                IN_FLIGHT.dec()

    async def _complete(
        self, p: int, token: str, inv_id: str, fields: dict[bytes, bytes], res: AttemptResult
    ) -> None:
        key = fields[b"key"].decode() if b"key" in fields else None
        ops = res.state_ops if _text(fields, b"kind") in ("exclusive", "workflow") else []
        done = await self._scripts.complete(
            p, token, now_ms(), inv_id, _text(fields, b"svc"), key, res.rc, res.rm, res.rv, ops
        )
        if not done.ok:
            log.info("completion ignored: invocation is %s", done.status, extra={"invocation_id": inv_id})
            return
        INVOCATIONS.labels("succeeded" if res.rc == 0 else "failed").inc()
        self._resolve(inv_id, _result(res.rc, res.rm, res.rv, done.expires_ms))
        if done.next_id and done.next_fields is not None:
            self._start_driver(p, token, done.next_id, done.next_fields, done.next_state or {})

    async def _back_off(
        self, p: int, token: str, inv_id: str, fields: dict[bytes, bytes], err: DeploymentError
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]] | None:
        snapshot: SchemaSnapshot = self._schema()
        meta = snapshot.services.get(_text(fields, b"svc"))
        policy = policy_for(meta, meta.handlers.get(_text(fields, b"hdl")) if meta else None)
        failed = int(fields.get(b"att", b"0")) + 1
        exhausted = policy.exhausted(failed)
        if exhausted and policy.on_max_attempts == "KILL":
            await self._complete(p, token, inv_id, fields, AttemptResult(500, str(err), b""))
            return None
        delay = err.next_retry_delay_ms if isinstance(err, RetryableError) and err.next_retry_delay_ms else None
        delay = policy.delay_ms(failed) if delay is None else delay
        INVOCATIONS.labels("paused" if exhausted else "retried").inc()
        log.warning(
            "attempt %d failed, %s: %s", failed, "pausing" if exhausted else f"retrying in {delay} ms", err,
            extra={"invocation_id": inv_id, "partition": p},
        )
        n = await self._scripts.attempt_failed(p, token, now_ms(), inv_id, exhausted, now_ms() + delay, str(err))
        if n is None or exhausted:
            return None
        await asyncio.sleep(delay / 1000)
        key = fields[b"key"].decode() if b"key" in fields else None
        started = await self._scripts.attempt_start(p, token, now_ms(), inv_id, _text(fields, b"svc"), key)
        if started.outcome != "INVOKED" or started.fields is None:
            return None
        return started.fields, started.state or {}

    async def shutdown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None
