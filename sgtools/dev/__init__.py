"""`shardgate dev`: Redis, N partition workers and the ingress under one foreground supervisor.

The supervisor starts, in order, redis-server (unless an existing Redis is given), the partition
workers (`python -m partition`) and the ingress node (`python -m ingress`), waits for each to be
healthy, writes `<data-dir>/cluster.json`, prints one ready line on stdout and then watches the
children. Only Ctrl-C / SIGTERM stops the cluster: ingress first, then the workers, then Redis.

With `--load-balancer`, `--ingress-nodes N` ingress nodes listen on free ports and haproxy (`make
lb-tools` installs it) listens on the ingress and admin ports in front of them, health-checking
each node's `/restate/health` and `/health`; the ready line's ingress URL is haproxy's, and
cluster.json lists it (role `load-balancer`) and every node (role `ingress`, `ingress-<i>`).

A child that dies is logged (exit code, next back-off) and restarted after 1 s, 2 s, 4 s ... at
most 30 s (reset once it stayed healthy for a minute) while every other process keeps serving:
Redis from its AOF in `<data-dir>/redis` on the same port with the same `--appendfsync`, a worker
with the same worker id and ports, an ingress node or the load balancer on the same ports. `--no-restart` leaves a dead
child down instead (the rest keeps running). An existing Redis (`--redis-url`) is not supervised.
`cluster.json` always names the live pids (null for a child that is down); it is rewritten,
atomically, after every death and restart.

`DevCluster` is the same machinery as a reusable async context manager; integration tests use it to
run real multi-process clusters and to kill and restart workers.

Children run in their own session (process group) so a terminal Ctrl-C reaches only the supervisor,
which then stops them in order; on Linux each child also gets SIGTERM if the supervisor dies.
"""

# Package layout (one job per module):
#   spec.py        ClusterSpec and its validation
#   backoff.py     RestartBackoff: the pure restart back-off policy (injected clock)
#   ports.py       PortPlan: explicit ports checked, free ports picked
#   datadir.py     the data-dir lock and atomically written cluster.json
#   process.py     ChildProcess: spawn (own process group, parent-death signal), signal, stop, log tail
#   children.py    argv and environment of redis-server, the workers and the ingress
#   loadbalancer.py  haproxy: finding it, its config, its child process
#   health.py      HTTP / Redis probes and waiting for them
#   cluster.py     DevCluster: start, supervise (restart with back-off) and stop the children
#   supervisor.py  run_dev: ready line, signal handling, exit code
#   options.py     the `shardgate dev` argparse options

from __future__ import annotations

from sgtools.dev.backoff import RestartBackoff
from sgtools.dev.children import (
    child_env,
    ingress_child,
    ingress_node_child,
    project_root,
    redis_child,
    worker_child,
)
from sgtools.dev.cluster import DevCluster
from sgtools.dev.datadir import acquire_data_dir_lock, write_json_atomic
from sgtools.dev.errors import DevError
from sgtools.dev.health import (
    HEALTH_POLL_INTERVAL_S,
    PROBE_TIMEOUT_S,
    Probe,
    gather_or_cancel,
    http_ok,
    redis_ping,
    wait_external_redis,
    wait_healthy,
)
from sgtools.dev.loadbalancer import (
    HAPROXY_ENV,
    Backend,
    LoadBalancerNotFound,
    find_haproxy,
    haproxy_config,
    load_balancer_child,
)
from sgtools.dev.options import add_arguments, spec_from_args
from sgtools.dev.ports import PortPlan, check_explicit_ports, pick_free_port, plan_ports, port_in_use
from sgtools.dev.process import (
    LOG_TAIL_LINES,
    ChildProcess,
    exited_error,
    read_log_tail,
    signal_child,
    spawn_child,
    stop_child,
    sweep_group,
)
from sgtools.dev.spec import APPENDFSYNC_CHOICES, LOOPBACK, PYTHONPATH_ENV, ClusterSpec
from sgtools.dev.supervisor import main, ready_line, run_dev

__all__ = [
    "APPENDFSYNC_CHOICES",
    "HAPROXY_ENV",
    "HEALTH_POLL_INTERVAL_S",
    "LOG_TAIL_LINES",
    "LOOPBACK",
    "PROBE_TIMEOUT_S",
    "PYTHONPATH_ENV",
    "Backend",
    "ChildProcess",
    "ClusterSpec",
    "DevCluster",
    "DevError",
    "LoadBalancerNotFound",
    "PortPlan",
    "Probe",
    "RestartBackoff",
    "acquire_data_dir_lock",
    "add_arguments",
    "check_explicit_ports",
    "child_env",
    "exited_error",
    "find_haproxy",
    "gather_or_cancel",
    "haproxy_config",
    "http_ok",
    "ingress_child",
    "ingress_node_child",
    "load_balancer_child",
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
    "sweep_group",
    "wait_external_redis",
    "wait_healthy",
    "worker_child",
    "write_json_atomic",
]
