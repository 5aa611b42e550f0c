"""Invocation rows as `/query` shows them: the stored hash fields turned into Restate's columns.

Statuses: the stored one (`sys_invocation_status.status`) and Restate's derived one
(`sys_invocation.status`, `SQL_STATUS`). Columns shardgate does not record are NULL:
`trace_id`, `running_at`, `last_start_at`, `invoked_by_target`; `idempotency_key` is the key a
client (or a calling handler) gave, not one the ingress generated; `invoked_by*` name the
invocation whose handler sent this one (`by`, kept from its accept); `pinned_deployment_id` and
`pinned_service_protocol_version` are the stored pin (set with the first journal entry; a completed
invocation keeps it with its journal), and `last_attempt_deployment_id` the pinned deployment, else
the one the service is registered on now once the invocation has started.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ingress.admin.query.store import (
    F_ATTEMPTS,
    F_EXECUTION_TIME,
    F_EXPIRES,
    F_HANDLER,
    F_IDEMPOTENCY_KEY,
    F_INVOKED_BY,
    F_KEY,
    F_KIND,
    F_LAST_FAILURE,
    F_LAST_GROWTH,
    F_PINNED_DEPLOYMENT,
    F_PINNED_PROTOCOL,
    F_RESULT,
    F_RETENTION,
    F_SERVICE,
    F_STATUS,
    InvocationRows,
)
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.schema import SchemaSnapshot, ServiceType
from shardgate.sharding import InvocationId, InvocationIdError

# stored status -> sys_invocation's status (Restate's view: inboxed is "pending", invoked "running")
SQL_STATUS = {"inboxed": "pending", "scheduled": "scheduled", "invoked": "running", "suspended": "suspended",
              "backing-off": "backing-off", "paused": "paused", "completed": "completed"}
NOT_STARTED = frozenset({"inboxed", "scheduled"})
HOLDS_LOCK = frozenset({"invoked", "suspended", "backing-off", "paused"})
_SERVICE_TY = {ServiceType.SERVICE: "service", ServiceType.VIRTUAL_OBJECT: "virtual_object",
               ServiceType.WORKFLOW: "workflow"}
_KIND_TY = {"service": "service", "exclusive": "virtual_object", "shared": "virtual_object", "workflow": "workflow"}

def stored_statuses(sql_statuses: frozenset[str]) -> frozenset[str]:
    """The stored statuses whose derived status is one of `sql_statuses`."""
    return frozenset(st for st, sql in SQL_STATUS.items() if sql in sql_statuses)


def time_of(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms is not None else None


def _texts(column: list[bytes | None]) -> list[str | None]:
    return [v.decode() if v else None for v in column]


def _col(rows: InvocationRows, name: str) -> list[bytes | None]:
    """Field `name` of every row (all None when it was not read)."""
    return rows.values.get(name) or [None] * len(rows)


def _ints(column: list[bytes | None]) -> list[int | None]:
    return [int(v) if v else None for v in column]


def partition_key_of(invocation_id: str) -> int | None:
    try:
        return InvocationId.parse(invocation_id).partition_key
    except InvocationIdError:
        return None


def completion(raw: bytes | None) -> tuple[str | None, str | None]:
    """(completion_result, completion_failure) of a stored result field."""
    if not raw:
        return None, None
    msg = pb.NotificationTemplate.FromString(raw)
    if msg.HasField("failure"):
        return "failure", f"[{msg.failure.code}] {msg.failure.message}"
    return "success", None


def _target(service: str | None, key: str | None, handler: str | None) -> str:
    return f"{service}/{handler}" if key is None else f"{service}/{key}/{handler}"


def _completed_ms(rows: InvocationRows) -> list[int | None]:
    return [e - r if e is not None and r is not None else None
            for e, r in zip(_ints(_col(rows, F_EXPIRES)), _ints(_col(rows, F_RETENTION)), strict=True)]


def _modified(rows: InvocationRows) -> list[datetime | None]:
    out = []
    for found in zip(rows.accepted_ms, _ints(_col(rows, F_LAST_GROWTH)), _completed_ms(rows), strict=True):
        known = [x for x in found if x is not None]
        out.append(time_of(max(known)) if known else None)
    return out


def _callers(rows: InvocationRows) -> list[tuple[str, str] | None]:
    """(id, service) of the invocation that sent each one (`<id>|<service>`); None: the ingress."""
    return [tuple(by.split("|", 1)) if by and "|" in by else None  # type: ignore[misc]
            for by in _texts(_col(rows, F_INVOKED_BY))]


def _times(ms: list[int | None]) -> list[datetime | None]:
    return [time_of(x) for x in ms]


class Columns:
    """Computes invocation columns one at a time over whole columns of rows, so a query pays only
    for the columns it reads."""

    def __init__(self, snapshot: SchemaSnapshot) -> None:
        self._snapshot = snapshot
        self._fns: dict[str, Callable[[InvocationRows], list[Any]]] = {
            "partition_key": lambda r: [partition_key_of(i) for i in r.ids], "id": lambda r: r.ids,
            "target": lambda r: [_target(s, k, h) for s, k, h in zip(
                _texts(_col(r, F_SERVICE)), _texts(_col(r, F_KEY)), _texts(_col(r, F_HANDLER)), strict=True)],
            "target_service_name": lambda r: _texts(_col(r, F_SERVICE)),
            "target_service_key": lambda r: _texts(_col(r, F_KEY)),
            "target_handler_name": lambda r: _texts(_col(r, F_HANDLER)),
            "target_service_ty": self._service_ty,
            "invoked_by": lambda r: ["service" if c else "ingress" for c in _callers(r)],
            "invoked_by_id": lambda r: [c[0] if c else None for c in _callers(r)],
            "invoked_by_service_name": lambda r: [c[1] if c else None for c in _callers(r)],
            "idempotency_key": lambda r: _texts(_col(r, F_IDEMPOTENCY_KEY)),
            "pinned_deployment_id": lambda r: _texts(_col(r, F_PINNED_DEPLOYMENT)),
            "pinned_service_protocol_version": lambda r: _ints(_col(r, F_PINNED_PROTOCOL)),
            "last_attempt_deployment_id": lambda r: [d[0] for d in self._deployments(r)],
            "last_attempt_server": lambda r: [d[1] for d in self._deployments(r)],
            # a running invocation's input is in its hash, a completed one's heads its retained journal
            "journal_size": lambda r: [None if n is None else n if s == "completed" else n + 1
                                       for n, s in zip(r.journal_lengths, _texts(_col(r, F_STATUS)), strict=True)],
            "retry_count": lambda r: [n or 0 for n in _ints(_col(r, F_ATTEMPTS))],
            "last_failure": lambda r: _texts(_col(r, F_LAST_FAILURE)),
            "status": lambda r: [SQL_STATUS.get(s or "", s) for s in _texts(_col(r, F_STATUS))],
            "stored_status": lambda r: _texts(_col(r, F_STATUS)),
            "in_flight": lambda r: [s == "invoked" for s in _texts(_col(r, F_STATUS))],
            "completion_result": lambda r: [completion(v)[0] for v in _col(r, F_RESULT)],
            "completion_failure": lambda r: [completion(v)[1] for v in _col(r, F_RESULT)],
            "created_at": lambda r: _times(r.accepted_ms), "modified_at": _modified,
            "inboxed_at": lambda r: [time_of(a) if s == "inboxed" else None
                                     for a, s in zip(r.accepted_ms, _texts(_col(r, F_STATUS)), strict=True)],
            "scheduled_at": lambda r: [time_of(a) if e else None
                                       for a, e in zip(r.accepted_ms, _col(r, F_EXECUTION_TIME), strict=True)],
            "scheduled_start_at": lambda r: _times(_ints(_col(r, F_EXECUTION_TIME))),
            "completed_at": lambda r: _times(_completed_ms(r)), "next_retry_at": lambda r: _times(r.retry_due_ms),
            "accepted_ms": lambda r: [a or 0 for a in r.accepted_ms],
        }

    def _service_ty(self, rows: InvocationRows) -> list[str | None]:
        out = []
        for service, kind in zip(_texts(_col(rows, F_SERVICE)), _texts(_col(rows, F_KIND)), strict=True):
            svc = self._snapshot.services.get(service or "")
            out.append(_SERVICE_TY[svc.ty] if svc is not None else _KIND_TY.get(kind or ""))
        return out

    def _deployments(self, rows: InvocationRows) -> list[tuple[str | None, str | None]]:
        """(deployment id, SDK version) each invocation that started runs on."""
        out: list[tuple[str | None, str | None]] = []
        for service, status, pinned in zip(_texts(_col(rows, F_SERVICE)), _texts(_col(rows, F_STATUS)),
                                           _texts(_col(rows, F_PINNED_DEPLOYMENT)), strict=True):
            svc = self._snapshot.services.get(service or "")
            dep_id = pinned if pinned is not None else svc.deployment_id if svc is not None else None
            if dep_id is None or status in NOT_STARTED:
                out.append((None, None))
                continue
            dep = self._snapshot.deployments.get(dep_id)
            out.append((dep_id, dep.sdk_version if dep is not None else None))
        return out

    def values(self, column: str, rows: InvocationRows) -> list[Any]:
        """Column `column` of every row (NULLs for a column no invocation records)."""
        fn = self._fns.get(column)
        return [None] * len(rows) if fn is None else fn(rows)
