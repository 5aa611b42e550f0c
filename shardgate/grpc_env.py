"""gRPC C-core settings for the shardgate processes, applied before anything imports `grpc`.

C-core reads `GRPC_EXPERIMENTS` once, when `grpc` is first imported, so each process entry point
(`python -m partition`, `python -m ingress`) calls `apply_defaults()` before its other imports.

`-event_engine_client,-event_engine_listener` puts channels and servers back on C-core's own
polling, where the thread that waits on the completion queue (grpc.aio's poller thread) also
polls the sockets. With the EventEngine, another thread polls them and hands every event over,
one more thread wake-up per gRPC message on both ends. Measured on the 2-core machine with a
32-connection call bench, alternating: about 8 % less server CPU per call and 6-10 % more calls/s
(docs/performance.md, section 4). An operator's own `GRPC_EXPERIMENTS` is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

EXPERIMENTS_VAR = "GRPC_EXPERIMENTS"
DEFAULT_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the defaults this module describes unless the environment already sets them."""
    environ.setdefault(EXPERIMENTS_VAR, DEFAULT_EXPERIMENTS)
