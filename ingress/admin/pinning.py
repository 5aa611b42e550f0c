"""The `deployment` query parameter of `PATCH /invocations/{id}/resume` and `restart-as-new`
(Restate's `PatchDeploymentId`): `keep` the pinned deployment, pin to the service's `latest`, or to
a deployment id. Parsing and the checks Restate makes before re-pinning, with its texts:

* a value that is neither `keep`/`Keep`, `latest`/`Latest` nor a well-formed deployment id: 400
  "The query parameter 'deployment' is invalid. Reason: ..." (the id's decode error);
* a deployment id that is not registered, or `latest` of a service without a deployment: 400
  "The given deployment was not found ...";
* resume of a running invocation (invoked, or backing off: Restate's `Invoked`), or of one no
  attempt pinned yet to a deployment id: 409 (`latest` for an unpinned one changes nothing: its
  next attempt picks the latest deployment anyway);
* a deployment that does not speak the pinned protocol version: 400 naming the version and range.

As in Restate, a deployment that does not serve the invocation's service is not refused here: the
attempts sent there fail and back off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ingress.errors import BadRequest, Conflict
from shardgate.schema import SchemaSnapshot

DEPLOYMENT_PREFIX = "dp"
_OTHER_RESOURCES = frozenset({"inv", "sub", "sign", "prom", "snap"})  # Restate's other id prefixes
_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # Restate's alphabet
_UUID_CHARS = 22  # a deployment id is `dp_1` + base62(u128)
MIN_PROTOCOL_FROM_PREFIX = 6  # restart-as-new from a prefix needs protocol v6+ (partition/restart.py)


class Patch(str, Enum):
    """What to do with the pinned deployment."""

    KEEP = "keep"  # keep it (resume's default)
    LATEST = "latest"  # the service's latest deployment (restart-as-new's default)
    PIN_TO = "pin_to"  # the deployment `DeploymentPatch.deployment_id`


@dataclass(frozen=True, slots=True)
class DeploymentPatch:
    patch: Patch
    deployment_id: str = ""


def deployment_id_error(raw: str) -> str | None:
    """Why `raw` is not a deployment id (Restate's IdDecodeError texts), or None."""
    prefix, sep, rest = raw.partition("_")
    if not sep:
        return "bad format"
    if prefix != DEPLOYMENT_PREFIX:
        return "id doesn't match the expected type" if prefix in _OTHER_RESOURCES \
            else f"unrecognized resource type: {prefix}"
    if rest[:1] != "1":
        return "unrecognized codec version"
    body = rest[1:]
    if len(body) != _UUID_CHARS:
        return "bad length"
    value = 0
    for c in body:
        digit = _BASE62.find(c)
        if digit < 0:
            return "base62 decode error"
        value = value * 62 + digit
    return None if value < 1 << 128 else "base62 decode error"  # a u128


def parse_patch(raw: str | None, default: Patch) -> DeploymentPatch:
    """The `deployment` query parameter. Raises 400 `BadRequest` for a malformed one."""
    if raw is None:
        return DeploymentPatch(default)
    if raw in ("keep", "Keep"):
        return DeploymentPatch(Patch.KEEP)
    if raw in ("latest", "Latest"):
        return DeploymentPatch(Patch.LATEST)
    error = deployment_id_error(raw)
    if error is not None:
        raise BadRequest(f"The query parameter 'deployment' is invalid. Reason: {error}")
    return DeploymentPatch(Patch.PIN_TO, raw)


@dataclass(frozen=True, slots=True)
class Pin:
    """An invocation's pin as stored (`dp`, `pv` of its status hash)."""

    deployment_id: str
    protocol_version: int


def cannot_change(inv: str) -> Conflict:
    return Conflict(f"The invocation '{inv}' is still running or the deployment id is not pinned yet, "
                    "deployment id cannot be changed.")


def repin(inv: str, service: str, pin: Pin | None, patch: DeploymentPatch, snapshot: SchemaSnapshot) -> str:
    """The deployment a resume pins `inv` to ('' = leave the pin as it is). Raises 400 `BadRequest`
    (deployment not found, incompatible protocol version) or 409 `Conflict` (nothing pinned to
    change to a deployment id)."""
    if patch.patch is Patch.KEEP:
        return ""
    if pin is None:
        if patch.patch is Patch.LATEST:
            return ""
        raise cannot_change(inv)
    return _resolved(inv, service, pin, patch, snapshot, "resume")


def restart_pin(inv: str, service: str, pin: Pin | None, patch: DeploymentPatch, snapshot: SchemaSnapshot) -> str:
    """The deployment a restart-as-new of `inv` is pinned to ('' = the original's pin, or none: an
    unpinned original's restart stays unpinned, as in Restate). Raises 400 `BadRequest`."""
    if patch.patch is Patch.KEEP:
        return ""
    resolved = _resolved(inv, service, pin, patch, snapshot, "restart as new")
    return resolved if pin is not None else ""


def _resolved(inv: str, service: str, pin: Pin | None, patch: DeploymentPatch, snapshot: SchemaSnapshot,
              action: str) -> str:
    """The deployment `latest` or the id names, checked against the pinned protocol version."""
    target = patch.deployment_id
    if patch.patch is Patch.LATEST:
        meta = snapshot.services.get(service)
        target = meta.deployment_id if meta is not None else ""
    deployment = snapshot.deployments.get(target)
    if deployment is None:
        raise BadRequest(f"The given deployment was not found when trying to {action} the invocation '{inv}'.")
    low, high = deployment.min_protocol_version, deployment.max_protocol_version
    if pin is not None and not low <= pin.protocol_version <= high:
        raise BadRequest(f"The invocation '{inv}' is running on protocol version '{pin.protocol_version}', while "
                         f"the chosen deployment '{deployment.id}' supports the range {low}..={high}.")
    return deployment.id
