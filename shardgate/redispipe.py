"""Scripts of concurrent callers sent to a standalone Redis together, pipelined on one connection.

`ScriptPipeline.evalsha` encodes the call (RESP, in the caller's task: `pack`) and adds it to the
write being gathered. A lone call goes out at the end of the event loop's pass in which it was
made, with the others made in that pass; calls made while a batch is unanswered are gathered and
go out together, at most `max_batch` per write, as soon as its last reply arrives. Replies are
matched to callers in order as they arrive, without a task or a timer per call (one timer per
write when the client has a socket timeout). Each call is still its own
EVALSHA: atomic on its own, and one round trip for its caller, shared with the others of its batch.
Redis reads and answers a batch in one pass of its event loop, and the worker reads the replies
that arrived together on one wake-up, where separate connections cost a wake-up each.

The connection is one of the client's pool, connected by redis-py (so TLS, AUTH, the database
and the client's settings are the client's own), then taken out of the pool and read and written
by `_Link`, an `asyncio.Protocol` over its transport. Once it is lost, the next call gives it
back to the pool, closed, and takes another. (redis-py's connection exposes its transport only as
`_writer.transport`; `tests/integration/test_redispipe.py` runs against the redis-py we pin.)

Semantics are those of one EVALSHA per call on a pooled connection:

- an argument redis-py would refuse (not bytes, str, int or float) is that caller's DataError,
  raised before anything is sent;
- an error reply (NOSCRIPT included) is that call's exception, parsed as redis-py parses it; the
  other calls go on. On NOSCRIPT the script is loaded and the call sent once more, as redis-py's
  `Script` does;
- a caller cancelled before its batch was written is not sent at all; one cancelled later has
  its reply read and dropped (the script may have run, as with a plain EVALSHA);
- a lost connection fails every call sent on it and not yet answered with a ConnectionError, and
  a reply overdue by the client's socket timeout fails them with a TimeoutError and drops the
  connection (each may have run: the callers re-derive, as they do after any lost reply); the
  calls gathered behind them go out on a new connection (or get what connecting raised).

Only for a standalone server (`redis.asyncio.Redis`): on a cluster every key may live elsewhere,
and `partition.scripts.Scripts` keeps redis-py's path there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, DataError, InvalidResponse, NoScriptError, TimeoutError

MAX_BATCH = 256
"""At most this many calls per write; more go out in the next one."""

_PENDING = object()  # hiredis: no complete reply buffered yet


class ScriptPipeline:
    """EVALSHA calls of concurrent callers, batched per write (see the module docstring)."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._on_batch = on_batch  # called with each batch's size as it is written (metrics)
        self._gathered: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flush_at_end_of_pass = False
        self._link: _Link | None = None
        self._conn: Any = None  # the redis-py connection under the link
        self._linking: asyncio.Future[_Link] | None = None
        self._relinking: asyncio.Task[None] | None = None
        self.batches = 0  # writes sent (tests and benchmarks read it)
        self.calls = 0  # calls sent

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run `script` as one EVALSHA (loading it on NOSCRIPT); its reply. Raises what
        redis-py's `Script` call raises."""
        try:
            return await self._call(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
        except NoScriptError:
            script.sha = await self._redis.script_load(script.script)
            return await self._call(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))

    async def _call(self, packed: bytes) -> Any:
        link = self._link
        if link is None or link.closed:
            link = await self._connected()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._gathered.append((packed, fut))
        if not self._flush_at_end_of_pass and link.idle:
            self._flush_at_end_of_pass = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    async def _connected(self) -> _Link:
        """The open link, connecting one first (callers that arrive meanwhile share the connect).
        Raises what connecting raises."""
        if self._linking is None:
            self._linking = asyncio.ensure_future(self._connect())
        linking = self._linking
        try:
            return await asyncio.shield(linking)
        finally:
            if linking.done() and self._linking is linking:
                self._linking = None

    async def _connect(self) -> _Link:
        pool = self._redis.connection_pool
        if self._conn is not None:  # the lost link's connection goes back to the pool, closed
            lost, self._conn, self._link = self._conn, None, None
            await lost.disconnect(nowait=True)
            await pool.release(lost)
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        transport = conn._writer.transport  # connected by redis-py; read and written by the link from now on
        link = _Link(transport, conn.socket_timeout, conn.encoder, transport.get_protocol(), self._flush)
        transport.set_protocol(link)
        self._link, self._conn = link, conn
        return link

    async def _relink(self) -> None:
        """Connect again for the calls gathered while the link was lost, and send them; they get
        what connecting raised when it fails."""
        try:
            await self._connected()
        except Exception as e:  # noqa: BLE001  handed to every caller waiting
            gathered, self._gathered = self._gathered, []
            for _, fut in gathered:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._relinking = None
        self._flush()

    def _flush(self) -> None:
        """Write what was gathered (the calls whose callers are still waiting, at most
        `max_batch`) as one batch, unless the previous batch is still unanswered: then its last
        reply calls this again."""
        self._flush_at_end_of_pass = False
        link = self._link
        if link is not None and not link.closed and not link.idle:
            return
        live = [g for g in self._gathered if not g[1].done()]  # cancelled: never sent
        batch, self._gathered = live[:self._max_batch], live[self._max_batch:]
        if not batch:
            return
        if link is None or link.closed:  # lost meanwhile: these were never sent, so on another one
            self._gathered = live
            if self._relinking is None:
                self._relinking = asyncio.get_running_loop().create_task(self._relink())
            return
        self.batches += 1
        self.calls += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        link.send(b"".join([packed for packed, _ in batch]), [fut for _, fut in batch])


