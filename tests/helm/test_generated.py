"""Files kept in step with the chart: the README values table, deploy/prometheus/alerts.yaml, and
the Grafana dashboard's queries (valid PromQL over metrics the processes declare)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

import ingress.metrics
import partition.metrics
from tests.helm.chart import CHART, REPO_ROOT, TOOLS, Charts, yaml_file_as_json

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "shardgate.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
TOOL_TIMEOUT_S = 60.0


def _tool(python: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(TOOLS / script), *args], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_S, check=False)


SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def declared_sample_names() -> set[str]:
    """Every sample name the metrics declared in ingress/metrics.py and partition/metrics.py can export."""
    names: set[str] = set()
    for module in (ingress.metrics, partition.metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def test_values_table_is_up_to_date(tools_python: Path) -> None:
    done = _tool(tools_python, "helm_values_table.py", "--check", "--chart", str(CHART))
    assert done.returncode == 0, done.stderr


def test_values_table_generator_finds_undocumented_values(tools_python: Path, tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "values.yaml").write_text("## @param a First\na: 1\nb:\n  c: 2\n## @param d.e Missing\n")
    (chart / "README.md").write_text("<!-- values-table:start -->\n<!-- values-table:end -->\n")
    done = _tool(tools_python, "helm_values_table.py", "--check", "--chart", str(chart))
    assert done.returncode == 1
    assert "value b.c has no @param line" in done.stderr and "@param d.e names no value" in done.stderr


def test_alerts_file_is_the_chart_rule_rendering(charts: Charts, tools_python: Path) -> None:
    rendering = charts.render(["metrics.prometheusRule.enabled=true"], validate=False)
    (rule,) = rendering.of_kind("PrometheusRule")
    committed = yaml_file_as_json(tools_python, ALERTS)
    assert committed == {"groups": rule["spec"]["groups"]}, (
        "deploy/prometheus/alerts.yaml is out of date: run deploy/tools/render_alerts.py")


def _names(tools_python: Path) -> dict[str, Any]:
    done = _tool(tools_python, "promql_names.py", "--dashboard", str(DASHBOARD), "--rules", str(ALERTS))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_dashboard_and_rules_are_valid_promql_over_declared_metrics(tools_python: Path) -> None:
    result = _names(tools_python)
    assert result["errors"] == []
    undeclared = set(result["names"]) - declared_sample_names()
    assert undeclared == set(), f"queries use metrics no process declares: {sorted(undeclared)}"


def test_promql_checker_reports_syntax_errors(tools_python: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"panels": [{"title": "t", "targets": [{"expr": "sum(rate(x_total[5m])"}]}]}))
    done = _tool(tools_python, "promql_names.py", "--dashboard", str(bad))
    assert json.loads(done.stdout)["errors"], done.stdout


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("shardgate_ingress_requests_total", "shardgate_ingress_request_duration_seconds_bucket",
                   "shardgate_partition_invocations_total", "shardgate_partition_invocations_in_flight",
                   "shardgate_partition_owned_partitions", "shardgate_partition_lease_changes_total",
                   "shardgate_partition_script_duration_seconds_bucket",
                   "shardgate_partition_deployment_call_duration_seconds_bucket",
                   "shardgate_partition_deployment_errors_total"):
        assert metric in exprs, f"the dashboard shows nothing of {metric}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_schema_describes_every_documented_value() -> None:
    """Each `@param` key has a place in values.schema.json (strict objects reject unknown keys)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = [line.split()[2] for line in (CHART / "values.yaml").read_text().splitlines()
            if line.strip().startswith("## @param ")]
    assert len(keys) > 100
    for key in keys:
        node = schema
        for part in key.split("."):
            if node.get("type") == "object" and "properties" not in node:
                break  # a Kubernetes object passed through as it is
            assert part in node.get("properties", {}), f"values.schema.json lacks {key}"
            node = node["properties"][part]
        else:
            assert "description" in node, f"values.schema.json has no description for {key}"
