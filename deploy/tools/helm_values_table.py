"""Generate the values table of a chart README from the `## @param` lines of its values.yaml.

    <tools python> deploy/tools/helm_values_table.py [--chart helm/shardgate] (--write | --check)

values.yaml documents each value with a line `## @param <dotted.key> <description>` (and groups
them with `## @section <title>`). The table (one per section: name, description, default) goes
between the markers `<!-- values-table:start -->` and `<!-- values-table:end -->` of the chart's
README.md. `--write` rewrites that part; `--check` exits 1 when it is out of date. Both exit 1 when
a value has no `@param` line (a value is documented by its own line or by one of an enclosing
map) or a `@param` line names no value.

Runs under the chart tools interpreter (`chart_tools.ensure_tools_python()`), which has PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parents[2]
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
_PARAM = re.compile(r"^\s*## @param (\S+) (.+?)\s*$")
_SECTION = re.compile(r"^\s*## @section (.+?)\s*$")
_MISSING = object()


class ValuesDocError(ValueError):
    """values.yaml and its @param lines disagree, or the README lacks the markers."""


@dataclass(frozen=True)
class Param:
    key: str
    description: str
    section: str


def parse_params(text: str) -> list[Param]:
    """The `@param` lines of a values.yaml text, in order, each with its section title."""
    section = "Parameters"
    found: list[Param] = []
    for line in text.splitlines():
        if m := _SECTION.match(line):
            section = m.group(1)
        elif m := _PARAM.match(line):
            found.append(Param(m.group(1), m.group(2), section))
    return found


def lookup(values: Any, key: str) -> Any:
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of every value that is not a non-empty map."""
    keys: list[str] = []
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            keys.extend(leaf_keys(value, key + "."))
        else:
            keys.append(key)
    return keys


def check_coverage(values: dict[str, Any], params: list[Param]) -> None:
    """Raise ValuesDocError for undocumented values, unknown or repeated @param keys."""
    documented = [p.key for p in params]
    problems = [f"@param {k} names no value" for k in documented if lookup(values, k) is _MISSING]
    problems += [f"@param {k} appears twice" for k in sorted({k for k in documented if documented.count(k) > 1})]
    for key in leaf_keys(values):
        parts = key.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            problems.append(f"value {key} has no @param line")
    if problems:
        raise ValuesDocError("; ".join(problems))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(values: dict[str, Any], params: list[Param]) -> str:
    """Markdown: a `###` heading per section, then | Name | Description | Value |."""
    out: list[str] = []
    section = None
    for p in params:
        if p.section != section:
            section = p.section
            out += ["", f"### {section}", "", "| Name | Description | Value |", "| --- | --- | --- |"]
        default = json.dumps(lookup(values, p.key), separators=(", ", ": "))
        out.append(f"| `{p.key}` | {_cell(p.description)} | `{_cell(default)}` |")
    return "\n".join(out).strip("\n") + "\n"


def splice(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if START not in readme or END not in readme:
        raise ValuesDocError(f"README lacks the markers {START} / {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def expected_readme(chart: Path) -> tuple[str, str]:
    """(current README text, README text with an up-to-date table). Raises ValuesDocError."""
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    params = parse_params(text)
    check_coverage(values, params)
    readme = (chart / "README.md").read_text()
    return readme, splice(readme, render_table(values, params))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chart", type=Path, default=REPO_ROOT / "helm" / "shardgate")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    try:
        current, wanted = expected_readme(args.chart)
    except ValuesDocError as e:
        print(f"helm_values_table: {e}", file=sys.stderr)
        return 1
    if args.write:
        if wanted != current:
            (args.chart / "README.md").write_text(wanted)
        return 0
    if wanted != current:
        print(f"helm_values_table: {args.chart / 'README.md'} is out of date: run "
              "deploy/tools/helm_values_table.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
