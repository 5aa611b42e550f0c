"""Dispatcher over gRPC to the partition workers, with refresh-and-retry on NOT_LEADER.

Every invocation id is deterministic for the request (user or generated idempotency key,
workflow key), so re-sending an Invoke after a lost connection or a leader change attaches to
the invocation instead of running it twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import grpc

from ingress.dispatcher import HandlerKind, InvocationRequest, Outcome, SendReceipt, SendStatus
from ingress.errors import InvocationNotFound, InvocationNotReady, PartitionUnavailable
from ingress.metrics import PARTITION_RPCS
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.routing import Router

log = logging.getLogger(__name__)
R = TypeVar("R")

_KINDS = {
    HandlerKind.SERVICE: pb.HANDLER_KIND_SERVICE,
    HandlerKind.EXCLUSIVE: pb.HANDLER_KIND_EXCLUSIVE,
    HandlerKind.SHARED: pb.HANDLER_KIND_SHARED,
    HandlerKind.WORKFLOW: pb.HANDLER_KIND_WORKFLOW,
}
# Answers after which the same request is re-sent to the (possibly new) owner.
_REROUTE = {
    grpc.StatusCode.FAILED_PRECONDITION,  # not leader / lost leadership
    grpc.StatusCode.UNAVAILABLE,  # worker gone or restarting
    grpc.StatusCode.CANCELLED,  # worker shut down while we waited
}


def _outcome(inv_id: str, r: pb.Result) -> Outcome:
    return Outcome(
        invocation_id=inv_id,
        value=r.value,
        failure_code=r.failure_code,
        failure_message=r.failure_message,
        expires_ms=r.expires_ms if r.HasField("expires_ms") else None,
    )


class GrpcDispatcher:
    def __init__(self, router: Router, routing_deadline_s: float, rpc_timeout_s: float,
                 call_timeout_s: float) -> None:
        self._router = router
        self._routing_deadline_s = routing_deadline_s
        self._rpc_timeout_s = rpc_timeout_s
        self._call_timeout_s = call_timeout_s

    async def _rpc(self, method: str, partition: int,
                   fn: Callable[[pb_grpc.PartitionServiceStub, bool], Awaitable[R]]) -> R:
        """Run `fn(stub, retried)` against the partition's owner until it answers or the deadline passes."""
        deadline = time.monotonic() + self._routing_deadline_s
        delay = 0.02
        retried = False
        last = "no worker owns the partition"
        while True:
            stub = self._router.stub(partition)
            if stub is not None:
                try:
                    result = await fn(stub, retried)
                    PARTITION_RPCS.labels(method, "ok").inc()
                    return result
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    if code == grpc.StatusCode.NOT_FOUND:
                        PARTITION_RPCS.labels(method, "not_found").inc()
                        raise InvocationNotFound("invocation not found") from None
                    if code not in _REROUTE:
                        PARTITION_RPCS.labels(method, "error").inc()
                        raise PartitionUnavailable(
                            f"internal routing error: {e.details() or code.name}. "
                            "Retry the request only if it carries an idempotency key."
                        ) from None
                    PARTITION_RPCS.labels(method, "reroute").inc()
                    last = e.details() or code.name
                    retried = True
            if time.monotonic() + delay > deadline:
                raise PartitionUnavailable(
                    f"internal routing error: {last}. The request may be retried safely."
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                await self._router.refresh()
            except Exception as e:  # noqa: BLE001  Redis hiccup: keep the old table, try again
                last = f"cannot refresh routing table: {e}"

    def _invoke_request(self, req: InvocationRequest, wait: bool) -> pb.InvokeRequest:
        msg = pb.InvokeRequest(
            partition=req.partition, invocation_id=req.invocation_id, service=req.service,
            handler=req.handler, kind=_KINDS[req.kind], body=req.body,
            headers=[pb.Header(key=k, value=v) for k, v in req.headers],
            completion_retention_ms=req.completion_retention_ms,
            journal_retention_ms=req.journal_retention_ms, wait=wait,
        )
        if req.key is not None:
            msg.key = req.key
        if req.idempotency_key is not None:
            msg.idempotency_key = req.idempotency_key
        if req.execution_time_ms is not None:
            msg.execution_time_ms = req.execution_time_ms
        return msg

    async def call(self, req: InvocationRequest) -> Outcome:
        msg = self._invoke_request(req, True)
        # A re-send of this call after a failover attaches (a workflow run is not "already invoked").
        msg.request_nonce = os.urandom(8)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> Outcome:
            resp = await stub.Invoke(msg, timeout=self._call_timeout_s)
            return _outcome(req.invocation_id, resp.result)

        return await self._rpc("Invoke", req.partition, go)

    async def send(self, req: InvocationRequest) -> SendReceipt:
        msg = self._invoke_request(req, False)
        # The worker keeps the nonce with the invocation it creates, so a re-send of this very
        # request after a lost answer is told Accepted, and any other duplicate PreviouslyAccepted.
        msg.request_nonce = os.urandom(8)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> SendReceipt:
            resp = await stub.Invoke(msg, timeout=self._rpc_timeout_s)
            status = SendStatus.ACCEPTED
            if resp.send_status == pb.SEND_STATUS_PREVIOUSLY_ACCEPTED:
                status = SendStatus.PREVIOUSLY_ACCEPTED
            exec_ms = resp.execution_time_ms if resp.HasField("execution_time_ms") else None
            return SendReceipt(req.invocation_id, status, exec_ms)

        return await self._rpc("Invoke", req.partition, go)

    async def attach(self, invocation_id: str, partition: int) -> Outcome:
        ref = pb.InvocationRef(partition=partition, invocation_id=invocation_id)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> Outcome:
            resp = await stub.Attach(ref, timeout=self._call_timeout_s)
            return _outcome(invocation_id, resp.result)

        return await self._rpc("Attach", partition, go)

    async def get_output(self, invocation_id: str, partition: int) -> Outcome:
        ref = pb.InvocationRef(partition=partition, invocation_id=invocation_id)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> pb.OutputResponse:
            return cast(pb.OutputResponse, await stub.GetOutput(ref, timeout=self._rpc_timeout_s))

        resp = await self._rpc("GetOutput", partition, go)
        if resp.status == pb.OUTPUT_STATUS_NOT_FOUND:
            raise InvocationNotFound("invocation not found")
        if resp.status == pb.OUTPUT_STATUS_NOT_READY:
            raise InvocationNotReady("the invocation exists but has not completed yet")
        return _outcome(invocation_id, resp.result)

    async def signal(self, invocation_id: str, partition: int, key: str, frame: bytes) -> None:
        msg = pb.OutboxMessage(notify=pb.Notification(
            partition=partition, invocation_id=invocation_id, key=key, frame=frame))

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> None:
            await stub.Deliver(msg, timeout=self._rpc_timeout_s)

        await self._rpc("Deliver", partition, go)
