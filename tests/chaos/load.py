"""Load for the chaos suite: keyed sends and plain calls, each retried with its idempotency key.

A `Load` runs `send_keys` senders (one per object key: `ChaosKey/<key>/append`, the next sequence
number only once the previous send was acknowledged with a 202, so the key's inbox order is the
client's order) and `callers` callers (`ChaosPlain/record`, waiting for the 200 and its result).
Every logical invocation carries an idempotency key equal to its tag; an attempt answered with a
retryable error (a JSON 503 or 429) is retried with the same key after `RETRY_PACE_S`, and so is an
attempt that got no answer at all (connection closed, timeout), which is also counted as unanswered:
that is what the suite wants to be zero. An unexpected status (anything else) is recorded and
retried the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ATTEMPT_TIMEOUT_S = 45.0
"""Client timeout of one HTTP attempt: above the ingress's 30 s routing deadline."""
LOGICAL_DEADLINE_S = 90.0
"""How long one logical invocation is retried before the load gives up on it."""
RETRY_PACE_S = 0.1
RETRYABLE = (429, 503)


@dataclass
class Tally:
    """What the load saw: acknowledged tags, attempts without an answer, retried errors."""

    offered: int = 0
    acked_sends: dict[str, tuple[str, int]] = field(default_factory=dict)
    """tag -> (object key, seq) of every send answered 202."""
    acked_calls: set[str] = field(default_factory=set)
    """tags of every call answered 200 with its own tag."""
    given_up: list[str] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)
    """(tag, what happened) for attempts that got no HTTP answer or an undocumented one."""
    retried: Counter[int] = field(default_factory=Counter)
    """status -> attempts answered with that retryable status."""
    bad_retryables: list[tuple[str, int, str]] = field(default_factory=list)
    """(tag, status, body) of 503/429 answers that were not the documented JSON error."""

    @property
    def acknowledged(self) -> int:
        return len(self.acked_sends) + len(self.acked_calls)


def documented_retryable(status: int, body: Any) -> bool:
    """True for the ingress's JSON error shape on a 503 / 429 (`{"message": ...}`)."""
    return status in RETRYABLE and isinstance(body, dict) and isinstance(body.get("message"), str)


class Load:
    """Sends and calls against one ingress URL until `stop()`; see the module docstring."""

    def __init__(self, http: aiohttp.ClientSession, url: str, run_id: str, *, send_keys: int,
                 callers: int) -> None:
        self.http, self.url, self.run_id = http, url, run_id
        self.send_keys, self.callers = send_keys, callers
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every sender and caller task."""
        self._tasks = [asyncio.create_task(self._sender(f"{self.run_id}-k{i}")) for i in range(self.send_keys)]
        self._tasks += [asyncio.create_task(self._caller(f"{self.run_id}-c{i}")) for i in range(self.callers)]

    def check_alive(self) -> None:
        """Raise what a load task died of, if one did (a bug in the harness, not the server)."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> Tally:
        """Let every task finish its current logical invocation (bounded by LOGICAL_DEADLINE_S)."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), LOGICAL_DEADLINE_S + ATTEMPT_TIMEOUT_S + 10)
        return self.tally

    async def _sender(self, key: str) -> None:
        seq = 0
        while not self._stop.is_set():
            tag = f"{key}-{seq}"
            path = f"/restate/send/ChaosKey/{key}/append"
            if await self._invoke(tag, path, {"tag": tag, "seq": seq}, 202):
                self.tally.acked_sends[tag] = (key, seq)
            seq += 1

    async def _caller(self, name: str) -> None:
        n = 0
        while not self._stop.is_set():
            tag = f"{name}-{n}"
            if await self._invoke(tag, "/restate/call/ChaosPlain/record", tag, 200):
                self.tally.acked_calls.add(tag)
            n += 1

    async def _invoke(self, tag: str, path: str, body: Any, ok: int) -> bool:
        """One logical invocation: attempts until `ok` (True) or the deadline (False)."""
        self.tally.offered += 1
        end = time.monotonic() + LOGICAL_DEADLINE_S
        while time.monotonic() < end:
            status, answer = await self._attempt(tag, path, body)
            if status == ok and (ok == 202 or answer == tag):
                return True
            if status is None:
                self.tally.unanswered.append((tag, str(answer)))
            elif documented_retryable(status, answer):
                self.tally.retried[status] += 1
            elif status in RETRYABLE:
                self.tally.bad_retryables.append((tag, status, str(answer)[:200]))
            else:
                self.tally.unanswered.append((tag, f"{status} {str(answer)[:200]}"))
            await asyncio.sleep(RETRY_PACE_S)  # the retry pace of a polite client, not synchronisation
        self.tally.given_up.append(tag)
        return False

    async def _attempt(self, tag: str, path: str, body: Any) -> tuple[int | None, Any]:
        """POST once; (status, decoded body), or (None, the error) when no answer came."""
        try:
            async with self.http.post(f"{self.url}{path}", json=body, headers={"idempotency-key": tag},
                                      timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)) as r:
                raw = await r.read()
                try:
                    return r.status, await r.json(content_type=None) if raw else None
                except ValueError:
                    return r.status, raw.decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
