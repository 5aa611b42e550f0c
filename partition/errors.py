"""Partition worker errors, and the one table mapping them to gRPC status codes."""

from __future__ import annotations

import grpc
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError


class PartitionError(Exception):
    """Base of worker-side failures that an RPC answers with a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class NotLeader(PartitionError):
    """This worker does not (or no longer) own the addressed partition; the ingress re-routes."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, partition: int) -> None:
        super().__init__("not leader")
        self.partition = partition


class Fenced(NotLeader):
    """A Lua write was refused because the partition's fencing token changed (lost the lease)."""

    def __init__(self, partition: int) -> None:
        super().__init__(partition)
        self.args = ("lost leadership",)


class InvocationNotFound(PartitionError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, invocation_id: str) -> None:
        super().__init__("invocation not found")
        self.invocation_id = invocation_id


class WorkerBusy(PartitionError):
    """The worker is saturated (every room taken and its backlog bound reached, `Driver.saturated`):
    a new call is refused before anything is stored, so retrying it later is safe. The ingress
    answers 429 with Retry-After."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self) -> None:
        super().__init__("partition worker too busy, retry later")


class DeploymentError(Exception):
    """An attempt against a deployment failed in a retryable way (transport, HTTP, protocol)."""


class StoreUnavailable(PartitionError):
    """Redis could not be reached, timed out or answered with an error the RPC cannot act on.

    UNAVAILABLE makes the ingress re-route and retry. That is safe: every invocation id is
    deterministic and every transition is one script, so a retry after an outcome-unknown
    failure either finds the state the script left or runs the script again. The message never
    names Redis's address."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("state store unavailable, retry")


class NotReplicated(RedisTimeoutError):
    """A transition ran on the primary but fewer replicas than SHARDGATE_REDIS_WAIT_REPLICAS
    acknowledged it within SHARDGATE_REDIS_WAIT_TIMEOUT_MS: treated as a lost reply (the outcome
    is unknown, nothing is acknowledged to a client on it; the driver retries an `apply`, an RPC
    answers UNAVAILABLE and the ingress re-sends, which is idempotent)."""


class InternalError(PartitionError):
    """An unexpected failure inside the worker (a bug); logged with its traceback where it happened."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self) -> None:
        super().__init__("internal error in the partition worker")


def translate(exc: BaseException) -> PartitionError:
    """The one place lower-level exceptions become worker errors at the gRPC boundary.

    PartitionErrors pass through; Redis and OS errors (connection loss, socket timeouts during
    an fsync stall, a restarting Redis) become `StoreUnavailable`; anything else `InternalError`."""
    if isinstance(exc, PartitionError):
        return exc
    if isinstance(exc, (RedisError, OSError, TimeoutError)):
        return StoreUnavailable()
    return InternalError()
