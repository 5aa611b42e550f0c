"""Delivers outbox messages to partitions owned by other workers, over their gRPC Deliver RPC."""

from __future__ import annotations

import grpc

from partition.errors import NotLeader
from sgproto.partition.v1 import partition_service_pb2 as pb
from shardgate.routing import Router

DELIVER_TIMEOUT_S = 10.0


class RemoteDelivery:
    def __init__(self, router: Router) -> None:
        self._router = router

    async def deliver(self, msg: pb.OutboxMessage, partition: int) -> None:
        """Apply `msg` on its partition's owner; raises (to be retried) when it cannot."""
        stub = self._router.stub(partition)
        if stub is None:
            await self._router.refresh()
            raise NotLeader(partition)
        try:
            await stub.Deliver(msg, timeout=DELIVER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                await self._router.refresh()
            raise
