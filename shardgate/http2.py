"""A small HTTP/2 client over cleartext TCP (h2c, prior knowledge) for SDK deployments.

Restate reaches `http://` deployments over h2c unless they were registered with `use_http_11`,
and the TypeScript SDK's default server (`endpoint().listen()`) speaks nothing else. This client
does what discovery and request-response attempts need: send one request with a known body and
read the whole response (`H2Pool.request`); and what a bidirectional attempt needs: a request
whose body goes out piece by piece while its response is read piece by piece (`H2Pool.open`, a
`Duplex`). `H2Pool` multiplexes the requests to one (host, port) on a few
connections, each an `asyncio.Protocol` driving an `h2` state machine, so a request costs its
frames, one write and one future — no task per request or per connection.

What it takes care of:
- flow control both ways: request bodies are sent as the peer's windows allow; response data is
  acknowledged as it arrives (the windows we advertise are large, so a response never waits), on a
  `Duplex` only once the reader took it (a reader that falls behind holds the peer back);
- the peer's stream limit: a connection carries at most `MAX_CONCURRENT_STREAMS` of its own or
  the peer's limit, whichever is lower; more requests open another connection;
- connection hygiene: a connection idle for `IDLE_S` is not reused (hypercorn closes idle ones
  after 5 s without a GOAWAY); after a GOAWAY a connection takes no new streams and those above
  the peer's last stream id fail as retryable; a request that failed before any part of its
  response arrived, on a reused connection or because the peer refused the stream, is sent
  once more on another connection; after `MAX_STREAMS_PER_CONNECTION` streams a connection is
  retired;
- a peer that answers the connection preface in HTTP/1.x raises `NotHttp2`, so a caller can
  fall back to HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

IDLE_S = 4.0
MAX_CONCURRENT_STREAMS = 100  # per connection, our own cap (hypercorn allows 100, Node 4294967295)
MAX_CONNECTIONS_PER_HOST = 64
# Streams per connection before it is retired (no new streams, closed once drained). hypercorn
# sends GOAWAY after its 1000th request and then cannot answer the streams still in flight, which
# hang until its 5 s idle close: a connection must be retired before the server does it.
MAX_STREAMS_PER_CONNECTION = 500
STREAM_WINDOW_BYTES = 2 * 1024 * 1024  # what the peer may send on a stream before we acknowledge
CONNECTION_WINDOW_BYTES = 8 * 1024 * 1024
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # what stays unescaped in a request path (as aiohttp sends it)
# Connection-specific headers are forbidden in HTTP/2 (RFC 9113 §8.2.2); h2 refuses to send them.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"})


class Http2Error(Exception):
    """The connection broke, the peer reset the stream, or it broke the protocol.

    `retryable` is set when the peer certainly did not process the request (it refused the
    stream, or it went away before reaching it), so the request may go out again.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotHttp2(Http2Error):
    """The peer answered the HTTP/2 connection preface in HTTP/1.x: it does not speak h2c."""


class BodyTooLarge(Http2Error):
    """The response body exceeded the request's `max_body_bytes` (the stream was reset)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """One request, encoded once: pseudo-headers and headers as h2 sends them."""

    headers: list[tuple[bytes, bytes]]
    body: bytes


def encode_request(method: str, authority: str, path: str, headers: dict[str, str], body: bytes) -> Request:
    """A request with its pseudo-headers; header names lower-cased, connection-specific headers
    dropped, values in UTF-8. Raises Http2Error for a name or value HTTP/2 cannot carry."""
    fields = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", authority.encode("latin-1")),
              (b":path", path.encode("latin-1"))]
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or (lower == "te" and value.lower() != "trailers"):
            continue
        if (not lower or not lower.isascii() or lower.startswith(":") or any(c in lower for c in " \r\n\0:")
                or any(c in value for c in "\r\n\0")):
            raise Http2Error(f"header {name[:40]!r} cannot be sent")
        fields.append((lower.encode("ascii"), value.encode("utf-8")))  # values as aiohttp sends them
    if body:
        fields.append((b"content-length", str(len(body)).encode()))
    return Request(fields, body)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request to a plain `http://` URL goes, for either lean client (HTTP/1.1 or h2c)."""

    host: str
    port: int
    authority: str  # the Host header / :authority
    path: str  # path and query, escaped


