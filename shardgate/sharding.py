"""Invocation ids and partition keys, derived exactly as Restate derives them.

PURE module: no I/O, no Redis, no asyncio. The ingress imports it to route requests and to answer
``/restate/lookup``; the partition worker imports it to decode ids. Everything here must stay
bit-for-bit compatible with Restate 1.7 (spec ``ingress-api.md`` sections 12 and 15), because ids
are user-visible and deterministic ids must match what a Restate server would return.

Partition key (u64) -- xxh3-64, seed 0, over the bytes Rust's ``Hash`` feeds the hasher:

* a string contributes its UTF-8 bytes followed by one ``0xFF`` byte;
* a u64 contributes its 8 little-endian bytes;
* a tuple contributes its fields in order.

Which value is hashed:

1. scoped invocation: ``hash(scope)`` (every invocation of a scope shares one partition key);
2. virtual object / workflow: ``hash(key)`` (the service name is not part of it);
3. unkeyed service: ``bucket = hash(idempotency_key) % 512`` (random bucket without a key), then
   ``xxh3_64(utf8(service) + b"\\xff" + b"unscoped/service\\xff" + bucket.to_bytes(8, "little"))``.

Uuid part (u128) -- first 16 bytes, big-endian, of SHA-256 over UTF-8 fields joined by ``b","``:

* workflow run: ``"wf" [, scope], service, key``;
* idempotent request: ``"ik" [, scope], service [, key], handler, idempotency_key`` -- the object
  key *is* included for keyed targets;
* anything else: a fresh ULID (48-bit millisecond timestamp, 80 random bits).

These rules reproduce the three vectors recorded from Restate 1.7.12 (spec section 15; asserted in
``tests/unit/test_sharding.py``) with no variation needed.

String form: ``"inv_1"`` + base62(partition key, 11 chars) + base62(uuid, 22 chars) = 38 chars, alphabet
``0-9a-zA-Z``, left-padded with ``0``. Byte-order quirk inherited from Restate: the number that is
base62-encoded is the value's big-endian bytes read back as little-endian (a byte swap). The binary
form is 8-byte big-endian partition key followed by the 16-byte big-endian uuid.

Partitions: partition ``i`` of ``N`` owns ``[ceil(i * 2**64 / N), ceil((i + 1) * 2**64 / N) - 1]``,
so ``partition_of(pk, N) == (pk * N) >> 64``. The partition count is fixed at deploy time: changing it
moves keys between partitions and breaks idempotency dedup and virtual-object state placement.
``PARTITION_KEY_BUCKETS`` must likewise never change, since it is baked into deterministic
service-level partition keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import random
import time
from dataclasses import dataclass

import xxhash

__all__ = [
    "AWAKEABLE_PREFIX",
    "INVOCATION_ID_PREFIX",
    "PARTITION_KEY_BUCKETS",
    "AwakeableIdError",
    "InvocationId",
    "InvocationIdError",
    "awakeable_id",
    "child_invocation_id",
    "hash_str",
    "idempotent_invocation_id",
    "new_invocation_id",
    "parse_awakeable_id",
    "partition_key_for_key",
    "partition_key_for_service",
    "partition_of",
    "partition_range",
    "workflow_invocation_id",
]

# Per-service buckets for unkeyed services (Restate's controlled-idempotent-sharding). Part of the
# id derivation: changing it changes every deterministic service-level partition key.
PARTITION_KEY_BUCKETS: int = 512
INVOCATION_ID_PREFIX = "inv_1"

_U64_MAX = (1 << 64) - 1
_U128_LIMIT = 1 << 128
_U64_LIMIT = 1 << 64

_RESOURCE_PREFIX = "inv_"
_VERSION_CHAR = "1"
_PK_CHARS = 11  # base62 width of a u64 (62**11 > 2**64)
_UUID_CHARS = 22  # base62 width of a u128 (62**22 > 2**128)
_PK_START = len(INVOCATION_ID_PREFIX)
_UUID_START = _PK_START + _PK_CHARS
_ID_LEN = _UUID_START + _UUID_CHARS  # 38
_BYTES_LEN = 24

_STR_TERMINATOR = b"\xff"
_FIELD_SEPARATOR = b","
_WORKFLOW_TAG = b"wf"
_IDEMPOTENCY_TAG = b"ik"

# ---- base62 tables (digits, then lower case, then upper case) -------------------------------------

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PAIR_BASE = 62 * 62
# Two characters per divmod halves the number of big-int operations on the hot path.
_PAIRS: tuple[str, ...] = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_INVALID_DIGIT = 0xFF


def _digit_table() -> bytes:
    table = bytearray([_INVALID_DIGIT]) * 256
    for value, char in enumerate(_ALPHABET):
        table[ord(char)] = value
    return bytes(table)


# bytes.translate table: ASCII char -> digit value, everything else (incl. UTF-8 bytes) -> 0xFF.
_DIGIT_VALUE = _digit_table()

# Precomputed hash-input suffix per bucket: b"unscoped/service\xff" + bucket as u64 little-endian.
_BUCKET_SUFFIXES: tuple[bytes, ...] = tuple(
    b"unscoped/service" + _STR_TERMINATOR + bucket.to_bytes(8, "little")
    for bucket in range(PARTITION_KEY_BUCKETS)
)

_xxh3_64 = xxhash.xxh3_64_intdigest
_sha256 = hashlib.sha256


class InvocationIdError(ValueError):
    """An invocation id (string or bytes) could not be decoded.

    ``reason`` (also ``str(error)``) is one of Restate's messages: ``'bad format'``, ``'bad length'``,
    ``'base62 decode error'``, ``'unrecognized codec version'``. The HTTP layer renders it as
    ``bad invocation id '<id>': <reason>``.
    """

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


_BAD_FORMAT = "bad format"
_BAD_LENGTH = "bad length"
_CODEC = "base62 decode error"
_VERSION = "unrecognized codec version"


# ---- partition keys -------------------------------------------------------------------------------


def hash_str(s: str) -> int:
    """Return Restate's hash of one string: xxh3-64 (seed 0) of ``utf8(s) + b"\\xff"``."""
    return _xxh3_64(s.encode() + _STR_TERMINATOR)


