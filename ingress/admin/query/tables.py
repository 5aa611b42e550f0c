"""Build the Arrow tables one query needs, reading only what its plan asks for.

`pushdown.scans_of` says which tables the plan reads, which of their columns, and the simple
constraints on id, service, key and status; the readers here turn those into `QueryStore` reads
and the rows into Arrow tables with the schemas of `columns.SCHEMAS` (columns the plan does not
read are all NULL, so a query never pays for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from ingress.admin.query.columns import SCHEMAS
from ingress.admin.query.journal import journal_rows
from ingress.admin.query.pushdown import Constraint, Scan
from ingress.admin.query.rows import HOLDS_LOCK, SQL_STATUS, Columns, stored_statuses, time_of
from ingress.admin.query.store import (
    F_ATTEMPTS,
    F_EXECUTION_TIME,
    F_EXPIRES,
    F_HANDLER,
    F_IDEMPOTENCY_KEY,
    F_INPUT,
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
    InvocationFilter,
    InvocationRows,
    QueryStore,
)
from ingress.admin.query.vqueues import rule_rows, vqueue_rows
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate.schedule_store import ScheduleStore, sys_schedule_row
from shardgate.schema import SchemaSnapshot
from shardgate.sharding import partition_key_for_key

Row = dict[str, Any]

# invocation column -> hash fields it is computed from (status, service and key are always read)
_COLUMN_FIELDS: dict[str, tuple[str, ...]] = {
    "target": (F_HANDLER,), "target_handler_name": (F_HANDLER,), "target_service_ty": (F_KIND,),
    "invoked_by": (F_INVOKED_BY,), "invoked_by_id": (F_INVOKED_BY,), "invoked_by_service_name": (F_INVOKED_BY,),
    "idempotency_key": (F_IDEMPOTENCY_KEY,), "service_handler": (F_HANDLER,), "retry_count": (F_ATTEMPTS,),
    "last_failure": (F_LAST_FAILURE,), "modified_at": (F_LAST_GROWTH, F_EXPIRES, F_RETENTION),
    "completed_at": (F_EXPIRES, F_RETENTION), "scheduled_at": (F_EXECUTION_TIME,),
    "scheduled_start_at": (F_EXECUTION_TIME,), "completion_result": (F_RESULT,), "completion_failure": (F_RESULT,),
    "pinned_deployment_id": (F_PINNED_DEPLOYMENT,), "pinned_service_protocol_version": (F_PINNED_PROTOCOL,),
    "last_attempt_deployment_id": (F_PINNED_DEPLOYMENT,), "last_attempt_server": (F_PINNED_DEPLOYMENT,),
}
# invocation table -> (id column, service column, key column, status column)
_NAMES = {
    "sys_invocation": ("id", "target_service_name", "target_service_key", "status"),
    "sys_invocation_status": ("id", "target_service_name", "target_service_key", "status"),
    "sys_invocation_state": ("id", "", "", ""),
    "sys_inbox": ("id", "service_name", "service_key", ""),
    "sys_keyed_service_status": ("invocation_id", "service_name", "service_key", ""),
    "sys_idempotency": ("invocation_id", "service_name", "service_key", ""),
}
_ALL_STORED = frozenset(SQL_STATUS)


def arrow_table(name: str, rows: list[Row], columns: set[str] | None) -> pa.Table:
    """`rows` as table `name`; columns outside `columns` (None: all) are NULL."""
    schema = SCHEMAS[name]
    arrays = []
    for f in schema:
        if columns is None or f.name in columns:
            arrays.append(pa.array([r.get(f.name) for r in rows], type=f.type))
        else:
            arrays.append(pa.nulls(len(rows), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _allowed(c: Constraint | None) -> frozenset[str] | None:
    return None if c is None else c.allowed


def _statuses(table: str, c: Constraint | None) -> frozenset[str] | None:
    """The stored statuses a status constraint leaves (None: any)."""
    if table == "sys_inbox":
        return frozenset({"inboxed"})
    if table == "sys_keyed_service_status":
        return HOLDS_LOCK
    if c is None or table not in ("sys_invocation", "sys_invocation_status"):
        return None
    convert: Callable[[frozenset[str]], frozenset[str]] = (
        stored_statuses if table == "sys_invocation" else (lambda s: s & _ALL_STORED))
    allowed = _ALL_STORED if c.allowed is None else convert(c.allowed)
    left = allowed - convert(c.excluded)
    return None if left == _ALL_STORED else left


def invocation_read(table: str, scan: Scan) -> tuple[InvocationFilter, frozenset[str] | None]:
    """The filter and the ids (None: every listed one) a scan of an invocation table needs."""
    id_col, svc_col, key_col, status_col = _NAMES[table]
    k = scan.constraints
    services = _allowed(k.get(svc_col)) if svc_col else None
    target = k.get("target")
    if services is None and target is not None and target.allowed is not None:
        services = frozenset(t.split("/", 1)[0] for t in target.allowed)
    f = InvocationFilter(_statuses(table, k.get(status_col) if status_col else None), services,
                         _allowed(k.get(key_col)) if key_col else None)
    return f, _allowed(k.get(id_col))


def fields_for(columns: set[str] | None) -> list[str]:
    """Hash fields to read for these invocation columns (status, service, key first)."""
    wanted = [F_STATUS, F_SERVICE, F_KEY]
    extra = {f for c, fs in _COLUMN_FIELDS.items() if columns is None or c in columns for f in fs}
    return wanted + sorted(extra - set(wanted)) + ([F_KIND] if F_KIND not in extra else [])


# invocation table -> its column -> the `rows.Columns` column it shows
_RENAMES: dict[str, dict[str, str]] = {
    "sys_invocation_status": {"status": "stored_status"},
    "sys_inbox": {"service_name": "target_service_name", "service_key": "target_service_key",
                  "sequence_number": "accepted_ms"},
    "sys_keyed_service_status": {"service_name": "target_service_name", "service_key": "target_service_key",
                                 "invocation_id": "id"},
    "sys_idempotency": {"service_name": "target_service_name", "service_key": "target_service_key",
                        "service_handler": "target_handler_name", "invocation_id": "id"},
}
LOCKING_KINDS = frozenset({"exclusive", "workflow"})


def invocation_arrow(table: str, rows: InvocationRows, columns: set[str] | None, cols: Columns) -> pa.Table:
    """Invocation rows as table `table`, computing only `columns` (None: all; the rest NULL)."""
    if table == "sys_keyed_service_status":
        rows = rows.where([(k or b"").decode() in LOCKING_KINDS for k in rows.values[F_KIND]])
    elif table == "sys_idempotency":  # the invocations a client's idempotency key names
        rows = rows.where([k is not None for k in rows.values[F_IDEMPOTENCY_KEY]])
    rename = _RENAMES.get(table, {})
    schema = SCHEMAS[table]
    arrays = [pa.array(cols.values(rename.get(f.name, f.name), rows), type=f.type)
              if columns is None or f.name in columns else pa.nulls(len(rows), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


async def invocation_table(store: QueryStore, snapshot: SchemaSnapshot, table: str, scan: Scan) -> pa.Table:
    f, ids = invocation_read(table, scan)
    wanted = scan.columns
    fields = fields_for(wanted)
    filtered = table in ("sys_keyed_service_status", "sys_idempotency")  # rows dropped after the read
    if table == "sys_idempotency" and F_IDEMPOTENCY_KEY not in fields:
        fields.append(F_IDEMPOTENCY_KEY)
    rows = await store.invocations(fields, f, ids, retry=wanted is None or "next_retry_at" in wanted,
                                   journal=wanted is None or "journal_size" in wanted,
                                   fetch=None if filtered else scan.fetch)
    return invocation_arrow(table, rows, scan.columns, Columns(snapshot))


async def journal_table(store: QueryStore, scan: Scan) -> pa.Table:
    """`sys_journal`: the journals of the named invocations (else of every listed one)."""
    ids = _allowed(scan.constraints.get("id"))
    rows = await store.invocations([F_STATUS, F_SERVICE, F_KEY, F_INPUT], InvocationFilter(), ids)
    lists = await asyncio.gather(*(store.journal(p, i) for p, i in zip(rows.partitions, rows.ids, strict=True)))
    out: list[Row] = []
    for inv_id, head, entries in zip(rows.ids, rows.values[F_INPUT], lists, strict=True):
        out += journal_rows(inv_id, ([head] if head else []) + entries)
    return arrow_table("sys_journal", out, scan.columns)


def _result_columns(raw: bytes) -> Row:
    msg = pb.NotificationTemplate.FromString(raw)
    if msg.HasField("failure"):
        return {"completed": True, "completion_failure": f"[{msg.failure.code}] {msg.failure.message}"}
    value = msg.value.content if msg.HasField("value") else b""
    try:
        utf8: str | None = value.decode()
    except UnicodeDecodeError:
        utf8 = None
    return {"completed": True, "completion_success_value": value, "completion_success_value_utf8": utf8}


async def keyed_table(store: QueryStore, table: str, scan: Scan) -> pa.Table:
    """`state` or `sys_promise` of the named services and keys (else of all)."""
    k = scan.constraints
    kind = "state" if table == "state" else "prom"
    found = await store.keyed_hashes(kind, _allowed(k.get("service_name")), _allowed(k.get("service_key")))
    rows: list[Row] = []
    for _, service, key, values in found:
        for name, value in values.items():
            row: Row = {"partition_key": partition_key_for_key(key), "service_name": service, "service_key": key,
                        "key": name.decode(errors="replace")}
            if kind == "state":
                row.update(value=value, value_utf8=_utf8(value))
            else:
                row.update(_result_columns(value))
            rows.append(row)
    return arrow_table(table, rows, scan.columns)


def _utf8(value: bytes) -> str | None:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def registry_table(table: str, snapshot: SchemaSnapshot, scan: Scan) -> pa.Table:
    """`sys_service` and `sys_deployment` from the registry snapshot."""
    rows: list[Row]
    if table == "sys_service":
        rows = [{"name": s.name, "revision": s.revision, "public": s.public,
                 "ty": {"Service": "service", "VirtualObject": "virtual_object", "Workflow": "workflow"}[s.ty.value],
                 "deployment_id": s.deployment_id} for s in snapshot.services.values()]
    else:
        rows = [{"id": d.id, "ty": "http", "endpoint": d.uri, "created_at": time_of(d.created_at_ms),
                 "min_service_protocol_version": d.min_protocol_version,
                 "max_service_protocol_version": d.max_protocol_version} for d in snapshot.deployments.values()]
    return arrow_table(table, rows, scan.columns)


async def schedule_table(store: QueryStore, scan: Scan) -> pa.Table:
    """`sys_schedule`: every schedule of every partition (two pipelined round trips)."""
    rows: list[Row] = []
    for s in await ScheduleStore(store.redis, store.partitions).list():
        row = sys_schedule_row(s)
        row.update(next_fire_at=None if s.paused else time_of(s.next_ms), last_nominal_at=time_of(s.last_nominal_ms),
                   created_at=time_of(s.created_ms), modified_at=time_of(s.updated_ms))
        rows.append(row)
    return arrow_table("sys_schedule", rows, scan.columns)


async def build_table(store: QueryStore, snapshot: SchemaSnapshot, table: str, scan: Scan) -> pa.Table:
    """Table `table` as the plan's scan of it needs it. Raises `redis.RedisError`."""
    if table in _NAMES:
        return await invocation_table(store, snapshot, table, scan)
    if table == "sys_journal":
        return await journal_table(store, scan)
    if table in ("state", "sys_promise"):
        return await keyed_table(store, table, scan)
    if table in ("sys_service", "sys_deployment"):
        return registry_table(table, snapshot, scan)
    if table == "sys_schedule":
        return await schedule_table(store, scan)
    if table == "sys_rules":
        return arrow_table(table, await rule_rows(store.redis), scan.columns)
    if table == "sys_vqueues":
        return arrow_table(table, await vqueue_rows(store), scan.columns)
    return arrow_table(table, [], scan.columns)  # a table shardgate keeps nothing for
