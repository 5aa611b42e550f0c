"""`python -m ingress`: one stateless ingress node (ingress API + admin API)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from ingress.app import serve
from ingress.config import IngressConfig
from shardgate.logs import run_process

log = logging.getLogger("ingress")


async def _main(config: IngressConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ingress node starting", extra={"ingress_port": config.ingress_port, "admin_port": config.admin_port})
    await serve(config, stop)
    log.info("ingress node stopped")


def main() -> int:
    return run_process("ingress", IngressConfig.from_env, _main)


if __name__ == "__main__":
    sys.exit(main())