def partition_key_for_key(key: str) -> int:
    """Return the partition key of a virtual object / workflow key, or of a scope."""
    return _xxh3_64(key.encode() + _STR_TERMINATOR)


def partition_key_for_service(service: str, idempotency_key: str | None) -> int:
    """Return the partition key of an invocation to an unkeyed service.

    The service is spread over ``PARTITION_KEY_BUCKETS`` buckets: ``hash(idempotency_key) % 512``
    when a key is given (deterministic), otherwise a random bucket. The key is
    ``hash((service, "unscoped/service", bucket))``.
    """
    if idempotency_key is not None:
        bucket = hash_str(idempotency_key) % PARTITION_KEY_BUCKETS
    else:
        bucket = random.randrange(PARTITION_KEY_BUCKETS)
    return _xxh3_64(service.encode() + _STR_TERMINATOR + _BUCKET_SUFFIXES[bucket])


def partition_of(partition_key: int, partitions: int) -> int:
    """Return the index of the partition (out of ``partitions``) that owns ``partition_key``.

    Equivalent to finding ``i`` with ``partition_range(i, partitions)`` containing the key.
    Raises ``ValueError`` if the key is not a u64 or ``partitions < 1``.
    """
    if not 0 <= partition_key <= _U64_MAX:
        raise ValueError(f"partition key out of u64 range: {partition_key}")
    if partitions < 1:
        raise ValueError(f"partition count must be >= 1: {partitions}")
    # ceil(i * 2^64 / N) <= pk  <=>  i * 2^64 <= pk * N  <=>  i <= floor(pk * N / 2^64)
    return (partition_key * partitions) >> 64


