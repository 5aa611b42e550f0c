"""The invocation driver: takes accepted invocations to completion, one attempt at a time.

Each attempt replays the stored journal to the deployment (`invoker.py`), its frames are planned
into one transition (`effects.py`) and applied by `apply.lua`; a failed attempt backs off,
pauses or completes with the failure per the retry policy. Only what can be rebuilt from Redis
is kept in memory: the drivers running here (per partition, so losing a partition stops its
attempts at once) and the fence token each runs under. A new owner resumes a partition's
invoked invocations from its `active` set; timers and notifications wake suspended ones.

The service (`service.py`) owns one `Driver` and hands it what it needs: the `tokens` of the
partitions it owns, `resolve` to answer callers waiting for a result, `awaited` to ask whether
anyone waits, and `poke` to nudge a partition's timer and outbox loops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from partition import keys, protocol
from partition.effects import AttemptPlan, PlanContext, PlanError, count_commands, plan_attempt
from partition.errors import DeploymentError, Fenced
from partition.invoker import AttemptInput, Invoker
from partition.metrics import IN_FLIGHT, INVOCATIONS
from partition.protocol import Frame
from partition.retry import policy_for
from partition.scripts import Applied, Notified, Scripts, Target
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.schema import (
    DEFAULT_ABORT_TIMEOUT_MS,
    DEFAULT_INACTIVITY_TIMEOUT_MS,
    SchemaSnapshot,
    ServiceMeta,
)

log = logging.getLogger(__name__)

MAX_IDLE_RESUMES = 3


def now_ms() -> int:
    return int(time.time() * 1000)


def result(rc: int, rm: str, rv: bytes, expires_ms: int | None) -> pb.Result:
    """An invocation's result as the RPCs return it (`expires_ms` only when known)."""
    r = pb.Result(value=rv, failure_code=rc, failure_message=rm)
    if expires_ms is not None:
        r.expires_ms = expires_ms
    return r


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


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    raw = fields.get(name)
    return "" if raw is None else raw.decode()


def _target(partition: int, inv_id: str, fields: dict[bytes, bytes]) -> Target:
    key = fields[b"key"].decode() if b"key" in fields else None
    return Target(partition, inv_id, _text(fields, b"svc"), key)


def _terminal(plan: AttemptPlan) -> list[Any]:
    """The `apply.lua` terminal of an attempt that ended or suspended."""
    if plan.terminal == "END":
        assert plan.result is not None
        rc, rm, rv = plan.result
        return ["END", rc, rm, rv]
    return ["SUSPEND", plan.awaiting]


