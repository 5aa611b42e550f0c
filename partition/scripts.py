"""Loads `lua/*.lua` once and exposes one typed async wrapper per state transition.

No other module calls EVAL/EVALSHA. Each wrapper turns the script's reply code into a typed
result or a `Fenced` error. Scripts are run through redis-py's Script objects (EVALSHA with a
NOSCRIPT fallback).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.metrics import SCRIPT_DURATION

_LUA_DIR = Path(__file__).with_name("lua")


_PRELUDE = (_LUA_DIR / "_prelude.lua").read_text()


def _load(name: str) -> str:
    """A transition's source with the shared helpers of `_prelude.lua` in front."""
    return _PRELUDE + (_LUA_DIR / f"{name}.lua").read_text()


def _pairs(flat: list[Any]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it))


def _int_or_none(raw: bytes | str | None) -> int | None:
    if raw is None or raw == b"" or raw == "":
        return None
    return int(raw)


def _ids(raw: list[bytes]) -> list[str]:
    return [r.decode() for r in raw]


@dataclass(frozen=True, slots=True)
class Target:
    """Where an invocation's per-key keys live (service + object key; key None for services)."""

    partition: int
    invocation_id: str
    service: str
    key: str | None

    @property
    def k(self) -> str:
        return "" if self.key is None else self.key


@dataclass(frozen=True, slots=True)
class Accepted:
    """Reply of `accept`: a new invocation (`outcome` INVOKED/INBOXED/SCHEDULED) or a duplicate."""

    outcome: str  # INVOKED | INBOXED | SCHEDULED | DUP
    state: dict[bytes, bytes] | None = None  # eager state for keyed INVOKED
    dup_status: str = ""
    rc: int = 0
    rm: str = ""
    rv: bytes = b""
    expires_ms: int | None = None
    execution_time_ms: int | None = None
    parents_notified: int = 0
    request_nonce: bytes = b""  # DUP: the nonce of the request that created the invocation


@dataclass(frozen=True, slots=True)
class Applied:
    """Reply of `apply`."""

    outcome: str  # OK (completed) | RESUME | SUSPENDED | BACKOFF | BAD_STATE
    status: str = ""  # status found when BAD_STATE
    expires_ms: int | None = None
    next_id: str | None = None
    next_fields: dict[bytes, bytes] | None = None
    next_state: dict[bytes, bytes] | None = None
    new_entries: list[bytes] = field(default_factory=list)  # RESUME: journal from the replayed length on
    woken: list[str] = field(default_factory=list)  # other invocations woken by a promise completion
    parents_notified: int = 0  # outbox entries queued for waiting parents (END)


@dataclass(frozen=True, slots=True)
class Notified:
    outcome: str  # APPLIED | WOKEN | DUP | GONE
    target: Target | None = None  # WOKEN: the invocation to restart (its keys)


@dataclass(frozen=True, slots=True)
class Started:
    outcome: str  # INVOKED | INBOXED | WAIT | GONE
    fields: dict[bytes, bytes] | None = None
    state: dict[bytes, bytes] | None = None
    journal: list[bytes] | None = None


