"""`GET /restate/invocation/{id}/status` (beyond Restate 1.7, what its clients ask for:
sdk-typescript #623): where an invocation is, without waiting for it.

Answer `{"stage": "created" | "started" | "completed", "status": <sys_invocation status>,
"error"?: "[code] message"}`: `created` for one that never started (`scheduled`, `pending` =
inboxed), `started` while it runs (`running`, `suspended`, `backing-off`, `paused`), `completed`
once it has a result. `error` is the failure it completed with, or while it runs the failure of
its last attempt. An unknown (or expired, or purged) id answers 404 `invocation not found`, a
malformed one 400. The status is one HMGET of the invocation's status hash (`RedisStatusReader`),
a plain read as the admin API's `/query` does; the ingress never imports the worker, so the key
and field names below mirror `partition/keys.py` and `partition/invocation.py`
(`tests/e2e/test_invocation_status.py` keeps them equal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, cast

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingress.errors import InvocationNotFound, MethodNotAllowed, PartitionUnavailable
from ingress.handlers.responses import json_response
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.sharding import InvocationId, partition_of

STATUS_FIELDS = ("st", "res", "lerr")  # HashField.STATUS, RESULT, LAST_FAILURE
NOT_FOUND = "invocation not found"

# stored status -> (stage, sys_invocation status)
STAGES: dict[str, tuple[str, str]] = {
    "scheduled": ("created", "scheduled"),
    "inboxed": ("created", "pending"),
    "invoked": ("started", "running"),
    "suspended": ("started", "suspended"),
    "backing-off": ("started", "backing-off"),
    "paused": ("started", "paused"),
    "completed": ("completed", "completed"),
}


log = logging.getLogger(__name__)

def invocation_key(partition: int, invocation_id: str) -> str:
    """`partition.keys.invocation`."""
    return f"sg:{{p{partition}}}:inv:{invocation_id}"


@dataclass(frozen=True, slots=True)
class InvocationStatus:
    """What the status hash says: the stored status, the result field (encoded), the last failure."""

    status: str
    result: bytes | None = None
    last_failure: str | None = None

    def body(self) -> dict[str, str]:
        """The JSON answer."""
        stage, shown = STAGES.get(self.status, ("started", self.status))
        out = {"stage": stage, "status": shown}
        error = self._completion_failure() if self.result is not None else self.last_failure
        if error:
            out["error"] = error
        return out

    def _completion_failure(self) -> str | None:
        assert self.result is not None
        try:
            msg = pb.NotificationTemplate.FromString(self.result)
        except Exception:  # noqa: BLE001  an unreadable result is shown without its failure
            return None
        if not msg.HasField("failure"):
            return None
        return f"[{msg.failure.code}] {msg.failure.message}"


class StatusReader(Protocol):
    """Reads an invocation's status hash; None when it does not exist."""

    async def __call__(self, invocation_id: str, partition: int) -> InvocationStatus | None: ...


class RedisStatusReader:
    """`StatusReader` over the partitions' Redis (one HMGET)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def __call__(self, invocation_id: str, partition: int) -> InvocationStatus | None:
        raw = cast("list[bytes | None]", await self._redis.hmget(invocation_key(partition, invocation_id),
                                                                 list(STATUS_FIELDS)))
        status, result, failure = raw
        if status is None:
            return None
        return InvocationStatus(status.decode(), result, None if failure is None else failure.decode())


async def handle_status(request: web.Request, invocation_id: InvocationId, *, reader: StatusReader,
                        partitions: int) -> web.Response:
    """Answer the status of `invocation_id`. Raises 405 for a method other than GET, 404
    `InvocationNotFound` for an unknown id, 503 `PartitionUnavailable` when Redis fails."""
    if request.method != "GET":
        raise MethodNotAllowed()
    inv = str(invocation_id)
    try:
        found = await reader(inv, partition_of(invocation_id.partition_key, partitions))
    except RedisError as exc:  # its text can name Redis's host and port: logged, not answered
        log.warning("cannot read an invocation's status: %s", exc, extra={"invocation_id": inv})
        raise PartitionUnavailable("cannot read the invocation's status now. Retry later.") from None
    if found is None:
        raise InvocationNotFound(NOT_FOUND)
    return json_response(found.body())
