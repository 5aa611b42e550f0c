"""The worker's gRPC boundary: every failure leaves as a status the ingress can act on.

A real grpc.aio server and channel on loopback; the service behind the servicer is a stand-in
at that process boundary that raises what the real one can raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from partition.errors import InvocationNotFound, NotLeader, StoreUnavailable, translate
from partition.server import PartitionServicer
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc


class _Raising:
    """Answers every RPC by raising `exc`."""

    def __init__(self) -> None:
        self.exc: BaseException = RuntimeError("unset")

    async def invoke(self, _req: Any) -> Any:
        raise self.exc

    attach = get_output = deliver = invoke


@pytest.fixture
async def stub_and_service() -> AsyncIterator[tuple[pb_grpc.PartitionServiceStub, _Raising]]:
    service = _Raising()
    server = grpc.aio.server()
    pb_grpc.add_PartitionServiceServicer_to_server(PartitionServicer(service), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.PartitionServiceStub(channel), service
    finally:
        await channel.close()
        await server.stop(None)


@pytest.mark.parametrize(("exc", "code"), [
    (RedisConnectionError("Error 111 connecting to 10.0.0.9:6379. Connection refused."), grpc.StatusCode.UNAVAILABLE),
    (RedisTimeoutError("Timeout reading from 10.0.0.9:6379"), grpc.StatusCode.UNAVAILABLE),
    (ConnectionResetError("reset"), grpc.StatusCode.UNAVAILABLE),
    (NotLeader(3), grpc.StatusCode.FAILED_PRECONDITION),
    (InvocationNotFound("inv_1x"), grpc.StatusCode.NOT_FOUND),
    (KeyError("bug"), grpc.StatusCode.INTERNAL),
])
async def test_every_failure_becomes_a_status_the_ingress_understands(
    stub_and_service: tuple[pb_grpc.PartitionServiceStub, _Raising], exc: BaseException, code: grpc.StatusCode,
) -> None:
    stub, service = stub_and_service
    service.exc = exc
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Invoke(pb.InvokeRequest(partition=0, invocation_id="inv_1x"), timeout=5)
    assert info.value.code() == code
    assert "10.0.0.9" not in (info.value.details() or "")  # never echo Redis's address


def test_translate_keeps_partition_errors_and_hides_store_details() -> None:
    nl = NotLeader(1)
    assert translate(nl) is nl
    err = translate(RedisConnectionError("Error connecting to redis:6379"))
    assert isinstance(err, StoreUnavailable) and "6379" not in str(err)
