"""The built image runs the chart's containers: ingress and worker in podman, as the manifests say.

Same scenario as tests/helm/test_chart_processes.py (probes, a real call, SIGTERM within the
grace period), but each shardgate container runs in the image `make image` builds
(deploy/tools/build-image.sh), with what the pod's securityContext asks for: the user and group
it names, a read-only root filesystem with a tmpfs on /tmp, every capability dropped, no new
privileges. Host networking stands in for the pod network (everything on 127.0.0.1); Redis runs
as a local redis-server, as in the process test (the Redis image needs a registry).

Skipped when podman or the image is absent: building takes minutes (Debian packages, PyPI), so
it is `make image` that builds it, not the test run.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helm.chart import CHART, Charts, Doc
from tests.helm.pods import chart_values, free_ports, run_chart


def _app_version() -> str:
    for line in (CHART / "Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError("Chart.yaml has no appVersion")


IMAGE = f"localhost/shardgate:{_app_version()}"


def _image_present() -> bool:
    if shutil.which("podman") is None:
        return False
    done = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _image_present(), reason=f"no podman or no {IMAGE} (run `make image`)")


def _ulimits() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 32768)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", f"nproc={nproc}:{nproc}"]


def podman_launcher(component: str, ctr: Doc, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """`podman run` of the image with the container's command, environment and securityContext."""
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    argv = ["podman", "--runtime", "runc", "run", "--rm", "--name", f"sg-test-{component}-{uuid.uuid4().hex[:8]}",
            "--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}",
            *_ulimits()]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    argv += ["--entrypoint", ctr["command"][0], IMAGE, *ctr["command"][1:], *ctr.get("args", [])]
    return argv, {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.mark.timeout(180)
def test_image_runs_the_chart_containers(charts: Charts, sdk_deployment: str, tmp_path: Path) -> None:
    ports = free_ports()
    run_chart(charts.render(chart_values(ports), validate=False), ports, sdk_deployment, tmp_path, podman_launcher)
