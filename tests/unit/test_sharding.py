"""Unit tests for shardgate.sharding: Restate-compatible ids, partition keys and ranges."""

from __future__ import annotations

import hashlib
import random

import pytest
import xxhash

from shardgate.sharding import (
    INVOCATION_ID_PREFIX,
    PARTITION_KEY_BUCKETS,
    InvocationId,
    InvocationIdError,
    hash_str,
    idempotent_invocation_id,
    new_invocation_id,
    partition_key_for_key,
    partition_key_for_service,
    partition_of,
    partition_range,
    workflow_invocation_id,
)

U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1
PARTITION_COUNTS = [1, 2, 3, 7, 64, 1000]
VALID_ID = "inv_1gdJBtdVEcM942bjcDmb1c1khoaJe11Hbz"  # example from the spec, section 12


# ---- Restate vectors (spec section 15, recorded from Restate 1.7.12) ------------------------------


def test_workflow_vector_matches_restate() -> None:
    inv = workflow_invocation_id("Signup", "w5-ec678c")
    assert str(inv) == "inv_19z6ImeDk4lv34PPkzUYKSgk44JPesZ6pv"


def test_idempotent_service_vector_matches_restate() -> None:
    inv = idempotent_invocation_id("Greeter", None, "greet", "idem-e-ec678c")
    assert str(inv) == "inv_1hS7fYn6IOXQ55ajsoS2m9bJmwZeG44fXD"


def test_idempotent_object_vector_matches_restate() -> None:
    inv = idempotent_invocation_id("Counter", "c5-ec678c", "add", "idem-evo-ec678c")
    assert str(inv) == "inv_167wKlEaTZI16FXpNBX3lEPTGXiqSspzqC"


def test_vectors_parse_back_to_the_same_id() -> None:
    for inv in (
        workflow_invocation_id("Signup", "w5-ec678c"),
        idempotent_invocation_id("Greeter", None, "greet", "idem-e-ec678c"),
        idempotent_invocation_id("Counter", "c5-ec678c", "add", "idem-evo-ec678c"),
    ):
        assert InvocationId.parse(str(inv)) == inv


# ---- hashing rules --------------------------------------------------------------------------------


def test_hash_str_is_xxh3_of_utf8_plus_ff() -> None:
    assert hash_str("abc") == xxhash.xxh3_64_intdigest(b"abc\xff")
    assert hash_str("") == xxhash.xxh3_64_intdigest(b"\xff")
    assert hash_str("ключ") == xxhash.xxh3_64_intdigest("ключ".encode() + b"\xff")


def test_partition_key_for_key_is_hash_of_key() -> None:
    assert partition_key_for_key("user-42") == hash_str("user-42")


def test_same_object_key_always_gives_the_same_partition() -> None:
    for n in PARTITION_COUNTS:
        first = partition_of(partition_key_for_key("cart-17"), n)
        assert all(partition_of(partition_key_for_key("cart-17"), n) == first for _ in range(10))


def test_partition_key_for_service_with_idempotency_key_is_deterministic() -> None:
    a = partition_key_for_service("Greeter", "k-1")
    assert all(partition_key_for_service("Greeter", "k-1") == a for _ in range(20))
    bucket = hash_str("k-1") % PARTITION_KEY_BUCKETS
    expected = xxhash.xxh3_64_intdigest(
        b"Greeter\xff" + b"unscoped/service\xff" + bucket.to_bytes(8, "little")
    )
    assert a == expected


def test_partition_key_for_service_without_key_uses_one_of_512_buckets() -> None:
    allowed = {
        xxhash.xxh3_64_intdigest(b"Svc\xffunscoped/service\xff" + b.to_bytes(8, "little"))
        for b in range(PARTITION_KEY_BUCKETS)
    }
    seen = {partition_key_for_service("Svc", None) for _ in range(2000)}
    assert seen <= allowed
    assert len(seen) > 100  # random buckets actually spread


def test_partition_key_for_service_depends_on_service() -> None:
    assert partition_key_for_service("A", "k") != partition_key_for_service("B", "k")


def test_workflow_uuid_is_sha256_prefix_of_fields() -> None:
    inv = workflow_invocation_id("W", "k")
    digest = hashlib.sha256(b"wf,W,k").digest()
    assert inv.uuid == int.from_bytes(digest[:16], "big")
    assert inv.partition_key == hash_str("k")