def parse_target(url: str) -> Target | None:
    """An `http://host[:port]/path` URL as a target; None for any other URL (https, credentials,
    a host name that is not ASCII)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.hostname.isascii() or parts.username is not None:
        return None  # (a non-ASCII host name is left to aiohttp, which encodes it)
    try:
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        authority += f":{port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    return Target(host, port, authority, path)


class _Stream:
    """One request in flight on a connection. A duplex one's `waiter` is done at the response's
    head; its data waits in `chunks` for the reader."""

    __slots__ = ("answered", "body", "chunks", "discarding", "duplex", "error", "headers", "id", "interrupted",
                 "local_ended", "max_body_bytes", "reader", "remote_ended", "size", "status", "waiter", "window")

    def __init__(self, stream_id: int, waiter: asyncio.Future[Response], max_body_bytes: int,
                 duplex: bool = False) -> None:
        self.id = stream_id
        self.waiter = waiter
        self.window: asyncio.Future[None] | None = None  # set while the body waits for flow control
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.max_body_bytes = max_body_bytes
        self.answered = False  # some part of the response arrived
        self.duplex = duplex
        self.chunks: deque[tuple[bytes, int]] = deque()  # duplex: (data, flow-controlled length) not read yet
        self.reader: asyncio.Future[None] | None = None  # duplex: set while a read waits
        self.error: Exception | None = None  # duplex: why the stream failed
        self.remote_ended = False  # duplex: the response ended
        self.local_ended = False  # duplex: the request ended (END_STREAM sent, or reset)
        self.discarding = False  # duplex: nobody reads any more; data is acknowledged and dropped
        self.interrupted = False  # duplex: the next read returns None at once (`Duplex.interrupt`)

    def fail(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.window is not None and not self.window.done():
            self.window.set_exception(exc)
        if self.duplex and self.error is None:
            self.error = exc
            self.wake_reader()

    def wake(self) -> None:
        if self.window is not None and not self.window.done():
            self.window.set_result(None)

    def wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)


class _Connection(asyncio.Protocol):
    """One h2c connection: many streams, one h2 state machine."""

    def __init__(self, pool: H2Pool, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        })
        self.streams: dict[int, _Stream] = {}
        self.opened = 0  # streams ever opened
        self.closed = False
        self.going_away = False
        self.reused = False
        self.got_bytes = False
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW_BYTES - 65535)
        self._flush()

    def usable(self, now: float) -> bool:
        """Whether a new stream may go out on this connection now."""
        if self.closed or self.going_away:
            return False
        if not self.streams and now - self.idle_since >= IDLE_S:
            return False
        limit = min(MAX_CONCURRENT_STREAMS, self.h2.remote_settings.max_concurrent_streams)
        return len(self.streams) < limit

    def open(self, request: Request, max_body_bytes: int, duplex: bool = False) -> _Stream:
        """Send the request's headers (and as much of its body as the windows allow); a duplex
        stream's request stays open for `send`."""
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(stream_id, asyncio.get_running_loop().create_future(), max_body_bytes, duplex)
        try:
            self.h2.send_headers(stream_id, request.headers, end_stream=not request.body and not duplex)
        except h2.exceptions.TooManyStreamsError as e:
            raise Http2Error(f"no stream available: {e}", retryable=True) from None
        except h2.exceptions.ProtocolError as e:
            raise Http2Error(f"cannot send the request: {e}") from None
        self.streams[stream_id] = stream
        self.opened += 1
        if self.opened >= MAX_STREAMS_PER_CONNECTION:
            self.going_away = True  # retired: its streams finish, then it closes
            self._pool.forget(self)
        if not request.body or duplex:
            self._flush()  # else the body's first frames go out in the same write
        return stream

    async def send_body(self, stream: _Stream, body: bytes) -> None:
        """The request body, in frames as the peer's windows allow, the last one ending the stream.
        A response that ends before the whole body is sent cancels the rest (RST_STREAM)."""
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            if stream.waiter.done():  # answered, reset or failed meanwhile
                self._cancel_upload(stream.id)
                return
            window = await self._window(stream)
            if not window:
                continue
            chunk = bytes(view[offset:offset + window])
            offset += len(chunk)
            try:
                self.h2.send_data(stream.id, chunk, end_stream=offset >= len(body))
            except h2.exceptions.ProtocolError as e:  # the stream was closed or reset meanwhile
                stream.fail(Http2Error(f"cannot send the request body: {e}"))
                return
        self._flush()

    async def _window(self, stream: _Stream) -> int:
        """How much of a body may go out now (one frame at most); 0 after waiting for the peer's
        window to grow (the caller checks the stream again, then asks once more)."""
        window = min(self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size)
        if window > 0:
            return window
        self._flush()
        stream.window = asyncio.get_running_loop().create_future()
        try:
            await stream.window
        finally:
            stream.window = None
        return 0

    async def send_more(self, stream: _Stream, data: bytes) -> None:
        """Part of a duplex request's body, in frames as the peer's windows allow (without ending
        it). Raises what failed the stream, or Http2Error once the request or response ended."""
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            if stream.error is not None:
                raise stream.error
            if stream.local_ended or stream.remote_ended:
                raise Http2Error("the stream has ended")
            window = await self._window(stream)
            if not window:
                continue
            chunk = bytes(view[offset:offset + window])
            offset += len(chunk)
            try:
                self.h2.send_data(stream.id, chunk)
            except h2.exceptions.ProtocolError as e:  # the stream was closed or reset meanwhile
                stream.fail(Http2Error(f"cannot send the request body: {e}"))
                raise cast(Exception, stream.error) from None
        self._flush()

    def end_request(self, stream: _Stream) -> None:
        """END_STREAM on a duplex request (once; nothing once the stream failed)."""
        if stream.local_ended:
            return
        stream.local_ended = True
        if stream.error is None and not self.closed:
            try:
                self.h2.end_stream(stream.id)
            except h2.exceptions.ProtocolError:
                pass  # reset or closed meanwhile: there is nothing left to end
            self._flush()
        self._retire_duplex(stream)

    def consumed(self, stream: _Stream, size: int) -> None:
        """The reader took `size` flow-controlled bytes of a duplex response: the peer may send more."""
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream.id)
            self._flush()

    def _retire_duplex(self, stream: _Stream) -> None:
        """A duplex stream leaves the connection once both halves ended (or it failed)."""
        if ((stream.local_ended and stream.remote_ended) or stream.error is not None) \
                and self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self._finished_stream()

    def _cancel_upload(self, stream_id: int) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass  # closed on both sides already
        self._flush()

    def reset(self, stream: _Stream) -> None:
        """Give up a stream (timed out, cancelled): RST_STREAM CANCEL, the connection lives on."""
        if stream.duplex:
            stream.local_ended = True
            unread = sum(size for _, size in stream.chunks)
            stream.chunks.clear()
            stream.fail(Http2Error("the stream was reset"))
            if unread and not self.closed:
                self.h2.acknowledge_received_data(unread, stream.id)  # the connection's window comes back
        if self.streams.pop(stream.id, None) is None or self.closed:
            self._flush()
            return
        try:
            self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass  # the stream had closed already
        self._finished_stream()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if not self.got_bytes:
            self.got_bytes = True
            if data.startswith(b"HTTP/"):
                self._fail_all(NotHttp2(f"the deployment answered in HTTP/1.x: {data[:40]!r}"))
                self.abort()
                return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail_all(Http2Error(f"HTTP/2 protocol error: {e}"))
            self._flush()
            self.abort()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id) if event.stream_id else None
            if stream is not None and stream.duplex:
                stream.answered = True
                if stream.discarding:
                    if event.flow_controlled_length:
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    return
                stream.chunks.append((event.data, event.flow_controlled_length))
                stream.wake_reader()
                return
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.body.append(event.data)
                stream.size += len(event.data)
                if stream.size > stream.max_body_bytes:
                    self._end_stream(stream, BodyTooLarge(f"the response exceeds {stream.max_body_bytes} bytes"))
                    self.reset(stream)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.answered = True
                for name, value in event.headers:
                    stream.headers[bytes(name).decode("latin-1")] = bytes(value).decode("latin-1")
                status = stream.headers.pop(":status", "")
                stream.status = int(status) if status.isdigit() else 0
                if stream.duplex and not stream.waiter.done():
                    stream.waiter.set_result(Response(stream.status, stream.headers, b""))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.duplex:
                if stream.status == 0:
                    stream.fail(Http2Error("the stream ended without a response"))
                stream.remote_ended = True
                stream.wake_reader()
                stream.wake()  # a send waiting for window learns that the stream has ended
                self._retire_duplex(stream)
            elif stream is not None:
                del self.streams[event.stream_id]
                self._end_stream(stream, None)
                self._finished_stream()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and not stream.answered
                stream.fail(Http2Error(f"the deployment reset the stream ({_code(event.error_code)})", refused))
                self._finished_stream()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in self.streams.values():
                stream.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [s for s in self.streams if s > last]:
                self.streams.pop(stream_id).fail(Http2Error("the deployment went away (GOAWAY)", retryable=True))
            self._pool.forget(self)
            if not self.streams:
                self.close()
        elif (isinstance(event, h2.events.InformationalResponseReceived | h2.events.TrailersReceived)
              and event.stream_id in self.streams):
            self.streams[event.stream_id].answered = True

    def _end_stream(self, stream: _Stream, exc: Exception | None) -> None:
        if stream.waiter.done():
            return
        if exc is not None:
            stream.fail(exc)
        elif stream.status == 0:
            stream.fail(Http2Error("the stream ended without a response"))
        else:
            stream.waiter.set_result(Response(stream.status, stream.headers, b"".join(stream.body)))

    def _finished_stream(self) -> None:
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.going_away:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        reason = f": {exc}" if exc else ""
        streams, self.streams = self.streams, {}
        for stream in streams.values():  # a stream not answered on a reused connection may go again
            stream.fail(Http2Error(f"the deployment closed the connection{reason}",
                                   retryable=self.reused and not stream.answered))

    def _fail_all(self, exc: Exception) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(exc)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """Close politely (GOAWAY); streams still open fail."""
        if self.closed:
            return
        try:
            self.h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self.abort(graceful=True)

    def abort(self, graceful: bool = False) -> None:
        self.closed = True
        self._pool.forget(self)
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()
        self._fail_all(Http2Error("connection closed"))


