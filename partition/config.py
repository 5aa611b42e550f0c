"""PartitionConfig: everything a partition worker process is configured with."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from shardgate import linger, redisconn
from shardgate.envconfig import ConfigError, env_bool, env_float, env_int, env_str, mask_url

BIDI_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class PartitionConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    """The Redis holding all durable state (SHARDGATE_REDIS_URL; credentials as
    `redis://user:password@host`, TLS as `rediss://`; `from_env` adds the
    SHARDGATE_REDIS_TLS_{CA_FILE,CERT_FILE,KEY_FILE,VERIFY} settings as URL options,
    see `shardgate.redisconn`)."""
    partitions: int = 64
    """Partition count P; fixed at first start, a mismatch refuses to start (SHARDGATE_PARTITIONS)."""
    worker_id: str = ""
    """Stable identity in the membership set (SHARDGATE_WORKER_ID; default host-pid)."""
    bind_host: str = "127.0.0.1"
    """Address the gRPC and metrics servers bind (SHARDGATE_BIND_HOST)."""
    grpc_port: int = 5122
    """gRPC port; 0 picks a free one (SHARDGATE_GRPC_PORT)."""
    advertised_host: str = "127.0.0.1"
    """Host other processes use to reach this worker (SHARDGATE_ADVERTISED_HOST)."""
    metrics_port: int = 9100
    """/metrics and /health port; 0 picks a free one (SHARDGATE_METRICS_PORT)."""
    lease_ttl_ms: int = 5000
    """A partition lease lapses this long after its owner stops renewing it (SHARDGATE_LEASE_TTL_MS)."""
    heartbeat_interval_ms: int = 1000
    """Membership heartbeat, lease renewal and rebalancing period (SHARDGATE_HEARTBEAT_INTERVAL_MS)."""
    deployment_connect_timeout_s: float = 5.0
    """TCP connect timeout towards deployments (SHARDGATE_DEPLOYMENT_CONNECT_TIMEOUT_S)."""
    max_concurrent_invocations: int = 10000
    """In-flight attempts per worker; more wait for a slot (SHARDGATE_MAX_CONCURRENT_INVOCATIONS)."""
    ready_invocations: int = 1000
    """Invocations held in memory (record, state, journal) beyond the running ones, ready to start as
    a slot frees up; more wait in Redis and are read back in turn (SHARDGATE_READY_INVOCATIONS)."""
    max_backlog_invocations: int = 10000
    """Invoked invocations waiting in Redis for room whose ids the worker queues (acceptance order);
    at this many, new calls are refused with 429 + Retry-After before anything is stored (sends are
    still accepted and wait in Redis, found by the sweep) (SHARDGATE_MAX_BACKLOG_INVOCATIONS)."""
    drain_grace_s: float = 3.0
    """On SIGTERM, how long running attempts get to record their transition before the partitions
    are handed back; shorter than the lease TTL and than Kubernetes' termination grace
    (SHARDGATE_DRAIN_GRACE_S)."""
    redis_timeout_s: float = 5.0
    """Socket timeout of every Redis command (SHARDGATE_REDIS_TIMEOUT_S)."""
    redis_wait_replicas: int = 0
    """Replicas every transition waits for (Redis WAIT) before it counts as done, so nothing
    acknowledged is lost by a failover; 0 = off (SHARDGATE_REDIS_WAIT_REPLICAS)."""
    redis_wait_timeout_ms: int = 1000
    """How long a transition waits for those replicas; then it fails as a lost reply and is
    retried (SHARDGATE_REDIS_WAIT_TIMEOUT_MS)."""
    max_protocol_version: int = 6
    """Highest service-protocol version offered to deployments: 6 (Restate 1.7's default) or 7
    (SHARDGATE_MAX_PROTOCOL_VERSION)."""
    bidi: str = "auto"
    """Bidirectional attempts to deployments that stream (h2c, BIDI_STREAM), where a `ctx.run` or
    a lazy state read goes on in the same attempt (`partition/bidi.py`): `auto` streams the
    attempts of handlers replayed soon after their journal grew (a plain call stays
    request-response, which costs it less); `always` every attempt to such a deployment; `off`
    none (SHARDGATE_BIDI)."""
    request_identity_key_file: str | None = None
    """Ed25519 PKCS#8 PEM signing every request to deployments; unset = unsigned
    (SHARDGATE_REQUEST_IDENTITY_KEY_FILE)."""
    stream_linger_ms: float = linger.DEFAULT_DELAY_S * 1000
    """How long the writer of a busy `InvokeStream` waits for more to send in the same message
    (`shardgate/linger.py`: at least 8 requests unanswered on the stream, its previous message less
    than two delays ago); 0 = send at once (SHARDGATE_STREAM_LINGER_MS)."""
    log_level: str = "INFO"
    """SHARDGATE_LOG_LEVEL."""
    log_json: bool = True
    """JSON log lines (SHARDGATE_LOG_JSON)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PartitionConfig:
        env = os.environ if env is None else env
        return cls(
            redis_url=redisconn.redis_url_from_env(env, cls.redis_url),
            partitions=env_int(env, "PARTITIONS", cls.partitions, minimum=1),
            worker_id=env_str(env, "WORKER_ID", "") or f"{socket.gethostname()}-{os.getpid()}",
            bind_host=env_str(env, "BIND_HOST", cls.bind_host),
            grpc_port=env_int(env, "GRPC_PORT", cls.grpc_port, minimum=0),
            advertised_host=env_str(env, "ADVERTISED_HOST", cls.advertised_host),
            metrics_port=env_int(env, "METRICS_PORT", cls.metrics_port, minimum=0),
            lease_ttl_ms=env_int(env, "LEASE_TTL_MS", cls.lease_ttl_ms, minimum=500),
            heartbeat_interval_ms=env_int(env, "HEARTBEAT_INTERVAL_MS", cls.heartbeat_interval_ms, minimum=50),
            deployment_connect_timeout_s=env_float(
                env, "DEPLOYMENT_CONNECT_TIMEOUT_S", cls.deployment_connect_timeout_s
            ),
            max_concurrent_invocations=env_int(
                env, "MAX_CONCURRENT_INVOCATIONS", cls.max_concurrent_invocations, minimum=1
            ),
            ready_invocations=env_int(env, "READY_INVOCATIONS", cls.ready_invocations, minimum=0),
            max_backlog_invocations=env_int(env, "MAX_BACKLOG_INVOCATIONS", cls.max_backlog_invocations, minimum=0),
            redis_timeout_s=env_float(env, "REDIS_TIMEOUT_S", cls.redis_timeout_s),
            redis_wait_replicas=env_int(env, "REDIS_WAIT_REPLICAS", cls.redis_wait_replicas, minimum=0),
            redis_wait_timeout_ms=env_int(env, "REDIS_WAIT_TIMEOUT_MS", cls.redis_wait_timeout_ms, minimum=1),
            drain_grace_s=env_float(env, "DRAIN_GRACE_S", cls.drain_grace_s),
            max_protocol_version=_protocol_version(env_int(env, "MAX_PROTOCOL_VERSION", cls.max_protocol_version)),
            bidi=_bidi_mode(env_str(env, "BIDI", cls.bidi)),
            request_identity_key_file=env_str(env, "REQUEST_IDENTITY_KEY_FILE", "") or None,
            stream_linger_ms=env_float(env, "STREAM_LINGER_MS", cls.stream_linger_ms),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level).upper(),
            log_json=env_bool(env, "LOG_JSON", cls.log_json),
        )

    def __repr__(self) -> str:
        return (
            f"PartitionConfig(worker_id={self.worker_id!r}, redis_url={mask_url(self.redis_url)!r}, "
            f"partitions={self.partitions}, grpc={self.bind_host}:{self.grpc_port}, "
            f"metrics_port={self.metrics_port}, lease_ttl_ms={self.lease_ttl_ms})"
        )


def _bidi_mode(v: str) -> str:
    mode = v.strip().lower()
    if mode not in BIDI_MODES:
        raise ConfigError(f"SHARDGATE_BIDI must be one of {', '.join(BIDI_MODES)}, not {v!r}")
    return mode


def _protocol_version(v: int) -> int:
    if v not in (5, 6, 7):
        raise ConfigError(f"SHARDGATE_MAX_PROTOCOL_VERSION={v} must be 5, 6 or 7")
    return v
