"""Service-protocol codec checked against the captured restate-sdk 1.2.0 exchanges.

Vectors live in the project's test data, ``tests/data/vectors`` (``make vectors`` re-captures
them from the SDK; see the README there).

Note on "volatile" fields: the README says wake_up_time / invoke_time / stack traces
differ between captures. Each vector's ``decoded_*`` view was produced from the very
same bytes as its ``*_hex``, so here they are compared exactly like every other field.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from google.protobuf import unknown_fields
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol as P
from shardgate.protocol import (
    MESSAGE_CLASSES,
    REQUESTED_ACK,
    Frame,
    FrameDecoder,
    MessageType,
    ProtocolError,
    content_type,
    decode_frames,
    encode_frame,
    encode_message,
    input_command,
    is_command,
    is_notification,
    notification,
    parse_content_type,
    parse_message,
    start_message,
)
from tests import testdata

VECTORS_DIR = testdata.VECTORS_DIR


def _load_vectors() -> dict[str, dict]:
    out: dict[str, dict] = {}
    if not VECTORS_DIR.is_dir():
        return out
    for f in sorted(VECTORS_DIR.glob("*.json")):
        data = json.loads(f.read_text())
        if not isinstance(data, dict) or "request_hex" not in data or "response_hex" not in data:
            continue
        # Only invocation exchanges carry frames (discovery bodies are JSON).
        if parse_content_type((data.get("request_headers") or {}).get("content-type")) is None:
            continue
        out[f.stem] = data
    return out


VECTORS = _load_vectors()
if not VECTORS:  # the vectors are test data the suite depends on: a missing copy is an error
    raise RuntimeError(
        f"no protocol vectors in {VECTORS_DIR}: the project's copy of the vectors is missing"
    )


def needs_vectors(fn):  # kept as a marker of which tests read the vectors
    return fn


def _sides() -> list[tuple[str, str]]:
    """(vector name, 'request'|'response') for every side whose body is a frame stream."""
    out = []
    for name, v in VECTORS.items():
        out.append((name, "request"))
        if parse_content_type((v.get("response_headers") or {}).get("content-type")) is not None:
            out.append((name, "response"))
    return out


SIDES = _sides()
SIDE_IDS = [f"{n}-{s}" for n, s in SIDES]


def _version(name: str) -> int:
    """Protocol version of a vector, from its request content type (always present)."""
    v = parse_content_type(VECTORS[name]["request_headers"]["content-type"])
    assert v is not None
    assert VECTORS[name].get("protocol_version", v) == v
    return v


def _raw(name: str, side: str) -> bytes:
    return bytes.fromhex(VECTORS[name][f"{side}_hex"])


def _view(name: str, side: str) -> list[dict] | None:
    return VECTORS[name].get(f"decoded_{side}")


def _frames(name: str, side: str) -> list[Frame]:
    return FrameDecoder().feed(_raw(name, side))


def _feed_chunks(data: bytes, sizes) -> list[Frame]:
    dec = FrameDecoder()
    frames: list[Frame] = []
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        frames += dec.feed(data[pos : pos + size])
        pos += size
    frames += dec.feed(data[pos:])
    assert dec.at_boundary
    dec.close()
    return frames


def _random_sizes(rng: random.Random, total: int):
    left = total
    while left > 0:
        n = rng.choice((0, 1, 1, 2, 3, 5, 7, 8, 9, 13, 64, rng.randint(1, max(1, total))))
        left -= n
        yield n


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


# The vectors' decoded view names the signal id of SignalNotification "idx"/"name" (the
# field names of the upstream per-type message); our generic NotificationTemplate calls
# the same field numbers 2/3 signal_id/signal_name.
_NOTIFICATION_VIEW_RENAMES = {"idx": "signal_id", "name": "signal_name"}


def _expected_payload(t: int, payload: dict) -> dict:
    if is_notification(t):
        return {_NOTIFICATION_VIEW_RENAMES.get(k, k): v for k, v in payload.items()}
    return payload


def _assert_no_unknown_fields(msg: Message, path: str = "") -> None:
    unknown = unknown_fields.UnknownFieldSet(msg)
    assert len(unknown) == 0, (
        f"unknown fields in {path or type(msg).__name__}: {[u.field_number for u in unknown]}"
    )
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        items = value if fd.is_repeated else [value]
        for i, sub in enumerate(items):
            _assert_no_unknown_fields(sub, f"{path}{fd.name}[{i}].")


# ---------------------------------------------------------------------------
# Vector decoding
# ---------------------------------------------------------------------------


@needs_vectors
def test_vectors_present():
    assert len(VECTORS) >= 40, sorted(VECTORS)
    assert {"a_greet_v6", "a_greet_v7", "j3_bidi_run_ack_v7", "c2_sleep_resume_v6"} <= set(VECTORS)


@needs_vectors
@pytest.mark.parametrize(("name", "side"), SIDES, ids=SIDE_IDS)
def test_streaming_decoder_split_invariance(name, side):
    data = _raw(name, side)
    whole = _frames(name, side)
    assert whole, "vector body holds no frames"
    assert b"".join(f.encode() for f in whole) == data
    assert decode_frames(data) == whole
    assert _feed_chunks(data, [1] * len(data)) == whole  # byte by byte
    for seed in range(25):
        rng = random.Random(f"{name}/{side}/{seed}")
        assert _feed_chunks(data, list(_random_sizes(rng, len(data)))) == whole, f"seed {seed}"
    # every possible single split point
    for cut in range(len(data) + 1):
        assert _feed_chunks(data, [cut]) == whole, f"cut at {cut}"


@needs_vectors
@pytest.mark.parametrize(("name", "side"), SIDES, ids=SIDE_IDS)
def test_frames_match_decoded_view(name, side):
    frames = _frames(name, side)
    view = _view(name, side)
    for i, frame in enumerate(frames):
        msg = parse_message(frame)
        assert isinstance(msg, MESSAGE_CLASSES[frame.type])
        _assert_no_unknown_fields(msg, f"frame {i} ")
    if view is None:
        # k_request_identity has no decoded view: parsing every frame above is the check
        assert frames, f"{name} {side}: no frames"
        return
    assert len(frames) == len(view)
    for i, (frame, exp) in enumerate(zip(frames, view, strict=True)):
        where = f"{name} {side} frame {i} ({exp['name']})"
        t = int(exp["type"], 16)
        assert frame.type == t, where
        assert frame.flags == int(exp["flags"], 16), where
        enum_name = MessageType(t).name
        assert _snake(exp["name"]) in (enum_name, enum_name + "_NOTIFICATION"), where
        got = MessageToDict(parse_message(frame), preserving_proto_field_name=True)
        assert got == _expected_payload(t, exp["payload"]), where


@needs_vectors
@pytest.mark.parametrize(("name", "side"), SIDES, ids=SIDE_IDS)
def test_reencode_is_byte_identical(name, side):
    data = _raw(name, side)
    pos = 0
    for frame in _frames(name, side):
        original = data[pos : pos + 8 + len(frame.payload)]
        pos += 8 + len(frame.payload)
        msg = parse_message(frame)
        assert encode_frame(frame.type, msg.SerializeToString(), frame.flags) == original
        assert encode_message(frame.type, msg, frame.flags) == original
        assert frame.encode() == original
        # and through a fresh message object (no cached unknown bytes possible)
        clone = type(msg)()
        clone.CopyFrom(msg)
        assert clone.SerializeToString(deterministic=True) == frame.payload
    assert pos == len(data)


@needs_vectors
def test_flag_requested_ack_only_on_v7_run_proposals():
    seen = 0
    for name, side in SIDES:
        for frame in _frames(name, side):
            if frame.flags:
                assert frame.flags == REQUESTED_ACK, name
                assert frame.type == MessageType.PROPOSE_RUN_COMPLETION, name
                assert _version(name) >= 7, name
                assert frame.requested_ack
                seen += 1
    assert seen >= 1


# ---------------------------------------------------------------------------
# Runtime-side builders reproduce the request bytes
# ---------------------------------------------------------------------------


def _rebuild_start(msg: pb.StartMessage, version: int) -> bytes:
    return start_message(
        msg.id,
        msg.debug_id,
        msg.known_entries,
        [(e.key, e.value) for e in msg.state_map] or None,
        msg.partial_state,
        msg.key,
        msg.retry_count_since_last_stored_entry,
        msg.duration_since_last_stored_entry,
        msg.random_seed,
        version,
        scope=msg.scope if msg.HasField("scope") else None,
        limit_key=msg.limit_key if msg.HasField("limit_key") else None,
        idempotency_key=msg.idempotency_key if msg.HasField("idempotency_key") else None,
    )


def _rebuild_input(msg: pb.InputCommandMessage) -> bytes:
    assert not msg.name
    return input_command(msg.value.content, [(h.key, h.value) for h in msg.headers])


def _rebuild_notification(t: int, msg: pb.NotificationTemplate) -> bytes:
    kwargs: dict = {}
    id_field = msg.WhichOneof("id")
    kwargs[id_field] = getattr(msg, id_field)
    res = msg.WhichOneof("result")
    if res == "void":
        kwargs["void"] = True
    elif res == "value":
        kwargs["value"] = msg.value.content
    elif res == "failure":
        kwargs["failure"] = (
            (msg.failure.code, msg.failure.message, [(m.key, m.value) for m in msg.failure.metadata])
            if msg.failure.metadata
            else (msg.failure.code, msg.failure.message)
        )
    elif res == "state_keys":
        kwargs["state_keys"] = list(msg.state_keys.keys)
    else:
        kwargs[res] = getattr(msg, res)
    return notification(t, **kwargs)


def _rebuild_runtime_frames(name: str) -> int:
    """Rebuild every Start / Input / notification frame of the request; return how many."""
    version = _version(name)
    data = _raw(name, "request")
    pos = 0
    rebuilt = 0
    for frame in _frames(name, "request"):
        original = data[pos : pos + 8 + len(frame.payload)]
        pos += len(original)
        msg = parse_message(frame)
        if frame.type == MessageType.START:
            assert _rebuild_start(msg, version) == original, f"{name} Start"
        elif frame.type == MessageType.INPUT_COMMAND:
            assert _rebuild_input(msg) == original, f"{name} Input"
        elif is_notification(frame.type):
            assert _rebuild_notification(frame.type, msg) == original, f"{name} 0x{frame.type:04X}"
        else:
            continue
        rebuilt += 1
    return rebuilt


@needs_vectors
@pytest.mark.parametrize(
    ("name", "expected_types"),
    [
        ("a_greet_v6", [MessageType.START, MessageType.INPUT_COMMAND]),
        ("a_greet_v7", [MessageType.START, MessageType.INPUT_COMMAND]),
        ("b_object_eager_state_v6", [MessageType.START, MessageType.INPUT_COMMAND]),
        (
            "c2_sleep_resume_v6",
            [MessageType.START, MessageType.INPUT_COMMAND, MessageType.SLEEP_COMPLETION],
        ),
    ],
)
def test_builders_reproduce_named_vectors(name, expected_types):
    assert name in VECTORS, f"vector {name} missing"
    frames = _frames(name, "request")
    runtime_frames = [f for f in frames if f.type in expected_types]
    assert [f.type for f in runtime_frames] == expected_types
    assert _rebuild_runtime_frames(name) == len(expected_types)


@needs_vectors
def test_builders_explicit_values():
    """Build a_greet / b_object_eager_state / c2 requests from literal values."""
    inv_id = bytes(7) + b"\x01" + bytes(range(16))
    debug = "inv_1aiqX0vFEFNH1Umgre58JiCLgHfTtztYK5"
    seed = 0xC0FFEE
    for name in ("a_greet_v6", "a_greet_v7"):
        body = start_message(inv_id, debug, 1, None, False, "", 0, 0, seed, _version(name))
        body += input_command(b'"World"', [])
        assert body == _raw(name, "request")
    b = start_message(inv_id, debug, 1, [(b"count", b"5")], False, "c1", 0, 0, seed, 6) + input_command(
        b"3", []
    )
    assert b == _raw("b_object_eager_state_v6", "request")
    c2 = _raw("c2_sleep_resume_v6", "request")
    frames = _frames("c2_sleep_resume_v6", "request")
    assert c2.startswith(start_message(inv_id, debug, 4, [(b"napping", b"true")], False, "c3", 0, 0, seed, 6))
    sleep_done = notification(MessageType.SLEEP_COMPLETION, completion_id=1, void=True)
    assert sleep_done == bytes.fromhex("800c00000000000408012200")
    assert c2.endswith(sleep_done)
    assert frames[-1].encode() == sleep_done


@needs_vectors
@pytest.mark.parametrize("name", sorted(VECTORS), ids=sorted(VECTORS))
def test_builders_reproduce_every_runtime_frame(name):
    assert _rebuild_runtime_frames(name) >= 2


def test_start_message_v5_omits_random_seed():
    v5 = start_message(b"id", "inv_x", 1, None, True, "", 0, 0, 12345, 5)
    v6 = start_message(b"id", "inv_x", 1, None, True, "", 0, 0, 12345, 6)
    m5 = parse_message(decode_frames(v5)[0])
    m6 = parse_message(decode_frames(v6)[0])
    assert m5.random_seed == 0 and m6.random_seed == 12345
    assert v6.endswith(bytes.fromhex("48b960"))
    assert len(v5) == len(v6) - 3
    assert m5.partial_state and m6.partial_state


def test_start_message_v7_extras_only_for_v7():
    args = (b"id", "inv_x", 1, None, False, "k", 2, 150, 7)
    six = parse_message(
        decode_frames(start_message(*args, 6, scope="s", limit_key="l", idempotency_key="i"))[0]
    )
    seven = parse_message(
        decode_frames(start_message(*args, 7, scope="s", limit_key="l", idempotency_key="i"))[0]
    )
    assert not six.HasField("scope") and not six.HasField("idempotency_key")
    assert (seven.scope, seven.limit_key, seven.idempotency_key) == ("s", "l", "i")
    assert seven.retry_count_since_last_stored_entry == 2 and seven.duration_since_last_stored_entry == 150


def test_input_command_headers_and_empty_value():
    raw = input_command(b"", [("a", "1"), ("b", "2")])
    (frame,) = decode_frames(raw)
    assert frame.type == MessageType.INPUT_COMMAND
    msg = parse_message(frame)
    assert msg.HasField("value") and msg.value.content == b""
    assert [(h.key, h.value) for h in msg.headers] == [("a", "1"), ("b", "2")]


def test_notification_builder_variants():
    def roundtrip(raw):
        (frame,) = decode_frames(raw)
        return frame.type, parse_message(frame)

    t, m = roundtrip(notification(MessageType.GET_LAZY_STATE_COMPLETION, completion_id=3, value=b""))
    assert (
        t == 0x8002 and m.completion_id == 3 and m.WhichOneof("result") == "value" and m.value.content == b""
    )
    t, m = roundtrip(notification(MessageType.SIGNAL_NOTIFICATION, signal_id=1, void=True))
    assert t == 0xFBFF and m.WhichOneof("id") == "signal_id" and m.signal_id == 1
    assert m.WhichOneof("result") == "void"
    t, m = roundtrip(notification(MessageType.SIGNAL_NOTIFICATION, signal_name="go", failure=(409, "x")))
    assert m.signal_name == "go" and (m.failure.code, m.failure.message) == (409, "x")
    _, m = roundtrip(notification(0x800B, completion_id=1, failure=(409, "dup", [("k", "v")])))
    assert [(x.key, x.value) for x in m.failure.metadata] == [("k", "v")]
    _, m = roundtrip(notification(0x800B, completion_id=1, failure=pb.Failure(code=500)))
    assert m.failure.code == 500
    _, m = roundtrip(
        notification(MessageType.CALL_INVOCATION_ID_COMPLETION, completion_id=1, invocation_id="inv_1")
    )
    assert m.invocation_id == "inv_1"
    _, m = roundtrip(notification(MessageType.GET_LAZY_STATE_KEYS_COMPLETION, completion_id=2, state_keys=[]))
    assert m.WhichOneof("result") == "state_keys" and list(m.state_keys.keys) == []
    _, m = roundtrip(notification(0x8006, completion_id=2, state_keys=pb.StateKeys(keys=[b"a", b"b"])))
    assert list(m.state_keys.keys) == [b"a", b"b"]
    # completion id 0 is still an explicitly set oneof member
    _, m = roundtrip(notification(0x800C, completion_id=0, void=True))
    assert m.WhichOneof("id") == "completion_id"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"void": True},  # no id
        {"completion_id": 1, "signal_id": 2, "void": True},  # two ids
        {"completion_id": 1},  # no result
        {"completion_id": 1, "void": True, "value": b"x"},  # two results
    ],
)
def test_notification_builder_rejects_bad_combinations(kwargs):
    with pytest.raises(ValueError):
        notification(MessageType.SLEEP_COMPLETION, **kwargs)


def test_notification_builder_rejects_non_notification_type():
    with pytest.raises(ValueError):
        notification(MessageType.SLEEP_COMMAND, completion_id=1, void=True)


# ---------------------------------------------------------------------------
# Framing edge cases
# ---------------------------------------------------------------------------


def test_zero_length_end_frame():
    end = bytes.fromhex("0003000000000000")
    assert encode_frame(MessageType.END, b"") == end
    assert encode_message(MessageType.END, pb.EndMessage()) == end
    assert Frame(3, 0, b"").encode() == end
    dec = FrameDecoder()
    assert dec.feed(end[:7]) == []
    assert not dec.at_boundary
    (frame,) = dec.feed(end[7:])
    assert dec.at_boundary
    assert frame == Frame(MessageType.END, 0, b"")
    assert isinstance(parse_message(frame), pb.EndMessage)
    # several empty frames in one chunk
    assert decode_frames(end * 3) == [frame] * 3


def test_header_layout_big_endian():
    raw = encode_frame(0x040C, b"\x01\x02\x03", flags=0x8001)
    assert raw == bytes.fromhex("040c8001000000030102 03".replace(" ", ""))
    assert int.from_bytes(raw[:8], "big") == (0x040C << 48) | (0x8001 << 32) | 3


def test_requested_ack_flag_preserved():
    msg = pb.ProposeRunCompletionMessage(result_completion_id=1, value=b'"rnd-y"')
    raw = encode_message(MessageType.PROPOSE_RUN_COMPLETION, msg, REQUESTED_ACK)
    assert raw[2:4] == b"\x80\x00"
    (frame,) = decode_frames(raw)
    assert frame.flags == REQUESTED_ACK and frame.requested_ack
    assert frame.encode() == raw
    assert parse_message(frame) == msg
    # reserved bits survive a round trip untouched too
    (frame,) = decode_frames(encode_frame(MessageType.END, b"", 0x8001))
    assert frame.flags == 0x8001
    assert not decode_frames(encode_frame(MessageType.END, b""))[0].requested_ack


def test_frame_too_large():
    dec = FrameDecoder(max_frame_bytes=10)
    assert dec.max_frame_bytes == 10
    ok = encode_frame(MessageType.OUTPUT_COMMAND, b"x" * 10)
    assert dec.feed(ok) == [Frame(0x0401, 0, b"x" * 10)]
    # rejected on the header alone, before the payload arrives
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(MessageType.OUTPUT_COMMAND, b"x" * 11)[:8])
    with pytest.raises(ProtocolError):  # poisoned
        dec.feed(ok)
    with pytest.raises(ProtocolError):
        decode_frames(encode_frame(1, b"abc"), max_frame_bytes=2)
    # default limit exists; a 4 GiB declaration is refused immediately
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(bytes.fromhex("04010000ffffffff"))
    # unlimited decoder just waits for more bytes
    unlimited = FrameDecoder(max_frame_bytes=None)
    assert unlimited.feed(bytes.fromhex("04010000ffffffff")) == []
    assert not unlimited.at_boundary


def test_truncated_input():
    full = encode_frame(MessageType.INPUT_COMMAND, b"\x72\x03\x0a\x01\x33") + encode_frame(
        MessageType.END, b""
    )
    for cut in range(1, len(full)):
        if cut == 13:  # exactly after the first frame: a valid stream
            assert len(decode_frames(full[:cut])) == 1
            continue
        with pytest.raises(ProtocolError):
            decode_frames(full[:cut])
        dec = FrameDecoder()
        dec.feed(full[:cut])
        assert not dec.at_boundary
        assert dec.buffered == (cut if cut < 13 else cut - 13)
        with pytest.raises(ProtocolError):
            dec.close()
    assert decode_frames(b"") == []
    dec = FrameDecoder()
    assert dec.feed(b"") == [] and dec.at_boundary
    dec.close()


def test_decoder_large_payload_in_many_chunks():
    payload = bytes(range(256)) * 1000
    raw = encode_frame(MessageType.OUTPUT_COMMAND, payload) * 3
    frames = _feed_chunks(raw, [4096] * (len(raw) // 4096 + 1))
    assert [f.payload for f in frames] == [payload] * 3
    dec = FrameDecoder()
    assert dec.feed(raw[:100]) == []
    assert dec.buffered == 100
    got = dec.feed(raw[100:])
    assert len(got) == 3 and dec.at_boundary
    assert dec.frames_decoded == 3 and dec.bytes_decoded == len(raw)


def test_parse_message_errors():
    with pytest.raises(ProtocolError):
        parse_message(Frame(0x040F, 0, b""))  # gap in the command codes
    with pytest.raises(ProtocolError):
        parse_message(Frame(0xFC00, 0, b"opaque"))  # custom entries are opaque
    with pytest.raises(ProtocolError):
        parse_message(Frame(MessageType.START, 0, b"\xff\xff\xff"))
    with pytest.raises(ProtocolError):
        parse_message(Frame(MessageType.OUTPUT_COMMAND, 0, b"\x72\x05\x0a"))  # truncated sub-message
    # unknown fields are tolerated (forward compatibility)
    msg = parse_message(Frame(MessageType.END, 0, b"\x08\x01"))
    assert isinstance(msg, pb.EndMessage)


def test_encode_frame_rejects_out_of_range():
    with pytest.raises(ValueError):
        encode_frame(0x10000, b"")
    with pytest.raises(ValueError):
        encode_frame(1, b"", flags=-1)


# ---------------------------------------------------------------------------
# Type codes, content types
# ---------------------------------------------------------------------------


def test_message_type_table():
    assert MessageType.START == 0x0000 and MessageType.PROPOSE_RUN_COMPLETION_ACK == 0x0007
    assert MessageType.INPUT_COMMAND == 0x0400 and MessageType.COMPLETE_AWAKEABLE_COMMAND == 0x0414
    assert MessageType.GET_LAZY_STATE_COMPLETION == 0x8002 and MessageType.SIGNAL_NOTIFICATION == 0xFBFF
    assert len(MessageType) == 8 + 20 + 12
    assert 0x040F not in {int(t) for t in MessageType}
    assert set(MESSAGE_CLASSES) == set(MessageType)
    for t in MessageType:
        kinds = [P.is_control(t), is_command(t), is_notification(t), P.is_custom_entry(t)]
        assert kinds.count(True) == 1, t
        if is_notification(t) and t not in (
            MessageType.SIGNAL_NOTIFICATION,
            MessageType.CALL_INVOCATION_ID_COMPLETION,
        ):
            # completion code = 0x8000 | (command code & 0x3FF)
            assert MessageType(0x0400 | (t & 0x3FF)).name.replace("_COMMAND", "_COMPLETION") == t.name
        if is_notification(t):
            assert MESSAGE_CLASSES[t] is pb.NotificationTemplate
    assert is_command(0x7FFF) and not is_command(0x8000)
    assert is_notification(0x8000) and not is_notification(0xFC00)
    assert P.is_custom_entry(0xFC00) and P.is_custom_entry(0xFFFF)
    assert P.TERMINAL_TYPES == {MessageType.END, MessageType.SUSPENSION, MessageType.ERROR}


def test_content_types():
    assert content_type(6) == "application/vnd.restate.invocation.v6"
    for v in (5, 6, 7, 8):
        assert parse_content_type(content_type(v)) == v
    assert parse_content_type("application/vnd.restate.invocation.v12") == 12
    assert parse_content_type(" Application/VND.restate.invocation.v6 ; charset=x") == 6
    for bad in (
        None,
        "",
        "application/octet-stream",
        "application/vnd.restate.invocation.v",
        "application/vnd.restate.invocation.vx",
        "application/vnd.restate.invocation.v6x",
        "application/vnd.restate.endpointmanifest.v4+json",
    ):
        assert parse_content_type(bad) is None, bad


def test_suspension_supports_v6_and_v7_layouts_together():
    v6 = pb.SuspensionMessage(waiting_completions=[1], waiting_signals=[1])
    assert encode_message(MessageType.SUSPENSION, v6) == bytes.fromhex("00010000000000060a0101120101")
    fut = pb.Future(waiting_completions=[1], waiting_signals=[1], combinator_type=pb.Future.FIRST_COMPLETED)
    v7 = pb.SuspensionMessage(awaiting_on=fut)
    assert encode_message(MessageType.SUSPENSION, v7) == bytes.fromhex("000100000000000a22080a01011201012801")
    err = pb.ErrorMessage(code=500, behavior=pb.ErrorMessage.PAUSE)
    assert (
        parse_message(decode_frames(encode_message(MessageType.ERROR, err))[0]).behavior
        == pb.ErrorMessage.PAUSE
    )
