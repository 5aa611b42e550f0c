"""Dispatcher over gRPC to the partition workers, with refresh-and-retry on NOT_LEADER.

Every invocation id is deterministic for the request (user or generated idempotency key,
workflow key), so re-sending an Invoke after a lost connection or a leader change attaches to
the invocation instead of running it twice.

Calls and sends travel on one long-lived `InvokeStream` per worker channel (`ingress/stream.py`:
many requests per message, each failing exactly as the unary `Invoke` would, so the re-routing
below is the same for both); a worker without that RPC is called unary. The other methods are
unary calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from ingress.dispatcher import (
    Command,
    CommandOutcome,
    InvocationRequest,
    Outcome,
    RestartRequest,
    SendReceipt,
    SendStatus,
)
from ingress.errors import (
    InvocationNotFound,
    InvocationNotReady,
    PartitionBusy,
    PartitionUnavailable,
    ScopeLimited,
)
from ingress.metrics import PARTITION_RPCS
from ingress.stream import InvokeStream, StreamItemError, StreamUnsupported
from sgproto.partition.v1 import partition_service_pb2 as pb
from sgproto.partition.v1 import partition_service_pb2_grpc as pb_grpc
from shardgate.linger import DEFAULT_DELAY_S, Linger
from shardgate.routing import Router

log = logging.getLogger(__name__)
R = TypeVar("R")

# Answers after which the same request is re-sent to the (possibly new) owner.
_REROUTE = {
    grpc.StatusCode.FAILED_PRECONDITION,  # not leader / lost leadership
    grpc.StatusCode.UNAVAILABLE,  # worker gone or restarting
    grpc.StatusCode.CANCELLED,  # worker shut down while we waited
}

BUSY_RETRY_AFTER_S = 1.0
"""Retry-After of a call a saturated worker refused (RESOURCE_EXHAUSTED: nothing was stored)."""

_COMMANDS = {
    Command.CANCEL: pb.MANAGE_COMMAND_CANCEL, Command.KILL: pb.MANAGE_COMMAND_KILL,
    Command.PURGE: pb.MANAGE_COMMAND_PURGE, Command.PURGE_JOURNAL: pb.MANAGE_COMMAND_PURGE_JOURNAL,
    Command.PAUSE: pb.MANAGE_COMMAND_PAUSE, Command.RESUME: pb.MANAGE_COMMAND_RESUME,
}
_COMMAND_OUTCOMES = {
    pb.MANAGE_STATUS_DONE: CommandOutcome.DONE, pb.MANAGE_STATUS_APPENDED: CommandOutcome.APPENDED,
    pb.MANAGE_STATUS_ALREADY: CommandOutcome.ALREADY, pb.MANAGE_STATUS_NOT_FOUND: CommandOutcome.NOT_FOUND,
    pb.MANAGE_STATUS_COMPLETED: CommandOutcome.COMPLETED, pb.MANAGE_STATUS_NOT_COMPLETED: CommandOutcome.NOT_COMPLETED,
    pb.MANAGE_STATUS_WRONG_STATE: CommandOutcome.WRONG_STATE, pb.MANAGE_STATUS_UNSUPPORTED: CommandOutcome.UNSUPPORTED,
    pb.MANAGE_STATUS_MISSING_INPUT: CommandOutcome.MISSING_INPUT,
    pb.MANAGE_STATUS_COPY_RANGE_INVALID: CommandOutcome.COPY_RANGE_INVALID,
}

# A command re-sent after a lost answer may find what its first delivery did: the answer the first
# delivery would have given. A cancel's signal may have ended the invocation (202, as a cancel of a
# running one answers); a kill may have removed a never-started one; a resumed invocation may have
# run to its end before the re-send arrived.
_DONE_BEFORE: dict[tuple[Command, CommandOutcome], CommandOutcome] = {
    (Command.KILL, CommandOutcome.COMPLETED): CommandOutcome.DONE,
    (Command.KILL, CommandOutcome.NOT_FOUND): CommandOutcome.DONE,
    (Command.CANCEL, CommandOutcome.NOT_FOUND): CommandOutcome.DONE,
    (Command.CANCEL, CommandOutcome.COMPLETED): CommandOutcome.APPENDED,
    (Command.PURGE, CommandOutcome.NOT_FOUND): CommandOutcome.DONE,
    (Command.PAUSE, CommandOutcome.ALREADY): CommandOutcome.DONE,
    (Command.RESUME, CommandOutcome.COMPLETED): CommandOutcome.DONE,
}


def _check_admitted(resp: pb.InvokeResponse) -> None:
    """Raises ScopeLimited (429 with Retry-After) when a scope's reject rule refused the invocation."""
    if resp.HasField("rejected_retry_after_ms"):
        raise ScopeLimited(retry_after_s=max(1.0, resp.rejected_retry_after_ms / 1000))


