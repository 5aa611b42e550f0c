"""Service registry: deployments and their services in Redis, plus a polled in-memory cache.

Redis layout (cluster-wide, no partition tag; ONE key, so every change is one atomic script
on a single Redis or a Redis Cluster alike):

    sg:registry   hash   field `version`          int, +1 on every change (readers poll it)
                         field `dp:<deployment>`  JSON {"deployment", "services", "manifest"}
                  owner: this module; no TTL (a field goes only with its deployment)

Writes are optimistic: read the hash at version v, compute the new records in Python, then
`CAS_SCRIPT` applies them only if the version is still v, else the writer recomputes. Each
deployment keeps its own revision of every service it registered; the active one per name is
the highest revision (Restate's `ActiveServiceRevision::create_index`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shardgate.keys import REGISTRY as REGISTRY_KEY
from shardgate.schema import (
    Deployment,
    SchemaSnapshot,
    ServiceMeta,
    ServiceType,
    deployment_from_dict,
    deployment_to_dict,
    service_from_dict,
    service_to_dict,
)

logger = logging.getLogger(__name__)

VERSION_FIELD = "version"
DEPLOYMENT_FIELD_PREFIX = "dp:"
MAX_WRITE_ATTEMPTS = 50  # optimistic retries before `RegistryBusy`
PATCHABLE = frozenset({
    "public", "idempotency_retention_ms", "journal_retention_ms", "workflow_completion_retention_ms",
    "inactivity_timeout_ms", "abort_timeout_ms",
})

# KEYS[1]=sg:registry; ARGV[1]=expected version, ARGV[2]=n, ARGV[3..2+2n]=field/value pairs to set,
# ARGV[3+2n..]=fields to delete; returns {'OK', new_version} or {'CONFLICT', current_version}
CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return {'CONFLICT', current} end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i]) end
for i = 3 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
return {'OK', redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""

_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class RegistryError(Exception):
    """Base of registry failures."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServiceNotFound(RegistryError):
    """No active service with that name."""


class ServiceTypeChanged(RegistryError):
    """A registration would change a service's type (allowed only with force/breaking)."""


class InvalidServiceChange(RegistryError):
    """A PATCH that does not apply to this service (e.g. workflow retention on a non-workflow)."""


class RegistryBusy(RegistryError):
    """Too many concurrent writers; the change was not applied and may be retried."""


class RegistryUnavailable(RegistryError):
    """Redis could not be reached or failed; nothing is known to have changed."""


@contextmanager
def _redis_errors() -> Iterator[None]:
    """Translate redis-py errors at the boundary."""
    try:
        yield
    except RedisError as exc:
        logger.warning("registry storage unavailable: %s", exc)
        raise RegistryUnavailable("registry storage unavailable, retry") from exc


