"""shardgate/redispipe.py against a real redis-server: calls queued together go out as one write and
are answered in order; an error reply fails only its call; NOSCRIPT loads the script and sends the
call again; a call cancelled before its batch was written never runs; a timeout fails the calls
not yet answered and the next batch gets a fresh connection; batches are bounded; the calls made while a batch is
unanswered go out together after it; a lost connection is given back and replaced; all of it under uvloop
too; an argument redis-py refuses fails only its caller; the RESP encoding is redis-py's."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, DataError, ResponseError, TimeoutError

from shardgate.redispipe import ScriptPipeline, pack

pytestmark = pytest.mark.timeout(30)

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON_ZERO = "if ARGV[1] == '0' then return redis.error_reply('zero') end return ARGV[1]"
BUSY = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1"""


async def test_calls_queued_together_share_one_write_and_are_answered_in_order(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    incr = redis.register_script(INCR)
    await redis.script_load(INCR)
    replies = await asyncio.gather(*(pipe.evalsha(incr, ["n"], [k]) for k in range(1, 11)))
    assert replies == [sum(range(1, k + 1)) for k in range(1, 11)]  # the order they were issued in
    assert (pipe.batches, pipe.calls) == (1, 10)


async def test_an_error_reply_fails_only_its_call(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    script = redis.register_script(FAIL_ON_ZERO)
    await redis.script_load(FAIL_ON_ZERO)
    results = await asyncio.gather(*(pipe.evalsha(script, [], [v]) for v in ("1", "0", "2")),
                                   return_exceptions=True)
    assert results[0] == b"1" and results[2] == b"2"
    assert isinstance(results[1], ResponseError) and "zero" in str(results[1])
    assert pipe.batches == 1


async def test_noscript_loads_the_script_and_sends_the_call_again(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    incr = redis.register_script(INCR)
    await redis.script_flush()
    assert await pipe.evalsha(incr, ["n"], [5]) == 5
    assert await redis.script_exists(incr.sha) == [True]
    assert pipe.calls == 2  # the NOSCRIPT one, then the call again
    assert int(await redis.get("n")) == 5


async def test_a_call_cancelled_before_its_batch_was_written_never_runs(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    incr = redis.register_script(INCR)
    await redis.script_load(INCR)
    doomed = asyncio.create_task(pipe.evalsha(incr, ["n"], [100]))
    await asyncio.sleep(0)  # it is queued, its batch not yet written
    doomed.cancel()
    kept = await pipe.evalsha(incr, ["n"], [1])
    assert kept == 1 and doomed.cancelled()
    assert int(await redis.get("n")) == 1


async def test_a_timeout_fails_the_unanswered_calls_and_the_next_batch_reconnects(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        pipe = ScriptPipeline(client)
        busy, incr = client.register_script(BUSY), client.register_script(INCR)
        await client.script_load(BUSY)
        await client.script_load(INCR)
        results = await asyncio.gather(pipe.evalsha(busy, [], [600_000]), pipe.evalsha(incr, ["n"], [1]),
                                       return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        async with asyncio.timeout(10):
            while True:  # Redis finishes the busy script, then runs the INCR that was sent after it
                try:
                    if await client.get("n") == b"1":
                        break
                except TimeoutError:
                    pass
                await asyncio.sleep(0.05)
        assert await pipe.evalsha(incr, ["n"], [1]) == 2  # a fresh connection, in order again
    finally:
        await client.aclose()


async def test_batches_are_bounded(redis: Redis) -> None:
    pipe = ScriptPipeline(redis, max_batch=4)
    incr = redis.register_script(INCR)
    await redis.script_load(INCR)
    replies = await asyncio.gather(*(pipe.evalsha(incr, ["n"], [1]) for _ in range(10)))
    assert replies == list(range(1, 11))
    assert (pipe.batches, pipe.calls) == (3, 10)


async def test_an_argument_redis_py_refuses_fails_only_its_caller(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    incr = redis.register_script(INCR)
    await redis.script_load(INCR)
    results = await asyncio.gather(pipe.evalsha(incr, ["n"], [1]), pipe.evalsha(incr, ["n"], [True]),
                                   pipe.evalsha(incr, ["n"], [None]), pipe.evalsha(incr, ["n"], [2]),
                                   return_exceptions=True)
    assert results[0] == 1 and results[3] == 3
    assert all(isinstance(r, DataError) for r in results[1:3]), results
    assert (pipe.batches, pipe.calls) == (1, 2)  # the refused ones were never sent


def test_the_encoding_is_redis_pys() -> None:
    """`pack` against the encoder of redis-py's connections (what `Redis.evalsha` sends): every
    argument type the transitions pass, and the other ones redis-py takes."""
    command = ("EVALSHA", "a" * 40, 3, "sg:{p3}:inv:x", b"\x00\xff\r\n", "", "\u00fcn\u00ef\u0100", 0, -7,
               2**70, 1.5, bytearray(b"ba"), memoryview(b"mv"), b"x" * 70_000)
    assert pack(command) == b"".join(bytes(c) for c in Connection().pack_commands([command]))


async def test_calls_made_while_a_batch_is_unanswered_go_out_together_after_it(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    busy, incr = redis.register_script(BUSY), redis.register_script(INCR)
    await redis.script_load(BUSY)
    await redis.script_load(INCR)
    held = asyncio.create_task(pipe.evalsha(busy, [], [100_000]))
    async with asyncio.timeout(5):
        while pipe.batches < 1:
            await asyncio.sleep(0)
    later = []
    for _ in range(5):  # each in a pass of its own, all while the busy script runs
        later.append(asyncio.create_task(pipe.evalsha(incr, ["n"], [1])))
        await asyncio.sleep(0)
    assert pipe.batches == 1 and not held.done()
    assert await asyncio.wait_for(asyncio.gather(held, *later), 5) == [1, 1, 2, 3, 4, 5]
    assert (pipe.batches, pipe.calls) == (2, 6)


async def test_a_lost_connection_is_given_back_and_the_next_call_reconnects(redis: Redis) -> None:
    pipe = ScriptPipeline(redis)
    incr = redis.register_script(INCR)
    await redis.script_load(INCR)
    assert await pipe.evalsha(incr, ["n"], [1]) == 1
    in_use = len(redis.connection_pool._in_use_connections)
    await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    async with asyncio.timeout(5):
        while True:
            try:
                value = await pipe.evalsha(incr, ["n"], [1])
                break
            except ConnectionError:  # written before the loss was noticed: may or may not have run
                continue
    assert value == int(await redis.get("n"))
    assert len(redis.connection_pool._in_use_connections) == in_use  # the lost one went back


def test_under_uvloop(redis_url: str) -> None:
    """The worker's loop: the link takes over a uvloop transport; replies, a timeout and a
    reconnect as above, and the client closes without waiting."""
    import uvloop

    async def main() -> None:
        client = Redis.from_url(redis_url, socket_timeout=0.2)
        pipe = ScriptPipeline(client)
        busy, incr = client.register_script(BUSY), client.register_script(INCR)
        await client.script_load(BUSY)
        await client.script_load(INCR)
        assert await asyncio.gather(*(pipe.evalsha(incr, ["n"], [1]) for _ in range(5))) == [1, 2, 3, 4, 5]
        with pytest.raises(TimeoutError):
            await pipe.evalsha(busy, [], [500_000])
        async with asyncio.timeout(10):
            while True:
                try:
                    value = await pipe.evalsha(incr, ["n"], [1])
                    break
                except TimeoutError:  # Redis is still busy: the call (or its connect) timed out too
                    pass
        assert value >= 6 and value == int(await client.get("n"))
        async with asyncio.timeout(2):
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))


class _Relay:
    """A TCP relay to Redis that can hold back replies and then cut the client's connection
    (a real socket pair on each side; the pipeline's client connects through it)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.holding = False  # replies are kept back while set
        self._clients: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._clients.append(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            while data := await src.read(65536):
                while replies and self.holding and not writer.is_closing():
                    await asyncio.sleep(0.01)
                if dst.is_closing():
                    return
                dst.write(data)

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True),
                                 return_exceptions=True)
        finally:
            up_writer.close()
            writer.close()

    def cut(self) -> None:
        for writer in self._clients:
            writer.transport.abort()


async def test_calls_gathered_behind_a_lost_batch_go_out_on_a_new_connection(redis_url: str, redis: Redis) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    relay = _Relay(host, int(port))
    client = Redis(host="127.0.0.1", port=await relay.start(), socket_timeout=5)
    try:
        pipe = ScriptPipeline(client)
        incr = client.register_script(INCR)
        await client.script_load(INCR)
        relay.holding = True
        lost = asyncio.create_task(pipe.evalsha(incr, ["n"], [1]))
        async with asyncio.timeout(5):
            while pipe.batches < 1:
                await asyncio.sleep(0)
        behind = asyncio.create_task(pipe.evalsha(incr, ["n"], [10]))
        async with asyncio.timeout(5):
            while await redis.get("n") != b"1":  # the first ran; its reply is held back
                await asyncio.sleep(0.01)
        assert pipe.batches == 1  # the second is gathered: the first batch is unanswered
        relay.cut()
        relay.holding = False
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(lost, 5)
        assert await asyncio.wait_for(behind, 5) == 11  # the lost one had run; this one on a new connection
        assert pipe.batches == 2
    finally:
        await client.aclose()
        assert relay.server is not None
        relay.server.close()