def partition_range(partition: int, partitions: int) -> tuple[int, int]:
    """Return the inclusive partition-key range ``(start, end)`` owned by ``partition``.

    Partition ``i`` of ``N`` covers ``[ceil(i * 2^64 / N), ceil((i + 1) * 2^64 / N) - 1]``.
    Raises ``ValueError`` unless ``0 <= partition < partitions``.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} out of range for {partitions} partitions")
    start = -((-partition << 64) // partitions)
    end = -((-(partition + 1) << 64) // partitions) - 1
    return start, end


# ---- base62 ---------------------------------------------------------------------------------------


def _swap64(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "big"), "little")


def _swap128(value: int) -> int:
    return int.from_bytes(value.to_bytes(16, "big"), "little")


def _encode_u64(value: int) -> str:
    """Fixed-width (11 chars) base62 of a u64; unrolled because it runs for every id."""
    value, r5 = divmod(value, _PAIR_BASE)
    value, r4 = divmod(value, _PAIR_BASE)
    value, r3 = divmod(value, _PAIR_BASE)
    value, r2 = divmod(value, _PAIR_BASE)
    value, r1 = divmod(value, _PAIR_BASE)
    # value < 62 here because 2**64 / 62**10 < 22.
    return _ALPHABET[value] + _PAIRS[r1] + _PAIRS[r2] + _PAIRS[r3] + _PAIRS[r4] + _PAIRS[r5]


def _encode_u128(value: int) -> str:
    """Fixed-width (22 chars) base62 of a u128; unrolled because it runs for every id."""
    pairs = _PAIRS
    value, r10 = divmod(value, _PAIR_BASE)
    value, r9 = divmod(value, _PAIR_BASE)
    value, r8 = divmod(value, _PAIR_BASE)
    value, r7 = divmod(value, _PAIR_BASE)
    value, r6 = divmod(value, _PAIR_BASE)
    value, r5 = divmod(value, _PAIR_BASE)
    value, r4 = divmod(value, _PAIR_BASE)
    value, r3 = divmod(value, _PAIR_BASE)
    value, r2 = divmod(value, _PAIR_BASE)
    value, r1 = divmod(value, _PAIR_BASE)
    # value < 3844 here because 62**22 > 2**128.
    return "".join(
        (
            pairs[value],
            pairs[r1],
            pairs[r2],
            pairs[r3],
            pairs[r4],
            pairs[r5],
            pairs[r6],
            pairs[r7],
            pairs[r8],
            pairs[r9],
            pairs[r10],
        )
    )


# ---- invocation id --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvocationId:
    """Restate invocation id: the owning partition key (u64) plus a uuid (u128)."""

    partition_key: int
    uuid: int

    def __post_init__(self) -> None:
        if not (0 <= self.partition_key <= _U64_MAX and 0 <= self.uuid < _U128_LIMIT):
            raise ValueError(f"invocation id fields out of range: {self.partition_key}, {self.uuid}")

    def __str__(self) -> str:
        """Return the 38-char ``inv_1...`` form."""
        return (
            INVOCATION_ID_PREFIX
            + _encode_u64(_swap64(self.partition_key))
            + _encode_u128(_swap128(self.uuid))
        )

    def to_bytes(self) -> bytes:
        """Return the 24-byte binary form: big-endian partition key, then big-endian uuid."""
        return self.partition_key.to_bytes(8, "big") + self.uuid.to_bytes(16, "big")

    @classmethod
    def parse(cls, s: str) -> InvocationId:
        """Decode the string form.

        Checks, in order: ``inv_`` prefix (``'bad format'``), version char ``1``
        (``'unrecognized codec version'``; a missing one is ``'bad length'``), total length of 38
        UTF-8 bytes (``'bad length'``), base62 digits and value range (``'base62 decode error'``).
        Raises ``InvocationIdError``.
        """
        if not s.startswith(_RESOURCE_PREFIX):
            raise InvocationIdError(_BAD_FORMAT)
        if len(s) == len(_RESOURCE_PREFIX):
            raise InvocationIdError(_BAD_LENGTH)
        if s[len(_RESOURCE_PREFIX)] != _VERSION_CHAR:
            raise InvocationIdError(_VERSION)
        # Restate measures length in UTF-8 bytes; for ASCII input that is the char count. A lone
        # surrogate (no Rust string holds one) counts as its 3 bytes and is no base62 digit.
        raw = s.encode() if s.isascii() else s.encode("utf-8", "surrogatepass")
        if len(raw) != _ID_LEN:
            raise InvocationIdError(_BAD_LENGTH)
        digits = raw.translate(_DIGIT_VALUE)
        if digits.find(_INVALID_DIGIT, _PK_START) != -1:
            raise InvocationIdError(_CODEC)
        pk = 0
        for digit in digits[_PK_START:_UUID_START]:
            pk = pk * 62 + digit
        uuid = 0
        for digit in digits[_UUID_START:]:
            uuid = uuid * 62 + digit
        if pk >= _U64_LIMIT or uuid >= _U128_LIMIT:
            raise InvocationIdError(_CODEC)
        return cls(_swap64(pk), _swap128(uuid))

    @classmethod
    def from_bytes(cls, b: bytes) -> InvocationId:
        """Decode the 24-byte binary form; raises ``InvocationIdError('bad length')``."""
        if len(b) != _BYTES_LEN:
            raise InvocationIdError(_BAD_LENGTH)
        return cls(int.from_bytes(b[:8], "big"), int.from_bytes(b[8:], "big"))


def new_invocation_id(partition_key: int) -> InvocationId:
    """Return a fresh id for ``partition_key`` whose uuid is a new ULID.

    ULID layout: 48-bit Unix time in milliseconds, then 80 bits from the OS CSPRNG.
    """
    ulid = ((time.time_ns() // 1_000_000) << 80) | int.from_bytes(os.urandom(10), "big")
    return InvocationId(partition_key, ulid)


def _uuid_of(*fields: bytes) -> int:
    return int.from_bytes(_sha256(_FIELD_SEPARATOR.join(fields)).digest()[:16], "big")


def workflow_invocation_id(service: str, key: str, scope: str | None = None) -> InvocationId:
    """Return the deterministic id of workflow ``service``'s run for ``key`` (optionally scoped)."""
    if scope:
        return InvocationId(
            partition_key_for_key(scope),
            _uuid_of(_WORKFLOW_TAG, scope.encode(), service.encode(), key.encode()),
        )
    return InvocationId(partition_key_for_key(key), _uuid_of(_WORKFLOW_TAG, service.encode(), key.encode()))


