"""`run_dev`: the foreground supervisor of `shardgate dev` (ready line, signals, exit code)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import Any

from shardgate.dev.cluster import DevCluster
from shardgate.dev.errors import DevError
from shardgate.dev.options import spec_from_args
from shardgate.dev.spec import ClusterSpec
from shardgate.envconfig import mask_url

logger = logging.getLogger(__name__)


def ready_line(cluster: DevCluster) -> str:
    """The one line printed on stdout once the whole cluster is healthy."""
    spec = cluster.spec
    return (f"shardgate dev ready: ingress {cluster.ingress_url} admin {cluster.admin_url} "
            f"redis {mask_url(cluster.redis_url)} workers {len(cluster.workers)} "
            f"partitions {spec.partitions} (data {spec.data_dir}, logs {spec.data_dir / 'logs'})")


def _install_signal_handlers(stop: asyncio.Event, cluster: DevCluster) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            logger.warning("%s again: killing all children", signame)
            cluster.kill_all()
            return
        logger.info("%s received: stopping the cluster", signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)


def _remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


async def _first(*aws: Awaitable[Any]) -> int:
    """Run the awaitables concurrently; return the index of the first to finish, cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(i for i, t in enumerate(tasks) if t in done)
    tasks[first].result()
    return first


async def run_dev(spec: ClusterSpec) -> int:
    """Run the cluster in the foreground until Ctrl-C/SIGTERM (0) or a failure (1)."""
    try:
        cluster = DevCluster(spec)
    except DevError as exc:
        logger.error("%s", exc)
        return 2
    stop = asyncio.Event()
    _install_signal_handlers(stop, cluster)
    try:
        if await _first(stop.wait(), cluster.start()) == 0:
            return 0
        print(ready_line(cluster), flush=True)
        if await _first(stop.wait(), cluster.failed.wait()) == 1:
            logger.error("stopping the cluster: %s", cluster.failure_reason)
            return 1
        return 0
    except DevError:
        return 1  # logged by DevCluster.start before it stopped the children
    except OSError as exc:
        logger.error("shardgate dev failed: %s", exc)
        return 1
    finally:
        await cluster.stop()
        _remove_signal_handlers()


def main(args: argparse.Namespace) -> int:
    """Entry point of `shardgate dev` (arguments parsed by shardgate.cli)."""
    return asyncio.run(run_dev(spec_from_args(args)))