class _Link(asyncio.Protocol):
    """One pipelined connection: writes go out as they come, replies answer the oldest waiting
    futures in order. A reply overdue by `timeout_s` (the oldest one: Redis answers in order)
    or the loss of the connection fails every future still waiting and closes it."""

    def __init__(self, transport: Any, timeout_s: float | None, encoder: Any, streams: asyncio.BaseProtocol,
                 on_idle: Callable[[], None]) -> None:
        self._transport = transport
        self._on_idle = on_idle  # called when the last reply due has arrived
        self._streams = streams  # redis-py's protocol: told when the connection closes (its close waits for that)
        self._timeout_s = timeout_s
        options: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": BaseParser.parse_error,
                                   "notEnoughData": _PENDING}
        if encoder.decode_responses:
            options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
        self._reader = hiredis.Reader(**options)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[tuple[float, int]] = deque()  # (deadline, futures sent up to then)
        self._sent = 0  # futures sent so far
        self._answered = 0  # ... and answered
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def send(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        self._waiting.extend(futures)
        self._sent += len(futures)
        try:
            self._transport.write(data)
        except RuntimeError as e:  # uvloop, on a transport that closed meanwhile
            self._lose(ConnectionError(f"the Redis connection closed before the write ({e})"))
            return
        if self._timeout_s is not None:
            loop = asyncio.get_running_loop()
            self._deadlines.append((loop.time() + self._timeout_s, self._sent))
            if self._timer is None:
                self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline, _ = self._deadlines[0]
        self._timer = loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._lose(TimeoutError("Timeout reading from Redis"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as e:
                self._lose(e)
                return
            if reply is _PENDING:
                break
            if not self._waiting:
                self._lose(InvalidResponse("a Redis reply nobody asked for"))
                return
            fut = self._waiting.popleft()
            self._answered += 1
            if not fut.done():  # a cancelled caller's reply is dropped
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        if self._deadlines and self._deadlines[0][1] <= self._answered:
            while self._deadlines and self._deadlines[0][1] <= self._answered:
                self._deadlines.popleft()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._deadlines:
                self._arm(asyncio.get_running_loop())
        if not self._waiting:
            self._on_idle()

    @property
    def idle(self) -> bool:
        """No reply is due."""
        return not self._waiting

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(ConnectionError(f"Redis connection lost: {exc}" if exc else "Connection closed by server."))
        self._streams.connection_lost(exc)

    def _lose(self, err: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
        self._transport.abort()
        self._on_idle()  # what was gathered behind the lost batch goes out on another connection


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
