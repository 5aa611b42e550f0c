"""`python -m ingress`: one stateless ingress node (ingress API + admin API).

SIGTERM (or SIGINT) drains the node: `/restate/health` answers 503 at once and every response
asks its client to close the connection, for SHARDGATE_SHUTDOWN_DELAY_S (default 0) while the node
still serves, so load balancers take it out of rotation; then it stops accepting, lets in-flight
requests finish for up to SHARDGATE_SHUTDOWN_GRACE_S (default 5), and exits.
"""

from __future__ import annotations

from shardgate import grpc_env

grpc_env.apply_defaults()  # before anything imports grpc: C-core reads its settings at import

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
