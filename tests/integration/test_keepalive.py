"""A call held open with no data flowing survives the channels' keepalive pings.

The ingress's channel pings every `KEEPALIVE_TIME_MS`; gRPC's server defaults allow one ping per
5 minutes without data and answer GOAWAY "too_many_pings" at the third bad one, which cut every
call and attach held open for about 200 s. A real grpc.aio server and channel on loopback, with
the options both sides really use (`shardgate.routing.server_options` / `channel_options`), at a
1 s keepalive so seconds show what 200 s would: an idle call outlives a dozen pings.
With gRPC's default server options the same call is cut (the check that the test can fail).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from shardgate.routing import channel_options, server_options

pytestmark = pytest.mark.timeout(60)

KEEPALIVE_MS = 1000  # gRPC's client pings at most once a second whatever is asked
HELD_S = 15.0  # 15 pings; with gRPC's default server options the third bad one is cut (about 7 s in)
METHOD = "/shardgate.test.Hold/Hold"


def _hold_handler() -> grpc.GenericRpcHandler:
    async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(HELD_S)
        return request

    return grpc.method_handlers_generic_handler("shardgate.test.Hold", {
        "Hold": grpc.unary_unary_rpc_method_handler(hold, request_deserializer=None, response_serializer=None)})


async def _serve(options: Sequence[tuple[str, int]]) -> AsyncIterator[str]:
    server = grpc.aio.server(options=list(options))
    server.add_generic_rpc_handlers((_hold_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _held_call(address: str) -> bytes:
    async with grpc.aio.insecure_channel(address, options=channel_options(KEEPALIVE_MS)) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return bytes(await call(b"still here", timeout=HELD_S * 5))


async def test_an_idle_call_outlives_the_keepalive_pings() -> None:
    async for address in _serve(server_options(KEEPALIVE_MS)):
        assert await _held_call(address) == b"still here"


async def test_with_grpcs_default_server_options_the_same_call_is_cut() -> None:
    defaults = [o for o in server_options(KEEPALIVE_MS) if not o[0].startswith(("grpc.keepalive", "grpc.http2"))]
    async for address in _serve(defaults):
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await _held_call(address)
        assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
