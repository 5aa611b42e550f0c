"""Flow-control rule routes (Restate `rest_api/rules.rs`, plus listing), also under `/v2`..`/v4`.

- `PUT /limits/rules` with a JSON array of `{pattern, limits, description?, disabled?,
  precondition?}` creates or replaces each rule (version + 1) and answers 200 with the stored
  rules in the order given. `precondition: {"expected_version": n}` makes the write conditional
  (0: the rule must not exist); a failed precondition answers 409 and changes nothing.
- `POST /limits/rules/bulk-delete` with `[{pattern, expected_version?}]` deletes the rules and
  answers 200 with the patterns deleted (an unknown pattern is skipped); a version mismatch 409.
- `GET /limits/rules` lists every rule; `GET /limits/rules/{pattern}` shows one (404 if none).
- `GET /limits/status?scope=S`: per concurrency bucket of scope S, its limit, how many run, how
  many are queued and how long the oldest queued one waits, also per limit key (read from the
  scope's partition, where the slots and queues live).
- `limits` takes `concurrency` and/or (beyond Restate) `rate` (`<n>/s|m|h`) with an optional
  `burst` (default 1), and `on_limit`: `queue` (default: wait) or `reject` (429 with Retry-After);
  every malformed value answers 400 naming it (`shardgate.limits.Limits.parse`).

The rule book is the Redis hash `shardgate.limits.RULES_KEY`; every change bumps its version,
which every partition worker polls, so a change is in force cluster-wide within a second. Writes
are optimistic transactions (WATCH / MULTI) over the whole hash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from ingress.admin.context import ADMIN
from ingress.admin.parsing import json_body
from ingress.admin.query.store import F_LAST_GROWTH, inv_key
from ingress.errors import BadRequest, Conflict, NotFound, RegistryUnavailable
from shardgate.keys import CLUSTER
from shardgate.limits import (
    RULES_KEY,
    UNLIMITED,
    VERSION_FIELD,
    Rule,
    RuleBook,
    RuleError,
    RuleInput,
    book_from_hash,
    component_error,
    in_scope,
    parse_pattern,
    rule_field,
    vqueue_key,
)
from shardgate.sharding import partition_key_for_key, partition_of

T = TypeVar("T")
_WRITE_ATTEMPTS = 20


def _redis_of(request: web.Request) -> Redis:
    return request.app[ADMIN].store._redis  # RegistryStore has no public accessor yet (as schedules.py)


async def _guard(call: Awaitable[T]) -> T:
    """Await a Redis call. Raises 503 `RegistryUnavailable` when Redis fails."""
    try:
        return await call
    except (RedisError, OSError):
        raise RegistryUnavailable("the rule book (Redis) is unreachable; retry") from None


async def load_book(redis: Redis) -> RuleBook:
    """The rule book as stored now. Raises RedisError."""
    return book_from_hash(await redis.hgetall(RULES_KEY))


async def _transact(redis: Redis, change: Callable[[RuleBook], tuple[dict[str, str], list[str], T]]) -> T:
    """Apply `change(book) -> (fields to set, fields to delete, answer)` atomically, retrying on a
    concurrent write. Raises RedisError, or whatever `change` raises."""
    for _ in range(_WRITE_ATTEMPTS):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(RULES_KEY)
                book = book_from_hash(await pipe.hgetall(RULES_KEY))
                to_set, to_delete, answer = change(book)
                pipe.multi()  # type: ignore[no-untyped-call]
                if to_delete:
                    pipe.hdel(RULES_KEY, *to_delete)
                if to_set:
                    pipe.hset(RULES_KEY, mapping=dict(to_set.items()))
                pipe.hincrby(RULES_KEY, VERSION_FIELD, 1)
                await pipe.execute()
                return answer
            except WatchError:
                continue
    raise RegistryUnavailable("the rule book is too contended; retry")


def _inputs(body: Any) -> list[RuleInput]:
    """The rules of a PUT body. Raises 400."""
    if not isinstance(body, list):
        raise BadRequest("Failed to deserialize the JSON body: expected an array of rules")
    try:
        inputs = [RuleInput.parse(raw) for raw in body]
    except RuleError as exc:
        raise BadRequest(str(exc)) from None
    if len({i.pattern for i in inputs}) != len(inputs):
        raise BadRequest("a pattern appears more than once in the request")
    return inputs


def _put(inputs: list[RuleInput], now_ms: int) -> Callable[[RuleBook], tuple[dict[str, str], list[str], list[Rule]]]:
    def change(book: RuleBook) -> tuple[dict[str, str], list[str], list[Rule]]:
        stored: list[Rule] = []
        for new in inputs:
            old = book.rules.get(new.pattern)
            _check_version(new.pattern, old, new.expected_version)
            if old is None:
                rule = Rule(new.pattern, new.limits, new.description, new.disabled, 1, now_ms)
            else:
                rule = old.updated(new, now_ms)
            stored.append(rule)
        return {rule_field(r.pattern): json.dumps(r.to_json()) for r in stored}, [], stored
    return change


def _check_version(pattern: str, old: Rule | None, expected: int | None) -> None:
    """Raises 409 when `expected` (0 = absent) does not match the stored rule's version."""
    if expected is None:
        return
    found = 0 if old is None else old.version
    if found != expected:
        raise Conflict(f"precondition failed for rule '{pattern}': expected version {expected}, found {found}")


