"""The two answer formats of `/query`: JSON rows and an Arrow IPC stream.

JSON (`Accept: application/json`): `{"rows": [{column: value, ...}]}` in SELECT order, NULL
columns omitted, timestamps RFC 3339 with milliseconds and `Z`, binary as lower-case hex,
durations in milliseconds. Arrow: the schema message, one message per record batch, then the
end-of-stream marker, as `application/vnd.apache.arrow.stream`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def json_value(value: Any) -> Any:
    """One cell as JSON: timestamps, binary, decimals and nested values converted."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    return value


def json_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    """Each row as a JSON object (NULLs left out); duplicate column names keep the last value."""
    for batch in batches:
        names = batch.schema.names
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for i in range(batch.num_rows):
            yield {n: json_value(c[i]) for n, c in zip(names, columns, strict=True) if c[i] is not None}


JSON_HEAD, JSON_TAIL = b'{"rows":[', b"]}"


def json_chunk(batch: pa.RecordBatch, first: bool) -> bytes:
    """The rows of one batch as a piece of the `{"rows":[...]}` array (`first`: no leading comma)."""
    rows = [json.dumps(row, separators=(",", ":")) for row in json_rows([batch])]
    if not rows:
        return b""
    return (b"" if first else b",") + ",".join(rows).encode()


def json_body(batches: list[pa.RecordBatch]) -> bytes:
    return json.dumps({"rows": list(json_rows(batches))}, separators=(",", ":")).encode()


def arrow_schema_message(schema: pa.Schema) -> bytes:
    """The first message of an Arrow IPC stream (the schema)."""
    return bytes(schema.serialize().to_pybytes())


def arrow_batch_message(batch: pa.RecordBatch) -> bytes:
    """One record batch as an Arrow IPC stream message (after the schema message)."""
    return bytes(batch.serialize().to_pybytes())


ARROW_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker (continuation, length 0)


def arrow_body(schema: pa.Schema, batches: list[pa.RecordBatch]) -> bytes:
    """An Arrow IPC stream of the batches (a schema message only when there are none)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())
