"""`python -m ingress`: one stateless ingress node (ingress API + admin API)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from ingress.app import serve
from ingress.config import IngressConfig
from shardgate.cluster import ClusterMismatch
from shardgate.envconfig import ConfigError
from shardgate.logs import run_async, setup_logging

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
    try:
        config = IngressConfig.from_env()
    except ConfigError as e:
        print(f"ingress: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging("ingress", config.log_level, config.log_json)
    try:
        run_async(_main(config))
    except ClusterMismatch as e:
        log.error("refusing to start: %s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
