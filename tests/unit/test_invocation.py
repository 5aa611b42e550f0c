"""The typed invocation model (`partition/invocation.py`): statuses and their lifecycle table,
handler kinds and their one mapping, the status-hash codec, results, terminals and ops, and
what a failed attempt leads to (`partition/retry.py`)."""

from __future__ import annotations

import dataclasses

import pytest

from partition import invocation, keys, transition
from partition.invocation import (
    FIELDS,
    TRANSITIONS,
    HandlerKind,
    HashField,
    InvocationRecord,
    RecordError,
    Result,
    Status,
    StoredResult,
    allowed,
    new_record,
)
from partition.retry import FailureAction, RetryPolicy, after_failure
from partition.transition import (
    OP_ARGS,
    OP_TYPES,
    TERMINAL_ARGS,
    AddTimer,
    AttemptFailed,
    ClearAllState,
    CompletePromise,
    End,
    JournalEntry,
    OpCode,
    SetState,
    Suspend,
    encode_ops,
    encode_terminal,
)
from sgproto.partition.v1 import partition_service_pb2 as spb
from sgproto.protocol.v1 import protocol_pb2 as pb
from shardgate import protocol
from shardgate.protocol import MessageType as T
from shardgate.schema import HandlerType

# ---- statuses and the lifecycle ------------------------------------------------------------------


def test_statuses_are_restates_names() -> None:
    assert [s.value for s in Status] == [
        "scheduled", "inboxed", "invoked", "suspended", "backing-off", "paused", "completed"]
    assert Status.BACKING_OFF == "backing-off"  # str enum: compares with the stored string


def test_every_status_is_reachable_from_accept_and_ends_deleted() -> None:
    reachable: set[Status | None] = {None}
    while True:
        more = {t for row in TRANSITIONS if reachable & row.sources for t in row.targets} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == set(Status) | {None}
    assert allowed(Status.COMPLETED, None)  # retention expires


def test_lifecycle_table_allows_only_designed_moves() -> None:
    assert allowed(None, Status.INVOKED) and allowed(None, Status.SCHEDULED) and allowed(None, Status.INBOXED)
    assert allowed(Status.SCHEDULED, Status.INBOXED) and allowed(Status.INBOXED, Status.INVOKED)
    assert allowed(Status.INVOKED, Status.COMPLETED) and allowed(Status.INVOKED, None)
    assert allowed(Status.PAUSED, Status.PAUSED)  # staying put
    assert not allowed(Status.COMPLETED, Status.INVOKED)
    assert not allowed(None, Status.COMPLETED)
    assert not allowed(Status.INBOXED, Status.SUSPENDED)
    assert not allowed(Status.SUSPENDED, Status.BACKING_OFF)
    built = {row.script for row in TRANSITIONS if row.script}
    assert built == {"accept", "attempt_start", "apply", "notify, apply", "TTL"}


# ---- handler kinds ---------------------------------------------------------------------------------


def test_handler_kind_maps_once_to_protobuf_and_schema() -> None:
    assert {HandlerKind.from_proto(k.to_proto()) for k in HandlerKind} == set(HandlerKind)
    assert {k.to_proto() for k in HandlerKind} == set(spb.HandlerKind.values())
    assert HandlerKind.of_handler(None) is HandlerKind.SERVICE
    assert [HandlerKind.of_handler(t) for t in HandlerType] == [
        HandlerKind.EXCLUSIVE, HandlerKind.SHARED, HandlerKind.WORKFLOW]
    assert [k for k in HandlerKind if k.writes_state] == [HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW]
    assert [k for k in HandlerKind if not k.keyed] == [HandlerKind.SERVICE]
    with pytest.raises(KeyError):
        HandlerKind.from_proto(99)


# ---- the status hash ---------------------------------------------------------------------------


def test_the_field_table_is_written_once() -> None:
    """The docstring table is `FIELDS` rendered; one spec per hash field, one per record attribute."""
    assert invocation.__doc__ is not None and invocation.field_table() in invocation.__doc__
    assert [spec.field for spec in FIELDS] == list(HashField)
    assert sorted(spec.attr for spec in FIELDS) == sorted(f.name for f in dataclasses.fields(InvocationRecord))
    assert all(spec.readers and spec.writers and spec.meaning for spec in FIELDS)


def test_keys_module_points_at_the_field_table() -> None:
    assert keys.__doc__ is not None and "partition/invocation.py" in keys.__doc__


