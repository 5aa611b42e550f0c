"""IngressConfig: everything an ingress node process is configured with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shardgate import linger, redisconn
from shardgate.envconfig import env_bool, env_float, env_int, env_opt_int, env_str, mask_url


@dataclass(frozen=True)
class IngressConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the registry, membership and routing table (SHARDGATE_REDIS_URL; credentials
    as `redis://user:password@host`, TLS as `rediss://`; `from_env` adds the
    SHARDGATE_REDIS_TLS_{CA_FILE,CERT_FILE,KEY_FILE,VERIFY} settings as URL options,
    see `shardgate.redisconn`)."""
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
    shutdown_delay_s: float = 0.0
    """On SIGTERM, how long the node keeps serving while `/restate/health` answers 503, so load
    balancers stop sending to it before it stops accepting (SHARDGATE_SHUTDOWN_DELAY_S)."""
    shutdown_grace_s: float = 5.0
    """Then, after it stopped accepting, how long in-flight requests may take to finish before
    the node exits anyway (SHARDGATE_SHUTDOWN_GRACE_S)."""
    scopes_enabled: bool = True
    """Serve `/restate/scope/{scope}/...` (SHARDGATE_SCOPES_ENABLED); false restores Restate's 400
    `scoped invocations require vqueues to be enabled`."""
    ingress_auth_file: str | None = None
    """Credentials (JSON or TOML, see docs/auth.md) every ingress request must present, except
    `/restate/health`; unset = the ingress API is open (SHARDGATE_INGRESS_AUTH_FILE)."""
    admin_auth_file: str | None = None
    """Credentials for the admin API, except `/health` and `/metrics`; may be the ingress's file
    (only entries granting `admin` pass); unset = the admin API is open (SHARDGATE_ADMIN_AUTH_FILE)."""
    auth_reload_interval_s: float = 1.0
    """How often the credential files are checked for a change and re-read; SIGHUP re-reads them
    at once (SHARDGATE_AUTH_RELOAD_INTERVAL_S)."""
    stream_linger_ms: float = linger.DEFAULT_DELAY_S * 1000
    """How long the writer of a busy `InvokeStream` waits for more to send in the same message
    (`shardgate/linger.py`: at least 8 requests unanswered on the stream, its previous message less
    than two delays ago); 0 = send at once (SHARDGATE_STREAM_LINGER_MS)."""
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
            redis_url=redisconn.redis_url_from_env(env, cls.redis_url),
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
            shutdown_delay_s=env_float(env, "SHUTDOWN_DELAY_S", cls.shutdown_delay_s),
            shutdown_grace_s=env_float(env, "SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            scopes_enabled=env_bool(env, "SCOPES_ENABLED", cls.scopes_enabled),
            ingress_auth_file=env_str(env, "INGRESS_AUTH_FILE", "") or None,
            admin_auth_file=env_str(env, "ADMIN_AUTH_FILE", "") or None,
            auth_reload_interval_s=env_float(env, "AUTH_RELOAD_INTERVAL_S", cls.auth_reload_interval_s),
            stream_linger_ms=env_float(env, "STREAM_LINGER_MS", cls.stream_linger_ms),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level).upper(),
            log_json=env_bool(env, "LOG_JSON", cls.log_json),
        )

    def __repr__(self) -> str:
        return (
            f"IngressConfig(redis_url={mask_url(self.redis_url)!r}, partitions={self.partitions}, "
            f"ingress={self.bind_host}:{self.ingress_port}, admin_port={self.admin_port})"
        )
