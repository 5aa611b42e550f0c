"""The target (service, handler, scope) an ingress request reaches, for authorisation.

Calls and sends name it in the path; attach / output / lookup by idempotency key or workflow in
the path or in their JSON body. A bare invocation id (attach / output by id, an awakeable id,
and any other request that names one invocation by id, such as its status) does not say its
target, so it is read from the invocation's status hash in Redis
(`sg:{pI}:inv:<id>`, fields `svc`, `hdl`, `scp`, as `partition/invocation.py` writes them) and
remembered (an id's target never changes). `None` means the target could not be established
(unknown invocation, undecodable id, a body-less target request): only a grant for everything
passes then.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingress.auth.grant import Target
from ingress.errors import RegistryUnavailable
from ingress.handlers.attach import parse_target_body
from ingress.paths import (
    AttachRequest,
    Awakeable,
    ByIdempotencyKey,
    ByInvocationId,
    ByWorkflow,
    CallRequest,
    InvocationQuery,
    Lookup,
    OutputRequest,
    ParsedRequest,
    SendRequest,
    StatusRequest,
    TargetAttach,
    TargetOutput,
)
from shardgate.schema import HandlerType, SchemaSnapshot
from shardgate.sharding import AwakeableIdError, InvocationId, parse_awakeable_id, partition_of

# status hash fields (partition.invocation.HashField values; tests/unit/test_auth.py keeps them equal)
F_SERVICE, F_HANDLER, F_SCOPE = "svc", "hdl", "scp"
KNOWN_IDS = 10_000
"""Invocation id -> target entries remembered (least recently used dropped first)."""
UNAVAILABLE = "cannot check this credential's access to the invocation now (Redis unavailable); retry later"


def invocation_key(partition: int, invocation_id: str) -> str:
    """The invocation's status hash (partition.keys.invocation)."""
    return f"sg:{{p{partition}}}:inv:{invocation_id}"


class TargetResolver:
    """Finds the `Target` of a parsed ingress request."""

    def __init__(self, schema: Callable[[], SchemaSnapshot], redis: Redis, partitions: int,
                 known_ids: int = KNOWN_IDS) -> None:
        self.schema = schema
        self.redis = redis
        self.partitions = partitions
        self.known_ids = known_ids
        self._ids: OrderedDict[str, Target] = OrderedDict()

    async def target(self, request: web.Request, parsed: ParsedRequest) -> Target | None:
        """The target `parsed` reaches; reads a target body (POST attach / output / lookup) from
        `request`. Raises BadRequest for a malformed body, RegistryUnavailable when Redis fails."""
        match parsed:
            case CallRequest() | SendRequest():
                return Target(parsed.service, parsed.handler, parsed.scope)
            case AttachRequest() | OutputRequest():
                return await self.of_query(parsed.query)
            case StatusRequest():
                return await self.of_invocation(parsed.invocation_id)
            case TargetAttach() | TargetOutput() | Lookup():
                if request.method != "POST":
                    return None  # answered 405 by the handler, to grants for everything
                what = "lookup" if isinstance(parsed, Lookup) else "request"
                return await self.of_query(parse_target_body(await request.read(), what))
            case Awakeable():
                try:
                    invocation, _ = parse_awakeable_id(parsed.awakeable_id)
                except AwakeableIdError:
                    return None
                return await self.of_invocation(invocation)
        named = getattr(parsed, "invocation_id", None)  # other requests naming one invocation (its status)
        if isinstance(named, InvocationId):
            return await self.of_invocation(named)
        return None

    async def of_query(self, query: InvocationQuery) -> Target | None:
        """The target an attach / output / lookup query names."""
        match query:
            case ByIdempotencyKey():
                return Target(query.service, query.handler, query.scope)
            case ByWorkflow():
                return Target(query.service, self._workflow_handler(query.service), query.scope)
            case ByInvocationId():
                return await self.of_invocation(query.id)
        return None

    def _workflow_handler(self, service: str) -> str | None:
        meta = self.schema().services.get(service)
        if meta is None:
            return None
        return next((h.name for h in meta.handlers.values() if h.ty is HandlerType.WORKFLOW), None)

    async def of_invocation(self, invocation: InvocationId) -> Target | None:
        """The target stored for an invocation id; None when there is no such invocation."""
        inv = str(invocation)
        known = self._ids.get(inv)
        if known is not None:
            self._ids.move_to_end(inv)
            return known
        key = invocation_key(partition_of(invocation.partition_key, self.partitions), inv)
        try:
            values = cast("list[bytes | None]", await self.redis.hmget(key, [F_SERVICE, F_HANDLER, F_SCOPE]))
        except RedisError:
            raise RegistryUnavailable(UNAVAILABLE) from None
        service, handler, scope = values
        if service is None or handler is None:
            return None
        target = Target(service.decode(), handler.decode(), scope.decode() if scope else None)
        self._ids[inv] = target
        if len(self._ids) > self.known_ids:
            self._ids.popitem(last=False)
        return target
