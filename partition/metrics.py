"""Every Prometheus metric of a partition worker, declared once."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shardgate.limits import BucketView

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

INVOCATIONS = Counter(
    "shardgate_partition_invocations_total",
    "Invocations by outcome (accepted, duplicate, refused, succeeded, failed, retried, paused, fenced, killed, cancelled).",
    ["outcome"],
)
IN_FLIGHT = Gauge("shardgate_partition_invocations_in_flight", "Attempts currently running against deployments.")
HELD_INVOCATIONS = Gauge(
    "shardgate_partition_invocations_held",
    "Invocations held in this worker's memory (a driver task and its record, state and journal); at most"
    " SHARDGATE_MAX_CONCURRENT_INVOCATIONS + SHARDGATE_READY_INVOCATIONS.",
)
WAITING_INVOCATIONS = Gauge(
    "shardgate_partition_invocations_waiting",
    "Invoked invocations whose ids this worker queues until room frees up (they wait in Redis; at most"
    " SHARDGATE_MAX_BACKLOG_INVOCATIONS, more are found by the partition sweep).",
)
WAITING_CALLERS = Gauge(
    "shardgate_partition_waiting_callers", "Callers (calls with a reply, attach, output) waiting on this worker for a result."
)
OWNED_PARTITIONS = Gauge("shardgate_partition_owned_partitions", "Partitions whose lease this worker holds.")
LEASE_CHANGES = Counter(
    "shardgate_partition_lease_changes_total", "Partition leases gained, lost or released.", ["change"]
)
DEPLOYMENT_DURATION = Histogram(
    "shardgate_partition_deployment_call_duration_seconds",
    "Duration of one attempt against a deployment.",
    buckets=_LATENCY_BUCKETS,
)
DEPLOYMENT_ATTEMPTS = Counter(
    "shardgate_partition_deployment_attempts_total",
    "Attempts sent to deployments, by transport: http1 (the lean HTTP/1.1 client), h2c, https (aiohttp).",
    ["transport"],
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
SCRIPT_BATCHES = Counter(
    "shardgate_partition_script_batches_total",
    "Writes of the worker's script pipeline to a standalone Redis: one round trip each, shared by its calls.",
)
SCRIPT_BATCHED_CALLS = Counter(
    "shardgate_partition_script_batched_calls_total",
    "Script calls the pipeline sent; divided by the batches, the mean batch size.",
)
NOT_REPLICATED = Counter(
    "shardgate_partition_not_replicated_total",
    "Transitions fewer replicas than SHARDGATE_REDIS_WAIT_REPLICAS acknowledged in time (treated as lost replies).",
    ["script"],
)
RPCS = Counter("shardgate_partition_rpcs_total", "gRPC requests served by method and code.", ["method", "code"])
TIMER_LAG = Histogram(
    "shardgate_partition_timer_lag_seconds", "How late a timer fired after its due time.", buckets=_LATENCY_BUCKETS
)
OUTBOX_TOO_LARGE = Counter(
    "shardgate_partition_outbox_too_large_total",
    "Outbox messages over the gRPC message limit: answered to their waiting invocation as a failure"
    " (failed), or dropped when nothing waits for them (dropped).",
    ["outcome"],
)
OUTBOX_DEPTH = Gauge("shardgate_partition_outbox_depth", "Messages waiting in a partition's outbox.", ["partition"])
RECONCILED = Counter(
    "shardgate_partition_reconciled_total",
    "Invocations re-derived from Redis after a lost reply or by the sweep (read, resumed, answered).",
    ["action"],
)
SCHEDULE_TICKS = Counter(
    "shardgate_partition_schedule_ticks_total",
    "Schedule ticks by outcome (fired; skipped as missed, overlap or no_target).",
    ["outcome"],
)
SCHEDULE_LATENESS = Histogram(
    "shardgate_partition_schedule_lateness_seconds",
    "Fire time minus nominal time of fired schedule ticks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
QUEUE_WAIT = Histogram(
    "shardgate_scope_queue_wait_seconds",
    "How long scoped invocations under a rule waited from acceptance (or their due time) to their first start.",
    buckets=(0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

VQUEUE_TOP_BUCKETS = 20
"""How many buckets (scope / limit-key counters) get series of their own: the most queued first."""
NO_RULE = "(none)"
"""The `rule` label of a bucket no enabled rule counts any more (its queue drains)."""


class VqueueGauges(Collector):
    """Running, queued and oldest-queued age of the flow-control buckets of the partitions this
    worker owns, as its leaders last read them (`update`, every second while buckets exist). Cardinality is
    bounded: one series per rule pattern (`shardgate_scope_rule_*`), plus the `top_n` buckets with
    the most queued (then running) invocations (`shardgate_scope_bucket_*`, label `bucket` =
    scope[/l1[/l2]] as the rule cuts it)."""

    def __init__(self, top_n: int = VQUEUE_TOP_BUCKETS) -> None:
        self._top_n = top_n
        self._views: dict[int, tuple[tuple[str, BucketView], ...]] = {}

    def update(self, partition: int, views: Sequence[BucketView], rule_of: Callable[[str], str | None]) -> None:
        """The buckets of `partition` as just read; `rule_of(bucket)` names the rule counting it."""
        self._views[partition] = tuple((rule_of(v.bucket) or NO_RULE, v) for v in views)

    def forget(self, partition: int) -> None:
        """The partition is no longer owned here."""
        self._views.pop(partition, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        views = [rv for per_partition in list(self._views.values()) for rv in per_partition]
        yield from self._per_rule(views)
        yield from self._top(views)

    def _per_rule(self, views: list[tuple[str, BucketView]]) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily("shardgate_scope_rule_running",
                                    "Scoped invocations holding a slot, per rule pattern.", labels=["rule"])
        queued = GaugeMetricFamily("shardgate_scope_rule_queued",
                                   "Scoped invocations waiting for a slot or rate token, per rule pattern.",
                                   labels=["rule"])
        age = GaugeMetricFamily("shardgate_scope_rule_oldest_queued_age_seconds",
                                "How long the oldest queued invocation of a rule's buckets has waited.", labels=["rule"])
        totals: dict[str, list[float]] = {}
        for rule, v in views:
            t = totals.setdefault(rule, [0, 0, 0])
            t[0] += v.running
            t[1] += v.queued
            t[2] = max(t[2], (v.oldest_age_ms or 0) / 1000)
        for rule, (r, q, a) in sorted(totals.items()):
            running.add_metric([rule], r)
            queued.add_metric([rule], q)
            age.add_metric([rule], a)
        yield from (running, queued, age)

    def _top(self, views: list[tuple[str, BucketView]]) -> Iterator[GaugeMetricFamily]:
        labels = ["rule", "bucket"]
        running = GaugeMetricFamily("shardgate_scope_bucket_running",
                                    f"Invocations holding a slot of one bucket (the {self._top_n} busiest).", labels=labels)
        queued = GaugeMetricFamily("shardgate_scope_bucket_queued",
                                   f"Invocations queued in one bucket (the {self._top_n} busiest).", labels=labels)
        age = GaugeMetricFamily("shardgate_scope_bucket_oldest_queued_age_seconds",
                                f"How long the oldest queued invocation of one bucket has waited (the {self._top_n} busiest).",
                                labels=labels)
        busiest = sorted(views, key=lambda rv: (-rv[1].queued, -rv[1].running, rv[1].bucket))[: self._top_n]
        for rule, v in busiest:
            running.add_metric([rule, v.bucket], v.running)
            queued.add_metric([rule, v.bucket], v.queued)
            age.add_metric([rule, v.bucket], (v.oldest_age_ms or 0) / 1000)
        yield from (running, queued, age)


VQUEUE_GAUGES = VqueueGauges()
REGISTRY.register(VQUEUE_GAUGES)
