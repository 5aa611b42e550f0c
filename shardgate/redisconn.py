"""The one place that builds Redis clients: a standalone client or a Redis Cluster client, from a URL.

URL forms (the worker's and the ingress's `SHARDGATE_REDIS_URL`):

- `redis://[user:pass@]host:port[/db]`, `rediss://...`, `unix://...`: one standalone server, built
  with `Redis.from_url` exactly as before (no automatic command retries);
- `redis+cluster://[user:pass@]host:port[,host:port...]` (TLS: `rediss+cluster://`): a Redis
  Cluster, any reachable nodes as seeds; the client discovers the rest (`CLUSTER SLOTS`).

AUTH and TLS. A username and password in the URL are sent with `AUTH` (`HELLO`) on every new
connection; percent-encode special characters. A TLS URL (`rediss://`, `rediss+cluster://`) takes
the query options in `TLS_OPTIONS` (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
`ssl_cert_reqs`, `ssl_check_hostname`), on both URL forms; `tls_url` adds them from the
`SHARDGATE_REDIS_TLS_*` settings (the configs' `from_env` calls it), and refuses them on a URL
without TLS, where they would silently do nothing.

Retries on a cluster. redis-py follows MOVED and ASK redirections and waits out TRYAGAIN itself
(a redirected or refused command never ran, so that is safe for every command). What it would also
do by default, retry a command after a connection error or a timeout, is not safe for us: the
command may have run and only its reply been lost, and the outbox acknowledgement trims by count,
so a retried ack drops messages never delivered. The cluster client is therefore built with no
client-level retries (`Retry(NoBackoff(), 0)`), and `ShardgateCluster.execute_command` adds
retries with capped exponential back-off for idempotent reads only (`IDEMPOTENT_READS`: GET, HMGET,
SCAN, ...) on ConnectionError, TimeoutError, CLUSTERDOWN, TRYAGAIN and an uncovered slot. Scripts
and writes run once; their callers see the error and decide, as they do on a standalone server.

Scripts on a cluster. Every server caches scripts on its own, and a replica promoted by a failover
has none of them. Single EVALSHA calls recover by themselves (redis-py's Script loads on NOSCRIPT),
but a pipeline of EVALSHAs (the lease renewal) cannot, and redis-py refuses EVALSHA in a cluster
pipeline altogether; our pipeline allows it (routed by its keys). The cluster client remembers every
registered script and loads them on all primaries after each topology (re)initialisation and when
a pipeline fails with NOSCRIPT (the pipeline's error is still raised: part of it may have run).

The clients are typed as `redis.asyncio.Redis` for the callers: `RedisCluster` offers the same
command methods, pipelines (non-transactional pipelines split by node), `pubsub()` (PUBLISH is
broadcast by the cluster bus, so a subscriber on any node sees every message) and `scan_iter`
(over every primary). Multi-key commands across slots (MGET, DEL of several keys) are refused by
the cluster client; the runtime issues none.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    NoScriptError,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from shardgate.envconfig import ConfigError, env_bool, env_str, mask_url

log = logging.getLogger("shardgate.redis")

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
TLS_SCHEMES = frozenset({"rediss", "rediss+cluster"})
# URL query options for TLS connections: name -> how the cluster client takes the value (the
# standalone client parses them itself, `redis.asyncio.connection.parse_url`)
TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str, "ssl_cert_reqs": str,
    "ssl_check_hostname": lambda v: v.lower() in ("1", "true", "yes", "on"),
}

# Read-only commands: running one twice changes nothing, so a lost reply may be asked again.
IDEMPOTENT_READS = frozenset({
    "GET", "MGET", "STRLEN", "EXISTS", "TYPE", "TTL", "PTTL",
    "HGET", "HMGET", "HGETALL", "HLEN", "HEXISTS", "HKEYS", "HVALS", "HSCAN",
    "SMEMBERS", "SISMEMBER", "SCARD", "SSCAN",
    "ZRANGE", "ZRANGEBYSCORE", "ZREVRANGE", "ZCARD", "ZSCORE", "ZCOUNT", "ZSCAN",
    "LRANGE", "LLEN", "LINDEX", "SCAN", "PING", "INFO", "DBSIZE",
    "CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS", "CLUSTER SHARDS",
})
# Errors after which a read is asked again: the cluster is moving (failover, resharding) or the
# connection broke; for a read either way is harmless.
RETRIABLE_READ_ERRORS: tuple[type[Exception], ...] = (
    ConnectionError, TimeoutError, ClusterDownError, TryAgainError, SlotNotCoveredError,
)


@dataclass(frozen=True)
class ReadRetry:
    """Back-off of the idempotent-read retries on a cluster: `attempts` retries after the first try,
    the n-th after min(cap, base * 2**n) ms."""

    attempts: int = 8
    base_ms: int = 50
    cap_ms: int = 1000

    def delay_s(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        return min(self.cap_ms, self.base_ms * (1 << retry)) / 1000.0


DEFAULT_READ_RETRY = ReadRetry()


class _ClosedWriteGuard:
    """Makes a write on a connection whose transport has already closed a ConnectionError.
    Under uvloop such a write (Redis went away between the connect and the HELLO, or between
    two commands) raises RuntimeError("... the handler is closed"), which redis-py passes on
    as it is, so a caller that retries the connection errors of a Redis outage would treat the
    outage as a bug. Mixed into the connection classes our pools build (`_GUARDED`)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except RuntimeError as e:
            if "closed" not in str(e):
                raise
            raise ConnectionError(f"the Redis connection closed before a write ({e})") from e


