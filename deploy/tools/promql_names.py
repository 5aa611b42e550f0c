"""The metric names a Grafana dashboard and Prometheus rule files use, from their parsed PromQL.

    <tools python> deploy/tools/promql_names.py [--dashboard D.json ...] [--rules R.yaml ...]

Prints one JSON object: {"names": [...sorted metric names...], "errors": ["<where>: <expr>: <why>"]}.
Every query is parsed with promql-parser, so a syntax error is reported instead of guessed
around. Grafana's variables are replaced by neutral values first (`$__rate_interval` -> `5m`,
`$namespace` -> `x`, ...); template-variable queries (`label_values(metric, label)`) count their
metric too.

Runs under the chart tools interpreter (`chart_tools.ensure_tools_python()`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import promql_parser  # type: ignore[import-not-found]
import yaml  # type: ignore[import-untyped]

_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$")
_CHILDREN = ("expr", "lhs", "rhs", "param", "vector_selector")


def neutral(expr: str) -> str:
    """`expr` with Grafana variables replaced so that it is plain PromQL."""
    return _VARIABLE.sub("x", _INTERVALS.sub("5m", expr))


def selector_names(node: Any) -> Iterator[str]:
    """Metric names of every vector selector in a parsed expression."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
        return
    for attr in _CHILDREN:
        child = getattr(node, attr, None)
        if child is not None:
            yield from selector_names(child)
    for arg in getattr(node, "args", None) or []:
        yield from selector_names(arg)


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of a dashboard."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r}", target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and query:
            m = _LABEL_VALUES.match(query)
            yield f"variable {var.get('name')!r}", m.group(1) if m else query


def rule_queries(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            yield f"rule {rule.get('alert') or rule.get('record')!r}", rule["expr"]


def collect(queries: Iterator[tuple[str, str]]) -> tuple[set[str], list[str]]:
    names: set[str] = set()
    errors: list[str] = []
    for where, expr in queries:
        try:
            parsed = promql_parser.parse(neutral(expr))
        except ValueError as e:
            errors.append(f"{where}: {expr!r}: {e}")
            continue
        found = set(selector_names(parsed))
        if not found:
            errors.append(f"{where}: {expr!r}: uses no metric")
        names |= found
    return names, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", action="append", default=[])
    parser.add_argument("--rules", action="append", default=[])
    args = parser.parse_args(argv)
    names: set[str] = set()
    errors: list[str] = []
    for path in args.dashboard:
        with open(path) as f:
            found, bad = collect(dashboard_queries(json.load(f)))
        names, errors = names | found, errors + [f"{path}: {e}" for e in bad]
    for path in args.rules:
        with open(path) as f:
            found, bad = collect(rule_queries(yaml.safe_load(f)))
        names, errors = names | found, errors + [f"{path}: {e}" for e in bad]
    json.dump({"names": sorted(names), "errors": errors}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
