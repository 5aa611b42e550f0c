"""The credentials file: API keys, JWT verification keys and JWT rules (JSON or TOML; docs/auth.md).

```toml
[jwt]                                  # optional
issuer = "https://login.example.com/"  # checked when set
audience = "shardgate"                 # checked when set
leeway_s = 30                          # clock skew allowed on exp / nbf / iat
require_exp = true                     # tokens without `exp` are refused (default)

[[jwt_keys]]                           # several at once: a rotation overlaps old and new
kid = "2026-01"                        # optional; a token's `kid` header picks its key
alg = "HS256"                          # HS256 | RS256 | EdDSA (one algorithm per key)
secret = "at least 32 bytes ..."       # HS256: `secret` or `secret_file`
# public_key = "-----BEGIN PUBLIC KEY-----..." or public_key_file = "/path.pem"  (RS256, EdDSA)

[[api_keys]]
id = "billing-backend"                 # names the key in logs
key_sha256 = "<hex of sha256(key)>"    # or `key = "..."` (plain text, for development)
services = ["Billing/*"]               # the grant fields of `ingress.auth.grant`
scopes = ["tenant-a"]
admin = "read"
expires_at = 2027-01-01T00:00:00Z      # optional (TOML datetime or RFC 3339 string)
```

A file with a `.toml` suffix is read as TOML, anything else as JSON (same structure). Paths in
`secret_file` / `public_key_file` are relative to the credentials file. Error messages name the
entry and the field, never a value.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ingress.auth.grant import Grant, GrantError
from shardgate.envconfig import ConfigError

ALGORITHMS = ("HS256", "RS256", "EdDSA")
DEFAULT_LEEWAY_S = 30.0  # clock skew allowed on a JWT's exp / nbf / iat
MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash output
_PUBLIC_KEY_TYPES: dict[str, type[Any]] = {"RS256": RSAPublicKey, "EdDSA": Ed25519PublicKey}


class CredentialsError(ConfigError):
    """The credentials file cannot be read or has an unusable entry (the message says where)."""


@dataclass(frozen=True, slots=True)
class JwtRules:
    """What every accepted JWT must satisfy beyond its signature."""

    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = DEFAULT_LEEWAY_S
    require_exp: bool = True


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One verification key: its algorithm, optional `kid`, and the key (bytes or a public key)."""

    kid: str | None
    alg: str
    key: Any


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key entry: its grant and optional expiry (Unix seconds)."""

    grant: Grant
    expires_at_s: float | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything one credentials file says; API keys by the SHA-256 digest of the key."""

    api_keys: Mapping[bytes, ApiKey] = field(default_factory=dict)
    jwt_keys: tuple[JwtKey, ...] = ()
    jwt: JwtRules = JwtRules()


def digest(secret: str) -> bytes:
    """The SHA-256 digest API keys are looked up by."""
    return hashlib.sha256(secret.encode()).digest()