def test_scoped_workflow_uses_scope_for_partition_and_uuid() -> None:
    inv = workflow_invocation_id("W", "k", scope="tenant1")
    assert inv.partition_key == hash_str("tenant1")
    assert inv.uuid == int.from_bytes(hashlib.sha256(b"wf,tenant1,W,k").digest()[:16], "big")
    assert inv != workflow_invocation_id("W", "k")


def test_scoped_idempotent_ids_use_scope_partition_and_include_scope() -> None:
    svc = idempotent_invocation_id("S", None, "h", "ik1", scope="sc")
    assert svc.partition_key == hash_str("sc")
    assert svc.uuid == int.from_bytes(hashlib.sha256(b"ik,sc,S,h,ik1").digest()[:16], "big")
    obj = idempotent_invocation_id("O", "key", "h", "ik1", scope="sc")
    assert obj.partition_key == hash_str("sc")
    assert obj.uuid == int.from_bytes(hashlib.sha256(b"ik,sc,O,key,h,ik1").digest()[:16], "big")


def test_idempotent_id_differs_per_handler_key_and_idempotency_key() -> None:
    base = idempotent_invocation_id("O", "k", "h", "i")
    assert base == idempotent_invocation_id("O", "k", "h", "i")
    assert base != idempotent_invocation_id("O", "k", "h2", "i")
    assert base != idempotent_invocation_id("O", "k2", "h", "i")
    assert base != idempotent_invocation_id("O", "k", "h", "i2")


def test_empty_object_key_is_a_key() -> None:
    keyed = idempotent_invocation_id("O", "", "h", "i")
    assert keyed.partition_key == hash_str("")
    assert keyed.uuid == int.from_bytes(hashlib.sha256(b"ik,O,,h,i").digest()[:16], "big")


def test_idempotent_service_id_is_deterministic() -> None:
    assert idempotent_invocation_id("S", None, "h", "x") == idempotent_invocation_id("S", None, "h", "x")


# ---- partitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", PARTITION_COUNTS)
def test_partition_ranges_tile_the_key_space(n: int) -> None:
    expected_start = 0
    for i in range(n):
        start, end = partition_range(i, n)
        assert start == expected_start
        assert start <= end
        expected_start = end + 1
    assert expected_start == 1 << 64


@pytest.mark.parametrize("n", PARTITION_COUNTS)
def test_partition_of_agrees_with_range_boundaries(n: int) -> None:
    for i in range(n):
        start, end = partition_range(i, n)
        assert partition_of(start, n) == i
        assert partition_of(end, n) == i
        if start > 0:
            assert partition_of(start - 1, n) == i - 1
        if end < U64_MAX:
            assert partition_of(end + 1, n) == i + 1


@pytest.mark.parametrize("n", PARTITION_COUNTS)
def test_partition_range_matches_ceiling_formula(n: int) -> None:
    def ceil_div(a: int, b: int) -> int:
        return (a + b - 1) // b

    for i in range(n):
        assert partition_range(i, n) == (ceil_div(i << 64, n), ceil_div((i + 1) << 64, n) - 1)


@pytest.mark.parametrize("n", PARTITION_COUNTS)
def test_partition_of_is_within_range(n: int) -> None:
    rng = random.Random(n)
    for pk in [0, U64_MAX, *(rng.getrandbits(64) for _ in range(500))]:
        i = partition_of(pk, n)
        assert 0 <= i < n
        start, end = partition_range(i, n)
        assert start <= pk <= end


def test_partition_helpers_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        partition_of(-1, 4)
    with pytest.raises(ValueError):
        partition_of(1 << 64, 4)
    with pytest.raises(ValueError):
        partition_of(0, 0)
    with pytest.raises(ValueError):
        partition_range(4, 4)
    with pytest.raises(ValueError):
        partition_range(-1, 4)


# ---- string and binary forms ----------------------------------------------------------------------


def test_string_form_has_prefix_and_38_chars() -> None:
    rng = random.Random(1)
    for _ in range(200):
        s = str(InvocationId(rng.getrandbits(64), rng.getrandbits(128)))
        assert len(s) == 38
        assert s.startswith(INVOCATION_ID_PREFIX)