FULL = InvocationRecord(
    status=Status.COMPLETED, service="Counter", handler="add", kind=HandlerKind.EXCLUSIVE, key="k:1",
    input_frame=protocol.input_command(b"1"), completion_retention_ms=60_000, execution_time_ms=9000,
    request_nonce=b"\x00nonce", parents="inv_1a|3|2,", attempts=2, last_growth_ms=1234,
    waiting_for=" c1 ", last_failure="[500] boom", result=Result(409, "nope"), expires_ms=70_000,
    scope="tenant", limit_key="u1/l2", vqueue="tenant", apply_nonce=b"\x01nonce",
    pinned_deployment_id="dp_1pin", pinned_protocol_version=6, random_seed=2**63 + 5,
    idempotency_key="my-key", invoked_by="inv_1caller|Caller",
    journal_retention_ms=30_000, stream_seq="n1|2",
)


def _as_hash(fields: list[str | bytes | int]) -> dict[bytes, bytes]:
    """What HGETALL returns after HSET of these pairs."""
    def b(v: str | bytes | int) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode()
    return {b(k): b(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}


def test_record_round_trips_through_the_hash_codec() -> None:
    raw = _as_hash(FULL.to_fields())
    assert set(raw) == {f.value.encode() for f in HashField}
    assert raw[b"st"] == b"completed" and raw[b"kind"] == b"exclusive" and raw[b"att"] == b"2"
    assert InvocationRecord.from_fields({**raw, b"n:c1": b"1"}) == FULL  # notification index ignored


def test_absent_and_empty_fields_are_left_out() -> None:
    minimal = InvocationRecord(status=Status.INVOKED, service="Greeter", handler="greet", kind=HandlerKind.SERVICE)
    raw = _as_hash(minimal.to_fields())
    assert set(raw) == {b"st", b"svc", b"hdl", b"kind", b"cret", b"att", b"lg"}
    assert InvocationRecord.from_fields(raw) == minimal


def test_unreadable_hash_raises_record_error() -> None:
    raw = _as_hash(FULL.to_fields())
    with pytest.raises(RecordError):
        InvocationRecord.from_fields({k: v for k, v in raw.items() if k != b"svc"})
    with pytest.raises(RecordError):
        InvocationRecord.from_fields({**raw, b"st": b"running"})
    with pytest.raises(RecordError):
        InvocationRecord.from_fields({**raw, b"att": b"x"})


def test_with_attempt_updates_the_failure_count_and_growth() -> None:
    assert FULL.with_attempt(0, 99).attempts == 0 and FULL.with_attempt(0, 99).last_growth_ms == 99
    assert FULL.with_attempt(5, None).last_growth_ms == FULL.last_growth_ms


def test_new_record_is_built_from_the_request() -> None:
    req = spb.InvokeRequest(
        partition=1, invocation_id="inv_x", service="Counter", handler="add", key="k", kind=spb.HANDLER_KIND_EXCLUSIVE,
        body=b"7", headers=[spb.Header(key="h", value="v")], completion_retention_ms=5, execution_time_ms=2000,
        request_nonce=b"n", parent=spb.Parent(invocation_id="inv_p", partition=4, result_completion_id=9),
    )
    rec = new_record(req, now_ms=1000)
    assert rec == InvocationRecord(
        status=Status.SCHEDULED, service="Counter", handler="add", kind=HandlerKind.EXCLUSIVE, key="k",
        input_frame=protocol.input_command(b"7", [("h", "v")]), completion_retention_ms=5,
        execution_time_ms=2000, request_nonce=b"n", parents="inv_p|4|9,", attempts=0, last_growth_ms=1000,
    )
    past = new_record(req, now_ms=2000)  # a start time not in the future means now
    assert past.execution_time_ms is None and past.status is Status.INVOKED
    req.ClearField("key")
    req.ClearField("parent")
    assert new_record(req, 1000).key is None and new_record(req, 1000).parents == ""


def test_new_record_keeps_a_clients_idempotency_key_and_the_sender_but_not_a_generated_key() -> None:
    req = spb.InvokeRequest(partition=1, invocation_id="inv_x", service="Greeter", handler="greet",
                            idempotency_key="client-key", request_nonce=b"nonce", invoked_by="inv_c|Caller")
    rec = new_record(req, 1000)
    assert (rec.idempotency_key, rec.request_nonce, rec.invoked_by) == ("client-key", b"nonce", "inv_c|Caller")
    req.idempotency_key_generated = True
    rec = new_record(req, 1000)  # its duplicates are re-sends: neither the key nor a nonce is kept
    assert (rec.idempotency_key, rec.request_nonce) == (None, b"")
    req.ClearField("idempotency_key")
    req.ClearField("invoked_by")
    rec = new_record(req, 1000)
    assert (rec.idempotency_key, rec.request_nonce, rec.invoked_by) == (None, b"nonce", None)


def test_stored_result_reads_status_result_and_expiry() -> None:
    assert StoredResult.from_values([None, None, None]) is None
    running = StoredResult.from_values([b"invoked", None, None])
    assert running == StoredResult(Status.INVOKED, None, None)
    done = StoredResult.from_values([b"completed", Result(0, "", b"1").encode(), b"42"])
    assert done == StoredResult(Status.COMPLETED, Result(0, "", b"1"), 42)


# ---- results -------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [Result(0, "", b'"hi"'), Result(0, "", b""), Result(409, "nope"), Result(500, "")])
def test_result_field_is_what_a_call_completion_carries(r: Result) -> None:
    assert Result.decode(r.encode()) == r
    kw = {"value": r.value} if r.code == 0 else {"failure": (r.code, r.message)}
    expected = protocol.notification(T.CALL_COMPLETION, completion_id=7, **kw)  # type: ignore[arg-type]
    assert protocol.encode_frame(T.CALL_COMPLETION, b"\x08\x07" + r.encode()) == expected


def test_void_field_is_a_void_notification_result() -> None:
    assert protocol.encode_frame(T.PEEK_PROMISE_COMPLETION, b"\x08\x01" + invocation.VOID_FIELD) == (
        protocol.notification(T.PEEK_PROMISE_COMPLETION, completion_id=1, void=True))


# ---- terminals and ops ---------------------------------------------------------------------------


def test_terminals_fill_their_fixed_slots() -> None:
    for t in (End(Result(0, "", b"x")), Suspend(" c1 "), AttemptFailed(Status.BACKING_OFF, 5, "boom")):
        assert len(encode_terminal(t)) == 1 + TERMINAL_ARGS
    assert encode_terminal(AttemptFailed(Status.PAUSED, 5, "boom")) == ["ERROR", "paused", 5, "boom"]
    assert encode_terminal(Suspend(" c1 ")) == ["SUSPEND", " c1 ", b"", ""]
    assert encode_terminal(Suspend(" c1 ", b"\x07n")) == ["SUSPEND", " c1 ", b"\x07n", ""]


def test_ops_encode_as_opcode_then_fields() -> None:
    ops = [JournalEntry(b"f"), SetState(b"k", b"v"), ClearAllState(), AddTimer(5, "w|inv|1"),
           CompletePromise("p", 3, b"r")]
    assert encode_ops(ops) == ["J", b"f", "S", b"k", b"v", "A", "T", 5, "w|inv|1", "PC", "p", 3, b"r"]


def test_every_opcode_has_one_op_type_and_its_arity() -> None:
    assert sorted(cls.OPCODE for cls in OP_TYPES) == sorted(OpCode)
    for cls in OP_TYPES:
        assert OP_ARGS[cls.OPCODE] == len(dataclasses.fields(cls))
        row = f"| {cls.__name__} | {cls.OPCODE.value} |"
        assert transition.__doc__ is not None and row in transition.__doc__  # the op table lists it


def test_op_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        JournalEntry(b"f").frame = b"g"  # type: ignore[misc]


# ---- what a failed attempt leads to ---------------------------------------------------------------

POLICY = RetryPolicy(initial_interval_ms=100, exponentiation_factor=2.0, max_interval_ms=1000, max_attempts=3,
                     on_max_attempts="PAUSE")
KILL = dataclasses.replace(POLICY, on_max_attempts="KILL")


def test_failures_retry_until_the_policy_is_exhausted() -> None:
    assert [after_failure(POLICY, n) for n in (1, 2, 3)] == [
        FailureAction.RETRY, FailureAction.RETRY, FailureAction.PAUSE]
    assert after_failure(KILL, 3) is FailureAction.COMPLETE


def test_the_sdk_can_ask_to_pause_or_fail() -> None:
    assert after_failure(KILL, 1, pb.ErrorMessage.PAUSE) is FailureAction.PAUSE
    assert after_failure(POLICY, 1, pb.ErrorMessage.FAIL) is FailureAction.COMPLETE
    assert after_failure(KILL, 5, pb.ErrorMessage.PAUSE) is FailureAction.PAUSE