class GuardedConnection(_ClosedWriteGuard, Connection):
    """A TCP connection with `_ClosedWriteGuard`."""


class GuardedSSLConnection(_ClosedWriteGuard, SSLConnection):
    """A TLS connection with `_ClosedWriteGuard`."""


class GuardedUnixConnection(_ClosedWriteGuard, UnixDomainSocketConnection):
    """A Unix socket connection with `_ClosedWriteGuard`."""


_GUARDED: dict[type[Any], type[Any]] = {
    Connection: GuardedConnection, SSLConnection: GuardedSSLConnection,
    UnixDomainSocketConnection: GuardedUnixConnection,
}


def is_cluster_url(url: str) -> bool:
    """True for `redis+cluster://` and `rediss+cluster://` URLs."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterAddress:
    """What a cluster URL says: seed nodes, credentials, TLS."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    tls_options: tuple[tuple[str, Any], ...] = ()
    """The URL's `TLS_OPTIONS` (TLS URLs only), as keyword arguments of the cluster client."""


def parse_cluster_url(url: str) -> ClusterAddress:
    """Split `redis+cluster://[user:pass@]h1:p1,h2:p2[/0][?tls options]`. Raises ValueError for
    another scheme, no node, a node without a port, a database other than 0 or a query option
    that is not one of `TLS_OPTIONS` on a `rediss+cluster://` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster:// or rediss+cluster://): {scheme}://...")
    rest, _, query = rest.partition("?")
    creds, _, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    nodes = tuple(_host_port(part) for part in hosts.split(",") if part)
    if not nodes:
        raise ValueError("a Redis Cluster URL names at least one host:port")
    username, password = _credentials(creds)
    tls = CLUSTER_SCHEMES[scheme.lower()]
    return ClusterAddress(nodes, username, password, tls, _tls_options(query, tls))


def _tls_options(query: str, tls: bool) -> tuple[tuple[str, Any], ...]:
    """The TLS options of a cluster URL's query. Raises ValueError for any other option, and for
    any option at all without TLS."""
    options = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    if options and not tls:
        raise ValueError("a redis+cluster:// URL takes no query options (TLS options need rediss+cluster://)")
    unknown = sorted({name for name, _ in options} - TLS_OPTIONS.keys())
    if unknown:
        raise ValueError(f"unknown Redis Cluster URL option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(TLS_OPTIONS))}")
    return tuple((name, TLS_OPTIONS[name](value)) for name, value in options)


def redis_url_from_env(env: Mapping[str, str], default: str) -> str:
    """`SHARDGATE_REDIS_URL` with the `SHARDGATE_REDIS_TLS_{CA_FILE,CERT_FILE,KEY_FILE,VERIFY}`
    settings folded in (see `tls_url`), for the configs' `from_env`. Raises ConfigError naming the
    variables when TLS settings are given for a URL without TLS."""
    url = env_str(env, "REDIS_URL", default)
    try:
        return tls_url(url, ca_file=env_str(env, "REDIS_TLS_CA_FILE", "") or None,
                       cert_file=env_str(env, "REDIS_TLS_CERT_FILE", "") or None,
                       key_file=env_str(env, "REDIS_TLS_KEY_FILE", "") or None,
                       verify_peer=env_bool(env, "REDIS_TLS_VERIFY", True))
    except ValueError as e:
        raise ConfigError(f"SHARDGATE_REDIS_TLS_*: {e} (SHARDGATE_REDIS_URL={mask_url(url)!r})") from None


def tls_url(url: str, *, ca_file: str | None = None, cert_file: str | None = None,
            key_file: str | None = None, verify_peer: bool = True) -> str:
    """`url` with the TLS settings added as query options (`ssl_ca_certs`, `ssl_certfile`,
    `ssl_keyfile`, `ssl_cert_reqs=none` when `verify_peer` is false); unchanged when none is set.
    Raises ValueError when a setting is given for a URL without TLS (`redis://`, `unix://`)."""
    options = [(name, value) for name, value in (("ssl_ca_certs", ca_file), ("ssl_certfile", cert_file),
                                                 ("ssl_keyfile", key_file)) if value]
    if not verify_peer:
        options.append(("ssl_cert_reqs", "none"))
    if not options:
        return url
    if url.split("://", 1)[0].lower() not in TLS_SCHEMES:
        raise ValueError("TLS settings need a rediss:// or rediss+cluster:// URL")
    query = "&".join(f"{name}={quote(value, safe='/')}" for name, value in options)
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _host_port(part: str) -> tuple[str, int]:
    split = urlsplit(f"//{part}")
    if split.hostname is None or split.port is None:
        raise ValueError(f"Redis Cluster node {part!r} is not host:port")
    return split.hostname, split.port


def _credentials(creds: str) -> tuple[str | None, str | None]:
    if not creds:
        return None, None
    user, sep, password = creds.partition(":")
    if not sep:
        return None, unquote(user)  # redis://secret@host: a password alone
    return (unquote(user) or None), unquote(password)


class _Queued:
    """Awaitable that resolves at once to the pipeline a command was queued on."""

    def __init__(self, pipe: ClusterPipeline) -> None:
        self.pipe = pipe

    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        return self.pipe
        yield  # a generator: nothing to wait for


class ScriptLoadingPipeline(ClusterPipeline):
    """A cluster pipeline that runs EVALSHA (redis-py blocks it in cluster pipelines because it
    cannot load a missing script there) and reloads the client's scripts when one of them met
    NOSCRIPT (a freshly promoted primary); that error is raised all the same. Each EVALSHA goes to
    the node of its keys' slot, like any keyed command."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> _Queued:
        """Queue one EVALSHA. redis-py's Script awaits what this returns; awaiting the pipeline
        itself would empty its queue, so this returns an awaitable that leaves it alone."""
        return _Queued(self.execute_command("EVALSHA", sha, numkeys, *keys_and_args))

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        """Run the queued commands. Raises what the pipeline raised (RedisError)."""
        client = cast("ShardgateCluster", self.cluster_client)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except NoScriptError:
            await client.load_scripts()
            raise


