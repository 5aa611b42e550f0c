"""The chart's containers run as plain local processes: the same command, args and environment
the rendered manifests give each container (bundled Redis, one worker, one ingress), on free
loopback ports. Every probe the manifests declare must pass, a real restate-sdk deployment
registered through the admin port must answer a call through the ingress port, and SIGTERM must
stop each process within its terminationGracePeriodSeconds.

The differences from a pod are only these: `python` is this virtualenv's interpreter with the
checkout on PYTHONPATH, `redis-server` / `redis-cli` are the local binaries, redis.conf is written
from the ConfigMap to a temporary directory (its `dir` a temporary directory instead of the PVC,
`--bind 127.0.0.1` on the command line instead of the pod address), the Redis Service's DNS name
is 127.0.0.1, and so is the pod IP. tests/helm/test_image.py runs the same in the built image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.chart import Charts
from tests.helm.pods import chart_values, free_ports, local_launcher, run_chart


@pytest.mark.timeout(150)
def test_chart_containers_run_and_answer_their_probes(charts: Charts, sdk_deployment: str, tmp_path: Path) -> None:
    ports = free_ports()
    run_chart(charts.render(chart_values(ports), validate=False), ports, sdk_deployment, tmp_path, local_launcher)
