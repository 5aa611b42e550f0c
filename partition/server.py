"""gRPC servicer: decode, call `PartitionService`, map errors through the one status table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from partition.errors import InternalError, PartitionError, translate
from partition.metrics import RPCS
from partition.service import PartitionService
from partition.stream import StreamServer
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.linger import DEFAULT_DELAY_S, Linger

R = TypeVar("R")
log = logging.getLogger(__name__)


def _failure(method: str, exc: BaseException) -> PartitionError:
    """The worker error `exc` is answered with (`errors.translate`: Redis and OS errors ->
    UNAVAILABLE, which the ingress re-routes on, never UNKNOWN); logged unless expected, counted."""
    err = translate(exc)
    if not isinstance(exc, PartitionError):
        log.warning("%s failed: %s: %s", method, type(exc).__name__, exc,
                    exc_info=isinstance(err, InternalError))
    RPCS.labels(method, err.code.name).inc()
    return err


async def _answer(method: str, call: Awaitable[R], context: grpc.aio.ServicerContext[Any, Any]) -> R:
    """Await the service call; every failure becomes its gRPC status through `_failure`."""
    try:
        resp = await call
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001  the boundary: every error leaves as a gRPC status (logged in _failure)
        err = _failure(method, exc)
        await context.abort(err.code, str(err))
    RPCS.labels(method, "OK").inc()
    return resp


def _invoke_failure(exc: BaseException) -> PartitionError:
    return _failure("Invoke", exc)


class PartitionServicer(pb_grpc.PartitionServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, service: PartitionService, stream_linger_s: float = DEFAULT_DELAY_S) -> None:
        self._service = service
        self._stream_linger_s = stream_linger_s
        self._invoke_ok = RPCS.labels("Invoke", "OK")

    async def Invoke(
        self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InvokeResponse:
        return await _answer("Invoke", self._service.invoke(request), context)

    async def InvokeStream(
        self, _requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Many Invokes on one stream (`stream.StreamServer`); each answered as `Invoke` would be."""
        await StreamServer(self._service.invoke, _invoke_failure, self._invoke_ok.inc, context,
                           Linger(self._stream_linger_s)).run()

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

    async def Manage(
        self, request: pb.ManageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ManageResponse:
        return await _answer("Manage", self._service.manage(request), context)