def _deletes(body: Any) -> list[tuple[str, int | None]]:
    """(pattern, expected version) pairs of a bulk-delete body. Raises 400."""
    if not isinstance(body, list):
        raise BadRequest("Failed to deserialize the JSON body: expected an array of {pattern}")
    out: list[tuple[str, int | None]] = []
    for raw in body:
        if not isinstance(raw, dict) or not isinstance(raw.get("pattern"), str):
            raise BadRequest("Failed to deserialize the JSON body: every element needs a pattern")
        try:
            parse_pattern(raw["pattern"])
        except RuleError as exc:
            raise BadRequest(str(exc)) from None
        version = raw.get("expected_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise BadRequest("expected_version must be an integer")
        out.append((raw["pattern"], version))
    return out


def _delete(wanted: list[tuple[str, int | None]]) -> Callable[[RuleBook], tuple[dict[str, str], list[str], list[str]]]:
    def change(book: RuleBook) -> tuple[dict[str, str], list[str], list[str]]:
        gone: list[str] = []
        for pattern, expected in wanted:
            old = book.rules.get(pattern)
            _check_version(pattern, old, expected)
            if old is not None:
                gone.append(pattern)
        return {}, [rule_field(p) for p in gone], gone
    return change


async def _partitions(redis: Redis) -> int:
    """The cluster's partition count. Raises RedisError, or 503 before the cluster's first start."""
    raw = await redis.hget(CLUSTER, "partitions")
    if not raw:
        raise RegistryUnavailable("the cluster has not started yet (no partition count stored)")
    return int(raw)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _queue_head(redis: Redis, p: int, queue: str, now_ms: int) -> tuple[int, int | None]:
    """(length, age in ms of its oldest still stored id) of one limit key's queue."""
    length = int(await redis.llen(queue))
    head = await redis.lindex(queue, 0)
    if head is None:
        return length, None
    accepted = await redis.hget(inv_key(p, _text(head)), F_LAST_GROWTH)  # the mirror tests keep honest
    return length, None if accepted is None else max(0, now_ms - int(accepted))


async def scope_status(redis: Redis, scope: str, now_ms: int) -> dict[str, Any]:
    """The `GET /limits/status` body of `scope` (no buckets before the cluster's first start:
    nothing can run or queue yet). Raises RedisError."""
    if not await redis.hget(CLUSTER, "partitions"):
        return {"scope": scope, "buckets": []}
    p = partition_of(partition_key_for_key(scope), await _partitions(redis))
    buckets = sorted(_text(b) for b in await redis.smembers(vqueue_key(p, "buckets")))
    out = []
    for bucket in (b for b in buckets if in_scope(b, scope)):
        limit = await redis.hget(vqueue_key(p, "lim"), bucket)
        keys_: list[dict[str, Any]] = []
        queued_total, ages = 0, []
        for lk in sorted({_text(k) for k in await redis.lrange(vqueue_key(p, f"rr:{bucket}"), 0, -1)}):
            queued, age = await _queue_head(redis, p, vqueue_key(p, f"q:{bucket}|{lk}"), now_ms)
            keys_.append({"limit_key": lk or None, "queued": queued, "oldest_queued_age_ms": age})
            queued_total += queued
            ages += [] if age is None else [age]
        concurrency = int(limit) if limit and int(limit) < UNLIMITED else None  # None: a rate-only rule
        out.append({"bucket": bucket, "concurrency": concurrency,
                    "running": int(await redis.scard(vqueue_key(p, f"run:{bucket}"))),
                    "queued": queued_total, "oldest_queued_age_ms": max(ages, default=None), "limit_keys": keys_})
    return {"scope": scope, "buckets": out}


def routes(prefix: str) -> list[web.RouteDef]:
    """The rule routes under `prefix` ("" or "/v2" ...)."""

    async def put_rules(request: web.Request) -> web.Response:
        inputs = _inputs(await json_body(request))
        stored = await _guard(_transact(_redis_of(request), _put(inputs, int(time.time() * 1000))))
        return web.json_response([r.to_json() for r in stored])

    async def bulk_delete(request: web.Request) -> web.Response:
        wanted = _deletes(await json_body(request))
        return web.json_response(await _guard(_transact(_redis_of(request), _delete(wanted))))

    async def list_rules(request: web.Request) -> web.Response:
        book = await _guard(load_book(_redis_of(request)))
        return web.json_response([r.to_json() for r in book.listed()])

    async def get_rule(request: web.Request) -> web.Response:
        pattern = request.match_info["pattern"]
        book = await _guard(load_book(_redis_of(request)))
        rule = book.rules.get(pattern)
        if rule is None:
            raise NotFound(f"The rule '{pattern}' does not exist")
        return web.json_response(rule.to_json())

    async def status(request: web.Request) -> web.Response:
        scope = request.query.get("scope")
        if scope is None:
            raise BadRequest("the query parameter 'scope' is required")
        err = component_error(scope)
        if err is not None:
            raise BadRequest(f"bad scope value: {err}")
        body = await _guard(scope_status(_redis_of(request), scope, int(time.time() * 1000)))
        return web.json_response(body)

    return [
        web.get(f"{prefix}/limits/status", status),
        web.put(f"{prefix}/limits/rules", put_rules),
        web.get(f"{prefix}/limits/rules", list_rules),
        web.post(f"{prefix}/limits/rules/bulk-delete", bulk_delete),
        web.get(prefix + "/limits/rules/{pattern:.+}", get_rule),
    ]
