"""Partition RPC logic and the driver that takes accepted invocations to completion.

Every durable change is one Lua transition (`scripts.py`). In-memory state is only what can be
rebuilt from Redis: callers waiting for a result (answered by this process when the invocation
completes here), the drivers this process runs, and the per-partition timer and outbox loops.
When a partition is (re)acquired, its invoked invocations are resumed, its timers re-armed
and its outbox drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from partition import keys, protocol
from partition.effects import AttemptPlan, PlanContext, PlanError, count_commands, plan_attempt
from partition.errors import DeploymentError, Fenced, InvocationNotFound, NotLeader
from partition.invoker import AttemptInput, Invoker
from partition.metrics import IN_FLIGHT, INVOCATIONS
from partition.outbox import PartitionOutbox
from partition.retry import policy_for
from partition.scripts import Accepted, Notified, Scripts, Target
from partition.timers import PartitionTimers
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
DEFAULT_INACTIVITY_TIMEOUT_MS = 60_000
DEFAULT_ABORT_TIMEOUT_MS = 600_000
MAX_IDLE_RESUMES = 3


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[pb.Result]
    partition: int


@dataclass(slots=True)
class _Run:
    """One invocation being driven here: what the next attempt replays."""

    target: Target
    token: str
    fields: dict[bytes, bytes]
    state: dict[bytes, bytes]
    journal: list[bytes]
    idle_resumes: int = 0  # consecutive RESUMEs whose attempt stored nothing new
    failures: int = 0

    @property
    def kind(self) -> str:
        return self.fields.get(b"kind", b"service").decode()


def _result(rc: int, rm: str, rv: bytes, expires_ms: int | None) -> pb.Result:
    r = pb.Result(value=rv, failure_code=rc, failure_message=rm)
    if expires_ms is not None:
        r.expires_ms = expires_ms
    return r


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    raw = fields.get(name)
    return "" if raw is None else raw.decode()


def _target(partition: int, inv_id: str, fields: dict[bytes, bytes]) -> Target:
    key = fields[b"key"].decode() if b"key" in fields else None
    return Target(partition, inv_id, _text(fields, b"svc"), key)


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


class PartitionService:
    """One per worker process; partitions come and go through `on_acquired` / `on_lost`."""

    def __init__(self, redis: Redis, scripts: Scripts, invoker: Invoker, schema: Any, partitions: int,
                 max_concurrent: int, remote_deliver: Any = None) -> None:
        self._redis = redis
        self._scripts = scripts
        self._invoker = invoker
        self._schema = schema  # callable -> SchemaSnapshot
        self._partitions = partitions
        self._slots = asyncio.Semaphore(max_concurrent)
        self._remote_deliver = remote_deliver  # async (OutboxMessage, partition) -> None
        self.tokens: dict[int, str] = {}  # shared with Ownership
        self._waiters: dict[str, list[_Waiter]] = {}
        self._running: dict[str, str] = {}  # invocation id -> fence token of its driver
        self._rewake: set[str] = set()  # woken while their driver was finishing: resume after it
        self._drivers: dict[int, dict[str, asyncio.Task[Any]]] = {}  # partition -> id -> driver
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[int, PartitionTimers] = {}
        self._outboxes: dict[int, PartitionOutbox] = {}
        self._loops: dict[int, list[asyncio.Task[Any]]] = {}

    # ---- ownership callbacks -------------------------------------------------------------
    def on_acquired(self, partition: int, token: str) -> None:
        timers = PartitionTimers(self._redis, partition, lambda m: self._fire_timer(partition, token, m))
        outbox = PartitionOutbox(self._redis, self._scripts, partition, token, self._deliver_from_outbox)
        self._timers[partition], self._outboxes[partition] = timers, outbox
        loop = asyncio.get_running_loop()
        self._loops[partition] = [loop.create_task(timers.run()), loop.create_task(outbox.run())]
        self._spawn(self._resume_partition(partition, token))

    def on_lost(self, partition: int) -> None:
        for task in self._loops.pop(partition, []):
            task.cancel()
        # The new owner replays these invocations: stop their attempts here at once, so side
        # effects do not run twice concurrently and our slots are free for what we still own.
        for task in self._drivers.pop(partition, {}).values():
            task.cancel()
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
        tok = self.tokens.get(partition)
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
        parent = ""
        if req.HasField("parent"):
            parent = f"{req.parent.invocation_id}|{req.parent.partition}|{req.parent.result_completion_id},"
        exec_ms = req.execution_time_ms if req.HasField("execution_time_ms") else None
        t = Target(p, inv_id, req.service, key)
        acc = await self._scripts.accept(t, token, now, kind, exec_ms, parent, fields)
        if acc.outcome == "DUP":
            INVOCATIONS.labels("duplicate").inc()
            self._poke(p, False, acc.parents_notified > 0)
            if acc.dup_status == "invoked" and self._running.get(inv_id) != token:
                self._spawn(self._resume_one(p, token, inv_id))
            return acc
        INVOCATIONS.labels("accepted").inc()
        if acc.outcome == "INVOKED":
            base = {b"svc": req.service.encode(), b"hdl": req.handler.encode(), b"kind": kind.encode(),
                    b"in": input_frame, b"ct": str(now).encode(), b"lg": str(now).encode(), b"att": b"0"}
            if key is not None:
                base[b"key"] = key.encode()
            self._start_driver(_Run(t, token, base, acc.state or {}, []))
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
            resp.result.CopyFrom(_result(409, WORKFLOW_ALREADY_INVOKED, b"", None))
            return resp
        if acc.outcome == "DUP" and acc.dup_status == "completed":
            self._drop_waiter(inv_id, waiter)
            resp.result.CopyFrom(_result(acc.rc, acc.rm, acc.rv, acc.expires_ms))
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
            resp.result.CopyFrom(_result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)))
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
                                 result=_result(int(rc or 0), (rm or b"").decode(), rv or b"", _int(exp)))

    async def deliver(self, msg: pb.OutboxMessage) -> pb.DeliverResponse:
        """Apply a message from another partition's outbox (or an awakeable completion)."""
        if msg.HasField("invoke"):
            acc = await self._accept(msg.invoke, self._token(msg.invoke.partition))
            status = pb.DELIVER_STATUS_DUPLICATE if acc.outcome == "DUP" else pb.DELIVER_STATUS_APPLIED
            return pb.DeliverResponse(status=status)
        n = msg.notify
        token = self._token(n.partition)
        notified = await self._scripts.notify(n.partition, n.invocation_id, token, now_ms(), n.key, n.frame)
        self._wake(notified, token)
        return pb.DeliverResponse(status={
            "GONE": pb.DELIVER_STATUS_GONE, "DUP": pb.DELIVER_STATUS_DUPLICATE,
        }.get(notified.outcome, pb.DELIVER_STATUS_APPLIED))

    def _wake(self, notified: Notified, token: str) -> None:
        """Start the invocation a notification woke (its keys came with the notify reply)."""
        if notified.outcome == "WOKEN" and notified.target is not None:
            t = notified.target
            self._spawn(self._resume_one(t.partition, token, t.invocation_id, target=t))

    async def _deliver_from_outbox(self, msg: pb.OutboxMessage) -> None:
        p = msg.invoke.partition if msg.HasField("invoke") else msg.notify.partition
        if p in self.tokens:
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

    # ---- resuming ------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_driver(self, run: _Run) -> None:
        inv_id, p = run.target.invocation_id, run.target.partition
        if self._running.get(inv_id) == run.token:
            return
        self._running[inv_id] = run.token
        task = asyncio.get_running_loop().create_task(self._drive(run))
        drivers = self._drivers.setdefault(p, {})
        drivers[inv_id] = task

        def done(t: asyncio.Task[Any]) -> None:
            if drivers.get(inv_id) is t:
                del drivers[inv_id]

        task.add_done_callback(done)

    def _resume_later(self, p: int, token: str, inv_id: str, delay_s: float) -> None:
        """Try `_resume_one` again after a failure, as long as the partition is still ours."""
        async def later() -> None:
            await asyncio.sleep(delay_s)
            await self._resume_one(p, token, inv_id)

        if self.tokens.get(p) == token:
            self._spawn(later())

    async def _resume_partition(self, p: int, token: str) -> None:
        delay_s = 0.2
        while True:
            try:
                ids = cast("set[bytes]", await self._redis.smembers(keys.active(p)))
                break
            except Exception:
                log.exception("cannot list active invocations", extra={"partition": p})
                if self.tokens.get(p) != token:
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        if ids:
            log.info("resuming invocations", extra={"partition": p, "count": len(ids)})
        for raw in ids:
            self._spawn(self._resume_one(p, token, raw.decode()))

    async def _resume_one(self, p: int, token: str, inv_id: str, timer_member: str = "",
                          target: Target | None = None) -> None:
        """(Re)start an invocation from its stored hash, state and journal."""
        if self.tokens.get(p) != token:
            return
        if self._running.get(inv_id) == token:
            # Its driver is finishing an attempt that suspended: it resumes once that is done.
            self._rewake.add(inv_id)
            return
        try:
            await self._restart(p, token, inv_id, timer_member, target)
        except Fenced:
            return
        except Exception:
            log.exception("resuming invocation failed, retrying", extra={"invocation_id": inv_id, "partition": p})
            self._resume_later(p, token, inv_id, 1.0)

    async def _restart(self, p: int, token: str, inv_id: str, timer_member: str, t: Target | None) -> None:
        if t is None:
            t = await self._target_of(p, inv_id, timer_member)
            if t is None:
                return
        started = await self._scripts.attempt_start(t, token, now_ms(), timer_member)
        if started.outcome == "INVOKED" and started.fields is not None:
            self._start_driver(_Run(t, token, started.fields, started.state or {}, started.journal or []))

    async def _target_of(self, p: int, inv_id: str, timer_member: str) -> Target | None:
        """The stored target of an invocation; cleans up after one that no longer exists."""
        svc, key = cast("list[bytes | None]", await self._redis.hmget(keys.invocation(p, inv_id), "svc", "key"))
        if svc is None:
            if timer_member:
                await self._redis.zrem(keys.timers(p), timer_member)
            await self._redis.srem(keys.active(p), inv_id)
            return None
        return Target(p, inv_id, svc.decode(), key.decode() if key is not None else None)

    async def _fire_timer(self, p: int, token: str, member: str) -> None:
        kind, _, rest = member.partition("|")
        if kind in ("s", "r"):
            await self._resume_one(p, token, rest, member)
            return
        inv_id, _, cid = rest.partition("|")
        frame = protocol.notification(protocol.MessageType.SLEEP_COMPLETION, completion_id=int(cid), void=True)
        self._wake(await self._scripts.notify(p, inv_id, token, now_ms(), f"c{cid}", frame, member), token)

    # ---- driving -------------------------------------------------------------------------
    async def _drive(self, run: _Run) -> None:
        inv_id, p = run.target.invocation_id, run.target.partition
        try:
            while await self._step(run):
                pass
        except Fenced:
            INVOCATIONS.labels("fenced").inc()
            log.info("partition lost while driving invocation", extra={"invocation_id": inv_id, "partition": p})
        except asyncio.CancelledError:
            log.info("driver stopped: partition released", extra={"invocation_id": inv_id, "partition": p})
        except Exception:
            log.exception("invocation driver failed, resuming", extra={"invocation_id": inv_id, "partition": p})
            run.failures += 1
            self._rewake.add(inv_id)
        finally:
            if self._running.get(inv_id) == run.token:
                del self._running[inv_id]
            if inv_id in self._rewake:
                self._rewake.discard(inv_id)
                self._resume_later(p, run.token, inv_id, 0.0 if run.failures == 0 else 1.0)

    async def _step(self, run: _Run) -> bool:
        """One attempt and its transition; True when the next attempt should start at once."""
        snapshot: SchemaSnapshot = self._schema()
        plan, failure = await self._attempt(run, snapshot)
        att = int(run.fields.get(b"att", b"0"))
        if plan is None or plan.terminal == "ERROR":
            return await self._fail(run, snapshot, plan, failure, att)
        new_att = 0 if plan.grew else att
        replayed = len(run.journal)
        t = run.target
        if plan.terminal == "END":
            assert plan.result is not None
            rc, rm, rv = plan.result
            terminal: list[Any] = ["END", rc, rm, rv]
        else:
            terminal = ["SUSPEND", plan.awaiting]
        applied = await self._scripts.apply(t, run.token, now_ms(), replayed, terminal, new_att, plan.ops)
        self._after_apply(t.partition, run.token, plan, applied)
        if applied.outcome == "OK":
            INVOCATIONS.labels("succeeded" if plan.result and plan.result[0] == 0 else "failed").inc()
            rc, rm, rv = plan.result or (0, "", b"")
            self._resolve(t.invocation_id, _result(rc, rm, rv, applied.expires_ms))
            if applied.next_id and applied.next_fields is not None:
                nt = _target(t.partition, applied.next_id, applied.next_fields)
                self._start_driver(_Run(nt, run.token, applied.next_fields, applied.next_state or {}, []))
            return False
        if applied.outcome == "RESUME":
            run.journal = run.journal[:replayed] + applied.new_entries
            run.fields[b"att"] = str(new_att).encode()
            if plan.grew:
                run.fields[b"lg"] = str(now_ms()).encode()
                run.idle_resumes = 0
            else:
                run.idle_resumes += 1
            if run.idle_resumes >= MAX_IDLE_RESUMES:
                # The SDK keeps suspending on something it already has: treat it as a failure
                # (back-off) rather than re-invoking it hot.
                run.idle_resumes = 0
                return await self._fail(run, snapshot, None, "the SDK suspends on a notification it already has",
                                        new_att)
            return True
        if applied.outcome == "BAD_STATE":
            log.info("attempt result ignored: invocation is %s", applied.status,
                     extra={"invocation_id": t.invocation_id})
            await self._answer_from_storage(t)
        return False

    async def _answer_from_storage(self, t: Target) -> None:
        """Callers waiting here for an invocation that was completed elsewhere get the stored result."""
        if t.invocation_id not in self._waiters:
            return
        st, rc, rm, rv = cast("list[bytes | None]", await self._redis.hmget(
            keys.invocation(t.partition, t.invocation_id), "st", "rc", "rm", "rv"))
        if st == b"completed":
            self._resolve(t.invocation_id, _result(int(rc or 0), (rm or b"").decode(), rv or b"", None))

    def _after_apply(self, p: int, token: str, plan: AttemptPlan, applied: Any) -> None:
        self._poke(p, plan.timers > 0 or applied.outcome == "BACKOFF",
                   plan.outbox > 0 or applied.parents_notified > 0)
        for woken in applied.woken:
            self._spawn(self._resume_one(p, token, woken))

    async def _attempt(self, run: _Run, snapshot: SchemaSnapshot) -> tuple[AttemptPlan | None, str]:
        """Run one attempt and plan its transition; (None, reason) when it failed before any plan."""
        t = run.target
        meta = snapshot.services.get(t.service)
        deployment = snapshot.deployments.get(meta.deployment_id) if meta else None
        if meta is None or deployment is None:
            return None, f"service {t.service!r} is not registered"
        handler = meta.handlers.get(_text(run.fields, b"hdl"))

        def setting(name: str, default: Any) -> Any:
            v = getattr(handler, name, None) if handler is not None else None
            return v if v is not None else (getattr(meta, name) if getattr(meta, name) is not None else default)

        lazy = bool(setting("enable_lazy_state", False))
        keyed = run.kind != "service"
        inp = AttemptInput(
            invocation_id=t.invocation_id, service=t.service, handler=_text(run.fields, b"hdl"), key=t.key,
            keyed=keyed, input_frame=run.fields[b"in"], journal=run.journal,
            state={} if lazy else run.state, partial_state=lazy or not keyed,
            retry_count=int(run.fields.get(b"att", b"0")),
            duration_since_last_entry_ms=max(0, now_ms() - int(run.fields.get(b"lg", b"0") or 0)),
            # Request-response: the request body is closed at once, so the inactivity timeout
            # (which would ask the SDK to suspend) runs out first, then the abort timeout.
            attempt_timeout_s=(setting("inactivity_timeout_ms", DEFAULT_INACTIVITY_TIMEOUT_MS)
                               + setting("abort_timeout_ms", DEFAULT_ABORT_TIMEOUT_MS)) / 1000,
        )
        async with self._slots:
            IN_FLIGHT.inc()
            try:
                frames = await self._invoker.attempt(deployment, inp)
            except DeploymentError as e:
                return None, str(e)
            finally:
                IN_FLIGHT.dec()
        ctx = PlanContext(
            invocation_id=t.invocation_id, partition=t.partition, partitions=self._partitions, kind=run.kind,
            service=t.service, key=t.key, state=dict(run.state),
            commands_before=1 + count_commands(run.journal), now_ms=now_ms(), schema=snapshot,
        )
        try:
            plan = plan_attempt(frames, ctx)
        except PlanError as e:
            return None, f"protocol violation: {e}"
        if plan.terminal != "ERROR":
            run.state = ctx.state
        return plan, ""

    async def _fail(self, run: _Run, snapshot: SchemaSnapshot, plan: AttemptPlan | None, reason: str,
                    att: int) -> bool:
        """Record a failed attempt: back off, pause, or complete with the failure per the policy."""
        t = run.target
        meta = snapshot.services.get(t.service)
        policy = policy_for(meta, meta.handlers.get(_text(run.fields, b"hdl")) if meta else None)
        grew = plan is not None and plan.grew
        failed = (0 if grew else att) + 1
        ops = plan.ops if plan is not None else []
        if plan is not None:
            reason = f"[{plan.error_code}] {plan.error_message}"
        behavior = plan.error_behavior if plan is not None else 0
        exhausted = policy.exhausted(failed) or behavior == 1
        if behavior == 2 or (exhausted and behavior != 1 and policy.on_max_attempts == "KILL"):
            code = plan.error_code if plan is not None and behavior == 2 else 500
            final = AttemptPlan(ops=ops, terminal="END", result=(code, reason, b""))
            applied = await self._scripts.apply(t, run.token, now_ms(), len(run.journal),
                                                ["END", code, reason, b""], failed, ops)
            self._after_apply(t.partition, run.token, final, applied)
            if applied.outcome == "OK":
                self._resolve(t.invocation_id, _result(code, reason, b"", None))
            return False
        delay = plan.next_retry_delay_ms if plan is not None and plan.next_retry_delay_ms is not None else None
        delay = policy.delay_ms(failed) if delay is None else delay
        INVOCATIONS.labels("paused" if exhausted else "retried").inc()
        log.warning("attempt failed (%d since the journal last grew), %s: %s", failed,
                    "pausing" if exhausted else f"retrying in {delay} ms", reason,
                    extra={"invocation_id": t.invocation_id, "partition": t.partition})
        status = "paused" if exhausted else "backing-off"
        applied = await self._scripts.apply(t, run.token, now_ms(), len(run.journal),
                                            ["ERROR", status, now_ms() + delay, reason[:2000]], failed, ops)
        self._after_apply(t.partition, run.token, plan or AttemptPlan(), applied)
        return False

    async def shutdown(self) -> None:
        for tasks in self._loops.values():
            for t in tasks:
                t.cancel()
        for t in list(self._tasks):
            t.cancel()
        pending = list(self._tasks) + [t for ts in self._loops.values() for t in ts]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
