"""Authentication and authorisation of the ingress API and the admin API (off unless configured).

Modules: `grant` (what a credential may do, pure), `credentials` (the credentials file),
`verifier` (API key / JWT -> grant, with a bounded cache), `store` (the file, re-read when it
changes), `targets` (the service / handler / scope a request reaches) and `middleware` (the two
aiohttp guards). docs/auth.md describes the file format and production use.
"""

from __future__ import annotations

from ingress.auth.credentials import CredentialsError
from ingress.auth.grant import AdminAccess, Grant, Target
from ingress.auth.middleware import admin_auth_middleware, ingress_auth_middleware
from ingress.auth.store import CredentialStore
from ingress.auth.targets import TargetResolver
from ingress.auth.verifier import AuthenticationFailed, Verifier

__all__ = [
    "AdminAccess", "AuthenticationFailed", "CredentialStore", "CredentialsError", "Grant", "Target",
    "TargetResolver", "Verifier", "admin_auth_middleware", "ingress_auth_middleware",
]