def test_random_ids_roundtrip_through_string_and_bytes() -> None:
    rng = random.Random(2)
    samples = [(0, 0), (U64_MAX, U128_MAX), (1, 1), (1 << 63, 1 << 127)]
    samples += [(rng.getrandbits(64), rng.getrandbits(128)) for _ in range(1000)]
    for pk, uuid in samples:
        inv = InvocationId(pk, uuid)
        assert InvocationId.parse(str(inv)) == inv
        b = inv.to_bytes()
        assert len(b) == 24
        assert InvocationId.from_bytes(b) == inv


def test_binary_form_is_big_endian_pk_then_uuid() -> None:
    inv = InvocationId(0x0102030405060708, 0x1112131415161718191A1B1C1D1E1F20)
    assert inv.to_bytes() == bytes.fromhex("01020304050607081112131415161718191a1b1c1d1e1f20")


def test_string_form_applies_byte_swap_quirk() -> None:
    # pk 1 -> big-endian bytes 00..01 read little-endian = 2**56, whose base62 is not "...01".
    inv = InvocationId(1, 0)
    assert str(inv) != INVOCATION_ID_PREFIX + "0" * 10 + "1" + "0" * 22
    assert str(InvocationId(0, 0)) == INVOCATION_ID_PREFIX + "0" * 33


def test_spec_example_id_parses() -> None:
    inv = InvocationId.parse(VALID_ID)
    assert str(inv) == VALID_ID


def test_first_16_chars_identify_partition_key() -> None:
    a = InvocationId(12345, 1)
    b = InvocationId(12345, 2)
    assert str(a)[:16] == str(b)[:16]


def test_new_invocation_id_keeps_partition_key_and_is_unique() -> None:
    ids = {new_invocation_id(99) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.partition_key == 99 for i in ids)


def test_new_invocation_id_uuid_is_a_ulid_with_current_timestamp() -> None:
    import time

    before = time.time_ns() // 1_000_000
    inv = new_invocation_id(0)
    after = time.time_ns() // 1_000_000
    assert before <= inv.uuid >> 80 <= after


def test_invocation_id_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        InvocationId(1 << 64, 0)
    with pytest.raises(ValueError):
        InvocationId(0, 1 << 128)
    with pytest.raises(ValueError):
        InvocationId(-1, 0)


# ---- parse errors ---------------------------------------------------------------------------------


def _reason(s: str) -> str:
    with pytest.raises(InvocationIdError) as exc:
        InvocationId.parse(s)
    assert str(exc.value) == exc.value.reason
    assert isinstance(exc.value, ValueError)
    return exc.value.reason


@pytest.mark.parametrize("s", ["not-an-id", "xyz", "", "inv", "inv1abc", "dp_1" + VALID_ID[4:], "INV_1abc"])
def test_parse_bad_format(s: str) -> None:
    assert _reason(s) == "bad format"


@pytest.mark.parametrize("s", ["inv_2" + VALID_ID[5:], "inv_0abc", "inv_x"])
def test_parse_unrecognized_version(s: str) -> None:
    assert _reason(s) == "unrecognized codec version"


@pytest.mark.parametrize("s", ["inv_", "inv_1", VALID_ID[:-1], VALID_ID + "0", "inv_1abc"])
def test_parse_bad_length(s: str) -> None:
    assert _reason(s) == "bad length"


def test_parse_bad_length_counts_utf8_bytes() -> None:
    assert _reason(VALID_ID[:-1] + "é") == "bad length"


@pytest.mark.parametrize("pos", [5, 10, 15, 16, 20, 37])
@pytest.mark.parametrize("bad", ["-", "_", "!", " "])
def test_parse_non_base62_char(pos: int, bad: str) -> None:
    s = VALID_ID[:pos] + bad + VALID_ID[pos + 1 :]
    assert _reason(s) == "base62 decode error"


def test_parse_overflowing_partition_key() -> None:
    assert _reason(INVOCATION_ID_PREFIX + "Z" * 11 + "0" * 22) == "base62 decode error"


def test_parse_overflowing_uuid() -> None:
    assert _reason(INVOCATION_ID_PREFIX + "0" * 11 + "Z" * 22) == "base62 decode error"


def test_parse_max_values_do_not_overflow() -> None:
    inv = InvocationId(U64_MAX, U128_MAX)
    assert InvocationId.parse(str(inv)) == inv


def test_from_bytes_bad_length() -> None:
    with pytest.raises(InvocationIdError) as exc:
        InvocationId.from_bytes(b"\x00" * 23)
    assert exc.value.reason == "bad length"