def _outcome(inv_id: str, r: pb.Result) -> Outcome:
    return Outcome(
        invocation_id=inv_id,
        value=r.value,
        failure_code=r.failure_code,
        failure_message=r.failure_message,
        expires_ms=r.expires_ms if r.HasField("expires_ms") else None,
        failure_metadata=tuple(sorted(r.failure_metadata.items())),
    )


# The worker's own fixed failure texts (partition/errors.py); anything else gRPC puts in its
# details (connection errors naming hosts and ports) is replaced by the status name.
_SAFE_DETAILS = frozenset({"not leader", "lost leadership", "state store unavailable, retry", "invocation not found",
                           "internal error in the partition worker"})


_COUNTERS: dict[tuple[str, str], Any] = {}


def _counter(method: str, result: str) -> Any:
    """The PARTITION_RPCS child of (method, result), looked up once (not on every RPC)."""
    child = _COUNTERS.get((method, result))
    if child is None:
        child = _COUNTERS[(method, result)] = PARTITION_RPCS.labels(method, result)
    return child


def _reason(e: grpc.aio.AioRpcError | StreamItemError) -> str:
    details = e.details() or ""
    return details if details in _SAFE_DETAILS else e.code().name.lower().replace("_", " ")


class GrpcDispatcher:
    def __init__(self, router: Router, routing_deadline_s: float, rpc_timeout_s: float,
                 call_timeout_s: float, stream_linger_s: float = DEFAULT_DELAY_S) -> None:
        self._router = router
        self._stream_linger_s = stream_linger_s
        self._routing_deadline_s = routing_deadline_s
        self._rpc_timeout_s = rpc_timeout_s
        self._call_timeout_s = call_timeout_s
        self._streams: dict[pb_grpc.PartitionServiceStub, InvokeStream] = {}  # one per worker channel
        self._unary_only: set[pb_grpc.PartitionServiceStub] = set()  # workers without InvokeStream

    async def _rpc(self, method: str, partition: int,
                   fn: Callable[[pb_grpc.PartitionServiceStub, bool], Awaitable[R]]) -> R:
        """Run `fn(stub, retried)` against the partition's owner until it answers, or until no owner
        answered for the routing deadline (the time an attempt spent with a worker does not count,
        up to one call timeout in all). Raises InvocationNotFound, or PartitionUnavailable (503)."""
        deadline = time.monotonic() + self._routing_deadline_s
        latest = deadline + self._call_timeout_s  # however often attempts end in a re-route
        delay = 0.02
        retried = False
        last = "no worker owns the partition"
        while True:
            stub = self._router.stub(partition)
            if stub is not None:
                sent = time.monotonic()
                try:
                    result = await fn(stub, retried)
                    _counter(method, "ok").inc()
                    return result
                except (grpc.aio.AioRpcError, StreamItemError) as e:
                    code = e.code()
                    if code == grpc.StatusCode.NOT_FOUND:
                        _counter(method, "not_found").inc()
                        raise InvocationNotFound("invocation not found") from None
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        _counter(method, "busy").inc()
                        raise PartitionBusy(retry_after_s=BUSY_RETRY_AFTER_S) from None
                    if code not in _REROUTE:
                        _counter(method, "error").inc()
                        log.warning("partition RPC %s failed: %s %s", method, code.name, e.details())
                        raise PartitionUnavailable(
                            f"internal routing error: {_reason(e)}. "
                            "Retry the request only if it carries an idempotency key."
                        ) from None
                    _counter(method, "reroute").inc()
                    last = _reason(e)
                    # A worker that answered "not the leader" (FAILED_PRECONDITION: fenced or not
                    # owning) applied nothing; any other re-route may have followed an applied try.
                    retried = retried or code != grpc.StatusCode.FAILED_PRECONDITION
                    # The deadline bounds the time without a reachable owner, not the call: a call
                    # that ran for minutes before its owner died still gets the whole deadline.
                    deadline = min(deadline + time.monotonic() - sent, latest)
            if time.monotonic() + delay > deadline:
                raise PartitionUnavailable(
                    f"internal routing error: {last}. The request may be retried safely."
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                await self._router.refresh()
            except Exception as e:  # noqa: BLE001  Redis hiccup: keep the old table, try again
                log.warning("cannot refresh the routing table: %s", e)
                last = "cannot refresh routing table"

    async def _invoke(self, stub: pb_grpc.PartitionServiceStub, msg: pb.InvokeRequest,
                      timeout_s: float) -> pb.InvokeResponse:
        """`Invoke` on the worker's long-lived stream (unary for a worker without one). Raises
        StreamItemError or grpc.aio.AioRpcError with the status of the failed call."""
        if stub not in self._unary_only:
            stream = self._streams.get(stub)
            if stream is None or stream.closed:
                linger = Linger(self._stream_linger_s)
                stream = self._streams[stub] = InvokeStream(stub, self._stream_closed, linger)
            try:
                return await stream.invoke(msg, timeout_s)
            except StreamUnsupported:
                log.warning("a partition worker does not serve InvokeStream: using unary Invoke calls")
                self._unary_only.add(stub)
        return cast(pb.InvokeResponse, await stub.Invoke(msg, timeout=timeout_s))

    def _stream_closed(self, stream: InvokeStream) -> None:
        if self._streams.get(stream.stub) is stream:
            del self._streams[stream.stub]

    async def aclose(self) -> None:
        """Close the invoke streams (the router closes the channels)."""
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.aclose()

    def _invoke_request(self, req: InvocationRequest, wait: bool) -> pb.InvokeRequest:
        msg = pb.InvokeRequest(
            partition=req.partition, invocation_id=req.invocation_id, service=req.service,
            handler=req.handler, kind=req.kind.to_proto(), body=req.body,
            headers=[pb.Header(key=k, value=v) for k, v in req.headers],
            completion_retention_ms=req.completion_retention_ms,
            journal_retention_ms=req.journal_retention_ms, wait=wait,
        )
        if req.key is not None:
            msg.key = req.key
        if req.idempotency_key is not None:
            msg.idempotency_key = req.idempotency_key
            msg.idempotency_key_generated = req.idempotency_key_generated
        if req.execution_time_ms is not None:
            msg.execution_time_ms = req.execution_time_ms
        if req.scope is not None:
            msg.scope = req.scope
        if req.limit_key is not None:
            msg.limit_key = req.limit_key
        return msg

    async def call(self, req: InvocationRequest) -> Outcome:
        msg = self._invoke_request(req, True)
        # A re-send of this call after a failover attaches (a workflow run is not "already invoked").
        # A generated idempotency key is itself unique to this request: no nonce needed.
        if not req.idempotency_key_generated:
            msg.request_nonce = os.urandom(8)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> Outcome:
            resp = await self._invoke(stub, msg, self._call_timeout_s)
            _check_admitted(resp)
            return _outcome(req.invocation_id, resp.result)

        return await self._rpc("Invoke", req.partition, go)

    async def send(self, req: InvocationRequest) -> SendReceipt:
        msg = self._invoke_request(req, False)
        # The worker keeps the nonce with the invocation it creates, so a re-send of this very
        # request after a lost answer is told Accepted, and any other duplicate PreviouslyAccepted.
        # Only this request knows a key the ingress generated: any duplicate of it is a re-send.
        if not req.idempotency_key_generated:
            msg.request_nonce = os.urandom(8)

        async def go(stub: pb_grpc.PartitionServiceStub, _: bool) -> SendReceipt:
            resp = await self._invoke(stub, msg, self._rpc_timeout_s)
            _check_admitted(resp)
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

    async def restart_as_new(self, req: RestartRequest) -> CommandOutcome:
        msg = pb.ManageRequest(partition=req.partition, invocation_id=req.invocation_id,
                               command=pb.MANAGE_COMMAND_RESTART_AS_NEW, restart_from=req.from_index,
                               new_invocation_id=req.new_invocation_id, deployment_id=req.deployment_id,
                               completion_retention_ms=req.completion_retention_ms,
                               journal_retention_ms=req.journal_retention_ms)
        return await self._manage(msg, None)  # a re-send finds the new invocation: DONE again

    async def manage(self, invocation_id: str, partition: int, command: Command,
                     deployment_id: str = "") -> CommandOutcome:
        msg = pb.ManageRequest(partition=partition, invocation_id=invocation_id, command=_COMMANDS[command],
                               deployment_id=deployment_id)
        return await self._manage(msg, command)

    async def _manage(self, msg: pb.ManageRequest, command: Command | None) -> CommandOutcome:
        """One `Manage` RPC; a re-sent `command` answers as its first delivery would have."""
        async def go(stub: pb_grpc.PartitionServiceStub, retried: bool) -> CommandOutcome:
            resp = cast(pb.ManageResponse, await stub.Manage(msg, timeout=self._rpc_timeout_s))
            outcome = _COMMAND_OUTCOMES.get(resp.status)
            if outcome is None:  # a worker of another version: a listed 503, not a crash
                raise PartitionUnavailable(f"internal routing error: unknown command status {resp.status}")
            return _DONE_BEFORE.get((command, outcome), outcome) if retried and command is not None else outcome

        return await self._rpc("Manage", msg.partition, go)
