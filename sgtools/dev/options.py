"""The `shardgate dev` command-line options and the `ClusterSpec` they describe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sgtools.dev.spec import APPENDFSYNC_CHOICES, PYTHONPATH_ENV, ClusterSpec

SCOPES_ENV = "SHARDGATE_SCOPES_ENABLED"  # read by the ingress (ingress.config.IngressConfig.scopes_enabled)


def _port_list(value: str) -> list[int]:
    try:
        return [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of ports, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shardgate dev` options."""
    add = parser.add_argument
    add("--workers", type=int, default=2, help="partition workers to start (default 2)")
    add("--ingress-port", type=int, default=8080, help="ingress API port (default 8080; 0 = free)")
    add("--admin-port", type=int, default=9070, help="admin API port (default 9070; 0 = free)")
    add("--ingress-nodes", type=int, default=1,
        help="ingress processes (default 1); above 1 needs --load-balancer")
    add("--load-balancer", action="store_true",
        help="run haproxy on --ingress-port/--admin-port in front of the ingress nodes, which then listen "
             "on free ports (install it with `make lb-tools`)")
    add("--partitions", type=int, default=64, help="partition count (default 64)")
    add("--data-dir", type=Path, default=Path(".shardgate-data"),
        help="Redis AOF, logs and cluster.json (default ./.shardgate-data)")
    add("--redis-url", default=None, help="use this existing Redis instead of starting redis-server")
    add("--redis-port", type=int, default=0, help="port of the started redis-server (default: free)")
    add("--worker-grpc-ports", type=_port_list, default=[], help="comma list, one per worker (default: free)")
    add("--worker-metrics-ports", type=_port_list, default=[],
        help="comma list, one per worker (default: free)")
    add("--lease-ttl-ms", type=int, default=None,
        help="SHARDGATE_LEASE_TTL_MS for the workers (default: theirs, 5000)")
    add("--log-level", default="INFO", type=str.upper, help="log level of supervisor and children")
    add("--appendfsync", choices=APPENDFSYNC_CHOICES, default="always", help="Redis AOF fsync policy")
    add("--no-restart", dest="restart", action="store_false",
        help="leave a child that dies down (the others keep running) instead of restarting it; by "
             "default Redis, workers and the ingress are restarted after 1 s, doubling to 30 s")
    add("--restart", dest="restart_alias", action="store_true",
        help="no-op, accepted for compatibility: restarting is the default (see --no-restart)")
    add("--start-timeout", type=float, default=30.0, help="seconds each process may take to be healthy")
    add("--no-scopes", dest="scopes", action="store_false",
        help="answer /restate/scope/... with Restate's 400 `scoped invocations require vqueues to be enabled` "
             "(SHARDGATE_SCOPES_ENABLED=false); scopes and concurrency limits are on by default")
    add("--pythonpath", default=os.environ.get(PYTHONPATH_ENV, ""), help=argparse.SUPPRESS)


def spec_from_args(args: argparse.Namespace) -> ClusterSpec:
    """Build a ClusterSpec from parsed `shardgate dev` arguments."""
    return ClusterSpec(
        workers=args.workers, ingress_port=args.ingress_port, admin_port=args.admin_port,
        ingress_nodes=args.ingress_nodes, load_balancer=args.load_balancer,
        partitions=args.partitions, data_dir=args.data_dir, redis_url=args.redis_url,
        redis_port=args.redis_port, worker_grpc_ports=args.worker_grpc_ports,
        worker_metrics_ports=args.worker_metrics_ports, lease_ttl_ms=args.lease_ttl_ms,
        log_level=args.log_level, appendfsync=args.appendfsync, restart=args.restart,
        start_timeout_s=args.start_timeout, pythonpath=args.pythonpath,
        extra_env={} if args.scopes else {SCOPES_ENV: "false"},
    )
