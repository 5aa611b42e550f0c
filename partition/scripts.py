"""Loads `lua/*.lua` once and exposes one typed async wrapper per state transition.

No other module calls EVAL/EVALSHA. Each wrapper turns the script's reply code into a typed
result or a `Fenced` error. Scripts are run through redis-py's Script objects (EVALSHA with a
NOSCRIPT fallback), on the shared connection pool or inside a caller's pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from partition import keys
from partition.errors import Fenced
from partition.metrics import SCRIPT_DURATION

_LUA_DIR = Path(__file__).with_name("lua")


def _load(name: str) -> str:
    return (_LUA_DIR / f"{name}.lua").read_text()


def _pairs(flat: list[Any]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it))


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


@dataclass(frozen=True, slots=True)
class Completed:
    """Reply of `complete`: retention end, and the inbox head that now holds the key lock."""

    ok: bool
    status: str = ""  # status found when not ok
    expires_ms: int | None = None
    next_id: str | None = None
    next_fields: dict[bytes, bytes] | None = None
    next_state: dict[bytes, bytes] | None = None


@dataclass(frozen=True, slots=True)
class Started:
    outcome: str  # INVOKED | INBOXED | WAIT | GONE
    fields: dict[bytes, bytes] | None = None
    state: dict[bytes, bytes] | None = None


def _int_or_none(raw: bytes | str | None) -> int | None:
    if raw is None or raw == b"" or raw == "":
        return None
    return int(raw)


class Scripts:
    """Every partition Lua transition, registered once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._accept = redis.register_script(_load("accept"))
        self._complete = redis.register_script(_load("complete"))
        self._attempt_start = redis.register_script(_load("attempt_start"))
        self._attempt_failed = redis.register_script(_load("attempt_failed"))
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
        self,
        partition: int,
        token: str,
        now_ms: int,
        invocation_id: str,
        kind: str,
        service: str,
        key: str | None,
        execution_time_ms: int | None,
        fields: list[Any],
    ) -> Accepted:
        """Create the invocation (or report the existing one). Raises Fenced."""
        k = "" if key is None else key
        reply = await self._run(
            "accept",
            self._accept,
            [
                keys.lease(partition),
                keys.invocation(partition, invocation_id),
                keys.active(partition),
                keys.lock(partition, service, k),
                keys.inbox(partition, service, k),
                keys.state(partition, service, k),
            ],
            [token, now_ms, kind, "" if execution_time_ms is None else execution_time_ms, *fields],
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(partition)
        if code == b"INVOKED":
            return Accepted("INVOKED", state=_pairs(reply[1]))
        if code == b"DUP":
            return Accepted(
                "DUP",
                dup_status=reply[1].decode(),
                rc=int(reply[2] or 0),
                rm=reply[3].decode(),
                rv=reply[4],
                expires_ms=_int_or_none(reply[5]),
                execution_time_ms=_int_or_none(reply[6]),
            )
        return Accepted(code.decode())

    async def complete(
        self,
        partition: int,
        token: str,
        now_ms: int,
        invocation_id: str,
        service: str,
        key: str | None,
        rc: int,
        rm: str,
        rv: bytes,
        state_ops: list[Any],
    ) -> Completed:
        """Store the result + state writes, release the lock, start the inbox head. Raises Fenced."""
        k = "" if key is None else key
        reply = await self._run(
            "complete",
            self._complete,
            [
                keys.lease(partition),
                keys.invocation(partition, invocation_id),
                keys.active(partition),
                keys.lock(partition, service, k),
                keys.inbox(partition, service, k),
                keys.state(partition, service, k),
            ],
            [token, now_ms, rc, rm, rv, keys.invocation_prefix(partition), *state_ops],
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(partition)
        if code == b"BAD_STATE":
            return Completed(False, status=reply[1].decode())
        next_id = reply[2].decode() or None
        return Completed(
            True,
            expires_ms=_int_or_none(reply[1]),
            next_id=next_id,
            next_fields=_pairs(reply[3]) if next_id else None,
            next_state=_pairs(reply[4]) if next_id else None,
        )

    async def attempt_start(
        self, partition: int, token: str, now_ms: int, invocation_id: str, service: str, key: str | None
    ) -> Started:
        """Move an active invocation to `invoked` and read its hash + state. Raises Fenced."""
        k = "" if key is None else key
        reply = await self._run(
            "attempt_start",
            self._attempt_start,
            [
                keys.lease(partition),
                keys.invocation(partition, invocation_id),
                keys.lock(partition, service, k),
                keys.inbox(partition, service, k),
                keys.state(partition, service, k),
            ],
            [token, now_ms],
        )
        code = reply[0]
        if code == b"FENCED":
            raise Fenced(partition)
        if code == b"INVOKED":
            return Started("INVOKED", _pairs(reply[1]), _pairs(reply[2]))
        return Started(code.decode())

    async def attempt_failed(
        self, partition: int, token: str, now_ms: int, invocation_id: str, paused: bool,
        retry_at_ms: int, message: str,
    ) -> int | None:
        """Record a failed attempt; returns the attempt count, None if no longer invoked. Raises Fenced."""
        reply = await self._run(
            "attempt_failed",
            self._attempt_failed,
            [keys.lease(partition), keys.invocation(partition, invocation_id), keys.active(partition)],
            [token, now_ms, "paused" if paused else "backing-off", retry_at_ms, message[:2000]],
        )
        if reply[0] == b"FENCED":
            raise Fenced(partition)
        if reply[0] == b"BAD_STATE":
            return None
        return int(reply[1])
