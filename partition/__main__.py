"""`python -m partition`: one partition worker process (parts built by `partition.worker.Worker`)."""

from __future__ import annotations

from shardgate import grpc_env

grpc_env.apply_defaults()  # before anything imports grpc: C-core reads its settings at import

import asyncio
import signal
import sys

from partition.config import PartitionConfig
from partition.worker import Worker
from shardgate.logs import run_process


async def serve(config: PartitionConfig) -> None:
    """Run a worker until SIGTERM / SIGINT, then leave the cluster cleanly."""
    worker = Worker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.start()
        await stop.wait()
    finally:
        await worker.stop()


def main() -> int:
    return run_process("partition", PartitionConfig.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
