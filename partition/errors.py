"""Partition worker errors, and the one table mapping them to gRPC status codes."""

from __future__ import annotations

import grpc


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


class DeploymentError(Exception):
    """An attempt against a deployment failed in a retryable way (transport, HTTP, protocol)."""
