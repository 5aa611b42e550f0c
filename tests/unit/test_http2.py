"""The h2c client of discovery and the invoker (`shardgate/http2.py`), against real servers.

hypercorn (the server the Python SDK runs under) answers the ordinary cases; raw asyncio servers
driving an `h2` server connection produce exactly the frames a test needs (GOAWAY mid-flight, a
refused stream, silence, a connection closed after a request); an aiohttp server stands for a
deployment that speaks only HTTP/1.1. Under asyncio's loop and uvloop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import uvloop
from aiohttp import web
from hypercorn.asyncio import serve
from hypercorn.config import Config

from shardgate import http2
from shardgate.http2 import H2Pool, Http2Error, NotHttp2, encode_request, parse_target

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


def _request(body: bytes = b"hi", headers: dict[str, str] | None = None, method: str = "POST") -> http2.Request:
    return encode_request(method, "127.0.0.1", "/echo", headers or {"content-type": "a/b"}, body)


# ---- hypercorn --------------------------------------------------------------------------------

@dataclass
class Seen:
    clients: set[tuple[str, int]] = field(default_factory=set)  # distinct client (host, port): connections
    headers: list[dict[str, str]] = field(default_factory=list)


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The ASGI lifespan protocol, nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def _echo_app(seen: Seen) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        seen.clients.add(tuple(scope["client"]))
        seen.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"x/echo"), (b"x-http-version", scope["http_version"].encode())]})
        await send({"type": "http.response.body", "body": body * 2})

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _hypercorn(app: Callable[..., Awaitable[None]]) -> AsyncIterator[int]:
    """`app` served by hypercorn on a free port (HTTP/1.1 and h2c), once it answers; its port."""
    port = _free_port()
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        with contextlib.closing(H2Pool()) as pool:
            for _ in range(200):  # until it listens
                try:
                    await pool.request(HOST, port, _request(), 2, 2)
                    break
                except OSError:
                    await asyncio.sleep(0.02)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def hypercorn_server() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    async with _hypercorn(_echo_app(seen)) as port:
        seen.clients.clear()
        seen.headers.clear()
        yield port, seen


async def test_a_request_and_its_response(hypercorn_server: tuple[int, Seen]) -> None:
    port, seen = hypercorn_server
    with contextlib.closing(H2Pool()) as pool:
        req = _request(b"hello", {"Content-Type": "a/b", "Connection": "keep-alive", "X-Name": "v"})
        resp = await pool.request(HOST, port, req, 5, 2)
    assert resp.status == 200 and resp.body == b"hellohello"
    assert resp.headers["content-type"] == "x/echo" and resp.headers["x-http-version"] == "2"
    sent = seen.headers[0]
    assert sent["content-type"] == "a/b" and sent["x-name"] == "v" and "connection" not in sent
    assert sent["content-length"] == "5"


async def test_large_bodies_both_ways_follow_flow_control(hypercorn_server: tuple[int, Seen]) -> None:
    """hypercorn grants 65,535-byte windows: a 300 KB body needs several window updates, and the
    600 KB answer crosses our own windows' acknowledgements."""
    port, _ = hypercorn_server
    with contextlib.closing(H2Pool()) as pool:
        bodies = [bytes([i]) * 300_000 for i in range(4)]
        resps = await asyncio.gather(*(pool.request(HOST, port, _request(b), 10, 2) for b in bodies))
    assert [r.body for r in resps] == [b * 2 for b in bodies]


async def test_concurrent_requests_share_connections_up_to_the_stream_limit(
        hypercorn_server: tuple[int, Seen]) -> None:
    port, seen = hypercorn_server
    with contextlib.closing(H2Pool()) as pool:
        resps = await asyncio.gather(*(pool.request(HOST, port, _request(str(i).encode()), 10, 2) for i in range(150)))
    assert [r.body for r in resps] == [str(i).encode() * 2 for i in range(150)]
    assert len(seen.clients) == 2  # 100 streams on the first connection, the rest on a second


