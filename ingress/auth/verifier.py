"""Turn an `Authorization: Bearer <credential>` header into a `Grant`, or a 401.

The credential is an API key (looked up by its SHA-256 digest) or, when it is not one and has
the three dot-separated parts of a JWT, a JWT verified with PyJWT against the file's keys of
the token's algorithm (only the keys whose `kid` equals the token's `kid` when it names one, so
a rotation can list old and new keys at once). Successful verifications are cached per
credential digest until the credential expires, in a bounded LRU; a reload of the credentials
file builds a new `Verifier`, so a removed key stops working at once. Failures are never
cached. Nothing here logs or returns a credential.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from ingress.auth.credentials import Credentials, JwtKey, digest
from ingress.auth.grant import Grant, GrantError
from ingress.errors import Unauthorized

CACHE_ENTRIES = 10_000
"""Verified credentials remembered per credentials file (least recently used dropped first)."""
REALM = "shardgate"


class AuthenticationFailed(Unauthorized):
    """A 401 with its RFC 6750 `error` code (None when no credential was sent)."""

    def __init__(self, message: str, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error

    def challenge(self) -> str:
        """The `WWW-Authenticate` value of this failure."""
        if self.error is None:
            return f'Bearer realm="{REALM}"'
        description = self.message.replace("\\", "'").replace('"', "'")  # a quoted-string (RFC 9110)
        return f'Bearer realm="{REALM}", error="{self.error}", error_description="{description}"'


MISSING = "missing credentials: send `Authorization: Bearer <API key or JWT>`"
MALFORMED = "malformed credentials: expected `Authorization: Bearer <API key or JWT>`"
EXPIRED = "credentials expired"
INVALID = "invalid credentials"


class Verifier:
    """Checks credentials against one loaded credentials file."""

    def __init__(self, credentials: Credentials, clock: Callable[[], float] = time.time,
                 cache_entries: int = CACHE_ENTRIES) -> None:
        self.credentials = credentials
        self.clock = clock
        self.cache_entries = cache_entries
        self._cache: OrderedDict[bytes, tuple[Grant, float]] = OrderedDict()  # digest -> (grant, valid until)

    def authenticate(self, authorization: str | None) -> Grant:
        """The grant of the credential in an `Authorization` header value. Raises
        AuthenticationFailed (missing, malformed, expired, unknown or wrongly signed)."""
        if authorization is None:
            raise AuthenticationFailed(MISSING, error=None)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthenticationFailed(MALFORMED, error="invalid_request")
        key = digest(token)
        now_s = self.clock()
        cached = self._cache.get(key)
        if cached is not None:
            if now_s < cached[1]:
                self._cache.move_to_end(key)
                return cached[0]
            del self._cache[key]
        grant, valid_until_s = self._verify(token, key, now_s)
        self._remember(key, grant, valid_until_s)
        return grant

    def _remember(self, key: bytes, grant: Grant, valid_until_s: float) -> None:
        self._cache[key] = (grant, valid_until_s)
        if len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)

    def _verify(self, token: str, key: bytes, now_s: float) -> tuple[Grant, float]:
        api_key = self.credentials.api_keys.get(key)
        if api_key is not None:
            expires_s = api_key.expires_at_s
            if expires_s is not None and now_s >= expires_s:
                raise AuthenticationFailed(EXPIRED)
            return api_key.grant, float("inf") if expires_s is None else expires_s
        if token.count(".") != 2:
            raise AuthenticationFailed(INVALID)
        return self._verify_jwt(token)

    def _verify_jwt(self, token: str) -> tuple[Grant, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationFailed(f"{INVALID}: not a JWT") from None
        candidates = self._keys_for(header)
        if not candidates:
            raise AuthenticationFailed(f"{INVALID}: no verification key for this token")
        claims = self._decode(token, candidates)
        subject = claims.get("sub")
        try:
            grant = Grant.from_fields(claims, subject if isinstance(subject, str) else "jwt")
        except GrantError as e:
            raise AuthenticationFailed(f"{INVALID}: claim {e}") from None
        return grant, self._valid_until_s(claims.get("exp"))

    def _valid_until_s(self, exp: Any) -> float:
        """Until when a verified token may be served from the cache: its `exp` (PyJWT also takes a
        numeric string, so every form it accepted is read); a token without one, forever.
        Raises AuthenticationFailed for an `exp` that is no number at all."""
        if exp is None:
            return float("inf")
        if isinstance(exp, bool):
            raise AuthenticationFailed(f"{INVALID}: claim exp is not a number")
        try:
            return float(exp) + self.credentials.jwt.leeway_s
        except (TypeError, ValueError):
            raise AuthenticationFailed(f"{INVALID}: claim exp is not a number") from None

    def _keys_for(self, header: Mapping[str, Any]) -> list[JwtKey]:
        """The keys a token with this header may be signed with."""
        alg, kid = header.get("alg"), header.get("kid")
        keys = [k for k in self.credentials.jwt_keys if k.alg == alg]
        if isinstance(kid, str):
            named = [k for k in keys if k.kid == kid]
            return named or [k for k in keys if k.kid is None]
        return keys

    def _decode(self, token: str, keys: list[JwtKey]) -> dict[str, Any]:
        """The claims of a token signed by one of `keys`. Raises AuthenticationFailed."""
        rules = self.credentials.jwt
        options: dict[str, Any] = {"require": ["exp"] if rules.require_exp else []}
        if rules.audience is None:
            options["verify_aud"] = False
        for key in keys:
            try:
                return dict(jwt.decode(token, key.key, algorithms=[key.alg], options=options,  # type: ignore[arg-type]
                                       audience=rules.audience, issuer=rules.issuer, leeway=rules.leeway_s))
            except jwt.InvalidSignatureError:
                continue  # another key of the overlap may have signed it
            except jwt.ExpiredSignatureError:
                raise AuthenticationFailed(EXPIRED) from None
            except jwt.InvalidTokenError as e:
                raise AuthenticationFailed(f"{INVALID}: {e}") from None
        raise AuthenticationFailed(f"{INVALID}: signature verification failed")
