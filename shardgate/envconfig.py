"""Typed reads of `SHARDGATE_*` environment variables for the per-process config dataclasses.

Only the `from_env` constructors of `ingress.config` and `partition.config` call these; a bad
value fails at start-up naming the variable and the value.
"""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A configuration variable has a value that cannot be used."""


PREFIX = "SHARDGATE_"


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(PREFIX + name, default)


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{PREFIX}{name}={raw!r} must be >= {minimum}")
    return value


def env_opt_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return None
    return env_int(env, name, 0, minimum=1)


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{PREFIX}{name}={raw!r} must not be negative")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name}={raw!r} is not a boolean (true/false)")


def mask_url(url: str) -> str:
    """Hide a password in a redis://user:pass@host URL for logs and reprs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
