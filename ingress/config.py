"""IngressConfig: everything an ingress node process is configured with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shardgate.envconfig import env_bool, env_float, env_int, env_opt_int, env_str, mask_url


@dataclass(frozen=True)
class IngressConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the registry, membership and routing table (SHARDGATE_REDIS_URL)."""
    partitions: int = 64
    """Must equal the cluster's stored partition count (SHARDGATE_PARTITIONS)."""
    bind_host: str = "127.0.0.1"
    """Address both HTTP servers bind (SHARDGATE_BIND_HOST)."""
    ingress_port: int = 8080
    """Ingress API port (SHARDGATE_INGRESS_PORT)."""
    admin_port: int = 9070
    """Admin API and /metrics port (SHARDGATE_ADMIN_PORT)."""
    advertised_ingress_url: str = ""
    """URL put in OpenAPI documents (SHARDGATE_ADVERTISED_INGRESS_URL; default from bind and port)."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Request bodies above this are answered 413 (SHARDGATE_MAX_BODY_BYTES)."""
    concurrency_limit: int | None = None
    """Concurrent ingress requests above this are answered 429 (SHARDGATE_CONCURRENCY_LIMIT; unset = none)."""
    routing_deadline_s: float = 30.0
    """How long a request keeps retrying an unavailable partition before 503 (SHARDGATE_ROUTING_DEADLINE_S)."""
    rpc_timeout_s: float = 15.0
    """Timeout of one non-waiting RPC to a worker (SHARDGATE_RPC_TIMEOUT_S)."""
    call_timeout_s: float = 3600.0
    """Upper bound on how long a call or attach waits for its result (SHARDGATE_CALL_TIMEOUT_S)."""
    registry_poll_interval_s: float = 0.25
    """How often the registry version is checked (SHARDGATE_REGISTRY_POLL_INTERVAL_S)."""
    redis_timeout_s: float = 5.0
    """Socket timeout of every Redis command (SHARDGATE_REDIS_TIMEOUT_S)."""
    request_identity_key_file: str | None = None
    """Ed25519 PKCS#8 PEM signing discovery requests; use the workers' key
    (SHARDGATE_REQUEST_IDENTITY_KEY_FILE)."""
    log_level: str = "INFO"
    """SHARDGATE_LOG_LEVEL."""
    log_json: bool = True
    """JSON log lines (SHARDGATE_LOG_JSON)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngressConfig:
        env = os.environ if env is None else env
        bind = env_str(env, "BIND_HOST", cls.bind_host)
        port = env_int(env, "INGRESS_PORT", cls.ingress_port, minimum=0)
        return cls(
            redis_url=env_str(env, "REDIS_URL", cls.redis_url),
            partitions=env_int(env, "PARTITIONS", cls.partitions, minimum=1),
            bind_host=bind,
            ingress_port=port,
            admin_port=env_int(env, "ADMIN_PORT", cls.admin_port, minimum=0),
            advertised_ingress_url=env_str(env, "ADVERTISED_INGRESS_URL", "") or f"http://{bind}:{port}",
            max_body_bytes=env_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            concurrency_limit=env_opt_int(env, "CONCURRENCY_LIMIT"),
            routing_deadline_s=env_float(env, "ROUTING_DEADLINE_S", cls.routing_deadline_s),
            rpc_timeout_s=env_float(env, "RPC_TIMEOUT_S", cls.rpc_timeout_s),
            call_timeout_s=env_float(env, "CALL_TIMEOUT_S", cls.call_timeout_s),
            registry_poll_interval_s=env_float(env, "REGISTRY_POLL_INTERVAL_S", cls.registry_poll_interval_s),
            redis_timeout_s=env_float(env, "REDIS_TIMEOUT_S", cls.redis_timeout_s),
            request_identity_key_file=env_str(env, "REQUEST_IDENTITY_KEY_FILE", "") or None,
            log_level=env_str(env, "LOG_LEVEL", cls.log_level).upper(),
            log_json=env_bool(env, "LOG_JSON", cls.log_json),
        )

    def __repr__(self) -> str:
        return (
            f"IngressConfig(redis_url={mask_url(self.redis_url)!r}, partitions={self.partitions}, "
            f"ingress={self.bind_host}:{self.ingress_port}, admin_port={self.admin_port})"
        )
