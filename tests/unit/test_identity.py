"""RequestSigner (spec §11): key id, JWT layout and claims, signature, token reuse."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shardgate.identity import (
    EXPIRATION_LEEWAY_S,
    JWT_HEADER,
    REUSE_S,
    SIGNATURE_SCHEME_HEADER,
    RequestSigner,
    base58_encode,
)
from tests.testdata import vector_path

VECTOR = json.loads(vector_path("k_request_identity.json").read_text())
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b64url_decode(segment: str) -> bytes:
    assert "=" not in segment
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b58_decode(text: str) -> bytes:
    n = 0
    for ch in text:
        n = n * 58 + _B58.index(ch)
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _split(token: str) -> tuple[dict, dict, bytes, bytes]:
    head, claims, sig = token.split(".")
    return (json.loads(_b64url_decode(head)), json.loads(_b64url_decode(claims)), _b64url_decode(sig),
            f"{head}.{claims}".encode())


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_from_key_id(key_id: str) -> Ed25519PublicKey:
    assert key_id.startswith("publickeyv1_")
    raw = _b58_decode(key_id.removeprefix("publickeyv1_"))
    assert len(raw) == 32
    return Ed25519PublicKey.from_public_bytes(raw)


def test_key_id_of_vector_key() -> None:
    signer = RequestSigner.from_pem(VECTOR["private_key_pem_pkcs8"].encode())
    assert signer.key_id == VECTOR["identity_key"]


def test_from_pem_accepts_str_and_from_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(VECTOR["private_key_pem_pkcs8"])
    assert RequestSigner.from_file(path).key_id == VECTOR["identity_key"]
    assert RequestSigner.from_file(str(path)).key_id == VECTOR["identity_key"]
    assert RequestSigner.from_pem(VECTOR["private_key_pem_pkcs8"]).key_id == VECTOR["identity_key"]


def test_fresh_key_id_is_base58_of_raw_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signer = RequestSigner.from_pem(_pem(key))
    assert signer.key_id == "publickeyv1_" + base58_encode(raw)
    assert _b58_decode(signer.key_id.removeprefix("publickeyv1_")) == raw


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"\0", "1"),
        (b"\0\0\x01", "112"),
        (b"\x39", "z"),
        (b"\x3a", "21"),
        (b"hello world", "StV1DL6CwTryKyV"),
        (bytes.fromhex("00eb15231dfceb60925886b67d065299925915aeb172c06647"), "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L"),
    ],
)
def test_base58_known_answers(data: bytes, expected: str) -> None:
    assert base58_encode(data) == expected
    assert _b58_decode(expected) == data


def test_headers_structure_claims_and_signature() -> None:
    key = Ed25519PrivateKey.generate()
    signer = RequestSigner.from_pem(_pem(key))
    now = 1_800_000_000.75
    hdrs = signer.headers("/invoke/Greeter/greet", now_s=now)
    assert set(hdrs) == {SIGNATURE_SCHEME_HEADER, JWT_HEADER}
    assert hdrs[SIGNATURE_SCHEME_HEADER] == "v1"
    header, claims, sig, signing_input = _split(hdrs[JWT_HEADER])
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": signer.key_id}
    assert claims == {"aud": "/invoke/Greeter/greet", "iat": 1_800_000_000,
                      "nbf": 1_800_000_000 - EXPIRATION_LEEWAY_S, "exp": 1_800_000_000 + EXPIRATION_LEEWAY_S}
    assert all(isinstance(claims[c], int) for c in ("iat", "nbf", "exp"))
    assert len(sig) == 64
    key.public_key().verify(sig, signing_input)
    _public_from_key_id(signer.key_id).verify(sig, signing_input)  # the kid alone suffices to verify
    with pytest.raises(InvalidSignature):
        Ed25519PrivateKey.generate().public_key().verify(sig, signing_input)
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig, signing_input.replace(b".", b".x", 1))


def test_reproduces_vector_token_exactly() -> None:
    """Ed25519 is deterministic: same key, aud and iat give the recorded token byte for byte."""
    token = VECTOR["example_headers"][JWT_HEADER]
    _, claims, _, _ = _split(token)
    signer = RequestSigner.from_pem(VECTOR["private_key_pem_pkcs8"].encode())
    assert signer.token(claims["aud"], now_s=claims["iat"]) == token
    assert signer.headers(claims["aud"], now_s=claims["iat"]) == VECTOR["example_headers"]


def test_discover_audience() -> None:
    signer = RequestSigner(Ed25519PrivateKey.generate())
    _, claims, _, _ = _split(signer.headers("/discover", now_s=1000)[JWT_HEADER])
    assert claims["aud"] == "/discover"


def test_token_reuse_window() -> None:
    signer = RequestSigner(Ed25519PrivateKey.generate())
    first = signer.headers("/invoke/A/b", now_s=1000)
    assert signer.headers("/invoke/A/b", now_s=1000 + REUSE_S - 0.5) == first
    assert signer.headers("/invoke/A/c", now_s=1000) != first  # per audience
    renewed = signer.headers("/invoke/A/b", now_s=1000 + REUSE_S)
    assert renewed != first
    assert _split(renewed[JWT_HEADER])[1]["iat"] == 1000 + REUSE_S
    # a clock that stepped back never reuses a token issued "in the future"
    back = signer.headers("/invoke/A/b", now_s=990)
    assert _split(back[JWT_HEADER])[1]["iat"] == 990
    # callers get their own dict
    back["x"] = "y"
    assert "x" not in signer.headers("/invoke/A/b", now_s=990)


def test_default_clock_is_now() -> None:
    import time

    signer = RequestSigner(Ed25519PrivateKey.generate())
    before = int(time.time())
    _, claims, _, _ = _split(signer.headers("/invoke/A/b")[JWT_HEADER])
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == EXPIRATION_LEEWAY_S


def test_rejects_non_ed25519_and_garbage(tmp_path: Path) -> None:
    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="Ed25519"):
        RequestSigner.from_pem(ec_pem)
    with pytest.raises(ValueError):
        RequestSigner.from_pem(b"not a pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pem"):
        RequestSigner.from_file(bad)
    with pytest.raises(OSError):
        RequestSigner.from_file(tmp_path / "missing.pem")
    with pytest.raises(TypeError):
        RequestSigner(generate_private_key(SECP256R1()))  # type: ignore[arg-type]
