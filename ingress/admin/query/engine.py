"""Run one SQL statement with DataFusion over tables read from Redis for it.

1. Plan the statement over empty tables (every schema of `columns.SCHEMAS`, information_schema
   on): planning errors are the caller's (`QueryError`, answered 400); DDL, DML and other
   statements are refused the same way.
2. Read what the optimized plan scans (`pushdown.scans_of`), with its constraints pushed into the
   reads (`tables.build_table`).
3. Execute the statement again over those tables, off the event loop, as a stream of record
   batches (`QueryStream`): the first batch is computed before anything is answered, so an error
   of the statement is still a 400; the others are pulled one at a time while the answer is
   written, so a large result is never held whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

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


@dataclass(slots=True)
class QueryStream:
    """The answer of one statement: its schema and its record batches, pulled as they are read."""

    schema: pa.Schema
    head: list[pa.RecordBatch]  # computed before answering (at most HEAD_BATCHES)
    rest: Any  # the datafusion.RecordBatchStream after `head`; None when `head` is all of it

    async def batches(self) -> AsyncIterator[pa.RecordBatch]:
        """Every batch, each later one computed off the event loop. Raises `QueryError`."""
        for batch in self.head:
            yield batch
        while self.rest is not None:
            batch = await asyncio.to_thread(_next_batch, self.rest)
            if batch is None:
                self.rest = None
                return
            yield batch


HEAD_BATCHES = 2  # a statement whose answer fits in one batch is answered whole, with its length


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


def _next_batch(stream: Any) -> pa.RecordBatch | None:
    """The stream's next batch as a pyarrow one; None at its end. Raises `QueryError`."""
    try:
        return next(stream).to_pyarrow()
    except StopIteration:
        return None
    except Exception as exc:  # noqa: BLE001  DataFusion raises plain Exception
        raise QueryError(_message(exc)) from None


def _execute(sql: str, tables: dict[str, pa.Table]) -> QueryStream:
    """Start executing `sql` and compute its first batches. Raises `QueryError`."""
    try:
        df = _context(tables).sql_with_options(sql, _READ_ONLY)
        schema, stream = df.schema(), df.execute_stream()
    except Exception as exc:  # noqa: BLE001  DataFusion raises plain Exception
        raise QueryError(_message(exc)) from None
    head: list[pa.RecordBatch] = []
    while len(head) < HEAD_BATCHES:
        batch = _next_batch(stream)
        if batch is None:
            return QueryStream(schema, head, None)
        head.append(batch)
    return QueryStream(schema, head, stream)


async def run_query(store: QueryStore, snapshot: SchemaSnapshot, sql: str) -> QueryStream:
    """The answer to `sql`, started. Raises `QueryError` (the statement's fault) and `redis.RedisError`."""
    scans = plan(sql)
    wanted = [name for name in scans if name in SCHEMAS]
    built = await asyncio.gather(*(build_table(store, snapshot, name, scans[name]) for name in wanted))
    return await asyncio.to_thread(_execute, sql, dict(zip(wanted, built, strict=True)))
