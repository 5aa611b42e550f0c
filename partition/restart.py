"""PURE. Restart-as-new from a journal index (Restate 1.7's `restart_as_new` with `from` > 0):
which entries of a completed invocation's retained journal the new invocation starts with.

The retained journal of a completed invocation is the whole journal, the input command at index 0
(`_apply_end.lua` `retain_journal`), so a stored index is Restate's entry index. The new journal is
entries 0..`from` (included), then, from the rest, the completions of the prefix's commands (a
`ctx.run` whose result was stored after `from` keeps it). What Restate refuses, in its order:

* `from` > 0 when the pinned protocol version is older than v6 (ctx.rand changed) or unknown:
  `UNSUPPORTED` (422);
* a prefix command without its completion anywhere in the journal, or `from` at or past the
  journal's end: `COPY_RANGE_INVALID` (400; Restate checks the prefix entry by entry, so an index
  past the end lands here, before its out-of-range check, as the reference server answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from partition.invocation import (
    HandlerKind,
    InvocationRecord,
    Status,
    completion_key,
    named_signal_key,
    random_seed,
    signal_key,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from shardgate import protocol

MIN_PROTOCOL_FROM_PREFIX = 6  # Restate: a prefix other than the input alone needs protocol v6+


class PrefixError(str, Enum):
    """Why a journal prefix cannot be copied."""

    UNSUPPORTED = "unsupported"
    COPY_RANGE_INVALID = "copy_range_invalid"


@dataclass(frozen=True, slots=True)
class Prefix:
    """The new invocation's start: its input frame, the journal entries after it and the
    notification keys those entries hold (its `n:*` index)."""

    input_frame: bytes
    entries: tuple[bytes, ...]
    notes: tuple[str, ...]


def _message(entry: bytes) -> tuple[int, object] | None:
    try:
        frame = protocol.decode_frames(entry)[0]
        return frame.type, protocol.parse_message(frame)
    except (protocol.ProtocolError, IndexError):
        return None


def completion_ids(msg: object) -> list[int]:
    """The completion ids a command waits for (a call's invocation id and result, a run's result ...)."""
    fields = getattr(getattr(msg, "DESCRIPTOR", None), "fields_by_name", {})
    return [int(getattr(msg, f)) for f in ("invocation_id_notification_idx", "result_completion_id") if f in fields]


def note_key(msg: Any) -> str | None:
    """The notification key of a notification entry (`c<id>`, `s<index>`, `n<hex name>`)."""
    which = msg.WhichOneof("id") if hasattr(msg, "WhichOneof") else None
    if which == "completion_id":
        return completion_key(msg.completion_id)
    if which == "signal_id":
        return signal_key(msg.signal_id)
    if which == "signal_name":
        return named_signal_key(msg.signal_name)
    return None


def _completion_id(note: str | None) -> int | None:
    return int(note[1:]) if note is not None and note.startswith(completion_key("")) else None


def plan_prefix(journal: list[bytes], from_index: int, protocol_version: int | None) -> Prefix | PrefixError:
    """The prefix to copy from a completed invocation's `journal` (input first), or why not."""
    if from_index > 0 and (protocol_version is None or protocol_version < MIN_PROTOCOL_FROM_PREFIX):
        return PrefixError.UNSUPPORTED
    missing: set[int] = set()
    entries: list[bytes] = []
    notes: list[str] = []
    for i in range(1, from_index + 1):
        parsed = _message(journal[i]) if i < len(journal) else None
        if parsed is None:
            return PrefixError.COPY_RANGE_INVALID
        msg_type, msg = parsed
        entries.append(journal[i])
        if protocol.is_command(msg_type):
            missing.update(completion_ids(msg))
        elif (key := note_key(msg)) is not None:
            notes.append(key)
            missing.discard(_completion_id(key) or -1)
    for entry in journal[from_index + 1:]:
        if not missing:
            break
        parsed = _message(entry)
        key = note_key(parsed[1]) if parsed is not None and protocol.is_notification(parsed[0]) else None
        cid = _completion_id(key)
        if key is not None and cid in missing:
            missing.discard(cid)
            entries.append(entry)
            notes.append(key)
    if missing:
        return PrefixError.COPY_RANGE_INVALID
    return Prefix(journal[0], tuple(entries), tuple(notes))


class RestartOutcome(str, Enum):
    """Reply codes of `restart.lua`."""

    OK = "OK"  # the new invocation is created (scheduled, its start timer due now)
    ALREADY = "ALREADY"  # it exists already: a re-sent command
    GONE = "GONE"  # the original is no longer completed with the journal read (purged meanwhile)
    FENCED = "FENCED"


NOT_STARTED = frozenset({Status.SCHEDULED, Status.INBOXED})


def refusal(original: InvocationRecord | None, journal: list[bytes]) -> spb.ManageStatus | None:
    """The ManageStatus refusing to restart `original` (Restate's order), or None."""
    if original is None:
        return spb.MANAGE_STATUS_NOT_FOUND
    if original.status in NOT_STARTED:
        return spb.MANAGE_STATUS_WRONG_STATE
    if original.status is not Status.COMPLETED:
        return spb.MANAGE_STATUS_NOT_COMPLETED
    if not journal:
        return spb.MANAGE_STATUS_MISSING_INPUT
    if original.kind is HandlerKind.WORKFLOW:
        return spb.MANAGE_STATUS_UNSUPPORTED
    return None


PREFIX_STATUS = {PrefixError.UNSUPPORTED: spb.MANAGE_STATUS_UNSUPPORTED,
                 PrefixError.COPY_RANGE_INVALID: spb.MANAGE_STATUS_COPY_RANGE_INVALID}


def restarted(original: InvocationRecord, prefix: Prefix, req: spb.ManageRequest, now_ms: int) -> InvocationRecord:
    """The record of the new invocation: the original's target, the prefix's input, the request's
    retentions, and the original's pin with `req.deployment_id` as its deployment when given (an
    unpinned original stays unpinned: its first attempt pins the latest, as in Restate)."""
    pin = original.pin
    return InvocationRecord(
        status=Status.SCHEDULED, service=original.service, handler=original.handler, kind=original.kind,
        key=original.key, input_frame=prefix.input_frame, completion_retention_ms=req.completion_retention_ms,
        journal_retention_ms=req.journal_retention_ms or None, attempts=0, last_growth_ms=now_ms,
        scope=original.scope, limit_key=original.limit_key,
        pinned_deployment_id=None if pin is None else (req.deployment_id or pin.deployment_id),
        pinned_protocol_version=None if pin is None else pin.protocol_version,
        random_seed=_seed_of(original, req) if req.restart_from > 0 else None,
    )


def _seed_of(original: InvocationRecord, req: spb.ManageRequest) -> int:
    """The original's random seed (as Restate keeps it for a restart from a prefix): the copied
    entries were made with it, and a `ctx.rand` before `from` must replay the same values."""
    return original.random_seed if original.random_seed is not None else random_seed(req.invocation_id)