def load_credentials(path: str | Path) -> Credentials:
    """Read and check a credentials file. Raises CredentialsError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CredentialsError(f"cannot read credentials file {path}: {e.strerror}") from None
    return parse_credentials(_decode(raw, path), path.parent)


def parse_credentials(doc: Any, base_dir: Path) -> Credentials:
    """Check a decoded credentials document (`base_dir` resolves relative key files).
    Raises CredentialsError."""
    if not isinstance(doc, dict):
        raise CredentialsError("the credentials file must hold an object / table")
    unknown = sorted(set(doc) - {"jwt", "jwt_keys", "api_keys"})
    if unknown:
        raise CredentialsError(f"unknown credentials section(s): {', '.join(unknown)}")
    api_keys: dict[bytes, ApiKey] = {}
    for i, entry in enumerate(_list(doc, "api_keys")):
        key_digest, api_key = _api_key(entry, f"api_keys[{i}]")
        if key_digest in api_keys:
            raise CredentialsError(f"api_keys[{i}]: the same key is listed twice")
        api_keys[key_digest] = api_key
    jwt_keys = tuple(_jwt_key(e, f"jwt_keys[{i}]", base_dir) for i, e in enumerate(_list(doc, "jwt_keys")))
    return Credentials(api_keys, jwt_keys, _jwt_rules(doc.get("jwt", {})))


def _decode(raw: bytes, path: Path) -> Any:
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(raw.decode())
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise CredentialsError(f"credentials file {path} does not parse: {e}") from None


def _list(doc: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise CredentialsError(f"{name} must be a list of objects / tables")
    return value


def _text(entry: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str | None:
    value = entry.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"{where}: {name} must be a non-empty string")
    return value


def _api_key(entry: Mapping[str, Any], where: str) -> tuple[bytes, ApiKey]:
    key_id = _text(entry, "id", where, required=True)
    assert key_id is not None
    plain, hashed = _text(entry, "key", where), _text(entry, "key_sha256", where)
    if (plain is None) == (hashed is None):
        raise CredentialsError(f"{where}: give exactly one of key, key_sha256")
    if hashed is not None:
        try:
            key_digest = bytes.fromhex(hashed)
        except ValueError:
            raise CredentialsError(f"{where}: key_sha256 is not hex") from None
        if len(key_digest) != 32:
            raise CredentialsError(f"{where}: key_sha256 is not a SHA-256 digest (64 hex digits)")
    else:
        assert plain is not None
        key_digest = digest(plain)
    try:
        grant = Grant.from_fields(entry, key_id)
    except GrantError as e:
        raise CredentialsError(f"{where}: {e}") from None
    return key_digest, ApiKey(grant, _expiry(entry.get("expires_at"), where))


def _expiry(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise CredentialsError(f"{where}: expires_at is not an RFC 3339 date-time") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CredentialsError(f"{where}: expires_at must be a date-time with a time zone")
    return value.astimezone(UTC).timestamp()


def _jwt_key(entry: Mapping[str, Any], where: str, base_dir: Path) -> JwtKey:
    alg = entry.get("alg")
    if alg not in ALGORITHMS:
        raise CredentialsError(f"{where}: alg must be one of {', '.join(ALGORITHMS)}")
    kid = _text(entry, "kid", where)
    if alg == "HS256":
        secret = _material(entry, "secret", where, base_dir).encode()
        if len(secret) < MIN_HMAC_SECRET_BYTES:
            raise CredentialsError(f"{where}: an HS256 secret needs at least {MIN_HMAC_SECRET_BYTES} bytes")
        return JwtKey(kid, alg, secret)
    pem = _material(entry, "public_key", where, base_dir).encode()
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise CredentialsError(f"{where}: public_key is not a PEM public key") from None
    if not isinstance(key, _PUBLIC_KEY_TYPES[alg]):
        raise CredentialsError(f"{where}: public_key is not a key for {alg}")
    return JwtKey(kid, alg, key)


def _material(entry: Mapping[str, Any], name: str, where: str, base_dir: Path) -> str:
    """`name` inline or read from `<name>_file` (exactly one of them)."""
    inline, file_name = _text(entry, name, where), _text(entry, f"{name}_file", where)
    if (inline is None) == (file_name is None):
        raise CredentialsError(f"{where}: give exactly one of {name}, {name}_file")
    if inline is not None:
        return inline
    assert file_name is not None
    try:
        return (base_dir / file_name).read_text().strip()
    except OSError as e:
        raise CredentialsError(f"{where}: cannot read {name}_file {file_name}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{where}: {name}_file {file_name} is not UTF-8 text") from None


def _jwt_rules(section: Any) -> JwtRules:
    if not isinstance(section, dict):
        raise CredentialsError("jwt must be an object / table")
    leeway = section.get("leeway_s", DEFAULT_LEEWAY_S)
    require_exp = section.get("require_exp", True)
    if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or leeway < 0:
        raise CredentialsError("jwt.leeway_s must be a number >= 0")
    if not isinstance(require_exp, bool):
        raise CredentialsError("jwt.require_exp must be true or false")
    return JwtRules(_text(section, "issuer", "jwt"), _text(section, "audience", "jwt"), float(leeway), require_exp)
