"""Schedule routes: `PUT/GET/PATCH/DELETE /schedules[/{schedule_id}]` (also under `/v2`..`/v4`).

- `PUT /schedules/{id}` creates (201) or replaces (200) a schedule (`shardgate.schedule` has the
  body's fields); the answer is the schedule as GET shows it.
- `GET /schedules` lists every schedule; `GET /schedules/{id}` shows one with its next fire times
  and its last ticks (invocation id, and the invocation's outcome when the admin app has the
  ingress's dispatcher).
- `PATCH /schedules/{id}` with `{"paused": true|false}` pauses or resumes it (ticks due while
  paused never run; resuming fires from the next nominal time on).
- `DELETE /schedules/{id}` removes it (204).

Bad ids, expressions, zones, timestamps and targets answer 400 in the admin error shape; an unknown
schedule 404. The schedule's records are written straight into Redis on its partition
(`shardgate.schedule_store`); the partition's leader fires them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingress.admin.context import ADMIN
from ingress.admin.invocations import INVOCATIONS
from ingress.admin.parsing import json_body
from ingress.errors import (
    BadRequest,
    InvocationNotFound,
    InvocationNotReady,
    NotFound,
    PartitionUnavailable,
    RegistryUnavailable,
)
from shardgate.keys import CLUSTER
from shardgate.schedule import (
    ScheduleDefinition,
    ScheduleError,
    iso_ms,
    next_fire,
    parse_definition,
    validate_id,
)
from shardgate.schedule_store import ScheduleStore, StoredSchedule, TickRecord, describe
from shardgate.schema import SchemaSnapshot
from shardgate.sharding import InvocationId, partition_of

DEFAULT_PARTITIONS = 64  # used only while no worker has stored the cluster's partition count
_VERSION_RACE_RETRIES = 5


@dataclass(frozen=True, slots=True)
class ScheduleControl:
    """What the schedule routes need: the store (Redis, partition count)."""

    store: ScheduleStore


SCHEDULES = web.AppKey("shardgate_schedules", ScheduleControl)


def install(app: web.Application, redis: Redis, partitions: int) -> None:
    """Serve the schedule routes of `app` from `redis` (call before the app starts)."""
    app[SCHEDULES] = ScheduleControl(ScheduleStore(redis, partitions))


class _Lazy:
    """The control of an app that `install` was not called on: built from the admin context's
    Redis and the cluster's stored partition count, at the first request."""

    def __init__(self) -> None:
        self._control: ScheduleControl | None = None

    async def get(self, request: web.Request) -> ScheduleControl:
        installed = request.app.get(SCHEDULES)
        if installed is not None:
            return installed
        if self._control is None:
            redis = request.app[ADMIN].store.redis
            raw = await _redis(redis.hget(CLUSTER, "partitions"))
            if not raw:  # no worker started yet: the default for now, read again next time
                return ScheduleControl(ScheduleStore(redis, DEFAULT_PARTITIONS))
            self._control = ScheduleControl(ScheduleStore(redis, int(raw)))
        return self._control


async def _redis(call: Any) -> Any:
    """Await a Redis call. Raises 503 `RegistryUnavailable` when Redis fails."""
    try:
        return await call
    except (RedisError, OSError):
        raise RegistryUnavailable("the schedule store (Redis) is unreachable; retry") from None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _schedule_id(request: web.Request) -> str:
    try:
        return validate_id(request.match_info["schedule_id"])
    except ScheduleError as exc:
        raise BadRequest(exc.message) from None


def check_target(d: ScheduleDefinition, schema: SchemaSnapshot) -> None:
    """The target must be a registered handler, keyed exactly when its service is. Raises 400."""
    t = d.target
    meta = schema.services.get(t.service)
    if meta is None:
        raise BadRequest(f"'target.service': the service '{t.service}' is not registered")
    if t.handler not in meta.handlers:
        raise BadRequest(f"'target.handler': the service '{t.service}' has no handler '{t.handler}'")
    if meta.ty.keyed and t.key is None:
        raise BadRequest(f"'target.key' is required: '{t.service}' is a {meta.ty.value}")
    if not meta.ty.keyed and t.key is not None:
        raise BadRequest(f"'target.key' must be absent: '{t.service}' is a plain service")


