r"""The layout of an outbox entry (`sg:{pI}:outbox`), a message for another partition (pure).

Two layouts, told apart by their tag:

- `I\0` + InvokeRequest protobuf: a call or one-way call creating an invocation;
- `N\0<partition>\0<invocation id>\0<notification key>\0<frame>`: a notification for an
  invocation (a signal, an awakeable completion). `_prelude.lua` builds the same layout for the
  call results it sends to waiting parents (`OUTBOX_NOTIFY` is generated from the tag here).

A handler's AttachInvocation / GetInvocationOutput command travels as a notify entry for the
*target* invocation whose key is `ATTACH_NOTE_KEY` / `OUTPUT_NOTE_KEY` and whose frame is the
caller `<caller id>|<caller partition>|<completion id>` (`encode_outbox_attach`): the target's
partition answers it with the `attach` transition, never appends it to a journal.

`effects.py` encodes the entries an attempt queues, `outbox.py` decodes them for delivery.
"""

from __future__ import annotations

from sgproto.partition.v1 import partition_service_pb2 as spb

OUTBOX_INVOKE_TAG = "I"
OUTBOX_NOTIFY_TAG = "N"
# Keys of the notify entries that ask the target's partition for its result (no journal
# notification key looks like them: those are c<n>, s<n>, n<hex>).
ATTACH_NOTE_KEY = "attach"
OUTPUT_NOTE_KEY = "get-output"


def encode_outbox_invoke(req: spb.InvokeRequest) -> bytes:
    """The entry creating the invocation `req` describes."""
    return OUTBOX_INVOKE_TAG.encode() + b"\x00" + req.SerializeToString()


def encode_outbox_notify(partition: int, invocation_id: str, key: str, frame: bytes) -> bytes:
    """Same layout `_prelude.lua` builds: N, partition, id, key, frame separated by NUL."""
    return b"\x00".join((OUTBOX_NOTIFY_TAG.encode(), str(partition).encode(), invocation_id.encode(),
                         key.encode(), frame))


def decode_outbox(raw: bytes) -> spb.OutboxMessage:
    """The message an entry holds. Raises ValueError for an entry of no known layout."""
    if raw[:2] == OUTBOX_INVOKE_TAG.encode() + b"\x00":
        return spb.OutboxMessage(invoke=spb.InvokeRequest.FromString(raw[2:]))
    tag, p, inv, key, frame = raw.split(b"\x00", 4)
    if tag != OUTBOX_NOTIFY_TAG.encode():
        raise ValueError(f"unknown outbox entry tag {tag!r}")
    return spb.OutboxMessage(notify=spb.Notification(
        partition=int(p), invocation_id=inv.decode(), key=key.decode(), frame=frame))


def encode_outbox_attach(partition: int, target_id: str, note_key: str, caller_id: str, caller_partition: int,
                         completion_id: int) -> bytes:
    """The entry asking `target_id` (on `partition`) for its result on behalf of a caller's
    completion: `note_key` is ATTACH_NOTE_KEY (answer when it completes) or OUTPUT_NOTE_KEY
    (answer at once, void while it runs)."""
    caller = f"{caller_id}|{caller_partition}|{completion_id}".encode()
    return encode_outbox_notify(partition, target_id, note_key, caller)


def decode_attach_caller(frame: bytes) -> tuple[str, int, int]:
    """(caller id, caller partition, completion id) of an attach / get-output entry's frame.
    Raises ValueError for a malformed one."""
    caller_id, partition, completion_id = frame.decode().split("|")
    return caller_id, int(partition), int(completion_id)
