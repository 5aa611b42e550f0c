"""`run_dev`: the foreground supervisor of `shardgate dev` (ready line, signals, exit code).

Once the cluster is up only Ctrl-C / SIGTERM stops it: a child that dies is restarted by
`DevCluster` (or, with `--no-restart`, left down) while the others keep serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import Any

from sgtools.dev.cluster import DevCluster
from sgtools.dev.errors import DevError
from sgtools.dev.options import spec_from_args
from sgtools.dev.spec import ClusterSpec
from shardgate.envconfig import mask_url

logger = logging.getLogger(__name__)


def ready_line(cluster: DevCluster) -> str:
    """The one line printed on stdout once the whole cluster is healthy."""
    spec = cluster.spec
    fronting = (f" (haproxy in front of {len(cluster.ingress_nodes)} ingress nodes)"
                if cluster.load_balancer is not None else "")
    return (f"shardgate dev ready: ingress {cluster.ingress_url}{fronting} admin {cluster.admin_url} "
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
    """Run the cluster in the foreground until Ctrl-C / SIGTERM.

    Returns 0 after a signal, 1 when start-up fails (or the supervisor hits an OS error), 2 for a
    spec that cannot describe a cluster. Children dying after start-up do not end it.
    """
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
        await stop.wait()
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
    """Entry point of `shardgate dev` (arguments parsed by sgtools.cli)."""
    return asyncio.run(run_dev(spec_from_args(args)))
