"""Every Prometheus metric of a partition worker, declared once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

INVOCATIONS = Counter(
    "shardgate_partition_invocations_total",
    "Invocations by outcome (accepted, duplicate, succeeded, failed, retried, paused, fenced).",
    ["outcome"],
)
IN_FLIGHT = Gauge("shardgate_partition_invocations_in_flight", "Attempts currently running against deployments.")
OWNED_PARTITIONS = Gauge("shardgate_partition_owned_partitions", "Partitions whose lease this worker holds.")
LEASE_CHANGES = Counter(
    "shardgate_partition_lease_changes_total", "Partition leases gained, lost or released.", ["change"]
)
DEPLOYMENT_DURATION = Histogram(
    "shardgate_partition_deployment_call_duration_seconds",
    "Duration of one attempt against a deployment.",
    buckets=_LATENCY_BUCKETS,
)
DEPLOYMENT_ERRORS = Counter(
    "shardgate_partition_deployment_errors_total", "Failed attempts against deployments.", ["kind"]
)
SCRIPT_DURATION = Histogram(
    "shardgate_partition_script_duration_seconds",
    "Round trip of one Lua transition.",
    ["script"],
    buckets=_LATENCY_BUCKETS,
)
RPCS = Counter("shardgate_partition_rpcs_total", "gRPC requests served by method and code.", ["method", "code"])
TIMER_LAG = Histogram(
    "shardgate_partition_timer_lag_seconds", "How late a timer fired after its due time.", buckets=_LATENCY_BUCKETS
)
OUTBOX_DEPTH = Gauge("shardgate_partition_outbox_depth", "Messages waiting in a partition's outbox.", ["partition"])
