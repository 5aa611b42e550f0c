"""Redis Cluster fixtures: one real 3-primary / 3-replica cluster per test module (never mocked)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rediscluster.cluster import RedisClusterProcs, redis_cluster


@pytest.fixture(scope="module")
def rcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A formed, healthy cluster of six redis-server processes on free loopback ports (AOF on)."""
    with redis_cluster(tmp_path_factory.mktemp("rcluster")) as cluster:
        yield cluster
