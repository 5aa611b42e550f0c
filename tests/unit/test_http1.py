"""The lean HTTP/1.1 client of the invoker (`partition/http1.py`).

The parser is fed real response bytes, whole and cut at every byte; the pool talks to real
loopback servers: an aiohttp server, and raw asyncio servers that answer exactly the bytes a
test needs (chunked bodies, closing connections, silence), under asyncio's and uvloop's loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import web

from partition.http1 import Http1Error, Http1Pool, Response, ResponseParser, encode_request

CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.restate.invocation.v5\r\n"
           b"transfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 5\r\n\r\nhello"


def _parse_in_pieces(data: bytes, cut: int) -> Response:
    parser = ResponseParser()
    assert parser.feed(data[:cut]) is None or cut == len(data)
    resp = parser.feed(data[cut:])
    assert resp is not None
    return resp


@pytest.mark.parametrize("data", [CHUNKED, LENGTH], ids=["chunked", "length"])
def test_a_response_cut_anywhere_parses_the_same(data: bytes) -> None:
    whole = ResponseParser().feed(data)
    assert whole is not None and whole.status == 200 and whole.keep_alive
    for cut in range(len(data)):
        assert _parse_in_pieces(data, cut) == whole


def test_chunked_body_and_headers() -> None:
    resp = ResponseParser().feed(CHUNKED)
    assert resp is not None
    assert resp.body == b"hello world"
    assert resp.headers["content-type"] == "application/vnd.restate.invocation.v5"


def test_interim_responses_are_skipped_and_close_is_honoured() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno"
    resp = ResponseParser().feed(data)
    assert resp == Response(500, {"connection": "close", "content-length": "2"}, b"no", False)


def test_a_body_without_length_ends_with_the_connection() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nsome") is None
    assert parser.feed(b" bytes") is None
    resp = parser.feed_eof()
    assert resp.body == b"some bytes" and not resp.keep_alive


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel",  # cut short
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\n",  # head cut short
])
def test_a_response_cut_short_by_the_connection_is_an_error(data: bytes) -> None:
    parser = ResponseParser()
    assert parser.feed(data) is None
    with pytest.raises(Http1Error):
        parser.feed_eof()


@pytest.mark.parametrize("data", [
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiXX",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi and more",
])
def test_malformed_responses_are_errors(data: bytes) -> None:
    with pytest.raises(Http1Error):
        ResponseParser().feed(data)


def test_request_head_and_header_injection() -> None:
    head = encode_request("127.0.0.1:9080", "/invoke/S/h", {"content-type": "a/b", "x-k": "v"}, b"12345")
    assert head == (b"POST /invoke/S/h HTTP/1.1\r\nhost: 127.0.0.1:9080\r\ncontent-length: 5\r\n"
                    b"content-type: a/b\r\nx-k: v\r\n\r\n")
    assert encode_request("h", "/", {"x-u": "\u0100"}, b"").endswith("x-u: \u0100\r\n\r\n".encode())  # UTF-8
    for bad in ({"x-k": "v\r\nx-evil: 1"}, {"x-k\n": "v"}, {"a:b": "v"}, {"n\u00e9": "v"}):
        with pytest.raises(Http1Error):
            encode_request("h", "/", bad, b"")


# ---- the pool against real servers ----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


def _post(pool: Http1Pool, port: int, body: bytes = b"ping", timeout_s: float = 5.0) -> Awaitable[Response]:
    head = encode_request(f"127.0.0.1:{port}", "/invoke/S/h", {"content-type": "a/b"}, body)
    return pool.post("127.0.0.1", port, head, body, timeout_s, 2.0)


@pytest.fixture
async def aiohttp_port() -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=(await request.read())[::-1], content_type="a/b")

    app = web.Application()
    app.router.add_post("/invoke/S/h", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_keep_alive_reuses_one_connection(aiohttp_port: int) -> None:
    pool = Http1Pool()
    try:
        for n in range(5):
            resp = await asyncio.wait_for(_post(pool, aiohttp_port, f"req{n}".encode()), 5)
            assert resp.status == 200 and resp.body == f"req{n}".encode()[::-1]
        assert len(pool._all) == 1
        many = await asyncio.wait_for(asyncio.gather(*(_post(pool, aiohttp_port, b"x" * n) for n in range(20))), 5)
        assert [r.body for r in many] == [b"x" * n for n in range(20)]
        assert 1 <= len(pool._all) <= 20
    finally:
        pool.close()


async def test_a_server_closing_an_idle_connection_is_retried_on_a_new_one() -> None:
    """The server answers one request per connection and closes it only after the next request
    arrived on it: the keep-alive race. The client retries once on a fresh connection."""
    connections = 0

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # a second request: drop it unanswered
        writer.close()

    server, port = await _raw_server(one_per_connection)
    pool = Http1Pool()
    try:
        for n in range(3):
            resp = await asyncio.wait_for(_post(pool, port, f"r{n}".encode()), 5)
            assert resp.body == f"r{n}".encode()
        assert connections == 3
    finally:
        pool.close()
        server.close()


async def test_a_response_cut_short_fails_and_is_not_retried() -> None:
    requests = 0

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await _read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        writer.close()

    server, port = await _raw_server(cut)
    pool = Http1Pool()
    try:
        with pytest.raises(Http1Error):
            await asyncio.wait_for(_post(pool, port), 5)
        assert requests == 1
    finally:
        pool.close()
        server.close()


async def test_a_silent_server_times_out_and_its_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    server, port = await _raw_server(silent)
    pool = Http1Pool()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_post(pool, port, timeout_s=0.3), 5)
        assert time.monotonic() - started < 3
        assert not pool._all and not any(pool._idle.values())
    finally:
        pool.close()
        server.close()


async def test_nothing_listening_is_an_os_error() -> None:
    server, port = await _raw_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    pool = Http1Pool()
    with pytest.raises(OSError):
        await asyncio.wait_for(_post(pool, port), 5)


def test_the_pool_works_under_uvloop() -> None:
    """The worker runs uvloop, whose transports are not asyncio.Transport subclasses."""
    async def run() -> list[bytes]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    body = await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                             % (len(body), body))

        server, port = await _raw_server(echo)
        pool = Http1Pool()
        try:
            return [(await asyncio.wait_for(_post(pool, port, f"u{n}".encode()), 5)).body for n in range(3)]
        finally:
            pool.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(run()) == [b"u0", b"u1", b"u2"]
