"""`sys_journal` rows: an invocation's stored journal (the input entry, then the stored list) decoded.

`entry_type` is "Command: <Name>" or "Notification: <Name>" (from the protocol's message type);
`completed` says whether the notification of a command's result is in the journal; `invoked_id`
is the callee's id once its invocation-id notification is stored; `entry_json` is the decoded
message as JSON under its kind and name (`{"Command": {"Sleep": {...}}}`). An undecodable entry
keeps its raw bytes and the type "Unknown". `appended_at` is not recorded (NULL).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from ingress.admin.query.rows import partition_key_of, time_of
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType

JOURNAL_VERSION = 2  # Restate's journal (protocol v4+) table version


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def entry_type(t: int) -> str:
    """Restate's display of a journal entry type ("Command: Sleep", "Notification: Call")."""
    try:
        name = MessageType(t).name
    except ValueError:
        return "Custom" if protocol.is_custom_entry(t) else "Unknown"
    for suffix, kind in (("_COMMAND", "Command"), ("_COMPLETION", "Notification"), ("_NOTIFICATION", "Notification")):
        if name.endswith(suffix):
            return f"{kind}: {_camel(name[: -len(suffix)])}"
    return _camel(name)


def _decode(entry: bytes) -> tuple[int, Message | None]:
    try:
        frame = protocol.decode_frames(entry)[0]
        return frame.type, protocol.parse_message(frame)
    except (protocol.ProtocolError, IndexError):
        return -1, None


def _target(msg: Any) -> str:
    return f"{msg.service_name}/{msg.key}/{msg.handler_name}" if msg.key else f"{msg.service_name}/{msg.handler_name}"


def _completions(decoded: list[tuple[int, Message | None]]) -> tuple[set[int], dict[int, str]]:
    """Completion ids with a stored notification, and completion id -> invocation id."""
    done: set[int] = set()
    ids: dict[int, str] = {}
    for _, msg in decoded:
        if isinstance(msg, pb.NotificationTemplate) and msg.WhichOneof("id") == "completion_id":
            done.add(msg.completion_id)
            if msg.WhichOneof("result") == "invocation_id":
                ids[msg.completion_id] = msg.invocation_id
    return done, ids


def _command_columns(msg: Message, done: set[int], ids: dict[int, str]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    if hasattr(msg, "name"):
        cols["name"] = getattr(msg, "name") or None  # noqa: B009  every command message has it
    if hasattr(msg, "result_completion_id"):
        cols["completed"] = msg.result_completion_id in done
    if isinstance(msg, pb.CallCommandMessage | pb.OneWayCallCommandMessage):
        cols["invoked_target"] = _target(msg)
        cols["invoked_id"] = ids.get(msg.invocation_id_notification_idx)
    if isinstance(msg, pb.SleepCommandMessage):
        cols["sleep_wakeup_at"] = time_of(msg.wake_up_time)
    if isinstance(msg, pb.GetPromiseCommandMessage | pb.PeekPromiseCommandMessage | pb.CompletePromiseCommandMessage):
        cols["promise_name"] = msg.key
    return cols


def _json(kind: str, msg: Message) -> str:
    body = MessageToDict(msg, preserving_proto_field_name=True)
    name = kind.split(": ", 1)
    return json.dumps({name[0]: {name[-1]: body}} if len(name) == 2 else {kind: body}, separators=(",", ":"))


def journal_rows(invocation_id: str, entries: list[bytes]) -> list[dict[str, Any]]:
    """The `sys_journal` rows of one invocation; `entries[0]` is its input entry."""
    decoded = [_decode(e) for e in entries]
    done, ids = _completions(decoded)
    rows = []
    for index, ((t, msg), raw) in enumerate(zip(decoded, entries, strict=True)):
        kind = entry_type(t) if msg is not None else "Unknown"
        row: dict[str, Any] = {"partition_key": partition_key_of(invocation_id), "id": invocation_id,
                               "index": index, "entry_type": kind, "raw": raw, "version": JOURNAL_VERSION}
        if msg is not None:
            row.update(_command_columns(msg, done, ids))
            row["entry_json"] = _json(kind, msg)
        rows.append(row)
    return rows
