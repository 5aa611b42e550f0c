"""Scripts of concurrent callers sent to a standalone Redis together: one write, one read.

`ScriptPipeline.evalsha` encodes the call (RESP, in the caller's task: `pack`) and queues it.
One drain task at a time takes everything queued, sends it as one write on one connection of the
client's pool, reads the replies in order and answers each caller, then takes what was queued
meanwhile. A lone call goes out at once, as a plain EVALSHA would; calls issued while a batch is
in flight go out together as the next batch. Each call is still its own EVALSHA: atomic on its
own, and one round trip for its caller, shared with the others of its batch. Redis reads and
answers a batch in one pass of its event loop, and the worker reads all the replies on one
wake-up, where separate connections cost a wake-up each.

Semantics are those of one EVALSHA per call on a pooled connection:

- an argument redis-py would refuse (not bytes, str, int or float) is that caller's DataError,
  raised before anything is queued;
- an error reply (NOSCRIPT included) is that call's exception; the rest of the batch goes on.
  On NOSCRIPT the script is loaded and the call sent once more, as redis-py's `Script` does;
- a caller cancelled before its batch was written is not sent at all; one cancelled later has
  its reply read and dropped (the script may have run, as with a plain EVALSHA);
- a connection error or a timeout while the batch is written or read fails every call of the
  batch not yet answered with that error (each may have run: the callers re-derive, as they do
  after any lost reply), and the connection is dropped.

Only for a standalone server (`redis.asyncio.Redis`): on a cluster every key may live elsewhere,
and `partition.scripts.Scripts` keeps redis-py's path there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError, ResponseError

MAX_BATCH = 256
"""At most this many calls per write; more wait for the next batch."""

_Call = tuple[bytes, "asyncio.Future[Any]"]  # the call's RESP encoding, its caller's future


class ScriptPipeline:
    """EVALSHA calls of concurrent callers, batched per round trip (see the module docstring)."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._on_batch = on_batch  # called with each batch's size as it is written (metrics)
        self._queue: list[_Call] = []
        self._drain: asyncio.Task[None] | None = None
        self.batches = 0  # writes sent (tests and benchmarks read it)
        self.calls = 0  # calls sent

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run `script` as one EVALSHA (loading it on NOSCRIPT); its reply. Raises what
        redis-py's `Script` call raises."""
        try:
            return await self._submit(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
        except NoScriptError:
            script.sha = await self._redis.script_load(script.script)
            return await self._submit(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))

    def _submit(self, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((packed, fut))
        if self._drain is None:
            self._drain = loop.create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = [c for c in self._queue[:self._max_batch] if not c[1].done()]  # cancelled: never sent
                del self._queue[:self._max_batch]
                if batch:
                    await self._send(batch)
        finally:
            self._drain = None
            for _, fut in self._queue:  # only when this task itself was cancelled (loop shutdown)
                fut.cancel()
            self._queue.clear()

    async def _send(self, batch: list[_Call]) -> None:
        pool = self._redis.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException as e:  # noqa: BLE001  handed to every caller of the batch
            _fail(batch, e)
            _raise_if_cancelled(e)
            return
        answered = 0
        try:
            self.batches += 1
            self.calls += len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch))
            await conn.send_packed_command(b"".join([c for c, _ in batch]), check_health=False)
            for _, fut in batch:
                try:
                    reply = await conn.read_response()
                except ResponseError as e:  # this call's error reply; the connection is fine
                    if not fut.done():
                        fut.set_exception(e)
                else:
                    if not fut.done():
                        fut.set_result(reply)
                answered += 1
        except BaseException as e:  # noqa: BLE001  handed to every caller not yet answered
            await conn.disconnect(nowait=True)
            _fail(batch[answered:], e)
            _raise_if_cancelled(e)
        finally:
            await pool.release(conn)


def pack(command: tuple[Any, ...]) -> bytes:
    """`command` in RESP, as redis-py's connections encode it (UTF-8 text, ints and floats as
    their repr): a third of what `pack_commands` costs. Raises DataError for any other type."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            raw = b"%d" % arg
        elif isinstance(arg, float):
            raw = repr(arg).encode()
        elif isinstance(arg, (bytearray, memoryview)):
            raw = bytes(arg)
        else:
            raise DataError(f"Invalid input of type: '{type(arg).__name__}'. "
                            "Convert to a bytes, string, int or float first.")
        out.append(b"$%d\r\n" % len(raw))
        out.append(raw)
        out.append(b"\r\n")
    return b"".join(out)


def _raise_if_cancelled(e: BaseException) -> None:
    if isinstance(e, asyncio.CancelledError):
        raise e


def _fail(calls: Sequence[_Call], e: BaseException) -> None:
    for _, fut in calls:
        if fut.done():
            continue
        if isinstance(e, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(e)