class ShardgateCluster(RedisCluster):
    """RedisCluster with our retry policy (idempotent reads only) and script reloading."""

    def __init__(self, *args: Any, read_retry: ReadRetry = DEFAULT_READ_RETRY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_retry = read_retry
        # The nodes' connections get `_ClosedWriteGuard` too: the nodes discovered later are built
        # from the shared connection kwargs, the seeds already were.
        kinds = self.nodes_manager.connection_kwargs
        kinds["connection_class"] = _GUARDED.get(kinds["connection_class"], kinds["connection_class"])
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = _GUARDED.get(node.connection_class, node.connection_class)
        self._registered: dict[str, bytes] = {}  # sha -> script source

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        """Like RedisCluster's, and remember the script for reloading after a failover."""
        registered = super().register_script(script)
        text = script.encode() if isinstance(script, str) else bytes(script)
        self._registered[str(registered.sha)] = text
        return registered

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every registered script on every primary; errors are logged, not raised
        (the next NOSCRIPT or reinitialisation tries again)."""
        for text in list(self._registered.values()):
            try:
                await super().execute_command("SCRIPT LOAD", text)
            except RedisError as exc:
                log.warning("could not load a script on the cluster's primaries: %s", type(exc).__name__)
                return

    async def initialize(self, additional_startup_nodes_info: list[tuple[str, int]] | None = None,
                         last_failed_node_name: str | None = None) -> ShardgateCluster:
        """Discover the topology (again) and make sure every primary knows our scripts. Raises
        RedisError when no seed node answers."""
        fresh = self._initialize
        await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        if fresh and self._registered:
            await self.load_scripts()
        return self

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        """A pipeline; non-transactional ones reload scripts on NOSCRIPT. Raises
        RedisClusterException for a shard hint."""
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)
        return ScriptLoadingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds it

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run one command; an idempotent read is asked again with back-off after a connection
        error, a timeout, CLUSTERDOWN, TRYAGAIN or an uncovered slot. Raises RedisError."""
        if _command_name(args) not in IDEMPOTENT_READS:
            return await super().execute_command(*args, **kwargs)
        retry = 0
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except RETRIABLE_READ_ERRORS:
                if retry >= self.read_retry.attempts:
                    raise
                await asyncio.sleep(self.read_retry.delay_s(retry))
                retry += 1


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    first = args[0]
    name = first.decode() if isinstance(first, bytes) else str(first)
    return name.upper()


DEFAULT_POOL_WAIT_S = 5.0
"""How long a full standalone pool waits for a connection when no socket timeout is set."""


class WaitingConnectionPool(ConnectionPool):
    """A standalone server's pool that, with all `max_connections` in use, waits up to `wait_s`
    for one to come back instead of failing at once (redis-py's pool raises "Too many
    connections"), so a burst or a Redis latency spike queues instead of turning into errors.
    Taking a free connection costs what it costs in the plain pool; only a full pool waits,
    first come first served."""

    def __init__(self, *args: Any, wait_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wait_s = wait_s
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connected connection; waits while the pool is full. Raises MaxConnectionsError when
        none came back within `wait_s`, and what connecting raises."""
        deadline_s: float | None = None
        while True:
            try:
                return await super().get_connection()  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                loop = asyncio.get_running_loop()
                deadline_s = loop.time() + self._wait_s if deadline_s is None else deadline_s
                if deadline_s <= loop.time():
                    raise MaxConnectionsError(f"no Redis connection came free within {self._wait_s} s") from None
                await self._wait_for_release(loop, deadline_s)

    async def _wait_for_release(self, loop: asyncio.AbstractEventLoop, deadline_s: float) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout_at(deadline_s):
                await fut
        except builtins.TimeoutError:  # this module's TimeoutError is redis-py's
            pass
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._wake_one()  # the connection it was woken for goes to the next waiter
            raise
        finally:
            if not fut.done():
                fut.cancel()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self._waiters:
            self._wake_one()


def connect(url: str, *, timeout_s: float | None, max_connections: int,
            connect_timeout_s: float | None = None, read_retry: ReadRetry = DEFAULT_READ_RETRY,
            pool_wait_s: float | None = None) -> Redis:
    """A client for `url`: a `WaitingConnectionPool` client for a standalone server (a full pool
    waits up to `pool_wait_s`, default `timeout_s`, for a connection), a `ShardgateCluster` for a cluster URL, with the
    same socket timeouts (`connect_timeout_s` defaults to `timeout_s`) and a pool of at most
    `max_connections` (per node on a cluster). Connects lazily, on the first
    command. Raises ValueError for a malformed cluster URL."""
    connect_s = timeout_s if connect_timeout_s is None else connect_timeout_s
    if not is_cluster_url(url):
        pool = WaitingConnectionPool.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=connect_s,
                                              max_connections=max_connections,
                                              wait_s=pool_wait_s or timeout_s or DEFAULT_POOL_WAIT_S)
        pool.connection_class = _GUARDED.get(pool.connection_class, pool.connection_class)
        return Redis.from_pool(pool)
    address = parse_cluster_url(url)
    cluster = ShardgateCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username, password=address.password, ssl=address.tls, **dict(address.tls_options),
        socket_timeout=timeout_s, socket_connect_timeout=connect_s, max_connections=max_connections,
        retry=Retry(NoBackoff(), 0), read_retry=read_retry,
    )
    return cast(Redis, cluster)


def ack_key(key: str) -> str:
    """The replication barrier key of `key`'s slot: `sg:{<key's hash tag>}:ack` (the key itself
    when it has no tag)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return f"sg:{key[start:end + 1]}:ack" if start >= 0 and end > start + 1 else key


async def run_acknowledged(client: Redis, script: AsyncScript, keys: Sequence[str], args: Sequence[Any],
                           replicas: int, timeout_ms: int) -> tuple[Any, int]:
    """Run `script`, then a one-byte write to `keys[0]`'s slot (`ack_key`) and `WAIT replicas
    timeout_ms`, pipelined on one connection (one round trip); returns (script reply, replicas
    that acknowledged). The write makes the WAIT cover every earlier write to that primary, by
    any connection, also when the script itself wrote nothing (a duplicate, a retry that finds its
    outcome stored). Raises RedisError (the script's error included)."""
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=list(keys), args=list(args), client=pipe)
        pipe.set(ack_key(keys[0]), b"1")
        if isinstance(client, RedisCluster):
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=client.get_node_from_key(keys[0]))
        else:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, _, acked = await pipe.execute()
    return reply, int(acked)