async def test_a_connection_is_retired_before_hypercorn_goes_away(hypercorn_server: tuple[int, Seen]) -> None:
    """hypercorn sends GOAWAY after 1,000 requests and then cannot answer the streams in flight,
    which would hang until its 5 s idle close: every request here must answer within 3 s."""
    port, seen = hypercorn_server
    with contextlib.closing(H2Pool()) as pool:
        async def client(n: int) -> None:
            for i in range(120):
                resp = await pool.request(HOST, port, _request(f"{n}-{i}".encode()), 3, 2)
                assert resp.body == f"{n}-{i}".encode() * 2

        await asyncio.gather(*(client(n) for n in range(10)))
    assert len(seen.clients) == 1200 // http2.MAX_STREAMS_PER_CONNECTION + 1


async def test_an_idle_connection_is_not_reused(hypercorn_server: tuple[int, Seen],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    port, seen = hypercorn_server
    with contextlib.closing(H2Pool()) as pool:
        await pool.request(HOST, port, _request(), 5, 2)
        await pool.request(HOST, port, _request(), 5, 2)
        assert len(seen.clients) == 1
        monkeypatch.setattr(http2, "IDLE_S", 0.0)  # every idle connection is now too old
        await pool.request(HOST, port, _request(), 5, 2)
    assert len(seen.clients) == 2


# ---- raw h2 servers -------------------------------------------------------------------------------

OnRequest = Callable[[h2.connection.H2Connection, int, int, int], Awaitable[bool]]
"""(server connection, stream id, connection number, request number on it) -> keep serving?"""


@dataclass
class RawServer:
    port: int
    connections: int = 0
    resets: list[int] = field(default_factory=list)  # stream ids the client reset


def respond(conn: h2.connection.H2Connection, stream_id: int, body: bytes, status: int = 200) -> None:
    """A whole response (the body must fit the client's windows: it is never short of them here)."""
    conn.send_headers(stream_id, [(":status", str(status)), ("content-type", "x/raw")])
    size = conn.max_outbound_frame_size
    chunks = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    for i, chunk in enumerate(chunks):
        conn.send_data(stream_id, chunk, end_stream=i == len(chunks) - 1)


@contextlib.asynccontextmanager
async def _serving(on_request: OnRequest, batch: int = 1) -> AsyncIterator[tuple[RawServer, H2Pool]]:
    """A raw h2 server (`_raw_server`) and a pool, both closed afterwards."""
    server, state = await _raw_server(on_request, batch)
    try:
        with contextlib.closing(H2Pool()) as pool:
            yield state, pool
    finally:
        server.close()


async def _raw_server(on_request: OnRequest, batch: int = 1) -> tuple[asyncio.Server, RawServer]:
    """An h2 server calling `on_request` for each request; on the first connection only once
    `batch` requests have arrived."""
    state = RawServer(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        number = state.connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        pending: list[int] = []
        served = 0
        size = batch if number == 1 else 1
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        pending.append(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        state.resets.append(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                while len(pending) >= size:
                    for stream_id in pending[:size]:
                        served += 1
                        if not await on_request(conn, stream_id, number, served):
                            writer.write(conn.data_to_send())
                            writer.close()
                            return
                    del pending[:size]
                writer.write(conn.data_to_send())
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    return server, state


async def test_goaway_retries_only_the_streams_the_server_never_took() -> None:
    """The first connection answers its first stream, then GOAWAY(last=1): the two other streams
    go out again on a second connection, which answers them."""
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        if number == 1 and served == 1:
            respond(conn, stream_id, b"first")
            conn.close_connection(last_stream_id=stream_id)
            return True
        if number > 1:
            respond(conn, stream_id, b"again")
        return True

    async with _serving(on_request, batch=3) as (state, pool):
        resps = await asyncio.gather(*(pool.request(HOST, state.port, _request(), 5, 2) for _ in range(3)))
    assert sorted(r.body for r in resps) == [b"again", b"again", b"first"]
    assert state.connections == 2


async def test_a_refused_stream_is_sent_again_on_a_new_connection() -> None:
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        if number == 1:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            respond(conn, stream_id, b"ok")
        return True

    async with _serving(on_request) as (state, pool):
        resp = await pool.request(HOST, state.port, _request(), 5, 2)
    assert resp.body == b"ok" and state.connections == 2


async def test_another_reset_fails_the_request_and_is_not_retried() -> None:
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        return True

    async with _serving(on_request) as (state, pool):
        with pytest.raises(Http2Error, match="INTERNAL_ERROR"):
            await pool.request(HOST, state.port, _request(), 5, 2)
    assert state.connections == 1


async def test_a_reused_connection_closed_under_a_request_is_retried_once() -> None:
    """Like hypercorn's idle close: the server took the second request, then closed the connection
    without an answer or a GOAWAY."""
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        if served == 2:
            return False  # close without answering
        respond(conn, stream_id, f"{number}".encode())
        return True

    async with _serving(on_request) as (state, pool):
        first = await pool.request(HOST, state.port, _request(), 5, 2)
        second = await pool.request(HOST, state.port, _request(), 5, 2)
    assert (first.body, second.body, state.connections) == (b"1", b"2", 2)


async def test_a_silent_server_times_out_and_the_stream_is_reset() -> None:
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        if served == 2:
            respond(conn, stream_id, b"late but fine")
        return True  # the first request is never answered

    async with _serving(on_request) as (state, pool):
        with pytest.raises(TimeoutError):
            await pool.request(HOST, state.port, _request(), 0.3, 2)
        resp = await pool.request(HOST, state.port, _request(), 5, 2)  # the connection lives on
    assert resp.body == b"late but fine" and state.connections == 1 and state.resets == [1]


async def test_a_response_larger_than_allowed_is_refused() -> None:
    async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
        respond(conn, stream_id, b"x" * 5000)
        return True

    async with _serving(on_request) as (state, pool):
        with pytest.raises(http2.BodyTooLarge):
            await pool.request(HOST, state.port, _request(method="GET", body=b""), 5, 2, max_body_bytes=4096)


async def test_an_http1_only_server_is_recognised() -> None:
    app = web.Application()
    app.router.add_get("/echo", lambda r: web.Response(text="http/1.1 only"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    with contextlib.closing(H2Pool()) as pool:
        with pytest.raises(NotHttp2):
            await pool.request(HOST, port, _request(method="GET", body=b""), 5, 2)
        await runner.cleanup()


async def test_nothing_listening_is_an_os_error() -> None:
    pool = H2Pool()
    with pytest.raises(OSError):
        await pool.request(HOST, _free_port(), _request(), 5, 2)


def test_request_encoding() -> None:
    req = encode_request("POST", "h:1", "/p?q", {"X-A": "1", "Transfer-Encoding": "chunked", "TE": "gzip",
                                                 "te": "trailers"}, b"abc")
    assert req.headers == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h:1"), (b":path", b"/p?q"),
                           (b"x-a", b"1"), (b"te", b"trailers"), (b"content-length", b"3")]
    assert encode_request("GET", "h", "/", {"x-u": "\u0100"}, b"").headers[-1] == (b"x-u", "\u0100".encode())
    for bad in ({"x-b": "a\r\nb"}, {"a b": "1"}, {":path": "/x"}, {"n\u00e9": "1"}):
        with pytest.raises(Http2Error):
            encode_request("GET", "h", "/", bad, b"")


def test_targets() -> None:
    assert parse_target("http://127.0.0.1:9080/base/invoke/S/h") == http2.Target(
        "127.0.0.1", 9080, "127.0.0.1:9080", "/base/invoke/S/h")
    assert parse_target("http://[::1]/a b") == http2.Target("::1", 80, "[::1]", "/a%20b")
    assert parse_target("https://example.com/") is None
    assert parse_target("http://b\u00fccher.example/") is None
    assert parse_target("http://u:p@example.com/") is None


def test_the_pool_works_under_uvloop() -> None:
    async def main() -> bytes:
        async def on_request(conn: h2.connection.H2Connection, stream_id: int, number: int, served: int) -> bool:
            respond(conn, stream_id, b"uv" * 40_000)
            return True

        async with _serving(on_request) as (state, pool):
            resp = await pool.request(HOST, state.port, _request(b"z" * 200_000), 5, 2)
        return resp.body

    assert uvloop.run(main()) == b"uv" * 40_000


# ---- duplex streams (a bidirectional attempt's transport) ---------------------------------------

def _upper_app() -> Callable[..., Awaitable[None]]:
    """Answers at once and then echoes each piece of the request, upper-cased, as it arrives; ends
    its response when the request ends (as an SDK in bidirectional mode does)."""
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x/upper")]})
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            if message.get("body"):
                await send({"type": "http.response.body", "body": message["body"].upper(), "more_body": True})
            if not message.get("more_body"):
                await send({"type": "http.response.body", "body": b""})
                return

    return app


@pytest.fixture
async def upper_server() -> AsyncIterator[int]:
    async with _hypercorn(_upper_app()) as port:
        yield port


async def _read_exactly(duplex: http2.Duplex, size: int) -> bytes:
    got = b""
    while len(got) < size:
        piece = await asyncio.wait_for(duplex.read(), 5)
        assert piece, f"the response ended after {len(got)} of {size} bytes"
        got += piece
    return got


async def test_a_duplex_stream_answers_each_piece_before_the_request_ends(upper_server: int) -> None:
    with contextlib.closing(H2Pool()) as pool:
        duplex = await pool.open(HOST, upper_server, _request(b""), 2)
        head = await asyncio.wait_for(duplex.response(), 5)
        assert head.status == 200 and head.headers["content-type"] == "x/upper"
        await duplex.send(b"ping")
        assert await _read_exactly(duplex, 4) == b"PING"  # answered while the request is still open
        await duplex.send(b"two")
        assert await _read_exactly(duplex, 3) == b"TWO"
        duplex.end()
        duplex.end()  # idempotent
        assert await asyncio.wait_for(duplex.read(), 5) == b""
        assert duplex.ended
        with pytest.raises(Http2Error, match="ended"):
            await duplex.send(b"late")
        # both halves ended: the stream left the connection, which serves the next request
        conns = [c for cs in pool._conns.values() for c in cs]
        assert len(conns) == 1 and not conns[0].streams
        resp = await pool.request(HOST, upper_server, _request(b"rr"), 5, 2)
        assert resp.body == b"RR"


async def test_a_duplex_stream_carries_large_pieces_both_ways(upper_server: int) -> None:
    """hypercorn grants 65,535-byte windows: a 300 KB piece waits for its window updates while the
    reader takes the answer, which crosses our own windows' acknowledgements."""
    with contextlib.closing(H2Pool()) as pool:
        duplex = await pool.open(HOST, upper_server, _request(b""), 2)
        await duplex.send(b"first:")
        piece = bytes(range(97, 123)) * 12_000
        reader = asyncio.ensure_future(_read_exactly(duplex, 6 + len(piece)))
        await asyncio.wait_for(duplex.send(piece), 10)
        assert await asyncio.wait_for(reader, 10) == b"FIRST:" + piece.upper()
        duplex.end()
        assert await asyncio.wait_for(duplex.read(), 5) == b""


async def _duplex_server(on_event: Callable[[h2.connection.H2Connection, h2.events.Event], None]
                         ) -> tuple[asyncio.Server, int]:
    """A raw h2 server handing every event to `on_event`, which answers through the connection."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    on_event(conn, event)
                writer.write(conn.data_to_send())
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def _duplex_serving(on_event: Callable[[h2.connection.H2Connection, h2.events.Event], None]
                          ) -> AsyncIterator[tuple[int, H2Pool]]:
    """A raw h2 server (`_duplex_server`) and a pool, both closed afterwards."""
    server, port = await _duplex_server(on_event)
    try:
        with contextlib.closing(H2Pool()) as pool:
            yield port, pool
    finally:
        server.close()


async def test_a_duplex_reader_that_falls_behind_holds_the_peer_back() -> None:
    """Data a duplex reader has not taken is not acknowledged: the server can send one stream
    window and no more until the reader reads; then the rest arrives."""
    window = http2.STREAM_WINDOW_BYTES
    total = window + 100_000
    sent = {"bytes": 0, "started": 0}

    def push(conn: h2.connection.H2Connection, stream_id: int) -> None:
        while sent["started"] and sent["bytes"] < total:
            room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, total - sent["bytes"])
            if room <= 0:
                return
            conn.send_data(stream_id, b"d" * room)
            sent["bytes"] += room

    def on_event(conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id == 1:
            conn.send_headers(1, [(":status", "200")])
            sent["started"] = 1
            push(conn, 1)
        elif isinstance(event, h2.events.WindowUpdated) and event.stream_id in (0, 1):
            push(conn, 1)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id != 1:
            respond(conn, event.stream_id, b"pong")

    async with _duplex_serving(on_event) as (port, pool):
        duplex = await pool.open(HOST, port, _request(b""), 2)
        await asyncio.wait_for(duplex.response(), 5)
        stream = duplex._stream
        while sum(len(d) for d, _ in stream.chunks) < window:  # the first window arrives unread
            stream.reader = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(stream.reader, 5)
            stream.reader = None
        # a full round trip on the same connection: any acknowledgement would have let more through
        assert (await pool.request(HOST, port, _request(b"ping"), 5, 2)).body == b"pong"
        assert sum(len(d) for d, _ in stream.chunks) == window == sent["bytes"]
        assert await _read_exactly(duplex, total) == b"d" * total  # reading lets the rest come


async def test_a_duplex_stream_the_peer_resets_fails_its_reader_and_sender() -> None:
    def on_event(conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id == 1:
            conn.send_headers(1, [(":status", "200")])
            conn.send_data(1, b"partial")
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
            conn.acknowledge_received_data(event.flow_controlled_length, 1)
            conn.reset_stream(1, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id != 1:
            respond(conn, event.stream_id, b"still here")

    async with _duplex_serving(on_event) as (port, pool):
        duplex = await pool.open(HOST, port, _request(b""), 2)
        assert await asyncio.wait_for(duplex.read(), 5) == b"partial"
        await duplex.send(b"x")
        with pytest.raises(Http2Error, match="INTERNAL_ERROR"):
            await asyncio.wait_for(duplex.read(), 5)
        with pytest.raises(Http2Error, match="INTERNAL_ERROR"):
            await duplex.send(b"y")
        duplex.reset()  # harmless after the peer's reset
        assert (await pool.request(HOST, port, _request(), 5, 2)).body == b"still here"


async def test_resetting_a_duplex_stream_frees_its_slot_and_tells_the_peer() -> None:
    resets: list[int] = []
    got_reset = asyncio.Event()

    def on_event(conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id == 1:
            conn.send_headers(1, [(":status", "200")])
            conn.send_data(1, b"unread")
        elif isinstance(event, h2.events.StreamReset):
            resets.append(event.stream_id)
            got_reset.set()

    async with _duplex_serving(on_event) as (port, pool):
        duplex = await pool.open(HOST, port, _request(b""), 2)
        await duplex.send(b"hello")
        await asyncio.wait_for(duplex.response(), 5)
        duplex.reset()
        await asyncio.wait_for(got_reset.wait(), 5)
        assert resets == [1]
        conns = [c for cs in pool._conns.values() for c in cs]
        assert len(conns) == 1 and not conns[0].streams
        with pytest.raises(Http2Error, match="reset"):
            await duplex.read()


async def test_a_discarded_duplex_stream_is_drained_without_a_reader_then_leaves() -> None:
    """After the terminal frame nobody reads: what still comes is acknowledged and dropped, and
    the stream leaves its connection when the response ends (a silent one is reset after the grace)."""
    seen: dict[str, int] = {"ended": 0}
    finish = asyncio.Event()

    def on_event(conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            conn.send_headers(event.stream_id, [(":status", "200")])
            conn.send_data(event.stream_id, b"x" * 1000)
        elif isinstance(event, h2.events.StreamEnded):  # our END_STREAM: the rest of the answer, then its end
            seen["ended"] += 1
            if event.stream_id == 1:
                for _ in range(5):
                    conn.send_data(1, b"y" * 14_000)
                conn.end_stream(1)
        elif isinstance(event, h2.events.StreamReset):
            finish.set()

    async with _duplex_serving(on_event) as (port, pool):
        first = await pool.open(HOST, port, _request(b""), 2)
        assert await asyncio.wait_for(first.read(), 5)
        first.discard(5.0)
        conn = next(c for cs in pool._conns.values() for c in cs)
        await poll_until(lambda: not conn.streams)
        silent = await pool.open(HOST, port, _request(b""), 2)  # this one never ends its answer
        await asyncio.wait_for(silent.response(), 5)
        silent_id = silent._stream.id
        silent.discard(0.05)
        await asyncio.wait_for(finish.wait(), 5)
        assert silent_id not in conn.streams and seen["ended"] == 2


async def poll_until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Wait (polling, bounded) until `condition()` holds."""
    async with asyncio.timeout(deadline_s):
        while not condition():
            await asyncio.sleep(0.01)
