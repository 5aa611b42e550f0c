"""Every Prometheus metric of an ingress node, declared once."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "shardgate_ingress_requests_total", "Ingress HTTP requests by route family and status.", ["route", "status"]
)
REQUEST_DURATION = Histogram(
    "shardgate_ingress_request_duration_seconds",
    "Ingress HTTP request latency by route family.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
PARTITION_RPCS = Counter(
    "shardgate_ingress_partition_rpcs_total", "RPCs to partition workers by method and result.", ["method", "result"]
)
ROUTE_REFRESHES = Counter("shardgate_ingress_route_refreshes_total", "Reloads of the partition routing table.")


def observe_request(route: str, status: int, seconds: float) -> None:
    """The hook the ingress API calls once per request."""
    REQUESTS.labels(route, str(status)).inc()
    REQUEST_DURATION.labels(route).observe(seconds)