def _code(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


class H2Pool:
    """h2c connections per (host, port). `request` any number of times concurrently; `close`."""

    def __init__(self) -> None:
        self._conns: dict[tuple[str, int], list[_Connection]] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def request(self, host: str, port: int, request: Request, timeout_s: float, connect_timeout_s: float,
                      max_body_bytes: int = 1 << 62) -> Response:
        """Send `request`; the whole response. Raises TimeoutError (past `timeout_s` in all, or
        `connect_timeout_s` to connect), OSError (connection), NotHttp2 or Http2Error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        key = (host, port)
        conn = self._pick(key)
        if conn is None:
            conn = await self._connect(key, min(connect_timeout_s, max(deadline - loop.time(), 0.0)))
        try:
            return await self._exchange(conn, request, deadline, max_body_bytes)
        except Http2Error as e:
            if isinstance(e, NotHttp2) or not e.retryable:
                raise
        # the peer refused the stream, went away, or closed the idle connection as we sent: once more,
        # on another connection
        failed = conn
        conn = self._pick(key, avoid=failed)
        if conn is None:
            conn = await self._connect(key, min(connect_timeout_s, max(deadline - loop.time(), 0.0)), avoid=failed)
        return await self._exchange(conn, request, deadline, max_body_bytes)

    def _pick(self, key: tuple[str, int], avoid: _Connection | None = None) -> _Connection | None:
        conns = self._conns.get(key)
        if not conns:
            return None
        now = time.monotonic()
        for conn in conns:
            if conn is not avoid and conn.usable(now):
                if conn.got_bytes:
                    conn.reused = True
                return conn
        for conn in [c for c in conns if not c.streams and not c.usable(now)]:
            conn.close()  # idle for too long: the server may close it any moment
        return None

    async def _connect(self, key: tuple[str, int], timeout_s: float, avoid: _Connection | None = None) -> _Connection:
        """A connection with a free stream slot (other than `avoid`): the one another request is
        opening if it has room when ready, else a new one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (pending := self._connecting.get(key)) is not None:
            await asyncio.wait_for(asyncio.shield(pending), max(deadline - loop.time(), 0.0))
            conn = self._pick(key, avoid)
            if conn is not None:
                return conn
        conns = self._conns.setdefault(key, [])
        if len(conns) >= MAX_CONNECTIONS_PER_HOST:
            raise Http2Error(f"all {MAX_CONNECTIONS_PER_HOST} connections to {key[0]}:{key[1]} are busy")
        conn = _Connection(self, key)
        future: asyncio.Future[_Connection] = loop.create_future()
        self._connecting[key] = future
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except BaseException as e:
            future.set_exception(e if isinstance(e, Exception) else ConnectionError("connect cancelled"))
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._connecting[key]
        self._all.add(conn)
        conns.append(conn)
        future.set_result(conn)
        return conn

    async def open(self, host: str, port: int, request: Request, connect_timeout_s: float) -> Duplex:
        """Open a duplex stream: `request`'s headers go out (it has no body: that goes through
        `Duplex.send`), the request stays open. Raises TimeoutError (connecting), OSError
        (connection), Http2Error. Not retried on another connection: what fails later fails the
        stream (`Duplex`)."""
        if request.body:
            raise ValueError("a duplex request's body goes through Duplex.send")
        key = (host, port)
        conn = self._pick(key)
        if conn is None:
            conn = await self._connect(key, connect_timeout_s)
        return Duplex(conn, conn.open(request, 1 << 62, duplex=True))

    async def _exchange(self, conn: _Connection, request: Request, deadline: float,
                        max_body_bytes: int) -> Response:
        loop = asyncio.get_running_loop()
        stream = conn.open(request, max_body_bytes)
        timer = loop.call_at(deadline, _expire, stream)
        try:
            if request.body:
                await conn.send_body(stream, request.body)
            return await stream.waiter
        except BaseException:
            conn.reset(stream)  # timed out, cancelled or failed: the stream goes, the connection stays
            if stream.waiter.done() and not stream.waiter.cancelled():
                stream.waiter.exception()  # retrieved (the body's window wait raised it first)
            raise
        finally:
            timer.cancel()

    def forget(self, conn: _Connection) -> None:
        """A connection closed or is going away: never hand it out again."""
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
        if conn.closed:
            self._all.discard(conn)

    def close(self) -> None:
        """Close every connection (requests in flight fail)."""
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._conns.clear()


class Duplex:
    """A request whose body is sent piece by piece (`send`, then `end`) while its response is read
    piece by piece (`response` for the head, then `read`). One sender and one reader at a time;
    `reset` gives it up from either side. Failures (a reset by the peer, the connection lost)
    raise Http2Error from whichever call comes next."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: _Connection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    async def response(self) -> Response:
        """The response's status and headers (its `body` is empty: the data comes from `read`)."""
        return await asyncio.shield(self._stream.waiter)

    async def send(self, data: bytes) -> None:
        """Send `data` on the request, as the peer's windows allow."""
        if data:
            await self._conn.send_more(self._stream, data)

    def end(self) -> None:
        """End the request (END_STREAM); the response goes on. Idempotent."""
        self._conn.end_request(self._stream)

    def interrupt(self) -> None:
        """Make the read that waits (or the next one) return None at once, data or not."""
        self._stream.interrupted = True
        self._stream.wake_reader()

    async def read(self) -> bytes | None:
        """The next piece of the response's body; b"" once it has ended; None when interrupted."""
        stream = self._stream
        while True:
            if stream.interrupted:
                stream.interrupted = False
                return None
            if stream.chunks:
                data, size = stream.chunks.popleft()
                self._conn.consumed(stream, size)
                if data:
                    return data
                continue
            if stream.error is not None:
                self._retrieved()
                raise stream.error
            if stream.remote_ended:
                return b""
            stream.reader = asyncio.get_running_loop().create_future()
            try:
                await stream.reader
            finally:
                stream.reader = None

    @property
    def ended(self) -> bool:
        """The response has ended (everything of it may not be read yet)."""
        return self._stream.remote_ended

    def reset(self) -> None:
        """Give the stream up (RST_STREAM CANCEL); the connection lives on. Idempotent."""
        self._conn.reset(self._stream)
        self._retrieved()

    def discard(self, grace_s: float) -> None:
        """End the request and drop the rest of the response without a reader: what arrives is
        acknowledged and thrown away, and the stream leaves its connection when the response ends,
        or is reset after `grace_s`. Nothing may be read or sent after this."""
        stream = self._stream
        self.end()
        self._retrieved()
        unread = sum(size for _, size in stream.chunks)
        stream.chunks.clear()
        stream.discarding = True
        self._conn.consumed(stream, unread)  # the connection's window comes back in any case
        if stream.error is None and not stream.remote_ended:
            asyncio.get_running_loop().call_later(grace_s, self._overdue)

    def _overdue(self) -> None:
        if self._stream.error is None and not self._stream.remote_ended:
            self._conn.reset(self._stream)

    def _retrieved(self) -> None:
        """A head that failed counts as seen (nobody may ask for it once the stream failed)."""
        waiter = self._stream.waiter
        if waiter.done() and not waiter.cancelled():
            waiter.exception()


def _expire(stream: _Stream) -> None:
    stream.fail(TimeoutError("the deployment did not answer in time"))
