"""`shardgate.redisconn`: URL forms, and the retry policy on a real cluster losing a primary:
idempotent reads ride out the failover, scripts and writes are never retried blindly."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from shardgate import redisconn
from shardgate.redisconn import ReadRetry, ShardgateCluster, is_cluster_url, parse_cluster_url
from tests.rediscluster.cluster import RedisClusterProcs, command, wait_until

pytestmark = pytest.mark.timeout(60)


def test_cluster_urls_parse() -> None:
    a = parse_cluster_url("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert a.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (a.username, a.password, a.tls) == ("u", "p@ss", False)
    b = parse_cluster_url("rediss+cluster://secret@h:6379/0")
    assert (b.nodes, b.username, b.password, b.tls) == ((("h", 6379),), None, "secret", True)
    assert is_cluster_url("REDIS+CLUSTER://h:1") and not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://h", "redis+cluster://h:1/2",
                                 "redis+cluster://h:1?ssl=1", "redis://h:1"])
def test_bad_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_cluster_url(url)


def test_standalone_urls_keep_the_plain_client() -> None:
    client = redisconn.connect("redis://127.0.0.1:1/0", timeout_s=1.5, max_connections=7)
    assert type(client) is Redis
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 1.5)
    assert client.connection_pool.max_connections == 7


def test_read_retry_backoff_is_capped() -> None:
    r = ReadRetry(attempts=6, base_ms=50, cap_ms=400)
    assert [r.delay_s(i) for i in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]


# Busy for ARGV[1] microseconds, then INCR: it runs to the end on the server even when the client
# gave up on its reply, which is the case where a blind retry applies a script twice.
SLOW_INCR = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > tonumber(ARGV[1]) then break end
end
return redis.call('INCR', KEYS[1])
"""


async def test_a_script_whose_reply_timed_out_is_not_run_again(rcluster: RedisClusterProcs) -> None:
    """redis-py's default cluster policy re-sends it after the timeout (measured: 11 runs of one
    call); ours runs it once and raises, and a read after it is retried until it answers."""
    key = "sg:{p9}:slow"
    client = redisconn.connect(rcluster.url, timeout_s=0.3, max_connections=8)
    script = client.register_script(SLOW_INCR)
    try:
        assert await script(keys=[key], args=[0]) == 1
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await script(keys=[key], args=[600_000])
        assert time.monotonic() - started < 0.6
        assert await client.get(key) == b"2"  # times out behind the script, retried, then answers
    finally:
        await client.aclose()


async def test_reads_ride_out_a_primary_sigkill_and_writes_are_not_retried(rcluster: RedisClusterProcs) -> None:
    key = "sg:{p7}:probe"
    client = redisconn.connect(rcluster.url, timeout_s=2.0, max_connections=8,
                               read_retry=ReadRetry(attempts=12, base_ms=100, cap_ms=1000))
    assert isinstance(client, ShardgateCluster)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        assert await script(keys=[key]) == 1
        primary = rcluster.primary_for_slot(key_slot(key.encode()))
        replica = rcluster.replica_of(primary)
        wait_until("the INCR to reach the replica", 10.0, lambda: _replica_has(rcluster, replica, key))
        rcluster.node(primary).kill()
        with pytest.raises(RedisError):  # a script: one attempt, the error goes to the caller
            await script(keys=[key])
        started = time.monotonic()
        with pytest.raises(ConnectionError):  # a write: the same (redis-py's default policy would
            await client.set(key, "x")       # retry for seconds, past the promotion, and succeed)
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        assert await client.get(key) == b"1"  # a read (the SET never ran): retried with back-off until the replica took over
        assert time.monotonic() - started < 15.0
        assert rcluster.roles().get(replica) == "master"
        assert await script(keys=[key]) == 2  # the promoted primary had no script cache: reloaded
    finally:
        await client.aclose()
        rcluster.node(primary).start(rcluster.binary)
        rcluster.wait_healthy()


def _replica_has(rcluster: RedisClusterProcs, port: int, key: str) -> bool:
    with rcluster.node(port).client() as c:
        command(c, "READONLY")
        return bool(c.get(key) == b"1")
