"""How an invocation treats its key: one enum for the ingress, the workers, the wire and Redis.

`HandlerKind` values are what the status hash stores; `to_proto` / `from_proto` are the one
mapping to the partition RPCs' enum, `of_handler` / `of_target` the one mapping from the schema.
"""

from __future__ import annotations

from enum import Enum

from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate.schema import HandlerType, ServiceType


class HandlerKind(str, Enum):
    """How an invocation treats its key (the value is stored in the invocation's hash)."""

    SERVICE = "service"  # no key, no state
    EXCLUSIVE = "exclusive"  # takes the key's lock (one at a time, in arrival order); writes state
    SHARED = "shared"  # never waits for the lock; reads state
    WORKFLOW = "workflow"  # a workflow's run: once per key; writes state and promises

    @classmethod
    def from_proto(cls, value: int) -> HandlerKind:
        """Raises KeyError for a value the protobuf enum does not define."""
        return _FROM_PROTO[value]

    def to_proto(self) -> spb.HandlerKind:
        return _TO_PROTO[self]

    @classmethod
    def of_handler(cls, ty: HandlerType | None) -> HandlerKind:
        """The kind of a handler of the schema (None: a plain service's handler)."""
        return _FROM_SCHEMA[ty]

    @classmethod
    def of_target(cls, service_type: ServiceType, handler_type: HandlerType | None) -> HandlerKind:
        """The kind of a handler of a service of `service_type`; a handler without a declared type
        is exclusive in a virtual object and shared in a workflow (Restate's defaults)."""
        if service_type is ServiceType.SERVICE:
            return HandlerKind.SERVICE
        if handler_type is not None:
            return _FROM_SCHEMA[handler_type]
        return HandlerKind.EXCLUSIVE if service_type is ServiceType.VIRTUAL_OBJECT else HandlerKind.SHARED

    @property
    def keyed(self) -> bool:
        return self is not HandlerKind.SERVICE

    @property
    def writes_state(self) -> bool:
        return self in (HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW)


_TO_PROTO = {
    HandlerKind.SERVICE: spb.HANDLER_KIND_SERVICE,
    HandlerKind.EXCLUSIVE: spb.HANDLER_KIND_EXCLUSIVE,
    HandlerKind.SHARED: spb.HANDLER_KIND_SHARED,
    HandlerKind.WORKFLOW: spb.HANDLER_KIND_WORKFLOW,
}
_FROM_PROTO = {int(v): k for k, v in _TO_PROTO.items()}
_FROM_SCHEMA: dict[HandlerType | None, HandlerKind] = {
    None: HandlerKind.SERVICE,
    HandlerType.EXCLUSIVE: HandlerKind.EXCLUSIVE,
    HandlerType.SHARED: HandlerKind.SHARED,
    HandlerType.WORKFLOW: HandlerKind.WORKFLOW,
}
