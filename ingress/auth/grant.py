"""What one credential may do (pure): which services and handlers, in which scopes, and the admin API.

A grant is read from the same fields wherever it comes from, an API key's entry in the
credentials file or a JWT's claims (`Grant.from_fields`):

- `services`: patterns `Service` or `Service/*` (every handler), `Service/handler`, `*` (every
  service); a trailing `*` in either part matches a prefix (`billing.*/get*`);
- `scopes`: patterns of the scopes (`/restate/scope/{scope}/...`, a target body's `scope`) the
  credential may use, `*` for any; unscoped requests are allowed unless `require_scope` is true;
- `admin`: `false` (default), `"read"` (GET and HEAD, and `POST /query`) or `"write"` / `true`.

A target whose handler is unknown (a workflow no longer registered) needs a pattern covering the
whole service; a target the ingress cannot establish at all needs `*` with `*` scopes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class GrantError(ValueError):
    """A grant field has the wrong type or an unusable pattern (message names the field)."""


class AdminAccess(str, Enum):
    NONE = "none"  # no admin API at all
    READ = "read"  # GET / HEAD, and the read-only `POST /query`
    WRITE = "write"  # every admin route


READ_METHODS = frozenset({"GET", "HEAD"})
QUERY_PATH = re.compile(r"(/v[0-9]+)?/query/?")  # the admin API's read-only POST route


def matches(pattern: str, value: str) -> bool:
    """`*` matches anything, `prefix*` a prefix, anything else only itself."""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


@dataclass(frozen=True, slots=True)
class ServicePattern:
    """One `services` entry: a service pattern and a handler pattern (`*` = every handler)."""

    service: str
    handler: str = "*"

    @classmethod
    def parse(cls, text: str) -> ServicePattern:
        """`Service`, `Service/*`, `Service/handler` or `*`. Raises GrantError for an empty part
        or more than one `/`."""
        service, sep, handler = text.partition("/")
        if not service or (sep and not handler) or "/" in handler:
            raise GrantError(f"services entry {text!r} is not `Service`, `Service/handler` or `*`")
        return cls(service, handler or "*")

    def covers(self, service: str, handler: str | None) -> bool:
        """Whether the pattern allows `handler` of `service` (None: every handler of it)."""
        if not matches(self.service, service):
            return False
        return self.handler == "*" if handler is None else matches(self.handler, handler)


@dataclass(frozen=True, slots=True)
class Target:
    """What an ingress request reaches: service, handler (None when unknown) and scope."""

    service: str
    handler: str | None
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a credential is allowed; `subject` names it in logs (key id or JWT `sub`), never a secret."""

    subject: str
    services: tuple[ServicePattern, ...] = ()
    scopes: tuple[str, ...] = ()
    require_scope: bool = False
    admin: AdminAccess = AdminAccess.NONE

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], subject: str) -> Grant:
        """Read `services`, `scopes`, `require_scope` and `admin` (all optional). Raises GrantError."""
        services = tuple(ServicePattern.parse(p) for p in _strings(fields, "services"))
        scopes = _strings(fields, "scopes")
        require_scope = fields.get("require_scope", False)
        if not isinstance(require_scope, bool):
            raise GrantError("require_scope must be true or false")
        return cls(subject, services, scopes, require_scope, _admin(fields.get("admin", False)))

    @property
    def everything(self) -> bool:
        """Every service and handler in every scope (and unscoped)."""
        return (any(p.service == "*" and p.handler == "*" for p in self.services)
                and "*" in self.scopes and not self.require_scope)

    def allows(self, target: Target | None) -> bool:
        """Whether the grant covers `target` (None: a target that could not be established)."""
        if target is None:
            return self.everything
        if target.scope is None:
            if self.require_scope:
                return False
        elif not any(matches(p, target.scope) for p in self.scopes):
            return False
        return any(p.covers(target.service, target.handler) for p in self.services)

    def allows_admin(self, method: str, path: str) -> bool:
        """Whether the grant may send `method path` to the admin API."""
        if self.admin is AdminAccess.WRITE:
            return True
        if self.admin is AdminAccess.READ:
            return method in READ_METHODS or (method == "POST" and QUERY_PATH.fullmatch(path) is not None)
        return False


def _strings(fields: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = fields.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise GrantError(f"{name} must be a list of non-empty strings")
    return tuple(value)


def _admin(value: Any) -> AdminAccess:
    if value is True:
        return AdminAccess.WRITE
    if value is False or value is None:
        return AdminAccess.NONE
    if isinstance(value, str) and value in (AdminAccess.READ.value, AdminAccess.WRITE.value):
        return AdminAccess(value)
    raise GrantError('admin must be false, true, "read" or "write"')
