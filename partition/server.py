"""gRPC servicer: decode, call `PartitionService`, map errors through the one status table."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from partition.errors import PartitionError
from partition.metrics import RPCS
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc

R = TypeVar("R")


async def _answer(method: str, call: Awaitable[R], context: grpc.aio.ServicerContext[Any, Any]) -> R:
    """Await the service call; a PartitionError becomes its gRPC status (errors.py table)."""
    try:
        resp = await call
    except PartitionError as e:
        RPCS.labels(method, e.code.name).inc()
        await context.abort(e.code, str(e))
    RPCS.labels(method, "OK").inc()
    return resp


class PartitionServicer(pb_grpc.PartitionServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, service: PartitionService) -> None:
        self._service = service

    async def Invoke(
        self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InvokeResponse:
        return await _answer("Invoke", self._service.invoke(request), context)

    async def Attach(
        self, request: pb.InvocationRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InvokeResponse:
        return await _answer("Attach", self._service.attach(request), context)

    async def GetOutput(
        self, request: pb.InvocationRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OutputResponse:
        return await _answer("GetOutput", self._service.get_output(request), context)

    async def Deliver(
        self, request: pb.OutboxMessage, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeliverResponse:
        return await _answer("Deliver", self._service.deliver(request), context)