class Scripts:
    """Every partition Lua transition, registered once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._accept = redis.register_script(_load("accept"))
        self._apply = redis.register_script(_load("apply"))
        self._attempt_start = redis.register_script(_load("attempt_start"))
        self._notify = redis.register_script(_load("notify"))
        self._outbox_ack = redis.register_script(_load("outbox_ack"))
        self.lease_acquire = redis.register_script(_load("lease_acquire"))
        self.lease_renew = redis.register_script(_load("lease_renew"))
        self.lease_release = redis.register_script(_load("lease_release"))

    async def _run(self, name: str, script: Any, keys_: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await script(keys=keys_, args=args)
        finally:
            SCRIPT_DURATION.labels(name).observe(time.perf_counter() - started)

    async def accept(
        self, t: Target, token: str, now_ms: int, kind: str, execution_time_ms: int | None, parent: str,
        fields: list[Any],
    ) -> Accepted:
        """Create the invocation (or report the existing one). Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "accept", self._accept,
            [keys.lease(p), keys.invocation(p, t.invocation_id), keys.active(p), keys.lock(p, t.service, t.k),
             keys.inbox(p, t.service, t.k), keys.state(p, t.service, t.k), keys.timers(p), keys.outbox(p)],
            [token, now_ms, kind, "" if execution_time_ms is None else execution_time_ms, parent, *fields],
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(p)
        if code == b"INVOKED":
            return Accepted("INVOKED", state=_pairs(reply[1]))
        if code == b"DUP":
            return Accepted(
                "DUP", dup_status=reply[1].decode(), rc=int(reply[2] or 0), rm=reply[3].decode(), rv=reply[4],
                expires_ms=_int_or_none(reply[5]), execution_time_ms=_int_or_none(reply[6]),
                parents_notified=int(reply[7]), request_nonce=reply[8],
            )
        return Accepted(code.decode())

    async def apply(
        self, t: Target, token: str, now_ms: int, replayed_len: int, terminal: list[Any], attempts: int,
        ops: list[Any],
    ) -> Applied:
        """Store one attempt's journal entries, effects and terminal message. Raises Fenced."""
        p = t.partition
        args = [token, now_ms, replayed_len, *terminal]
        args += [""] * (7 - len(args))
        args += [attempts, keys.invocation_prefix(p), keys.journal_prefix(p), *ops]
        reply = await self._run(
            "apply", self._apply,
            [keys.lease(p), keys.invocation(p, t.invocation_id), keys.active(p), keys.lock(p, t.service, t.k),
             keys.inbox(p, t.service, t.k), keys.state(p, t.service, t.k), keys.journal(p, t.invocation_id),
             keys.timers(p), keys.outbox(p), keys.promises(p, t.service, t.k),
             keys.promise_waiters(p, t.service, t.k)],
            args,
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(p)
        if code == b"BAD_STATE":
            return Applied("BAD_STATE", status=reply[1].decode())
        if code == b"OK":
            next_id = reply[2].decode() or None
            return Applied(
                "OK", expires_ms=_int_or_none(reply[1]), next_id=next_id,
                next_fields=_pairs(reply[3]) if next_id else None,
                next_state=_pairs(reply[4]) if next_id else None, woken=_ids(reply[5]),
                parents_notified=int(reply[6]),
            )
        if code == b"RESUME":
            return Applied("RESUME", new_entries=list(reply[1]), woken=_ids(reply[2]))
        return Applied(code.decode(), woken=_ids(reply[1]))

    async def attempt_start(self, t: Target, token: str, now_ms: int, timer_member: str = "") -> Started:
        """Move an invocation to `invoked` and read its hash, state and journal. Raises Fenced."""
        p = t.partition
        reply = await self._run(
            "attempt_start", self._attempt_start,
            [keys.lease(p), keys.invocation(p, t.invocation_id), keys.lock(p, t.service, t.k),
             keys.inbox(p, t.service, t.k), keys.state(p, t.service, t.k), keys.journal(p, t.invocation_id),
             keys.timers(p), keys.active(p)],
            [token, now_ms, timer_member],
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(p)
        if code == b"INVOKED":
            return Started("INVOKED", _pairs(reply[1]), _pairs(reply[2]), list(reply[3]))
        return Started(code.decode())

    async def notify(
        self, partition: int, invocation_id: str, token: str, now_ms: int, note_key: str, frame: bytes,
        timer_member: str = "",
    ) -> Notified:
        """Append a notification once; the outcome is APPLIED, WOKEN (with the target to
        restart), DUP or GONE. Raises Fenced."""
        p = partition
        reply = await self._run(
            "notify", self._notify,
            [keys.lease(p), keys.invocation(p, invocation_id), keys.journal(p, invocation_id), keys.timers(p),
             keys.active(p)],
            [token, now_ms, note_key, frame, timer_member],
        )
        code: bytes = reply[0]
        if code == b"FENCED":
            raise Fenced(p)
        if code == b"APPLIED":
            if int(reply[1]):
                svc, key = reply[2]
                return Notified("WOKEN", Target(p, invocation_id, svc.decode(), None if key is None else key.decode()))
            return Notified("APPLIED")
        return Notified(code.decode())

    async def outbox_ack(self, partition: int, token: str, count: int) -> bool:
        reply = await self._run("outbox_ack", self._outbox_ack, [keys.lease(partition), keys.outbox(partition)],
                                [token, count])
        return bool(reply)
