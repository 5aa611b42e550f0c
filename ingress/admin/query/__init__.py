"""SQL introspection (`POST /query`): DataFusion over Arrow tables read from Redis per query.

Modules: `columns` (the tables and their Restate column names and types), `pushdown` (what the
optimized plan reads: columns and simple filters), `store` (the Redis reads, through the
per-partition invocation index and `scan.lua`), `rows` and `journal` (stored records as Restate's
columns), `tables` (Arrow tables per scan), `engine` (plan, read, execute), `encoders` (JSON rows,
Arrow IPC stream) and `route` (the HTTP handler). Details in `docs/query.md`.
"""

from __future__ import annotations

from ingress.admin.query.route import routes

__all__ = ["routes"]
