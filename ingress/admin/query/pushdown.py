"""What a query needs from each table, read off DataFusion's optimized logical plan.

No SQL is parsed here: DataFusion plans the statement over empty tables, its optimizer pushes
each WHERE conjunct down to a `Filter` right above the table's `TableScan`, and this module reads
those conjuncts. Only simple ones are used: `col = 'v'`, `col IN ('v', ...)` (which the optimizer
turns into an OR of equalities), `col != 'v'` and `col NOT IN (...)`. Everything else is left to
DataFusion, which still evaluates the whole predicate on what was read, so a constraint only
narrows the read and never changes an answer. A table scanned more than once (a self join) gets
the constraints all its scans share. A LIMIT the optimizer pushed into a scan (`fetch`, no ORDER
BY above it) lets the reads stop after that many rows; its scan then takes no constraint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datafusion import Expr, LogicalPlan


@dataclass(frozen=True, slots=True)
class Constraint:
    """Values a column may take: one of `allowed` (None: any) and none of `excluded`."""

    allowed: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()

    def admits(self, value: str | None) -> bool:
        """Whether a row with this value can pass the filter it came from (NULL passes none)."""
        if value is None:
            return False
        return (self.allowed is None or value in self.allowed) and value not in self.excluded

    def both(self, other: Constraint) -> Constraint:
        """The constraint of two conjuncts on the same column."""
        if self.allowed is None:
            allowed = other.allowed
        elif other.allowed is None:
            allowed = self.allowed
        else:
            allowed = self.allowed & other.allowed
        return Constraint(allowed, self.excluded | other.excluded)


@dataclass(slots=True)
class Scan:
    """One table's needs: the columns read (None: all) and per-column constraints."""

    columns: set[str] | None = field(default_factory=set)
    constraints: dict[str, Constraint] = field(default_factory=dict)
    fetch: int | None = None  # rows enough for the plan (a LIMIT pushed into the scan); None: all


def _literal(e: Expr) -> str | None:
    """The text of a string literal (None for anything else)."""
    if type(e.to_variant()).__name__ != "Literal":
        return None
    scalar = e.python_value()  # a pyarrow scalar
    value = scalar.as_py() if hasattr(scalar, "as_py") else scalar
    return value if isinstance(value, str) else None


def _column(e: Expr) -> str | None:
    v = e.to_variant()
    return v.name() if type(v).__name__ == "Column" else None


def _equalities(e: Expr) -> tuple[str, set[str]] | None:
    """`c = 'a' OR c = 'b' ...` on one column -> (c, {a, b}); None otherwise."""
    v = e.to_variant()
    if type(v).__name__ != "BinaryExpr":
        return None
    if v.op() == "=":
        col, lit = _column(v.left()), _literal(v.right())
        return (col, {lit}) if col is not None and lit is not None else None
    if v.op() == "OR":
        left, right = _equalities(v.left()), _equalities(v.right())
        if left is not None and right is not None and left[0] == right[0]:
            return left[0], left[1] | right[1]
    return None


def _conjunct(e: Expr) -> tuple[str, Constraint] | None:
    """The constraint one conjunct puts on one column, if it is one of the simple forms."""
    v = e.to_variant()
    kind = type(v).__name__
    if kind == "BinaryExpr" and v.op() == "!=":
        col, lit = _column(v.left()), _literal(v.right())
        return (col, Constraint(excluded=frozenset({lit}))) if col is not None and lit is not None else None
    if kind == "InList":
        col = _column(v.expr())
        values = [_literal(x) for x in v.list()]
        if col is None or any(x is None for x in values):
            return None
        found = frozenset(x for x in values if x is not None)
        return col, Constraint(excluded=found) if v.negated() else Constraint(allowed=found)
    eq = _equalities(e)
    return (eq[0], Constraint(allowed=frozenset(eq[1]))) if eq is not None else None


def _conjuncts(e: Expr) -> list[Expr]:
    v = e.to_variant()
    if type(v).__name__ == "BinaryExpr" and v.op() == "AND":
        return _conjuncts(v.left()) + _conjuncts(v.right())
    return [e]


def constraints_of(predicate: Expr) -> dict[str, Constraint]:
    """Per column, what the simple conjuncts of `predicate` require."""
    out: dict[str, Constraint] = {}
    for part in _conjuncts(predicate):
        found = _conjunct(part)
        if found is not None:
            col, c = found
            out[col] = out[col].both(c) if col in out else c
    return out


def _table_scan(plan: LogicalPlan) -> Any:
    v = plan.to_variant()
    return v if type(v).__name__ == "TableScan" else None


def _merge(scans: dict[str, Scan], table: str, columns: set[str], found: dict[str, Constraint],
           fetch: int | None) -> None:
    """Add one scan of `table`; constraints survive only where every scan of it has one, a fetch
    only when every scan has one (the largest)."""
    if table not in scans:
        scans[table] = Scan(columns=set(columns), constraints=dict(found), fetch=fetch)
        return
    known = scans[table]
    if known.columns is not None:
        known.columns |= columns
    known.constraints = {c: k for c, k in known.constraints.items() if c in found and found[c] == k}
    known.fetch = None if known.fetch is None or fetch is None else max(known.fetch, fetch)


def scans_of(plan: LogicalPlan) -> dict[str, Scan]:
    """Table name -> what the plan reads of it (information_schema tables included)."""
    scans: dict[str, Scan] = {}

    def walk(node: LogicalPlan, above: Any) -> None:
        scan = _table_scan(node)
        if scan is not None:
            columns = {name for _, name in scan.projection()}
            fetch = scan.fetch()
            found: dict[str, Constraint] = {}
            if fetch is None:  # a filter above a scan that stops early applies to the rows it kept
                found = constraints_of(above.predicate()) if above is not None else {}
                for extra in scan.filters():
                    found.update(constraints_of(extra))
            _merge(scans, scan.table_name(), columns, found, fetch)
            return
        v = node.to_variant()
        filter_above = v if type(v).__name__ == "Filter" else None
        for child in node.inputs():
            walk(child, filter_above)

    walk(plan, None)
    return scans
