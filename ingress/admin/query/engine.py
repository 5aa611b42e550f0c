"""Run one SQL statement with DataFusion over tables read from Redis for it.

1. Plan the statement over empty tables (every schema of `columns.SCHEMAS`, information_schema
   on): planning errors are the caller's (`QueryError`, answered 400); DDL, DML and other
   statements are refused the same way.
2. Read what the optimized plan scans (`pushdown.scans_of`), with its constraints pushed into the
   reads (`tables.build_table`).
3. Execute the statement again over those tables, off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pyarrow as pa  # type: ignore[import-untyped]
from datafusion import SessionConfig, SessionContext, SQLOptions

from ingress.admin.query.columns import SCHEMAS
from ingress.admin.query.pushdown import Scan, scans_of
from ingress.admin.query.store import QueryStore
from ingress.admin.query.tables import arrow_table, build_table
from shardgate.schema import SchemaSnapshot

_READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


class QueryError(ValueError):
    """The statement cannot be planned or run (a client error); the message is DataFusion's."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    schema: pa.Schema
    batches: list[pa.RecordBatch]


def _context(tables: dict[str, pa.Table]) -> SessionContext:
    """A session with every table registered: the given ones, the others empty."""
    ctx = SessionContext(SessionConfig().with_information_schema(True).with_target_partitions(1))
    for name, schema in SCHEMAS.items():
        table = tables.get(name)
        if table is None:
            table = arrow_table(name, [], set())
        batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=schema)]
        ctx.register_record_batches(name, [batches])
    return ctx


def _message(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def plan(sql: str) -> dict[str, Scan]:
    """What `sql` reads of each table. Raises `QueryError`."""
    try:
        return scans_of(_context({}).sql_with_options(sql, _READ_ONLY).optimized_logical_plan())
    except Exception as exc:  # noqa: BLE001  DataFusion raises plain Exception (and ValueError)
        raise QueryError(_message(exc)) from None


def _execute(sql: str, tables: dict[str, pa.Table]) -> QueryResult:
    try:
        df = _context(tables).sql_with_options(sql, _READ_ONLY)
        batches = df.collect()
        return QueryResult(df.schema(), batches)
    except Exception as exc:  # noqa: BLE001  DataFusion raises plain Exception
        raise QueryError(_message(exc)) from None


async def run_query(store: QueryStore, snapshot: SchemaSnapshot, sql: str) -> QueryResult:
    """The answer to `sql`. Raises `QueryError` (the statement's fault) and `redis.RedisError`."""
    scans = plan(sql)
    wanted = [name for name in scans if name in SCHEMAS]
    built = await asyncio.gather(*(build_table(store, snapshot, name, scans[name]) for name in wanted))
    return await asyncio.to_thread(_execute, sql, dict(zip(wanted, built, strict=True)))
