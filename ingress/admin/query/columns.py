"""The tables `/query` offers, with Restate 1.7's column names and Arrow types.

Only the columns shardgate can fill are listed (Restate's others would always be NULL); a column
listed here but unknown for a row is NULL. Times are `Timestamp(ms, UTC)`, text `LargeUtf8`,
binary `LargeBinary`, as Restate's tables declare them.
"""

from __future__ import annotations

import pyarrow as pa  # type: ignore[import-untyped]

TEXT = pa.large_string()
BINARY = pa.large_binary()
TIME = pa.timestamp("ms", tz="UTC")
BOOL = pa.bool_()
U32 = pa.uint32()
U64 = pa.uint64()

_STATUS_COMMON: list[tuple[str, pa.DataType]] = [
    ("partition_key", U64), ("id", TEXT), ("target", TEXT), ("target_service_name", TEXT),
    ("target_service_key", TEXT), ("target_handler_name", TEXT), ("target_service_ty", TEXT),
    ("idempotency_key", TEXT), ("invoked_by", TEXT), ("invoked_by_service_name", TEXT),
    ("invoked_by_id", TEXT), ("invoked_by_target", TEXT), ("pinned_deployment_id", TEXT),
    ("pinned_service_protocol_version", U32), ("trace_id", TEXT), ("journal_size", U32), ("created_at", TIME), ("modified_at", TIME),
    ("inboxed_at", TIME), ("scheduled_at", TIME), ("scheduled_start_at", TIME), ("running_at", TIME),
    ("completed_at", TIME),
]
_STATE_COMMON: list[tuple[str, pa.DataType]] = [
    ("retry_count", U64), ("last_start_at", TIME), ("next_retry_at", TIME),
    ("last_attempt_deployment_id", TEXT), ("last_attempt_server", TEXT), ("last_failure", TEXT),
    ("last_failure_error_code", TEXT), ("last_failure_related_entry_index", U64),
    ("last_failure_related_entry_name", TEXT), ("last_failure_related_entry_type", TEXT),
]
_COMPLETION: list[tuple[str, pa.DataType]] = [("completion_result", TEXT), ("completion_failure", TEXT)]

SCHEMAS: dict[str, pa.Schema] = {
    # the view Restate builds over the two below: status derived (pending, scheduled, running,
    # backing-off, suspended, paused, completed)
    "sys_invocation": pa.schema(_STATUS_COMMON + _STATE_COMMON + [("status", TEXT)] + _COMPLETION),
    # status as stored: inboxed, scheduled, invoked, suspended, backing-off, paused, completed
    "sys_invocation_status": pa.schema(_STATUS_COMMON + [("status", TEXT)] + _COMPLETION),
    "sys_invocation_state": pa.schema([("partition_key", U64), ("id", TEXT), ("in_flight", BOOL)]
                                      + _STATE_COMMON),
    "sys_journal": pa.schema([
        ("partition_key", U64), ("id", TEXT), ("index", U32), ("entry_type", TEXT), ("name", TEXT),
        ("completed", BOOL), ("invoked_id", TEXT), ("invoked_target", TEXT), ("sleep_wakeup_at", TIME),
        ("promise_name", TEXT), ("raw", BINARY), ("version", U32), ("entry_json", TEXT),
        ("appended_at", TIME),
    ]),
    "sys_service": pa.schema([("name", TEXT), ("revision", U64), ("public", BOOL), ("ty", TEXT),
                              ("deployment_id", TEXT)]),
    "sys_deployment": pa.schema([("id", TEXT), ("ty", TEXT), ("endpoint", TEXT), ("created_at", TIME),
                                 ("min_service_protocol_version", U32), ("max_service_protocol_version", U32)]),
    "sys_keyed_service_status": pa.schema([("partition_key", U64), ("service_name", TEXT),
                                           ("service_key", TEXT), ("invocation_id", TEXT)]),
    "sys_inbox": pa.schema([("partition_key", U64), ("service_name", TEXT), ("service_key", TEXT),
                            ("id", TEXT), ("sequence_number", U64), ("created_at", TIME)]),
    "sys_idempotency": pa.schema([("partition_key", U64), ("service_name", TEXT), ("service_key", TEXT),
                                  ("service_handler", TEXT), ("idempotency_key", TEXT),
                                  ("invocation_id", TEXT)]),
    "sys_promise": pa.schema([("partition_key", U64), ("service_name", TEXT), ("service_key", TEXT),
                              ("key", TEXT), ("completed", BOOL), ("completion_success_value", BINARY),
                              ("completion_success_value_utf8", TEXT), ("completion_failure", TEXT)]),
    # beyond Restate: the schedules of `PUT /schedules/{id}` (shardgate/schedule_store.py)
    "sys_schedule": pa.schema([("id", TEXT), ("state", TEXT), ("cron", TEXT), ("every", TEXT), ("timezone", TEXT),
                               ("target_service_name", TEXT), ("target_service_key", TEXT),
                               ("target_handler_name", TEXT), ("scope", TEXT), ("limit_key", TEXT),
                               ("catch_up", TEXT), ("overlap", TEXT), ("next_fire_at", TIME), ("fired", U64),
                               ("skipped", U64), ("last_invocation_id", TEXT), ("last_nominal_at", TIME),
                               ("created_at", TIME), ("modified_at", TIME)]),
    # the flow-control rule book (Restate's columns, plus rate, burst, on_limit: query/vqueues.py)
    "sys_rules": pa.schema([("pattern", TEXT), ("concurrency", U32), ("rate", TEXT), ("burst", U32),
                            ("on_limit", TEXT), ("description", TEXT), ("disabled", BOOL), ("version", U32),
                            ("last_modified", TIME)]),
    # the invocations of the rule book's buckets, running and queued (Restate's column names where
    # they mean the same, plus scope and limit_key: query/vqueues.py)
    "sys_vqueues": pa.schema([("partition_key", U64), ("id", TEXT), ("stage", TEXT), ("status", TEXT),
                              ("sequence_number", U64), ("entry_id", TEXT), ("entry_kind", TEXT),
                              ("created_at", TIME), ("scope", TEXT), ("limit_key", TEXT)]),
    "state": pa.schema([("partition_key", U64), ("service_name", TEXT), ("service_key", TEXT), ("key", TEXT),
                        ("value_utf8", TEXT), ("value", BINARY)]),
}

# Tables whose rows come from the partitions' invocation indexes.
INVOCATION_TABLES = frozenset({"sys_invocation", "sys_invocation_status", "sys_invocation_state",
                               "sys_keyed_service_status", "sys_inbox"})
