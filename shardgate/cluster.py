"""Cluster-wide facts every process checks at start-up."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from shardgate.keys import CLUSTER as CLUSTER_KEY  # hash: partitions (fixed at first start)


class ClusterMismatch(Exception):
    """The stored partition count differs from this process's configuration: refuse to start."""


async def check_partition_count(redis: Redis, partitions: int) -> None:
    """Store P at first start; refuse a different P afterwards (it would re-shard every id)."""
    await redis.hsetnx(CLUSTER_KEY, "partitions", partitions)
    stored = int(cast(bytes, await redis.hget(CLUSTER_KEY, "partitions")))  # set just above
    if stored != partitions:
        raise ClusterMismatch(
            f"this cluster was created with {stored} partitions, but this process is configured with "
            f"{partitions} (SHARDGATE_PARTITIONS); the partition count is fixed at first start because "
            "changing it would move invocation ids and idempotency keys to other partitions"
        )
