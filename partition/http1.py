"""A lean HTTP/1.1 client for deployments: one POST, the whole response, keep-alive connections.

The invoker's request-response attempts need only this: send a POST with a known body, read the
status, a few headers and the whole body. `Http1Pool` keeps idle connections per (host, port),
reuses the most recently used one, and talks to the socket through an `asyncio.Protocol`, so a
request costs one write, a parse of what arrives and one future — no streams, no per-request
tasks, no general-purpose header machinery.

`ResponseParser` (pure) reads a response: status line, headers, then a body delimited by
Content-Length, by chunked transfer coding (trailers skipped) or by the end of the connection;
1xx responses are skipped. Anything else raises `Http1Error`.

A connection that was reused and failed before any byte of the response arrived (the server
closed it while it lay idle: a keep-alive race) is retried once on a new connection; idle
connections older than `IDLE_S` are not reused (Node and hypercorn close after 5 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast

MAX_HEAD_BYTES = 64 * 1024
IDLE_S = 4.0
MAX_IDLE_PER_HOST = 256


class Http1Error(Exception):
    """The connection broke or the server's response is not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    keep_alive: bool


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_EOF, _DONE = range(8)


class ResponseParser:
    """Incremental parser of one HTTP/1.1 response to a POST. `feed` bytes as they arrive; it
    returns the `Response` once complete (None before). `feed_eof` at the connection's end."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._body: list[bytes] = []
        self._left = 0  # bytes of the body (or of the current chunk) still to come

    def feed(self, data: bytes) -> Response | None:
        """Consume `data`. Raises Http1Error for a malformed response or bytes past its end."""
        if self._state == _DONE:
            raise Http1Error("data after the end of the response")
        self._buf += data
        while True:
            progressed = self._step()
            if self._state == _DONE:
                if self._buf:
                    raise Http1Error("data after the end of the response")
                return self._response()
            if not progressed:
                return None

    def feed_eof(self) -> Response:
        """The connection ended: the response if it was complete (or delimited by the end).
        Raises Http1Error when it was cut short."""
        if self._state == _UNTIL_EOF:
            self._body.append(bytes(self._buf))
            self._buf.clear()
            self._state = _DONE
            self._keep_alive = False
            return self._response()
        if self._state == _DONE:
            return self._response()
        raise Http1Error("connection closed before the response was complete")

    def _response(self) -> Response:
        return Response(self._status, self._headers, b"".join(self._body), self._keep_alive)

    def _step(self) -> bool:
        """Advance one state if the buffer allows; False when more bytes are needed."""
        state = self._state
        if state == _HEAD:
            return self._head()
        if state == _LENGTH or state == _CHUNK_DATA:
            return self._data()
        if state == _CHUNK_SIZE:
            return self._chunk_size()
        if state == _CHUNK_END:
            return self._chunk_end()
        if state == _TRAILERS:
            return self._trailers()
        if state == _UNTIL_EOF and self._buf:
            self._body.append(bytes(self._buf))
            self._buf.clear()
        return False

    def _line(self, limit: int) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > limit:
                raise Http1Error("line too long")
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 2]
        return line

    def _head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise Http1Error("response head too large")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[:end + 4]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise Http1Error(f"bad status line {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise Http1Error(f"bad header line {line[:80]!r}")
            headers[name.lower()] = value.strip()
        status = int(code)
        if 100 <= status < 200:
            return True  # an interim response: the real one follows
        self._status, self._headers = status, headers
        self._keep_alive = _keep_alive(version, headers.get("connection", ""))
        self._state = self._body_state(status, headers)
        return True

    def _body_state(self, status: int, headers: dict[str, str]) -> int:
        if status in (204, 304):
            return _DONE
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower() != "chunked":
                raise Http1Error(f"unsupported transfer-encoding {coding[:40]!r}")
            return _CHUNK_SIZE
        length = headers.get("content-length")
        if length is None:
            self._keep_alive = False
            return _UNTIL_EOF
        if not length.isdigit():
            raise Http1Error(f"bad content-length {length[:40]!r}")
        self._left = int(length)
        return _LENGTH if self._left else _DONE

    def _data(self) -> bool:
        if not self._buf:
            return False
        take = min(self._left, len(self._buf))
        self._body.append(bytes(self._buf[:take]))
        del self._buf[:take]
        self._left -= take
        if self._left == 0:
            self._state = _DONE if self._state == _LENGTH else _CHUNK_END
        return True

    def _chunk_size(self) -> bool:
        line = self._line(1024)
        if line is None:
            return False
        size = line.split(b";", 1)[0].strip()
        try:
            self._left = int(size, 16)
        except ValueError:
            raise Http1Error(f"bad chunk size {size[:40]!r}") from None
        if self._left < 0:
            raise Http1Error("bad chunk size")
        self._state = _CHUNK_DATA if self._left else _TRAILERS
        return True

    def _chunk_end(self) -> bool:
        if len(self._buf) < 2:
            return False
        if self._buf[:2] != b"\r\n":
            raise Http1Error("chunk not followed by CRLF")
        del self._buf[:2]
        self._state = _CHUNK_SIZE
        return True

    def _trailers(self) -> bool:
        line = self._line(MAX_HEAD_BYTES)
        if line is None:
            return False
        if not line:
            self._state = _DONE
        return True


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def encode_request(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The head of a POST (Host and Content-Length added; values in UTF-8, as aiohttp sends them).
    Raises Http1Error for a header name or value that would break the framing (CR, LF, NUL, a
    colon or anything but ASCII in a name)."""
    parts = [f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"]
    for name, value in headers.items():
        if _unsafe(name) or ":" in name or not name.isascii() or _unsafe(value):
            raise Http1Error(f"header {name[:40]!r} cannot be sent")
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


class _Connection(asyncio.Protocol):
    """One TCP connection; at most one request at a time."""

    def __init__(self, pool: Http1Pool, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.idle_since = 0.0
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def request(self, data: bytes, body: bytes) -> asyncio.Future[Response]:
        """Send one request; the future gets its response (or Http1Error / OSError)."""
        assert self.transport is not None
        self._parser = ResponseParser()
        self.got_bytes = False
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if len(body) < 16 * 1024:
            self.transport.write(data + body)
        else:
            self.transport.writelines((data, body))
        return waiter

    def data_received(self, data: bytes) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or parser is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.got_bytes = True
        try:
            resp = parser.feed(data)
        except Http1Error as e:
            self._finish(exc=e)
            return
        if resp is not None:
            self._finish(resp=resp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done() or parser is None:
            return
        try:
            resp = parser.feed_eof()
        except Http1Error as e:
            err: Exception = ConnectionResetError(f"{e}{f': {exc}' if exc else ''}") if not self.got_bytes else e
            self._finish(exc=err)
            return
        self._finish(resp=resp)

    def _finish(self, resp: Response | None = None, exc: Exception | None = None) -> None:
        waiter = self._waiter
        self._waiter = self._parser = None
        if exc is not None or resp is None or not resp.keep_alive:
            self.close()
        if waiter is not None and not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(resp)  # type: ignore[arg-type]  # resp is set when exc is None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Http1Pool:
    """Keep-alive connections per (host, port). `post` any number of times concurrently; `close`."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def post(self, host: str, port: int, data: bytes, body: bytes, timeout_s: float,
                   connect_timeout_s: float) -> Response:
        """Send the encoded request head `data` and `body`; the whole response. Raises TimeoutError
        (past `timeout_s` in all, or `connect_timeout_s` to connect), OSError (connection) or
        Http1Error (invalid response)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._reuse((host, port))
        if conn is not None:
            try:
                return await self._exchange(conn, data, body, deadline)
            except TimeoutError:
                raise
            except (OSError, Http1Error):
                if conn.got_bytes:
                    raise
                # the server closed the idle connection as we sent: once more on a new one
        conn = await self._connect((host, port), min(connect_timeout_s, max(deadline - loop.time(), 0.0)))
        return await self._exchange(conn, data, body, deadline)

    def _reuse(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int], timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, key)
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: conn, key[0], key[1])
        self._all.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, data: bytes, body: bytes, deadline: float) -> Response:
        loop = asyncio.get_running_loop()
        waiter = conn.request(data, body)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            resp = await waiter
        except BaseException:
            conn.abort()  # timed out, cancelled or broken: the response can no longer be read
            raise
        finally:
            timer.cancel()
        if resp.keep_alive and not conn.closed:
            self._put_back(conn)
        return resp

    def _put_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection closed: never hand it out again."""
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every connection (requests in flight fail)."""
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("deployment did not answer in time"))
