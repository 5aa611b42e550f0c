"""`ClusterSpec`: what a dev cluster is configured with, and its validation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sgtools.dev.errors import DevError

LOOPBACK = "127.0.0.1"
PYTHONPATH_ENV = "SHARDGATE_DEV_PYTHONPATH"
"""Extra import path prepended to the children's PYTHONPATH (stand-in entry points for testing)."""
APPENDFSYNC_CHOICES = ("always", "everysec")


@dataclass
class ClusterSpec:
    """Everything `shardgate dev` / `DevCluster` is configured with (0 ports = pick a free one)."""

    workers: int = 2
    ingress_port: int = 8080
    admin_port: int = 9070
    ingress_nodes: int = 1
    """Ingress processes; more than one needs `load_balancer`."""
    load_balancer: bool = False
    """Put haproxy on `ingress_port` / `admin_port` in front of the ingress nodes (on free ports)."""
    partitions: int = 64
    data_dir: Path = Path(".shardgate-data")
    redis_url: str | None = None
    """Use this existing Redis instead of starting redis-server."""
    redis_port: int = 0
    worker_grpc_ports: list[int] = field(default_factory=list)
    worker_metrics_ports: list[int] = field(default_factory=list)
    lease_ttl_ms: int | None = None
    """SHARDGATE_LEASE_TTL_MS for the workers; None keeps the worker default."""
    log_level: str = "INFO"
    appendfsync: str = "always"
    restart: bool = False
    """Restart any child (Redis, a worker, the ingress) that dies after start-up, with back-off.

    `shardgate dev` turns it on unless `--no-restart` is given; `DevCluster` users (tests) opt in,
    so that an unexpected death is reported in `DevCluster.failed` instead of being healed. Off, a
    dead child stays down and the others keep running."""
    start_timeout_s: float = 30.0
    """How long each process (group) may take to become healthy."""
    stop_timeout_s: float = 10.0
    """How long a process may take to exit after SIGTERM before it gets SIGKILL."""
    pythonpath: str = field(default_factory=lambda: os.environ.get(PYTHONPATH_ENV, ""))
    """Prepended to the children's PYTHONPATH (defaults to $SHARDGATE_DEV_PYTHONPATH)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Additional environment for workers and ingress (e.g. SHARDGATE_HEARTBEAT_INTERVAL_MS)."""

    def validate(self) -> None:
        """Raise `DevError` for values that cannot describe a cluster."""
        if self.workers < 1:
            raise DevError("--workers must be at least 1")
        if self.partitions < 1:
            raise DevError("--partitions must be at least 1")
        if self.ingress_nodes < 1:
            raise DevError("--ingress-nodes must be at least 1")
        if self.ingress_nodes > 1 and not self.load_balancer:
            raise DevError("--ingress-nodes above 1 needs --load-balancer (one port cannot front several nodes)")
        if self.appendfsync not in APPENDFSYNC_CHOICES:
            raise DevError(f"--appendfsync must be one of {', '.join(APPENDFSYNC_CHOICES)}")
        for label, ports in (("grpc", self.worker_grpc_ports), ("metrics", self.worker_metrics_ports)):
            if ports and len(ports) != self.workers:
                raise DevError(f"--worker-{label}-ports lists {len(ports)} ports for {self.workers} workers")
        for port in (self.ingress_port, self.admin_port, self.redis_port,
                     *self.worker_grpc_ports, *self.worker_metrics_ports):
            if not 0 <= port <= 65535:
                raise DevError(f"port {port} is out of range")
