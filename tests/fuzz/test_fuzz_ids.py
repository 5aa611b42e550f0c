"""Properties of the id codecs (shardgate.sharding): invocation ids, awakeable ids, partition keys.

Encode/decode round-trips for every value, and garbage is refused with the documented error
(`InvocationIdError` with one of Restate's reasons, `AwakeableIdError`), never another exception.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from shardgate.sharding import (
    AWAKEABLE_PREFIX,
    INVOCATION_ID_PREFIX,
    AwakeableIdError,
    InvocationId,
    InvocationIdError,
    awakeable_id,
    idempotent_invocation_id,
    parse_awakeable_id,
    partition_key_for_key,
    partition_of,
    partition_range,
    workflow_invocation_id,
)
from tests.fuzz.strategies import FUZZ, nasty_text, utf8_text

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U128 = st.integers(min_value=0, max_value=2**128 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
invocation_ids = st.builds(InvocationId, U64, U128)
REASONS = {"bad format", "bad length", "base62 decode error", "unrecognized codec version"}
BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@FUZZ
@given(invocation_ids)
def test_invocation_id_string_and_bytes_round_trip(inv: InvocationId) -> None:
    text = str(inv)
    assert len(text) == 38 and text.startswith(INVOCATION_ID_PREFIX)
    assert InvocationId.parse(text) == inv
    assert InvocationId.from_bytes(inv.to_bytes()) == inv


def _parse_or_reason(text: str) -> InvocationId | str:
    try:
        return InvocationId.parse(text)
    except InvocationIdError as e:
        return e.reason


@FUZZ
@given(nasty_text)
def test_any_text_parses_or_is_refused_with_a_reason(text: str) -> None:
    got = _parse_or_reason(text)
    assert isinstance(got, InvocationId) or got in REASONS
    if isinstance(got, InvocationId):
        assert str(got) == text


@FUZZ
@given(st.text(alphabet=st.sampled_from(BASE62 + "_-\ud800é") | st.characters(), min_size=33, max_size=33))
def test_id_shaped_garbage_is_refused_or_canonical(body: str) -> None:
    """38 characters after the prefix rule: parse only what `str()` would write back (or refuse)."""
    got = _parse_or_reason(INVOCATION_ID_PREFIX + body)
    assert isinstance(got, InvocationId) or got in REASONS
    if isinstance(got, InvocationId):
        assert str(got) == INVOCATION_ID_PREFIX + body


@FUZZ
@given(st.binary(max_size=40))
def test_any_bytes_decode_only_at_24(raw: bytes) -> None:
    try:
        inv = InvocationId.from_bytes(raw)
    except InvocationIdError as e:
        assert len(raw) != 24 and e.reason == "bad length"
    else:
        assert inv.to_bytes() == raw


@FUZZ
@given(invocation_ids, U32)
def test_awakeable_id_round_trip(inv: InvocationId, index: int) -> None:
    text = awakeable_id(inv, index)
    assert text.startswith(AWAKEABLE_PREFIX)
    assert parse_awakeable_id(text) == (inv, index)


@FUZZ
@given(nasty_text)
def test_awakeable_garbage_is_refused(text: str) -> None:
    try:
        inv, index = parse_awakeable_id(AWAKEABLE_PREFIX + text)
    except AwakeableIdError:
        return
    assert awakeable_id(inv, index) == AWAKEABLE_PREFIX + text  # only the canonical form decodes


@FUZZ
@given(invocation_ids, U32, st.integers(min_value=0, max_value=37), nasty_text)
def test_a_mangled_awakeable_id_never_decodes_to_another(inv: InvocationId, index: int, at: int,
                                                        junk: str) -> None:
    good = awakeable_id(inv, index)
    mangled = good[:at + len(AWAKEABLE_PREFIX)] + junk + good[at + len(AWAKEABLE_PREFIX):]
    assume(mangled != good)
    try:
        got = parse_awakeable_id(mangled)
    except AwakeableIdError:
        return
    assert awakeable_id(*got) == mangled


@FUZZ
@given(U64, st.integers(min_value=1, max_value=4096))
def test_partition_of_agrees_with_partition_range(pk: int, partitions: int) -> None:
    p = partition_of(pk, partitions)
    assert 0 <= p < partitions
    start, end = partition_range(p, partitions)
    assert start <= pk <= end


@FUZZ
@given(utf8_text, utf8_text, utf8_text, utf8_text, st.integers(min_value=1, max_value=4096))
def test_deterministic_ids_round_trip_and_route(service: str, key: str, handler: str, idem: str,
                                                partitions: int) -> None:
    for inv in (workflow_invocation_id(service, key), idempotent_invocation_id(service, key, handler, idem),
                idempotent_invocation_id(service, None, handler, idem)):
        assert InvocationId.parse(str(inv)) == inv
        assert 0 <= partition_of(inv.partition_key, partitions) < partitions
    assert workflow_invocation_id(service, key).partition_key == partition_key_for_key(key)
