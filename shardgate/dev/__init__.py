"""`shardgate dev`: Redis, N partition workers and one ingress node under one foreground supervisor.

The supervisor starts, in order, redis-server (unless an existing Redis is given), the partition
workers (`python -m partition`) and the ingress node (`python -m ingress`), waits for each to be
healthy, writes `<data-dir>/cluster.json`, prints one ready line on stdout and then watches the
children. Ctrl-C / SIGTERM stops ingress, then the workers, then Redis.

`DevCluster` is the same machinery as a reusable async context manager; integration tests use it to
run real multi-process clusters and to kill and restart workers.

Children run in their own session (process group) so a terminal Ctrl-C reaches only the supervisor,
which then stops them in order; on Linux each child also gets SIGTERM if the supervisor dies.
"""

# Package layout (one job per module):
#   spec.py        ClusterSpec and its validation
#   ports.py       PortPlan: explicit ports checked, free ports picked
#   datadir.py     the data-dir lock and atomically written cluster.json
#   process.py     ChildProcess: spawn (own process group, parent-death signal), signal, stop, log tail
#   children.py    argv and environment of redis-server, the workers and the ingress
#   health.py      HTTP / Redis probes and waiting for them
#   cluster.py     DevCluster: start, supervise, restart and stop the children
#   supervisor.py  run_dev: ready line, signal handling, exit code
#   options.py     the `shardgate dev` argparse options

from __future__ import annotations

from shardgate.dev.children import child_env, ingress_child, project_root, redis_child, worker_child
from shardgate.dev.cluster import DevCluster
from shardgate.dev.datadir import acquire_data_dir_lock, write_json_atomic
from shardgate.dev.errors import DevError
from shardgate.dev.health import (
    HEALTH_POLL_INTERVAL_S,
    PROBE_TIMEOUT_S,
    Probe,
    gather_or_cancel,
    http_ok,
    redis_ping,
    wait_external_redis,
    wait_healthy,
)
from shardgate.dev.options import add_arguments, spec_from_args
from shardgate.dev.ports import PortPlan, check_explicit_ports, pick_free_port, plan_ports, port_in_use
from shardgate.dev.process import (
    LOG_TAIL_LINES,
    ChildProcess,
    exited_error,
    read_log_tail,
    signal_child,
    spawn_child,
    stop_child,
)
from shardgate.dev.spec import APPENDFSYNC_CHOICES, LOOPBACK, PYTHONPATH_ENV, ClusterSpec
from shardgate.dev.supervisor import main, ready_line, run_dev

__all__ = [
    "APPENDFSYNC_CHOICES",
    "HEALTH_POLL_INTERVAL_S",
    "LOG_TAIL_LINES",
    "LOOPBACK",
    "PROBE_TIMEOUT_S",
    "PYTHONPATH_ENV",
    "ChildProcess",
    "ClusterSpec",
    "DevCluster",
    "DevError",
    "PortPlan",
    "Probe",
    "acquire_data_dir_lock",
    "add_arguments",
    "check_explicit_ports",
    "child_env",
    "exited_error",
    "gather_or_cancel",
    "http_ok",
    "ingress_child",
    "main",
    "pick_free_port",
    "plan_ports",
    "port_in_use",
    "project_root",
    "read_log_tail",
    "ready_line",
    "redis_child",
    "redis_ping",
    "run_dev",
    "signal_child",
    "spawn_child",
    "spec_from_args",
    "stop_child",
    "wait_external_redis",
    "wait_healthy",
    "worker_child",
    "write_json_atomic",
]
