"""Restate service-protocol codec (framing + protobuf messages), runtime side.

Pure functions and small classes, no I/O. See /work/shared/spec/service-protocol.md
sections 4 (framing) and 5 (message catalogue).

Frame layout (all big-endian)::

    u16 message type | u16 flags | u32 payload length | payload (protobuf)

The protobuf classes come from ``sgproto/protocol/v1/protocol.proto``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as _PbMessage

from sgproto.protocol.v1 import protocol_pb2 as pb

__all__ = [
    "COMMAND_RANGE",
    "CUSTOM_ENTRY_MIN",
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_SIZE",
    "MESSAGE_CLASSES",
    "NOTIFICATION_RANGE",
    "REQUESTED_ACK",
    "TERMINAL_TYPES",
    "Frame",
    "FrameDecoder",
    "MessageType",
    "ProtocolError",
    "content_type",
    "decode_frames",
    "encode_frame",
    "encode_message",
    "input_command",
    "is_command",
    "is_control",
    "is_custom_entry",
    "is_notification",
    "notification",
    "parse_content_type",
    "parse_message",
    "parse_payload",
    "start_message",
]


class ProtocolError(Exception):
    """Malformed frame stream or message (a retryable attempt failure for the runtime)."""


class MessageType(IntEnum):
    """Frame type codes (spec section 5.1)."""

    # control messages
    START = 0x0000
    SUSPENSION = 0x0001
    ERROR = 0x0002
    END = 0x0003
    COMMAND_ACK = 0x0004
    PROPOSE_RUN_COMPLETION = 0x0005
    AWAITING_ON = 0x0006
    PROPOSE_RUN_COMPLETION_ACK = 0x0007
    # commands
    INPUT_COMMAND = 0x0400
    OUTPUT_COMMAND = 0x0401
    GET_LAZY_STATE_COMMAND = 0x0402
    SET_STATE_COMMAND = 0x0403
    CLEAR_STATE_COMMAND = 0x0404
    CLEAR_ALL_STATE_COMMAND = 0x0405
    GET_LAZY_STATE_KEYS_COMMAND = 0x0406
    GET_EAGER_STATE_COMMAND = 0x0407
    GET_EAGER_STATE_KEYS_COMMAND = 0x0408
    GET_PROMISE_COMMAND = 0x0409
    PEEK_PROMISE_COMMAND = 0x040A
    COMPLETE_PROMISE_COMMAND = 0x040B
    SLEEP_COMMAND = 0x040C
    CALL_COMMAND = 0x040D
    ONE_WAY_CALL_COMMAND = 0x040E
    SEND_SIGNAL_COMMAND = 0x0410
    RUN_COMMAND = 0x0411
    ATTACH_INVOCATION_COMMAND = 0x0412
    GET_INVOCATION_OUTPUT_COMMAND = 0x0413
    COMPLETE_AWAKEABLE_COMMAND = 0x0414
    # notifications
    GET_LAZY_STATE_COMPLETION = 0x8002
    GET_LAZY_STATE_KEYS_COMPLETION = 0x8006
    GET_PROMISE_COMPLETION = 0x8009
    PEEK_PROMISE_COMPLETION = 0x800A
    COMPLETE_PROMISE_COMPLETION = 0x800B
    SLEEP_COMPLETION = 0x800C
    CALL_COMPLETION = 0x800D
    CALL_INVOCATION_ID_COMPLETION = 0x800E
    RUN_COMPLETION = 0x8011
    ATTACH_INVOCATION_COMPLETION = 0x8012
    GET_INVOCATION_OUTPUT_COMPLETION = 0x8013
    SIGNAL_NOTIFICATION = 0xFBFF


#: Flag bit (in the u16 flags field) set by v7 SDKs on ProposeRunCompletion.
REQUESTED_ACK = 0x8000

HEADER_SIZE = 8
#: Default per-frame payload limit for FrameDecoder (the reference runtime's limit is configurable).
DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024
#: Inclusive type-code ranges (spec section 4).
COMMAND_RANGE = (0x0400, 0x7FFF)
NOTIFICATION_RANGE = (0x8000, 0xFBFF)
CUSTOM_ENTRY_MIN = 0xFC00

TERMINAL_TYPES = frozenset({MessageType.END, MessageType.SUSPENSION, MessageType.ERROR})

_HEADER = struct.Struct(">HHI")
_pack_header = _HEADER.pack
_unpack_header_from = _HEADER.unpack_from
_MAX_PAYLOAD = 0xFFFFFFFF


def is_control(t: int) -> bool:
    return 0 <= t < 0x0400


def is_command(t: int) -> bool:
    return 0x0400 <= t <= 0x7FFF


def is_notification(t: int) -> bool:
    return 0x8000 <= t <= 0xFBFF


def is_custom_entry(t: int) -> bool:
    """Opaque custom journal entries (0xFC00-0xFFFF): stored and replayed verbatim."""
    return 0xFC00 <= t <= 0xFFFF


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    payload: bytes

    def encode(self) -> bytes:
        return _pack_header(self.type, self.flags, len(self.payload)) + self.payload

    @property
    def requested_ack(self) -> bool:
        return bool(self.flags & REQUESTED_ACK)

    def __len__(self) -> int:
        """Encoded size (header + payload)."""
        return HEADER_SIZE + len(self.payload)


def encode_frame(msg_type: int, payload: bytes, flags: int = 0) -> bytes:
    """Prefix ``payload`` with the 8-byte big-endian frame header."""
    try:
        return _pack_header(msg_type, flags, len(payload)) + payload
    except struct.error as e:
        raise ValueError(f"cannot frame type={msg_type!r} flags={flags!r} len={len(payload)}: {e}") from None


def encode_message(msg_type: int, message: _PbMessage, flags: int = 0) -> bytes:
    """Serialize a protobuf message and frame it."""
    return encode_frame(msg_type, message.SerializeToString(), flags)


class FrameDecoder:
    """Incremental frame parser for a byte stream split at arbitrary points.

    ``feed()`` returns every frame completed by the new data (possibly none) and keeps
    any trailing partial frame buffered. A frame whose declared payload length exceeds
    ``max_frame_bytes`` raises :class:`ProtocolError` as soon as its header is seen;
    after an error the decoder is poisoned and every later ``feed()`` raises too.
    ``max_frame_bytes=None`` disables the limit.
    """

    __slots__ = ("_buf", "_error", "_max", "bytes_decoded", "frames_decoded")

    def __init__(self, max_frame_bytes: int | None = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = _MAX_PAYLOAD if max_frame_bytes is None else max_frame_bytes
        self._error: ProtocolError | None = None
        self.frames_decoded = 0
        self.bytes_decoded = 0

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered."""
        return not self._buf

    @property
    def buffered(self) -> int:
        """Number of bytes of an incomplete frame currently buffered."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise ProtocolError(f"decoder already failed: {self._error}")
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            if not data:
                return []
            buf = data
        n = len(buf)
        pos = 0
        frames: list[Frame] = []
        limit = self._max
        while n - pos >= HEADER_SIZE:
            t, fl, ln = _unpack_header_from(buf, pos)
            if ln > limit:
                self._error = ProtocolError(
                    f"frame type 0x{t:04X} declares {ln} payload bytes, limit is {limit}"
                )
                self._buf = bytearray()
                raise self._error
            end = pos + HEADER_SIZE + ln
            if end > n:
                break
            frames.append(Frame(t, fl, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        if pos:
            self.frames_decoded += len(frames)
            self.bytes_decoded += pos
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(memoryview(buf)[pos:])
        return frames

    def close(self) -> None:
        """Signal end of stream; raises ProtocolError if a partial frame is buffered."""
        if self._error is not None:
            raise ProtocolError(f"decoder already failed: {self._error}")
        if self._buf:
            raise ProtocolError(f"stream ended inside a frame ({len(self._buf)} bytes buffered)")


def decode_frames(data: bytes, max_frame_bytes: int | None = None) -> list[Frame]:
    """Decode a complete buffer of frames; a trailing partial frame is a ProtocolError."""
    dec = FrameDecoder(max_frame_bytes)
    frames = dec.feed(data)
    dec.close()
    return frames


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

MESSAGE_CLASSES: dict[int, type[_PbMessage]] = {
    MessageType.START: pb.StartMessage,
    MessageType.SUSPENSION: pb.SuspensionMessage,
    MessageType.ERROR: pb.ErrorMessage,
    MessageType.END: pb.EndMessage,
    MessageType.COMMAND_ACK: pb.CommandAckMessage,
    MessageType.PROPOSE_RUN_COMPLETION: pb.ProposeRunCompletionMessage,
    MessageType.AWAITING_ON: pb.AwaitingOnMessage,
    MessageType.PROPOSE_RUN_COMPLETION_ACK: pb.ProposeRunCompletionAckMessage,
    MessageType.INPUT_COMMAND: pb.InputCommandMessage,
    MessageType.OUTPUT_COMMAND: pb.OutputCommandMessage,
    MessageType.GET_LAZY_STATE_COMMAND: pb.GetLazyStateCommandMessage,
    MessageType.SET_STATE_COMMAND: pb.SetStateCommandMessage,
    MessageType.CLEAR_STATE_COMMAND: pb.ClearStateCommandMessage,
    MessageType.CLEAR_ALL_STATE_COMMAND: pb.ClearAllStateCommandMessage,
    MessageType.GET_LAZY_STATE_KEYS_COMMAND: pb.GetLazyStateKeysCommandMessage,
    MessageType.GET_EAGER_STATE_COMMAND: pb.GetEagerStateCommandMessage,
    MessageType.GET_EAGER_STATE_KEYS_COMMAND: pb.GetEagerStateKeysCommandMessage,
    MessageType.GET_PROMISE_COMMAND: pb.GetPromiseCommandMessage,
    MessageType.PEEK_PROMISE_COMMAND: pb.PeekPromiseCommandMessage,
    MessageType.COMPLETE_PROMISE_COMMAND: pb.CompletePromiseCommandMessage,
    MessageType.SLEEP_COMMAND: pb.SleepCommandMessage,
    MessageType.CALL_COMMAND: pb.CallCommandMessage,
    MessageType.ONE_WAY_CALL_COMMAND: pb.OneWayCallCommandMessage,
    MessageType.SEND_SIGNAL_COMMAND: pb.SendSignalCommandMessage,
    MessageType.RUN_COMMAND: pb.RunCommandMessage,
    MessageType.ATTACH_INVOCATION_COMMAND: pb.AttachInvocationCommandMessage,
    MessageType.GET_INVOCATION_OUTPUT_COMMAND: pb.GetInvocationOutputCommandMessage,
    MessageType.COMPLETE_AWAKEABLE_COMMAND: pb.CompleteAwakeableCommandMessage,
    MessageType.GET_LAZY_STATE_COMPLETION: pb.NotificationTemplate,
    MessageType.GET_LAZY_STATE_KEYS_COMPLETION: pb.NotificationTemplate,
    MessageType.GET_PROMISE_COMPLETION: pb.NotificationTemplate,
    MessageType.PEEK_PROMISE_COMPLETION: pb.NotificationTemplate,
    MessageType.COMPLETE_PROMISE_COMPLETION: pb.NotificationTemplate,
    MessageType.SLEEP_COMPLETION: pb.NotificationTemplate,
    MessageType.CALL_COMPLETION: pb.NotificationTemplate,
    MessageType.CALL_INVOCATION_ID_COMPLETION: pb.NotificationTemplate,
    MessageType.RUN_COMPLETION: pb.NotificationTemplate,
    MessageType.ATTACH_INVOCATION_COMPLETION: pb.NotificationTemplate,
    MessageType.GET_INVOCATION_OUTPUT_COMPLETION: pb.NotificationTemplate,
    MessageType.SIGNAL_NOTIFICATION: pb.NotificationTemplate,
}
# plain-int keyed copy for the hot path (IntEnum hashing/equality is slower)
_CLASSES_BY_CODE: dict[int, type[_PbMessage]] = {int(k): v for k, v in MESSAGE_CLASSES.items()}


def parse_payload(msg_type: int, payload: bytes) -> _PbMessage:
    """Parse a frame payload into the protobuf class registered for ``msg_type``."""
    cls = _CLASSES_BY_CODE.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{msg_type:04X}")
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as e:
        raise ProtocolError(f"cannot decode {cls.__name__} (type 0x{msg_type:04X}): {e}") from None
    return msg


def parse_message(frame: Frame) -> _PbMessage:
    """Parse ``frame.payload`` according to ``frame.type`` (ProtocolError if unknown/garbage)."""
    return parse_payload(frame.type, frame.payload)


# ---------------------------------------------------------------------------
# Content types
# ---------------------------------------------------------------------------

_CT_PREFIX = "application/vnd.restate.invocation.v"
_CT_RE = re.compile(r"^\s*application/vnd\.restate\.invocation\.v([0-9]{1,4})\s*(?:;.*)?$", re.IGNORECASE)


def content_type(version: int) -> str:
    return f"{_CT_PREFIX}{version}"


def parse_content_type(ct: str | None) -> int | None:
    """Return N for ``application/vnd.restate.invocation.vN`` (parameters ignored), else None."""
    if not ct:
        return None
    m = _CT_RE.match(ct)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# Builders for the frames the runtime produces
# ---------------------------------------------------------------------------

_START = int(MessageType.START)
_INPUT = int(MessageType.INPUT_COMMAND)


def start_message(
    id_bytes: bytes,
    debug_id: str,
    known_entries: int,
    state: list[tuple[bytes, bytes]] | None,
    partial_state: bool,
    key: str,
    retry_count: int,
    duration_ms: int,
    random_seed: int,
    version: int,
    *,
    scope: str | None = None,
    limit_key: str | None = None,
    idempotency_key: str | None = None,
) -> bytes:
    """Framed StartMessage.

    ``random_seed`` is omitted for protocol v5; ``scope``/``limit_key``/``idempotency_key``
    are only written for v7+ (and only when not None).
    """
    msg = pb.StartMessage(
        id=id_bytes,
        debug_id=debug_id,
        known_entries=known_entries,
        partial_state=partial_state,
        key=key,
        retry_count_since_last_stored_entry=retry_count,
        duration_since_last_stored_entry=duration_ms,
    )
    if state:
        entry = pb.StartMessage.StateEntry
        msg.state_map.extend([entry(key=k, value=v) for k, v in state])
    if version >= 6:
        msg.random_seed = random_seed
    if version >= 7:
        if scope is not None:
            msg.scope = scope
        if limit_key is not None:
            msg.limit_key = limit_key
        if idempotency_key is not None:
            msg.idempotency_key = idempotency_key
    payload = msg.SerializeToString()
    return _pack_header(_START, 0, len(payload)) + payload


def input_command(value: bytes, headers: Iterable[tuple[str, str]] | None = ()) -> bytes:
    """Framed InputCommand (journal entry 0). ``value`` is always present (possibly empty)."""
    msg = pb.InputCommandMessage(value=pb.Value(content=value))
    if headers:
        msg.headers.extend([pb.Header(key=k, value=v) for k, v in headers])
    payload = msg.SerializeToString()
    return _pack_header(_INPUT, 0, len(payload)) + payload


FailureLike = pb.Failure | tuple[int, str] | tuple[int, str, Iterable[tuple[str, str]]]


def _to_failure(failure: FailureLike) -> pb.Failure:
    if isinstance(failure, pb.Failure):
        return failure
    if len(failure) == 2:
        code, message = failure
        return pb.Failure(code=code, message=message)
    code, message, metadata = failure
    return pb.Failure(
        code=code, message=message, metadata=[pb.FailureMetadata(key=k, value=v) for k, v in metadata]
    )


def notification(
    msg_type: int,
    completion_id: int | None = None,
    signal_id: int | None = None,
    signal_name: str | None = None,
    void: bool = False,
    value: bytes | None = None,
    failure: FailureLike | None = None,
    invocation_id: str | None = None,
    state_keys: Iterable[bytes] | pb.StateKeys | None = None,
) -> bytes:
    """Framed notification (NotificationTemplate payload).

    Exactly one of ``completion_id`` / ``signal_id`` / ``signal_name`` and exactly one of
    ``void`` / ``value`` / ``failure`` / ``invocation_id`` / ``state_keys`` must be given.
    ``value`` is the raw content of the ``Value`` (``b""`` is a present, empty value);
    ``failure`` is a ``Failure`` message or ``(code, message[, metadata])``.
    """
    if not (0x8000 <= msg_type <= 0xFBFF):
        raise ValueError(f"0x{msg_type:04X} is not a notification type")
    msg = pb.NotificationTemplate()
    n_id = 0
    if completion_id is not None:
        msg.completion_id = completion_id
        n_id += 1
    if signal_id is not None:
        msg.signal_id = signal_id
        n_id += 1
    if signal_name is not None:
        msg.signal_name = signal_name
        n_id += 1
    if n_id != 1:
        raise ValueError("exactly one of completion_id, signal_id, signal_name is required")
    n_res = 0
    if void:
        msg.void.SetInParent()
        n_res += 1
    if value is not None:
        msg.value.SetInParent()
        msg.value.content = value
        n_res += 1
    if failure is not None:
        msg.failure.SetInParent()
        msg.failure.CopyFrom(_to_failure(failure))
        n_res += 1
    if invocation_id is not None:
        msg.invocation_id = invocation_id
        n_res += 1
    if state_keys is not None:
        if isinstance(state_keys, pb.StateKeys):
            msg.state_keys.CopyFrom(state_keys)
        else:
            msg.state_keys.SetInParent()
            msg.state_keys.keys.extend(state_keys)
        n_res += 1
    if n_res != 1:
        raise ValueError("exactly one of void, value, failure, invocation_id, state_keys is required")
    payload = msg.SerializeToString()
    return _pack_header(msg_type, 0, len(payload)) + payload
