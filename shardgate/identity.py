"""Request identity (spec §11): sign every request to a deployment with an Ed25519 key.

The runtime holds one Ed25519 private key (PKCS#8 PEM). Every discovery and invocation
request carries

* ``x-restate-signature-scheme: v1``
* ``x-restate-jwt-v1: <JWT>``, a JWS compact token with header
  ``{"alg":"EdDSA","kid":<key id>,"typ":"JWT"}`` and claims
  ``{"aud": <path>, "exp": now+60, "iat": now, "nbf": now-60}`` (whole seconds).

The key id is ``publickeyv1_`` + base58 (Bitcoin alphabet) of the raw 32-byte public key;
that id is what an SDK is configured with (``restate.app(..., identity_keys=[key_id])``).
The audience is the request path *without* any mount prefix of the deployment URI, i.e.
``/invoke/{service}/{handler}`` or ``/discover``; the SDK checks it, and ``exp``/``iat``/``nbf``,
with zero leeway.

Ed25519 signatures are deterministic, so a token depends only on (key, path, iat). To keep
signing off the hot path a token is reused for the same audience for up to
``REUSE_S`` seconds of its ``EXPIRATION_LEEWAY_S`` validity, so a reused token always has at
least ``EXPIRATION_LEEWAY_S - REUSE_S`` seconds left when sent.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNATURE_SCHEME_HEADER = "x-restate-signature-scheme"
JWT_HEADER = "x-restate-jwt-v1"
SCHEME_V1 = "v1"
SCHEME_UNSIGNED = "unsigned"
KEY_ID_PREFIX = "publickeyv1_"
EXPIRATION_LEEWAY_S = 60
"""L of spec §11: ``nbf = iat - L`` and ``exp = iat + L``."""
REUSE_S = 30
"""A token for an audience is reused while it is younger than this (seconds)."""
MAX_CACHED_AUDIENCES = 4096
"""Cache bound; the cache is dropped wholesale when it would grow beyond this."""

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58_encode(data: bytes) -> str:
    """Base58 with the Bitcoin alphabet (each leading zero byte becomes a leading ``1``)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    digits: list[str] = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(_B58_ALPHABET[rem])
    return _B58_ALPHABET[0] * zeros + "".join(reversed(digits))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(obj: dict[str, object]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8"))


class RequestSigner:
    """Produces the §11 identity headers for requests to deployments.

    Thread-safe enough for use from one event loop and worker threads: the cache is a plain
    dict whose entries are replaced atomically; a race at worst signs the same token twice.
    """

    __slots__ = ("_cache", "_header_segment", "_key", "_key_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("RequestSigner needs an Ed25519 private key")
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = KEY_ID_PREFIX + base58_encode(raw)
        self._header_segment = _json_segment({"alg": "EdDSA", "typ": "JWT", "kid": self._key_id})
        self._cache: dict[str, tuple[int, dict[str, str]]] = {}

    @classmethod
    def from_pem(cls, data: bytes | str) -> RequestSigner:
        """Load an unencrypted Ed25519 private key in PKCS#8 PEM. Raises ``ValueError``."""
        if isinstance(data, str):
            data = data.encode("ascii")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PKCS#8 PEM private key: {exc}") from None
        if isinstance(key, Ed25519PrivateKey):
            return cls(key)
        # a wrong key in the configured file is a configuration error, hence ValueError
        raise ValueError(f"request identity needs an Ed25519 key, got {type(key).__name__}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RequestSigner:
        """Load the key from a PEM file (see ``from_pem``). Raises ``OSError`` / ``ValueError``."""
        data = Path(path).read_bytes()
        try:
            return cls.from_pem(data)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @property
    def key_id(self) -> str:
        """``publickeyv1_…``: the identity key an SDK deployment must be configured with."""
        return self._key_id

    def token(self, path: str, now_s: float | None = None) -> str:
        """A fresh (uncached) JWT for audience ``path`` issued at ``now_s`` (default: now)."""
        iat = int(time.time() if now_s is None else now_s)
        claims = {"aud": path, "iat": iat, "nbf": iat - EXPIRATION_LEEWAY_S, "exp": iat + EXPIRATION_LEEWAY_S}
        signing_input = self._header_segment + "." + _json_segment(claims)
        signature = self._key.sign(signing_input.encode("ascii"))
        return signing_input + "." + _b64url(signature)

    def headers(self, path: str, now_s: float | None = None) -> dict[str, str]:
        """Identity headers for a request to ``path`` (``/invoke/S/h`` or ``/discover``, no prefix).

        Returns a new dict each call (callers may mutate it). The token is reused for the same
        audience while it is less than ``REUSE_S`` seconds old.
        """
        now = int(time.time() if now_s is None else now_s)
        cached = self._cache.get(path)
        if cached is not None and 0 <= now - cached[0] < REUSE_S:
            return dict(cached[1])
        hdrs = {SIGNATURE_SCHEME_HEADER: SCHEME_V1, JWT_HEADER: self.token(path, now)}
        if len(self._cache) >= MAX_CACHED_AUDIENCES and path not in self._cache:
            self._cache.clear()
        self._cache[path] = (now, hdrs)
        return dict(hdrs)

    def __repr__(self) -> str:
        return f"RequestSigner(key_id={self._key_id!r})"
