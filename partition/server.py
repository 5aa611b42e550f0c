"""gRPC servicer: decode, call `PartitionService`, map errors through the one status table."""

from __future__ import annotations

import logging

import grpc

from partition.errors import PartitionError
from partition.metrics import RPCS
from partition.service import PartitionService
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class PartitionServicer(pb_grpc.PartitionServiceServicer):
    def __init__(self, service: PartitionService) -> None:
        self._service = service

    async def Invoke(self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        try:
            resp = await self._service.invoke(request)
        except PartitionError as e:
            RPCS.labels("Invoke", e.code.name).inc()
            await context.abort(e.code, str(e))
        RPCS.labels("Invoke", "OK").inc()
        return resp

    async def Attach(self, request: pb.InvocationRef, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        try:
            resp = await self._service.attach(request)
        except PartitionError as e:
            RPCS.labels("Attach", e.code.name).inc()
            await context.abort(e.code, str(e))
        RPCS.labels("Attach", "OK").inc()
        return resp

    async def Deliver(self, request: pb.OutboxMessage, context: grpc.aio.ServicerContext) -> pb.DeliverResponse:
        try:
            resp = await self._service.deliver(request)
        except PartitionError as e:
            RPCS.labels("Deliver", e.code.name).inc()
            await context.abort(e.code, str(e))
        RPCS.labels("Deliver", "OK").inc()
        return resp

    async def GetOutput(self, request: pb.InvocationRef, context: grpc.aio.ServicerContext) -> pb.OutputResponse:
        try:
            resp = await self._service.get_output(request)
        except PartitionError as e:
            RPCS.labels("GetOutput", e.code.name).inc()
            await context.abort(e.code, str(e))
        RPCS.labels("GetOutput", "OK").inc()
        return resp