def new_deployment_id(now_ms: int | None = None) -> str:
    """A fresh `dp_1` + 22 base62 chars id, ULID-shaped like Restate's (time-ordered)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & (2**48 - 1)) << 80 | secrets.randbits(80)
    value = int.from_bytes(value.to_bytes(16, "big"), "little")  # Restate's base62 byte order
    chars = []
    for _ in range(22):
        value, digit = divmod(value, 62)
        chars.append(_BASE62[digit])
    return "dp_1" + "".join(reversed(chars))


def deployment_id_error(text: str) -> str | None:
    """Why `text` is not a deployment id (Restate's wording), or None if it is well-formed."""
    prefix, _, rest = text.partition("_")
    if prefix != "dp":
        return f"unrecognized resource type: {prefix}"
    if len(rest) != 23:
        return "bad length"
    if rest[0] != "1":
        return "unrecognized codec version"
    if any(c not in _BASE62 for c in rest):
        return "base62 decode error"
    return None


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """One deployment with its own revision of each service, and the raw manifest services."""

    deployment: Deployment
    services: dict[str, ServiceMeta]
    manifest: dict[str, Any] | None = None

    def encode(self) -> str:
        return json.dumps({
            "format": 1,
            "deployment": deployment_to_dict(self.deployment),
            "services": [service_to_dict(s) for s in self.services.values()],
            "manifest": self.manifest,
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> DeploymentRecord:
        d = json.loads(text)
        services = (service_from_dict(s) for s in d["services"])
        return cls(deployment_from_dict(d["deployment"]), {s.name: s for s in services}, d.get("manifest"))

    def explicit_public(self, service: str, handler: str) -> bool | None:
        """The handler's own `ingressPrivate` from the manifest, inverted; None when unset."""
        for svc in (self.manifest or {}).get("services", []):
            if svc.get("name") == service:
                for h in svc.get("handlers", []):
                    if h.get("name") == handler and isinstance(h.get("ingressPrivate"), bool):
                        return not h["ingressPrivate"]
        return None


@dataclass(frozen=True, slots=True)
class RegistryState:
    """Every deployment record at one version, and the derived `SchemaSnapshot`."""

    version: int
    records: dict[str, DeploymentRecord]
    snapshot: SchemaSnapshot = field(compare=False)

    @classmethod
    def of(cls, version: int, records: dict[str, DeploymentRecord]) -> RegistryState:
        ordered = sorted(records.values(), key=lambda r: (r.deployment.created_at_ms, r.deployment.id))
        active: dict[str, ServiceMeta] = {}
        for record in ordered:
            for svc in record.services.values():
                if svc.name not in active or active[svc.name].revision <= svc.revision:
                    active[svc.name] = svc
        snapshot = SchemaSnapshot(
            version=version,
            services={name: active[name] for name in sorted(active)},
            deployments={r.deployment.id: r.deployment for r in ordered},
        )
        return cls(version, {r.deployment.id: r for r in ordered}, snapshot)

    @classmethod
    def empty(cls) -> RegistryState:
        return cls.of(0, {})

    def find_by_uri(self, uri: str) -> DeploymentRecord | None:
        """The latest-created deployment registered at `uri`."""
        found = [r for r in self.records.values() if r.deployment.uri == uri]
        return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class Registration:
    """Outcome of `RegistryStore.register`."""

    created: bool  # a new deployment (answer 201); False: an existing one (200)
    outcome: str  # "created" | "overwritten" | "unchanged"
    deployment: Deployment
    services: list[ServiceMeta]  # this deployment's revision of each of its services
    state: RegistryState  # the registry right after the change (or as it would be, dry run)

    @property
    def snapshot(self) -> SchemaSnapshot:
        return self.state.snapshot


class RegistryStore:
    """Reads and atomically changes the registry hash in Redis."""

    def __init__(self, redis: Redis, *, key: str = REGISTRY_KEY, clock_ms: Callable[[], int] | None = None) -> None:
        self._redis = redis
        self._key = key
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._cas = redis.register_script(CAS_SCRIPT)

    @property
    def redis(self) -> Redis:
        """The client this store reads and writes with (the admin API's other stores share it)."""
        return self._redis

    async def version(self) -> int:
        """Current registry version (0 when empty). Raises `RegistryUnavailable`."""
        with _redis_errors():
            raw = await self._redis.hget(self._key, VERSION_FIELD)
        return int(raw or 0)

    async def load_state(self) -> RegistryState:
        """Every deployment record, read in one HGETALL. Raises `RegistryUnavailable`."""
        with _redis_errors():
            raw: dict[Any, Any] = await self._redis.hgetall(self._key)
        version, records = 0, {}
        for f, value in raw.items():
            name = f.decode() if isinstance(f, bytes) else f
            if name == VERSION_FIELD:
                version = int(value)
            elif name.startswith(DEPLOYMENT_FIELD_PREFIX):
                try:
                    record = DeploymentRecord.decode(value)
                except (ValueError, KeyError, TypeError) as exc:
                    logger.error("skipping undecodable registry field %s: %s", name, exc)
                    continue
                records[record.deployment.id] = record
        return RegistryState.of(version, records)

    async def load(self) -> SchemaSnapshot:
        """The current `SchemaSnapshot`. Raises `RegistryUnavailable`."""
        return (await self.load_state()).snapshot

    async def _apply(self, expected: int, records: list[DeploymentRecord], deletes: list[str]) -> int | None:
        """Write `records` and delete `deletes` (deployment ids) if still at `expected`; new version or None."""
        args: list[Any] = [expected, len(records)]
        for r in records:
            args += [DEPLOYMENT_FIELD_PREFIX + r.deployment.id, r.encode()]
        args += [DEPLOYMENT_FIELD_PREFIX + d for d in deletes]
        with _redis_errors():
            code, version = await self._cas(keys=[self._key], args=args)
        code = code.decode() if isinstance(code, bytes) else code
        return int(version) if code == "OK" else None

    async def register(
        self,
        deployment: Deployment,
        services: list[ServiceMeta],
        force: bool = False,
        *,
        breaking: bool = False,
        dry_run: bool = False,
        manifest: dict[str, Any] | None = None,
    ) -> Registration:
        """Register `deployment` (matched to an existing one by uri) with its discovered `services`.

        An existing uri without `force` is left unchanged. Otherwise every service gets the
        active revision + 1 and this deployment's id; `deployment.created_at_ms` is stamped now.
        Raises `ServiceTypeChanged` (without force/breaking), `RegistryBusy`, `RegistryUnavailable`.
        """
        for _ in range(MAX_WRITE_ATTEMPTS):
            state = await self.load_state()
            existing = state.find_by_uri(deployment.uri)
            if existing is not None and not force:
                return Registration(False, "unchanged", existing.deployment, list(existing.services.values()), state)
            dep_id = existing.deployment.id if existing else deployment.id
            stamped: dict[str, ServiceMeta] = {}
            for svc in services:
                prev = state.snapshot.services.get(svc.name)
                if prev is not None and prev.ty is not svc.ty and not (force or breaking):
                    raise ServiceTypeChanged(
                        f"detected a new service revision for '{svc.name}' changing the service type from "
                        "previous revision. Service type cannot be changed across revisions."
                    )
                stamped[svc.name] = replace(svc, deployment_id=dep_id, revision=prev.revision + 1 if prev else 1)
            dep = replace(deployment, id=dep_id, services=tuple(stamped), created_at_ms=self._clock_ms())
            record = DeploymentRecord(dep, stamped, manifest)
            outcome = "overwritten" if existing else "created"
            if dry_run:
                new_state = RegistryState.of(state.version, {**state.records, dep_id: record})
            else:
                version = await self._apply(state.version, [record], [])
                if version is None:
                    continue
                new_state = RegistryState.of(version, {**state.records, dep_id: record})
                logger.info("registry v%d: deployment %s %s at %s", version, dep_id, outcome, dep.uri)
            return Registration(existing is None, outcome, dep, list(stamped.values()), new_state)
        raise RegistryBusy("too many concurrent registry changes, try again")

    async def patch_service(self, name: str, **changes: Any) -> tuple[ServiceMeta, RegistryState]:
        """Change settings of the active revision of service `name` (keys in `PATCHABLE`; None = keep).

        `public` also applies to handlers that do not set `ingressPrivate` themselves.
        Raises `ServiceNotFound`, `InvalidServiceChange`, `RegistryBusy`, `RegistryUnavailable`.
        """
        unknown = set(changes) - PATCHABLE
        if unknown:
            raise InvalidServiceChange(f"cannot patch {sorted(unknown)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        for _ in range(MAX_WRITE_ATTEMPTS):
            state = await self.load_state()
            svc = state.snapshot.services.get(name)
            if svc is None:
                raise ServiceNotFound(f"not found in the schema registry: service with name '{name}'")
            if "workflow_completion_retention_ms" in changes and svc.ty is not ServiceType.WORKFLOW:
                raise InvalidServiceChange(f"modifying retention time for service type {svc.ty.value} is unsupported")
            if not changes:
                return svc, state
            record = state.records[svc.deployment_id]
            new_svc = replace(svc, **changes)
            if "public" in changes:
                handlers = {}
                for h in svc.handlers.values():
                    own = record.explicit_public(name, h.name)
                    handlers[h.name] = replace(h, public=changes["public"] if own is None else own)
                new_svc = replace(new_svc, handlers=handlers)
            new_record = replace(record, services={**record.services, name: new_svc})
            version = await self._apply(state.version, [new_record], [])
            if version is not None:
                logger.info("registry v%d: service %s patched %s", version, name, sorted(changes))
                return new_svc, RegistryState.of(version, {**state.records, record.deployment.id: new_record})
        raise RegistryBusy("too many concurrent registry changes, try again")

    async def remove_deployment(self, deployment_id: str) -> RegistryState | None:
        """Forget a deployment (its services fall back to older revisions elsewhere); None if unknown.

        Raises `RegistryBusy`, `RegistryUnavailable`.
        """
        for _ in range(MAX_WRITE_ATTEMPTS):
            state = await self.load_state()
            if deployment_id not in state.records:
                return None
            version = await self._apply(state.version, [], [deployment_id])
            if version is not None:
                logger.info("registry v%d: deployment %s removed", version, deployment_id)
                return RegistryState.of(version, {k: v for k, v in state.records.items() if k != deployment_id})
        raise RegistryBusy("too many concurrent registry changes, try again")


class RegistryCache:
    """The registry as this process sees it: an in-memory snapshot kept fresh by polling.

    `current()` is a plain attribute read (hot path). `run()` polls the version every
    `poll_interval_s` and reloads on change, so a registration is visible everywhere within
    about one interval plus one HGETALL.
    """

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self._state = RegistryState.empty()
        self._snapshot = self._state.snapshot

    def current(self) -> SchemaSnapshot:
        """The latest known snapshot (never blocks)."""
        return self._snapshot

    def state(self) -> RegistryState:
        """The latest known full state (per-deployment revisions, for the admin API)."""
        return self._state

    def install(self, state: RegistryState) -> None:
        """Adopt `state` if it is newer than the current one (e.g. right after our own write)."""
        if state.version > self._state.version:
            self._state, self._snapshot = state, state.snapshot

    async def refresh(self) -> SchemaSnapshot:
        """Reload from Redis now, whatever the version. Raises `RegistryUnavailable`."""
        state = await self._store.load_state()
        if state.version != self._state.version:
            logger.info("registry reloaded at v%d (%d services)", state.version, len(state.snapshot.services))
        self._state, self._snapshot = state, state.snapshot
        return self._snapshot

    async def run(self, poll_interval_s: float = 0.25) -> None:
        """Poll forever (cancel to stop); Redis outages are logged once and the old snapshot kept."""
        loaded, failing = False, False
        while True:
            try:
                if not loaded or await self._store.version() != self._state.version:
                    await self.refresh()
                    loaded = True
                if failing:
                    logger.info("registry storage reachable again")
                    failing = False
            except RegistryUnavailable as exc:
                if not failing:
                    logger.warning("registry poll failed, keeping v%d: %s", self._state.version, exc.message)
                    failing = True
            except Exception:  # a bug must not stop the poller; CancelledError is not an Exception
                logger.exception("registry poll crashed, keeping v%d", self._state.version)
            await asyncio.sleep(poll_interval_s)
