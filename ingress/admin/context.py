"""What every admin route handler shares: settings, the registry store and cache, the HTTP client.

Handlers reach it as `request.app[ADMIN]`. Reads go to Redis (one HGETALL) so they see every
write, also other nodes'; every state read or written is installed in the local cache at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from shardgate.identity import RequestSigner
from shardgate.registry import RegistryCache, RegistryState, RegistryStore
from shardgate.schema import RESTATE_DEFAULTS, SettingDefaults

API_VERSIONS = (2, 3, 4)  # served under /v2 .. /v4; unprefixed paths behave as the newest


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """What the admin API needs besides the registry; defaults are Restate 1.7's."""

    advertised_ingress_url: str  # shown by GET /version (and later in OpenAPI documents)
    discovery_timeout_s: float = 10.0  # whole discovery, retries included, then 500 META0003
    server_version: str = "1.7.12"  # `version` of GET /version (the Restate release we mirror)
    defaults: SettingDefaults = RESTATE_DEFAULTS  # shown where neither service nor handler sets a value
    signer: RequestSigner | None = None  # request identity for discovery; None = unsigned


@dataclass(frozen=True, slots=True)
class AdminContext:
    """The admin API's resources; `http` is used for discovery only."""

    store: RegistryStore
    cache: RegistryCache
    http: aiohttp.ClientSession
    settings: AdminSettings

    async def state(self) -> RegistryState:
        """The registry as stored now (installed in the cache too).

        Raises `shardgate.registry.RegistryUnavailable` when Redis fails.
        """
        state = await self.store.load_state()
        self.cache.install(state)
        return state

    def install(self, state: RegistryState) -> None:
        """Make our own write visible to this node's ingress at once."""
        self.cache.install(state)


ADMIN = web.AppKey("shardgate_admin", AdminContext)