def idempotent_invocation_id(
    service: str,
    key: str | None,
    handler: str,
    idempotency_key: str,
    scope: str | None = None,
) -> InvocationId:
    """Return the deterministic id of an idempotent request.

    ``key`` is the object/workflow key for keyed services and ``None`` for plain services (an empty
    string is a valid object key). The partition key comes from the scope if given, else the object
    key, else the service's idempotency bucket.
    """
    fields = [_IDEMPOTENCY_TAG]
    if scope:
        fields.append(scope.encode())
    fields.append(service.encode())
    if key is not None:
        fields.append(key.encode())
    fields.append(handler.encode())
    fields.append(idempotency_key.encode())
    if scope:
        pk = partition_key_for_key(scope)
    elif key is not None:
        pk = partition_key_for_key(key)
    else:
        pk = partition_key_for_service(service, idempotency_key)
    return InvocationId(pk, _uuid_of(*fields))


_CALL_TAG = b"call"
AWAKEABLE_PREFIX = "sign_1"
_AWAKEABLE_BYTES = _BYTES_LEN + 4  # invocation id, then the u32 signal index


def child_invocation_id(
    parent_id: str, command_index: int, service: str, key: str | None, handler: str
) -> InvocationId:
    """Deterministic id of a call or one-way call made by command ``command_index`` of ``parent_id``.

    The same command on every replay yields the same id, so a call re-delivered after a crash
    finds the invocation it already created instead of creating a second one.
    """
    seed = f"{parent_id}/{command_index}"
    fields = [_CALL_TAG, parent_id.encode(), str(command_index).encode(), service.encode()]
    if key is not None:
        fields.append(key.encode())
    fields.append(handler.encode())
    pk = partition_key_for_key(key) if key is not None else partition_key_for_service(service, seed)
    return InvocationId(pk, _uuid_of(*fields))


class AwakeableIdError(ValueError):
    """An awakeable id that is not `sign_1` + base64url(invocation id bytes + u32 signal index)."""


def awakeable_id(invocation_id: InvocationId, signal_index: int) -> str:
    """The id the SDK hands out for the awakeable with ``signal_index`` of ``invocation_id``."""
    raw = invocation_id.to_bytes() + signal_index.to_bytes(4, "big")
    return AWAKEABLE_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_awakeable_id(s: str) -> tuple[InvocationId, int]:
    """(invocation id, signal index) of an awakeable id; raises AwakeableIdError.

    Only the canonical form `awakeable_id` writes is accepted (unpadded base64url, as Restate's
    strict decoder wants it): characters outside the alphabet, padding and non-zero trailing
    bits are refused, so every accepted id re-encodes to itself.
    """
    if not s.startswith(AWAKEABLE_PREFIX):
        raise AwakeableIdError("bad awakeable id prefix")
    body = s[len(AWAKEABLE_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, binascii.Error):
        raise AwakeableIdError("bad awakeable id encoding") from None
    if len(raw) != _AWAKEABLE_BYTES:
        raise AwakeableIdError("bad awakeable id length")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
        raise AwakeableIdError("bad awakeable id encoding")
    return InvocationId.from_bytes(raw[:_BYTES_LEN]), int.from_bytes(raw[_BYTES_LEN:], "big")
