"""Process-wide logging set-up: JSON lines (one object per record) or plain text."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields (invocation_id, partition, ...) become keys."""

    def __init__(self, process_role: str) -> None:
        super().__init__()
        self._role = process_role

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": self._role,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(role: str, level: str, json_lines: bool) -> None:
    """Configure the root logger once for this process."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_async(main: Any) -> None:
    """Run the process's main coroutine on uvloop when available (it is on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def run_process(role: str, load_config: Callable[[], Any], serve: Callable[[Any], Awaitable[None]]) -> int:
    """Shared `main()` of the process entry points: config, logging, event loop, exit codes.

    Exit codes: 0 clean stop, 2 bad configuration (also found while starting: a credentials file,
    Redis refusing the password), 3 refused to join the cluster.
    """
    from shardgate.cluster import ClusterMismatch
    from shardgate.envconfig import ConfigError

    try:
        config = load_config()
    except ConfigError as e:
        print(f"{role}: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(role, config.log_level, config.log_json)
    try:
        run_async(serve(config))
    except ClusterMismatch as e:
        logging.getLogger(role).error("refusing to start: %s", e)
        return 3
    except ConfigError as e:  # found while starting, e.g. an unreadable credentials file
        logging.getLogger(role).error("configuration error: %s", e)
        return 2
    except redis.exceptions.AuthenticationError as e:
        logging.getLogger(role).error("refusing to start: Redis refused the credentials of SHARDGATE_REDIS_URL: %s", e)
        return 2
    return 0
