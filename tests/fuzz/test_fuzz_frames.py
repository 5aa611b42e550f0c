"""The service-protocol frame decoder fed truncated and corrupted frames.

The decoder (`shardgate.protocol`) raises `ProtocolError` and nothing else; the invoker's decoding
of a deployment's response (`partition.invoker.decode_response`) turns that into a retryable
`DeploymentError`; the planner fed corrupted payloads raises `PlanError` (a retried attempt) or
plans the attempt, never anything else. Inputs are the SDK responses the project recorded
(`tests/data/vectors/`), cut and flipped at random, and random bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partition.effects import PlanContext, PlanError, plan_attempt
from partition.errors import DeploymentError
from partition.invocation import HandlerKind
from partition.invoker import decode_response
from shardgate.protocol import (
    HEADER_SIZE,
    MESSAGE_CLASSES,
    Frame,
    FrameDecoder,
    ProtocolError,
    decode_frames,
    encode_frame,
    parse_message,
)
from shardgate.schema import SchemaSnapshot
from shardgate.sharding import InvocationId, partition_of
from tests import testdata
from tests.fuzz.strategies import FUZZ

RESPONSES = sorted(
    bytes.fromhex(doc["response_hex"])
    for doc in (json.loads(p.read_text()) for p in Path(testdata.VECTORS_DIR).glob("*.json"))
    if doc.get("protocol_version") and doc["response_hex"]  # invocations only, answered ones
)
responses = st.sampled_from(RESPONSES)
frame_types = st.sampled_from(sorted(MESSAGE_CLASSES)) | st.integers(0, 0xFFFF)
frames = st.builds(Frame, frame_types, st.integers(0, 0xFFFF), st.binary(max_size=64))
INVOCATION = "inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v"


def test_the_recorded_responses_are_there() -> None:
    assert len(RESPONSES) >= 20 and all(decode_frames(r) for r in RESPONSES)


@FUZZ
@given(st.lists(frames, max_size=6), st.lists(st.integers(0, 400), max_size=8))
def test_frames_split_anywhere_decode_to_the_same_frames(sent: list[Frame], cuts: list[int]) -> None:
    data = b"".join(f.encode() for f in sent)
    dec, got, pos = FrameDecoder(), [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        got += dec.feed(data[pos:cut])
        pos = cut
    dec.close()
    assert got == sent and decode_frames(data) == sent


@FUZZ
@given(responses, st.data())
def test_a_truncated_response_is_a_protocol_error(data: bytes, draw: st.DataObject) -> None:
    boundaries, pos = {0}, 0
    for f in decode_frames(data):
        pos += len(f)
        boundaries.add(pos)
    cut = draw.draw(st.integers(1, len(data) - 1).filter(lambda c: c not in boundaries))
    with pytest.raises(ProtocolError):
        decode_frames(data[:cut])
    with pytest.raises(DeploymentError, match="protocol violation"):
        decode_response(data[:cut])


@FUZZ
@given(st.binary(max_size=200), st.none() | st.integers(0, 64))
def test_random_bytes_decode_or_raise_protocol_error_only(data: bytes, limit: int | None) -> None:
    dec = FrameDecoder(limit)
    try:
        dec.feed(data)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # a failed decoder stays failed
            dec.feed(b"")
    else:
        try:
            dec.close()
        except ProtocolError:
            assert not dec.at_boundary
    try:
        decode_response(data)
    except DeploymentError:
        pass


def _corrupt(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data)
    for at, value in flips:
        raw[at % len(raw)] = value
    return bytes(raw)


@FUZZ
@given(responses, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_responses_fail_cleanly(data: bytes, flips: list[tuple[int, int]]) -> None:
    """Flipped bytes: a DeploymentError from the decoder, or frames whose payloads either parse or
    raise ProtocolError, and a plan or a PlanError from the planner."""
    try:
        got = decode_response(_corrupt(data, flips))
    except DeploymentError:
        return
    for f in got:
        try:
            parse_message(f)
        except ProtocolError:
            pass
    try:
        plan_attempt(got, _context())
    except PlanError:
        pass


@FUZZ
@given(st.sampled_from(sorted(MESSAGE_CLASSES)), st.binary(max_size=48))
def test_garbage_payloads_are_protocol_errors(msg_type: int, payload: bytes) -> None:
    frame = decode_frames(encode_frame(msg_type, payload))[0]
    try:
        parse_message(frame)
    except ProtocolError:
        pass
    try:
        plan_attempt([frame], _context())
    except PlanError:
        pass


def test_a_header_alone_and_an_oversized_length_are_deployment_errors() -> None:
    header_only = encode_frame(0x0401, b"abc")[:HEADER_SIZE]
    for data in (header_only, b"\x04\x01\x00\x00\xff\xff\xff\xff", b"\x00\x03\x00"):
        with pytest.raises(DeploymentError, match="protocol violation"):
            decode_response(data)


def _context() -> PlanContext:
    inv = InvocationId.parse(INVOCATION)
    return PlanContext(invocation_id=INVOCATION, partition=partition_of(inv.partition_key, 8), partitions=8,
                       kind=HandlerKind.EXCLUSIVE, service="Counter", key="k", state={}, commands_before=1,
                       now_ms=1_795_929_000_000, schema=SchemaSnapshot(version=1, services={}, deployments={}))
