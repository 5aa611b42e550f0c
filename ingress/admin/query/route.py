"""`POST /query` (and under `/v2`..`/v4`): one SQL statement over the partitions' state.

Body `{"query": "<SQL>"}`. With `Accept: application/json` the answer is `{"rows": [...]}`, else
an Arrow IPC stream (what the `restate` CLI reads). A statement DataFusion cannot plan or run
answers 400 with its message; Redis failing answers 503. An answer of one record batch is sent
whole (with its length); a longer one is written batch by batch as DataFusion computes them
(chunked), so its size is not held in memory; an error after the first batch can only cut the
connection (the status was sent).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import redis.exceptions
from aiohttp import web
from redis.asyncio import Redis

from ingress.admin.context import ADMIN
from ingress.admin.invocations import INVOCATIONS
from ingress.admin.parsing import DESERIALIZE, json_body
from ingress.admin.query.encoders import (
    ARROW_END,
    ARROW_STREAM,
    JSON_HEAD,
    JSON_TAIL,
    arrow_batch_message,
    arrow_schema_message,
    json_chunk,
)
from ingress.admin.query.engine import QueryError, QueryStream, run_query
from ingress.admin.query.store import QueryStore
from ingress.errors import BadRequest, RegistryUnavailable, UnprocessableEntity
from shardgate.keys import CLUSTER

logger = logging.getLogger(__name__)


def _redis_of(request: web.Request) -> Redis:
    """The Redis client the admin app's registry store uses (the ingress node's pool)."""
    return request.app[ADMIN].store.redis


async def _store(request: web.Request) -> QueryStore:
    """The reads of this request (cheap: the script is only hashed), over the partition count of
    the lifecycle control, else the one stored in `sg:cluster` (none stored yet: no partition has
    ever held anything, so every table is empty)."""
    control = request.app.get(INVOCATIONS)
    redis = _redis_of(request)
    if control is not None:
        return QueryStore(redis, control.partitions)
    stored = await redis.hget(CLUSTER, "partitions")
    return QueryStore(redis, int(stored) if stored is not None else 0)


async def _sql(request: web.Request) -> str:
    """The statement of the body. Raises 415/400 for a bad body, 422 without a `query` string."""
    body = await json_body(request)
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str):
        raise UnprocessableEntity(f"{DESERIALIZE}missing field `query`")
    return query


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


async def query(request: web.Request) -> web.StreamResponse:
    """Answer one statement. Raises 400 `BadRequest` for a statement error, 503 when Redis fails."""
    sql = await _sql(request)
    try:
        store = await _store(request)
        snapshot = (await request.app[ADMIN].state()).snapshot
        result = await run_query(store, snapshot, sql)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    except redis.exceptions.RedisError as exc:
        logger.warning("query failed reading Redis: %s", exc)
        raise RegistryUnavailable("the query could not read the partitions' state") from None
    as_json = wants_json(request)
    pieces = _json_pieces(result) if as_json else _arrow_pieces(result)
    content_type = "application/json" if as_json else ARROW_STREAM
    if result.rest is None:  # one batch or none: one body with its length
        return web.Response(body=b"".join([p async for p in pieces]), content_type=content_type)
    response = web.StreamResponse(headers={"content-type": content_type})
    await response.prepare(request)
    try:
        async for piece in pieces:
            await response.write(piece)
    except QueryError as exc:  # the status is sent: all that is left is to cut the answer short
        logger.warning("query failed while streaming its answer: %s", exc)
        if request.transport is not None:
            request.transport.close()  # the chunked body ends without its last chunk: the client sees an error
        return response
    await response.write_eof()
    return response


async def _arrow_pieces(result: QueryStream) -> AsyncIterator[bytes]:
    yield arrow_schema_message(result.schema)
    async for batch in result.batches():
        yield arrow_batch_message(batch)
    yield ARROW_END


async def _json_pieces(result: QueryStream) -> AsyncIterator[bytes]:
    yield JSON_HEAD
    first = True
    async for batch in result.batches():
        chunk = json_chunk(batch, first)
        first = first and not chunk
        yield chunk
    yield JSON_TAIL


def routes(prefix: str) -> list[web.RouteDef]:
    """`POST {prefix}/query`."""
    return [web.post(f"{prefix}/query", query)]
