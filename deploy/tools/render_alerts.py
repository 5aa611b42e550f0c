"""Write deploy/prometheus/alerts.yaml: the chart's alert rules as a plain Prometheus rule file.

    <tools python> deploy/tools/render_alerts.py [--out deploy/prometheus/alerts.yaml] [--set partitions=128 ...]

The rules live once, in helm/shardgate/templates/_alerts.tpl. This renders the chart's
PrometheusRule (with the chart defaults plus any `--set`) and writes its `spec.groups` as a
`groups:` file for a Prometheus without the operator (`rule_files:`). tests/helm checks that the
committed file equals the rendering with the defaults.

Runs under the chart tools interpreter (`chart_tools.ensure_tools_python()`), which has PyYAML.
Raises (exits 1 with) the failing command's output when helm fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart_tools

CHART = chart_tools.REPO_ROOT / "helm" / "shardgate"
DEFAULT_OUT = chart_tools.REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
HEADER = """\
# shardgate alert rules for Prometheus (`rule_files:`), generated from the Helm chart's
# PrometheusRule (helm/shardgate/templates/_alerts.tpl) with the chart's default values:
# partitions=64, partition.config.maxConcurrentInvocations=10000. Re-generate for other values:
#   .cache/tools/python-*/bin/python deploy/tools/render_alerts.py --set partitions=N
# Expressions aggregate by (namespace, job); with `shardgate dev` and a static scrape config the
# namespace label is simply empty.
"""


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings (PromQL) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rendered_groups(sets: list[str]) -> list[dict[str, Any]]:
    """`spec.groups` of the chart's PrometheusRule rendered with `sets` (helm --set items)."""
    helm = chart_tools.ensure_helm()
    argv = [str(helm), "template", "shardgate", str(CHART), "--show-only", "templates/prometheusrule.yaml",
            "--set", "metrics.prometheusRule.enabled=true"]
    for item in sets:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise chart_tools.ToolInstallError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    rule = yaml.safe_load(done.stdout)
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def render_file(groups: list[dict[str, Any]]) -> str:
    body: str = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=120)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args(argv)
    try:
        text = render_file(rendered_groups(args.sets))
    except chart_tools.ToolInstallError as e:
        print(f"render_alerts: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
