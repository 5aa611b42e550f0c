"""The cluster's children: command line and environment of redis-server, workers and ingress."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sgtools.dev.ports import PortPlan
from sgtools.dev.process import ChildProcess
from sgtools.dev.spec import LOOPBACK, ClusterSpec

BEHIND_LB_SHUTDOWN_DELAY_S = 1.0
"""SHARDGATE_SHUTDOWN_DELAY_S of ingress nodes behind haproxy: longer than its checks take to mark
a node down (a check every 500 ms, then 250 ms, two failures)."""


def project_root() -> Path | None:
    """The source checkout holding `partition/` and `ingress/` next to `shardgate/`, if any."""
    root = Path(__file__).resolve().parents[2]
    if (root / "partition").is_dir() and (root / "ingress").is_dir():
        return root
    return None


def child_env(spec: ClusterSpec, overrides: dict[str, str]) -> dict[str, str]:
    """The supervisor's environment plus import path, `spec.extra_env` and `overrides`."""
    env = dict(os.environ)
    root = project_root()
    parts = [spec.pythonpath, str(root) if root else "", env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec.extra_env)
    env.update(overrides)
    return env


def redis_child(spec: ClusterSpec, data_dir: Path, port: int, binary: str) -> ChildProcess:
    """redis-server on 127.0.0.1:port, AOF in `<data-dir>/redis`, no RDB snapshots."""
    argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(data_dir / "redis"),
            "--appendonly", "yes", "--appendfsync", spec.appendfsync, "--save", "",
            "--daemonize", "no"]
    return ChildProcess("redis", "redis", argv, dict(os.environ), {"redis": port},
                        data_dir / "logs" / "redis.log")


def worker_child(spec: ClusterSpec, data_dir: Path, index: int, grpc: int, metrics: int,
                 redis_url: str) -> ChildProcess:
    """`python -m partition` as worker-<index>."""
    name = f"worker-{index}"
    overrides = {
        "SHARDGATE_REDIS_URL": redis_url,
        "SHARDGATE_PARTITIONS": str(spec.partitions),
        "SHARDGATE_WORKER_ID": name,
        "SHARDGATE_GRPC_PORT": str(grpc),
        "SHARDGATE_METRICS_PORT": str(metrics),
        "SHARDGATE_LOG_LEVEL": spec.log_level,
    }
    if spec.lease_ttl_ms is not None:
        overrides["SHARDGATE_LEASE_TTL_MS"] = str(spec.lease_ttl_ms)
    return ChildProcess("worker", name, [sys.executable, "-m", "partition"], child_env(spec, overrides),
                        {"grpc": grpc, "metrics": metrics}, data_dir / "logs" / f"{name}.log")


def ingress_child(spec: ClusterSpec, data_dir: Path, ports: PortPlan, redis_url: str) -> ChildProcess:
    """`python -m ingress` as "ingress", on the cluster's ingress and admin ports (no load balancer)."""
    return ingress_node_child(spec, data_dir, "ingress", ports.ingress, ports.admin, redis_url)


def ingress_node_child(spec: ClusterSpec, data_dir: Path, name: str, ingress_port: int, admin_port: int,
                       redis_url: str, advertised_url: str = "") -> ChildProcess:
    """`python -m ingress` as `name` on the given ports; `advertised_url` (the load balancer's URL,
    when there is one) goes into its OpenAPI documents."""
    overrides = {
        "SHARDGATE_REDIS_URL": redis_url,
        "SHARDGATE_PARTITIONS": str(spec.partitions),
        "SHARDGATE_INGRESS_PORT": str(ingress_port),
        "SHARDGATE_ADMIN_PORT": str(admin_port),
        "SHARDGATE_LOG_LEVEL": spec.log_level,
    }
    if advertised_url:  # behind the load balancer: stay up, unready, until its checks notice
        overrides["SHARDGATE_ADVERTISED_INGRESS_URL"] = advertised_url
        overrides["SHARDGATE_SHUTDOWN_DELAY_S"] = str(BEHIND_LB_SHUTDOWN_DELAY_S)
    return ChildProcess("ingress", name, [sys.executable, "-m", "ingress"], child_env(spec, overrides),
                        {"ingress": ingress_port, "admin": admin_port}, data_dir / "logs" / f"{name}.log")