async def _check_target(request: web.Request, d: ScheduleDefinition) -> None:
    """`check_target` against the cached registry, re-read from Redis before refusing (a deployment
    registered through another node may not be cached here yet). Raises 400, 503."""
    ctx = request.app[ADMIN]
    try:
        check_target(d, ctx.cache.current())
    except BadRequest:
        check_target(d, (await ctx.state()).snapshot)


def _paused_flag(body: Any) -> bool:
    value = body.get("paused", False) if isinstance(body, dict) else False
    if not isinstance(value, bool):
        raise BadRequest("'paused' must be true or false")
    return value


async def _outcome(request: web.Request, inv_id: str) -> str:
    """succeeded, failed, running or unknown (no dispatcher, not found yet, partition unreachable)."""
    control = request.app.get(INVOCATIONS)
    if control is None:
        return "unknown"
    try:
        p = partition_of(InvocationId.parse(inv_id).partition_key, control.partitions)
        outcome = await control.dispatcher.get_output(inv_id, p)
    except InvocationNotReady:
        return "running"
    except (InvocationNotFound, PartitionUnavailable, ValueError):
        return "unknown"
    return "succeeded" if outcome.ok else "failed"


async def _tick_json(request: web.Request, t: TickRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"nominal_time": iso_ms(t.nominal_ms), "action": t.action.value, "at": iso_ms(t.at_ms)}
    if t.invocation_id is not None:
        out.update(invocation_id=t.invocation_id, outcome=await _outcome(request, t.invocation_id))
    return out


async def _detail(request: web.Request, s: StoredSchedule) -> dict[str, Any]:
    out = describe(s)
    out["last_ticks"] = [await _tick_json(request, t) for t in s.history]
    return out


def routes(prefix: str) -> list[web.RouteDef]:
    """The schedule routes under `prefix` ("" or "/v2" ...)."""
    lazy = _Lazy()

    async def put_schedule(request: web.Request) -> web.Response:
        sid = _schedule_id(request)
        body = await json_body(request)
        try:
            d = parse_definition(sid, body)
        except ScheduleError as exc:
            raise BadRequest(exc.message) from None
        paused = _paused_flag(body)
        await _check_target(request, d)
        now_ms = _now_ms()
        nxt = next_fire(d, now_ms)
        if nxt is None:
            raise BadRequest("the schedule never fires: no nominal time after now (check 'end_at' and the expression)")
        control = await lazy.get(request)
        _, created = await _redis(control.store.put(d, nxt, paused, now_ms))
        stored = await _redis(control.store.get(sid))
        return web.json_response(await _detail(request, stored), status=201 if created else 200)

    async def get_schedule(request: web.Request) -> web.Response:
        sid = _schedule_id(request)
        stored = await _redis((await lazy.get(request)).store.get(sid))
        if stored is None:
            raise NotFound(f"The schedule '{sid}' does not exist")
        return web.json_response(await _detail(request, stored))

    async def list_schedules(request: web.Request) -> web.Response:
        found = await _redis((await lazy.get(request)).store.list())
        return web.json_response({"schedules": [describe(s) for s in found]})

    async def patch_schedule(request: web.Request) -> web.Response:
        sid = _schedule_id(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("paused"), bool):
            raise BadRequest("PATCH takes {\"paused\": true} or {\"paused\": false}")
        store = (await lazy.get(request)).store
        for _ in range(_VERSION_RACE_RETRIES):
            stored = await _redis(store.get(sid))
            if stored is None:
                raise NotFound(f"The schedule '{sid}' does not exist")
            now_ms = _now_ms()
            nxt = stored.next_ms if body["paused"] else next_fire(stored.definition, now_ms)
            ver = await _redis(store.set_paused(sid, stored.version, body["paused"], nxt, now_ms))
            if ver > 0:
                break
        stored = await _redis(store.get(sid))
        if stored is None:
            raise NotFound(f"The schedule '{sid}' does not exist")
        return web.json_response(await _detail(request, stored))

    async def delete_schedule(request: web.Request) -> web.Response:
        sid = _schedule_id(request)
        if not await _redis((await lazy.get(request)).store.delete(sid)):
            raise NotFound(f"The schedule '{sid}' does not exist")
        return web.Response(status=204)

    item = f"{prefix}/schedules/{{schedule_id}}"
    return [web.get(f"{prefix}/schedules", list_schedules), web.put(item, put_schedule),
            web.get(item, get_schedule), web.patch(item, patch_schedule), web.delete(item, delete_schedule)]