def _attempt_input(run: _Run, meta: ServiceMeta) -> AttemptInput:
    """What the deployment gets for the next attempt: the stored journal and (eager) state."""
    t = run.target
    handler = meta.handlers.get(_text(run.fields, b"hdl"))

    def setting(name: str, default: Any) -> Any:
        """The handler's value, else the service's, else `default`."""
        v = getattr(handler, name, None) if handler is not None else None
        return v if v is not None else (getattr(meta, name) if getattr(meta, name) is not None else default)

    lazy = bool(setting("enable_lazy_state", False))
    keyed = run.kind != "service"
    return AttemptInput(
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


class Driver:
    """Runs the attempts of the invocations this process drives, per owned partition."""

    def __init__(self, redis: Redis, scripts: Scripts, invoker: Invoker, schema: Callable[[], SchemaSnapshot],
                 partitions: int, max_concurrent: int, tokens: dict[int, str],
                 resolve: Callable[[str, pb.Result], None], awaited: Callable[[str], bool],
                 poke: Callable[[int, bool, bool], None]) -> None:
        self._redis = redis
        self._scripts = scripts
        self._invoker = invoker
        self._schema = schema
        self._partitions = partitions
        self._slots = asyncio.Semaphore(max_concurrent)
        self.tokens = tokens  # partition -> fence token of the partitions this process owns
        self._resolve = resolve  # answer the callers waiting here for an invocation's result
        self._awaited = awaited  # does anyone wait here for this invocation's result?
        self._poke = poke  # (partition, timers, outbox): new work for the partition's loops
        self._running: dict[str, str] = {}  # invocation id -> fence token of its driver
        self._rewake: set[str] = set()  # woken while their driver was finishing: resume after it
        self._drivers: dict[int, dict[str, asyncio.Task[Any]]] = {}  # partition -> id -> driver
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- the service's interface ---------------------------------------------------------
    def start(self, t: Target, token: str, fields: dict[bytes, bytes], state: dict[bytes, bytes]) -> None:
        """Drive a just-accepted invocation (empty journal), unless it is driven here already."""
        self._start(_Run(t, token, fields, state, []))

    def resume(self, p: int, token: str, inv_id: str) -> None:
        """Restart an invoked invocation from storage, unless it is driven here under `token`."""
        if self._running.get(inv_id) != token:
            self._spawn(self._resume_one(p, token, inv_id))

    def resume_partition(self, p: int, token: str) -> None:
        """Restart every invoked invocation of a partition just acquired under `token`."""
        self._spawn(self._resume_partition(p, token))

    def wake(self, notified: Notified, token: str) -> None:
        """Start the invocation a notification woke (its keys came with the notify reply)."""
        if notified.outcome == "WOKEN" and notified.target is not None:
            t = notified.target
            self._spawn(self._resume_one(t.partition, token, t.invocation_id, target=t))

    async def fire_timer(self, p: int, token: str, member: str) -> None:
        """A due timer: a sleep completion wakes its invocation, a retry or delayed send starts it."""
        kind, _, rest = member.partition("|")
        if kind in ("s", "r"):
            await self._resume_one(p, token, rest, member)
            return
        inv_id, _, cid = rest.partition("|")
        frame = protocol.notification(protocol.MessageType.SLEEP_COMPLETION, completion_id=int(cid), void=True)
        self.wake(await self._scripts.notify(p, inv_id, token, now_ms(), f"c{cid}", frame, member), token)

    def cancel_partition(self, p: int) -> None:
        """Stop the attempts of a lost partition at once (the new owner replays them)."""
        for task in self._drivers.pop(p, {}).values():
            task.cancel()

    async def shutdown(self) -> None:
        """Cancel the background resumes and wait for them (running drivers are left alone)."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- task tracking -------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, run: _Run) -> None:
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

    # ---- resuming ------------------------------------------------------------------------
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
            self._start(_Run(t, token, started.fields, started.state or {}, started.journal or []))

    async def _target_of(self, p: int, inv_id: str, timer_member: str) -> Target | None:
        """The stored target of an invocation; cleans up after one that no longer exists."""
        svc, key = cast("list[bytes | None]", await self._redis.hmget(keys.invocation(p, inv_id), "svc", "key"))
        if svc is None:
            if timer_member:
                await self._redis.zrem(keys.timers(p), timer_member)
            await self._redis.srem(keys.active(p), inv_id)
            return None
        return Target(p, inv_id, svc.decode(), key.decode() if key is not None else None)

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
        terminal = _terminal(plan)
        applied = await self._scripts.apply(t, run.token, now_ms(), replayed, terminal, new_att, plan.ops)
        self._after_apply(t.partition, run.token, plan, applied)
        if applied.outcome == "OK":
            self._completed(run, plan, applied)
            return False
        if applied.outcome == "RESUME":
            return await self._resumed(run, snapshot, plan, applied, replayed, new_att)
        if applied.outcome == "BAD_STATE":
            log.info("attempt result ignored: invocation is %s", applied.status,
                     extra={"invocation_id": t.invocation_id})
            await self._answer_from_storage(t)
        return False

    def _completed(self, run: _Run, plan: AttemptPlan, applied: Applied) -> None:
        """The attempt completed the invocation: answer its waiters, drive the inbox's next one."""
        t = run.target
        INVOCATIONS.labels("succeeded" if plan.result and plan.result[0] == 0 else "failed").inc()
        rc, rm, rv = plan.result or (0, "", b"")
        self._resolve(t.invocation_id, result(rc, rm, rv, applied.expires_ms))
        if applied.next_id and applied.next_fields is not None:
            nt = _target(t.partition, applied.next_id, applied.next_fields)
            self._start(_Run(nt, run.token, applied.next_fields, applied.next_state or {}, []))

    async def _resumed(self, run: _Run, snapshot: SchemaSnapshot, plan: AttemptPlan, applied: Applied,
                       replayed: int, new_att: int) -> bool:
        """The attempt suspended on what is already there: replay at once, unless it keeps doing so."""
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

    async def _answer_from_storage(self, t: Target) -> None:
        """Callers waiting here for an invocation that was completed elsewhere get the stored result."""
        if not self._awaited(t.invocation_id):
            return
        st, rc, rm, rv = cast("list[bytes | None]", await self._redis.hmget(
            keys.invocation(t.partition, t.invocation_id), "st", "rc", "rm", "rv"))
        if st == b"completed":
            self._resolve(t.invocation_id, result(int(rc or 0), (rm or b"").decode(), rv or b"", None))

    def _after_apply(self, p: int, token: str, plan: AttemptPlan, applied: Applied) -> None:
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
        inp = _attempt_input(run, meta)
        async with self._slots:
            IN_FLIGHT.inc()
            try:
                frames = await self._invoker.attempt(deployment, inp)
            except DeploymentError as e:
                return None, str(e)
            finally:
                IN_FLIGHT.dec()
        return self._plan(run, snapshot, frames)

    def _plan(self, run: _Run, snapshot: SchemaSnapshot, frames: list[Frame]) -> tuple[AttemptPlan | None, str]:
        """Plan an attempt's frames into one transition; keeps the state it wrote unless it failed."""
        t = run.target
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
                self._resolve(t.invocation_id, result(code, reason, b"", None))
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
